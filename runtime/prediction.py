"""Prediction scheduling on the CPU: which path for how many queries, on how many threads.

The compiled model (compiler/build/compiled.py) gives the generated kernels with their arguments;
this module decides how they are called: below SMALL_BATCH queries the tiled loops, above it
two matrix products (BLAS) around one generated elementwise kernel per chunk of queries, the
chunks on a thread pool with single-threaded BLAS and per-thread scratch.  Small work runs on
the calling thread alone (compiled.threads_for, shared with descriptor evaluation), with the
same sums, bit for bit.
"""
from __future__ import annotations

import numpy as np

from compiler.build.compiled import PredictionSide, numba_threads, thread_scratch, threads_for
from compiler.build.hessian import HessianSide, predict_hessians

# below this many queries the tiled loops beat the matrix products (ethanol, M=1000, P=6,
# 2 cores: 13,800 vs 10,300 geometries/s at 10 queries, 14,000 vs 19,900 at 30)
SMALL_BATCH = 20
TILE_QUERIES = 16  # queries a task of predict_tiles takes through its tiles together


def predict_parts(model, DQ, JACQ, DT, BT, hyper, n_atoms, side=None):
    """Energies (Q,) and forces (Q, N, 3) from query descriptors and Jacobians against the
    permuted training descriptors DT and coefficients BT (MP, F) of a compiled ``model``.
    ``side``: the PredictionSide(DT, BT) of a trained model, computed once instead of per call.
    Small work runs on this thread alone (threads_for), with the same sums, bit for bit."""
    import numba
    parts = numba.get_num_threads()  # the tiled split, whatever the threads that run it
    with numba_threads(threads_for(DQ.shape[0])):
        if DQ.shape[0] < SMALL_BATCH:
            return predict_parts_tiled(model, DQ, JACQ, DT, BT, hyper, n_atoms, side=side, parts=parts)
        return predict_parts_batched(model, DQ, JACQ, DT, BT, hyper, n_atoms, side=side)


def predict_parts_batched(model, DQ, JACQ, DT, BT, hyper, n_atoms, side=None, chunk=64):
    """predict_parts for many queries: the descriptor-space sums are two matrix products
    (BLAS) around one generated elementwise kernel, per task:
    [T | DB] = DQ W^T with W = [DT; BT], then the kernel coefficients X (2 per (query,
    training) pair, see predict_coefficients), then the sum over training points of H beta =
    X W + rowsum(CD) DQ + rowsum(CP) c, and forces J^T of that sum at the end.  One matrix W
    serves both products, so each task streams the training data through the cache once.
    Descriptors are centred on the training mean first: differences such as
    (d - dt).beta = d.beta - dt.beta then cancel far less.
    Tasks run on Numba's number of threads, each with single-threaded BLAS, so the matrix
    products use every core without two thread pools competing.  A task is a chunk of
    queries."""
    side = checked_side(side, DT, BT)
    acc, E = descriptor_sums_chunked(*DQ.shape, lambda rows: _predict_chunk(model, DQ[rows], side, hyper), chunk)
    F = np.empty((DQ.shape[0], n_atoms, 3))
    model.forces_from_descriptor_gradients(JACQ, acc, F)
    return E, F


def descriptor_sums_chunked(Q, n_features, chunk_sums, chunk=64):
    """(acc (Q, F), E (Q,)) from ``chunk_sums(rows)`` -> (acc[rows], E[rows]) run on the chunk
    pool, one task per chunk of at most ``chunk`` rows, each with single-threaded BLAS."""
    _, threads = _chunk_pool()
    acc = np.empty((Q, n_features))
    E = np.empty(Q)

    def run(rows):
        acc[rows], E[rows] = chunk_sums(rows)

    on_chunk_pool(Q, max(1, min(chunk, -(-Q // threads))), run)
    return acc, E


def on_chunk_pool(Q, chunk, work):
    """``work(rows)`` for each slice of at most ``chunk`` of Q rows, on the chunk pool (a single
    slice on this thread), with single-threaded BLAS."""
    starts = range(0, Q, chunk)
    with single_threaded_blas():
        if len(starts) == 1:
            work(slice(0, Q))
            return
        pool, _ = _chunk_pool()
        for task in [pool.submit(work, slice(start, start + chunk)) for start in starts]:
            task.result()


def checked_side(side, DT, BT):
    """``side``, or a fresh one for (DT, BT); refused if prepared for other training rows."""
    side = side if side is not None else PredictionSide(DT, BT)
    if side.n_rows != DT.shape[0]:
        raise ValueError(f"prediction side was prepared for {side.n_rows} training rows, not {DT.shape[0]}")
    return side


def _predict_chunk(model, DQ, side, hyper):
    """(descriptor-space force sums (q, F), energies (q,)) of queries DQ against one side."""
    return chunk_sums(model, *side.queries(DQ), side, hyper)


def chunk_sums(model, dq, NQ, QC, side, hyper, T=None):
    """_predict_chunk from the query side (dq, NQ, QC) = side.queries(DQ).  ``T``: dq DT^T, the
    first half of TD, when the caller has it already (the training product's fixed half)."""
    n = side.n_rows
    TD = thread_scratch("TD", (len(dq), 2 * n))
    if T is None:
        np.matmul(dq, side.W.T, out=TD)
    else:
        TD[:, :n] = T
        np.matmul(dq, side.W[n:].T, out=TD[:, n:])
    X = thread_scratch("X", TD.shape)
    SD, SP, E = np.empty(len(dq)), np.empty(len(dq)), np.empty(len(dq))
    model.predict_coefficients(dq, NQ, QC, TD, side, hyper, X, SD, SP, E)
    return X @ side.W + SD[:, None] * dq + SP[:, None] * side.centre, E


def permuted_rows(X, fperms):
    """(M * P, F): every row of X (M, F) under every feature permutation, as prediction reads them."""
    return np.ascontiguousarray(X[:, fperms].reshape(-1, X.shape[1]))


def predict_parts_tiled(model, DQ, JACQ, DT, BT, hyper, n_atoms, side=None, parts=None):
    """predict_parts by the generated tiled loops (no BLAS): the training rows are split
    into ``parts`` (default: one per Numba thread) summed separately, and every thread takes
    all queries through its parts' tiles.  The sums depend on ``parts`` only, not on the
    threads that run them, so one thread given the parts of two gives the same bits."""
    import numba
    side = checked_side(side, DT, BT)
    dq, NQ, QC = side.queries(DQ)
    parts = parts or numba.get_num_threads()
    bounds = np.linspace(0, side.n_rows, parts + 1).astype(np.int64)
    ACC = np.empty((parts, len(dq), dq.shape[1]))
    EP = np.empty((parts, len(dq)))
    model.predict_tiles(dq, NQ, QC, side, hyper, bounds, TILE_QUERIES, ACC, EP)
    F = np.empty((len(dq), n_atoms, 3))
    model.forces_from_descriptor_gradients(JACQ, ACC.sum(axis=0), F)
    return EP.sum(axis=0), F


def predict_hessians_scheduled(model, R, z, DQ, JACQ, training, side=None):
    """Hessians d2E/dx2 (Q, 3N, 3N) (compiler/build/hessian.py): chunks of geometries on the
    chunk pool (threads_for decides whether there is more than one), each with the serial
    generated loops and single-threaded BLAS (two thread pools spinning against each other made
    one ethanol Hessian 20x slower on 2 cores).  ``side``: the HessianSide of ``training``,
    prepared once per model (else made here)."""
    q_count = DQ.shape[0]
    n3 = 3 * R.shape[1]
    H = np.empty((q_count, n3, n3))
    side = HessianSide(training.DT, training.BT, training.WT) if side is None else side

    def run(rows):
        H[rows] = predict_hessians(model, R[rows], z, DQ[rows], JACQ[rows], training.DT, training.BT, training.WT,
                                   training.hyper, side=side, observations=training.observations)

    on_chunk_pool(q_count, max(1, -(-q_count // threads_for(q_count))), run)
    return H


def add_energy_weight_terms(model, DQ, JACQ, DT, WT, hyper, E, F):
    """E, F += the energy-coefficient terms of a joint energy+force model (in place)."""
    with numba_threads(threads_for(DQ.shape[0])):
        model.predict_energy_weights(DQ, JACQ, DT, WT, hyper, E, F)


_POOL = (None, 0)


def _chunk_pool():
    """(executor, threads) for chunks of batched prediction: as many threads as Numba uses,
    re-made if that number changes."""
    global _POOL
    import numba
    from concurrent.futures import ThreadPoolExecutor
    threads = numba.get_num_threads()
    if _POOL[1] != threads:
        _POOL = (ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gdmlc-predict"), threads)
    return _POOL


_BLAS_CONTROLLER = None


def single_threaded_blas():
    """Context: BLAS on one thread.  Prediction alternates small matrix products with Numba's
    parallel loops; two thread pools that spin while waiting for each other on the same cores
    made batches of 10 geometries 20-100x slower on a loaded 2-core machine."""
    global _BLAS_CONTROLLER
    if _BLAS_CONTROLLER is None:
        from threadpoolctl import ThreadpoolController
        _BLAS_CONTROLLER = ThreadpoolController()
    return _BLAS_CONTROLLER.limit(limits=1, user_api="blas")
