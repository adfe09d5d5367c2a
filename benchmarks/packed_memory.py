"""Packed (one triangle) against full-matrix training solves: peak memory and Cholesky time.

Each layout runs in a fresh process (peak RSS, VmHWM, is per process), on the same rMD17
frames, in turn (full, packed, full, packed, ...):

* ``full``: the matrix as before this change: ``np.empty((n, n))``, ``assemble`` into it and
  the blocked in-place Cholesky of the last commit (HEAD's runtime/solver.py and
  runtime/lapack_raw.py, exported by ``git show``; ``--full-code here`` uses this tree's);
* ``packed``: ``allocate_training_matrix`` (runtime/packed.py) as ``GDML.fit`` does, the same
  assembly writing into its panels, this tree's ``cholesky_solve_inplace``;
* ``rfp`` (``--rfp``): LAPACK's rectangular full packed format through scipy (dtrttf, then
  dpftrf, dpftrs), for the choice of layout; it calls OpenBLAS's threaded dpotrf/dsyrk inside,
  which segfault on large matrices, so a crash is reported as such.

Run from the repository root (needs ../shared/data/rmd17)::

    python -m benchmarks.packed_memory --molecule ethanol --m 1000 --repeats 1 [--rfp]

It prints, per layout, the medians of assembly and Cholesky seconds, peak RSS, the RSS before
the matrix was allocated, the matrix's bytes, and peak / full matrix; --json writes all samples.
"""
from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

REPO = Path(__file__).resolve().parents[1]
HEAD_FILES = ("runtime/solver.py", "runtime/lapack_raw.py", "runtime/progress.py")
SIGMA = 20.0
LAM = 1e-10


def head_solver(folder):
    """HEAD's cholesky_solve_inplace, imported from its files exported under ``folder``."""
    package = Path(folder) / "head_runtime"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text("")
    for name in HEAD_FILES:
        text = subprocess.run(["git", "-C", str(REPO), "show", f"HEAD:{name}"], check=True,
                              capture_output=True, text=True).stdout
        (package / Path(name).name).write_text(text)
    sys.path.insert(0, str(folder))
    return importlib.import_module("head_runtime.solver").cholesky_solve_inplace


def training_problem(molecule, m, seed):
    """(compiled model, D, JAC, fperms, hyper, n_atoms, y) of M rMD17 training frames."""
    import numpy as np

    import runtime
    from benchmarks.datasets import DEFAULT_DATA_DIR, load_split, molecule_files, training_indices
    from runtime import symmetry

    files = molecule_files(DEFAULT_DATA_DIR, molecule)
    if files is None:
        raise SystemExit(f"no data for {molecule} under {DEFAULT_DATA_DIR}")
    train, _ = load_split(files, "new" if files["kind"] == "rmd17" else "default")
    idx = training_indices(len(train), m, seed)
    R, F, z = train.R[idx], train.F[idx], train.z
    n_atoms = R.shape[1]
    model = runtime.GDML(sigma=SIGMA, progress=False).model
    perms = symmetry.find_permutations(R, z, progress=False)
    D, JAC, _ = model.descriptor.evaluate(R, z)
    y = F.ravel() / np.std(F)
    return model, D, JAC, model.feature_permutations(perms, n_atoms), model.kernel.hyper(sigma=SIGMA), n_atoms, y


def measure(layout, molecule, m, seed, full_code, folder):
    """One layout's numbers (run in its own process)."""
    import numpy as np

    from benchmarks.measure import current_rss_bytes, peak_rss_bytes
    from runtime.assembly import allocate_training_matrix, assemble
    from runtime.solver import cholesky_solve_inplace

    model, D, JAC, fperms, hyper, n_atoms, y = training_problem(molecule, m, seed)
    assemble(model, D[:2], JAC[:2], fperms, hyper, n_atoms, progress=False)  # compile outside the timings
    if layout == "packed":
        from runtime.packed import PackedMatrix
        probe = PackedMatrix.for_training(2, n_atoms, block=1)  # a panel after the first: a strided view
        assemble(model, D[:2], JAC[:2], fperms, hyper, n_atoms, out=probe, progress=False)  # its own signature
        del probe
    solve = head_solver(folder) if layout == "full" and full_code == "head" else cholesky_solve_inplace
    n = len(y)
    out = {"layout": layout, "molecule": molecule, "m": m, "n": n, "full_matrix_bytes": 8 * n * n,
           "rss_before_bytes": current_rss_bytes()}
    K = np.empty((n, n)) if layout != "packed" else allocate_training_matrix(m, n_atoms)
    out["matrix_bytes"] = K.nbytes
    t = time.perf_counter()
    assemble(model, D, JAC, fperms, hyper, n_atoms, out=K, progress=False)
    out["assembly_s"] = time.perf_counter() - t
    t = time.perf_counter()
    if layout == "rfp":
        x = rfp_solve(K, y, LAM)
    else:
        x = solve(K, y, LAM, progress=False)
    out["cholesky_s"] = time.perf_counter() - t
    out["peak_rss_bytes"] = peak_rss_bytes()
    out["solution_norm"] = float(np.linalg.norm(x))
    return out


def rfp_solve(K, y, lam):
    """(K + lam I) x = y through scipy's RFP routines; K: C-ordered, block upper triangle."""
    import numpy as np
    from scipy.linalg import lapack

    n = K.shape[0]
    K.ravel()[:: n + 1] += lam
    rfp, info = lapack.dtrttf(K.T, transr="N", uplo="L")  # K.T: Fortran, lower triangle filled
    if info:
        raise RuntimeError(f"dtrttf info {info}")
    del K
    rfp, info = lapack.dpftrf(n, rfp, transr="N", uplo="L")
    if info:
        raise RuntimeError(f"dpftrf info {info}")
    x, info = lapack.dpftrs(n, rfp, np.asarray(y, dtype=np.float64)[:, None], transr="N", uplo="L")
    if info:
        raise RuntimeError(f"dpftrs info {info}")
    return x[:, 0]


def run_worker(layout, args):
    """One layout in a fresh process: its JSON, or a record of how it died."""
    command = [sys.executable, "-m", "benchmarks.packed_memory", "--worker", layout, "--molecule", args.molecule,
               "--m", str(args.m), "--seed", str(args.seed), "--full-code", args.full_code]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        return {"layout": layout, "failed": f"exit code {done.returncode}", "stderr": done.stderr[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def summary(samples):
    """Medians per layout, and packed / full ratios."""
    table = {}
    for layout in dict.fromkeys(s["layout"] for s in samples):
        good = [s for s in samples if s["layout"] == layout and "failed" not in s]
        if not good:
            table[layout] = {"failed": [s["failed"] for s in samples if s["layout"] == layout]}
            continue
        row = {key: median(s[key] for s in good) for key in ("assembly_s", "cholesky_s", "peak_rss_bytes",
                                                              "rss_before_bytes", "matrix_bytes")}
        full = good[0]["full_matrix_bytes"]
        row["peak_over_full_matrix"] = row["peak_rss_bytes"] / full
        row["peak_less_baseline_over_full_matrix"] = (row["peak_rss_bytes"] - row["rss_before_bytes"]) / full
        row["samples"] = len(good)
        table[layout] = row
    if "cholesky_s" in table.get("full", {}) and "cholesky_s" in table.get("packed", {}):
        table["packed_over_full"] = {key: table["packed"][key] / table["full"][key]
                                     for key in ("cholesky_s", "assembly_s", "peak_rss_bytes")}
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--molecule", default="ethanol")
    parser.add_argument("--m", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--full-code", choices=("head", "here"), default="head")
    parser.add_argument("--rfp", action="store_true", help="also LAPACK's RFP format through scipy")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        with tempfile.TemporaryDirectory() as folder:
            print(json.dumps(measure(args.worker, args.molecule, args.m, args.seed, args.full_code, folder)))
        return
    layouts = ["full", "packed"] + (["rfp"] if args.rfp else [])
    samples = []
    for repeat in range(args.repeats):
        for layout in (layouts if repeat % 2 == 0 else layouts[::-1]):
            samples.append(run_worker(layout, args))
            print(json.dumps(samples[-1]), file=sys.stderr, flush=True)
    table = summary(samples)
    print(json.dumps(table, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"samples": samples, "summary": table}, indent=1))


if __name__ == "__main__":
    main()
