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

Each panel is checked to be finite just before it is factorised (one read of
the triangle in all, next to n^3/3 flops): OpenBLAS's dpotrf takes a NaN pivot
as positive, so a NaN matrix would otherwise "factorise" into a NaN model.
"""
from __future__ import annotations

import numpy as np
from scipy.linalg import lapack

from . import lapack_raw
from .progress import Progress

BLOCK = 1024  # panel width: big enough for dgemm's peak rate, small enough for dpotrf/dtrsm


class NotPositiveDefiniteError(np.linalg.LinAlgError):
    pass


class NonFiniteMatrixError(np.linalg.LinAlgError):
    """The matrix (or the solution) holds NaN or inf: a larger lambda cannot help.

    ``row``, ``column``: the first non-finite entry of the filled triangle (None for a solution)."""

    def __init__(self, message, row=None, column=None):
        super().__init__(message)
        self.row, self.column = row, column


def first_non_finite_in_panel(a: np.ndarray, k: int, kb: int):
    """(row, column) of the first NaN/inf in the lower panel a[k:, k:k+kb] (only the lower
    triangle of its diagonal block: the rest is scratch), or None.

    Checked just before the panel is factorised: entries are then the assembled values minus
    finite updates, so a non-finite one was non-finite in the assembled matrix.  OpenBLAS's
    dpotrf takes a NaN pivot as positive, so without this an all-NaN matrix 'factorises'."""
    lower_diagonal = np.tril(a[k:k + kb, k:k + kb])  # its strict upper triangle is scratch
    with np.errstate(over="ignore", invalid="ignore"):
        total = lower_diagonal.sum() + a[k + kb:, k:k + kb].sum()
    if np.isfinite(total):
        return None  # a sum is NaN/inf if any term is: one read of the panel, no temporaries
    bad = ~np.isfinite(a[k:, k:k + kb])
    bad[:kb] = ~np.isfinite(lower_diagonal)
    if not bad.any():
        return None  # the sum overflowed, every entry is finite
    column = int(np.argmax(bad.any(axis=0)))  # the first bad column, as Fortran stores them
    return k + int(np.argmax(bad[:, column])), k + column


def add_to_diagonal(K, value):
    K.ravel()[:: K.shape[0] + 1] += value


def cholesky_lower_inplace(a: np.ndarray, block=BLOCK, progress=True, label="cholesky") -> int:
    """Factor the lower triangle of Fortran-ordered ``a`` in place (a = L L^T).

    Returns 0, or the 1-based order of the first non-positive leading minor,
    as LAPACK's info.  The strict upper triangle is used as scratch.  Raises
    NonFiniteMatrixError, naming the entry, if the lower triangle holds NaN or inf.
    """
    A = lapack_raw.FortranMatrix(a)
    n = a.shape[0]
    with Progress(100, f"{label} ({n} x {n})", enabled=progress) as bar:
        for k in range(0, n, block):
            kb = min(block, n - k)
            bad = first_non_finite_in_panel(a, k, kb)
            if bad is not None:
                raise NonFiniteMatrixError(f"the kernel matrix is not finite: entry ({bad[0]}, {bad[1]}) "
                                           f"is {a[bad]}", *bad)
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
    check_finite_solution(x)
    return x


def check_finite_solution(x):
    """A finite matrix can still give an inf/NaN solution (overflow in the triangular solves)."""
    bad = np.flatnonzero(~np.isfinite(x))
    if len(bad):
        raise NonFiniteMatrixError(f"the solution is not finite ({len(bad)} of {len(x)} entries, "
                                   f"first at index {bad[0]})")
