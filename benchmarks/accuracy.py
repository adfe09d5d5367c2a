"""rMD17 accuracy of gdmlc (issue 3's targets): sigma from a validation sweep, then the final fit.

Run from the repository root (needs ../shared/data/rmd17)::

    python -m benchmarks.accuracy ethanol:old ethanol:new uracil:new aspirin:new
    python -m benchmarks.accuracy ethanol:old --sweep-train 800 --sweep-valid 200 --sigmas 3:12:1

For each MOLECULE:LABELS ('old': the original MD17 labels, 'new': rMD17's PBE labels):

1. sigma sweep: train on the first ``--sweep-train`` frames of rmd17_<molecule>_train_01,
   validate on the next ``--sweep-valid`` frames of the same file (never on the test file),
   over the grid ``--sigmas`` (stopping, as sGDML, once the validation error has risen twice);
2. final model: train on ``--n-train`` frames of the train file (default all 1000, fewer where
   the training matrix would not fit in memory: the largest M whose matrix fits is used and
   reported) with the chosen sigma, and test on all 1000 frames of rmd17_<molecule>_test_01.

Default model: inverse distances x Matern 5/2, lam 1e-10, symmetries detected from the training
geometries; ``--descriptor``/``--kernel``/``--lam`` choose others (an atom-centred descriptor such as
fchl19 gives a local model: no symmetries, runtime/local.py; ``--global`` keeps a global one).
Stage timings (symmetry search, descriptors, assembly, Cholesky, energy constant) come from
the model's progress output; the whole fit is timed around ``GDML.fit``.  One JSON per run in
benchmarks/results/.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.datasets import DEFAULT_DATA_DIR, rmd17_file

REPO = Path(__file__).resolve().parents[1]


def largest_m(n_atoms, m_wanted, energy_rows=False, fraction=0.85):
    """Largest M <= m_wanted whose training matrix takes at most ``fraction`` of available memory."""
    from runtime.assembly import available_memory_bytes
    available = available_memory_bytes()
    if available is None:
        return m_wanted
    per_row = 3 * n_atoms + (1 if energy_rows else 0)
    m = m_wanted
    while m > 1 and 8.0 * (per_row * m) ** 2 > fraction * available:
        m -= 10
    return m


def run_case(molecule, labels, sigmas, sweep_train, sweep_valid, n_train, log, model_options=None):
    import runtime
    from runtime.cli import parse_sigma

    train = runtime.load_dataset(rmd17_file(molecule, "train"), labels=labels)
    test = runtime.load_dataset(rmd17_file(molecule, "test"), labels=labels)
    grid = parse_sigma(sigmas)
    options = {"lam": 1e-10, "symmetries": "auto", **(model_options or {})}
    result = {"molecule": molecule, "labels": labels, "n_atoms": train.n_atoms, "sigma_grid": grid,
              "model": {k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v))
                        for k, v in options.items()}}

    # 1. sigma from a validation sweep on frames of the training file
    tr, va = np.arange(sweep_train), np.arange(sweep_train, sweep_train + sweep_valid)
    t0 = time.perf_counter()
    sweep = runtime.GDML(sigma=grid, **options).fit(
        train.R[tr], train.F[tr], train.E[tr], train.z, valid=(train.R[va], train.F[va], train.E[va]))
    result["sweep"] = {"n_train": int(sweep_train), "n_valid": int(sweep_valid),
                       "seconds": time.perf_counter() - t0, "steps": sweep.info["sigma_sweep"],
                       "sigma": sweep.sigma}
    steps = ", ".join(f"{s['sigma']:g}: {s['force_mae']:.4f}" if "force_mae" in s else f"{s['sigma']:g}: skipped"
                      for s in sweep.info["sigma_sweep"])
    log(f"{molecule}/{labels}: sweep chose sigma {sweep.sigma:g} ({steps})")
    del sweep

    # 2. final model on the training file, tested on the test file
    m = largest_m(train.n_atoms, min(n_train, len(train)))
    idx = np.arange(m)
    t0 = time.perf_counter()
    model = runtime.GDML(sigma=result["sweep"]["sigma"], **options)
    model.fit(train.R[idx], train.F[idx], train.E[idx], train.z)
    fit_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    errors = model.evaluate(test.R, test.F, test.E)
    result["final"] = {"n_train": int(m), "n_test": len(test), "sigma": model.sigma,
                       "lam": model.lam_used, "n_perms": len(model.perms), "local": model.local,
                       "fit_seconds": fit_seconds, "stages": model.info.get("timings", {}),
                       "test_seconds": time.perf_counter() - t0, "test": errors,
                       "units": {"energy": test.energy_unit, "forces": f"{test.energy_unit}/{test.length_unit}"}}
    log(f"{molecule}/{labels}: M={m} sigma {model.sigma:g}: force MAE {errors['force_mae']:.4f}, "
        f"energy MAE {errors['energy_mae']:.4f} (fit {fit_seconds:.0f} s)")
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.accuracy", description=__doc__.split("\n")[0])
    parser.add_argument("cases", nargs="+", help="MOLECULE:LABELS, e.g. ethanol:old uracil:new")
    parser.add_argument("--sigmas", default="4:20:2", help="sigma grid (as gdmlc train --sigma)")
    parser.add_argument("--sweep-train", type=int, default=500)
    parser.add_argument("--sweep-valid", type=int, default=200)
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--descriptor", default="inverse_distances", help="library name or FILE.py:func")
    parser.add_argument("--kernel", default="matern52", help="library name or FILE.py:func")
    parser.add_argument("--lam", type=float, default=1e-10)
    parser.add_argument("--global", dest="global_kernel", action="store_true",
                        help="a global kernel even for an atom-centred descriptor")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not DEFAULT_DATA_DIR.is_dir():
        raise SystemExit(f"rMD17 data not found at {DEFAULT_DATA_DIR}")

    import numba
    import scipy

    def log(text):
        print(text, flush=True)

    started = _dt.datetime.now(_dt.timezone.utc)
    run = {"command": "python -m benchmarks.accuracy " + " ".join(argv if argv is not None else sys.argv[1:]),
           "date": started.isoformat(timespec="seconds"), "machine": platform.platform(),
           "processor": platform.processor(),
           "versions": {"python": platform.python_version(), "numpy": np.__version__,
                        "scipy": scipy.__version__, "numba": numba.__version__},
           "cases": []}
    out = args.out or REPO / "benchmarks" / "results" / f"accuracy_{started:%Y-%m-%dT%H%M}.json"
    for case in args.cases:
        molecule, _, labels = case.partition(":")
        options = {"descriptor": args.descriptor, "kernel": args.kernel, "lam": args.lam,
                   **({"local": False} if args.global_kernel else {})}
        run["cases"].append(run_case(molecule, labels or "new", args.sigmas, args.sweep_train,
                                     args.sweep_valid, args.n_train, log, options))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(run, indent=1))  # after every case: a crash keeps what was done
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
