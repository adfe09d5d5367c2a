"""Tests for runtime.data: dataset reading, validation and the force/energy check."""
import re

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from runtime.data import (
    DatasetError,
    check_force_energy_consistency,
    check_same_species,
    load_dataset,
    load_geometries,
    unit_labels,
    validate_arrays,
)

from conftest import RMD17_DIR

M, N = 4, 3
Z = np.array([8, 1, 1])


def _arrays(seed=0, frames=M):
    rng = np.random.default_rng(seed)
    R = rng.normal(size=(frames, N, 3))
    F = rng.normal(size=(frames, N, 3))
    E = rng.normal(size=frames)
    return R, F, E


def _sgdml_npz(path, **overrides):
    R, F, E = _arrays()
    data = dict(
        R=R, z=Z, F=F, E=E,
        name=np.array("water"), theory=np.array("PBE"), r_unit=np.array("Ang"), e_unit=np.array("kcal/mol"),
    )
    data.update(overrides)
    np.savez(path, **{key: value for key, value in data.items() if value is not None})
    return data


def _rmd17_npz(path, **overrides):
    R, F, E = _arrays(1)
    _, old_F, old_E = _arrays(2)
    data = dict(
        nuclear_charges=Z.astype(np.uint8), coords=R, energies=E, forces=F,
        old_indices=np.arange(M), old_energies=old_E, old_forces=old_F,
    )
    data.update(overrides)
    np.savez(path, **{key: value for key, value in data.items() if value is not None})
    return data


def _write_xyz(path, frames_numbers, energy=True, forces=True):
    R, F, E = _arrays(3, frames=len(frames_numbers))
    frames = []
    for k, numbers in enumerate(frames_numbers):
        atoms = Atoms(numbers=numbers, positions=R[k, : len(numbers)])
        atoms.calc = SinglePointCalculator(
            atoms,
            energy=E[k] if energy else None,
            forces=F[k, : len(numbers)] if forces else None,
        )
        frames.append(atoms)
    ase.io.write(path, frames, format="extxyz")
    return R, F, E


def _error(path, **kwargs):
    with pytest.raises(DatasetError) as info:
        load_dataset(path, **kwargs)
    return str(info.value)


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize("energy_shape", [(M,), (M, 1)])
def test_sgdml_npz_round_trip(tmp_path, energy_shape):
    path = tmp_path / "water.npz"
    R, F, E = _arrays()
    _sgdml_npz(path, E=E.reshape(energy_shape))
    ds = load_dataset(path)
    np.testing.assert_array_equal(ds.R, R)
    np.testing.assert_array_equal(ds.F, F)
    np.testing.assert_array_equal(ds.E, E)
    np.testing.assert_array_equal(ds.z, Z)
    assert ds.R.dtype == np.float64 and ds.z.dtype == np.int64 and ds.E.shape == (M,)
    assert (ds.name, ds.theory, ds.energy_unit, ds.length_unit) == ("water", "PBE", "kcal/mol", "Ang")
    assert (ds.source, ds.labels) == (str(path), "default")
    assert len(ds) == M and ds.n_atoms == N


def test_sgdml_npz_without_energies_or_metadata(tmp_path):
    path = tmp_path / "bare.npz"
    _sgdml_npz(path, E=None, name=None, theory=None, r_unit=None, e_unit=None)
    ds = load_dataset(path)
    assert ds.E is None
    assert (ds.name, ds.theory, ds.energy_unit, ds.length_unit) == ("bare", "unknown", "unknown", "unknown")


def test_npz_detected_by_content(tmp_path):
    path = tmp_path / "water.npz"
    _sgdml_npz(path)
    renamed = path.rename(tmp_path / "water.data")
    assert load_dataset(renamed).name == "water"


@pytest.mark.parametrize(
    "labels, forces, energies, theory",
    [
        ("new", "forces", "energies", "PBE/def2-SVP (rMD17)"),
        ("old", "old_forces", "old_energies", "PBE+vdW-TS (MD17, original labels)"),
    ],
)
def test_rmd17_npz_label_sets(tmp_path, labels, forces, energies, theory):
    path = tmp_path / "rmd17_ethanol_train_01.npz"
    data = _rmd17_npz(path)
    ds = load_dataset(path, labels=labels)
    np.testing.assert_array_equal(ds.R, data["coords"])
    np.testing.assert_array_equal(ds.F, data[forces])
    np.testing.assert_array_equal(ds.E, data[energies])
    np.testing.assert_array_equal(ds.z, Z)
    assert (ds.name, ds.theory, ds.labels) == ("ethanol", theory, labels)
    assert (ds.energy_unit, ds.length_unit) == ("kcal/mol", "Ang")


def test_rmd17_name_falls_back_to_file_stem(tmp_path):
    path = tmp_path / "my_molecule.npz"
    _rmd17_npz(path)
    assert load_dataset(path).name == "my_molecule"


@pytest.mark.parametrize("suffix", [".xyz", ".extxyz"])
def test_extxyz_round_trip(tmp_path, suffix):
    path = tmp_path / f"water{suffix}"
    R, F, E = _write_xyz(path, [Z] * M)
    ds = load_dataset(path)
    np.testing.assert_allclose(ds.R, R, atol=1e-6)
    np.testing.assert_allclose(ds.F, F, atol=1e-6)
    np.testing.assert_allclose(ds.E, E, atol=1e-6)
    np.testing.assert_array_equal(ds.z, Z)
    assert (ds.name, ds.energy_unit, ds.length_unit, ds.labels) == ("water", "eV", "Ang", "default")


def test_extxyz_without_energy(tmp_path):
    path = tmp_path / "water.xyz"
    _write_xyz(path, [Z] * M, energy=False)
    assert load_dataset(path).E is None


def _write_ref_xyz(path, energy_key="REF_energy", forces_key="REF_forces"):
    R, F, E = _arrays(4)
    frames = []
    for k in range(M):
        atoms = Atoms(numbers=Z, positions=R[k])
        atoms.info[energy_key] = E[k]
        atoms.arrays[forces_key] = F[k]
        frames.append(atoms)
    ase.io.write(path, frames, format="extxyz")
    return R, F, E


def test_extxyz_ref_keys_are_recognised(tmp_path):
    path = tmp_path / "ref.xyz"
    R, F, E = _write_ref_xyz(path)
    ds = load_dataset(path)
    np.testing.assert_allclose(ds.F, F, atol=1e-6)
    np.testing.assert_allclose(ds.E, E, atol=1e-6)


def test_extxyz_keys_can_be_chosen(tmp_path):
    path = tmp_path / "dft.xyz"
    R, F, E = _write_ref_xyz(path, "dft_energy", "dft_forces")
    assert "no forces" in _error(path)
    ds = load_dataset(path, energy_key="dft_energy", forces_key="dft_forces")
    np.testing.assert_allclose(ds.F, F, atol=1e-6)
    np.testing.assert_allclose(ds.E, E, atol=1e-6)
    message = _error(path, energy_key="nope", forces_key="dft_forces")
    assert "dft.xyz" in message and "'nope'" in message


def test_label_keys_only_for_xyz(tmp_path):
    path = tmp_path / "water.npz"
    _sgdml_npz(path)
    assert "extended XYZ" in _error(path, energy_key="REF_energy")


def test_dataset_without_forces_when_not_required(tmp_path):
    path = tmp_path / "water.npz"
    data = _sgdml_npz(path, F=None)
    ds = load_dataset(path, require_forces=False)
    assert ds.F is None and ds.subset([1, 2]).F is None
    np.testing.assert_array_equal(ds.R, data["R"])


def test_geometries_from_r_only_npz_and_xyz(tmp_path):
    R, _, _ = _arrays()
    path = tmp_path / "g.npz"
    np.savez(path, R=R)
    R_read, z = load_geometries(path)
    assert z is None and np.array_equal(R_read, R)
    xyz = tmp_path / "g.xyz"
    R_xyz, _, _ = _write_xyz(xyz, [Z] * M, energy=False, forces=False)
    R_read, z = load_geometries(xyz)
    np.testing.assert_allclose(R_read, R_xyz, atol=1e-6)
    np.testing.assert_array_equal(z, Z)
    np.savez(path, positions=R)
    with pytest.raises(DatasetError, match="no geometries"):
        load_geometries(path)


def test_species_mismatch_names_the_first_differing_atom():
    check_same_species([8, 1, 1], Z, "water.xyz")
    with pytest.raises(DatasetError, match="atom 1 is O in water.xyz but H in the model"):
        check_same_species([8, 8, 1], Z, "data/water.xyz")
    with pytest.raises(DatasetError, match="atom 0 is H in water.xyz but O in the model"):
        check_same_species([1, 8, 1], Z, "data/water.xyz")
    with pytest.raises(DatasetError, match="2 atoms per geometry, but the model has 3"):
        check_same_species([8, 1], Z, "water.xyz")


def test_unit_labels():
    assert unit_labels("kcal/mol", "Ang") == ("kcal/mol", "kcal/mol/Ang")
    assert unit_labels("unknown", "unknown") == ("unknown units", "unknown units")
    assert unit_labels("eV", "unknown") == ("eV", "unknown units")


def test_zero_byte_and_garbage_files(tmp_path):
    for name, content in (("empty.npz", b""), ("junk.npz", b"junk" * 10), ("empty.xyz", b""),
                          ("junk.xyz", b"3\nbad\nC x y z\n")):
        path = tmp_path / name
        path.write_bytes(content)
        assert name in _error(path)


# --------------------------------------------------------------------------- bad files


def test_nan_coordinates_name_file_key_frame_and_atom(tmp_path):
    path = tmp_path / "water.npz"
    R, _, _ = _arrays()
    R[2, 1, 0] = np.nan
    _sgdml_npz(path, R=R)
    message = _error(path)
    assert str(path) in message and "R: frame 2, atom 1 is not finite" in message


def test_infinite_rmd17_force_names_file_key(tmp_path):
    path = tmp_path / "rmd17_ethanol_train_01.npz"
    _, F, _ = _arrays(1)
    F[3, 2, 1] = np.inf
    _rmd17_npz(path, forces=F)
    assert "forces: frame 3, atom 2 is not finite" in _error(path)


def test_nan_energy_names_frame(tmp_path):
    path = tmp_path / "water.npz"
    _, _, E = _arrays()
    E[1] = np.nan
    _sgdml_npz(path, E=E)
    assert "E: frame 1 is not finite" in _error(path)


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("F", np.zeros((M, N - 1, 3)), f"F: expected shape {(M, N, 3)} (same as R), got {(M, N - 1, 3)}"),
        ("E", np.zeros(M + 1), f"E: expected shape ({M},) or ({M}, 1), got ({M + 1},)"),
        ("z", np.array([8, 1]), f"z: expected shape ({N},) (one per atom), got (2,)"),
        ("R", np.zeros((M, N)), f"R: expected shape (M, N, 3), got {(M, N)}"),
    ],
)
def test_mismatched_shapes_state_expected_and_received(tmp_path, key, value, expected):
    path = tmp_path / "water.npz"
    _sgdml_npz(path, **{key: value})
    assert expected in _error(path)


def test_missing_forces(tmp_path):
    path = tmp_path / "water.npz"
    _sgdml_npz(path, F=None)
    assert "no forces" in _error(path)


def test_missing_forces_in_xyz(tmp_path):
    path = tmp_path / "water.xyz"
    _write_xyz(path, [Z] * M, forces=False)
    assert "no forces" in _error(path)


def test_xyz_frames_of_several_compositions_are_padded(tmp_path):
    """Frames whose species or atom counts differ load as padded arrays (runtime/mixed.py): z per
    frame with 0 after the real atoms, positions and forces of padded slots 0."""
    path = tmp_path / "mixed.xyz"
    R, F, E = _write_xyz(path, [Z, Z, [8, 1, 6], [8, 1]])
    ds = load_dataset(path)
    assert ds.padded and ds.n_atoms == 3
    np.testing.assert_array_equal(ds.z, [Z, Z, [8, 1, 6], [8, 1, 0]])
    np.testing.assert_allclose(ds.R[:3], R[:3], atol=1e-7)  # extended XYZ keeps 8 decimals
    np.testing.assert_allclose(ds.R[3, :2], R[3, :2], atol=1e-7)
    assert not ds.R[3, 2].any() and not ds.F[3, 2].any()
    np.testing.assert_allclose(ds.F[2], F[2], atol=1e-7)
    np.testing.assert_array_equal(ds.subset([3, 0]).z, [[8, 1, 0], Z])


def test_padded_npz_z_with_a_hole_is_refused(tmp_path):
    path = tmp_path / "padded.npz"
    R, F, E = _arrays(3, frames=2)
    np.savez(path, R=R, F=F, E=E, z=np.array([[8, 1, 1], [8, 0, 1]]))
    assert "frame 1 must hold atomic numbers 1..118 followed only by 0" in _error(path)


def test_unknown_extension(tmp_path):
    path = tmp_path / "water.txt"
    path.write_text("not a dataset\n")
    assert "unknown format" in _error(path)


def test_npz_with_unknown_keys_lists_found_and_expected(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, positions=np.zeros((M, N, 3)), charges=Z)
    message = _error(path)
    assert "['charges', 'positions']" in message and "nuclear_charges" in message and "R, z, F" in message


def test_missing_file(tmp_path):
    assert "no such file" in _error(tmp_path / "absent.npz")


def test_bad_labels_value(tmp_path):
    path = tmp_path / "rmd17_ethanol_train_01.npz"
    _rmd17_npz(path)
    assert "labels must be one of" in _error(path, labels="newest")


def test_old_labels_need_old_keys(tmp_path):
    rmd17 = tmp_path / "rmd17_ethanol_train_01.npz"
    _rmd17_npz(rmd17, old_energies=None, old_forces=None)
    sgdml = tmp_path / "water.npz"
    _sgdml_npz(sgdml)
    xyz = tmp_path / "water.xyz"
    _write_xyz(xyz, [Z] * M)
    for path in (rmd17, sgdml, xyz):
        assert "labels='old' needs old_energies/old_forces" in _error(path, labels="old")


# --------------------------------------------------------------------------- validate_arrays


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (dict(F=None), "input: no forces"),
        (dict(R=np.zeros((0, N, 3)), F=np.zeros((0, N, 3))), "at least 1 frame"),
        (dict(R=np.zeros((M, 1, 3)), F=np.zeros((M, 1, 3)), z=None), "at least 2 atoms"),
        (dict(z=np.array([8, 1, 1.5])), "z: atom 2 has atomic number 1.5"),
        (dict(z=np.array([8, 0, 1])), "z: atom 1 has atomic number 0"),
        (dict(R=np.full((M, N, 3), "x")), "R: expected real numbers"),
    ],
)
def test_validate_arrays_rejects(kwargs, expected):
    R, F, E = _arrays()
    arrays = dict(R=R, F=F, E=E, z=Z)
    arrays.update(kwargs)
    with pytest.raises(DatasetError, match=re.escape(expected)):
        validate_arrays(**arrays)


def test_validate_arrays_accepts_good_input():
    R, F, E = _arrays()
    validate_arrays(R, F, E.reshape(M, 1), Z.astype(float))
    validate_arrays(R.astype(np.float32), F)


# --------------------------------------------------------------------------- subset / fingerprint


def _dataset(tmp_path):
    path = tmp_path / "water.npz"
    _sgdml_npz(path)
    return load_dataset(path)


def test_subset_selects_and_copies(tmp_path):
    ds = _dataset(tmp_path)
    sub = ds.subset([3, 1])
    np.testing.assert_array_equal(sub.R, ds.R[[3, 1]])
    np.testing.assert_array_equal(sub.F, ds.F[[3, 1]])
    np.testing.assert_array_equal(sub.E, ds.E[[3, 1]])
    assert len(sub) == 2 and sub.n_atoms == N and sub.name == ds.name
    sub.R[0] = 0.0
    sub.z[0] = 6
    assert ds.R[3].any() and ds.z[0] == 8
    assert len(ds.subset(2)) == 1


def test_empty_subset_is_an_error(tmp_path):
    with pytest.raises(DatasetError, match="no frames"):
        _dataset(tmp_path).subset(np.zeros(M, dtype=bool))


def test_fingerprint_is_stable_and_sensitive(tmp_path):
    ds = _dataset(tmp_path)
    again = _dataset(tmp_path)
    assert ds.fingerprint() == again.fingerprint()
    assert len(ds.fingerprint()) == 64
    seen = {ds.fingerprint()}
    for key, index in (("R", (1, 2, 0)), ("F", (0, 0, 2)), ("E", (3,)), ("z", (1,))):
        changed = _dataset(tmp_path)
        getattr(changed, key)[index] += 1
        seen.add(changed.fingerprint())
    without_energies = _dataset(tmp_path)
    without_energies.E = None
    seen.add(without_energies.fingerprint())
    assert len(seen) == 6


# --------------------------------------------------------------------------- consistency check


def _morse(R, D=3.0, alpha=1.5, r0=None):
    """Energies (M,) and forces (M, N, 3) of a sum of Morse pair potentials."""
    a, b = np.triu_indices(R.shape[1], k=1)
    d = R[:, a] - R[:, b]
    r = np.linalg.norm(d, axis=-1)
    x = np.exp(-alpha * (r - r0))
    E = np.sum(D * (1 - x) ** 2, axis=1)
    dE_dr = 2 * D * alpha * x * (1 - x)
    pair_force = -(dE_dr / r)[..., None] * d  # force on atom a from the pair (a, b)
    F = np.zeros_like(R)
    np.add.at(F, (slice(None), a), pair_force)
    np.add.at(F, (slice(None), b), -pair_force)
    return E, F


def _random_rotations(rng, n):
    q, r = np.linalg.qr(rng.normal(size=(n, 3, 3)))
    q *= np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    q[np.linalg.det(q) < 0, :, 0] *= -1
    return q


@pytest.fixture(scope="module")
def morse_trajectory():
    """R, E, F of a random walk around a Morse minimum, randomly rotated and shuffled."""
    rng = np.random.default_rng(0)
    minimum = rng.normal(scale=1.2, size=(5, 3))
    a, b = np.triu_indices(5, k=1)
    r0 = np.linalg.norm(minimum[a] - minimum[b], axis=-1)
    R = [minimum]
    for _ in range(299):
        R.append(minimum + 0.9 * (R[-1] - minimum) + 0.02 * rng.normal(size=minimum.shape))
    R = np.array(R)
    E, F = _morse(R, r0=r0)
    rotations = _random_rotations(rng, len(R))
    order = rng.permutation(len(R))
    return (R @ rotations)[order] + 5.0, E[order], (F @ rotations)[order]


def test_morse_forces_are_minus_gradient(morse_trajectory):
    R, _, _ = morse_trajectory
    frame, atom, axis, h = 7, 2, 1, 1e-6
    a, b = np.triu_indices(R.shape[1], k=1)
    r0 = np.linalg.norm(R[0, a] - R[0, b], axis=-1)
    shifted = np.repeat(R[frame : frame + 1], 2, axis=0)
    shifted[0, atom, axis] += h
    shifted[1, atom, axis] -= h
    (e_plus, e_minus), _ = _morse(shifted, r0=r0)
    _, F_frame = _morse(R[frame : frame + 1], r0=r0)
    assert F_frame[0, atom, axis] == pytest.approx(-(e_plus - e_minus) / (2 * h), rel=1e-5)


def test_consistent_forces_give_no_warnings(morse_trajectory):
    R, E, F = morse_trajectory
    assert check_force_energy_consistency(R, E, F) == []


def test_gradients_instead_of_forces_are_flagged(morse_trajectory):
    R, E, F = morse_trajectory
    warnings = check_force_energy_consistency(R, E, -F)
    assert len(warnings) == 1 and "gradients" in warnings[0]


@pytest.mark.parametrize("factor", [23.06, 1 / 23.06])
def test_unit_mismatch_is_flagged_with_the_scale(morse_trajectory, factor):
    R, E, F = morse_trajectory
    warnings = check_force_energy_consistency(R, E, F * factor)
    assert len(warnings) == 1 and "units" in warnings[0]
    assert f"{1 / factor:.3g}" in warnings[0]


def test_unrelated_energies_are_flagged(morse_trajectory):
    R, E, F = morse_trajectory
    shuffled = np.random.default_rng(1).permutation(E)
    warnings = check_force_energy_consistency(R, shuffled, F)
    assert len(warnings) == 1 and "do not follow the forces" in warnings[0]


def test_no_energies_or_few_frames_give_no_warnings(morse_trajectory):
    R, E, F = morse_trajectory
    assert check_force_energy_consistency(R, None, F) == []
    assert check_force_energy_consistency(R[:20], E[:20], -F[:20]) == []


# --------------------------------------------------------------------------- real data


@pytest.mark.shared_data
def test_rmd17_ethanol_both_label_sets():
    path = RMD17_DIR / "rmd17_ethanol_train_01.npz"
    if not path.is_file():
        pytest.skip(f"shared rMD17 data not found at {RMD17_DIR}")
    new = load_dataset(path)
    old = load_dataset(path, labels="old")
    for ds in (new, old):
        assert len(ds) == 1000 and ds.n_atoms == 9 and ds.name == "ethanol"
        assert ds.z.tolist() == [6, 6, 8, 1, 1, 1, 1, 1, 1]
        assert check_force_energy_consistency(ds.R, ds.E, ds.F) == []
    np.testing.assert_array_equal(new.R, old.R)
    assert not np.array_equal(new.E, old.E)
    assert new.fingerprint() != old.fingerprint()
    assert (new.labels, old.labels) == ("new", "old")
