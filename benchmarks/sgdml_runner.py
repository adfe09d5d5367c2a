"""sGDML 1.0.3 side by side with gdmlc: its environment, its dataset format, its timings.

sGDML (the reference implementation, ``pip install sgdml``) needs numpy < 2.4 and torch, so
it runs in its own virtual environment, ``benchmarks/.sgdml-venv``, created on demand by
:func:`ensure_sgdml_env`.  Nothing here imports sgdml: :func:`run_sgdml` and
:func:`run_sgdml_all` start that environment's interpreter in a subprocess, on
``benchmarks/sgdml_driver.py``, and exchange arrays through npz files and results through
JSON.

What ``use_torch`` (and the CLI's ``--cpu``, its negation) switches in sGDML 1.0.3, read
from its source (train.py, solvers/analytic.py, predict.py, torchtools.py):

* kernel-matrix assembly: torch -> ``GDMLTorchAssemble`` (float64 torch einsums in this
  process, torch's intra-op threads); numpy -> ``_assemble_kernel_mat_wkr`` over a
  ``multiprocessing`` pool of (cores - 1) forked workers writing into shared memory (each
  worker computes whole block columns, so every off-diagonal block is computed twice);
* solve: the same on both paths: ``Analytic.solve`` negates K into a copy, adds lambda to
  the diagonal, ``scipy.linalg.cho_factor(overwrite_a=False)`` (another copy) and
  ``cho_solve`` (LU ``scipy.linalg.solve`` if Cholesky fails);
* prediction (test errors, the training-set energies for the integration constant, and the
  throughput here): torch -> ``GDMLTorchPredict`` (batched over geometries; its
  ``predict`` casts the input geometries to float32 before computing in float64, and it
  truncates sigma to an integer, ``int(model['sig'])``); numpy -> ``_predict_wkr``
  over a process pool, tuned by ``prepare_parallel`` (what ``sgdml test`` does; it caches
  its benchmark in the sgdml package directory, ``_bmark_cache.npz``);
* descriptors, symmetry search (``sgdml.utils.perm.find_perms``, a process pool), label
  scaling and the integration constant: the same on both paths.

Units and conventions are sGDML's and gdmlc's alike: forces are -dE/dR in the dataset's own
units (no conversion anywhere), labels divided by the std of the training forces, lambda
added to the diagonal of the scaled system, energy constant = mean(E_ref - E_pred) over the
training set.  Permutations are (P, N) atom index arrays; for a group (closed under
inverses) the direction convention does not change the symmetrised kernel.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from runtime.assembly import available_memory_bytes

BENCH_DIR = Path(__file__).resolve().parent
VENV_DIR = BENCH_DIR / ".sgdml-venv"
DRIVER = BENCH_DIR / "sgdml_driver.py"
SGDML_VERSION = "1.0.3"
TORCH_VERSION = "2.13.0"  # the CPU build; a plain `torch` would pull the CUDA build (gigabytes)
REQUIREMENTS = (f"torch=={TORCH_VERSION}", "numpy<2.4", f"sgdml=={SGDML_VERSION}")
VERSIONS = {"sgdml": SGDML_VERSION, "torch": TORCH_VERSION, "numpy": "<2.4"}  # as pinned; the
# versions actually installed come back in each run's result["versions"]


class SgdmlError(RuntimeError):
    """sGDML could not be installed or run; the message says why (with its output)."""


# --------------------------------------------------------------------------- environment


def venv_python(venv_dir=VENV_DIR) -> Path:
    return Path(venv_dir) / "bin" / "python"


def _installed(venv_dir) -> bool:
    """True when the venv's python exists and sgdml and torch of the pinned versions are in it."""
    if not venv_python(venv_dir).exists():
        return False
    sites = list(Path(venv_dir).glob("lib/python*/site-packages"))
    return any(
        (site / f"sgdml-{SGDML_VERSION}.dist-info").is_dir()
        and any(site.glob(f"torch-{TORCH_VERSION}*.dist-info"))
        and any(site.glob("numpy-*.dist-info"))
        for site in sites
    )


def _tail(text, n=3000):
    text = text or ""
    return text if len(text) <= n else "...\n" + text[-n:]


def ensure_sgdml_env(progress=True, venv_dir=VENV_DIR) -> Path:
    """The python executable of the sGDML environment, creating/installing it if needed.

    Creates ``venv_dir`` with ``python -m venv`` and installs
    ``torch==2.13.0 "numpy<2.4" sgdml==1.0.3`` with that environment's pip.  Raises
    SgdmlError with pip's output when the installation fails.
    """
    venv_dir = Path(venv_dir)
    python = venv_python(venv_dir)
    if _installed(venv_dir):
        return python

    def say(text):
        if progress:
            print(f"[sgdml env] {text}", file=sys.stderr, flush=True)

    if not python.exists():
        say(f"creating virtual environment {venv_dir}")
        proc = subprocess.run([sys.executable, "-m", "venv", str(venv_dir)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SgdmlError(f"could not create the sGDML virtual environment {venv_dir} "
                             f"(python -m venv exited {proc.returncode}):\n"
                             f"{_tail(proc.stdout + proc.stderr)}")
    say("installing " + " ".join(REQUIREMENTS) + " (a few minutes the first time)")
    t0 = time.perf_counter()
    cmd = [str(python), "-m", "pip", "install", *REQUIREMENTS]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if progress and line.startswith(("Collecting", "Installing", "Successfully", "ERROR")):
            say(line.rstrip())
    proc.wait()
    if proc.returncode != 0 or not _installed(venv_dir):
        raise SgdmlError(
            f"installing sGDML into {venv_dir} failed (pip exited {proc.returncode}); "
            f"command: {' '.join(cmd)}\n{_tail(''.join(lines))}\n"
            f"Delete {venv_dir} and retry, or install the packages above by hand.")
    say(f"installed in {time.perf_counter() - t0:.0f} s")
    return python


def _subprocess_env():
    env = dict(os.environ)
    for key in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"):
        env.pop(key, None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _run_logged(cmd, cwd, log_path, progress, timeout):
    """Run cmd, output to log_path (and to stderr when progress); returns (rc, text, seconds)."""
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=_subprocess_env(), stdin=subprocess.DEVNULL)
        try:
            for line in proc.stdout:
                log.write(line)
                if progress:
                    sys.stderr.write(line)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise SgdmlError(f"{' '.join(map(str, cmd))} ran past {timeout} s; log: {log_path}")
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    wall = time.perf_counter() - t0
    return proc.returncode, Path(log_path).read_text(errors="replace"), wall


# --------------------------------------------------------------------------- dataset format


def sgdml_dataset_md5(dataset) -> bytes:
    """sGDML's dataset fingerprint (sgdml.utils.io.dataset_md5): md5 over the md5 digests
    of z, R, E (if present), F, each hashed as its raveled array buffer."""
    h = hashlib.md5()
    for key in ("z", "R", "E", "F"):
        if key in dataset:
            h.update(hashlib.md5(np.ascontiguousarray(np.asarray(dataset[key]).ravel())).digest())
    return h.hexdigest().encode("utf-8")


def _check_arrays(R, z, E, F):
    R = np.asarray(R)
    if R.ndim != 3 or R.shape[2] != 3 or R.shape[0] < 1 or R.shape[1] < 2:
        raise ValueError(f"R: expected shape (M, N, 3) with M >= 1 and N >= 2, got {R.shape}")
    m, n = R.shape[:2]
    F = np.asarray(F)
    if F.shape != R.shape:
        raise ValueError(f"F: expected shape {R.shape} (same as R), got {F.shape}")
    z = np.asarray(z)
    if z.shape != (n,):
        raise ValueError(f"z: expected shape ({n},) (one atomic number per atom), got {z.shape}")
    if z.dtype.kind not in "iu" and not (z.dtype.kind == "f" and np.all(z == np.round(z))):
        raise ValueError(f"z: expected integer atomic numbers, got dtype {z.dtype}")
    if np.any(z < 1) or np.any(z > 118):
        raise ValueError("z: atomic numbers must be in 1..118")
    if E is not None:
        E = np.asarray(E)
        if E.shape not in ((m,), (m, 1)):
            raise ValueError(f"E: expected shape ({m},) or ({m}, 1), got {E.shape}")
        E = E.reshape(m)
    for key, a in (("R", R), ("F", F), ("E", E)):
        if a is not None:
            if a.dtype.kind not in "iuf":
                raise ValueError(f"{key}: expected real numbers, got dtype {a.dtype}")
            if not np.all(np.isfinite(a)):
                raise ValueError(f"{key}: contains non-finite values")
    R = np.ascontiguousarray(R, dtype=np.float64)
    F = np.ascontiguousarray(F, dtype=np.float64)
    E = None if E is None else np.ascontiguousarray(E, dtype=np.float64)
    return R, np.ascontiguousarray(z, dtype=np.int64), E, F


def write_sgdml_dataset(path, R, z, E, F, name, theory, r_unit="Ang", e_unit="kcal/mol",
                        perms=None) -> Path:
    """Write arrays as an sGDML dataset npz (what ``sgdml all/create/test`` accept).

    Keys, as sGDML's own dataset scripts write them: type='d', code_version, name, theory,
    R (M, N, 3) float64, z (N,) int64, F (M, N, 3) float64, F_min/F_max/F_mean/F_var,
    E (M,) float64 and E_min/E_max/E_mean/E_var (when E is not None), r_unit, e_unit, md5
    (sGDML's fingerprint, bytes), and perms (P, N) when given (sGDML's create_task then uses
    them instead of searching).  Units are only labels: no conversion.  Returns the path.
    """
    R, z, E, F = _check_arrays(R, z, E, F)
    if not str(name).strip():
        raise ValueError("name must be a non-empty string")
    data = {"type": "d", "code_version": SGDML_VERSION, "name": str(name),
            "theory": str(theory), "R": R, "z": z, "F": F,
            "F_min": np.min(F), "F_max": np.max(F), "F_mean": np.mean(F), "F_var": np.var(F),
            "r_unit": str(r_unit), "e_unit": str(e_unit)}
    if E is not None:
        data.update(E=E, E_min=np.min(E), E_max=np.max(E), E_mean=np.mean(E), E_var=np.var(E))
    if perms is not None:
        data["perms"] = _check_perms(perms, z)
    data["md5"] = sgdml_dataset_md5(data)
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"{path}: sGDML dataset files must end in .npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **data)
    return path


def _check_perms(perms, z):
    perms = np.asarray(perms)
    n = len(z)
    if perms.ndim != 2 or perms.shape[1] != n or perms.shape[0] < 1:
        raise ValueError(f"perms: expected shape (P, {n}), got {perms.shape}")
    if perms.dtype.kind not in "iu":
        raise ValueError(f"perms: expected integer atom indices, got dtype {perms.dtype}")
    perms = perms.astype(np.int64)
    ident = np.arange(n)
    for k, p in enumerate(perms):
        if not np.array_equal(np.sort(p), ident):
            raise ValueError(f"perms: row {k} is not a permutation of 0..{n - 1}")
        if not np.array_equal(np.asarray(z)[p], np.asarray(z)):
            raise ValueError(f"perms: row {k} maps atoms onto atoms of another element")
    if not any(np.array_equal(p, ident) for p in perms):
        raise ValueError("perms: the identity permutation is missing (sGDML requires it)")
    if len(np.unique(perms, axis=0)) != len(perms):
        raise ValueError("perms: duplicate rows")
    return perms


# --------------------------------------------------------------------------- API runs


def _median(values):
    return float(np.median(np.asarray(values, dtype=np.float64)))


def run_sgdml(R, z, E, F, train_idx, R_test, sigma, lam, perms, use_torch,
              batches=(1, 10, 1000), repeats=3, workdir=None, *, train_repeats=None,
              prepare_parallel=True, progress=False, timeout=None, python=None,
              solver="analytic", max_memory_gb=None, time_limit_s=None, seed=None) -> dict:
    """Train sGDML on R[train_idx] through its Python API and time it; predict R_test.

    R (M, N, 3), z (N,), E (M,) or None (no energies: use_E=False, energies up to a
    constant), F (M, N, 3) in the dataset's units; train_idx: the training frames (in
    this order); sigma, lam: as in gdmlc (sGDML divides the forces by their std and adds
    lam to the diagonal, the same convention); perms: (P, N) permutations (must contain
    the identity), None for none (plain GDML), or "sgdml" for sGDML's own search;
    use_torch: sGDML's default torch path (True) or its numpy path (False, the CLI's
    ``--cpu``); see the module docstring for exactly what that switches.  With use_torch,
    sigma must be an integer (sGDML's torch prediction truncates it).

    ``solver``: the solver sGDML must pick (it raises otherwise): "analytic" (closed-form
    Cholesky) or "cg" (its iterative solver: CG with a Nystrom preconditioner, which
    GDMLTrain.train picks when the closed form's memory estimate exceeds ``max_memory_gb``,
    the CLI's ``-m``, default all memory; ``max_memory_gb`` also sets sGDML's number of
    inducing points).  With "cg": ``batches`` may be empty (no throughput); every product
    with K is timed and logged to ``workdir/sgdml_<tag>_cg_progress.jsonl``; past
    ``time_limit_s`` seconds (from just before create_task) CG is stopped and sGDML's last
    checkpoint model (the unconverged model its CLI saves every ~2 min) is tested instead,
    E_pred/F_pred absent when there was none yet; ``seed`` seeds np.random (sGDML's random
    choice of leverage-score and inducing columns).

    ``repeats``: prediction timings per batch size; ``train_repeats`` (default
    ``repeats``): training repetitions (each from scratch).  ``prepare_parallel``: on the
    numpy path, let sGDML tune its prediction parallelism per batch size first (as
    ``sgdml test`` does).  ``workdir``: where the npz/JSON/log files go (kept), default a
    temporary directory (removed).

    Returns a dict:
      timings: {assembly, solve, cholesky, train, create_task}: lists (one per training
        repeat), seconds; solve = Analytic.solve minus assembly (negated copy, +lambda,
        cho_factor, cho_solve), cholesky = cho_factor + cho_solve only, train = the whole
        GDMLTrain.train;
      throughput: {batch: geometries/s (median of repeats)}; predict_times: {batch: [s]};
        predict_config: {batch: numpy-path parallel settings and tuning time};
      symmetry: {time, n_perms, perms, n_geometries}: sGDML's find_perms on the training
        geometries, run once;
      peak_rss_train_bytes: the driver process's peak RSS (VmHWM, reset just before
        training) over the training repeats; memory: {rss_before_train_bytes,
        peak_rss_self_bytes (= peak_rss_train_bytes), peak_rss_self_since ('training', or
        'exec' where the kernel refused the reset), peak_rss_children_bytes (largest reaped
        worker), peak_pss_total_bytes (largest total PSS of the driver and all its workers,
        sampled every 0.2 s: the footprint, shared memory counted once), pss_samples};
      E_pred (n_test,), F_pred (n_test, N, 3): sGDML's GDMLPredict.predict on R_test (and,
        on the torch path, E_pred_float64_input / F_pred_float64_input: the same torch
        model fed float64 geometries);
      versions: {sgdml, numpy, scipy, torch, python};
      cg (solver "cg" only): {products, product_s (each product's seconds), iterations,
        resid, rel_resid (= resid / y_norm, sGDML stops at tol), y_norm, tol, converged,
        time_limit_reached, checkpoint_iteration (the tested model's, when stopped),
        inducing_columns, elapsed_s, progress_jsonl};
      and n_train, n_atoms, n_perms, perms_used, sigma, lam, use_torch, path, energy_constant,
      label_std, solver, wall_time (the subprocess), workdir, log.
    """
    R, z, E, F = _check_arrays(R, z, E, F)
    m, n = R.shape[:2]
    train_idx = np.asarray(train_idx)
    if train_idx.ndim != 1 or train_idx.size < 1 or train_idx.dtype.kind not in "iu":
        raise ValueError(f"train_idx: expected a non-empty 1-D integer array, got "
                         f"shape {train_idx.shape} dtype {train_idx.dtype}")
    if train_idx.min() < 0 or train_idx.max() >= m:
        raise ValueError(f"train_idx: indices must be in 0..{m - 1}")
    if len(np.unique(train_idx)) != len(train_idx):
        raise ValueError("train_idx: duplicate indices")
    R_test = np.asarray(R_test)
    if R_test.ndim != 3 or R_test.shape[1:] != (n, 3) or len(R_test) < 1:
        raise ValueError(f"R_test: expected shape (n_test, {n}, 3) with n_test >= 1, "
                         f"got {R_test.shape}")
    if not np.all(np.isfinite(R_test)):
        raise ValueError("R_test: contains non-finite values")
    sigma_value = float(sigma)
    if not (np.isfinite(sigma_value) and sigma_value > 0):
        raise ValueError(f"sigma must be a positive number, got {sigma}")
    if use_torch and sigma_value != int(sigma_value):
        raise ValueError(f"sigma={sigma} is not an integer: sGDML's torch prediction truncates "
                         "sigma to int (GDMLTorchPredict), so its predictions would not match "
                         "its training; use an integer sigma or use_torch=False")
    lam = float(lam)
    if not (np.isfinite(lam) and lam >= 0):
        raise ValueError(f"lam must be a finite non-negative number, got {lam}")
    batches = [int(b) for b in batches]
    if solver not in ("analytic", "cg"):
        raise ValueError(f"solver must be 'analytic' or 'cg', got {solver!r}")
    if (not batches and solver == "analytic") or any(b < 1 for b in batches):
        raise ValueError(f"batches must be positive integers, got {batches}")
    repeats = int(repeats)
    train_repeats = repeats if train_repeats is None else int(train_repeats)
    if repeats < 1 or train_repeats < 1:
        raise ValueError("repeats and train_repeats must be at least 1")
    if isinstance(perms, str):
        if perms != "sgdml":
            raise ValueError(f"perms must be an array, None or 'sgdml', got {perms!r}")
        perms_mode, perms_arr = "sgdml", None
    elif perms is None:
        perms_mode, perms_arr = "identity", None
    else:
        perms_mode, perms_arr = "given", _check_perms(perms, z)

    n_rows = 3 * n * len(train_idx)
    need = 3 * n_rows * n_rows * 8  # sGDML's own estimate: K, -K and the Cholesky factor
    avail = available_memory_bytes()
    if solver == "analytic" and avail is not None and need > avail:
        raise MemoryError(f"sGDML would need about {need / 2**30:.1f} GiB for M={len(train_idx)} "
                          f"(three {n_rows}x{n_rows} matrices) but {avail / 2**30:.1f} GiB are "
                          "available")

    python = Path(python) if python is not None else ensure_sgdml_env(progress=progress)
    sigma_json = int(sigma_value) if sigma_value == int(sigma_value) else sigma_value

    cleanup = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="sgdml-run-")) if workdir is None else Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tag = "torch" if use_torch else "numpy"
    try:
        arrays = {"R": R, "z": z, "F": F, "train_idx": train_idx.astype(np.int64),
                  "R_test": np.ascontiguousarray(R_test, dtype=np.float64)}
        if E is not None:
            arrays["E"] = E
        if perms_arr is not None:
            arrays["perms"] = perms_arr
        inp = workdir / f"sgdml_{tag}_input.npz"
        np.savez(inp, **arrays)
        config = {"input": str(inp), "output_json": str(workdir / f"sgdml_{tag}_result.json"),
                  "output_npz": str(workdir / f"sgdml_{tag}_pred.npz"),
                  "use_torch": bool(use_torch), "sigma": sigma_json, "lam": lam,
                  "perms": perms_mode, "batches": batches, "repeats": repeats,
                  "train_repeats": train_repeats, "prepare_parallel": bool(prepare_parallel),
                  "solver": solver, "max_memory_gb": max_memory_gb, "time_limit_s": time_limit_s,
                  "seed": seed, "progress_jsonl": str(workdir / f"sgdml_{tag}_cg_progress.jsonl")}
        cfg_path = workdir / f"sgdml_{tag}_config.json"
        cfg_path.write_text(json.dumps(config, indent=1))
        log_path = workdir / f"sgdml_{tag}.log"
        rc, text, wall = _run_logged([str(python), str(DRIVER), "train", str(cfg_path)],
                                     workdir, log_path, progress, timeout)
        if rc != 0:
            raise SgdmlError(f"sGDML ({tag} path) failed with exit code {rc}:\n{_tail(text)}")
        result = json.loads(Path(config["output_json"]).read_text())
        with np.load(config["output_npz"]) as pred:
            for key in pred.files:
                result[key] = pred[key]
        for key in ("throughput", "predict_times", "predict_config"):  # absent: CG stopped untested
            result[key] = {int(k): v for k, v in result.get(key, {}).items()}
        if "cg" in result:
            result["cg"]["progress_jsonl"] = config["progress_jsonl"]
        result["peak_rss_train_bytes"] = result["memory"]["peak_rss_train_bytes"]
        result["wall_time"] = wall
        result["log"] = text
        result["workdir"] = None if cleanup else str(workdir)
        return result
    finally:
        if cleanup:
            shutil.rmtree(workdir, ignore_errors=True)


# --------------------------------------------------------------------------- the CLI

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_ERR_LINE = re.compile(r"^\s*(Energy|Forces):\s+([-+0-9.eE]+)/([-+0-9.eE]+)")


def _parse_cli_output(text):
    """Test errors and 'took N s' step times from `sgdml all` output (ANSI codes removed)."""
    clean = _ANSI.sub("", text).replace("\r", "\n")
    errors = {}
    in_test = False
    for line in clean.splitlines():
        if "Test errors (MAE/RMSE)" in line:
            in_test = True
            continue
        if in_test:
            match = _ERR_LINE.match(line)
            if match:
                kind = "energy" if match.group(1) == "Energy" else "force"
                errors[f"{kind}_mae"] = float(match.group(2))
                errors[f"{kind}_rmse"] = float(match.group(3))
    steps = []
    for line in clean.splitlines():
        if "took" in line:
            match = re.search(r"took ([0-9.]+) s", line)
            label = re.sub(r"\[[^\]]*\]", "", line.split("took")[0])  # [DONE], [100%], ...
            label = re.sub(r"\.{2,}|\s+", " ", label).strip(" .")
            if match:
                steps.append({"step": label, "seconds": float(match.group(1))})
    return errors, steps


def run_sgdml_all(dataset_path, n_train, n_valid, n_test, sigma, workdir, cpu=False, *,
                  progress=False, timeout=None, python=None) -> dict:
    """Time ``sgdml all DATASET n_train n_valid n_test -s SIGMA -o`` end to end (wall clock).

    ``dataset_path``: an sGDML dataset npz (see :func:`write_sgdml_dataset`); ``sigma``: an
    integer or a list of integers (the CLI accepts only integers; with several it trains
    one model per sigma, validates and keeps the best); ``cpu``: add ``--cpu`` (sGDML's
    numpy path); ``workdir``: the CLI's working directory (task directory, model file and
    log are written there and kept).  Non-interactive: ``-o`` (overwrite) and no standard
    input; the CLI samples its own training/validation/test frames (stratified, random).

    Returns a dict: wall_time (s, the whole CLI process), command, test_errors {energy_mae,
    energy_rmse, force_mae, force_rmse} (read from the model file the CLI writes after
    testing; the printed values are in printed_errors), steps [{step, seconds}] (the
    'took N s' lines the CLI prints), sigma (the chosen one), n_train, n_valid, n_test,
    n_perms, idxs_train, model_file, log_file, log.
    """
    dataset_path = Path(dataset_path).resolve()
    if not dataset_path.is_file():
        raise ValueError(f"{dataset_path}: no such file")
    try:
        with np.load(dataset_path, allow_pickle=False) as ds:
            kind = str(ds["type"]) if "type" in ds.files else None
            n_frames = len(ds["R"]) if "R" in ds.files else None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{dataset_path}: not a readable npz file ({exc})") from None
    if kind != "d" or n_frames is None:
        raise ValueError(f"{dataset_path}: not an sGDML dataset (needs type='d' and R); "
                         "convert it with write_sgdml_dataset()")
    sizes = {"n_train": n_train, "n_valid": n_valid, "n_test": n_test}
    for key, value in sizes.items():
        if not (isinstance(value, (int, np.integer)) and value >= 1):
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    if n_train + n_valid + n_test > n_frames:
        raise ValueError(f"n_train + n_valid + n_test = {n_train + n_valid + n_test} exceeds the "
                         f"{n_frames} frames in {dataset_path}")
    sigmas = [sigma] if np.ndim(sigma) == 0 else list(sigma)
    if not sigmas or not all(float(s) == int(float(s)) and float(s) > 0 for s in sigmas):
        raise ValueError(f"sigma must be a positive integer or a list of them (the sGDML CLI "
                         f"accepts only integers), got {sigma!r}")
    sigmas = [str(int(float(s))) for s in sigmas]

    python = Path(python) if python is not None else ensure_sgdml_env(progress=progress)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tag = "cpu" if cpu else "torch"
    model_file = workdir / f"sgdml_all_{tag}_model.npz"
    task_dir = workdir / f"sgdml_all_{tag}_tasks"
    args = ["all", str(dataset_path), str(n_train), str(n_valid), str(n_test), "-s", *sigmas,
            "-o", "--task_dir", str(task_dir), "--model_file", str(model_file)]
    if cpu:
        args.append("--cpu")
    cmd = [str(python), str(DRIVER), "cli", *args]
    log_path = workdir / f"sgdml_all_{tag}.log"
    rc, text, wall = _run_logged(cmd, workdir, log_path, progress, timeout)
    if rc != 0 or not model_file.is_file():
        raise SgdmlError(f"`sgdml {' '.join(args)}` failed (exit code {rc}); log {log_path}:\n"
                         f"{_tail(text)}")
    printed, steps = _parse_cli_output(text)
    with np.load(model_file, allow_pickle=True) as model:  # sGDML stores dicts as objects
        f_err = model["f_err"].item()
        e_err = model["e_err"].item() if "e_err" in model.files else None
        errors = {"force_mae": float(f_err["mae"]), "force_rmse": float(f_err["rmse"])}
        if e_err is not None:
            errors.update(energy_mae=float(e_err["mae"]), energy_rmse=float(e_err["rmse"]))
        info = {"sigma": float(model["sig"]), "n_perms": int(model["perms"].shape[0]),
                "idxs_train": model["idxs_train"].tolist(), "n_test": int(model["n_test"])}
    return {"wall_time": wall, "command": ["sgdml", *args], "cpu": bool(cpu),
            "test_errors": errors, "printed_errors": printed, "steps": steps,
            "n_train": n_train, "n_valid": n_valid, **info,
            "model_file": str(model_file), "log_file": str(log_path), "log": text}
