"""The matrix-free training product C V (CG's cost per iteration): seconds per product before
and after runtime/matvec.py's prepared TrainingProduct, against the product's arithmetic floor.

* ``before``: what CpuBackend.matvec did per call until the plan: contract, permute, a fresh
  PredictionSide of the training rows, then batched prediction with the training points as
  queries (prediction.predict_parts);
* ``after``: TrainingProduct.matvec (built once; its build time is reported separately).

Floor: batched prediction with Q = M queries against MP training rows is two matrix products
of 2 * M * 2MP * F flops each (TD = dq [DT; BT]^T and X [DT; BT]), i.e. 8 M MP F, plus the
elementwise kernel (one kernel evaluation per pair, not counted).  The plan precomputes the
dq DT^T half of the first, leaving 6 M MP F per product.  The floor in seconds is those flops
at the dgemm rate measured in the same run on the same shapes, scheduled as the product
schedules them (chunks of 64 queries on all cores, single-threaded BLAS per chunk).

Run from the repository root (needs ../shared/data/rmd17)::

    python -m benchmarks.matvec --case ethanol:500 --case ethanol:1000 --case aspirin:500 --repeats 5
"""
from __future__ import annotations

import argparse
import json
import time
from statistics import median

import numpy as np

from benchmarks.packed_memory import training_problem


def seconds(fn, repeats):
    """Median wall seconds of fn() over ``repeats`` calls after one warm-up, and all samples."""
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return median(samples), samples


def before_product(model, D, JAC, fperms, hyper, V):
    """The product as CpuBackend.matvec computed it per call before the prepared plan."""
    from runtime import prediction
    B = model.contract(JAC, V)
    _, F = prediction.predict_parts(model, D, JAC, prediction.permuted_rows(D, fperms),
                                    prediction.permuted_rows(B, fperms), hyper, V.shape[1])
    return F


def dgemm_rate(m, mp, f, repeats):
    """GFLOP/s of the product's two matrix products alone, TD = dq W^T (M, F) x (F, 2MP) and
    X W (M, 2MP) x (2MP, F), scheduled as the product schedules them (chunks of queries on the
    chunk pool, single-threaded BLAS, per-thread scratch): the rate its floor can be run at."""
    from compiler.build.compiled import thread_scratch
    from runtime.prediction import descriptor_sums_chunked
    rng = np.random.default_rng(0)
    dq, W = rng.normal(size=(m, f)), rng.normal(size=(2 * mp, f))

    def chunk(rows):
        TD = np.matmul(dq[rows], W.T, out=thread_scratch("TD", (len(dq[rows]), 2 * mp)))
        return TD @ W, TD[:, 0]
    t, _ = seconds(lambda: descriptor_sums_chunked(m, f, chunk), repeats)
    return 2 * (2 * m * 2 * mp * f) / t / 1e9


def measure_case(molecule, m, repeats, seed=0):
    from runtime.matvec import TrainingProduct
    model, D, JAC, fperms, hyper, n_atoms, _ = training_problem(molecule, m, seed)
    V = np.random.default_rng(1).normal(size=(m, n_atoms, 3))
    start = time.perf_counter()
    plan = TrainingProduct(model, D, JAC, fperms, hyper)
    build = time.perf_counter() - start
    t_before, s_before = seconds(lambda: before_product(model, D, JAC, fperms, hyper, V), repeats)
    t_after, s_after = seconds(lambda: plan.matvec(V), repeats)
    agreement = float(np.linalg.norm(plan.matvec(V) - before_product(model, D, JAC, fperms, hyper, V))
                      / np.linalg.norm(before_product(model, D, JAC, fperms, hyper, V)))
    mp, f = m * len(fperms), D.shape[1]
    rate = dgemm_rate(m, mp, f, repeats)
    floor_full = 8 * m * mp * f / (rate * 1e9)
    floor_plan = (6 if plan.T is not None else 8) * m * mp * f / (rate * 1e9)
    return {"molecule": molecule, "M": m, "P": len(fperms), "F": f, "build_s": build,
            "before_s": t_before, "after_s": t_after, "before_samples": s_before, "after_samples": s_after,
            "dgemm_gflops": rate, "floor_8MMPF_s": floor_full, "floor_plan_s": floor_plan,
            "after_over_floor": t_after / floor_full, "before_over_floor": t_before / floor_full,
            "relative_difference": agreement}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", default=None, help="molecule:M (repeatable; default "
                        "ethanol:500, ethanol:1000, aspirin:500)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    cases = args.case or ["ethanol:500", "ethanol:1000", "aspirin:500"]
    results = []
    for case in cases:
        molecule, m = case.split(":")
        r = measure_case(molecule, int(m), args.repeats)
        results.append(r)
        print(f"{molecule} M={r['M']} P={r['P']} F={r['F']}: before {r['before_s']:.4f} s, after {r['after_s']:.4f} s "
              f"(build {r['build_s']:.3f} s), dgemm {r['dgemm_gflops']:.1f} GFLOP/s, floor 8MMPF "
              f"{r['floor_8MMPF_s']:.4f} s (plan's 6MMPF {r['floor_plan_s']:.4f} s): after = "
              f"{r['after_over_floor']:.2f}x floor (before {r['before_over_floor']:.2f}x), "
              f"|after - before| / |before| = {r['relative_difference']:.1e}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
