"""Cholesky solve of the training system, in place.

The matrix is C-ordered with its block upper triangle filled; its transpose
is a Fortran-ordered view with the *lower* triangle filled, which is
factorised without a copy.  If the matrix is not numerically positive
definite the factorisation has already overwritten it, so the caller
reassembles with a larger regulariser (``lam`` escalates by 10x).

The factorisation is a right-looking blocked Cholesky over BLAS level-3 calls
(runtime/lapack_raw.py) rather than one dpotrf call: scipy's bundled
OpenBLAS 0.3.30 segfaults in its threaded dpotrf on large matrices (27000^2
with 2 threads here; OpenBLAS issues #2562, #1413), and the blocked loop also
gives the solve a progress bar.  Its cost is the same n^3/3 flops, almost all
of them in dgemm.
"""
from __future__ import annotations

import numpy as np
from scipy.linalg import lapack

from . import lapack_raw
from .progress import Progress

BLOCK = 1024  # panel width: big enough for dgemm's peak rate, small enough for dpotrf/dtrsm


class NotPositiveDefiniteError(np.linalg.LinAlgError):
    pass


def add_to_diagonal(K, value):
    K.ravel()[:: K.shape[0] + 1] += value


def cholesky_lower_inplace(a: np.ndarray, block=BLOCK, progress=True, label="cholesky") -> int:
    """Factor the lower triangle of Fortran-ordered ``a`` in place (a = L L^T).

    Returns 0, or the 1-based order of the first non-positive leading minor,
    as LAPACK's info.  The strict upper triangle is used as scratch.
    """
    A = lapack_raw.FortranMatrix(a)
    n = a.shape[0]
    with Progress(100, f"{label} ({n} x {n})", enabled=progress) as bar:
        for k in range(0, n, block):
            kb = min(block, n - k)
            info = lapack_raw.potrf_lower(A, k, kb)
            if info > 0:
                return k + info
            if info < 0:
                raise ValueError(f"dpotrf: illegal argument {-info}")
            below = k + kb
            if below < n:
                lapack_raw.trsm_right_lower_transposed(A, k, kb, below, n - below)
                # Trailing update column tile by column tile: dsyrk on the diagonal tile, dgemm
                # below it (one huge threaded dsyrk is where OpenBLAS crashes).
                for j in range(below, n, block):
                    jb = min(block, n - j)
                    lapack_raw.syrk_lower_update(A, j, jb, k, kb)
                    if j + jb < n:
                        lapack_raw.gemm_update(A, j + jb, n - j - jb, j, jb, k, kb)
            done = 1.0 - ((n - below) / n) ** 3 if n else 1.0
            bar.update(int(round(100 * done)) - bar.done)
    return 0


def cholesky_solve_inplace(K, y, lam, progress=True):
    """Solve (K + lam I) x = y; K is destroyed (it holds the factor afterwards)."""
    add_to_diagonal(K, lam)
    lower = K.T  # Fortran view of the filled triangle: factorised in place
    info = cholesky_lower_inplace(lower, progress=progress)
    if info > 0:
        raise NotPositiveDefiniteError(
            f"training matrix is not positive definite (leading minor {info} of {K.shape[0]}) "
            f"with lambda = {lam:g}")
    x, info = lapack.dpotrs(lower, np.asarray(y, dtype=np.float64), lower=1)
    if info != 0:
        raise ValueError(f"dpotrs failed with info={info}")
    return x
