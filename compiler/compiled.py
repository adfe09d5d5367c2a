"""Compiled descriptors, kernels and models: Python faces of generated modules."""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from functools import lru_cache

import numpy as np

from . import cache, checks, codegen, jax_lowering
from .analysis import descriptor_program, kernel_program
from .library import resolve
from .parser import module_constants, parse_descriptor, parse_kernel
from .records import DescriptorIR


# --------------------------------------------------------------------------- building

def _params_table(dsl, dir_: DescriptorIR) -> np.ndarray:
    """(channels, n_params) table: lists give one channel each, numbers broadcast."""
    from .errors import DSLError

    def error(message):  # the decorator line, where params were written
        return DSLError(f"descriptor {dsl.name}: {message}", dir_.source.filename,
                        dir_.source.first_line, 1, "give each parameter a finite number or a list of "
                        "them; all lists of the same length")

    try:
        columns = [np.atleast_1d(np.asarray(dsl.params[p], dtype=np.float64)) for p in dir_.param_names]
    except (TypeError, ValueError):
        raise error("parameters must be numbers or lists of numbers") from None
    lengths = {len(c) for c in columns if len(c) > 1}
    if len(lengths) > 1:
        raise error(f"parameter lists have different lengths {dict(zip(dir_.param_names, map(len, columns)))}")
    channels = lengths.pop() if lengths else 1
    if not columns:
        return np.zeros((1, 0))
    if not all(c.ndim == 1 and c.size and np.all(np.isfinite(c)) for c in columns):
        raise error("parameters must be finite numbers or non-empty flat lists of them")
    return np.stack([np.broadcast_to(c, (channels,)) for c in columns], axis=1).copy()


def _descriptor_metadata(dir_, prog):
    return {"descriptor": dir_.source.name, "descriptor_file": dir_.source.filename,
            "descriptor_line": dir_.source.first_line, "over": dir_.over.name,
            "symmetric": prog.symmetric,
            "descriptor_ops": [prog.term.ops_before, prog.term.ops_after],
            "descriptor_notes": list(prog.term.notes)}


def _kernel_metadata(kir, prog):
    return {"kernel": kir.source.name, "kernel_file": kir.source.filename,
            "kernel_line": kir.source.first_line, "present": prog.present, "guards": prog.guards,
            "uses": list(prog.uses),
            "kernel_ops": [prog.coefficients.ops_before, prog.coefficients.ops_after],
            "kernel_value_ops": [prog.value.ops_before, prog.value.ops_after],
            "kernel_notes": list(prog.coefficients.notes) + list(prog.value.notes)}


def _source_key(dsl, table=None):
    """Everything the generated text depends on: source, module numbers it reads, parameters."""
    constants = sorted(module_constants(dsl.fn).items())
    return (dsl.kind, dsl.source, constants, None if dsl.over is None else dsl.over.name,
            None if table is None else table.tolist())


def _build(stem, key_parts, dir_=None, kir=None):
    """Generated module for a descriptor, a kernel, or both (a model)."""
    def build():
        parts, metadata, titles = [], {}, []
        if dir_ is not None:
            dprog = descriptor_program(dir_)
            parts.append(codegen.descriptor_source(dir_, dprog))
            metadata.update(_descriptor_metadata(dir_, dprog))
            titles.append(f"descriptor {dir_.source.name} ({dir_.source.filename}:{dir_.source.first_line})")
        if kir is not None:
            kprog = kernel_program(kir)
            parts.append(codegen.kernel_source(kir, kprog))
            metadata.update(_kernel_metadata(kir, kprog))
            titles.append(f"kernel {kir.source.name} ({kir.source.filename}:{kir.source.first_line})")
            if dir_ is not None:
                parts.append(codegen.model_source(kprog))
        return codegen.module_source("gdmlc kernels for " + " and ".join(titles), parts, metadata)

    start = time.perf_counter()
    module, path, built = cache.get_or_build(stem, cache.content_hash(*key_parts), build)
    return module, path, built, time.perf_counter() - start


# --------------------------------------------------------------------------- descriptor

class CompiledDescriptor:
    """Descriptor values and sparse Jacobians from generated Numba code."""

    def __init__(self, dsl, dir_, table, module, path, built, seconds):
        self.dsl, self.ir, self.params = dsl, dir_, table
        self.module, self.module_path, self.built_now, self.build_seconds = module, path, built, seconds
        self.metadata = module.METADATA

    name = property(lambda self: self.dsl.name)
    over = property(lambda self: self.ir.over.name)
    n_channels = property(lambda self: self.params.shape[0])
    needs_z = property(lambda self: bool(self.ir.z_args))
    symmetric = property(lambda self: self.metadata["symmetric"])

    def n_sites(self, n_atoms):
        return n_atoms * (n_atoms - 1) // 2 if self.over == "pairs" else n_atoms

    def n_features(self, n_atoms):
        return self.n_sites(n_atoms) * self.n_channels

    def slots(self, n_atoms):
        """Atoms each feature touches (nonzero 3-blocks per Jacobian row)."""
        return 2 if self.over == "pairs" else n_atoms

    def atom_table(self, n_atoms):
        return _atom_table(self.over, n_atoms, self.n_channels)

    def _z(self, z, n_atoms):
        if z is None:
            if self.needs_z:
                raise ValueError(f"descriptor {self.name} uses atomic numbers ({', '.join(self.ir.z_args)}): pass z")
            return np.ones(n_atoms)
        return checks.atomic_numbers(z, n_atoms)

    def evaluate(self, R, z=None, validated=False):
        """(D (M, F), JAC (M, F, K, 3), single) for R (N, 3) or (M, N, 3).

        ``validated``: R is already a checks.geometries() result (the runtime checks each input once)."""
        R3, single = (R, False) if validated else checks.geometries(R)
        m, n, _ = R3.shape
        zf = self._z(z, n)
        D = np.empty((m, self.n_features(n)))
        JAC = np.empty((m, self.n_features(n), self.slots(n), 3))
        with numba_threads(threads_for(m)):
            self.module.descriptor_many(R3, zf, self.params, D, JAC)
        return D, JAC, single

    def values(self, R, z=None):
        D, _, single = self.evaluate(R, z)
        return D[0] if single else D

    def sparse_jacobian(self, R, z=None):
        """(values (..., F, K, 3), atoms (F, K)): row f has nonzeros at atoms[f]."""
        _, JAC, single = self.evaluate(R, z)
        return (JAC[0] if single else JAC), self.atom_table(np.asarray(R).shape[-2])

    def jacobian(self, R, z=None):
        """Dense (..., F, N, 3) Jacobian, for inspection and tests."""
        _, JAC, single = self.evaluate(R, z)
        m, F, K, _ = JAC.shape
        n = np.asarray(R).shape[-2]
        atoms = self.atom_table(n)
        dense = np.zeros((m, F, n, 3))
        rows = np.repeat(np.arange(F), K)
        for frame in range(m):
            np.add.at(dense[frame], (rows, atoms.ravel()), JAC[frame].reshape(F * K, 3))
        return dense[0] if single else dense

    def feature_permutations(self, perms, n_atoms):
        """(P, F) feature index maps: D(x[perm]) == D(x)[fperm]."""
        perms = checks.permutations(perms, n_atoms)
        nontrivial = (perms != np.arange(n_atoms)).any()
        if nontrivial and self.over == "pairs" and not self.symmetric:
            raise ValueError(f"descriptor {self.name} is not symmetric in its two atoms, so atom "
                             "permutations do not map to feature permutations; use it without symmetries")
        return _feature_permutations(self.over, n_atoms, self.n_channels, perms)

    def jax_function(self):
        """jax.numpy D(R, z=None) -> (F,) lowered from the same IR."""
        return jax_lowering.descriptor_function(self.ir, self.params)


@lru_cache(maxsize=64)
def _atom_table(over, n, channels):
    if over == "pairs":
        i, j = np.triu_indices(n, 1)
        sites = np.stack([i, j], axis=1)
    else:
        sites = np.array([[i] + [j for j in range(n) if j != i] for i in range(n)])
    table = np.repeat(sites, channels, axis=0).astype(np.int64)
    table.setflags(write=False)
    return table


def _feature_permutations(over, n, channels, perms):
    out = np.empty((len(perms), _atom_table(over, n, channels).shape[0]), dtype=np.int64)
    if over == "pairs":
        index = np.full((n, n), -1)
        i, j = np.triu_indices(n, 1)
        index[i, j] = index[j, i] = np.arange(len(i))
        for p, perm in enumerate(perms):
            site = index[perm[i], perm[j]]
            out[p] = (site[:, None] * channels + np.arange(channels)).ravel()
    else:
        for p, perm in enumerate(perms):
            out[p] = (perm[:, None] * channels + np.arange(channels)).ravel()
    return out


# --------------------------------------------------------------------------- kernel

class CompiledKernel:
    """Base kernel k(d, dp) = g(s, t) and its descriptor-space derivatives."""

    def __init__(self, dsl, kir, module, path, built, seconds):
        self.dsl, self.ir = dsl, kir
        self.module, self.module_path, self.built_now, self.build_seconds = module, path, built, seconds
        self.metadata = module.METADATA

    name = property(lambda self: self.dsl.name)
    hyper_names = property(lambda self: self.ir.hyper_names)

    @property
    def sigma_name(self):
        """The length scale σ the runtime sweeps: the hyperparameter named sigma, else the
        first one; None for a kernel without hyperparameters."""
        names = self.hyper_names
        return "sigma" if "sigma" in names else (names[0] if names else None)

    def hyper(self, /, **values):
        """Hyperparameters as the float64 array the generated code takes."""
        unknown = set(values) - set(self.hyper_names)
        if unknown:
            raise ValueError(f"kernel {self.name} has no hyperparameter(s) {sorted(unknown)}; "
                             f"it takes {', '.join(self.hyper_names)}")
        out = []
        for name in self.hyper_names:
            if name in values:
                v = values[name]
            elif name in self.ir.hyper_defaults:
                v = self.ir.hyper_defaults[name]
            else:
                raise ValueError(f"kernel {self.name} needs hyperparameter {name!r}")
            v = float(v)
            if not np.isfinite(v) or v <= 0:
                raise ValueError(f"kernel {self.name}: hyperparameter {name} must be a positive "
                                 f"finite number, got {v}")
            out.append(v)
        return np.array(out, dtype=np.float64)

    def _st(self, d, dp):
        d, dp = checks.vectors(d, "d"), checks.vectors(dp, "dp")
        if d.shape[-1] != dp.shape[-1]:
            raise ValueError(f"d and dp must have the same number of features, got {d.shape} and {dp.shape}")
        return d, dp, np.sum((d - dp) ** 2, axis=-1), np.sum(d * dp, axis=-1)

    def coefficients(self, s, t, /, **hyper):
        """(g_s, g_t, g_ss, g_st, g_tt) at scalar s, t."""
        return self.module.kernel_coefficients(float(s), float(t), self.hyper(**hyper))

    def _map(self, fn, s, t):
        s, t = np.broadcast_arrays(np.asarray(s, float), np.asarray(t, float))
        return np.array([fn(a, b) for a, b in zip(s.ravel(), t.ravel())]).reshape(s.shape + (-1,))

    def value(self, d, dp, /, **hyper):  # /: a hyperparameter may be named d
        h = self.hyper(**hyper)
        _, _, s, t = self._st(d, dp)
        return self._map(lambda a, b: (self.module.kernel_value(a, b, h),), s, t)[..., 0]

    def gradient(self, d, dp, /, **hyper):
        """dk/dd = 2 g_s (d - dp) + g_t dp."""
        h = self.hyper(**hyper)
        d, dp, s, t = self._st(d, dp)
        c = self._map(lambda a, b: self.module.kernel_coefficients(a, b, h), s, t)
        return 2 * c[..., 0:1] * (d - dp) + c[..., 1:2] * dp

    def hessian_vector(self, d, dp, v, /, **hyper):
        """(d2k / dd ddp^T) v, using the structure: identity plus rank-one terms."""
        h = self.hyper(**hyper)
        d, dp, s, t = self._st(d, dp)
        v = checks.vectors(v, "v")
        if v.shape[-1] != d.shape[-1]:
            raise ValueError(f"v: expected {d.shape[-1]} features (like d), got shape {v.shape}")
        g_s, g_t, g_ss, g_st, g_tt = np.moveaxis(
            self._map(lambda a, b: self.module.kernel_coefficients(a, b, h), s, t), -1, 0)
        delta = d - dp
        dv = np.sum(delta * v, axis=-1)
        pv = np.sum(d * v, axis=-1)
        return ((g_t - 2 * g_s)[..., None] * v + (-4 * g_ss * dv + 2 * g_st * pv)[..., None] * delta
                + (-2 * g_st * dv + g_tt * pv)[..., None] * dp)

    def jax_function(self):
        return jax_lowering.kernel_function(self.ir)


# --------------------------------------------------------------------------- model

class CompiledModel:
    """A descriptor and a kernel compiled together into fused force-field kernels."""

    def __init__(self, descriptor: CompiledDescriptor, kernel: CompiledKernel):
        self.descriptor, self.kernel = descriptor, kernel
        self.module = descriptor.module
        self.module_path = descriptor.module_path

    def feature_permutations(self, perms, n_atoms):
        return self.descriptor.feature_permutations(perms, n_atoms)

    def force_block(self, x, xp, perms=None, z=None, **hyper):
        """C(x, x') = sum_P grad_x grad_x'^T k(D(x), D(x'[perm])), shape (3N, 3N)."""
        h = self.kernel.hyper(**hyper)
        x, xp = _single(x, "x"), _single(xp, "xp")
        if x.shape != xp.shape:
            raise ValueError(f"x and xp must have the same atoms: got shapes {x.shape} and {xp.shape}")
        checks.geometries(x, "x")
        checks.geometries(xp, "xp")
        D, JAC, _ = self.descriptor.evaluate(np.stack([x, xp]), z)
        n = np.asarray(x).shape[0]
        fperms = self.feature_permutations(perms, n)
        out = np.empty((3 * n, 3 * n))
        work = np.empty(self.module.work_size(D.shape[1], 3 * n))
        self.module.force_block_parts(D[0], JAC[0], D[1], JAC[1], self.descriptor.atom_table(n),
                                      fperms, h, out, work)
        return out

    def jax_force_block(self, x, xp, perms=None, z=None, **hyper):
        """The same block by JAX AD of the JAX lowering (the test reference)."""
        h = dict(zip(self.kernel.hyper_names, self.kernel.hyper(**hyper)))
        n = np.asarray(x).shape[0]
        perms = checks.permutations(perms, n)
        block = jax_lowering.force_block_function(self.descriptor.jax_function(), self.kernel.jax_function())
        return block(np.asarray(x, float), np.asarray(xp, float), [p.tolist() for p in perms], z, h)

    # Building blocks for the runtime -----------------------------------------
    def assemble_rows(self, D, JAC, fperms, hyper, K, rows, n_atoms, mirror=True):
        """Write training-matrix block rows ``rows`` (upper triangle, and mirrored) into K."""
        atoms = self.descriptor.atom_table(n_atoms)
        self.module.assemble_rows(D, JAC, atoms, fperms, hyper, K, np.asarray(rows, np.int64), n_atoms,
                                  mirror)

    def assemble_energy_rows(self, D, JAC, fperms, hyper, K, n_atoms):
        """Energy rows and columns of a joint energy+force matrix (upper triangle) into K."""
        self.module.assemble_energy_rows(D, JAC, self.descriptor.atom_table(n_atoms), fperms, hyper, K,
                                         n_atoms)

    # below this many queries the tiled loops beat the matrix products (ethanol, M=1000, P=6,
    # 2 cores: 13,800 vs 10,300 geometries/s at 10 queries, 14,000 vs 19,900 at 30)
    SMALL_BATCH = 20

    def predict_parts(self, DQ, JACQ, DT, BT, hyper, n_atoms, side=None):
        """Energies (Q,) and forces (Q, N, 3) from query descriptors and Jacobians against the
        permuted training descriptors DT and coefficients BT (MP, F).  ``side``: the
        prediction_side(DT, BT) of a trained model, computed once instead of per call.
        Small work runs on this thread alone (threads_for), with the same sums, bit for bit."""
        import numba
        parts = numba.get_num_threads()  # the tiled split, whatever the threads that run it
        with numba_threads(threads_for(DQ.shape[0])):
            if DQ.shape[0] < self.SMALL_BATCH:
                return self.predict_parts_tiled(DQ, JACQ, DT, BT, hyper, n_atoms, side=side, parts=parts)
            return self.predict_parts_batched(DQ, JACQ, DT, BT, hyper, n_atoms, side=side)

    def prediction_side(self, DT, BT):
        """The training-side arrays of prediction (they depend only on the trained model)."""
        return PredictionSide(DT, BT)

    def predict_parts_batched(self, DQ, JACQ, DT, BT, hyper, n_atoms, side=None, chunk=64):
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
        side = self._checked_side(side, DT, BT)
        Q = DQ.shape[0]
        pool, threads = _chunk_pool()
        chunk = max(1, min(chunk, -(-Q // threads)))
        acc = np.empty((Q, DQ.shape[1]))
        E = np.empty(Q)

        def run(start):
            rows = slice(start, start + chunk)
            acc[rows], E[rows] = self._predict_chunk(DQ[rows], side, hyper)

        with single_threaded_blas():
            for task in [pool.submit(run, start) for start in range(0, Q, chunk)]:
                task.result()
        F = np.empty((Q, n_atoms, 3))
        self.module.forces_from_descriptor_gradients(np.ascontiguousarray(JACQ), self.descriptor.atom_table(n_atoms),
                                                     acc, F)
        return E, F

    def _checked_side(self, side, DT, BT):
        side = side if side is not None else self.prediction_side(DT, BT)
        if side.n_rows != DT.shape[0]:
            raise ValueError(f"prediction side was prepared for {side.n_rows} training rows, not {DT.shape[0]}")
        return side

    def _predict_chunk(self, DQ, side, hyper):
        """(descriptor-space force sums (q, F), energies (q,)) of queries DQ against one side."""
        dq, NQ, QC = side.queries(DQ)
        TD = np.matmul(dq, side.W.T, out=_scratch("TD", (len(dq), 2 * side.n_rows)))
        X = _scratch("X", TD.shape)
        SD, SP, E = np.empty(len(dq)), np.empty(len(dq)), np.empty(len(dq))
        self.module.predict_coefficients(dq, side.DT, NQ, side.NT, TD, QC, side.TC, side.TB, side.CB, hyper,
                                         X, SD, SP, E)
        return X @ side.W + SD[:, None] * dq + SP[:, None] * side.centre, E

    TILE_QUERIES = 16  # queries a task of predict_tiles takes through its tiles together

    def predict_parts_tiled(self, DQ, JACQ, DT, BT, hyper, n_atoms, side=None, parts=None):
        """predict_parts by the generated tiled loops (no BLAS): the training rows are split
        into ``parts`` (default: one per Numba thread) summed separately, and every thread takes
        all queries through its parts' tiles.  The sums depend on ``parts`` only, not on the
        threads that run them, so one thread given the parts of two gives the same bits."""
        import numba
        side = self._checked_side(side, DT, BT)
        dq, NQ, QC = side.queries(DQ)
        parts = parts or numba.get_num_threads()
        bounds = np.linspace(0, side.n_rows, parts + 1).astype(np.int64)
        ACC = np.empty((parts, len(dq), dq.shape[1]))
        EP = np.empty((parts, len(dq)))
        self.module.predict_tiles(dq, NQ, QC, side.centre, side.DT, side.WT, side.NT, side.TC, side.TB, side.CB,
                                  hyper, bounds, self.TILE_QUERIES, ACC, EP)
        F = np.empty((len(dq), n_atoms, 3))
        self.module.forces_from_descriptor_gradients(np.ascontiguousarray(JACQ), self.descriptor.atom_table(n_atoms),
                                                     ACC.sum(axis=0), F)
        return EP.sum(axis=0), F

    def predict_parts_direct(self, DQ, JACQ, DT, BT, hyper, n_atoms):
        """predict_parts by one plain fused loop per query (no centring, no BLAS, no tiles):
        the independent check of the fast paths in the tests."""
        E = np.empty(DQ.shape[0])
        F = np.empty((DQ.shape[0], n_atoms, 3))
        self.module.predict(DQ, JACQ, self.descriptor.atom_table(n_atoms), DT, BT, hyper, E, F)
        return E, F

    def add_energy_weight_terms(self, DQ, JACQ, DT, WT, hyper, E, F):
        """E, F += the energy-coefficient terms of a joint energy+force model (in place)."""
        with numba_threads(threads_for(DQ.shape[0])):
            self.module.predict_energy_weights(DQ, JACQ, self.descriptor.atom_table(F.shape[1]), DT, WT,
                                               hyper, E, F)

    def contract(self, JAC, V):
        n_atoms = V.shape[1]
        B = np.empty((JAC.shape[0], JAC.shape[1]))
        self.module.contract(JAC, self.descriptor.atom_table(n_atoms), np.ascontiguousarray(V, float), B)
        return B


class PredictionSide:
    """Training-side arrays of prediction, centred on the training mean ``centre``:
    W = [DT; BT] (2 MP, F), WT = W^T, and the per-row scalars NT = |dt|^2, TC = dt.centre,
    TB = dt.beta, CB = centre.beta."""

    def __init__(self, DT, BT):
        self.n_rows = DT.shape[0]
        self.centre = DT.mean(axis=0)
        self.cc = float(self.centre @ self.centre)
        self.W = np.concatenate([DT - self.centre, BT])
        self.WT = np.ascontiguousarray(self.W.T)
        self.DT = self.W[:self.n_rows]
        self.NT = np.einsum("mf,mf->m", self.DT, self.DT)
        self.TC = self.DT @ self.centre
        self.TB = np.einsum("mf,mf->m", self.DT, BT)
        self.CB = BT @ self.centre

    def queries(self, DQ):
        """The query side, as the generated kernels take it: the centred descriptors dq, their
        squared norms NQ and QC = dq.centre + centre.centre (so that dq.dt + QC + TC = d.dt)."""
        dq = DQ - self.centre
        return dq, np.einsum("qf,qf->q", dq, dq), dq @ self.centre + self.cc


_THREAD_SCRATCH = threading.local()


def _scratch(name, shape):
    """A scratch array of this thread, reused from call to call: the (chunk, 2 MP) matrices of
    batched prediction are megabytes, and fresh memory costs page faults every time."""
    arrays = getattr(_THREAD_SCRATCH, "arrays", None)
    if arrays is None:
        arrays = _THREAD_SCRATCH.arrays = {}
    size = int(np.prod(shape))
    if name not in arrays or arrays[name].size < size:
        arrays[name] = np.empty(size)
    return arrays[name][:size].reshape(shape)


# Work on at most this many geometries runs on the calling thread alone.  A parallel region
# ends at a barrier that waits for every thread; when another process holds a core, the
# thread on that core waits for its time slice, and one ethanol geometry (M=500) took 15 ms
# with Numba's OpenMP threads instead of 0.14 ms on one thread.  A second thread at most
# halves small work; a thread that waits for its core multiplies it (benchmarks/md_bench.py).
SERIAL_GEOMETRIES = 10


def threads_for(n_geometries, available=None):
    """Numba threads for work on n_geometries: 1 for small work, else all ``available``
    (default: the calling thread's current Numba thread count)."""
    if n_geometries <= SERIAL_GEOMETRIES:
        return 1
    if available is None:
        import numba
        available = numba.get_num_threads()
    return available


@contextmanager
def numba_threads(count):
    """Context: Numba's parallel loops of this thread run on ``count`` threads (the setting is
    per calling thread in Numba, so other threads are not affected), restored afterwards."""
    import numba
    before = numba.get_num_threads()
    if count == before:
        yield
        return
    numba.set_num_threads(count)
    try:
        yield
    finally:
        numba.set_num_threads(before)


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


def _single(x, what):
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"{what}: expected one geometry of shape (n_atoms, 3), got {arr.shape}")
    return arr


# --------------------------------------------------------------------------- public API

def compile_descriptor(descriptor) -> CompiledDescriptor:
    dsl = resolve(descriptor, "descriptor")
    dir_ = parse_descriptor(dsl)
    table = _params_table(dsl, dir_)
    built = _build(f"descriptor_{dsl.name}", _source_key(dsl, table), dir_=dir_)
    return CompiledDescriptor(dsl, dir_, table, *built)


def compile_kernel(kernel) -> CompiledKernel:
    dsl = resolve(kernel, "kernel")
    kir = parse_kernel(dsl)
    return CompiledKernel(dsl, kir, *_build(f"kernel_{dsl.name}", _source_key(dsl), kir=kir))


def compile_model(descriptor, kernel) -> CompiledModel:
    ddsl, kdsl = resolve(descriptor, "descriptor"), resolve(kernel, "kernel")
    dir_, kir = parse_descriptor(ddsl), parse_kernel(kdsl)
    table = _params_table(ddsl, dir_)
    built = _build(f"model_{ddsl.name}_{kdsl.name}", (_source_key(ddsl, table), _source_key(kdsl)),
                   dir_=dir_, kir=kir)
    return CompiledModel(CompiledDescriptor(ddsl, dir_, table, *built), CompiledKernel(kdsl, kir, *built))
