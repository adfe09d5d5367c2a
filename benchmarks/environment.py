"""What a benchmark ran on: library versions, the machine, the git commit.

One reader of each fact, shared by the harness, the floors, the GPU and MD benchmarks.
"""
from __future__ import annotations

import importlib
import os
import platform
import subprocess
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# the variables that set how many threads BLAS, OpenMP, Numba and XLA use
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS", "XLA_FLAGS")


def cpu_model():
    """The CPU's model name from /proc/cpuinfo, or None where that file is unreadable."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def thread_environment():
    """The thread-count variables set in this process's environment."""
    return {k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ}


@contextmanager
def openblas_threads(n):
    """OPENBLAS_NUM_THREADS=n for the subprocesses started inside (unchanged when n is falsy)."""
    saved = os.environ.get("OPENBLAS_NUM_THREADS")
    if n:
        os.environ["OPENBLAS_NUM_THREADS"] = str(n)
    try:
        yield
    finally:
        os.environ.pop("OPENBLAS_NUM_THREADS", None)
        if saved is not None:
            os.environ["OPENBLAS_NUM_THREADS"] = saved


def module_versions(names):
    """{name: __version__} of each importable module, None for one that is absent or broken."""
    out = {}
    for name in names:
        try:
            out[name] = importlib.import_module(name).__version__
        except Exception:  # noqa: BLE001 - absent or broken: reported as None
            out[name] = None
    return out


def versions():
    """Python, the numerical libraries, gdmlc, Numba's threads and the BLAS thread pools."""
    out = {"python": platform.python_version()}
    found = module_versions(("numpy", "scipy", "numba", "jax", "jaxlib", "sympy", "matplotlib", "compiler"))
    found["gdmlc"] = found.pop("compiler")
    out.update(found)
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
    out["env"] = thread_environment()
    return out


def machine():
    """CPU model, core counts, RAM, platform and the load average now."""
    from runtime.assembly import proc_field_bytes  # the one reader of /proc memory fields
    out = {"cpu_model": cpu_model() or "unknown", "nproc": os.cpu_count(),
           "cpu_affinity": len(os.sched_getaffinity(0)), "ram_bytes": proc_field_bytes("MemTotal"),
           "platform": platform.platform()}
    try:
        out["load_average_start"] = list(os.getloadavg())
    except OSError:
        pass
    return out


def git_info():
    """{commit (short), dirty, dirty_files} of the checkout, {commit: None} without git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return {"commit": commit, "dirty": bool(dirty), "dirty_files": dirty.splitlines()[:50]}
    except OSError:
        return {"commit": None}
