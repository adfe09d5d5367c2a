"""CG against the dense Cholesky solve end to end: time to solution and test force MAE.

Each solver runs in its own process (peak RSS, VmHWM, is per process) on the same rMD17 frames
(new labels, the first M of benchmarks.datasets.training_indices of train_01) at one sigma, and
is tested on every frame of test_01 (CG's iterations, residual and ETA show on stderr).  It prints per solver: fit seconds, its stage times
(assembly, preconditioner, solve), CG iterations and residual, test force and energy MAE, peak RSS.

Run from the repository root (needs ../shared/data/rmd17)::

    python -m benchmarks.cg_solve --molecule ethanol --m 1000 --sigma 10 --solver cholesky --solver cg
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def run_one(molecule, m, sigma, solver, seed, cg_tol, cg_maxiter):
    """One solver's numbers (run in its own process)."""
    import numpy as np

    import runtime
    from benchmarks.datasets import DEFAULT_DATA_DIR, load_split, molecule_files, training_indices
    from benchmarks.measure import peak_rss_bytes

    files = molecule_files(DEFAULT_DATA_DIR, molecule)
    if files is None:
        raise SystemExit(f"no data for {molecule} under {DEFAULT_DATA_DIR}")
    train, test = load_split(files, "new" if files["kind"] == "rmd17" else "default")
    idx = training_indices(len(train), m, seed)
    stages = {}
    gdml = runtime.GDML(sigma=sigma, solver=solver, cg_tol=cg_tol, cg_maxiter=cg_maxiter, progress=True,
                        on_stage=lambda name, s: stages.__setitem__(name, stages.get(name, 0.0) + s))
    start = time.perf_counter()
    gdml.fit(train.R[idx], train.F[idx], train.E[idx], train.z)
    fit_s = time.perf_counter() - start
    E, F = gdml.predict(test.R)
    return {"molecule": molecule, "M": m, "sigma": sigma, "solver": solver, "fit_s": fit_s, "stages": stages,
            "cg_iterations": gdml.info.get("cg_iterations"), "cg_residual": gdml.info.get("cg_residual"),
            "force_mae": float(np.mean(np.abs(F - test.F))), "energy_mae": float(np.mean(np.abs(E - test.E))),
            "peak_rss_gib": peak_rss_bytes() / 2**30, "test_frames": len(test.R)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--molecule", default="ethanol")
    parser.add_argument("--m", type=int, default=1000)
    parser.add_argument("--sigma", type=float, default=10.0)
    parser.add_argument("--solver", action="append", default=None, help="cholesky and/or cg (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cg-tol", type=float, default=1e-8)
    parser.add_argument("--cg-maxiter", type=int, default=2000)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    solvers = args.solver or ["cholesky", "cg"]
    if args.one:
        print(json.dumps(run_one(args.molecule, args.m, args.sigma, solvers[0], args.seed, args.cg_tol,
                                 args.cg_maxiter)))
        return
    results = []
    for solver in solvers:
        child = [sys.executable, "-m", "benchmarks.cg_solve", "--one", "--molecule", args.molecule, "--m",
                 str(args.m), "--sigma", str(args.sigma), "--solver", solver, "--seed", str(args.seed),
                 "--cg-tol", str(args.cg_tol), "--cg-maxiter", str(args.cg_maxiter)]
        out = subprocess.run(child, check=True, stdout=subprocess.PIPE, text=True).stdout  # progress on stderr
        r = json.loads(out.strip().splitlines()[-1])
        results.append(r)
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in r["stages"].items())
        print(f"{r['molecule']} M={r['M']} sigma {r['sigma']:g} {solver}: fit {r['fit_s']:.1f} s ({stages}); "
              f"iterations {r['cg_iterations']}, residual {r['cg_residual']}; force MAE {r['force_mae']:.4f}, "
              f"energy MAE {r['energy_mae']:.4f} on {r['test_frames']} test frames; peak RSS "
              f"{r['peak_rss_gib']:.2f} GiB", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
