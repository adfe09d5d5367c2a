"""Side-by-side benchmark: gdmlc, sGDML 1.0.3 (torch and --cpu) and the paper's JAX approach.

Run from the repository root::

    python -m benchmarks run --quick          # ethanol, MD17 labels, M=200, P=6 (10-20 min here)
    python -m benchmarks run                  # the full run (hours)
    python -m benchmarks run --systems gdmlc,jax --molecules ethanol --sizes 200,500 --repeats 3
    python -m benchmarks report benchmarks/results/RUN.json   # re-render the markdown and plots

What one run does, on ../shared/data/rmd17 (``--data-dir``; without it, the embedded ethanol data):

* measures the machine's floors first (benchmarks/floors.py: memory bandwidth, DGEMM and
  DPOTRF rates), in the same run as everything else;
* times gdmlc's first compile (fresh subprocess, empty GDMLC_GENERATED_DIR) and cached
  start-up (fresh subprocess on the now-filled directory): import, compile_model, a tiny fit
  and a first prediction;
* for every case (molecule x labels x M x with/without symmetries) and every system:
  trains ``--repeats`` times on the same training indices, sigma, lambda and permutations
  (the group gdmlc's ``find_permutations`` finds in the training geometries, or the identity),
  timing the stages (symmetry search, descriptors, assembly, Cholesky solve, coefficients,
  energy constant, end to end); measures prediction throughput for batches of 1, 10, 1000;
  predicts the test file and computes energy/force MAE and RMSE; each system runs in its own
  subprocess, so its peak RSS (VmHWM, read right after training) is its own;
* checks that the systems' test predictions agree to <= 1e-6 (relative) and reports the
  largest difference, pass or fail;
* writes benchmarks/results/<date>-<name>.json (every sample), <date>-<name>.md (tables) and
  PNG plots, and prints the report.

JSON layout (schema "gdmlc-benchmark/1"; every time in seconds, every memory in bytes)::

    schema, name, command, cwd, started, finished, wall_s, work_dir
    config      the options used (molecules, labels, sizes, symmetries, systems, repeats, batches,
                sigma, lam, seed, n_test, n_test_dense, min_time, max_call_s, timeout, floors,
                interleave, perturb, tolerance, memory_factor, data_dir, quick, ...)
    git         {commit, dirty, dirty_files}
    versions    python, numpy, scipy, numba, jax, jaxlib, sympy, matplotlib, gdmlc, numba threads, env
    machine     cpu_model, nproc, cpu_affinity, ram_bytes, platform, load_average_start/_end,
                floors_description (benchmarks.floors.machine_description())
    floors      {status, memory_bandwidth, dgemm, dpotrf}: floors.py's dicts (value, unit, samples, ...)
    systems     {system: {status, reason}}: availability (sGDML venv, jax_paper importable)
    startup     {gdmlc: {first, cached: {import_s, compile_model_s, first_fit_s, first_predict_s,
                 to_first_prediction_s, process_wall_s: {samples, median}}}}
    cases       [{id, molecule, labels, n_train, n_atoms, symmetric, n_perms, perms, train_idx,
                  n_test, matrix_rows, matrix_bytes, sigma, lam, data, harness_symmetry_search_s,
                  floors: {assembly: {seconds, write_s, flops_s, ...}, cholesky: {seconds, ...}},
                  results: {system: {status: ok|skipped|failed, reason,
                      timings: {symmetry_s, descriptor_s, assembly_s, solve_s, coefficients_s,
                                energy_constant_s, train_s, ...: {samples, median}},
                      throughput: {"1"|"10"|"1000": {status, geometries_per_s, seconds_per_call,
                                   first_call_s, calls_per_sample, reason}},
                      peak_rss_bytes (after training), process_peak_rss_bytes, errors: {energy_mae,
                      energy_rmse, force_mae, force_rmse}, n_test, compile (JAX: first vs later
                      calls, jit seconds), notes, rounds, raw (sGDML: run_sgdml's dict), ...}},
                  agreement: {status: pass|FAIL|not compared, tolerance, max_rel, worst_pair,
                              pairs: [{a, b, n_frames, force_rel, energy_rel, force_max_abs,
                                       energy_max_abs, finite, max_rel, pass}]}}]
    skipped     [{molecule, labels, n_train, reason}]: what did not run and why
    targets     [{id, target, case, value, threshold, met, factor, verdict, detail}]
    plots       [paths]

Before each (system, size) the harness compares an estimate of the memory that system needs
(a multiple of the training matrix, MEMORY_FACTOR) with MemAvailable, and skips the size with
the reason recorded instead of swapping or crashing.  A system that fails is recorded as failed
with the end of its error output; the run goes on.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from statistics import median

import numpy as np

from runtime.assembly import available_memory_bytes, proc_field_bytes

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data" / "rmd17"
FALLBACK_DATA = REPO / "runtime" / "default_data" / "ethanol_gfn2xtb_500K.npz"
RESULTS_DIR = REPO / "benchmarks" / "results"
WORK_DIR = REPO / "benchmarks" / "work"  # git-ignored: predictions and worker files

SCHEMA = "gdmlc-benchmark/1"
SYSTEMS = ("gdmlc", "sgdml_torch", "sgdml_cpu", "jax_contraction", "jax_dense")
GROUPS = {"gdmlc": ("gdmlc",), "sgdml": ("sgdml_torch", "sgdml_cpu"),
          "jax": ("jax_contraction", "jax_dense")}
# memory a system's training needs, in training matrices (3NM)^2 * 8 bytes, plus a margin
# (estimates: gdmlc works in place on one matrix; sGDML keeps ~3 copies (measured ~16 GB for a
# 5.8 GB matrix; sgdml_runner refuses below 3x itself); the JAX model fills a NumPy matrix from
# 128 MiB chunks, then scipy's cho_factor copies it into Fortran order)
MEMORY_FACTOR = {"gdmlc": 1.05, "sgdml_torch": 3.0, "sgdml_cpu": 3.0,
                 "jax_contraction": 2.2, "jax_dense": 2.2}
MEMORY_MARGIN = 0.75 * 2**30
TOLERANCE = 1e-6  # largest relative difference allowed between systems' predictions
STAGES = ("symmetry_s", "descriptor_s", "assembly_s", "solve_s", "coefficients_s",
          "energy_constant_s", "train_s")
FULL = dict(molecules=["ethanol", "aspirin"], labels=["old", "new"], sizes=[200, 500, 1000],
            symmetries=["sym", "nosym"], repeats=3, batches=[1, 10, 1000], n_test=1000,
            n_test_dense=100, min_time=0.3, max_call_s=120.0, timeout=4 * 3600)
QUICK = dict(molecules=["ethanol"], labels=["old"], sizes=[200],
             symmetries=["sym"], repeats=3, batches=[1, 10, 1000], n_test=200,
             n_test_dense=50, min_time=0.1, max_call_s=15.0, timeout=900)


def _log(msg=""):
    print(msg, flush=True)


# ============================================================================ data

def molecule_files(data_dir, molecule):
    """{'train', 'test', 'kind'} for a molecule, or None.  Without rMD17, ethanol falls back to
    the embedded GFN2-xTB data (frames 0..1999 train, 2000..2999 test; one label set)."""
    data_dir = Path(data_dir)
    train = data_dir / f"rmd17_{molecule}_train_01.npz"
    test = data_dir / f"rmd17_{molecule}_test_01.npz"
    if train.is_file() and test.is_file():
        return {"kind": "rmd17", "train": str(train), "test": str(test)}
    if molecule == "ethanol" and FALLBACK_DATA.is_file():
        return {"kind": "default", "train": str(FALLBACK_DATA), "test": str(FALLBACK_DATA),
                "train_frames": [0, 2000], "test_frames": [2000, 3000]}
    return None


def load_split(files, labels):
    """(train Dataset, test Dataset) for one label set ('old', 'new' or 'default')."""
    from runtime.data import load_dataset
    lab = "new" if labels == "default" else labels
    if files["kind"] == "default":
        ds = load_dataset(files["train"], labels=lab)
        a, b = files["train_frames"]
        c, d = files["test_frames"]
        return ds.subset(np.arange(a, min(b, len(ds)))), ds.subset(np.arange(c, min(d, len(ds))))
    return load_dataset(files["train"], labels=lab), load_dataset(files["test"], labels=lab)


def training_indices(n_frames, m, seed):
    """M training frames: the first M of one seeded permutation (so sizes are nested), sorted."""
    return np.sort(np.random.default_rng(seed).permutation(n_frames)[:m])


# ============================================================================ small tools

def summary(samples):
    """{'samples': [...], 'median': x} (median None when there are no samples)."""
    samples = [float(s) for s in samples if s is not None]
    return {"samples": samples, "median": median(samples) if samples else None}


def peak_rss_bytes():
    """This process's peak resident memory: VmHWM of /proc/self/status.

    Not getrusage's ru_maxrss: Linux keeps that across fork and execve, so a subprocess
    would report at least its parent's peak at the time of the fork."""
    peak = proc_field_bytes("VmHWM", "/proc/self/status")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB


def current_rss_bytes():
    return proc_field_bytes("VmRSS", "/proc/self/status")


def tile(R, b):
    """b geometries from R (repeated when R has fewer)."""
    return np.ascontiguousarray(R[np.arange(b) % len(R)])


def throughput(predict, R_pool, batches, repeats, min_time, max_call_s, log=None):
    """Geometries per second of ``predict(R_batch)`` for each batch size.

    Each batch size is called once first (its first-call time is kept: for JAX it includes
    the jit compile of that shape), then calibrated to n calls per sample (>= min_time), then
    ``repeats`` samples; the median seconds per call gives geometries/s.  A batch whose
    single call is estimated (from the previous batch's rate) or measured to take longer than
    max_call_s is skipped with the reason recorded."""
    out, rate = {}, None
    for b in batches:
        key = str(b)
        if rate is not None and b / rate > max_call_s:
            out[key] = {"batch": b, "status": "skipped",
                        "reason": f"estimated {b / rate:.0f} s per call at the measured rate "
                                  f"{rate:.3g}/s > max_call_s {max_call_s:g} s"}
            continue
        Rb = tile(R_pool, b)
        t = time.perf_counter()
        predict(Rb)
        first = time.perf_counter() - t
        t = time.perf_counter()
        predict(Rb)
        once = time.perf_counter() - t
        if once > max_call_s:
            out[key] = {"batch": b, "status": "skipped", "first_call_s": first,
                        "reason": f"one call took {once:.1f} s > max_call_s {max_call_s:g} s"}
            rate = b / once
            continue
        n = max(1, int(math.ceil(min_time / max(once, 1e-7))))
        samples = []
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(n):
                predict(Rb)
            samples.append((time.perf_counter() - t) / n)
        med = median(samples)
        rate = b / med
        out[key] = {"batch": b, "status": "ok", "calls_per_sample": n, "first_call_s": first,
                    "seconds_per_call": samples, "geometries_per_s": rate}
        if log:
            log(f"    predict batch {b}: {rate:.4g} geometries/s")
    return out


def error_table(E_pred, F_pred, E_ref, F_ref):
    from runtime.model import error_table as et
    return et(E_pred, F_pred, E_ref, F_ref)


class StageClock:
    """Wraps functions so that the outermost timed call of each stage adds to its total."""

    def __init__(self):
        self.totals, self.depth = {}, 0

    def wrap(self, name, fn):
        def timed(*args, **kwargs):
            if self.depth:
                return fn(*args, **kwargs)
            self.depth += 1
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.depth -= 1
                self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - t
        return timed


# ============================================================================ workers (subprocesses)

def _gdmlc_worker(spec, train, test, log):
    import runtime.model as rm
    import runtime.symmetry as rs
    from runtime.model import GDML

    perms = np.asarray(spec["perms"], dtype=np.int64)
    idx = np.asarray(spec["train_idx"])
    R, F, E, z = train.R[idx], train.F[idx], train.E[idx], train.z
    sym = spec["symmetric"]
    sigma, lam = spec["sigma"], spec["lam"]

    # warm-up: load the compiled module and Numba's cache (first-call cost is measured separately)
    GDML(sigma=sigma, lam=lam, symmetries=perms, progress=False).fit(R[:3], F[:3], E[:3], z)
    rss_before = current_rss_bytes()

    clock = StageClock()
    originals = {"assemble": rm.assemble, "cholesky_solve_inplace": rm.cholesky_solve_inplace,
                 "find_permutations": rs.find_permutations}
    rm.assemble = clock.wrap("assembly_s", originals["assemble"])
    rm.cholesky_solve_inplace = clock.wrap("solve_s", originals["cholesky_solve_inplace"])
    rs.find_permutations = clock.wrap("symmetry_s", originals["find_permutations"])
    timings = {k: [] for k in STAGES}
    perms_match, lam_used, model = None, None, None
    try:
        for r in range(spec["repeats"]):
            model = None  # free the previous repeat's model before the next matrix
            model = GDML(sigma=sigma, lam=lam, symmetries="auto" if sym else None, progress=False)
            desc = model.model.descriptor
            desc.evaluate = clock.wrap("descriptor_s", type(desc).evaluate.__get__(desc))
            model._set_coefficients = clock.wrap("coefficients_s", model._set_coefficients)
            model._fit_energy_constant = clock.wrap("energy_constant_s", model._fit_energy_constant)
            clock.totals = {}
            t = time.perf_counter()
            model.fit(R, F, E, z)
            total = time.perf_counter() - t
            del desc.evaluate  # back to the class method
            for k in STAGES[:-1]:
                timings[k].append(clock.totals.get(k))
            timings["train_s"].append(total)
            lam_used = model.lam_used
            if sym:
                perms_match = sorted(map(tuple, model.perms.tolist())) == sorted(map(tuple, perms.tolist()))
            log(f"    train {r + 1}/{spec['repeats']}: {total:.3g} s (" + ", ".join(
                f"{k[:-2]} {v:.3g}" for k, v in clock.totals.items()) + ")")
    finally:
        rm.assemble = originals["assemble"]
        rm.cholesky_solve_inplace = originals["cholesky_solve_inplace"]
        rs.find_permutations = originals["find_permutations"]
    peak = peak_rss_bytes()

    def predict(Rb):
        return model.predict(Rb, progress=False)

    n_test = min(spec["n_test"], len(test))
    E_pred, F_pred = model.predict(test.R[:n_test], progress=False)
    tp = throughput(predict, test.R, spec["batches"], spec["repeats"], spec["min_time"],
                    spec["max_call_s"], log)
    notes = []
    missing = [k for k in STAGES if k != "symmetry_s" and any(v is None for v in timings[k])]
    if missing:
        notes.append("stage(s) not observed in GDML.fit (runtime changed?): " + ", ".join(missing))
    if not sym:
        timings["symmetry_s"] = []
    return {"timings": {k: summary(v) for k, v in timings.items()},
            "throughput": tp, "peak_rss_bytes": peak, "rss_before_training_bytes": rss_before,
            "lam_used": lam_used, "perms_match": perms_match, "n_perms_used": int(len(model.perms)),
            "notes": notes}, E_pred, F_pred


def _jax_worker(spec, train, test, log):
    from benchmarks import jax_paper
    mode = spec["system"].split("_", 1)[1]
    perms = np.asarray(spec["perms"], dtype=np.int64)
    idx = np.asarray(spec["train_idx"])
    R, F, E, z = train.R[idx], train.F[idx], train.E[idx], train.z
    model = jax_paper.JaxPaperModel(z, perms, spec["sigma"], mode=mode)
    notes = []
    compile_info = {}

    def compile_seconds():
        return sum(sum(v) for v in getattr(model, "compile_times", {}).values())

    # first call of the assembly (jit compile included); later calls: inside fit() below
    t = time.perf_counter()
    K = model.assemble(R)
    compile_info["assemble_first_call_s"] = time.perf_counter() - t
    compile_info["assemble_compile_s"] = compile_seconds()
    del K
    log(f"    first assemble call: {compile_info['assemble_first_call_s']:.3g} s "
        f"({compile_info['assemble_compile_s']:.2f} s jit compile)")
    rss_before = current_rss_bytes()
    timings = {k: [] for k in STAGES}
    in_fit = []
    for r in range(spec["repeats"]):
        c0 = compile_seconds()
        t = time.perf_counter()
        model.fit(R, F, E, spec["lam"])
        total = time.perf_counter() - t
        compiled = compile_seconds() - c0  # jit compiles inside fit (first predict shape)
        in_fit.append(compiled)
        timings["train_s"].append(total - compiled)
        st = getattr(model, "timings", {}) or {}
        timings["assembly_s"].append(st.get("assemble_s", st.get("assembly_s")))
        timings["solve_s"].append(st.get("solve_s"))
        rest = total - compiled - sum(v for v in (timings["assembly_s"][-1], timings["solve_s"][-1]) if v)
        timings["energy_constant_s"].append(rest)
        log(f"    fit {r + 1}/{spec['repeats']}: {total:.3g} s" + (f" ({compiled:.2f} s jit compile, "
                                                                  "not counted)" if compiled else ""))
    if any(in_fit):
        notes.append("train_s excludes the jit compile seconds logged during fit() (compile.compile_in_fit_s)")
    notes.append("energy_constant_s: fit time minus assembly and solve (coefficients + energy constant)")
    compile_info["compile_in_fit_s"] = in_fit
    compile_info["assemble_later_call_s"] = median([a for a in timings["assembly_s"] if a is not None] or [0.0])
    peak = peak_rss_bytes()

    def predict(Rb):
        return model.predict(Rb)

    n_test = min(spec["n_test_dense"] if mode == "dense" else spec["n_test"], len(test))
    E_pred, F_pred = (np.asarray(a) for a in model.predict(test.R[:n_test]))
    tp = throughput(predict, test.R, spec["batches"], spec["repeats"], spec["min_time"],
                    spec["max_call_s"], log)
    for b, v in tp.items():
        if "first_call_s" in v:
            compile_info[f"predict_{b}_first_call_s"] = v["first_call_s"]
        if v.get("seconds_per_call"):
            compile_info[f"predict_{b}_later_call_s"] = median(v["seconds_per_call"])
    compile_info["compile_times"] = dict(getattr(model, "compile_times", {}))
    compile_info["total_compile_s"] = compile_seconds()
    versions = {}
    try:
        import jax
        import jaxlib
        versions = {"jax": jax.__version__, "jaxlib": jaxlib.__version__}
    except ImportError:
        pass
    return {"timings": {k: summary(v) for k, v in timings.items()}, "throughput": tp,
            "peak_rss_bytes": peak, "rss_before_training_bytes": rss_before,
            "compile": compile_info, "versions": versions, "notes": notes}, E_pred, F_pred


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist() if obj.size <= 10000 else f"<array {obj.shape}>"
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return repr(obj)


def worker_main(spec_path):
    """Entry point of one system's subprocess: read the spec, run, write result + predictions."""
    spec = json.loads(Path(spec_path).read_text())
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    result = {"status": "ok"}
    try:
        train, test = load_split(spec["files"], spec["labels"])
        fn = _gdmlc_worker if spec["system"] == "gdmlc" else _jax_worker
        res, E_pred, F_pred = fn(spec, train, test, log)
        result.update(res)
        n = len(E_pred)
        result["n_test"] = n
        result["errors"] = error_table(E_pred, F_pred, test.E[:n], test.F[:n])
        np.savez(spec["out_npz"], E=np.asarray(E_pred), F=np.asarray(F_pred))
        result["predictions"] = spec["out_npz"]
    except MemoryError as exc:  # includes runtime.assembly.MemoryLimitError
        result = {"status": "skipped", "reason": f"{type(exc).__name__}: {exc}"}
    except Exception as exc:
        result = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc()[-4000:]}
    result["process_peak_rss_bytes"] = peak_rss_bytes()  # whole worker, prediction included
    Path(spec["out_json"]).write_text(json.dumps(_jsonable(result), indent=1))
    return 0


def run_worker(spec, workdir, timeout, log):
    """Run one system in a fresh subprocess; returns its result dict (never raises)."""
    tag = f"{spec['system']}-{spec['case_id']}"
    spec = dict(spec, out_json=str(workdir / f"{tag}.json"), out_npz=str(workdir / f"{tag}.npz"))
    spec_path = workdir / f"{tag}.spec.json"
    spec_path.write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "benchmarks.harness", "--worker", str(spec_path)]
    t = time.perf_counter()
    env = dict(os.environ)
    if spec.get("peer_blas_threads") and spec["system"] != "gdmlc":
        env["OPENBLAS_NUM_THREADS"] = str(spec["peer_blas_threads"])  # see --peer-single-thread-from
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env=env)
    tail = []
    deadline = time.monotonic() + timeout
    timed_out = False
    import selectors
    sel = selectors.DefaultSelector()
    sel.register(proc.stderr, selectors.EVENT_READ)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            os.killpg(proc.pid, 9)
            break
        if not sel.select(timeout=min(left, 5.0)):
            continue
        line = proc.stderr.readline()
        if not line:
            break
        tail = (tail + [line.rstrip()])[-40:]
        log(line.rstrip())
    sel.close()
    proc.wait()
    wall = time.perf_counter() - t
    out = Path(spec["out_json"])
    if out.is_file() and not timed_out:
        res = json.loads(out.read_text())
    elif timed_out:
        res = {"status": "failed", "reason": f"timed out after {timeout:g} s"}
    else:
        res = {"status": "failed",
               "reason": f"worker exited with status {proc.returncode} without a result"
                         + (" (killed: out of memory?)" if proc.returncode in (-9, 137) else ""),
               "stderr_tail": "\n".join(tail)}
    res["process_wall_s"] = wall
    res["returncode"] = proc.returncode
    return res


# ============================================================================ gdmlc start-up

STARTUP_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from runtime.model import GDML
t1 = time.perf_counter()
d = np.load(sys.argv[1])
R, F, E, z = d["R"], d["F"], d["E"], d["z"]
t2 = time.perf_counter()
model = GDML(sigma=float(sys.argv[2]), lam=1e-10, symmetries=None, progress=False)
t3 = time.perf_counter()
model.fit(R[:4], F[:4], E[:4], z)
t4 = time.perf_counter()
model.predict(R[4:5], progress=False)
t5 = time.perf_counter()
print("GDMLC_STARTUP " + json.dumps({"import_s": t1 - t0, "compile_model_s": t3 - t2,
      "first_fit_s": t4 - t3, "first_predict_s": t5 - t4, "to_first_prediction_s": t5 - t2,
      "built_now": bool(model.model.descriptor.built_now)}))
"""


def gdmlc_startup(train, sigma, repeats, log):
    """First compile (empty GDMLC_GENERATED_DIR) and cached start-up, fresh subprocesses."""
    tmp = Path(tempfile.mkdtemp(prefix="gdmlc_startup_"))
    first, cached = [], []
    try:
        inputs = tmp / "inputs.npz"
        np.savez(inputs, R=train.R[:5], F=train.F[:5], E=train.E[:5], z=train.z)
        invalid = []
        for r in range(2 * repeats):  # invalid repetitions are retried, up to `repeats` times
            if len(first) == repeats:
                break
            gen = tmp / f"generated_{r}"
            gen.mkdir()
            runs = []
            for _ in range(2):
                env = dict(os.environ, GDMLC_GENERATED_DIR=str(gen))
                env.pop("NUMBA_CACHE_DIR", None)
                t = time.perf_counter()
                proc = subprocess.run([sys.executable, "-c", STARTUP_CHILD, str(inputs), str(sigma)],
                                      cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
                wall = time.perf_counter() - t
                if proc.returncode != 0:
                    raise RuntimeError(f"start-up subprocess failed:\n{proc.stderr[-3000:]}")
                line = [ln for ln in proc.stdout.splitlines() if ln.startswith("GDMLC_STARTUP ")][-1]
                runs.append(json.loads(line.split(" ", 1)[1]) | {"process_wall_s": wall})
            if not runs[0]["built_now"] or runs[1]["built_now"]:
                # e.g. the compiler's source changed between the two subprocesses (it is part of
                # the cache key): not a first-compile / cached pair; recorded, not counted
                invalid.append(runs)
                log(f"  gdmlc start-up {r + 1}: invalid pair (built_now {runs[0]['built_now']}, "
                    f"{runs[1]['built_now']}), not counted")
                continue
            first.append(runs[0])
            cached.append(runs[1])
            log(f"  gdmlc start-up {len(first)}/{repeats}: first {runs[0]['to_first_prediction_s']:.2f} s, "
                f"cached {runs[1]['to_first_prediction_s']:.3f} s (+ import {runs[1]['import_s']:.2f} s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def agg(runs):
        keys = [k for k in runs[0] if k != "built_now"]
        return {k: summary([r[k] for r in runs]) for k in keys}

    if not first:
        return {"status": "failed", "invalid_pairs": invalid,
                "reason": "no valid first-compile / cached pair (the first subprocess did not build "
                          "the module or the second rebuilt it)"}
    return {"status": "ok", "repetitions": len(first), "invalid_pairs": invalid,
            "first": agg(first), "cached": agg(cached),
            "what": "fresh subprocess: import runtime; GDML(...) (compile_model); fit on 4 "
                    "geometries (first assembly/solve/contract/predict calls); first prediction. "
                    "first = empty GDMLC_GENERATED_DIR, cached = the same directory afterwards"}


# ============================================================================ floors

FLOOR_SIZES = {"full": {}, "quick": {"memory_bandwidth": (128 * 2**20, 3), "dgemm": (2000, 3),
                                     "dpotrf": (4000, 3)},
               "tiny": {"memory_bandwidth": (16 * 2**20, 2), "dgemm": (400, 2), "dpotrf": (600, 2)}}


def floors_main(out_path, sizes):
    """Subprocess entry: measure the floors, write JSON (keeps the big test arrays out of the
    harness process, whose peak memory its subprocesses would otherwise inherit)."""
    from benchmarks import floors
    out = {"status": "ok", "sizes": sizes}
    args = FLOOR_SIZES[sizes]
    for key, fn in (("memory_bandwidth", floors.memory_bandwidth), ("dgemm", floors.dgemm_rate),
                    ("dpotrf", floors.dpotrf_rate)):
        t = time.perf_counter()
        try:
            out[key] = _jsonable(fn(*args.get(key, ())))
        except Exception as exc:
            out[key] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
            out["status"] = "partial"
        out[key]["measure_s"] = time.perf_counter() - t
    try:
        out["machine"] = _jsonable(floors.machine_description())
    except Exception as exc:
        out["machine"] = f"unavailable: {type(exc).__name__}: {exc}"
    Path(out_path).write_text(json.dumps(out, indent=1))
    return 0


def measure_floors(log, sizes, work):
    """Memory bandwidth, DGEMM and DPOTRF rates (benchmarks/floors.py), in a subprocess."""
    if sizes == "skip":
        return {"status": "skipped", "reason": "--floors skip"}
    out_path = Path(work) / "floors.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.harness", "--floors", str(out_path), sizes],
                          cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0 or not out_path.is_file():
        return {"status": "failed", "reason": f"floors subprocess exited {proc.returncode}: "
                                              f"{proc.stderr[-2000:]}"}
    out = json.loads(out_path.read_text())
    for key in ("memory_bandwidth", "dgemm", "dpotrf"):
        log(f"  {key}: {_floor_text(out[key])} ({out[key].get('measure_s', 0):.1f} s)")
    return out


def _floor_text(d):
    if not isinstance(d, dict) or "value" not in d:
        return str(d.get("reason", d) if isinstance(d, dict) else d)
    return f"{d['value']:.4g} {d.get('unit', '')}".strip()


def case_floors(floor_meas, n_atoms, m, n_perms, n_features):
    """Assembly and Cholesky floors (seconds) for one case, from the run's measured rates."""
    from benchmarks import floors
    out = {}
    n = 3 * n_atoms * m
    try:
        out["cholesky"] = {"seconds": floors.cholesky_floor(n, floor_meas["dpotrf"]),
                           "formula": "n^3/3 / DPOTRF rate", "n": n}
    except Exception as exc:
        out["cholesky"] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    try:
        parts = floors.assembly_floor_parts(n_atoms, m, n_perms, n_features,
                                            floor_meas["memory_bandwidth"], floor_meas["dgemm"])
        out["assembly"] = {"seconds": parts["floor_s"], **_jsonable(parts)}
    except Exception as exc:
        out["assembly"] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    return out


# ============================================================================ sGDML

def sgdml_case(runner, spec, train, test, use_torch, workdir, timeout):
    """One sGDML run (benchmarks/sgdml_runner.run_sgdml, its own subprocess in its venv)."""
    idx = np.asarray(spec["train_idx"])
    n_test = min(spec["n_test"], len(test))
    threads = spec.get("peer_blas_threads")
    saved = os.environ.get("OPENBLAS_NUM_THREADS")
    if threads:  # inherited by sGDML's process only: set here, restored below
        os.environ["OPENBLAS_NUM_THREADS"] = str(threads)
    try:
        t = time.perf_counter()
        res = runner.run_sgdml(train.R, train.z, train.E, train.F, idx, test.R[:n_test],
                               sigma=spec["sigma"], lam=spec["lam"],
                               perms=np.asarray(spec["perms"], dtype=np.int64), use_torch=use_torch,
                               batches=tuple(spec["batches"]), repeats=spec["repeats"],
                               workdir=workdir, progress=True, timeout=timeout)
        wall = time.perf_counter() - t
    except MemoryError as exc:
        return {"status": "skipped", "reason": f"{type(exc).__name__}: {exc}"}, {}
    except Exception as exc:
        return {"status": "failed", "reason": f"{type(exc).__name__}: {str(exc)[-2000:]}",
                "traceback": traceback.format_exc()[-4000:]}, {}
    finally:
        os.environ.pop("OPENBLAS_NUM_THREADS", None)
        if saved is not None:
            os.environ["OPENBLAS_NUM_THREADS"] = saved
    result, predictions = normalise_sgdml(res, wall, test, spec)
    if threads:
        result["notes"].append(f"sGDML ran with OPENBLAS_NUM_THREADS={threads} (--peer-single-thread-from): "
                               "with 2 threads its scipy Cholesky fails at this size here")
    return result, predictions


def normalise_sgdml(res, wall, test, spec):
    """Map run_sgdml's dict onto the harness's result layout.

    Returns (result, predictions) with predictions {name: (E, F)}: 'as run' (sGDML's own
    prediction; its torch path casts geometries to float32) and, where the runner gives
    them, the torch model fed float64 geometries."""
    out = {"status": "ok", "process_wall_s": wall, "notes": []}
    tim = res.get("timings", {})
    timings = {}
    for key, value in tim.items():
        name = key if key.endswith("_s") else key + "_s"
        if name == "assemble_s":
            name = "assembly_s"
        vals = value if isinstance(value, list) else [value]
        timings[name] = summary(v for v in vals if isinstance(v, (int, float)))
    sym = res.get("symmetry") or {}
    timings["symmetry_s"] = summary([sym["time"]] if spec["symmetric"] and "time" in sym else [])
    if spec["symmetric"] and "time" in sym:
        out["notes"].append(f"symmetry_s: sGDML's find_perms on the training geometries "
                            f"(found {sym.get('n_perms')} permutations; training used the given "
                            f"{len(spec['perms'])})")
        out["symmetry_n_perms"] = sym.get("n_perms")
    for k in STAGES:
        timings.setdefault(k, summary([]))
    out["timings"] = timings
    rates = res.get("throughput", {}) or {}
    times = res.get("predict_times", {}) or {}
    tp = {}
    for b in spec["batches"]:
        r = rates.get(b, rates.get(str(b)))
        secs = times.get(b, times.get(str(b)))
        if isinstance(r, (int, float)) and r > 0:
            tp[str(b)] = {"batch": b, "status": "ok", "geometries_per_s": float(r),
                          "seconds_per_call": secs if isinstance(secs, list) else None}
        else:
            tp[str(b)] = {"batch": b, "status": "missing", "reason": f"run_sgdml gave {r!r}"}
    out["throughput"] = tp
    out["peak_rss_bytes"] = res.get("peak_rss_train_bytes")
    out["memory"] = res.get("memory")
    out["versions"] = res.get("versions")
    out["predict_config"] = _jsonable(res.get("predict_config"))
    out["raw"] = _jsonable({k: v for k, v in res.items()
                            if k not in ("log", "perms_used") and not k.startswith(("E_pred", "F_pred"))})
    preds = {}
    n_atoms = test.R.shape[1]
    for tag, ek, fk in (("", "E_pred", "F_pred"),
                        ("[float64 input]", "E_pred_float64_input", "F_pred_float64_input")):
        if res.get(ek) is not None and res.get(fk) is not None:
            preds[tag] = (np.asarray(res[ek], dtype=np.float64).reshape(-1),
                          np.asarray(res[fk], dtype=np.float64).reshape(-1, n_atoms, 3))
    if "" in preds:
        E_pred, F_pred = preds[""]
        n = len(E_pred)
        out["n_test"] = n
        out["errors"] = error_table(E_pred, F_pred, test.E[:n], test.F[:n])
    else:
        out["notes"].append("run_sgdml returned no predictions")
    return out, preds


# ============================================================================ agreement

def compare_predictions(preds, tolerance=TOLERANCE):
    """Largest relative differences between every pair of systems' test predictions.

    preds: {system: (E (n,), F (n, N, 3))}, compared on their common first frames.
    Forces: max |F_a - F_b| / max |F_b|.  Energies: max |E_a - E_b| / (max E_b - min E_b)
    (energies carry a large constant offset, so the spread is the scale that matters).
    The reference b of each pair is the earlier system in ``preds``."""
    names = [k for k, v in preds.items() if v is not None and v[0] is not None]
    pairs = []
    for i, a in enumerate(names):
        for b in names[:i]:
            Ea, Fa = (np.asarray(x, dtype=np.float64) for x in preds[a])
            Eb, Fb = (np.asarray(x, dtype=np.float64) for x in preds[b])
            n = min(len(Ea), len(Eb))
            if n == 0:
                continue
            Ea, Eb, Fa, Fb = Ea[:n], Eb[:n], Fa[:n], Fb[:n]
            f_abs = float(np.max(np.abs(Fa - Fb)))
            e_abs = float(np.max(np.abs(Ea - Eb)))
            f_scale = float(np.max(np.abs(Fb))) or 1.0
            e_scale = float(np.ptp(Eb)) or max(float(np.max(np.abs(Eb))), 1.0)
            f_rel, e_rel = f_abs / f_scale, e_abs / e_scale
            finite = bool(np.all(np.isfinite(Fa)) and np.all(np.isfinite(Ea)))
            worst = max(f_rel, e_rel) if finite else float("inf")
            pairs.append({"a": a, "b": b, "n_frames": n, "force_max_abs": f_abs,
                          "force_rel": f_rel, "energy_max_abs": e_abs, "energy_rel": e_rel,
                          "finite": finite, "max_rel": worst, "pass": bool(worst <= tolerance)})
    if not pairs:
        return {"status": "not compared", "tolerance": tolerance, "pairs": [],
                "reason": f"fewer than two systems with predictions ({', '.join(names) or 'none'})"}
    worst = max(pairs, key=lambda p: p["max_rel"])
    return {"status": "pass" if all(p["pass"] for p in pairs) else "FAIL", "tolerance": tolerance,
            "max_rel": worst["max_rel"], "worst_pair": [worst["a"], worst["b"]], "pairs": pairs}


# ============================================================================ environment

def versions():
    out = {"python": platform.python_version()}
    for mod in ("numpy", "scipy", "numba", "jax", "jaxlib", "sympy", "matplotlib", "compiler"):
        try:
            out["gdmlc" if mod == "compiler" else mod] = importlib.import_module(mod).__version__
        except Exception:
            out["gdmlc" if mod == "compiler" else mod] = None
    try:
        import numba
        out["numba_threads"] = numba.get_num_threads()
        out["numba_threading_layer"] = numba.config.THREADING_LAYER
    except Exception:
        pass
    try:
        import threadpoolctl
        out["blas"] = [{k: d.get(k) for k in ("internal_api", "version", "num_threads", "filepath")}
                       for d in threadpoolctl.threadpool_info()]
    except Exception:
        pass
    out["env"] = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                             "NUMBA_NUM_THREADS", "XLA_FLAGS") if k in os.environ}
    return out


def machine_fallback():
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu_model": cpu, "nproc": os.cpu_count(), "cpu_affinity": len(os.sched_getaffinity(0)),
            "ram_bytes": proc_field_bytes("MemTotal"), "platform": platform.platform()}


def machine():
    out = machine_fallback()
    try:
        out["load_average_start"] = list(os.getloadavg())
    except OSError:
        pass
    return out


def git_info():
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return {"commit": commit, "dirty": bool(dirty), "dirty_files": dirty.splitlines()[:50]}
    except OSError:
        return {"commit": None}


# ============================================================================ the run

def parse_list(text, cast=str):
    return [cast(v.strip()) for v in text.split(",") if v.strip()]


def expand_systems(items):
    out = []
    for item in items:
        if item in GROUPS:
            out += [s for s in GROUPS[item] if s not in out]
        elif item in SYSTEMS:
            out += [item] if item not in out else []
        else:
            raise SystemExit(f"unknown system {item!r}: choose from {', '.join(list(GROUPS) + list(SYSTEMS))}")
    return out


def build_config(args):
    cfg = dict(QUICK if args.quick else FULL)
    for key in ("molecules", "labels", "symmetries"):
        if getattr(args, key):
            cfg[key] = parse_list(getattr(args, key))
    if args.sizes:
        cfg["sizes"] = parse_list(args.sizes, int)
    if args.batches:
        cfg["batches"] = parse_list(args.batches, int)
    for key in ("repeats", "n_test", "n_test_dense", "min_time", "max_call_s", "timeout"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    cfg["systems"] = expand_systems(parse_list(args.systems))
    cfg.update(quick=bool(args.quick), sigma=float(args.sigma), lam=float(args.lam), seed=args.seed,
               data_dir=str(Path(args.data_dir).resolve()), install_sgdml=not args.no_install,
               startup_repeats=(args.startup_repeats if args.startup_repeats is not None
                                else args.repeats if args.repeats is not None else 3),
               floors=args.floors or ("quick" if args.quick else "full"),
               perturb=args.perturb, tolerance=TOLERANCE, interleave=not args.no_interleave, memory_factor=MEMORY_FACTOR,
               memory_margin_bytes=MEMORY_MARGIN, peer_single_thread_from=args.peer_single_thread_from)
    if cfg["repeats"] < 3:
        cfg["note_repeats"] = f"repeats = {cfg['repeats']} < 3: medians of fewer than 3 samples"
    bad = set(cfg["labels"]) - {"old", "new"}
    if bad:
        raise SystemExit(f"--labels takes old,new (got {', '.join(sorted(bad))})")
    bad = set(cfg["symmetries"]) - {"sym", "nosym"}
    if bad:
        raise SystemExit(f"--symmetries takes sym,nosym (got {', '.join(sorted(bad))})")
    return cfg


def output_paths(out_dir, name):
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{_dt.date.today().isoformat()}-{name}"
    k = 1
    while (out_dir / f"{stem}.json").exists():
        k += 1
        stem = f"{_dt.date.today().isoformat()}-{name}-{k}"
    return out_dir, stem


def save_json(path, run):
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(_jsonable(run), indent=1) + "\n")
    tmp.replace(path)


def prepare_systems(cfg, log):
    """{system: {'status': 'ok'|'skipped', 'reason', ...}} and the sGDML runner module."""
    state, runner = {}, None
    wants_sgdml = [s for s in cfg["systems"] if s.startswith("sgdml")]
    if wants_sgdml:
        try:
            runner = importlib.import_module("benchmarks.sgdml_runner")
        except ImportError as exc:
            for s in wants_sgdml:
                state[s] = {"status": "skipped", "reason": f"benchmarks.sgdml_runner not importable: {exc}"}
        if runner is not None:
            venv = REPO / "benchmarks" / ".sgdml-venv"
            venv_python = venv / "bin" / "python"
            if not cfg["install_sgdml"] and not venv_python.exists():
                for s in wants_sgdml:
                    state[s] = {"status": "skipped",
                                "reason": f"--no-install and no sGDML environment at {venv}"}
            else:
                log("sGDML environment: " + ("checking" if venv_python.exists() else
                                             "creating (downloads torch and sgdml: slow)"))
                try:
                    py = runner.ensure_sgdml_env(progress=True)
                    for s in wants_sgdml:
                        state[s] = {"status": "ok", "python": str(py)}
                except Exception as exc:
                    for s in wants_sgdml:
                        state[s] = {"status": "skipped",
                                    "reason": f"sGDML environment unavailable: {type(exc).__name__}: {exc}"}
    wants_jax = [s for s in cfg["systems"] if s.startswith("jax")]
    if wants_jax:
        try:
            importlib.import_module("benchmarks.jax_paper")
            for s in wants_jax:
                state[s] = {"status": "ok"}
        except ImportError as exc:
            for s in wants_jax:
                state[s] = {"status": "skipped", "reason": f"benchmarks.jax_paper not importable: {exc}"}
    if "gdmlc" in cfg["systems"]:
        state["gdmlc"] = {"status": "ok"}
    return state, (runner if any(state.get(s, {}).get("status") == "ok" for s in wants_sgdml) else None)


def run(cfg, out_dir, name, log=_log, argv=None):
    from runtime.symmetry import find_permutations
    from benchmarks import plotting, report

    t_start = time.perf_counter()
    out_dir, stem = output_paths(out_dir, name)
    json_path = out_dir / f"{stem}.json"
    work = WORK_DIR / stem if out_dir.resolve() == RESULTS_DIR.resolve() else out_dir / f"{stem}-work"
    work.mkdir(parents=True, exist_ok=True)
    runinfo = {
        "schema": SCHEMA,
        "command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]),
        "cwd": str(Path.cwd()), "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "name": stem, "config": cfg, "git": git_info(), "versions": versions(), "machine": machine(),
        "work_dir": str(work)}
    log(f"gdmlc benchmark run {stem}: {runinfo['command']}")
    log(f"systems: {', '.join(cfg['systems'])}; molecules {cfg['molecules']}, labels {cfg['labels']}, "
        f"M {cfg['sizes']}, {cfg['symmetries']}, repeats {cfg['repeats']}")

    log("[1] hardware floors")
    runinfo["floors"] = measure_floors(log, cfg["floors"], work)
    if isinstance(runinfo["floors"].get("machine"), dict):
        runinfo["machine"]["floors_description"] = runinfo["floors"].pop("machine")
    save_json(json_path, runinfo)

    log("[2] systems")
    state, runner = prepare_systems(cfg, log)
    runinfo["systems"] = state
    for s, v in state.items():
        log(f"  {s}: {v['status']}" + (f" ({v['reason']})" if v.get("reason") else ""))
    if runner is not None:
        runinfo["versions"]["sgdml_runner"] = _jsonable(getattr(runner, "VERSIONS", None))

    runinfo["cases"], runinfo["skipped"] = [], []
    startup_done = False
    for molecule in cfg["molecules"]:
        files = molecule_files(cfg["data_dir"], molecule)
        if files is None:
            runinfo["skipped"].append({"molecule": molecule, "reason": f"no data in {cfg['data_dir']}"})
            log(f"{molecule}: no data, skipped")
            continue
        labels_list = cfg["labels"] if files["kind"] == "rmd17" else ["default"]
        for labels in labels_list:
            train, test = load_split(files, labels)
            if not startup_done and "gdmlc" in cfg["systems"] and cfg["startup_repeats"] < 1:
                runinfo["startup"] = {"gdmlc": {"status": "skipped", "reason": "--startup-repeats 0"}}
                startup_done = True
            if not startup_done and "gdmlc" in cfg["systems"]:
                log("[3] gdmlc first compile and cached start-up")
                try:
                    runinfo["startup"] = {"gdmlc": gdmlc_startup(train, cfg["sigma"], cfg["startup_repeats"], log)}
                except Exception as exc:
                    runinfo["startup"] = {"gdmlc": {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}}
                startup_done = True
                save_json(json_path, runinfo)
            for m in cfg["sizes"]:
                if m > len(train):
                    runinfo["skipped"].append({"molecule": molecule, "labels": labels, "n_train": m,
                                               "reason": f"only {len(train)} training frames"})
                    continue
                idx = training_indices(len(train), m, cfg["seed"])
                t = time.perf_counter()
                group = find_permutations(train.R[idx], train.z, progress=False)
                t_perm = time.perf_counter() - t
                for symtag in cfg["symmetries"]:
                    sym = symtag == "sym"
                    perms = group if sym else np.arange(len(train.z))[None]
                    case = run_case(cfg, runinfo, state, runner, work, molecule, labels, files,
                                    train, test, idx, sym, perms, log)
                    case["harness_symmetry_search_s"] = t_perm
                    runinfo["cases"].append(case)
                    save_json(json_path, runinfo)

    runinfo["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    runinfo["wall_s"] = time.perf_counter() - t_start
    try:
        runinfo["machine"]["load_average_end"] = list(os.getloadavg())
    except OSError:
        pass
    runinfo["targets"] = report.evaluate_targets(runinfo)
    try:
        runinfo["plots"] = [str(p) for p in plotting.make_plots(runinfo, out_dir, stem)]
    except Exception as exc:
        runinfo["plots"] = []
        runinfo["plot_error"] = f"{type(exc).__name__}: {exc}"
        log(f"plots failed: {runinfo['plot_error']}")
    save_json(json_path, runinfo)
    md = report.render_markdown(runinfo)
    md_path = out_dir / f"{stem}.md"
    md_path.write_text(md)
    log()
    log(md)
    log(f"wrote {json_path}\nwrote {md_path}" + "".join(f"\nwrote {p}" for p in runinfo["plots"]))
    return runinfo, json_path, md_path


def run_system(system, spec, runner, train, test, work, case_id, round_, cfg, log):
    """One subprocess run of one system: (result, {name: (E_pred, F_pred)})."""
    spec = dict(spec, system=system, case_id=f"{case_id}-r{round_}")
    if system.startswith("sgdml"):
        res, extra = sgdml_case(runner, spec, train, test, system == "sgdml_torch",
                                work / f"{system}-{case_id}-r{round_}", cfg["timeout"])
        return res, {system + tag: p for tag, p in extra.items()}
    res = run_worker(spec, work, cfg["timeout"], lambda line: log("  " + line))
    if spec.get("peer_blas_threads") and system != "gdmlc":
        res.setdefault("notes", []).append(
            f"ran with OPENBLAS_NUM_THREADS={spec['peer_blas_threads']} (--peer-single-thread-from): with 2 "
            "threads its scipy Cholesky segfaults at this size here")
    preds = {}
    if res.get("status") == "ok" and res.get("predictions"):
        with np.load(res["predictions"]) as d:
            preds[system] = (d["E"], d["F"])
    return res, preds


def merge_runs(results):
    """One result from a system's rounds (one subprocess each): samples pooled, medians
    recomputed, peaks maxed; errors and predictions of the last round.  A round that did not
    finish makes the whole result that round's status (with the count of finished rounds)."""
    if len(results) == 1:
        return results[0]
    bad = [r for r in results if r.get("status") != "ok"]
    if bad:
        out = dict(bad[0])
        out["rounds_ok"] = len(results) - len(bad)
        return out
    out = dict(results[-1])
    out["rounds"] = len(results)
    keys = [k for r in results for k in r.get("timings", {})]
    out["timings"] = {k: summary([v for r in results for v in r.get("timings", {}).get(k, {}).get("samples", [])])
                      for k in dict.fromkeys(keys)}
    tp = {}
    for b in dict.fromkeys(k for r in results for k in r.get("throughput", {})):
        entries = [r.get("throughput", {}).get(b) for r in results]
        if not all(isinstance(e, dict) and e.get("status") == "ok" for e in entries):
            tp[b] = next(e for e in entries if not (isinstance(e, dict) and e.get("status") == "ok")) or {}
            continue
        secs = [s for e in entries for s in (e.get("seconds_per_call") or [])]
        merged = dict(entries[0])
        merged["seconds_per_call"] = secs
        merged["first_call_s"] = [e.get("first_call_s") for e in entries]
        merged["geometries_per_s"] = (int(b) / median(secs) if secs
                                      else median([e["geometries_per_s"] for e in entries]))
        tp[b] = merged
    out["throughput"] = tp
    for k in ("peak_rss_bytes", "process_peak_rss_bytes"):
        vals = [r[k] for r in results if isinstance(r.get(k), (int, float))]
        if vals:
            out[k] = max(vals)
    for k in ("process_wall_s",):
        out[k] = sum(r.get(k) or 0 for r in results)
    if any("compile" in r for r in results):
        out["compile"] = results[0].get("compile")
        out["compile_rounds"] = [r.get("compile") for r in results]
    if any("raw" in r for r in results):
        out["raw"] = [r.get("raw") for r in results]
    out["notes"] = list(dict.fromkeys(n for r in results for n in r.get("notes", [])))
    return out


def run_case(cfg, runinfo, state, runner, work, molecule, labels, files, train, test, idx, sym,
             perms, log):
    n_atoms, m = len(train.z), len(idx)
    n3m = 3 * n_atoms * m
    case_id = f"{molecule}-{labels}-M{m}-{'sym' if sym else 'nosym'}"
    case = {"id": case_id, "molecule": molecule, "labels": labels, "data": files, "n_train": m,
            "n_atoms": n_atoms, "symmetric": sym, "n_perms": int(len(perms)), "perms": perms.tolist(),
            "train_idx": idx.tolist(), "n_test": min(cfg["n_test"], len(test)),
            "matrix_rows": n3m, "matrix_bytes": n3m * n3m * 8, "sigma": cfg["sigma"], "lam": cfg["lam"],
            "results": {}}
    n_features = n_atoms * (n_atoms - 1) // 2
    if runinfo["floors"].get("status") in ("ok", "partial"):
        case["floors"] = case_floors(runinfo["floors"], n_atoms, m, len(perms), n_features)
    log(f"[case] {case_id}: {n3m} x {n3m} matrix ({case['matrix_bytes'] / 2**30:.2f} GiB), P={len(perms)}")
    spec = {"case_id": case_id, "files": files, "labels": labels, "train_idx": idx.tolist(),
            "perms": perms.tolist(), "symmetric": sym, "sigma": cfg["sigma"], "lam": cfg["lam"],
            "repeats": cfg["repeats"], "batches": cfg["batches"], "n_test": cfg["n_test"],
            "n_test_dense": cfg["n_test_dense"], "min_time": cfg["min_time"],
            "max_call_s": cfg["max_call_s"],
            "peer_blas_threads": 1 if cfg.get("peer_single_thread_from") and m >= cfg["peer_single_thread_from"]
            else None}
    rounds = cfg["repeats"] if cfg.get("interleave", True) else 1
    if rounds > 1:
        spec["repeats"] = 1  # one repetition per subprocess, systems taking turns
    runs = {}
    for r in range(rounds):
        for system in cfg["systems"]:
            if state.get(system, {}).get("status") != "ok":
                case["results"][system] = {"status": "skipped", "reason": state.get(system, {}).get("reason", "")}
                continue
            if runs.get(system) and runs[system][-1][0].get("status") != "ok":
                continue  # skipped or failed in an earlier round: not retried
            need = MEMORY_FACTOR[system] * case["matrix_bytes"] + MEMORY_MARGIN
            avail = available_memory_bytes()
            if avail is not None and need > avail:
                reason = (f"needs about {need / 2**30:.1f} GiB ({MEMORY_FACTOR[system]:g} x the "
                          f"{case['matrix_bytes'] / 2**30:.2f} GiB matrix + margin), "
                          f"{avail / 2**30:.1f} GiB available")
                runs.setdefault(system, []).append(({"status": "skipped", "reason": reason}, {}))
                log(f"  {system}: skipped: {reason}")
                continue
            log(f"  {system}" + (f" (round {r + 1}/{rounds})" if rounds > 1 else "") + " ...")
            t = time.perf_counter()
            res, new_preds = run_system(system, spec, runner, train, test, work, case_id, r, cfg, log)
            res["memory_available_bytes"] = avail
            runs.setdefault(system, []).append((res, new_preds))
            log(f"  {system}: {res['status']} in {time.perf_counter() - t:.1f} s"
                + (f" ({res.get('reason')})" if res.get("status") != "ok" else ""))
    preds = {}
    for system, sys_runs in runs.items():
        res = merge_runs([x for x, _ in sys_runs])
        case["results"][system] = res
        new_preds = sys_runs[-1][1] if res.get("status") == "ok" else {}
        for key, (E, F) in new_preds.items():
            if cfg.get("perturb") and cfg["perturb"].split("=")[0] == system:
                eps = float(cfg["perturb"].split("=")[1])
                F = F * (1.0 + eps)
                res.setdefault("notes", []).append(f"SELF-TEST: forces scaled by 1 + {eps:g} before comparison")
            preds[key] = (E, F)
    case["agreement"] = compare_predictions(preds, cfg["tolerance"])
    a = case["agreement"]
    log(f"  agreement: {a['status']}" + (f", largest relative difference {a['max_rel']:.2e} "
                                         f"({' vs '.join(a['worst_pair'])})" if a.get("pairs") else ""))
    return case


# ============================================================================ command line

def build_parser():
    ap = argparse.ArgumentParser(prog="python -m benchmarks",
                                 description="gdmlc side by side with sGDML and the JAX approach")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the benchmark")
    r.add_argument("--quick", action="store_true",
                   help="a few minutes: ethanol, MD17 ('old') labels, M=200, with and without "
                        "symmetries, 3 repeats, 200 test frames (50 for JAX dense)")
    r.add_argument("--systems", default="gdmlc,sgdml,jax",
                   help="comma list of gdmlc, sgdml (= sgdml_torch,sgdml_cpu), jax "
                        "(= jax_contraction,jax_dense) or single systems [gdmlc,sgdml,jax]")
    r.add_argument("--molecules", help="comma list [ethanol,aspirin; quick: ethanol]")
    r.add_argument("--labels", help="old (MD17), new (rMD17) [old,new; quick: old]")
    r.add_argument("--sizes", help="training set sizes M [200,500,1000; quick: 200]")
    r.add_argument("--symmetries", help="sym,nosym [both; quick: sym]")
    r.add_argument("--repeats", type=int, help="repetitions of every timing [3]")
    r.add_argument("--batches", help="prediction batch sizes [1,10,1000]")
    r.add_argument("--n-test", type=int, dest="n_test", help="test frames for errors [1000; quick 200]")
    r.add_argument("--n-test-dense", type=int, dest="n_test_dense",
                   help="test frames for JAX dense (slow) [100; quick 50]")
    r.add_argument("--min-time", type=float, dest="min_time", help="seconds per timing sample [0.3]")
    r.add_argument("--max-call-s", type=float, dest="max_call_s",
                   help="skip a prediction batch whose one call takes longer [120; quick 15]")
    r.add_argument("--timeout", type=float, help="seconds per system and case [14400; quick 900]")
    r.add_argument("--no-interleave", action="store_true", dest="no_interleave",
                   help="run each system's repeats in one subprocess instead of one subprocess per "
                        "repeat with the systems taking turns (the default, so that all systems "
                        "share the same background load)")
    r.add_argument("--floors", choices=["full", "quick", "tiny", "skip"],
                   help="sizes of the floor measurements [full; quick: quick] (tiny: for tests only)")
    r.add_argument("--startup-repeats", type=int, dest="startup_repeats",
                   help="gdmlc first-compile / cached start-up repetitions, 0 to skip [= --repeats]")
    r.add_argument("--sigma", type=float, default=20.0, help="kernel length scale (an integer: "
                   "sGDML's torch path truncates it) [20]")
    r.add_argument("--lam", type=float, default=1e-10, help="regulariser [1e-10, sGDML's default]")
    r.add_argument("--seed", type=int, default=0, help="seed of the training-index draw [0]")
    r.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR),
                   help="rMD17 folder [../shared/data/rmd17]; without it ethanol uses the embedded data")
    r.add_argument("--peer-single-thread-from", type=int, default=None, metavar="M",
                   help="give sGDML and JAX OPENBLAS_NUM_THREADS=1 from this training-set size on: "
                        "their scipy Cholesky (scipy's OpenBLAS 0.3.30, threaded dpotrf) fails or "
                        "segfaults on ethanol M=1000 with 2 threads on this machine; 1 thread works")
    r.add_argument("--no-install", action="store_true",
                   help="do not create the sGDML environment: skip sGDML (reason recorded) if absent")
    r.add_argument("--out", default=str(RESULTS_DIR), help="output folder [benchmarks/results]")
    r.add_argument("--name", help="run name in <date>-<name>.json [quick / full / custom]")
    r.add_argument("--perturb", metavar="SYSTEM=EPS",
                   help="self-test of the agreement check: scale SYSTEM's predicted forces by "
                        "1+EPS before comparing (recorded and flagged in the report)")
    p = sub.add_parser("report", help="re-render the markdown report and plots of a run's JSON")
    p.add_argument("json")
    p.add_argument("--out", help="folder for the .md and plots [beside the JSON]")
    return ap


def main(argv=None):
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--worker"]:
        return worker_main(argv[1])
    if argv[:1] == ["--floors"]:
        return floors_main(argv[1], argv[2])
    args = build_parser().parse_args(argv)
    if args.cmd == "report":
        from benchmarks import plotting, report
        path = Path(args.json)
        runinfo = json.loads(path.read_text())
        out = Path(args.out) if args.out else path.parent
        runinfo["targets"] = report.evaluate_targets(runinfo)
        try:
            runinfo["plots"] = [str(p) for p in plotting.make_plots(runinfo, out, path.stem)]
        except Exception as exc:  # e.g. matplotlib (an optional extra) missing
            print(f"plots failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        md = report.render_markdown(runinfo)
        (out / f"{path.stem}.md").write_text(md)
        print(md)
        return 0
    cfg = build_config(args)
    name = args.name or ("quick" if args.quick else "full")
    if args.name is None and (args.systems != "gdmlc,sgdml,jax" or args.molecules or args.labels
                              or args.sizes or args.symmetries or args.repeats is not None):
        name += "-custom"  # not the standard configuration
    run(cfg, args.out, name, argv=argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
