"""Cholesky solve of the training system, in place.

The matrix is held as the column panels of its lower triangle: either
runtime/packed.py's PackedMatrix (one triangle only, what training uses), or a
C-ordered n x n matrix with its block upper triangle filled, whose transpose is
a Fortran-ordered view with the *lower* triangle filled (panels are views of
it).  Either is factorised without a copy.  If the matrix is not numerically positive
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
from scipy.linalg import solve_triangular

from . import lapack_raw
from .packed import BLOCK, PackedMatrix, panel_starts
from .progress import Progress


class NotPositiveDefiniteError(np.linalg.LinAlgError):
    pass


class NonFiniteMatrixError(np.linalg.LinAlgError):
    """The matrix (or the solution) holds NaN or inf: a larger lambda cannot help.

    ``row``, ``column``: the first non-finite entry of the filled triangle (None for a solution)."""

    def __init__(self, message, row=None, column=None):
        super().__init__(message)
        self.row, self.column = row, column


def first_non_finite_in_panel(panel: np.ndarray, k: int):
    """(row, column) of the first NaN/inf in the lower panel ``panel`` = a[k:, k:k+kb] (only the
    lower triangle of its diagonal block: the rest is scratch), or None.

    Checked just before the panel is factorised: entries are then the assembled values minus
    finite updates, so a non-finite one was non-finite in the assembled matrix.  OpenBLAS's
    dpotrf takes a NaN pivot as positive, so without this an all-NaN matrix 'factorises'."""
    kb = panel.shape[1]
    lower_diagonal = np.tril(panel[:kb])  # its strict upper triangle is scratch
    with np.errstate(over="ignore", invalid="ignore"):
        total = lower_diagonal.sum() + panel[kb:].sum()
    if np.isfinite(total):
        return None  # a sum is NaN/inf if any term is: one read of the panel, no temporaries
    bad = ~np.isfinite(panel)
    bad[:kb] = ~np.isfinite(lower_diagonal)
    if not bad.any():
        return None  # the sum overflowed, every entry is finite
    column = int(np.argmax(bad.any(axis=0)))  # the first bad column, as Fortran stores them
    return k + int(np.argmax(bad[:, column])), k + column


def add_to_diagonal(K, value):
    if isinstance(K, PackedMatrix):
        K.add_to_diagonal(value)
    else:
        K.ravel()[:: K.shape[0] + 1] += value


def full_matrix_panels(a: np.ndarray, block=BLOCK):
    """(starts, panels) of a Fortran matrix's lower triangle: the views a[k:, k:k+b]."""
    starts = panel_starts(a.shape[0], block)
    return starts, [a[k:, k:e] for k, e in zip(starts[:-1], starts[1:])]


def cholesky_lower_inplace(a: np.ndarray, block=BLOCK, progress=True, label="cholesky") -> int:
    """Factor the lower triangle of Fortran-ordered ``a`` in place (a = L L^T).

    Returns 0, or the 1-based order of the first non-positive leading minor,
    as LAPACK's info.  The strict upper triangle is used as scratch.  Raises
    NonFiniteMatrixError, naming the entry, if the lower triangle holds NaN or inf.
    """
    if a.dtype != np.float64 or a.ndim != 2 or not a.flags.f_contiguous:
        raise ValueError("cholesky_lower_inplace needs a 2-D Fortran-contiguous float64 array")
    return cholesky_lower_panels(*full_matrix_panels(a, block), progress=progress, label=label)


def cholesky_lower_panels(starts, panels, progress=True, label="cholesky") -> int:
    """Factor in place the lower triangle held as column panels: ``panels[p]`` is the column-major
    (n - k, b) block of columns k = starts[p] .. starts[p + 1] from row k down (views of one
    Fortran matrix, or runtime/packed.py's separate arrays).  Right-looking: each panel is
    factorised (dpotrf, dtrsm), then every later panel is updated by it (dsyrk on its diagonal
    block, dgemm below: one huge threaded dsyrk is where OpenBLAS crashes).

    Returns 0 or LAPACK's info (the 1-based first non-positive leading minor); raises
    NonFiniteMatrixError naming the first non-finite entry."""
    n = int(starts[-1])
    matrices = [lapack_raw.FortranMatrix(panel) for panel in panels]
    with Progress(100, f"{label} ({n} x {n})", enabled=progress) as bar:
        for p, (k, panel, A) in enumerate(zip(starts, panels, matrices)):
            k, kb = int(k), panel.shape[1]
            bad = first_non_finite_in_panel(panel, k)
            if bad is not None:
                raise NonFiniteMatrixError(f"the kernel matrix is not finite: entry ({bad[0]}, {bad[1]}) "
                                           f"is {panel[bad[0] - k, bad[1] - k]}", *bad)
            info = lapack_raw.potrf_lower(A, 0, kb)
            if info > 0:
                return k + info
            if info < 0:
                raise ValueError(f"dpotrf: illegal argument {-info}")
            below = k + kb
            if below < n:
                lapack_raw.trsm_right_lower_transposed(A, 0, kb, kb, n - below)
                for j, C in zip(starts[p + 1:], matrices[p + 1:]):
                    j, jb = int(j), C.array.shape[1]
                    lapack_raw.syrk_lower_update(C, jb, A, j - k, kb)
                    if j + jb < n:
                        lapack_raw.gemm_update(C, jb, n - j - jb, jb, A, j + jb - k, j - k, kb)
            done = 1.0 - ((n - below) / n) ** 3 if n else 1.0
            bar.update(int(round(100 * done)) - bar.done)
    return 0


def solve_factored_panels(starts, panels, y):
    """x = (L L^T)^-1 y for L held as ``cholesky_lower_panels`` left it: forward then backward
    substitution panel by panel (dtrsv on the diagonal block, dgemv below it)."""
    x = np.array(y, dtype=np.float64)
    rows = [panel.T for panel in panels]  # (b, n - k): U = L^T, rows k..k+b from column k
    for k, U in zip(starts, rows):  # L z = y
        k, kb = int(k), U.shape[0]
        x[k:k + kb] = solve_triangular(U[:, :kb], x[k:k + kb], trans="T", check_finite=False)
        x[k + kb:] -= U[:, kb:].T @ x[k:k + kb]
    for k, U in zip(starts[-2::-1], rows[::-1]):  # L^T x = z
        k, kb = int(k), U.shape[0]
        x[k:k + kb] = solve_triangular(U[:, :kb], x[k:k + kb] - U[:, kb:] @ x[k + kb:], check_finite=False)
    return x


def cholesky_solve_inplace(K, y, lam, progress=True):
    """Solve (K + lam I) x = y; K is destroyed (it holds the factor afterwards).

    K: a runtime/packed.py PackedMatrix, or a C-ordered n x n matrix with its (block) upper
    triangle filled, whose transpose is factorised in place as a Fortran lower triangle."""
    add_to_diagonal(K, lam)
    if isinstance(K, PackedMatrix):
        starts, panels = K.starts, K.lower_panels
    else:
        starts, panels = full_matrix_panels(K.T)
    info = cholesky_lower_panels(starts, panels, progress=progress)
    if info > 0:
        raise NotPositiveDefiniteError(
            f"training matrix is not positive definite (leading minor {info} of {K.shape[0]}) "
            f"with lambda = {lam:g}")
    x = solve_factored_panels(starts, panels, y)
    check_finite_solution(x)
    return x


def check_finite_solution(x):
    """A finite matrix can still give an inf/NaN solution (overflow in the triangular solves)."""
    bad = np.flatnonzero(~np.isfinite(x))
    if len(bad):
        raise NonFiniteMatrixError(f"the solution is not finite ({len(bad)} of {len(x)} entries, "
                                   f"first at index {bad[0]})")
