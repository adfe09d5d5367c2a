"""Where gdmlc's training-matrix assembly spends its time: compute against first touch.

Run from the repository root (needs ../shared/data/rmd17)::

    python -m benchmarks.assembly_profile ethanol --m 1000 --repeats 3

In one process, on the harness's training frames (same seed, sigma irrelevant to the time):

* cold: ``runtime.assembly.assemble`` into a freshly allocated matrix, as training does; the
  first write of every page makes the kernel (and on a VM the host) fault it in;
* warm: the same assembly again into the same, now resident matrix: the compute and the
  writes alone;
* touch: a parallel write of zeros into another fresh matrix of the same size: what faulting
  in the matrix costs by itself at that moment;
* per block: ``force_block_parts`` for one block row, serially, in microseconds per 3N x 3N
  block (all permutations summed).

The harness's assembly time is the cold one.  On this project's 2-core VM the touch time
ranged from 0.35 s to 6 s for the same 5.8 GB in one hour: it depends on the host, not on
the code, so the warm time is the one that measures gdmlc.
"""
from __future__ import annotations

import argparse
import json
import time
from statistics import median

import numpy as np

from .datasets import DEFAULT_DATA_DIR, load_split, molecule_files, training_indices


def _fill_parallel():
    from numba import njit, prange

    @njit(parallel=True)
    def fill(flat):
        for i in prange(flat.shape[0]):
            flat[i] = 0.0
    return fill


def profile(molecule, m, repeats, labels="old", seed=0):
    import runtime
    from runtime import symmetry
    from runtime.assembly import assemble, check_memory
    from numba import njit

    train, _ = load_split(molecule_files(DEFAULT_DATA_DIR, molecule), labels)
    idx = training_indices(len(train), m, seed)
    R, z = train.R[idx], train.z
    n = R.shape[1]
    model = runtime.GDML(sigma=10.0, progress=False).model
    perms = symmetry.find_permutations(R, z, progress=False)
    fperms = model.feature_permutations(perms, n)
    D, JAC, _ = model.descriptor.evaluate(R, z)
    hyper = model.kernel.hyper(sigma=10.0)
    assemble(model, D[:4], JAC[:4], fperms, hyper, n, progress=False)  # compile outside the timings
    fill = _fill_parallel()
    fill(np.empty(8))
    size = 3 * n * m
    check_memory(size, fraction=0.45)  # two matrices at once
    out = {"molecule": molecule, "m": m, "n_perms": len(perms), "matrix_gib": size * size * 8 / 2 ** 30,
           "cold_s": [], "warm_s": [], "touch_s": []}
    for _ in range(repeats):
        K = np.empty((size, size))
        t = time.perf_counter()
        assemble(model, D, JAC, fperms, hyper, n, out=K, progress=False)
        out["cold_s"].append(time.perf_counter() - t)
        t = time.perf_counter()
        assemble(model, D, JAC, fperms, hyper, n, out=K, progress=False)
        out["warm_s"].append(time.perf_counter() - t)
        del K
        other = np.empty(size * size)
        t = time.perf_counter()
        fill(other)
        out["touch_s"].append(time.perf_counter() - t)
        del other

    block_parts = model.module.force_block_parts

    @njit
    def one_block_row(D, JAC, atoms, fperms, hyper, block, work):
        for j in range(D.shape[0]):
            block_parts(D[0], JAC[0], D[j], JAC[j], atoms, fperms, hyper, block, work)

    atoms = model.descriptor.atom_table(n)
    block = np.empty((3 * n, 3 * n))
    work = np.empty(model.module.work_size(D.shape[1], 3 * n))
    one_block_row(D, JAC, atoms, fperms, hyper, block, work)
    samples = []
    for _ in range(max(5, repeats)):
        t = time.perf_counter()
        one_block_row(D, JAC, atoms, fperms, hyper, block, work)
        samples.append((time.perf_counter() - t) / m * 1e6)
    out["block_us"] = samples
    out["blocks"] = m * (m + 1) // 2
    out["medians"] = {key: median(out[key]) for key in ("cold_s", "warm_s", "touch_s", "block_us")}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("molecule", nargs="?", default="ethanol")
    ap.add_argument("--m", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--labels", default="old")
    args = ap.parse_args(argv)
    res = profile(args.molecule, args.m, args.repeats, args.labels)
    print(json.dumps(res, indent=2))
    med = res["medians"]
    print(f"{args.molecule} M={args.m}: cold {med['cold_s']:.2f} s, warm {med['warm_s']:.2f} s, "
          f"fault-in alone {med['touch_s']:.2f} s; {med['block_us']:.2f} us per block, "
          f"{med['block_us'] * res['blocks'] * 1e-6:.2f} s of blocks on one core")


if __name__ == "__main__":
    main()
