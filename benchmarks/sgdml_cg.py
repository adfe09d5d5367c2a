"""sGDML 1.0.3's iterative (CG, Nystrom-preconditioned) solver on rMD17, under a wall-clock limit.

The same problem as ``benchmarks.cg_solve``'s gdmlc CG row: rMD17 new labels, the first M of
``training_indices(…, M, 0)`` of train_01, one sigma, lambda 1e-10, tested on every frame of
test_01.  sGDML runs through ``sgdml_runner.run_sgdml(solver="cg")`` in its own environment
(its own symmetry search, its torch path by default) and picks its CG solver because the
closed form does not fit in ``--max-memory-gb`` (the CLI's ``-m``).  Prints one JSON object:
time per product with K, iterations, relative residual (sGDML's own stopping rule:
||r|| <= 1e-4 ||y||), converged or stopped, peak memory, and the test MAEs of the model
sGDML ends with (its last checkpoint when the limit stopped it).

Run from the repository root (needs ../shared/data/rmd17 and benchmarks/.sgdml-venv)::

    python -m benchmarks.sgdml_cg --molecule aspirin --m 1000 --sigma 48 --max-memory-gb 8 \\
        --time-limit-min 35 --json benchmarks/results/sgdml_cg_DATE_aspirin_M1000.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks import sgdml_runner
from benchmarks.datasets import DEFAULT_DATA_DIR, load_split, molecule_files, training_indices

GRACE_S = 1200  # past the limit: CG stops at the next product, then sGDML tests (kill after this)


def read_progress(path):
    """The per-product records the driver wrote (one JSON line each); [] if none."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def progress_summary(records, every=50):
    """Products, median product seconds, last iteration and residual, peak VmHWM, and a
    residual trace (every ``every``-th product and the last) from the driver's records."""
    if not records:
        return {"products": 0}
    last = records[-1]
    trace = [{k: r[k] for k in ("product", "t", "iteration", "rel_resid")}
             for i, r in enumerate(records) if i % every == 0 or r is last]
    return {"products": len(records),
            "product_s_median": statistics.median(r["product_s"] for r in records),
            "product_s_min": min(r["product_s"] for r in records),
            "product_s_max": max(r["product_s"] for r in records),
            "first_product_at_s": records[0]["t"], "last_product_at_s": last["t"],
            "iterations": last["iteration"], "rel_resid": last["rel_resid"],
            "peak_vmhwm_bytes": max(r["vmhwm_bytes"] or 0 for r in records), "trace": trace}


def errors_on_test_set(result, test):
    """Test MAEs of sGDML's predictions (and of its float64-input predictions, torch path)."""
    if "F_pred" not in result:
        return None
    errors = {"force_mae": float(np.mean(np.abs(result["F_pred"] - test.F))),
              "energy_mae": float(np.mean(np.abs(result["E_pred"] - test.E)))}
    if "F_pred_float64_input" in result:
        errors["force_mae_float64_input"] = float(np.mean(np.abs(result["F_pred_float64_input"] - test.F)))
        errors["energy_mae_float64_input"] = float(np.mean(np.abs(result["E_pred_float64_input"] - test.E)))
    return errors


def run(molecule, m, sigma, lam, max_memory_gb, time_limit_s, use_torch, seed, workdir, data_dir):
    files = molecule_files(data_dir, molecule)
    if files is None:
        raise SystemExit(f"no data for {molecule} under {data_dir}")
    train, test = load_split(files, "new" if files["kind"] == "rmd17" else "default")
    idx = training_indices(len(train), m, 0)
    out = {"molecule": molecule, "M": m, "sigma": sigma, "lam": lam, "max_memory_gb": max_memory_gb,
           "time_limit_s": time_limit_s, "use_torch": use_torch, "seed": seed,
           "test_frames": len(test.R), "workdir": str(workdir)}
    progress_path = Path(workdir) / f"sgdml_{'torch' if use_torch else 'numpy'}_cg_progress.jsonl"
    try:
        result = sgdml_runner.run_sgdml(
            train.R, train.z, train.E, train.F, idx, test.R, sigma, lam, "sgdml", use_torch,
            batches=(), repeats=1, train_repeats=1, workdir=workdir, progress=True,
            timeout=time_limit_s + GRACE_S, solver="cg", max_memory_gb=max_memory_gb,
            time_limit_s=time_limit_s, seed=seed)
    except sgdml_runner.SgdmlError as exc:  # crashed or killed: keep what its progress file says
        out.update(status="failed", error=str(exc)[-3000:], progress=progress_summary(read_progress(progress_path)))
        return out
    out.update(status="converged" if result["cg"]["converged"] else "not converged",
               cg=result["cg"], progress=progress_summary(read_progress(progress_path)),
               test_errors=errors_on_test_set(result, test), memory=result["memory"],
               timings=result["timings"], wall_time=result["wall_time"], versions=result["versions"],
               n_perms=result.get("n_perms"), symmetry_s=result["symmetry"]["time"] if "symmetry" in result else None,
               max_processes=result["max_processes"])
    out["cg"].pop("product_s")  # summarised in progress; the raw records stay in the progress file
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--molecule", default="aspirin")
    parser.add_argument("--m", type=int, default=1000)
    parser.add_argument("--sigma", type=int, default=48, help="an integer (sGDML's torch path truncates sigma)")
    parser.add_argument("--lam", type=float, default=1e-10)
    parser.add_argument("--max-memory-gb", type=float, default=8.0,
                        help="sGDML's -m: decides CG over the closed form and the number of inducing points")
    parser.add_argument("--time-limit-min", type=float, default=35.0)
    parser.add_argument("--numpy", action="store_true", help="sGDML's numpy path (the CLI's --cpu)")
    parser.add_argument("--seed", type=int, default=0, help="np.random seed for sGDML's column sampling")
    parser.add_argument("--workdir", help="keep sGDML's files here (default: a new temporary directory)")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="sgdml-cg-"))
    out = run(args.molecule, args.m, args.sigma, args.lam, args.max_memory_gb, args.time_limit_min * 60,
              not args.numpy, args.seed, workdir, args.data_dir)
    text = json.dumps(out, indent=1)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0 if out["status"] != "failed" else 1


if __name__ == "__main__":
    sys.exit(main())
