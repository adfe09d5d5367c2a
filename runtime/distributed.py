"""The CG training product on a dask.distributed cluster (optional: ``pip install gdmlc[dask]``).

The training rows are sharded to the workers once: each worker holds a RowBlock, the
TrainingProduct of its block of training points (runtime/matvec.py, ``rows=``), resident in
the worker's memory as a Dask actor.  Its coefficient side needs every training point's
descriptor and Jacobian (sent once, broadcast), its query side only its own rows'.  Each CG
iteration then sends the vector x to every worker and gathers the row blocks of K x: only
vectors cross the network.  The preconditioner, the rigid-body modes and the checkpoints stay
in the client process (runtime/cg.py).

The compiled model is not sent as an object (its generated module does not pickle): the
descriptor's and kernel's DSL text is, as a model file stores it, and each worker compiles it
once through compiler.compile_model (a cache hit where the generated module already exists).
"""
from __future__ import annotations

import json
import time
from contextlib import contextmanager

import numpy as np

from .cg import TrainingOperator

CONNECT_TIMEOUT = "10s"


class ClusterError(ValueError):
    """The cluster cannot be reached, or lost a worker (and its rows of K) during a solve."""


def connect(cluster):
    """A dask.distributed Client for ``cluster``: a Client (used as is) or a scheduler address."""
    try:
        from distributed import Client
    except ImportError:
        raise ClusterError("training on a cluster needs dask and distributed: pip install 'gdmlc[dask]'") from None
    if isinstance(cluster, Client):
        return cluster
    if not isinstance(cluster, str):
        raise ClusterError(f"cluster must be a scheduler address or a distributed.Client, got "
                           f"{type(cluster).__name__}")
    try:
        return Client(cluster, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ClusterError(f"cannot reach the Dask scheduler at {cluster!r}: {' '.join(str(exc).split())}") from None


def client_for(cluster, solver):
    """The Client a GDML's CG products run on; the dense solver is refused (its matrix lives in
    one process)."""
    if solver == "cholesky":
        raise ClusterError("solver='cholesky' cannot run on a cluster: the dense matrix lives in one process; "
                           "use solver='cg' or 'auto' (--solver cg) with cluster= (--scheduler)")
    return connect(cluster)


@contextmanager
def connected(address):
    """A Client of the scheduler at ``address`` for the duration of the block, closed after it
    (None without an address)."""
    if address is None:
        yield None
        return
    client = connect(address)
    try:
        yield client
    finally:
        client.close()


def training_operator(gdml, D, JAC, fperms, hyper, n_atoms, lam):
    """CG's (K + lam I) for a GDML's solve: its products in this process (cg.TrainingOperator),
    or on the workers of ``gdml.client``."""
    if gdml.client is None:
        return TrainingOperator(gdml.backend, D, JAC, fperms, hyper, n_atoms, lam, gdml.energy_constraints)
    texts = model_texts(gdml.descriptor_dsl, gdml.kernel_dsl)
    return ClusterOperator(gdml.client, texts, D, JAC, fperms, hyper, n_atoms, lam, gdml.energy_constraints)


def model_texts(descriptor_dsl, kernel_dsl):
    """{kind: (source, metadata JSON)}: what a worker compiles the model from (as a model file)."""
    from .model_file import KINDS, function_arrays
    texts = {}
    for kind, dsl in zip(KINDS, (descriptor_dsl, kernel_dsl)):
        arrays = function_arrays(dsl, kind)
        texts[kind] = (str(arrays[f"{kind}_source"]), str(arrays[f"{kind}_meta"]))
    return texts


_COMPILED = {}  # per worker process: model texts -> CompiledModel


def compiled_model(texts):
    """The CompiledModel of ``model_texts`` output, compiled once per process."""
    key = json.dumps(texts, sort_keys=True)
    if key not in _COMPILED:
        from compiler import compile_model

        from .model_file import KINDS, restore_function
        descriptor, kernel = (restore_function(kind, texts[kind][0], json.loads(texts[kind][1])) for kind in KINDS)
        _COMPILED[key] = compile_model(descriptor, kernel)
    return _COMPILED[key]


class RowBlock:
    """A worker's rows of the training product (a Dask actor: it stays on its worker)."""

    def __init__(self, texts, D, JAC, fperms, hyper, rows, energy_rows):
        from .matvec import TrainingProduct
        start, stop = rows
        self.plan = TrainingProduct(compiled_model(texts), D, JAC, fperms, hyper, rows=slice(start, stop))
        self.energy_rows = energy_rows
        self.threads = _worker_threads()

    def product(self, x):
        """This block's rows of K x: (force rows (rows, N, 3), energy rows (rows,) or None, the
        seconds computing them took on the worker)."""
        from compiler.build.compiled import numba_threads
        start = time.perf_counter()
        m = self.plan.m
        n_force = (x.size - m) if self.energy_rows else x.size
        V = x[:n_force].reshape(m, -1, 3)
        with numba_threads(self.threads):  # Numba's thread count is per thread: the worker's, not all cores
            F, E = self.plan.matvec_energy(V, x[n_force:]) if self.energy_rows else (self.plan.matvec(V), None)
        return F, E, time.perf_counter() - start


def _worker_threads():
    """The threads of the worker this runs on (1 outside a worker)."""
    try:
        from distributed import get_worker
        return max(1, int(get_worker().state.nthreads))
    except (ImportError, ValueError, AttributeError):
        return 1


class ClusterOperator(TrainingOperator):
    """cg.TrainingOperator whose product K x runs on the workers of a dask.distributed Client:
    one RowBlock per worker present, x sent to each per product, the row blocks gathered in
    order (only ``__call__`` is inherited: the plans are the workers')."""

    def __init__(self, client, texts, D, JAC, fperms, hyper, n_atoms, lam, energy_rows=False):
        self.client = client
        self.m, self.n_atoms, self.lam, self.energy_rows = D.shape[0], n_atoms, float(lam), energy_rows
        self.n_force = 3 * n_atoms * self.m
        self.size = self.n_force + (self.m if energy_rows else 0)
        workers = sorted(client.scheduler_info()["workers"])
        if not workers:
            raise ClusterError("the Dask cluster has no workers")
        bounds = np.linspace(0, self.m, min(len(workers), self.m) + 1).astype(int)
        D_all, JAC_all = client.scatter([np.asarray(D, dtype=np.float64), np.asarray(JAC, dtype=np.float64)],
                                        broadcast=True)
        self.blocks = []  # (worker address, (start, stop), actor)
        futures = []
        for worker, start, stop in zip(workers, bounds[:-1], bounds[1:]):
            futures.append((worker, (int(start), int(stop)), client.submit(
                RowBlock, texts, D_all, JAC_all, np.asarray(fperms), np.asarray(hyper), (int(start), int(stop)),
                energy_rows, workers=[worker], allow_other_workers=False, actor=True, pure=False)))
        for worker, rows, future in futures:
            self.blocks.append((worker, rows, self._result(future, worker, "preparing its rows")))
        self._futures = [f for *_, f in futures]  # the actors live while their futures do

    def product(self, x):
        """K x (without lam), its row blocks computed on the workers."""
        x = np.ascontiguousarray(x, dtype=np.float64)
        calls = [(worker, rows, actor.product(x)) for worker, rows, actor in self.blocks]
        F = np.empty((self.m, self.n_atoms, 3))
        E = np.empty(self.m)
        self.worker_seconds = []  # each block's compute time in the last product (benchmarks/dask_cg.py)
        for worker, (start, stop), call in calls:
            F_rows, E_rows, seconds = self._result(call, worker, f"the product of training rows {start}-{stop - 1}")
            self.worker_seconds.append(seconds)
            F[start:stop] = F_rows
            if self.energy_rows:
                E[start:stop] = E_rows
        return np.concatenate([F.ravel(), E]) if self.energy_rows else F.ravel()

    def _result(self, future, worker, what):
        """A future's result; a lost worker is a ClusterError naming it and what it held."""
        try:
            return future.result()
        except Exception as exc:  # the worker died or its connection broke: that block is gone
            if worker in self.client.scheduler_info()["workers"] and not _lost(exc):
                raise
            raise ClusterError(f"Dask worker {worker} was lost during {what}: the solve cannot continue "
                               f"without its rows of the training matrix ({type(exc).__name__}: "
                               f"{' '.join(str(exc).split())})") from None


def _lost(exc):
    """Whether ``exc`` is a broken connection to a worker (rather than an error in its code)."""
    from distributed.comm.core import CommClosedError
    return isinstance(exc, (CommClosedError, OSError, ConnectionError))
