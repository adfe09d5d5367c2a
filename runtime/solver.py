"""Cholesky solve of the training system, in place.

The matrix is C-ordered with its block upper triangle filled; its transpose
is a Fortran-ordered view with the *lower* triangle filled, which LAPACK's
dpotrf factorises without a copy.  If the matrix is not numerically positive
definite the factorisation has already overwritten it, so the caller
reassembles with a larger regulariser (``lam`` escalates by 10x).
"""
from __future__ import annotations

import numpy as np
from scipy.linalg import lapack

from .progress import step


class NotPositiveDefiniteError(np.linalg.LinAlgError):
    pass


def add_to_diagonal(K, value):
    K.ravel()[:: K.shape[0] + 1] += value


def cholesky_solve_inplace(K, y, lam, progress=True):
    """Solve (K + lam I) x = y; K is destroyed (it holds the factor afterwards)."""
    add_to_diagonal(K, lam)
    lower = K.T  # Fortran view: dpotrf works in place on it
    with step(f"cholesky ({K.shape[0]} x {K.shape[0]})", enabled=progress):
        factor, info = lapack.dpotrf(lower, lower=1, overwrite_a=1, clean=0)
    if info > 0:
        raise NotPositiveDefiniteError(
            f"training matrix is not positive definite (leading minor {info} of {K.shape[0]}) "
            f"with lambda = {lam:g}")
    if info < 0:
        raise ValueError(f"dpotrf: illegal argument {-info}")
    if not np.shares_memory(factor, K):
        raise RuntimeError("LAPACK copied the training matrix; in-place factorisation failed")
    x, info = lapack.dpotrs(factor, np.asarray(y, dtype=np.float64), lower=1)
    if info != 0:
        raise ValueError(f"dpotrs failed with info={info}")
    return x
