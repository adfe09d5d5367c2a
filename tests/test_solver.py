"""The blocked in-place Cholesky (runtime/solver.py) against LAPACK's own dpotrf and numpy."""
import numpy as np
import pytest
from scipy.linalg import lapack

from runtime.solver import NotPositiveDefiniteError, cholesky_lower_inplace, cholesky_solve_inplace


def spd(n, seed):
    x = np.random.default_rng(seed).standard_normal((n, n + 3))
    return x @ x.T + 1e-3 * np.eye(n)


@pytest.mark.parametrize("n, block", [(1, 4), (7, 4), (8, 4), (9, 4), (50, 16), (257, 64), (300, 1024)])
def test_factor_matches_numpy(n, block):
    S = spd(n, n)
    a = np.array(S, order="F")  # a copy: S stays the reference
    a[np.triu_indices(n, 1)] = np.nan  # the upper triangle is never read
    assert cholesky_lower_inplace(a, block=block, progress=False) == 0
    L = np.tril(a)
    reference = np.linalg.cholesky(S)
    assert np.abs(L - reference).max() <= 1e-12 * np.abs(reference).max()


@pytest.mark.parametrize("bad", [0, 5, 17, 39])
def test_not_positive_definite_reports_lapacks_minor(bad):
    S = spd(40, 1)
    S[bad, :] = S[:, bad] = 0.0
    S[bad, bad] = -1.0
    _, info_lapack = lapack.dpotrf(S.copy(), lower=1)
    a = np.array(S, order="F")  # a copy: S stays the reference
    assert cholesky_lower_inplace(a, block=8, progress=False) == info_lapack == bad + 1


def test_solve_in_place_of_a_c_ordered_upper_triangle():
    """The runtime's layout: C-ordered matrix, upper triangle filled; solved without a copy."""
    n = 130
    S = spd(n, 3)
    K = np.triu(S) + np.tril(np.full((n, n), np.nan), -1)  # lower triangle garbage
    y = np.random.default_rng(4).standard_normal(n)
    lam = 1e-6
    x = cholesky_solve_inplace(K, y, lam, progress=False)
    assert np.allclose((S + lam * np.eye(n)) @ x, y, rtol=0, atol=1e-9 * np.abs(y).max())


def test_solve_raises_on_indefinite_matrix():
    K = np.eye(20)
    K[7, 7] = -2.0
    with pytest.raises(NotPositiveDefiniteError, match="leading minor 8 of 20"):
        cholesky_solve_inplace(K, np.ones(20), 0.0, progress=False)


def test_rejects_c_ordered_input():
    with pytest.raises(ValueError, match="Fortran-contiguous"):
        cholesky_lower_inplace(np.eye(4), progress=False)
