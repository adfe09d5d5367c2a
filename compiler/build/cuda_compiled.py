"""The CUDA face of a compiled model: the generated CUDA module plus its launches.

Mirrors :class:`compiler.build.compiled.CompiledModel` (descriptor evaluation,
training-matrix assembly, prediction from precontracted coefficients,
contraction) and adds the matrix-free product v -> C v.  Inputs are checked
on the host by the same functions as on the CPU path, so bad input fails with
the CPU path's message before anything is launched.

``numba.cuda`` is imported only when a CUDA model is compiled: whether it is
the simulator is decided at that import (NUMBA_ENABLE_CUDASIM=1).
"""
from __future__ import annotations

import numpy as np

from compiler import checks
from compiler.build import pipeline
from compiler.build.compiled import CompiledModel, compile_model
from compiler.targets import numba_cuda

THREADS_2D = (8, 16)      # threads per block of the 2D grids, (x, y): x is the fastest-varying index
SIMULATOR_REDUCE_THREADS = 2  # the simulator runs a Python thread per CUDA thread: keep blocks small
ASSEMBLY_PAIRS = 200_000  # block pairs per assembly launch (bounds one launch's run time)


def _grid(shape, threads=THREADS_2D):
    return tuple(-(-n // t) for n, t in zip(shape, threads)), threads


def _simulator_grid(shape, threads=THREADS_2D):
    """The simulator starts a Python thread per CUDA thread, idle or not: small blocks."""
    return _grid(shape, tuple(min(t, 2) for t in threads))


def incidence_table(atoms: np.ndarray, n_atoms: int) -> np.ndarray:
    """(N, L, 2): the (feature, slot) pairs of the atom table touching each atom, padded
    with -1, so that a thread owning an atom finds its features without a search."""
    lists = [[] for _ in range(n_atoms)]
    for f, row in enumerate(atoms):
        for k, a in enumerate(row):
            lists[a].append((f, k))
    width = max(len(x) for x in lists)
    table = np.full((n_atoms, width, 2), -1, dtype=np.int64)
    for a, entries in enumerate(lists):
        if entries:
            table[a, :len(entries)] = entries
    return table


def _on_device(x) -> bool:
    """A Numba device array (or the simulator's stand-in, which lacks the interface)."""
    return hasattr(x, "__cuda_array_interface__") or hasattr(x, "copy_to_host")


def block_pairs(m: int):
    """(pair_i, pair_j) of every block (i, j >= i) of an m x m block matrix, row by row."""
    i, j = np.triu_indices(m)
    return i.astype(np.int64), j.astype(np.int64)


class CudaCompiledModel:
    """A descriptor and a kernel compiled together into CUDA kernels."""

    def __init__(self, cpu: CompiledModel, module, path, built, seconds):
        from numba import config, cuda  # imported here: the simulator switch is read at this import

        # small prediction batches launch small grids on purpose: no under-utilisation warnings
        config.CUDA_LOW_OCCUPANCY_WARNINGS = 0
        self.cuda = cuda
        self.cpu = cpu
        self.descriptor, self.kernel = cpu.descriptor, cpu.kernel
        self.module, self.module_path = module, path
        self.built_now, self.build_seconds = built, seconds
        self._tables = {}
        self._constants = {}  # small host arrays (z, params, hyper, fperms) -> device copies
        self._scratch = {}    # name -> device intermediate (see _workspace)

    @property
    def simulated(self) -> bool:
        from numba import config
        return bool(config.ENABLE_CUDASIM)

    def feature_permutations(self, perms, n_atoms):
        return self.cpu.feature_permutations(perms, n_atoms)

    def tables(self, n_atoms):
        """Device copies of the atom and incidence tables for n_atoms."""
        if n_atoms not in self._tables:
            atoms = np.ascontiguousarray(self.descriptor.atom_table(n_atoms))
            self._tables[n_atoms] = (self.cuda.to_device(atoms),
                                     self.cuda.to_device(incidence_table(atoms, n_atoms)))
        return self._tables[n_atoms]

    def _grid(self, shape, threads=THREADS_2D):
        """(blocks, threads) covering ``shape`` (the kernels skip indices past the end)."""
        return (_simulator_grid if self.simulated else _grid)(shape, threads)

    def _device(self, x, dtype=np.float64):
        """A device array as is; a host array checked for dtype and copied over."""
        if _on_device(x):
            return x
        return self.cuda.to_device(np.ascontiguousarray(x, dtype=dtype))

    def _workspace(self, name, shape):
        """A device scratch array kept between calls of the same shape (intermediates only,
        never returned: a device allocation costs more than predicting a few geometries)."""
        buffer = self._scratch.get(name)
        if buffer is None or tuple(buffer.shape) != tuple(shape):
            self._scratch[name] = None  # free the old one first
            buffer = self._scratch[name] = self.cuda.device_array(shape)
        return buffer

    def _constant(self, x, dtype=np.float64):
        """Device copy of a small host array, reused while its contents are unchanged (saves a
        host-to-device copy per call when predicting a few geometries)."""
        x = np.ascontiguousarray(x, dtype=dtype)
        key = (x.dtype.str, x.shape, x.tobytes())
        if key not in self._constants:
            if len(self._constants) > 64:
                self._constants.clear()
            self._constants[key] = self.cuda.to_device(x)
        return self._constants[key]

    # ------------------------------------------------------------------ descriptor
    def descriptor_device(self, R, z=None, validated=False):
        """(D (M, F), JAC (M, F, K, 3)) on the device for R (N, 3) or (M, N, 3).

        ``validated``: R is already a checks.geometries() result (the runtime checks each input once)."""
        R3 = R if validated else checks.geometries(R)[0]
        m, n, _ = R3.shape
        if self.descriptor.is_combination:  # a combination: its parts' kernels are CPU-only for now
            D, JAC, _ = self.descriptor.evaluate(R3, z, validated=True)
            return self.cuda.to_device(D), self.cuda.to_device(JAC)
        zf = self.descriptor._z(z, n)
        atoms, _ = self.tables(n)
        F, K = self.descriptor.n_features(n), self.descriptor.slots(n)
        D = self.cuda.device_array((m, F))
        JAC = self.cuda.device_array((m, F, K, 3))
        blocks, threads = self._grid((m, F))
        self.module.descriptor_many[blocks, threads](
            self._device(R3), self._constant(zf), self._constant(self.descriptor.params), atoms, D, JAC)
        return D, JAC

    def evaluate(self, R, z=None):
        """(D, JAC, single) on the host, as CompiledDescriptor.evaluate."""
        R3, single = checks.geometries(R)
        D, JAC = self.descriptor_device(R3, z, validated=True)
        return D.copy_to_host(), JAC.copy_to_host(), single

    # ------------------------------------------------------------------ assembly
    def assemble(self, D, JAC, fperms, hyper, n_atoms, out=None, progress=None):
        """The (3NM, 3NM) training matrix on the device, blocks (i, j >= i) written (the
        CPU layout: the CPU solver and cuSOLVER read that triangle).  ``progress(k)`` is
        called after each launch with the number of block pairs done."""
        D, JAC = self._device(D), self._device(JAC)
        fperms_host = np.ascontiguousarray(fperms, dtype=np.int64)
        fperms = self._constant(fperms_host, np.int64)
        hyper = self._constant(hyper)
        m = D.shape[0]
        n3m = 3 * n_atoms * m
        self._check_training(D, JAC, fperms_host, n_atoms)
        if out is None:
            out = self.cuda.device_array((n3m, n3m))
        elif tuple(out.shape) != (n3m, n3m):
            raise ValueError(f"out: expected shape ({n3m}, {n3m}), got {tuple(out.shape)}")
        atoms, incidence = self.tables(n_atoms)
        inverse = np.empty_like(fperms_host)
        for p, perm in enumerate(fperms_host):
            inverse[p, perm] = np.arange(perm.shape[0])
        inverse = self._constant(inverse, np.int64)
        pair_i, pair_j = block_pairs(m)
        n_perms = fperms.shape[0]
        coef = self.cuda.device_array((min(ASSEMBLY_PAIRS, len(pair_i)), n_perms, len(self.module.KERNEL_PARTIALS)))
        for start in range(0, len(pair_i), ASSEMBLY_PAIRS):
            pi = self.cuda.to_device(pair_i[start:start + ASSEMBLY_PAIRS])
            pj = self.cuda.to_device(pair_j[start:start + ASSEMBLY_PAIRS])
            blocks, threads = self._grid((pi.shape[0], n_perms), (32, 4))
            self.module.block_coefficients[blocks, threads](D, fperms, hyper, pi, pj, coef)
            blocks, threads = self._grid((n_atoms * n_atoms, pi.shape[0]), (32, 4))
            self.module.assemble_blocks[blocks, threads](D, JAC, atoms, incidence, fperms, inverse, coef,
                                                         pi, pj, out)
            if progress is not None:
                self.cuda.synchronize()
                progress(pi.shape[0])
        return out

    def _check_training(self, D, JAC, fperms, n_atoms):
        """Shapes that would make a kernel read out of bounds, refused on the host."""
        f, k = self.descriptor.n_features(n_atoms), self.descriptor.slots(n_atoms)
        if tuple(D.shape[1:]) != (f,) or tuple(JAC.shape) != (D.shape[0], f, k, 3):
            raise ValueError(f"D, JAC: expected shapes (M, {f}) and (M, {f}, {k}, 3) for {n_atoms} atoms, "
                             f"got {tuple(D.shape)} and {tuple(JAC.shape)}")
        if fperms.ndim != 2 or fperms.shape[1] != f or fperms.min() < 0 or fperms.max() >= f:
            raise ValueError(f"fperms: expected feature permutations of shape (P, {f}), got {fperms.shape}")

    # ------------------------------------------------------------------ prediction
    def permuted(self, X, fperms):
        """(M * P, F) device array with rows X[m, fperms[p]] (training descriptors or coefficients)."""
        X = self._device(X)
        fperms = self._constant(fperms, np.int64)
        out = self.cuda.device_array((X.shape[0] * fperms.shape[0], X.shape[1]))
        blocks, threads = self._grid((X.shape[0], fperms.shape[0]))
        self.module.permute_features[blocks, threads](X, fperms, out)
        return out

    def predict_device(self, DQ, JACQ, DT, BT, hyper, n_atoms, energies=True):
        """(E (Q,) or None, F (Q, N, 3)) as device arrays, from query descriptors and the
        permuted training descriptors DT and coefficients BT (M * P, F)."""
        DQ, JACQ, DT, BT = (self._device(x) for x in (DQ, JACQ, DT, BT))
        hyper = hyper if _on_device(hyper) else self._constant(hyper)
        q, f = DQ.shape
        k = self.descriptor.slots(n_atoms)
        if f != self.descriptor.n_features(n_atoms) or tuple(JACQ.shape) != (q, f, k, 3):
            raise ValueError(f"DQ, JACQ: expected shapes (Q, {self.descriptor.n_features(n_atoms)}) and "
                             f"(Q, F, {k}, 3) for {n_atoms} atoms, got {tuple(DQ.shape)} and {tuple(JACQ.shape)}")
        if len(hyper) != len(self.kernel.hyper_names):
            raise ValueError(f"hyper: expected {len(self.kernel.hyper_names)} values "
                             f"({', '.join(self.kernel.hyper_names)}), got {len(hyper)}")
        if DT.shape[1] != f or BT.shape != DT.shape:
            raise ValueError(f"DT, BT: expected shapes (n, {f}), got {DT.shape} and {BT.shape}")
        _, incidence = self.tables(n_atoms)
        coef = self._workspace("coef", (q, DT.shape[0], 4))
        acc = self._workspace("acc", (q, f))
        forces = self.cuda.device_array((q, n_atoms, 3))
        blocks, threads = self._grid((DT.shape[0], q), (32, 4))
        self.module.pair_coefficients[blocks, threads](DQ, DT, BT, hyper, coef)
        # the tree sums keep one float64 per thread in dynamic shared memory (the launch's last
        # argument; 0 is the default stream): one buffer per block on the device and in the
        # simulator, whose static shared arrays are allocated without a lock, so two simulated
        # threads could get different ones (a rare garbage energy in tests/test_cuda_sim.py)
        width = SIMULATOR_REDUCE_THREADS if self.simulated else self.module.REDUCE_THREADS
        shared = 8 * width  # bytes
        self.module.sum_features[(q, f), width, 0, shared](DQ, DT, BT, coef, acc)
        blocks, threads = self._grid((q, n_atoms))
        self.module.forces_from_features[blocks, threads](JACQ, incidence, acc, forces)
        energy = None
        if energies:
            energy = self.cuda.device_array(q)
            self.module.sum_energies[q, width, 0, shared](coef, energy)
        return energy, forces

    def predict_parts(self, DQ, JACQ, DT, BT, hyper, n_atoms):
        """Host (E, F), as CompiledModel.predict_parts."""
        E, F = self.predict_device(DQ, JACQ, DT, BT, hyper, n_atoms)
        return E.copy_to_host(), F.copy_to_host()

    def contract(self, JAC, V):
        """B[m] = J(x_m) V[m] (M, F) on the device, from V (M, N, 3)."""
        JAC = self._device(JAC)
        V = V if _on_device(V) else np.asarray(V, dtype=np.float64)
        m, n = V.shape[0], V.shape[1]
        if V.shape != (JAC.shape[0], n, 3):
            raise ValueError(f"V: expected shape ({JAC.shape[0]}, n_atoms, 3), got {V.shape}")
        atoms, _ = self.tables(n)
        B = self.cuda.device_array((m, JAC.shape[1]))
        blocks, threads = self._grid((m, JAC.shape[1]))
        self.module.contract[blocks, threads](JAC, atoms, self._device(V), B)
        return B

    def matvec(self, D, JAC, fperms, hyper, V):
        """The matrix-free product C V (M, N, 3) of the training matrix with V (M, N, 3) or
        (3NM,), on the host: contract V to descriptor space, permute, then the force half
        of the prediction kernels with the training points as queries."""
        V = np.asarray(V, dtype=np.float64)
        D, JAC = self._device(D), self._device(JAC)
        m, f = D.shape
        n_atoms = V.size // (3 * m) if m else 0
        if V.size != 3 * n_atoms * m or n_atoms < 2:
            raise ValueError(f"V: expected {m} x n_atoms x 3 entries, got shape {V.shape}")
        self._check_training(D, JAC, np.asarray(fperms), n_atoms)
        V3 = V.reshape(m, n_atoms, 3)
        B = self.contract(JAC, V3)
        _, forces = self.predict_device(D, JAC, self.permuted(D, fperms), self.permuted(B, fperms),
                                        hyper, n_atoms, energies=False)
        return forces.copy_to_host().reshape(V.shape)


def compile_cuda_model(descriptor, kernel) -> CudaCompiledModel:
    """The CUDA kernels of (descriptor, kernel), generated into generated/ beside the CPU module
    (the pipeline parsed and analysed both functions for the CPU model already)."""
    cpu = compile_model(descriptor, kernel)
    first = cpu.descriptor.parts[0].dsl if cpu.descriptor.is_combination else descriptor
    (_, dparsed), (_, kparsed) = pipeline.front(first, "descriptor"), pipeline.front(kernel, "kernel")
    return CudaCompiledModel(cpu, *pipeline.build(numba_cuda.TARGET, descriptor=dparsed, kernel=kparsed))
