"""Whole `gdmlc train` vs whole `sgdml all`, one sigma, same data, same machine, same run.

Run from the repository root (needs ../shared/data/rmd17 and the sGDML venv, which
``benchmarks.sgdml_runner.ensure_sgdml_env`` creates)::

    python -m benchmarks.end_to_end ethanol --labels old --sigma 10 --repeats 1

Both commands get one dataset file in sGDML's format, the rMD17 train and test files of the
molecule joined (2000 frames), and the same sizes: n_train training frames, n_valid
validation frames, n_test test frames, one sigma (so no sweep), symmetries on, energy
constraints off.  sGDML draws its own (energy-stratified) frames, gdmlc a random split: the
frames differ, the work does not.  Each command is timed as a whole process, wall clock,
alternating gdmlc and sGDML per repeat so both see the same background load.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .datasets import rmd17_file
from .environment import openblas_threads
from .sgdml_runner import ensure_sgdml_env, run_sgdml_all, write_sgdml_dataset

REPO = Path(__file__).resolve().parents[1]


def joined_dataset(molecule, labels, path):
    import runtime
    parts = [runtime.load_dataset(rmd17_file(molecule, kind), labels=labels)
             for kind in ("train", "test")]
    R = np.concatenate([p.R for p in parts])
    E = np.concatenate([p.E for p in parts])
    F = np.concatenate([p.F for p in parts])
    write_sgdml_dataset(path, R, parts[0].z, E, F, name=f"{molecule} rMD17 01 train+test ({labels} labels)",
                        theory=parts[0].theory)
    return len(R)


def time_gdmlc(dataset, n_train, n_valid, n_test, sigma, workdir):
    cmd = [sys.executable, "-m", "runtime.cli", "train", str(dataset), "--n-train", str(n_train),
           "--n-valid", str(n_valid), "--n-test", str(n_test), "--sigma", str(sigma),
           "-o", str(Path(workdir) / "gdmlc_model.npz")]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"gdmlc train failed:\n{done.stderr[-3000:]}")
    forces = re.findall(r"forces\s+([\d.]+)\s+([\d.]+)", done.stdout)
    return {"wall_time": wall, "command": " ".join(cmd), "log": done.stdout + done.stderr,
            "test_force_mae": float(forces[-1][0]) if forces else None}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.end_to_end", description=__doc__.split("\n")[0])
    parser.add_argument("molecule", nargs="?", default="ethanol")
    parser.add_argument("--labels", default="old", choices=["old", "new"])
    parser.add_argument("--sigma", type=int, default=10)
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--n-valid", type=int, default=200)
    parser.add_argument("--n-test", type=int, default=800)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--cpu", action="store_true", help="sGDML's numpy path (--cpu) instead of torch")
    parser.add_argument("--sgdml-blas-threads", type=int, default=None,
                        help="OPENBLAS_NUM_THREADS for sGDML only: its scipy Cholesky (scipy's OpenBLAS "
                             "0.3.30, threaded dpotrf) fails on the 27000^2 ethanol M=1000 matrix here with "
                             "2 threads; 1 thread works")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    ensure_sgdml_env()
    started = _dt.datetime.now(_dt.timezone.utc)
    runs = []
    with tempfile.TemporaryDirectory(prefix="gdmlc-e2e-") as tmp:
        dataset = Path(tmp) / f"{args.molecule}.npz"
        n_frames = joined_dataset(args.molecule, args.labels, dataset)
        for repeat in range(args.repeats):
            g = time_gdmlc(dataset, args.n_train, args.n_valid, args.n_test, args.sigma, tmp)
            print(f"repeat {repeat}: gdmlc train {g['wall_time']:.1f} s (test force MAE {g['test_force_mae']})",
                  flush=True)
            with openblas_threads(args.sgdml_blas_threads):
                s = run_sgdml_all(dataset, args.n_train, args.n_valid, args.n_test, args.sigma,
                                  Path(tmp) / f"sgdml{repeat}", cpu=args.cpu, progress=False)
            print(f"repeat {repeat}: sgdml all {s['wall_time']:.1f} s (test errors {s['test_errors']})", flush=True)
            runs.append({"gdmlc": {k: v for k, v in g.items() if k != "log"},
                         "sgdml": {k: v for k, v in s.items() if k not in ("log", "idxs_train")},
                         "ratio_sgdml_over_gdmlc": s["wall_time"] / g["wall_time"]})
    result = {"command": "python -m benchmarks.end_to_end " + " ".join(argv if argv is not None else sys.argv[1:]),
              "date": started.isoformat(timespec="seconds"), "molecule": args.molecule, "labels": args.labels,
              "n_frames": n_frames, "sgdml_blas_threads": args.sgdml_blas_threads, "runs": runs,
              "median_ratio": float(np.median([r["ratio_sgdml_over_gdmlc"] for r in runs]))}
    out = args.out or REPO / "benchmarks" / "results" / f"end_to_end_{args.molecule}_{started:%Y-%m-%dT%H%M}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"sgdml all / gdmlc train = {result['median_ratio']:.2f} (median); wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
