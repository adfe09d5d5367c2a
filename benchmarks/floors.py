"""This machine's hardware floors, measured in the same run as the benchmarks.

``python -m benchmarks.floors [--quick | --sizes tiny] [--out PATH]`` prints (or writes) all three
measurements and the machine description; the harness runs it as a subprocess
(``measure_in_subprocess``) and turns the rates into each case's floors (``case_floors``).

Measurements (each returns a dict: ``value``, its ``unit``, the sizes, ``repeats``, all
``samples`` (seconds) and how the value was computed; ``value`` is the median):

* ``memory_bandwidth()``: GB/s (1 GB = 1e9 bytes) of ``np.copyto`` between two
  preallocated, already touched float64 arrays of ``nbytes`` each.  The value counts
  **read + write**: 2 * nbytes per copy / seconds.  The dict also holds ``write_only_gbs``,
  the rate of ``ndarray.fill`` on one array (bytes written / seconds), for reference.
* ``dgemm_rate()``: GFLOP/s of ``a @ b`` (numpy, float64, square n x n, 2 n^3 flops),
  with whatever threads numpy's BLAS uses (reported by ``machine_description``; numpy and
  scipy each bundle their own OpenBLAS, both listed there).
* ``dpotrf_rate()``: GFLOP/s of ``scipy.linalg.lapack.dpotrf`` (lower, in place, no
  clean-up of the other triangle) on an SPD n x n matrix, n^3/3 flops.  The matrix is
  R + R^T + 2n I with R uniform in [0, 1) (diagonally dominant, so SPD; the factorisation
  does not pivot, so its cost does not depend on the values); it is copied back into the
  Fortran-ordered work array before each repeat, outside the timed region.

Floors (seconds; rates given as numbers in GB/s and GFLOP/s, or as the dicts above):

* ``assembly_floor(n_atoms, m, n_perms, n_features, bandwidth, dgemm)``
  = max(write time, flop time):
  write time = 8 * n (n + 1) / 2 bytes / bandwidth, n = 3 N M (the upper triangle of the
  float64 training matrix written once, at the read+write copy rate);
  flop time = M (M + 1) / 2 blocks (upper block triangle, diagonal blocks included)
  * ``force_block_flops(...)`` / DGEMM rate.
* ``cholesky_floor(n, dpotrf)`` = n^3/3 / DPOTRF rate.

Flop count of one force block (``force_block_flops``), counted from what gdmlc's generated
``force_block_parts`` computes (generated/model_inverse_distances_matern52_*.py) for a pair
descriptor with K = 2 Jacobian slots per feature (6 nonzeros per row of J), F features,
N atoms, P permutations; + - * / each count 1, sqrt and exp count 1:

  per permutation:
    s = |d - d'_P|^2 and t = d . d'_P              5 F   (sub, mul, add; mul, add)
    kernel coefficients g_s, g_ss (Matérn 5/2)    16    (incl. sqrt, exp; constant)
    identity term c J^T J'_P through the atom tables:
        per feature, slot k: 3 mul (c * J)        3 K F
        per feature, slot pair (k, l): 3x3 outer product accumulated, 9 mul + 9 add
                                                   18 K^2 F
    rank-one vectors u = J^T delta, w = J'^T delta:
        per feature 1 sub + 2 * (K slots * 3 comps * (mul + add))
                                                   (1 + 12 K) F
    rank-one update -4 g_ss u w^T: 3N mul + (3N)^2 (mul + add)
                                                   3N + 18 N^2
  block = P * [ (6 + 15 K + 18 K^2) F + 18 N^2 + 3 N + 16 ]
        = P * (108 F + 18 N^2 + 3 N + 16) for K = 2.

  Ethanol (N = 9, F = 36, P = 6): 32,334 flops per block; M = 1000: 500,500 blocks,
  1.62e10 flops.  Zeroing the block, the work vectors and copying blocks into the matrix
  are memory traffic, not flops: the write term of the floor covers the matrix itself.
  This is the work of the structured algorithm the compiler emits; the dense AD algorithm
  (3N x 3N Hessian blocks in descriptor space) does far more and is not the floor.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

import numpy as np

from benchmarks.environment import cpu_model, module_versions, thread_environment

__all__ = ["memory_bandwidth", "dgemm_rate", "dpotrf_rate", "force_block_flops",
           "assembly_floor", "assembly_floor_parts", "cholesky_floor", "machine_description",
           "measure_all", "case_floors", "measure_in_subprocess"]

VERSIONED_MODULES = ("numpy", "scipy", "numba", "jax", "jaxlib", "sympy", "torch", "sgdml")
BLOCK_KERNEL_FLOPS = 16  # Matérn 5/2 g_s, g_ss from s (see module doc)


def _positive_int(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _rate(value, name):
    """A rate as a positive float; accepts the dicts returned by the measurements."""
    if isinstance(value, dict):
        if "value" not in value:
            raise ValueError(f"{name}: a measurement dict needs a 'value' key, got keys {sorted(value)}")
        value = value["value"]
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number (or a measurement dict), got {value!r}") from None
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return value


# --------------------------------------------------------------------------- measurements

def memory_bandwidth(nbytes: int = 512 * 2 ** 20, repeats: int = 5) -> dict:
    """Copy bandwidth in GB/s counting read + write (2 * nbytes per copy); median of repeats.

    Two arrays of ``nbytes`` each are allocated (default 512 MiB each, 1 GiB in all).
    """
    nbytes = _positive_int(nbytes, "nbytes", 8)
    repeats = _positive_int(repeats, "repeats")
    n = nbytes // 8
    src = np.ones(n)
    dst = np.zeros(n)  # touched: page faults are not part of the timing
    np.copyto(dst, src)
    copies, fills = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        copies.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        dst.fill(1.5)
        fills.append(time.perf_counter() - t0)
    del src, dst
    moved = 2 * 8 * n
    return {"value": moved / median(copies) / 1e9, "unit": "GB/s", "counts": "read+write",
            "method": "np.copyto(dst, src), float64, both arrays preallocated and touched",
            "bytes_per_array": 8 * n, "bytes_moved_per_copy": moved, "repeats": repeats,
            "samples": copies, "write_only_gbs": 8 * n / median(fills) / 1e9, "write_only_samples": fills}


def dgemm_rate(n: int = 4000, repeats: int = 3, seed: int = 0) -> dict:
    """GFLOP/s of numpy float64 matmul of two n x n matrices (2 n^3 flops); median of repeats."""
    n = _positive_int(n, "n")
    repeats = _positive_int(repeats, "repeats")
    rng = np.random.default_rng(seed)
    a, b = rng.random((n, n)), rng.random((n, n))
    c = np.empty((n, n))
    np.matmul(a, b, out=c)  # warm-up (threads started, pages touched)
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.matmul(a, b, out=c)
        samples.append(time.perf_counter() - t0)
    flops = 2.0 * n ** 3
    return {"value": flops / median(samples) / 1e9, "unit": "GFLOP/s", "n": n, "flops": flops,
            "method": "np.matmul(a, b, out=c), float64, n x n", "repeats": repeats, "samples": samples}


def dpotrf_rate(n: int = 8000, repeats: int = 3, seed: int = 0) -> dict:
    """GFLOP/s of LAPACK dpotrf (scipy) on an n x n SPD matrix, n^3/3 flops; median of repeats."""
    from scipy.linalg import lapack

    n = _positive_int(n, "n")
    repeats = _positive_int(repeats, "repeats")
    rng = np.random.default_rng(seed)
    R = rng.random((n, n))
    A = np.add(R, R.T)  # no in-place overlap: no hidden temporary
    del R
    A[np.diag_indices(n)] += 2.0 * n
    work = np.empty((n, n), order="F")  # peak: two n x n arrays
    samples = []
    for _ in range(repeats + 1):  # the first run is a warm-up
        np.copyto(work, A)
        t0 = time.perf_counter()
        c, info = lapack.dpotrf(work, lower=1, clean=0, overwrite_a=1)
        dt = time.perf_counter() - t0
        if info != 0:
            raise RuntimeError(f"dpotrf failed with info={info} on the test matrix")
        if c is not work and not np.shares_memory(c, work):
            raise RuntimeError("dpotrf copied its input: the timing would include a copy")
        samples.append(dt)
    samples = samples[1:]
    flops = n ** 3 / 3.0
    return {"value": flops / median(samples) / 1e9, "unit": "GFLOP/s", "n": n, "flops": flops,
            "method": "scipy.linalg.lapack.dpotrf(lower=1, clean=0, overwrite_a=1), Fortran order, "
                      "R + R^T + 2n I", "repeats": repeats, "samples": samples}


# --------------------------------------------------------------------------- floors

def force_block_flops(n_atoms: int, n_features: int, n_perms: int = 1, n_slots: int = 2) -> int:
    """Flops of one (3N x 3N) force block summed over permutations (see the module doc)."""
    n = _positive_int(n_atoms, "n_atoms")
    f = _positive_int(n_features, "n_features")
    p = _positive_int(n_perms, "n_perms")
    k = _positive_int(n_slots, "n_slots")
    per_perm = (6 + 15 * k + 18 * k * k) * f + 18 * n * n + 3 * n + BLOCK_KERNEL_FLOPS
    return p * per_perm


def assembly_floor_parts(n_atoms, m, n_perms, n_features, bandwidth, dgemm) -> dict:
    """The assembly floor and its two terms (see ``assembly_floor``)."""
    n_atoms = _positive_int(n_atoms, "n_atoms")
    m = _positive_int(m, "m")
    bw = _rate(bandwidth, "bandwidth (GB/s)")
    rate = _rate(dgemm, "dgemm (GFLOP/s)")
    n = 3 * n_atoms * m
    matrix_bytes = 8.0 * n * (n + 1) / 2
    blocks = m * (m + 1) // 2
    per_block = force_block_flops(n_atoms, n_features, n_perms)
    flops = float(blocks) * per_block
    write_s = matrix_bytes / (bw * 1e9)
    flops_s = flops / (rate * 1e9)
    return {"floor_s": max(write_s, flops_s), "write_s": write_s, "flops_s": flops_s,
            "bound": "memory" if write_s >= flops_s else "flops", "matrix_bytes_upper": matrix_bytes,
            "blocks": blocks, "flops_per_block": per_block, "flops": flops,
            "bandwidth_gbs": bw, "dgemm_gflops": rate}


def assembly_floor(n_atoms, m, n_perms, n_features, bandwidth, dgemm) -> float:
    """Seconds: max(write the upper triangle of the (3NM)^2 float64 matrix once at
    ``bandwidth`` GB/s, flops of the M(M+1)/2 upper-triangle blocks at ``dgemm`` GFLOP/s)."""
    return assembly_floor_parts(n_atoms, m, n_perms, n_features, bandwidth, dgemm)["floor_s"]


def cholesky_floor(n, dpotrf) -> float:
    """Seconds: n^3/3 flops at the ``dpotrf`` rate (GFLOP/s or a ``dpotrf_rate()`` dict)."""
    n = _positive_int(n, "n")
    return n ** 3 / 3.0 / (_rate(dpotrf, "dpotrf (GFLOP/s)") * 1e9)


# --------------------------------------------------------------------------- the machine

def _memory_bytes():
    from runtime.assembly import proc_field_bytes
    return proc_field_bytes("MemTotal")


def _blas():
    info = {}
    try:
        cfg = np.show_config(mode="dicts")
        deps = cfg.get("Build Dependencies", {})
        for key in ("blas", "lapack"):
            d = deps.get(key, {})
            info[key] = {k: d.get(k) for k in ("name", "version", "openblas configuration") if d.get(k)}
    except Exception as exc:  # noqa: BLE001 - older numpy
        info["error"] = f"np.show_config(mode='dicts') failed: {exc}"
    try:  # scipy ships its own OpenBLAS: dpotrf runs on that one
        import scipy
        d = scipy.show_config(mode="dicts").get("Build Dependencies", {}).get("lapack", {})
        info["scipy_lapack"] = {k: d.get(k) for k in ("name", "version", "openblas configuration") if d.get(k)}
    except Exception as exc:  # noqa: BLE001
        info["scipy_error"] = f"scipy.show_config(mode='dicts') failed: {exc}"
    try:
        from threadpoolctl import threadpool_info
        info["threadpools"] = [{k: p.get(k) for k in ("user_api", "internal_api", "num_threads", "version")}
                               for p in threadpool_info()]
    except Exception:  # noqa: BLE001 - threadpoolctl is optional
        pass
    info["env"] = thread_environment()
    return info


def machine_description() -> dict:
    """CPU, cores, memory, OS, library versions, BLAS configuration and the date (UTC)."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    mem = _memory_bytes()
    return {"cpu": cpu_model() or platform.processor() or platform.machine(), "machine": platform.machine(),
            "logical_cpus": os.cpu_count(),
            "usable_cpus": affinity, "memory_bytes": mem,
            "memory_gib": None if mem is None else round(mem / 2 ** 30, 1),
            "os": platform.platform(), "hostname": platform.node(),
            "versions": {"python": platform.python_version(), **module_versions(VERSIONED_MODULES)}, "blas": _blas(),
            "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


# --------------------------------------------------------------------------- a run's floors

# (arguments of memory_bandwidth, dgemm_rate, dpotrf_rate) per --floors choice; full: the defaults
SIZES = {"full": {}, "quick": {"memory_bandwidth": (128 * 2**20, 3), "dgemm": (2000, 3), "dpotrf": (4000, 3)},
         "tiny": {"memory_bandwidth": (16 * 2**20, 2), "dgemm": (400, 2), "dpotrf": (600, 2)}}


def measure_all(sizes: str = "full") -> dict:
    """The three measurements (a failed one is recorded, status 'partial'), each with its
    measure_s, and the machine description."""
    from benchmarks.records import jsonable
    out = {"status": "ok", "sizes": sizes}
    for key, fn in (("memory_bandwidth", memory_bandwidth), ("dgemm", dgemm_rate), ("dpotrf", dpotrf_rate)):
        t = time.perf_counter()
        try:
            out[key] = jsonable(fn(*SIZES[sizes].get(key, ())))
        except Exception as exc:
            out[key] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
            out["status"] = "partial"
        out[key]["measure_s"] = time.perf_counter() - t
    try:
        out["machine"] = jsonable(machine_description())
    except Exception as exc:
        out["machine"] = f"unavailable: {type(exc).__name__}: {exc}"
    return out


def measure_in_subprocess(log, sizes, work):
    """measure_all in a subprocess (keeps its big test arrays out of the harness process, whose
    peak memory its subprocesses would otherwise inherit); logs each rate."""
    if sizes == "skip":
        return {"status": "skipped", "reason": "--floors skip"}
    out_path = Path(work) / "floors.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.floors", "--sizes", sizes, "--out", str(out_path)],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
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


def case_floors(rates, n_atoms, m, n_perms, n_features):
    """Assembly and Cholesky floors (seconds) for one case, from the run's measured rates."""
    from benchmarks.records import jsonable
    out = {}
    n = 3 * n_atoms * m
    try:
        out["cholesky"] = {"seconds": cholesky_floor(n, rates["dpotrf"]), "formula": "n^3/3 / DPOTRF rate", "n": n}
    except Exception as exc:
        out["cholesky"] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    try:
        parts = assembly_floor_parts(n_atoms, m, n_perms, n_features, rates["memory_bandwidth"], rates["dgemm"])
        out["assembly"] = {"seconds": parts["floor_s"], **jsonable(parts)}
    except Exception as exc:
        out["assembly"] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    return out


def main(argv=None):
    """python -m benchmarks.floors [--quick | --sizes S] [--out PATH]: print or write measure_all."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.floors", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="= --sizes quick")
    ap.add_argument("--sizes", choices=sorted(SIZES), default="full")
    ap.add_argument("--out", help="write the JSON here instead of printing it")
    args = ap.parse_args(argv)
    text = json.dumps(measure_all("quick" if args.quick else args.sizes), indent=2)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
