"""The faces GDML trains and predicts through: one protocol, a CPU and a CUDA implementation.

GDML holds one backend (``make_backend``) and never asks which device it is on.  Arrays in
and out are host arrays; geometries arrive validated (checks.geometries, once per call).
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from . import prediction
from .assembly import assemble
from .solver import cholesky_solve_inplace
from .trained import PermutedTraining


@runtime_checkable
class Backend(Protocol):
    device: str

    def evaluate(self, R, z):
        """(D (M, F), JAC (M, F, K, 3)) for validated geometries R (M, N, 3)."""

    def assemble(self, D, JAC, fperms, hyper, n_atoms, K, progress=True, energy_rows=False):
        """The training matrix (block upper triangle) into K, or onto the device for solve()."""

    def solve(self, K, y, lam, progress=True):
        """alpha = (K + lam I)^-1 y for the matrix assemble() just wrote; K is destroyed."""

    def release(self):
        """Free what training kept (a device matrix)."""

    def contract(self, JAC, V):
        """B[m] = J(x_m) V[m] (M, F) from V (M, N, 3)."""

    def prepare(self, training: PermutedTraining):
        """Make ``training`` the one predict() uses (device copies, prediction-side arrays)."""

    def predict(self, R, z, training: PermutedTraining):
        """Raw (E (Q,), F (Q, N, 3)): unscaled, no energy constant, for validated R."""

    def matvec(self, D, JAC, fperms, hyper, V):
        """The matrix-free product C V of the training matrix with V (M, N, 3)."""


class CpuBackend:
    """Numba kernels (compiler.build.compiled.CompiledModel) scheduled by runtime/assembly.py,
    runtime/solver.py and runtime/prediction.py."""

    device = "cpu"

    def __init__(self, model):
        self.model = model
        self._prepared = (None, None)  # (training, its PredictionSide)

    def evaluate(self, R, z):
        D, JAC, _ = self.model.descriptor.evaluate(R, z, validated=True)
        return D, JAC

    def assemble(self, D, JAC, fperms, hyper, n_atoms, K, progress=True, energy_rows=False):
        assemble(self.model, D, JAC, fperms, hyper, n_atoms, out=K, progress=progress, energy_rows=energy_rows)

    def solve(self, K, y, lam, progress=True):
        return cholesky_solve_inplace(K, y, lam, progress=progress)

    def release(self):
        pass  # the host matrix belongs to the caller

    def contract(self, JAC, V):
        return self.model.contract(JAC, V)

    def prepare(self, training):
        if self._prepared[0] is not training:
            self._prepared = (training, prediction.PredictionSide(training.DT, training.BT))
        return self._prepared[1]

    def predict(self, R, z, training):
        side = self.prepare(training)
        D, JAC = self.evaluate(R, z)
        n_atoms = R.shape[1]
        e, f = prediction.predict_parts(self.model, D, JAC, training.DT, training.BT, training.hyper, n_atoms,
                                        side=side)
        if training.WT is not None:
            prediction.add_energy_weight_terms(self.model, D, JAC, training.DT, training.WT, training.hyper, e, f)
        return e, f

    def matvec(self, D, JAC, fperms, hyper, V):
        """C V as the CUDA face computes it: contract V, permute, then the force half of
        prediction with the training points as queries."""
        V = np.asarray(V, dtype=np.float64)
        m, f = D.shape
        n_atoms = V.size // (3 * m) if m else 0
        if V.size != 3 * n_atoms * m or n_atoms < 2:
            raise ValueError(f"V: expected {m} x n_atoms x 3 entries, got shape {V.shape}")
        B = self.contract(JAC, V.reshape(m, n_atoms, 3))
        DT = np.ascontiguousarray(D[:, fperms].reshape(-1, f))
        BT = np.ascontiguousarray(B[:, fperms].reshape(-1, f))
        _, F = prediction.predict_parts(self.model, D, JAC, DT, BT, hyper, n_atoms)
        return F.reshape(V.shape)


def make_backend(device, model, descriptor, kernel):
    """The backend for a resolved device ('cpu' or 'cuda', see cuda_backend.resolve_device)."""
    if device == "cuda":
        from .cuda_backend import CudaBackend
        return CudaBackend(descriptor, kernel, CpuBackend(model))
    return CpuBackend(model)
