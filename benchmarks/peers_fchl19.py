"""kernelforge's hand-written FCHL19 force model on the frames benchmarks.accuracy uses (issue 12's peer).

Run from the repository root (needs ../shared/data/rmd17 and the peer: pip install -e .[peers])::

    python -m benchmarks.peers_fchl19 ethanol --m 1000 --sigma 4 --lam 1e-8

kernelforge 1.1's ``LocalKRRModel`` (FCHL19 with its default parameters, local Gaussian kernel, forces only,
packed (RFP) Cholesky) is trained on the first M frames of rmd17_<molecule>_train_01 (new labels) and tested on all
1000 frames of rmd17_<molecule>_test_01, as gdmlc's ``python -m benchmarks.accuracy MOLECULE:new --descriptor
fchl19 --kernel gaussian`` final model.  Reported: the fit's wall time, prediction time and geometries per second
at batch 1000, force and energy MAE, and this process's peak RSS (run it alone, not in a process that trained
anything else).  One JSON per run in benchmarks/results/.
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
from benchmarks.measure import peak_rss_bytes

REPO = Path(__file__).resolve().parents[1]


def run(molecule, m, sigma, lam, log):
    import runtime
    from kernelforge.models.krr import LocalKRRModel

    train = runtime.load_dataset(rmd17_file(molecule, "train"), labels="new")
    test = runtime.load_dataset(rmd17_file(molecule, "test"), labels="new")
    elements = sorted({int(a) for a in train.z})
    model = LocalKRRModel(sigma=sigma, l2=lam, elements=elements)
    coords = [train.R[k] for k in range(m)]
    z_list = [train.z.astype(np.int32)] * m
    t0 = time.perf_counter()
    model.fit(coords, z_list, forces=[train.F[k] for k in range(m)])
    fit_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    E, F = model.predict([test.R[k] for k in range(len(test))], [test.z.astype(np.int32)] * len(test))
    predict_seconds = time.perf_counter() - t0
    F = np.asarray(F).reshape(test.F.shape)
    E = np.asarray(E).ravel()
    force_mae = float(np.mean(np.abs(F - test.F)))
    # a forces-only model's energies are relative: compare them after removing the mean offset
    energy_mae = float(np.mean(np.abs((E - E.mean()) - (test.E - test.E.mean()))))
    result = {"molecule": molecule, "m": m, "sigma": sigma, "lam": lam, "elements": elements,
              "fit_seconds": fit_seconds, "predict_seconds": predict_seconds,
              "geometries_per_second": len(test) / predict_seconds,
              "test": {"force_mae": force_mae, "energy_mae_offset_removed": energy_mae},
              "peak_rss_bytes": peak_rss_bytes()}
    log(f"kernelforge {molecule} M={m} sigma {sigma:g}: force MAE {force_mae:.4f}, fit {fit_seconds:.0f} s, "
        f"prediction {len(test) / predict_seconds:.0f} geometries/s")
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers_fchl19", description=__doc__.split("\n")[0])
    parser.add_argument("molecule")
    parser.add_argument("--m", type=int, default=1000)
    parser.add_argument("--sigma", type=float, default=4.0)
    parser.add_argument("--lam", type=float, default=1e-8)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not DEFAULT_DATA_DIR.is_dir():
        raise SystemExit(f"rMD17 data not found at {DEFAULT_DATA_DIR}")
    import kernelforge

    started = _dt.datetime.now(_dt.timezone.utc)
    record = {"command": "python -m benchmarks.peers_fchl19 " + " ".join(argv if argv is not None else sys.argv[1:]),
              "date": started.isoformat(timespec="seconds"), "machine": platform.platform(),
              "versions": {"python": platform.python_version(), "numpy": np.__version__,
                           "kernelforge": getattr(kernelforge, "__version__", "1.1")},
              "result": run(args.molecule, args.m, args.sigma, args.lam, lambda text: print(text, flush=True))}
    out = args.out or REPO / "benchmarks" / "results" / f"peers_fchl19_{args.molecule}_{started:%Y-%m-%dT%H%M}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
