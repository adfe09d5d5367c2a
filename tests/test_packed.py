"""The packed (one triangle) training matrix: runtime/packed.py, its Cholesky solve
(runtime/solver.py) and its assembly (runtime/assembly.py), against numpy and the full matrix."""
from pathlib import Path

import numpy as np
import pytest
from scipy.linalg import lapack

import runtime
import runtime.model
from runtime import assembly
from runtime.packed import BLOCK, PackedMatrix, packed_size, panel_starts
from runtime.solver import NonFiniteMatrixError, NotPositiveDefiniteError, cholesky_solve_inplace

DATA = Path(runtime.__file__).resolve().parent / "default_data" / "ethanol_gfn2xtb_500K.npz"
N_ATOMS = 9


def spd(n, seed):
    """Well conditioned (eigenvalues in [1, ~5]): solutions comparable to 1e-10."""
    x = np.random.default_rng(seed).standard_normal((n, n))
    return x @ x.T / n + np.eye(n)


def packed_from(S, starts):
    """S's upper triangle in packed panels; the scratch of every diagonal block is NaN."""
    K = PackedMatrix(starts)
    K.data[:] = np.nan
    K.fill_from_upper(np.triu(S) + np.tril(np.full(S.shape, np.nan), -1))
    return K


# --------------------------------------------------------------------------- storage and solve

@pytest.mark.parametrize("n, block", [(1, 16), (2, 16), (15, 16), (16, 16), (17, 16), (83, 16),
                                      (BLOCK - 1, BLOCK), (BLOCK + 1, BLOCK)])
def test_packed_solve_matches_numpy(n, block):
    S = spd(n, n)
    y = np.random.default_rng(n + 1).standard_normal(n)
    lam = 1e-3
    K = packed_from(S, panel_starts(n, block))
    x = cholesky_solve_inplace(K, y, lam, progress=False)
    reference = np.linalg.solve(S + lam * np.eye(n), y)
    assert np.abs(x - reference).max() <= 1e-10 * np.abs(reference).max()


def test_training_layout_with_energy_rows_solves_like_numpy():
    """Force panels at multiples of 3N, energy panels after them: uneven widths, same answer."""
    m, n_atoms = 7, 3
    K = PackedMatrix.for_training(m, n_atoms, energy_rows=True, block=20)
    assert list(K.starts) == [0, 18, 36, 54, 63, 70]  # 2 block rows (of 9) per panel, then 7 energy rows
    S = spd(K.n, 5)
    y = np.random.default_rng(6).standard_normal(K.n)
    x = cholesky_solve_inplace(packed_from(S, K.starts), y, 0.0, progress=False)
    reference = np.linalg.solve(S, y)
    assert np.abs(x - reference).max() <= 1e-10 * np.abs(reference).max()


def test_storage_holds_one_triangle():
    n, block = 3000, 256
    K = packed_from(spd(50, 1), panel_starts(50, 16))
    assert np.array_equal(K.to_dense(), spd(50, 1))
    widths = np.diff(panel_starts(n, block))
    assert packed_size(n, block) == sum(w * (n - k) for w, k in zip(widths, panel_starts(n, block)))
    assert packed_size(n, block) == n * (n + 1) // 2 + sum(w * (w - 1) // 2 for w in widths)  # + scratch
    assert PackedMatrix(panel_starts(n, block)).nbytes <= 0.55 * n * n * 8


def test_add_to_diagonal_touches_only_the_diagonal():
    S = spd(40, 2)
    K = packed_from(S, panel_starts(40, 16))
    K.add_to_diagonal(0.5)
    assert np.array_equal(K.to_dense(), S + 0.5 * np.eye(40))


@pytest.mark.parametrize("bad", [0, 5, 15, 16, 17, 39])
def test_not_positive_definite_reports_lapacks_minor(bad):
    S = spd(40, 1)
    S[bad, :] = S[:, bad] = 0.0
    S[bad, bad] = -1.0
    _, info = lapack.dpotrf(S.copy(), lower=1)
    assert info == bad + 1
    with pytest.raises(NotPositiveDefiniteError, match=f"leading minor {bad + 1} of 40"):
        cholesky_solve_inplace(packed_from(S, panel_starts(40, 16)), np.ones(40), 0.0, progress=False)


@pytest.mark.parametrize("row, col", [(0, 0), (4, 21), (16, 16), (17, 39), (33, 35)])
def test_a_nan_entry_is_named(row, col):
    """(row, col) of the upper triangle is reported as the lower triangle's (col, row), as the
    full-matrix solver reports it."""
    S = spd(40, 3)
    S[row, col] = S[col, row] = np.nan
    with pytest.raises(NonFiniteMatrixError) as info:
        cholesky_solve_inplace(packed_from(S, panel_starts(40, 16)), np.ones(40), 1e-8, progress=False)
    assert (info.value.row, info.value.column) == (col, row)


# --------------------------------------------------------------------------- assembly

@pytest.fixture(scope="module")
def ds():
    return runtime.load_dataset(DATA)


@pytest.fixture(scope="module")
def problem(ds):
    """Ethanol, 11 frames, its permutations: (compiled model, D, JAC, fperms, hyper)."""
    model = runtime.GDML("inverse_distances", "matern52", sigma=10.0, progress=False).model
    R = ds.R[np.linspace(3, 2900, 11).astype(int)]
    perms = runtime.symmetry.find_permutations(R, ds.z, progress=False)
    assert len(perms) > 1
    D, JAC, _ = model.descriptor.evaluate(R, ds.z)
    return model, D, JAC, model.feature_permutations(perms, N_ATOMS), model.kernel.hyper(sigma=10.0)


@pytest.mark.parametrize("energy_rows", [False, True])
@pytest.mark.parametrize("block", [27, 60, BLOCK])  # one block row per panel, two, all in one
def test_packed_assembly_equals_the_full_matrix(problem, energy_rows, block):
    model, D, JAC, fperms, hyper = problem
    m = D.shape[0]
    full = assembly.assemble(model, D, JAC, fperms, hyper, N_ATOMS, progress=False, energy_rows=energy_rows)
    K = PackedMatrix.for_training(m, N_ATOMS, energy_rows, block=block)
    K.data[:] = np.nan  # anything not written stays NaN and shows up below
    assembly.assemble(model, D, JAC, fperms, hyper, N_ATOMS, out=K, progress=False, energy_rows=energy_rows)
    scale = np.abs(np.triu(full)).max()  # the strict lower triangle is never written (np.empty)
    for k, rows in zip(K.starts, K.rows):  # each panel: its rows of the upper triangle
        expected = full[k:k + rows.shape[0], k:]
        upper = np.triu(np.ones(expected.shape, bool))
        assert np.abs(rows - expected)[upper].max() <= 1e-14 * scale


def test_assembly_refuses_a_layout_that_splits_a_block_row(problem):
    model, D, JAC, fperms, hyper = problem
    n = 27 * D.shape[0]
    with pytest.raises(ValueError, match="multiples of 27"):
        assembly.assemble(model, D, JAC, fperms, hyper, N_ATOMS, out=PackedMatrix(panel_starts(n, 40)),
                          progress=False)


# --------------------------------------------------------------------------- training

def _full_matrix_numpy_solve(K, y, lam, progress=True):
    """The reference: symmetrise the full C-ordered block upper triangle, numpy's solve."""
    full = np.triu(K) + np.triu(K, 1).T
    return np.linalg.solve(full + lam * np.eye(len(y)), y)


@pytest.mark.parametrize("energy_constraints", [False, True])
def test_training_through_the_packed_path_predicts_as_a_full_matrix_solve(ds, monkeypatch, energy_constraints):
    train = np.linspace(5, 2950, 12).astype(int)
    query = np.arange(40, 3000, 400)

    def fit():
        return runtime.GDML("inverse_distances", "matern52", sigma=10.0, lam=1e-6, progress=False,
                            energy_constraints=energy_constraints).fit(ds.R[train], ds.F[train], ds.E[train], ds.z)

    packed = fit()
    with monkeypatch.context() as patch:  # the full-matrix path, solved by numpy
        patch.setattr(runtime.model, "allocate_training_matrix",
                      lambda m, n, energy: np.empty((3 * n * m + m * energy,) * 2))
        patch.setattr(runtime.backends.CpuBackend, "solve", staticmethod(_full_matrix_numpy_solve))
        reference = fit()
    E, F = packed.predict(ds.R[query])
    E_ref, F_ref = reference.predict(ds.R[query])
    assert np.abs(F - F_ref).max() <= 1e-8 * np.abs(F_ref).max()
    assert np.abs(E - E_ref).max() <= 1e-8 * np.abs(E_ref).max()


def test_memory_check_and_dense_fits_count_one_triangle(monkeypatch):
    monkeypatch.setattr(assembly, "available_memory_bytes", lambda: 10 * 2 ** 30)
    n_full_fits = int(np.sqrt(0.9 * 10 * 2 ** 30 / 8))  # the largest n whose full matrix would fit
    assert assembly.dense_fits(n_full_fits)
    assert assembly.dense_fits(int(1.35 * n_full_fits))  # the packed triangle is ~0.52 of it
    assert not assembly.dense_fits(int(1.45 * n_full_fits))
    with pytest.raises(assembly.MemoryLimitError, match=r"needs 9\.\d GiB \(one triangle of"):
        assembly.check_memory(int(1.45 * n_full_fits))
    assert assembly.check_memory(1000) == 8 * packed_size(1000)
