"""This checkout against another commit: assembly, Cholesky and prediction, same run, same data.

For a refactoring that must not cost speed, the only fair comparison is both trees measured
in turn on the same machine in the same minutes.  Run from the repository root (needs
../shared/data/rmd17)::

    python -m benchmarks.commit_compare HEAD~1 --molecule ethanol --m 1000 --repeats 3

The other commit is exported (``git archive``) to a temporary folder with its own generated
kernels.  Each repetition runs one fresh process per tree, the trees taking turns (A B, B A, ...),
and each process measures, with public functions that both trees have:

* assembly: ``runtime.assembly.assemble`` into a resident matrix (warm: the second of two
  assemblies, so that page faults, which depend on the host and not on the code, stay out;
  see benchmarks/assembly_profile.py);
* Cholesky: ``runtime.solver.cholesky_solve_inplace`` on that matrix;
* prediction: ``GDML.predict`` geometries/s at each batch size (median of calls of >= 0.5 s)
  on test_01 geometries, by a model trained by ``GDML.fit`` with the same frames, sigma and
  permutations.

It prints medians per tree and the ratio this/other (below 1: this tree is faster for times,
above 1 faster for throughput), and writes every sample as JSON with --json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "rmd17"
BATCHES = (1, 10, 1000)


def export_commit(commit, folder):
    """The tree of ``commit`` under folder (no .git), as a user's checkout of it would be."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


# ----------------------------------------------------------------------- worker (one tree)

def measure(molecule, m, sigma, seed, batches):
    """Timings of the tree first on sys.path (run in its own process)."""
    import numpy as np

    import runtime
    from runtime import symmetry
    from runtime.assembly import assemble
    from runtime.data import load_dataset
    from runtime.solver import cholesky_solve_inplace

    train = load_dataset(DATA / f"rmd17_{molecule}_train_01.npz", labels="old")
    idx = np.sort(np.random.default_rng(seed).permutation(len(train.R))[:m])
    R, F, E, z = train.R[idx], train.F[idx], train.E[idx], train.z
    n = R.shape[1]
    perms = symmetry.find_permutations(R, z, progress=False)
    model = runtime.GDML(sigma=sigma, symmetries=perms, progress=False)
    compiled = model.model
    fperms = compiled.feature_permutations(perms, n)
    D, JAC, _ = compiled.descriptor.evaluate(R, z)
    hyper = compiled.kernel.hyper(sigma=sigma)
    assemble(compiled, D[:4], JAC[:4], fperms, hyper, n, progress=False)  # compile outside the timings
    K = np.empty((3 * n * m, 3 * n * m))
    assemble(compiled, D, JAC, fperms, hyper, n, out=K, progress=False)
    t = time.perf_counter()
    assemble(compiled, D, JAC, fperms, hyper, n, out=K, progress=False)
    out = {"assembly_s": time.perf_counter() - t}
    y = F.ravel() / np.std(F)
    t = time.perf_counter()
    cholesky_solve_inplace(K, y, 1e-10, progress=False)
    out["cholesky_s"] = time.perf_counter() - t
    del K
    model.fit(R, F, E, z)
    pool = load_dataset(DATA / f"rmd17_{molecule}_test_01.npz", labels="old").R  # held-out geometries
    for b in batches:
        Rb = pool[np.arange(b) % len(pool)]
        model.predict(Rb)  # first call: compile, caches
        calls, spent = 0, 0.0
        samples = []
        while spent < 3.0 or len(samples) < 5:
            t = time.perf_counter()
            k = 0
            while time.perf_counter() - t < 0.5:
                model.predict(Rb)
                k += 1
            dt = time.perf_counter() - t
            samples.append(b * k / dt)
            calls, spent = calls + k, spent + dt
        out[f"predict_b{b}_per_s"] = median(samples)
    return out


def _run_worker(tree, args):
    code = (f"import sys, json; sys.path.insert(0, {str(tree)!r}); "
            f"sys.path.insert(1, {str(REPO / 'benchmarks')!r}); import commit_compare as c; "
            f"print(json.dumps(c.measure({args.molecule!r}, {args.m}, {args.sigma}, {args.seed}, {BATCHES!r})))")
    env = dict(os.environ)
    env["GDMLC_GENERATED_DIR"] = str(Path(tree) / "generated")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"worker in {tree} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("other", help="the commit to compare with (e.g. HEAD~1)")
    ap.add_argument("--molecule", default="ethanol")
    ap.add_argument("--m", type=int, default=1000)
    ap.add_argument("--sigma", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if not (DATA / f"rmd17_{args.molecule}_train_01.npz").is_file():
        raise SystemExit(f"needs {DATA}/rmd17_{args.molecule}_train_01.npz (../shared/data)")
    other_sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", args.other], check=True,
                               capture_output=True, text=True).stdout.strip()
    this_sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], check=True,
                              capture_output=True, text=True).stdout.strip()
    if subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                      capture_output=True, text=True).stdout.strip():
        this_sha += " + uncommitted changes"  # "this" is the working tree, as it is now
    samples = {"this": [], "other": []}
    with tempfile.TemporaryDirectory(prefix="gdmlc-compare-") as tmp:
        trees = {"this": REPO, "other": export_commit(other_sha, Path(tmp))}
        for r in range(args.repeats):
            order = ("this", "other") if r % 2 == 0 else ("other", "this")
            for name in order:
                result = _run_worker(trees[name], args)
                samples[name].append(result)
                print(f"repeat {r + 1} {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in result.items()),
                      file=sys.stderr, flush=True)
    keys = list(samples["this"][0])
    medians = {name: {k: median(s[k] for s in runs) for k in keys} for name, runs in samples.items()}
    ratios = {k: medians["this"][k] / medians["other"][k] for k in keys}
    report = {"this": this_sha, "other": other_sha, "molecule": args.molecule, "m": args.m, "sigma": args.sigma,
              "repeats": args.repeats, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "load_average": os.getloadavg(), "samples": samples, "medians": medians, "ratio_this_over_other": ratios}
    print(f"{args.molecule} M={args.m}: this {this_sha} vs other {other_sha} (medians of {args.repeats})")
    for k in keys:
        print(f"  {k:22s} this {medians['this'][k]:10.4g}   other {medians['other'][k]:10.4g}   "
              f"this/other {ratios[k]:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
