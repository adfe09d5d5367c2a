"""One local model on several molecules against each molecule's own model, same frames.

    python -m benchmarks.mixed_molecules --molecules ethanol malonaldehyde uracil --m 300 --sigma 4 \\
        --json out.json

rMD17 split 01, new labels (../shared).  For each molecule the first M frames of its train file
train its own local model (the descriptor and kernel given, one sigma, lambda 1e-8); all of them
together, padded to the largest atom count (runtime/mixed.py), train one model with the same
settings, whose energies get one constant per element.  Both predict the first --n-test frames of
each molecule's test file; the ratio of force MAEs (together / own) is the issue's measure
(target <= 1.25).  Times are wall seconds of fit() on this machine.
"""
from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np

from benchmarks.datasets import DEFAULT_DATA_DIR, rmd17_file
from benchmarks.environment import machine, versions


def padded(parts):
    """(R, F, E, z) of several datasets' frames, padded to the largest atom count."""
    n = max(p.n_atoms for p in parts)
    m = sum(len(p) for p in parts)
    R, F, z = np.zeros((m, n, 3)), np.zeros((m, n, 3)), np.zeros((m, n), dtype=np.int64)
    start = 0
    for p in parts:
        rows = slice(start, start + len(p))
        R[rows, :p.n_atoms], F[rows, :p.n_atoms], z[rows, :p.n_atoms] = p.R, p.F, p.z
        start += len(p)
    return R, F, np.concatenate([p.E for p in parts]), z


def main(argv=None):
    import runtime

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--molecules", nargs="+", default=["ethanol", "malonaldehyde", "uracil"])
    parser.add_argument("--m", type=int, default=300, help="training frames per molecule")
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--descriptor", default="fchl19")
    parser.add_argument("--kernel", default="gaussian")
    parser.add_argument("--sigma", type=float, default=4.0)
    parser.add_argument("--lam", type=float, default=1e-8)
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    options = dict(descriptor=args.descriptor, kernel=args.kernel, sigma=args.sigma, lam=args.lam, progress=False)
    train = {mol: runtime.load_dataset(rmd17_file(mol, "train", args.data_dir)).subset(np.arange(args.m))
             for mol in args.molecules}
    test = {mol: runtime.load_dataset(rmd17_file(mol, "test", args.data_dir)).subset(np.arange(args.n_test))
            for mol in args.molecules}
    rows = {}
    for mol in args.molecules:
        t = time.perf_counter()
        own = runtime.GDML(**options).fit(train[mol].R, train[mol].F, train[mol].E, train[mol].z)
        rows[mol] = {"own_fit_s": round(time.perf_counter() - t, 1),
                     "own": own.evaluate(test[mol].R, test[mol].F, test[mol].E)}
        print(mol, json.dumps(rows[mol]), flush=True)
        del own
    R, F, E, z = padded([train[mol] for mol in args.molecules])
    t = time.perf_counter()
    together = runtime.GDML(**options).fit(R, F, E, z)
    fit_seconds = time.perf_counter() - t
    for mol in args.molecules:
        errors = together.evaluate(test[mol].R, test[mol].F, test[mol].E, z=test[mol].z)
        rows[mol].update(together=errors, force_mae_ratio=errors["force_mae"] / rows[mol]["own"]["force_mae"])
        print(mol, json.dumps({k: rows[mol][k] for k in ("together", "force_mae_ratio")}), flush=True)
    out = {"command": "python -m benchmarks.mixed_molecules " + " ".join(argv or []), "machine": machine(),
           "versions": versions(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "settings": {k: v for k, v in vars(args).items() if k != "json"},
           "together_fit_s": round(fit_seconds, 1), "together_rows": int(3 * z.size),
           "together_real_rows": int(3 * (z > 0).sum()), "peak_rss_gib": round(
               resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2), "molecules": rows}
    print(json.dumps({k: out[k] for k in ("together_fit_s", "together_rows", "together_real_rows", "peak_rss_gib")}))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
