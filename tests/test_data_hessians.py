"""Datasets carrying Hessians (issue 13, item 3, data side): npz and extended XYZ, validation,
subsets, `gdmlc info`, and the committed GFN2-xTB Hessian set."""
import ase.io
import numpy as np
import pytest
from ase import Atoms

from runtime.cli import main
from runtime.data import (DEFAULT_DATA, DEFAULT_HESSIAN_DATA, HESSIAN_SYMMETRY_ATOL, HESSIAN_SYMMETRY_RTOL,
                          DatasetError, load_dataset, validate_arrays)

M, N = 4, 3
Z = np.array([8, 1, 1])
KCALMOL_PER_EV = 23.060547830619026


def _symmetric_hessians(count, seed=0):
    A = np.random.default_rng(seed).normal(size=(count, 3 * N, 3 * N))
    return A + np.swapaxes(A, 1, 2)


def _labels(seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(M, N, 3)), rng.normal(size=(M, N, 3)), rng.normal(size=M)


def _npz(path, **hessian_keys):
    R, F, E = _labels()
    np.savez(path, R=R, z=Z, F=F, E=E, e_unit=np.array("kcal/mol"), r_unit=np.array("Ang"), **hessian_keys)
    return path


def _xyz(path, hessians, key="hessian"):
    """Frames with a flattened Hessian in info where `hessians` has one (None: no entry)."""
    R, F, E = _labels()
    frames = []
    for m in range(M):
        atoms = Atoms(numbers=Z, positions=R[m])
        atoms.arrays["REF_forces"] = F[m]
        atoms.info["REF_energy"] = E[m]
        if hessians[m] is not None:
            atoms.info[key] = hessians[m]
        frames.append(atoms)
    ase.io.write(path, frames, format="extxyz")
    return path


def _error(path, **kwargs):
    with pytest.raises(DatasetError) as info:
        load_dataset(path, **kwargs)
    return str(info.value)


# --------------------------------------------------------------------------- reading


def test_npz_hessians_for_all_frames(tmp_path):
    H = _symmetric_hessians(M)
    ds = load_dataset(_npz(tmp_path / "h.npz", H=H))
    np.testing.assert_array_equal(ds.H, H)
    np.testing.assert_array_equal(ds.H_frames, np.arange(M))


def test_npz_hessians_in_atom_component_layout(tmp_path):
    H = _symmetric_hessians(M)
    ds = load_dataset(_npz(tmp_path / "h.npz", H=H.reshape(M, N, 3, N, 3)))
    # row 3a + i of the flat layout is atom a, component i
    np.testing.assert_array_equal(ds.H[2, 3 * 1 + 2, 3 * 2 + 0], H[2].reshape(N, 3, N, 3)[1, 2, 2, 0])
    np.testing.assert_array_equal(ds.H, H)


def test_npz_hessians_for_some_frames_are_sorted_by_frame(tmp_path):
    H = _symmetric_hessians(2)
    ds = load_dataset(_npz(tmp_path / "h.npz", H=H, H_frames=np.array([3, 1])))
    np.testing.assert_array_equal(ds.H_frames, [1, 3])
    np.testing.assert_array_equal(ds.H, H[::-1])


def test_dataset_without_hessians(tmp_path):
    ds = load_dataset(_npz(tmp_path / "plain.npz"))
    assert ds.H is None and ds.H_frames is None


def test_hessian_within_tolerance_is_symmetrised(tmp_path):
    H = _symmetric_hessians(M)
    skew = np.zeros_like(H)
    skew[:, 0, 1] = 0.4 * HESSIAN_SYMMETRY_RTOL * np.abs(H).max()
    ds = load_dataset(_npz(tmp_path / "h.npz", H=H + skew))
    np.testing.assert_allclose(ds.H, H + 0.5 * (skew + np.swapaxes(skew, 1, 2)), rtol=0, atol=1e-15)
    assert np.array_equal(ds.H, np.swapaxes(ds.H, 1, 2))


def test_extxyz_hessians_on_some_frames(tmp_path):
    H = _symmetric_hessians(M)
    path = _xyz(tmp_path / "h.xyz", [H[0].ravel(), None, H[2], None])  # flat and (3N, 3N) as ASE writes them
    ds = load_dataset(path)
    np.testing.assert_array_equal(ds.H_frames, [0, 2])
    np.testing.assert_allclose(ds.H, H[[0, 2]], rtol=1e-15)  # extxyz text keeps repr precision


def test_extxyz_ref_key_and_chosen_key(tmp_path):
    H = _symmetric_hessians(M)
    ds = load_dataset(_xyz(tmp_path / "ref.xyz", list(H), key="REF_hessian"))
    np.testing.assert_allclose(ds.H, H, rtol=1e-15)
    chosen = load_dataset(_xyz(tmp_path / "mine.xyz", [None, None, None, H[3]], key="dft_hess"), hessian_key="dft_hess")
    np.testing.assert_array_equal(chosen.H_frames, [3])
    assert "no frame has the key 'nope'" in _error(tmp_path / "mine.xyz", hessian_key="nope")


def test_hessian_key_only_for_xyz(tmp_path):
    assert "only be chosen for extended XYZ" in _error(_npz(tmp_path / "h.npz"), hessian_key="H")


# --------------------------------------------------------------------------- subsets and fingerprints


def test_subset_keeps_hessians_aligned(tmp_path):
    H = _symmetric_hessians(2)
    ds = load_dataset(_npz(tmp_path / "h.npz", H=H, H_frames=np.array([1, 3])))
    part = ds.subset([3, 0, 1])  # frames 3 and 1 land at positions 0 and 2
    np.testing.assert_array_equal(part.H_frames, [0, 2])
    np.testing.assert_array_equal(part.H, H[[1, 0]])
    masked = ds.subset(np.array([False, False, True, True]))
    np.testing.assert_array_equal(masked.H_frames, [1])
    np.testing.assert_array_equal(masked.H, H[[1]])
    without = ds.subset([0, 2])
    assert without.H is None and without.H_frames is None


def test_fingerprint_depends_on_hessians(tmp_path):
    plain = load_dataset(_npz(tmp_path / "plain.npz"))
    with_h = load_dataset(_npz(tmp_path / "h.npz", H=_symmetric_hessians(M)))
    other_h = load_dataset(_npz(tmp_path / "h2.npz", H=_symmetric_hessians(M, seed=5)))
    assert len({plain.fingerprint(), with_h.fingerprint(), other_h.fingerprint()}) == 3
    assert with_h.subset([0, 1, 2, 3]).fingerprint() == with_h.fingerprint()


# --------------------------------------------------------------------------- bad input


def _bad_npz(tmp_path, **hessian_keys):
    return _error(_npz(tmp_path / "bad.npz", **hessian_keys))


def test_wrong_shape(tmp_path):
    message = _bad_npz(tmp_path, H=np.zeros((M, 9, 8)))
    assert "bad.npz: H: expected shape (K, 9, 9) or (K, 3, 3, 3, 3)" in message and "got (4, 9, 8)" in message


def test_count_without_frames(tmp_path):
    message = _bad_npz(tmp_path, H=_symmetric_hessians(3))
    assert "bad.npz: H: 3 Hessians for 4 frames" in message and "H_frames" in message


def test_frames_that_do_not_exist(tmp_path):
    message = _bad_npz(tmp_path, H=_symmetric_hessians(2), H_frames=np.array([1, 7]))
    assert "bad.npz: H_frames: entry 1 is frame 7, but there are 4 frames (0..3)" in message


def test_frame_listed_twice(tmp_path):
    message = _bad_npz(tmp_path, H=_symmetric_hessians(2), H_frames=np.array([2, 2]))
    assert "bad.npz: H_frames: frame 2 has two Hessians (entries [0, 1])" in message


def test_frames_without_hessians(tmp_path):
    assert "bad.npz: H_frames is given but there are no Hessians" in _bad_npz(tmp_path, H_frames=np.array([0]))


def test_non_finite_entry_names_frame_and_entry(tmp_path):
    H = _symmetric_hessians(2)
    H[1, 4, 7] = np.nan
    message = _bad_npz(tmp_path, H=H, H_frames=np.array([0, 2]))
    assert "bad.npz: H: frame 2, entry (4, 7) (atom 1 y, atom 2 y) is not finite (nan)" in message


def test_asymmetric_beyond_tolerance_names_frame_and_entry(tmp_path):
    H = _symmetric_hessians(M)
    tolerance = HESSIAN_SYMMETRY_RTOL * np.abs(H[3]).max() + HESSIAN_SYMMETRY_ATOL
    H[3, 5, 0] += 3 * tolerance
    message = _bad_npz(tmp_path, H=H)
    assert "bad.npz: H: frame 3 is not symmetric: entry (0, 5) (atom 0 x, atom 1 z)" in message
    assert "(H + H^T) / 2" in message


def test_extxyz_entry_with_wrong_size_names_frame_and_key(tmp_path):
    H = _symmetric_hessians(M)
    path = _xyz(tmp_path / "bad.xyz", [H[0].ravel(), H[1].ravel()[:-1], None, None])
    assert "bad.xyz: hessian: frame 1: expected 81 numbers (a 9 x 9 Hessian, flattened), got 80 values" in _error(path)


def test_extxyz_asymmetric_names_file_key_and_frame(tmp_path):
    H = _symmetric_hessians(M)
    H[2, 1, 0] += 1.0
    message = _error(_xyz(tmp_path / "bad.xyz", list(H), key="REF_hessian"))
    assert "bad.xyz: REF_hessian: frame 2 is not symmetric" in message


def test_validate_arrays_checks_hessians():
    R, F, E = _labels()
    validate_arrays(R, F, E, Z, H=_symmetric_hessians(1), H_frames=[2])
    with pytest.raises(DatasetError, match=r"input: H_frames: entry 0 is frame 4"):
        validate_arrays(R, F, E, Z, H=_symmetric_hessians(1), H_frames=[4])


def test_info_reports_hessians_and_bad_file_exits_2(tmp_path, capsys):
    assert main(["info", str(_npz(tmp_path / "h.npz", H=_symmetric_hessians(1), H_frames=np.array([1])))]) == 0
    assert "Hessians for 1 of 4 frames (kcal/mol/Ang^2)" in capsys.readouterr().out
    assert main(["info", str(DEFAULT_DATA)]) == 0
    assert "Hessians no" in capsys.readouterr().out
    assert main(["info", str(_npz(tmp_path / "bad.npz", H=_symmetric_hessians(3)))]) == 2
    assert "bad.npz: H: 3 Hessians for 4 frames" in capsys.readouterr().err


# --------------------------------------------------------------------------- the committed GFN2-xTB set


@pytest.fixture(scope="module")
def hessian_set():
    with np.load(DEFAULT_HESSIAN_DATA) as f:
        return {key: f[key] for key in f.files}


def test_committed_set_loads_with_hessians_for_every_frame(hessian_set):
    ds = load_dataset(DEFAULT_HESSIAN_DATA)
    assert ds.H.shape == (40, 27, 27) and np.array_equal(ds.H_frames, np.arange(40))
    assert DEFAULT_HESSIAN_DATA.stat().st_size <= 300_000
    main_ds = load_dataset(DEFAULT_DATA)
    frames = hessian_set["main_frames"]
    np.testing.assert_array_equal(ds.R, main_ds.R[frames])
    # recomputed with a tighter SCF than the main file: the same labels to its reproducibility
    np.testing.assert_allclose(ds.F, main_ds.F[frames], rtol=0, atol=1e-3)


def test_committed_hessians_are_symmetric_and_translation_invariant(hessian_set):
    H = np.concatenate([hessian_set["H"], hessian_set["H_min"][None]])
    assert np.array_equal(H, np.swapaxes(H, 1, 2))
    # E(x + t) = E(x): a rigid translation is a zero mode of every Hessian (acoustic sum rule)
    translations = np.kron(np.ones((9, 1)), np.eye(3))  # (27, 3)
    residual = np.abs(H @ translations).max(axis=(1, 2)) / np.abs(H).max(axis=(1, 2))
    assert residual.max() < 1e-5


def test_committed_minimum_is_a_minimum(hessian_set):
    assert np.abs(hessian_set["F_min"]).max() < 1e-4 * KCALMOL_PER_EV  # BFGS fmax 1e-4 eV/Ang
    eigenvalues = np.linalg.eigvalsh(hessian_set["H_min"])
    assert np.abs(eigenvalues[:6]).max() < 0.05  # translations and (nearly) rotations
    assert eigenvalues[6] > 1.0  # 21 vibrations, all stable
    assert hessian_set["E_min"] < hessian_set["E"].min()


def test_committed_hessians_are_minus_force_derivatives(hessian_set):
    """Central differences of tblite's forces along a few coordinates against columns of H."""
    pytest.importorskip("tblite", reason="tblite (the datagen extra) recomputes GFN2-xTB forces")
    from ase.build import molecule
    from tblite.ase import TBLite

    atoms = molecule("CH3CH2OH")
    atoms.calc = TBLite(method="GFN2-xTB", accuracy=1e-4, verbosity=0)
    h = 1e-3
    cases = [(hessian_set["R"][5], hessian_set["H"][5]), (hessian_set["R"][31], hessian_set["H"][31]),
             (hessian_set["R_min"], hessian_set["H_min"])]
    for R, H in cases:
        for k in (0, 8, 13, 26):  # C x, O z, H y, last H z
            step = np.zeros(27)
            step[k] = h
            atoms.set_positions(R + step.reshape(9, 3))
            f_plus = atoms.get_forces()
            atoms.set_positions(R - step.reshape(9, 3))
            f_minus = atoms.get_forces()
            column = -(f_plus - f_minus).ravel() / (2 * h) * KCALMOL_PER_EV
            np.testing.assert_allclose(column, H[:, k], rtol=0, atol=1e-5 * np.abs(H).max())
