"""The CUDA path of GDML: device choice, training-matrix solve and prediction on a GPU.

``resolve_device("cuda")`` returns "cuda" when the CUDA kernels can run (a GPU
with numba-cuda, or Numba's simulator with NUMBA_ENABLE_CUDASIM=1), else it
prints one line saying why and returns "cpu": asking for a GPU on a machine
without one still trains, on the CPU.

The training matrix is assembled on the device.  It is factorised there with
cuSOLVER (through CuPy) when CuPy is importable; otherwise it is copied to the
host, one panel of rows at a time into packed storage, and solved by runtime/solver.py.
Both read the same triangle the CPU assembly writes (blocks i <= j of the C-ordered matrix, i.e. the lower
triangle of its column-major view).
"""
from __future__ import annotations

import importlib.util
import sys

import numpy as np

from .backends import UnpreparedProduct
from .packed import PackedMatrix, panel_starts
from .progress import Progress, step
from .solver import NotPositiveDefiniteError, cholesky_solve_inplace

DEVICES = ("cpu", "cuda")


def _numba_cuda_installed() -> bool:
    return importlib.util.find_spec("numba_cuda") is not None


def cuda_unavailable_reason() -> str | None:
    """None when the CUDA kernels can run here, else why not (one phrase)."""
    if not _numba_cuda_installed():
        return "numba-cuda is not installed (pip install 'gdmlc[cuda]')"
    try:
        from numba import config, cuda
    except Exception as exc:  # a broken CUDA installation must not stop CPU training
        return f"numba.cuda cannot be imported ({type(exc).__name__}: {exc})"
    if config.ENABLE_CUDASIM:
        return None
    try:
        available = cuda.is_available()
    except Exception:
        available = False
    if not available:
        return ("no CUDA GPU is available (NUMBA_ENABLE_CUDASIM=1 runs the CUDA kernels in "
                "Numba's simulator)")
    return None


def resolve_device(device: str, energy_constraints=False, file=None, local=False, hessians=False) -> str:
    """'cpu' or 'cuda'; a 'cuda' request that cannot be met says so and gives 'cpu'."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cpu":
        return "cpu"
    reason = cuda_unavailable_reason()
    if reason is None and energy_constraints:
        reason = "energy constraints are not implemented in the CUDA kernels yet"
    if reason is None and local:
        reason = "local models are not implemented in the CUDA kernels yet"
    if reason is None and hessians:
        reason = "models trained on Hessians are not implemented in the CUDA kernels yet"
    if reason is not None:
        print(f"gdmlc: device 'cuda' requested but {reason}; using the CPU", file=file or sys.stderr)
        return "cpu"
    return "cuda"


def cupy_or_none():
    """CuPy when it can factorise on this GPU (never under the simulator), else None."""
    from numba import config
    if config.ENABLE_CUDASIM or importlib.util.find_spec("cupy") is None:
        return None
    try:
        import cupy
        cupy.cuda.runtime.getDeviceCount()
        from cupy.cuda import cusolver  # noqa: F401  (the solver below needs it)
        return cupy
    except Exception:
        return None


def cusolver_cholesky_solve(K_device, y, lam, cupy):
    """Solve (K + lam I) x = y on the GPU, K destroyed; K's blocks i <= j are read.

    A C-ordered matrix with its upper triangle filled is a column-major matrix with
    its lower triangle filled: cuSOLVER's dpotrf factorises it in place, no copy.
    """
    from cupy.cuda import cublas, cusolver, device

    K = cupy.asarray(K_device)  # zero-copy view through __cuda_array_interface__
    n = K.shape[0]
    K.ravel()[:: n + 1] += lam
    handle = device.get_cusolver_handle()
    info = cupy.zeros(1, dtype=cupy.int32)
    lower = cublas.CUBLAS_FILL_MODE_LOWER
    lwork = cusolver.dpotrf_bufferSize(handle, lower, n, K.data.ptr, n)
    work = cupy.empty(lwork, dtype=cupy.float64)
    cusolver.dpotrf(handle, lower, n, K.data.ptr, n, work.data.ptr, lwork, info.data.ptr)
    status = int(info.get()[0])
    if status > 0:
        raise NotPositiveDefiniteError(
            f"training matrix is not positive definite (leading minor {status} of {n}) with lambda = {lam:g}")
    if status < 0:
        raise ValueError(f"cusolver dpotrf: illegal argument {-status}")
    x = cupy.asarray(np.asarray(y, dtype=np.float64)).copy()
    cusolver.dpotrs(handle, lower, n, 1, K.data.ptr, n, x.data.ptr, n, info.data.ptr)
    status = int(info.get()[0])
    if status != 0:
        raise ValueError(f"cusolver dpotrs failed with info={status}")
    return cupy.asnumpy(x)


class CudaBackend:
    """The backend protocol (runtime/backends.py) on the GPU: assembly, solve and prediction
    on the device.  Descriptors of training data and the contraction stay on the CPU face
    ``cpu`` (as do predictions of joint energy+force models, which the CUDA kernels lack)."""

    device = "cuda"

    def __init__(self, descriptor, kernel, cpu):
        from compiler.build.cuda_compiled import compile_cuda_model

        self.model = compile_cuda_model(descriptor, kernel)
        self.cpu = cpu
        self._K = None          # device training matrix, reused across sigmas
        self._training = None   # (training, device DT, device BT)

    def evaluate(self, R, z):
        return self.cpu.evaluate(R, z)

    def contract(self, JAC, V):
        return self.cpu.contract(JAC, V)

    def assemble(self, D, JAC, fperms, hyper, n_atoms, K=None, progress=True, energy_rows=False):
        """The training matrix on the device (kept for solve()); ``K`` is the host buffer solve()
        may copy it into."""
        if energy_rows:
            raise ValueError("energy constraints are not implemented in the CUDA kernels yet")
        m = D.shape[0]
        n3m = 3 * n_atoms * m
        if self._K is None or tuple(self._K.shape) != (n3m, n3m):
            self._K = None
            self._K = self.model.cuda.device_array((n3m, n3m))
        pairs = m * (m + 1) // 2
        with Progress(pairs, "assembly (cuda)", enabled=progress) as bar:
            self.model.assemble(D, JAC, fperms, hyper, n_atoms, out=self._K, progress=bar.update)

    def solve(self, K_host, y, lam, progress=True):
        """alpha = (K + lam I)^-1 y for the matrix assemble() left on the device: cuSOLVER
        where CuPy can run, else the host solver on a copy (into ``K_host`` when given)."""
        n3m = self._K.shape[0]
        cupy = cupy_or_none()
        if cupy is not None:
            self.model.cuda.synchronize()
            with step(f"cholesky on the GPU ({n3m} x {n3m})", enabled=progress):
                return cusolver_cholesky_solve(self._K, y, lam, cupy)
        if K_host is None:
            K_host = PackedMatrix(panel_starts(n3m))
        if isinstance(K_host, PackedMatrix):
            K_host.fill_from_upper(self._K)  # one panel of rows at a time: no full host matrix
        else:
            self._K.copy_to_host(K_host)
        return cholesky_solve_inplace(K_host, y, lam, progress=progress)

    def release(self):
        """Free the device training matrix (after training)."""
        self._K = None

    def prepare(self, training):
        if training.WT is not None:
            return self.cpu.prepare(training)
        if self._training is None or self._training[0] is not training:
            to_device = self.model.cuda.to_device
            self._training = (training, to_device(training.DT), to_device(training.BT))
        return self._training

    def predict(self, R, z, training):
        """Raw (E, F) (unscaled, no energy constant) for validated R (M, N, 3) on the device."""
        if training.WT is not None:
            return self.cpu.predict(R, z, training)
        _, DT, BT = self.prepare(training)
        DQ, JACQ = self.model.descriptor_device(R, z, validated=True)
        E, F = self.model.predict_device(DQ, JACQ, DT, BT, training.hyper, R.shape[1])
        return E.copy_to_host(), F.copy_to_host()

    def hessian(self, R, z, training):
        """Hessians on the host: the CUDA target has no Hessian kernels yet."""
        return self.cpu.hessian(R, z, training)

    def training_product(self, D, JAC, fperms, hyper):
        return UnpreparedProduct(self, D, JAC, fperms, hyper)

    def matvec(self, D, JAC, fperms, hyper, V):
        return self.model.matvec(D, JAC, fperms, hyper, V)

    def matvec_energy(self, D, JAC, fperms, hyper, V, w):
        raise ValueError("energy constraints are not implemented in the CUDA kernels yet")
