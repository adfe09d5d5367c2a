"""CG's training product on a Dask cluster (runtime/distributed.py) against the single-process
product: seconds per iteration, Dask's overhead, bytes per iteration, and a cost model.

Per case (rMD17 aspirin, new labels, M training frames as benchmarks/matvec.py takes them):

* ``local 1t`` / ``local 2t``: TrainingProduct.matvec in this process on 1 and 2 Numba threads;
* ``dask W``: ClusterOperator.product on a LocalCluster of W worker processes x 1 thread, and
  its overhead: the product's wall time minus the slowest worker's compute time (what the
  workers report for the same product), i.e. sending x, scheduling, gathering, assembling;
* bytes per iteration: x (8 (3N M) bytes) sent to each worker and the row blocks returned
  (8 (3N M) bytes in all), and what the loopback interface carried per product (psutil; the
  whole machine's loopback traffic, so other processes' can add to it).

Cost model t(W, M) = a M^2 / W + b M + c log2(W) + d (the workers' share of the M^2 product,
per-vector work, broadcast/gather latency, fixed cost), least squares over the measured
(W, M), then extrapolated on paper to 64 nodes and M = 20,000 under stated assumptions.

Run from the repository root (needs ../shared/data/rmd17)::

    python -m benchmarks.dask_cg --m 250 --m 500 --m 1000 --repeats 5
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import time
from statistics import median

import numpy as np

from benchmarks.matvec import seconds
from benchmarks.packed_memory import training_problem

# the extrapolation's assumptions (printed with it)
NODE_CORES = 32  # cores per node, each as fast as one core here (the fitted a is per 1-thread worker)
NETWORK_BYTES_PER_S = 12.5e9  # 100 Gb/s (InfiniBand HDR100 / 100 GbE) at the client's link
NETWORK_LATENCY_S = 20e-6  # per message


def loopback_bytes():
    import psutil
    return psutil.net_io_counters(pernic=True)["lo"].bytes_sent


def local_times(model, D, JAC, fperms, hyper, V, repeats):
    """{threads: median seconds} of the single-process product on 1 and 2 Numba threads."""
    from compiler.build.compiled import numba_threads
    from runtime.matvec import TrainingProduct
    plan = TrainingProduct(model, D, JAC, fperms, hyper)
    out = {}
    for threads in (1, 2):
        with numba_threads(threads):
            out[threads], _ = seconds(lambda: plan.matvec(V), repeats)
    return out, plan.matvec(V).ravel()


def dask_times(client, texts, D, JAC, fperms, hyper, n_atoms, V, repeats, reference):
    """Median product seconds, median overhead, loopback bytes per product on ``client``'s workers."""
    from runtime.distributed import ClusterOperator
    start = time.perf_counter()
    op = ClusterOperator(client, texts, D, JAC, fperms, hyper, n_atoms, lam=0.0)
    build = time.perf_counter() - start
    x = V.ravel()
    difference = float(np.linalg.norm(op.product(x) - reference) / np.linalg.norm(reference))  # and warm-up
    walls, overheads = [], []
    sent = loopback_bytes()
    for _ in range(repeats):
        start = time.perf_counter()
        op.product(x)
        walls.append(time.perf_counter() - start)
        overheads.append(walls[-1] - max(op.worker_seconds))
    lo_bytes = (loopback_bytes() - sent) / repeats
    return {"build_s": build, "product_s": median(walls), "overhead_s": median(overheads),
            "worker_s": median(walls) - median(overheads), "loopback_bytes": lo_bytes,
            "relative_difference": difference, "samples": walls}


def fit_cost_model(points):
    """(a, b, c, d) >= 0 of t = a M^2/W + b M + c log2 W + d from (W, M, worker seconds,
    overhead seconds): a from the one-worker compute times (on separate nodes the W workers'
    blocks run side by side; on this shared 2-core machine two workers contend for the cores,
    so their compute time is not M^2/W's), b, c, d from the overheads of every point, least
    squares in relative error (each point weighs the same; no cost is negative)."""
    from scipy.optimize import nnls
    single = [(m, worker) for w, m, worker, _ in points if w == 1]
    a = sum(worker * m * m for m, worker in single) / sum(m ** 4 for m, _ in single)
    A = np.array([[m, math.log2(w), 1.0] for w, m, _, _ in points])
    overhead = np.array([p[3] for p in points])
    (b, c, d), _ = nnls(A / overhead[:, None], np.ones(len(overhead)))
    return np.array([a, b, c, d])


def extrapolate(coefficients, nodes, m, n_atoms):
    """Seconds per iteration on ``nodes`` nodes of NODE_CORES cores at M = m, by the model, and
    the star broadcast's transfer time the model's log2 term does not see."""
    a, b, c, d = coefficients
    compute = a * m * m / (nodes * NODE_CORES)
    vector_bytes = 8 * 3 * n_atoms * m
    transfer = (nodes + 1) * vector_bytes / NETWORK_BYTES_PER_S + 2 * nodes * NETWORK_LATENCY_S
    return {"compute_s": compute, "per_vector_s": b * m, "latency_s": c * math.log2(nodes) + d,
            "model_s": compute + b * m + c * math.log2(nodes) + d, "star_transfer_s": transfer,
            "vector_mb": vector_bytes / 1e6}


def main(argv=None):
    from distributed import Client, LocalCluster

    from runtime.distributed import model_texts
    from runtime.model import GDML
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--molecule", default="aspirin")
    parser.add_argument("--m", type=int, action="append", default=None, help="training frames (repeatable)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    sizes = args.m or [250, 500, 1000]
    logging.getLogger("distributed").setLevel(logging.ERROR)  # the cluster's start and stop, per worker
    gdml = GDML(sigma=10.0, progress=False)
    texts = model_texts(gdml.descriptor_dsl, gdml.kernel_dsl)
    clusters = {w: LocalCluster(n_workers=w, processes=True, threads_per_worker=1, dashboard_address=":0")
                for w in (1, 2)}
    clients = {w: Client(cluster) for w, cluster in clusters.items()}
    results, points = [], []
    try:
        for m in sizes:
            model, D, JAC, fperms, hyper, n_atoms, _ = training_problem(args.molecule, m, seed=0)
            V = np.random.default_rng(1).normal(size=(m, n_atoms, 3))
            local, reference = local_times(model, D, JAC, fperms, hyper, V, args.repeats)
            row = {"molecule": args.molecule, "M": m, "P": len(fperms), "n_atoms": n_atoms, "local_s": local,
                   "dask": {}}
            for w, client in clients.items():
                r = dask_times(client, texts, D, JAC, fperms, hyper, n_atoms, V, args.repeats, reference)
                row["dask"][w] = r
                points.append((w, m, r["worker_s"], r["overhead_s"]))
                print(f"{args.molecule} M={m} P={len(fperms)} W={w}: dask {r['product_s']:.4f} s per product "
                      f"(slowest worker {r['worker_s']:.4f} s, overhead {r['overhead_s'] * 1e3:.1f} ms = "
                      f"{100 * r['overhead_s'] / r['product_s']:.1f} %), local 1 thread {local[1]:.4f} s, "
                      f"2 threads {local[2]:.4f} s; x {8 * 3 * n_atoms * m / 1e3:.0f} kB to each of {w} worker(s), "
                      f"loopback {r['loopback_bytes'] / 1e3:.0f} kB per product; |dask - local| / |local| = "
                      f"{r['relative_difference']:.1e}; plans built in {r['build_s']:.1f} s", flush=True)
            results.append(row)
    finally:
        for w in clients:
            clients[w].close()
            clusters[w].close()
    coefficients = fit_cost_model(points)
    a, b, c, d = coefficients
    print(f"cost model t(W, M) = {a:.3e} M^2/W + {b:.3e} M + {c:.3e} log2(W) + {d:.3e} s; per point "
          "(W, M: measured worker + overhead s, model's a M^2/W + rest s): " + ", ".join(
              f"W={w} M={m}: {worker:.3f} + {over * 1e3:.1f} ms, {a * m * m / w:.3f} + "
              f"{(b * m + c * math.log2(w) + d) * 1e3:.1f} ms" for w, m, worker, over in points))
    e = extrapolate(coefficients, 64, 20_000, results[-1]["n_atoms"])
    print(f"extrapolated to 64 nodes x {NODE_CORES} cores, M = 20,000 {args.molecule}: {e['model_s']:.2f} s per "
          f"iteration (compute {e['compute_s']:.2f} s, per-vector {e['per_vector_s']:.3f} s, latency "
          f"{e['latency_s']:.3f} s) + star broadcast of a {e['vector_mb']:.1f} MB vector to 64 nodes and gather "
          f"{e['star_transfer_s']:.3f} s at {NETWORK_BYTES_PER_S / 1e9:g} GB/s; assumes each core as fast as "
          f"one here, a worker's {NODE_CORES} threads scaling perfectly, the same P")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"results": results, "cost_model": coefficients.tolist(), "extrapolation": e}, fh,
                      indent=1, default=str)


if __name__ == "__main__":
    main()
