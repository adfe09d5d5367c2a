"""Run sGDML 1.0.3 through its own Python API and time it (runs in benchmarks/.sgdml-venv).

This file is executed by the sGDML virtual environment's interpreter, never imported by
gdmlc: only the standard library, numpy, scipy, torch and sgdml are available here.
``benchmarks/sgdml_runner.py`` (in gdmlc's environment) writes the inputs and calls::

    python sgdml_driver.py train CONFIG.json     # train + predict + time, see run_train()
    python sgdml_driver.py cli ARGS...           # the `sgdml ARGS...` command line

``train``: CONFIG.json names an input npz (R, z, F[, E], train_idx, R_test[, perms]) and
the output files.  sGDML is driven as its own CLI drives it (GDMLTrain.create_task ->
GDMLTrain.train -> GDMLPredict), with these differences, all needed to compare systems:

* exactly the given training frames: create_task gets a dataset holding only those frames
  with n_train = their number (its stratified sampler then returns them all, in order) and
  n_valid = 0;
* the given permutations (create_task(perms=...), stored as task['perms'], shape (P, N));
* the given sigma and lambda; energy constraints off (use_E_cstr=False); use_E = energies
  were given.

Timers (time.perf_counter) are put around sGDML internals by monkeypatching, in this
process only:

* assembly: ``GDMLTrain._assemble_kernel_mat`` (whole call: allocation of K and filling it,
  by the process pool on the numpy path or GDMLTorchAssemble on the torch path);
* solve: ``sgdml.solvers.analytic.Analytic.solve`` minus the assembly inside it, i.e. the
  negated copy ``K = -K``, adding lambda to the diagonal, ``scipy.linalg.cho_factor``
  (overwrite_a=False: a second copy) and ``cho_solve``;
* cholesky: ``scipy.linalg.cho_factor`` + ``scipy.linalg.cho_solve`` only;
* train: the whole ``GDMLTrain.train(task)`` (descriptors, assembly, solve, model
  creation, integration constant, which predicts the training set once);
* create_task: ``GDMLTrain.create_task`` (dataset hashing; kept apart from train as in the
  CLI, where tasks are written before training).

Peak memory of the training repeats, three ways (prediction and symmetry search come after):

* peak_rss_self_bytes: this process's VmHWM (/proc/self/status) after resetting it to the
  current RSS just before training (``echo 5 > /proc/self/clear_refs``; if the kernel
  refuses, VmHWM since exec).  Not ``getrusage(RUSAGE_SELF).ru_maxrss``: Linux carries
  that across fork+exec, so it would include the RSS of the gdmlc process that started us.
  On the numpy path K lives in shared memory that this process maps and touches (K = -K),
  so it is counted here too.
* peak_rss_children_bytes: ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` (the largest reaped
  worker, e.g. the assembly pool; a forked child starts from this process's RSS).
* peak_pss_total_bytes: the largest sum of PSS (proportional set size: shared pages split
  between the processes sharing them) over this process and all its descendants, sampled
  every 0.2 s by a thread (psutil; a sample costs a few ms of GIL time, so not more
  often): the total memory footprint; a peak shorter than that can be missed.

Prediction throughput and sGDML's own symmetry search (``sgdml.utils.perm.find_perms`` on
the training geometries, as create_task calls it) are measured after the training.

``cli``: calls ``sgdml.cli.main()`` (what the ``sgdml`` console script runs) with
``sys.argv = ['sgdml', ARGS...]``, after replacing its two start-up calls to
api.sgdml.org (update check, billboard: one-second network timeouts each, unreachable
here) by no-ops, so that they neither add network waits to the timing nor leave the
machine.
"""
from __future__ import annotations

import json
import platform
import resource
import sys
import threading
import time


def _log(text):
    print(f"[sgdml-driver] {text}", file=sys.stderr, flush=True)


def _maxrss_bytes(who):
    return int(resource.getrusage(who).ru_maxrss) * 1024  # Linux: kilobytes


def _status_bytes(field):
    """VmHWM / VmRSS of this process from /proc/self/status, in bytes (None if unreadable)."""
    # not runtime.assembly.proc_field_bytes: this script runs in sGDML's own environment, which has no gdmlc

    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss():
    """Reset VmHWM to the current RSS (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class _PssSampler(threading.Thread):
    """Largest total PSS of this process and its descendants, sampled every `interval` s."""

    def __init__(self, interval=0.2):
        super().__init__(daemon=True)
        import psutil

        self._psutil = psutil
        self._proc = psutil.Process()
        self._stop_event = threading.Event()
        self.interval = interval
        self.peak = 0
        self.samples = 0

    def sample(self):
        psutil = self._psutil
        total = 0
        try:
            procs = [self._proc] + self._proc.children(recursive=True)
        except psutil.Error:
            procs = [self._proc]
        for proc in procs:
            try:
                total += proc.memory_full_info().pss
            except psutil.Error:  # a worker that just exited
                pass
        self.peak = max(self.peak, total)
        self.samples += 1

    def run(self):
        self.sample()
        while not self._stop_event.wait(self.interval):
            self.sample()

    def stop(self):
        self._stop_event.set()
        self.join()
        self.sample()
        return self.peak


def _median(values):
    values = sorted(values)
    n = len(values)
    return 0.5 * (values[(n - 1) // 2] + values[n // 2])


def _versions():
    import numpy
    import scipy
    import sgdml

    try:
        import torch
        torch_version = torch.__version__
    except ImportError:  # pragma: no cover - the venv always has torch
        torch_version = None
    return {"sgdml": sgdml.__version__, "numpy": numpy.__version__, "scipy": scipy.__version__,
            "torch": torch_version, "python": platform.python_version()}


class _Timers:
    """Monkeypatched timers around sGDML's training internals (see module docstring)."""

    def __init__(self, gdml_train):
        import scipy.linalg
        from sgdml.solvers import analytic

        self.assembly, self.solve_total, self.cholesky = [], [], []
        self._chol_acc = 0.0

        original_assemble = gdml_train._assemble_kernel_mat

        def assemble(*args, **kwargs):
            t0 = time.perf_counter()
            out = original_assemble(*args, **kwargs)
            self.assembly.append(time.perf_counter() - t0)
            return out

        gdml_train._assemble_kernel_mat = assemble  # instance attribute shadows the method

        original_solve = analytic.Analytic.solve

        def solve(solver, *args, **kwargs):
            self._chol_acc = 0.0
            t0 = time.perf_counter()
            out = original_solve(solver, *args, **kwargs)
            self.solve_total.append(time.perf_counter() - t0)
            self.cholesky.append(self._chol_acc)
            return out

        analytic.Analytic.solve = solve

        for name in ("cho_factor", "cho_solve"):  # analytic.py calls sp.linalg.<name>
            original = getattr(scipy.linalg, name)

            def timed(*args, _original=original, **kwargs):
                t0 = time.perf_counter()
                try:
                    return _original(*args, **kwargs)
                finally:
                    self._chol_acc += time.perf_counter() - t0

            setattr(scipy.linalg, name, timed)


class _TimeLimitReached(Exception):
    """Raised from inside sGDML's CG (by _CgMonitor) when the wall-clock limit has passed."""


class _CgMonitor:
    """sGDML's iterative (CG) solver, watched: every product with K timed, and stopped at a deadline.

    Wraps the operator ``Iterative._init_kernel_operator`` returns (one call of its matvec =
    one product K v = one CG iteration after the first) and, after each product, appends a
    JSON line to ``progress_path`` (flushed, so it survives a kill): product number,
    seconds since ``start``, the product's seconds, sGDML's iteration counter and
    residual norm (the module globals its CG callback keeps), and VmHWM.  Past
    ``time_limit_s`` (seconds since ``start``) the next product raises
    _TimeLimitReached, which leaves GDMLTrain.train.  ``save_checkpoint`` is the
    ``save_progr_callback`` sGDML's CLI passes to train: sGDML calls it with the unconverged
    model about every two minutes; the last one is kept.
    """

    def __init__(self, progress_path, time_limit_s, y_norm, start):
        import numpy as np
        import scipy.sparse.linalg as spla
        from sgdml.solvers import iterative

        self.start = start  # time.perf_counter() when the run started (the limit covers it all)
        self.deadline = None if time_limit_s is None else self.start + float(time_limit_s)
        self.y_norm = float(y_norm)
        self.products = []
        self.checkpoint, self.checkpoint_iteration = None, None
        self.time_limit_reached = False
        self._iterative = iterative
        self._fh = open(progress_path, "w")
        monitor = self
        original = iterative.Iterative._init_kernel_operator

        def init_kernel_operator(solver, *args, **kwargs):
            op = original(solver, *args, **kwargs)  # its constructor already made sGDML's dtype probe
            return spla.LinearOperator(op.shape, matvec=monitor._timed(op.matvec), dtype=np.float64)

        iterative.Iterative._init_kernel_operator = init_kernel_operator

    def _state(self):
        iteration = getattr(self._iterative, "num_iters", None)
        resid = getattr(self._iterative, "resid", None)
        return (None if iteration is None else int(iteration)), (None if resid is None else float(resid))

    def _timed(self, matvec):
        def timed(v):
            t0 = time.perf_counter()
            out = matvec(v)
            now = time.perf_counter()
            self.products.append(now - t0)
            iteration, resid = self._state()
            record = {"product": len(self.products), "t": now - self.start, "product_s": now - t0,
                      "iteration": iteration, "resid": resid,
                      "rel_resid": None if resid is None else resid / self.y_norm,
                      "vmhwm_bytes": _status_bytes("VmHWM")}
            self._fh.write(json.dumps(record) + "\n")
            self._fh.flush()
            if len(self.products) % 25 == 1:
                _log(f"CG product {record['product']}: iteration {iteration}, relative residual "
                     f"{record['rel_resid']}, {record['product_s']:.2f} s, t = {record['t']:.0f} s")
            if self.deadline is not None and now > self.deadline:
                self.time_limit_reached = True
                raise _TimeLimitReached(f"time limit reached after {len(self.products)} products")
            return out

        return timed

    def save_checkpoint(self, model):
        self.checkpoint, self.checkpoint_iteration = model, self._state()[0]
        _log(f"sGDML checkpoint (unconverged model) at iteration {self.checkpoint_iteration}")

    def summary(self):
        self._fh.close()
        iteration, resid = self._state()
        return {"products": len(self.products), "product_s": self.products,
                "iterations": iteration, "resid": resid,
                "rel_resid": None if resid is None else resid / self.y_norm, "y_norm": self.y_norm,
                "time_limit_reached": self.time_limit_reached,
                "checkpoint_iteration": self.checkpoint_iteration,
                "elapsed_s": time.perf_counter() - self.start}


def _tile_to(R, n):
    """n geometries: R repeated cyclically (R has at least one)."""
    import numpy as np

    reps = -(-n // len(R))
    return np.ascontiguousarray(np.concatenate([R] * reps)[:n])


def run_train(config_path):
    run_start = time.perf_counter()
    import multiprocessing as mp

    import numpy as np
    import psutil

    with open(config_path) as fh:
        cfg = json.load(fh)
    data = np.load(cfg["input"], allow_pickle=False)
    R, z, F = data["R"], data["z"], data["F"]
    E = data["E"] if "E" in data.files else None
    train_idx = data["train_idx"]
    R_test = data["R_test"]
    perms_mode = cfg["perms"]  # 'given' | 'identity' | 'sgdml'
    use_torch = bool(cfg["use_torch"])
    sigma, lam = cfg["sigma"], float(cfg["lam"])
    repeats, train_repeats = int(cfg["repeats"]), int(cfg["train_repeats"])
    batches = [int(b) for b in cfg["batches"]]
    tune_parallel = bool(cfg.get("prepare_parallel", True))
    solver_name = cfg.get("solver", "analytic")  # the one sGDML must pick: 'analytic' or 'cg'

    from sgdml.predict import GDMLPredict
    from sgdml.train import GDMLTrain
    from sgdml.utils import perm as sgdml_perm

    # The CLI's defaults: all memory (GB) and all CPUs; max_memory_gb is the CLI's -m.  sGDML
    # takes its iterative (CG) solver when the closed form would not fit in max_memory, and
    # max_memory also sets its number of Nystrom inducing points.
    max_memory = cfg.get("max_memory_gb")
    if max_memory is None:
        max_memory = int(psutil.virtual_memory().total // 2**30)
    if cfg.get("seed") is not None:
        np.random.seed(int(cfg["seed"]))  # sGDML draws its leverage-score columns with np.random
    max_processes = mp.cpu_count()

    n_train = len(train_idx)
    R_train = np.ascontiguousarray(R[train_idx])
    train_ds = {
        "type": "d", "name": np.array(cfg.get("name", "benchmark")),
        "theory": np.array(cfg.get("theory", "unknown")),
        "R": R_train, "z": z, "F": np.ascontiguousarray(F[train_idx]),
    }
    if E is not None:
        train_ds["E"] = np.ascontiguousarray(E[train_idx])
    use_E = E is not None

    perms = None
    use_sym = True
    result = {"system": "sgdml", "path": "torch" if use_torch else "numpy",
              "use_torch": use_torch, "n_train": n_train, "n_atoms": int(R.shape[1]),
              "sigma": sigma, "lam": lam, "solver_required": solver_name, "use_E": use_E, "perms_mode": perms_mode,
              "max_memory_gb": max_memory, "max_processes": max_processes,
              "versions": _versions()}

    sym_time = None
    sgdml_perms = None
    if perms_mode == "given":
        perms = np.asarray(data["perms"], dtype=np.int64)
    elif perms_mode == "identity":
        use_sym = False
    elif perms_mode == "sgdml":  # use sGDML's own search (then it is timed here, once)
        t0 = time.perf_counter()
        sgdml_perms = sgdml_perm.find_perms(R_train, z, max_processes=max_processes)
        sym_time = time.perf_counter() - t0
        perms = sgdml_perms
    else:
        raise ValueError(f"unknown perms mode {perms_mode!r}")

    gdml_train = GDMLTrain(max_memory=max_memory, max_processes=max_processes,
                           use_torch=use_torch)
    timers = _Timers(gdml_train)
    monitor = None
    if solver_name == "cg":
        y = train_ds["F"].ravel() / np.std(train_ds["F"].ravel())  # sGDML's scaled labels (use_E_cstr off)
        monitor = _CgMonitor(cfg["progress_jsonl"], cfg.get("time_limit_s"), np.linalg.norm(y), run_start)

    rss_before = _status_bytes("VmRSS")
    hwm_reset = _reset_peak_rss()
    sampler = _PssSampler()
    sampler.start()
    t_create, t_train = [], []
    model = None
    for rep in range(train_repeats):
        t0 = time.perf_counter()
        task = gdml_train.create_task(train_ds, n_train, train_ds, 0, sig=sigma, lam=lam,
                                      perms=perms, use_sym=use_sym, use_E=use_E,
                                      use_E_cstr=False)
        t_create.append(time.perf_counter() - t0)
        if not np.array_equal(task["idxs_train"], np.arange(n_train)):
            raise RuntimeError("sGDML did not take the training frames in the given order")
        task["idxs_train"] = np.asarray(train_idx)  # informational only: training uses R_train
        del model
        t0 = time.perf_counter()
        if monitor is None:
            model = gdml_train.train(task)
        else:
            try:
                model = gdml_train.train(task, save_progr_callback=monitor.save_checkpoint)
            except _TimeLimitReached as stop:
                _log(f"{stop}: testing sGDML's last checkpoint (iteration "
                     f"{monitor.checkpoint_iteration})")
                model = monitor.checkpoint
        t_train.append(time.perf_counter() - t0)
        solve = (f", solve {timers.solve_total[-1] - timers.assembly[-1]:.3f} s"
                 if timers.solve_total else "")  # the closed form's; CG's products are in _CgMonitor
        _log(f"train {rep + 1}/{train_repeats}: {t_train[-1]:.3f} s "
             f"(assembly calls {[round(a, 3) for a in timers.assembly]} s{solve})")
    if model is not None and model["solver_name"] != solver_name:
        raise RuntimeError(f"sGDML used its {model['solver_name']!r} solver, not {solver_name!r} "
                           "(max_memory decides: see _CgMonitor / run_sgdml)")
    peak_pss = sampler.stop()
    peak_self = _status_bytes("VmHWM")
    peak_children = _maxrss_bytes(resource.RUSAGE_CHILDREN)

    result["timings"] = {
        "assembly": timers.assembly,
        "solve": [s - a for s, a in zip(timers.solve_total, timers.assembly)],
        "cholesky": timers.cholesky,
        "train": t_train,
        "create_task": t_create,
    }
    result["memory"] = {"rss_before_train_bytes": rss_before,
                        "peak_rss_self_bytes": peak_self,
                        "peak_rss_self_since": "training" if hwm_reset else "exec",
                        "peak_rss_children_bytes": peak_children,
                        "peak_pss_total_bytes": peak_pss,
                        "pss_samples": sampler.samples,
                        "peak_rss_train_bytes": peak_self}
    if monitor is not None:
        result["cg"] = monitor.summary()
        result["cg"]["converged"] = bool(model is not None and not monitor.time_limit_reached
                                         and model["solver_resid"] <= model["solver_tol"]
                                         * model["norm_y_train"])
        result["cg"]["tol"] = None if model is None else float(model["solver_tol"])
        result["cg"]["inducing_columns"] = (None if model is None
                                            else int(len(model["inducing_pts_idxs"])))
    if model is None:  # stopped before sGDML's first checkpoint: nothing to test
        np.savez(cfg["output_npz"])
        with open(cfg["output_json"], "w") as fh:
            json.dump(result, fh, indent=1)
        return
    result["n_perms"] = int(model["perms"].shape[0])
    result["perms_used"] = np.asarray(model["perms"]).tolist()
    result["energy_constant"] = float(model["c"])
    result["label_std"] = float(model["std"])
    result["solver"] = str(model["solver_name"])

    # ---------------------------------------------------------------- prediction
    predictor = GDMLPredict(model, max_memory=max_memory, max_processes=max_processes,
                            use_torch=use_torch)
    n_atoms = R.shape[1]
    E_pred, F_pred = predictor.predict(R_test.reshape(len(R_test), -1))
    out_arrays = {"E_pred": np.asarray(E_pred, dtype=np.float64),
                  "F_pred": np.asarray(F_pred, dtype=np.float64).reshape(len(R_test), n_atoms, 3)}
    if use_torch:
        # GDMLPredict.predict casts R to float32 before the (float64) torch model; the same
        # model called with float64 geometries shows how much that rounding costs.
        import torch

        tp = predictor.torch_predict
        tp = tp.module if isinstance(tp, torch.nn.DataParallel) else tp
        with torch.no_grad():
            E64, F64 = tp.forward(torch.from_numpy(np.ascontiguousarray(R_test, dtype=np.float64)))
        out_arrays["E_pred_float64_input"] = E64.cpu().numpy().astype(np.float64)
        out_arrays["F_pred_float64_input"] = F64.cpu().numpy().astype(np.float64).reshape(
            len(R_test), n_atoms, 3)

    throughput, predict_times, predict_config = {}, {}, {}
    for b in batches:
        Rb = _tile_to(R_test, b).reshape(b, -1)
        config = {}
        if not use_torch and tune_parallel:
            # What `sgdml test` does before predicting: benchmark-tune workers/chunking.
            t0 = time.perf_counter()
            predictor.prepare_parallel(n_bulk=b)
            config["prepare_parallel_s"] = time.perf_counter() - t0
            config.update(num_workers=int(predictor.num_workers),
                          chunk_size=int(predictor.chunk_size), bulk_mp=bool(predictor.bulk_mp))
        elif not use_torch:
            config.update(num_workers=int(predictor.num_workers),
                          chunk_size=int(predictor.chunk_size), bulk_mp=bool(predictor.bulk_mp))
        else:
            import sgdml.torchtools as torchtools  # geometries per torch pass (<= n_train on CPU)

            config["torch_batch_size"] = int(torchtools._batch_size)
        predictor.predict(Rb)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            predictor.predict(Rb)
            times.append(time.perf_counter() - t0)
        throughput[str(b)] = b / _median(times)
        predict_times[str(b)] = times
        predict_config[str(b)] = config
        _log(f"predict batch {b}: {throughput[str(b)]:.1f} geometries/s")
    result["throughput"] = throughput
    result["predict_times"] = predict_times
    result["predict_config"] = predict_config
    del predictor

    # ---------------------------------------------------------------- symmetry search
    if sgdml_perms is None:
        t0 = time.perf_counter()
        sgdml_perms = sgdml_perm.find_perms(R_train, z, max_processes=max_processes)
        sym_time = time.perf_counter() - t0
    result["symmetry"] = {"time": sym_time, "n_perms": int(len(sgdml_perms)),
                          "perms": np.asarray(sgdml_perms).tolist(),
                          "n_geometries": n_train}
    _log(f"symmetry search: {len(sgdml_perms)} permutations in {sym_time:.3f} s")

    np.savez(cfg["output_npz"], **out_arrays)
    with open(cfg["output_json"], "w") as fh:
        json.dump(result, fh, indent=1)


def run_cli(argv):
    import sgdml.cli as cli

    cli._check_update = lambda: (False, "")
    cli._print_billboard = lambda: None
    sys.argv = ["sgdml"] + list(argv)
    cli.main()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) >= 1 and argv[0] == "cli":
        run_cli(argv[1:])
    elif len(argv) == 2 and argv[0] == "train":
        run_train(argv[1])
    else:
        print("usage: sgdml_driver.py train CONFIG.json | sgdml_driver.py cli ARGS...",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
