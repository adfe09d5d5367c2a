"""Compile every generated CUDA kernel to PTX (sm_80) without a GPU: Numba CUDA typing + NVVM.

The simulator runs the kernels as Python, so it cannot catch what only the CUDA compiler
rejects (types that do not unify, unsupported functions).  This does, given NVVM and NVRTC
(``pip install nvidia-cuda-nvcc-cu12 nvidia-cuda-nvrtc-cu12``).  Exit status 3 with a
one-line reason when they are missing; run by tests/test_cuda_sim.py.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cuda_sim_checks  # noqa: E402  (the test's descriptor/kernel combinations)
from numba import cuda, float64, int64, types  # noqa: E402

COMPUTE_CAPABILITY = (8, 0)
LIBRARY = [("radial_g2", "matern52"), ("exponential_decay", "matern32"), ("coulomb_matrix", "gaussian")]


def arr(ndim, dtype=float64):
    return types.Array(dtype, ndim, "C")


# argument types of each kernel, as the wrapper (compiler/build/cuda_compiled.py) launches it
SIGNATURES = {
    "descriptor_many": (arr(3), arr(1), arr(2), arr(2, int64), arr(2), arr(4)),
    "block_coefficients": (arr(2), arr(2, int64), arr(1), arr(1, int64), arr(1, int64), arr(3)),
    "assemble_blocks": (arr(2), arr(4), arr(2, int64), arr(3, int64), arr(2, int64), arr(2, int64), arr(3),
                        arr(1, int64), arr(1, int64), arr(2)),
    "pair_coefficients": (arr(2), arr(2), arr(2), arr(1), arr(3)),
    "sum_features": (arr(2), arr(2), arr(2), arr(3), arr(2)),
    "sum_energies": (arr(3), arr(1)),
    "forces_from_features": (arr(4), arr(3, int64), arr(2), arr(3)),
    "contract": (arr(4), arr(2, int64), arr(3), arr(2)),
    "permute_features": (arr(2), arr(2, int64), arr(2)),
}


def main():
    try:
        from cuda.pathfinder import load_nvidia_dynamic_lib
        for lib in ("nvvm", "nvrtc"):
            load_nvidia_dynamic_lib(lib)
    except Exception as exc:
        print(f"NVVM/NVRTC not found ({type(exc).__name__}): pip install nvidia-cuda-nvcc-cu12 "
              "nvidia-cuda-nvrtc-cu12 to compile the CUDA kernels without a GPU")
        return 3
    import numba.cuda.dispatcher as dispatcher

    class NoGpu:  # device functions ask the current GPU for its compute capability
        compute_capability = COMPUTE_CAPABILITY

    dispatcher.get_current_device = lambda: NoGpu()
    from compiler.build.cuda_compiled import compile_cuda_model

    for d, k in [(d, k) for d, k, _ in cuda_sim_checks.COMBINATIONS] + LIBRARY:
        cm = compile_cuda_model(d, k)
        for name, signature in SIGNATURES.items():
            ptx, _ = cuda.compile_ptx(getattr(cm.module, name).py_func, signature, cc=COMPUTE_CAPABILITY)
            assert ".entry" in ptx, name
        print(f"compiled {len(SIGNATURES)} kernels of {cm.module_path.name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
