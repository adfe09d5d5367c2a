"""The faces GDML trains and predicts through: one protocol, a CPU and a CUDA implementation.

GDML holds one backend (``make_backend``) and never asks which device it is on.  Arrays in
and out are host arrays; geometries arrive validated (checks.geometries, once per call).
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable


from . import prediction
from .assembly import assemble
from .hessian_training import add_observation_terms
from .matvec import TrainingProduct
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

    def training_product(self, D, JAC, fperms, hyper):
        """An object whose matvec(V) and matvec_energy(V, w) are this backend's products for
        (D, JAC, fperms, hyper), with what does not depend on V prepared once."""

    def matvec(self, D, JAC, fperms, hyper, V):
        """The matrix-free product C V of the training matrix with V (M, N, 3)."""

    def hessian(self, R, z, training: PermutedTraining):
        """Raw d2E/dx2 (Q, 3N, 3N) (unscaled) for validated R."""

    def matvec_energy(self, D, JAC, fperms, hyper, V, w):
        """The product of a joint energy+force training matrix with [V (M, N, 3); w (M,)]:
        (force part (M, N, 3), energy part (M,))."""


class CpuBackend:
    """Numba kernels (compiler.build.compiled.CompiledModel) scheduled by runtime/assembly.py,
    runtime/solver.py and runtime/prediction.py."""

    device = "cpu"

    def __init__(self, model):
        self.model = model
        self._prepared = (None, None)  # (training, its PredictionSide)
        self._hessian_prepared = (None, None)  # (training, its HessianSide), made at the first Hessian
        self._product = None  # the last TrainingProduct matvec() used

    def evaluate(self, R, z):
        D, JAC, _ = self.model.descriptor.evaluate(R, z, validated=True)
        return D, JAC

    def assemble(self, D, JAC, fperms, hyper, n_atoms, K, progress=True, energy_rows=False):
        assemble(self.model, D, JAC, fperms, hyper, n_atoms, out=K, progress=progress, energy_rows=energy_rows)

    def solve(self, K, y, lam, progress=True):
        return cholesky_solve_inplace(K, y, lam, progress=progress)

    def release(self):
        self._product = None  # the host matrix belongs to the caller; the product's plan is ours

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
        if training.observations is not None:
            add_observation_terms(self.model, D, JAC, training.observations, training.hyper, e, f)
        return e, f

    def hessian(self, R, z, training):
        if self._hessian_prepared[0] is not training:
            self._hessian_prepared = (training, prediction.HessianSide(training.DT, training.BT, training.WT))
        D, JAC = self.evaluate(R, z)
        return prediction.predict_hessians_scheduled(self.model, R, z, D, JAC, training,
                                                     side=self._hessian_prepared[1])

    def training_product(self, D, JAC, fperms, hyper):
        """The TrainingProduct of (D, JAC, fperms, hyper): CG builds it once per solve."""
        return TrainingProduct(self.model, D, JAC, fperms, hyper)

    def matvec(self, D, JAC, fperms, hyper, V):
        """C V as the CUDA face computes it: contract V, permute, then the force half of
        prediction with the training points as queries (runtime/matvec.py)."""
        return self._product_for(D, JAC, fperms, hyper).matvec(V)

    def matvec_energy(self, D, JAC, fperms, hyper, V, w):
        """[C V + K_fe w, K_ef V + K_ee w] from what prediction computes with the training points
        as queries: the energy predicted with coefficients V is K_ef V, and the energy-weight terms
        with weights w are K_fe w (forces) and K_ee w (energies)."""
        return self._product_for(D, JAC, fperms, hyper).matvec_energy(V, w)

    def _product_for(self, D, JAC, fperms, hyper):
        """The last TrainingProduct if it was built from these values, else a new one."""
        if self._product is None or not self._product.prepared_for(D, JAC, fperms, hyper):
            self._product = self.training_product(D, JAC, fperms, hyper)
        return self._product


class UnpreparedProduct:
    """The training_product of a backend without one: each product through backend.matvec."""

    def __init__(self, backend, D, JAC, fperms, hyper):
        self.backend, self.args = backend, (D, JAC, fperms, hyper)

    def matvec(self, V):
        return self.backend.matvec(*self.args, V)

    def matvec_energy(self, V, w):
        return self.backend.matvec_energy(*self.args, V, w)


def make_backend(device, model, descriptor, kernel, local=False):
    """The backend for a resolved device ('cpu' or 'cuda', see cuda_backend.resolve_device);
    ``local``: of a local model (runtime/local.py, CPU only)."""
    if local:
        from .local import LocalCpuBackend
        return LocalCpuBackend(model)
    if device == "cuda":
        from .cuda_backend import CudaBackend
        return CudaBackend(descriptor, kernel, CpuBackend(model))
    return CpuBackend(model)
