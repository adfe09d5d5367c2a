"""Tests for runtime.symmetry (symmetry detection, validation) and runtime.progress."""
import io
import itertools
import re
import time

import numpy as np
import pytest
from ase.build import molecule

from runtime.progress import Progress, step
from runtime.symmetry import (
    SymmetryError,
    bond_graph,
    find_permutations,
    graph_automorphisms,
    is_group,
    validate_permutations,
)

from conftest import RMD17_DIR

# ASE's ethanol: C0 methyl carbon, C1 methylene carbon, O2, H3 hydroxyl, H4 H5 on C1, H6 H7 H8
# on C0.  The molecule is mirror symmetric about z = 0 (H3, H6 in the plane).
ETHANOL = molecule("CH3CH2OH")
ETHANOL_Z = ETHANOL.numbers
METHYL_H = [6, 7, 8]
METHYLENE_H = [4, 5]


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------

def _rotate_about(points, origin, axis, angle):
    """Rodrigues rotation of ``points`` (K, 3) about the line through ``origin`` along ``axis``."""
    k = axis / np.linalg.norm(axis)
    v = points - origin
    c, s = np.cos(angle), np.sin(angle)
    return origin + v * c + np.cross(k, v) * s + np.outer(v @ k, k) * (1 - c)


def _random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _ideal_ethanol():
    """ASE's ethanol with an exactly three-fold methyl (H7, H8 = H6 turned by +-120 degrees
    about C1-C0), still mirror symmetric about z = 0."""
    x = ETHANOL.positions.copy()
    for h, angle in ((7, 120.0), (8, -120.0)):
        x[h] = _rotate_about(x[[6]], x[0], x[0] - x[1], np.deg2rad(angle))[0]
    return x


def _ethanol_frame(theta, phi):
    """Ethanol with the methyl turned by ``theta`` about C1-C0, the hydroxyl H by ``phi``
    about C1-O2 (radians; 0, 0 is ASE's geometry with an ideal methyl)."""
    x = _ideal_ethanol()
    x[METHYL_H] = _rotate_about(x[METHYL_H], x[0], x[0] - x[1], theta)
    x[[3]] = _rotate_about(x[[3]], x[2], x[2] - x[1], phi)
    return x


def _ethanol_md(n_frames, phi=None, noise=0.03, seed=0):
    """MD-like ethanol frames: random methyl torsion, hydroxyl torsion random (``phi=None``)
    or fixed, Gaussian noise, and a random rigid motion per frame."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n_frames):
        p = rng.uniform(0, 2 * np.pi) if phi is None else phi
        x = _ethanol_frame(rng.uniform(0, 2 * np.pi), p)
        x = x + rng.normal(scale=noise, size=x.shape)
        frames.append(x @ _random_rotation(rng).T + rng.normal(size=3))
    return np.array(frames)


def _dist(x):
    return np.linalg.norm(x[..., :, None, :] - x[..., None, :, :], axis=-1)


def _parity(perm, atoms):
    """Parity (0 even, 1 odd) of ``perm`` restricted to ``atoms`` (which it must map onto
    themselves)."""
    sub = [atoms.index(int(perm[a])) for a in atoms]
    inversions = sum(1 for i, j in itertools.combinations(range(len(sub)), 2) if sub[i] > sub[j])
    return inversions % 2


def _assert_valid_group(P, z):
    P = np.asarray(P)
    assert P.dtype == np.int64 and P.ndim == 2 and P.shape[1] == len(z)
    np.testing.assert_array_equal(P[0], np.arange(len(z)))
    assert is_group(P)
    assert all(np.array_equal(z[p], z) for p in P)
    assert np.array_equal(P, np.unique(P, axis=0))  # sorted, no duplicates


# ------------------------------------------------------------------------------------------
# synthetic molecules (always run)
# ------------------------------------------------------------------------------------------

def test_bond_graph_automorphisms_of_small_molecules():
    assert len(graph_automorphisms(bond_graph(ETHANOL.positions, ETHANOL_Z), ETHANOL_Z)) == 12
    ch4 = molecule("CH4")
    assert len(graph_automorphisms(bond_graph(ch4.positions, ch4.numbers), ch4.numbers)) == 24
    c6h6 = molecule("C6H6")
    P = graph_automorphisms(bond_graph(c6h6.positions, c6h6.numbers), c6h6.numbers)
    assert len(P) == 12 and is_group(P)
    np.testing.assert_array_equal(P[0], np.arange(12))


def test_automorphism_limit():
    ib = molecule("isobutane")  # three methyl groups on a CH: 6**3 * 3! automorphisms
    A = bond_graph(ib.positions, ib.numbers)
    assert len(graph_automorphisms(A, ib.numbers)) == 1296
    with pytest.raises(SymmetryError, match="more than 100 automorphisms.*--no-sym"):
        graph_automorphisms(A, ib.numbers, limit=100)


def test_ethanol_with_free_torsions_has_six_symmetries(capsys):
    R = _ethanol_md(150)
    P = find_permutations(R, ETHANOL_Z, progress=False)
    assert capsys.readouterr().err == ""
    _assert_valid_group(P, ETHANOL_Z)
    assert len(P) == 6
    heavy_and_oh = [0, 1, 2, 3]
    for p in P:
        np.testing.assert_array_equal(p[heavy_and_oh], heavy_and_oh)
        # the CH2 hydrogens are swapped exactly when the methyl hydrogens are oddly permuted
        # (mirror image); a methyl transposition alone would invert a stereo centre
        assert sorted(p[METHYL_H]) == METHYL_H and sorted(p[METHYLENE_H]) == METHYLENE_H
        assert _parity(p, METHYLENE_H) == _parity(p, METHYL_H)
    # the three methyl rotations are there
    cyc = np.arange(9)
    cyc[METHYL_H] = [7, 8, 6]
    assert any(np.array_equal(p, cyc) for p in P)


def test_ethanol_with_hydroxyl_locked_gauche_has_only_the_methyl_rotations():
    # The mirror image of a gauche+ geometry is gauche-, which these data never show.
    R = _ethanol_md(150, phi=np.deg2rad(60.0), seed=1)
    P = find_permutations(R, ETHANOL_Z, progress=False)
    _assert_valid_group(P, ETHANOL_Z)
    assert len(P) == 3
    assert all(np.array_equal(p[METHYLENE_H], METHYLENE_H) for p in P)


def test_each_permutation_maps_data_onto_data():
    # Noise-free torsion grid, closed under methyl rotation by 120 degrees and under the mirror
    # image (theta, phi) -> (-theta, -phi): every x[p] must have the distance matrix of a frame.
    grid = [(t, f) for t in np.deg2rad(np.arange(0, 360, 20)) for f in np.deg2rad(np.arange(0, 360, 40))]
    R = np.array([_ethanol_frame(t, f) for t, f in grid])
    P = find_permutations(R, ETHANOL_Z, max_geometries=len(R), progress=False)
    _assert_valid_group(P, ETHANOL_Z)
    assert len(P) == 6
    iu = np.triu_indices(9, 1)
    feats = _dist(R)[:, iu[0], iu[1]]
    for p in P:
        permuted = _dist(R[:, p])[:, iu[0], iu[1]]
        gap = np.linalg.norm(permuted[:, None, :] - feats[None, :, :], axis=-1).min(axis=1)
        assert gap.max() < 1e-6


def test_methane_vibrations_give_all_24_and_the_group_size_limit():
    rng = np.random.default_rng(3)
    ch4 = molecule("CH4")
    R = ch4.positions[None] + rng.normal(scale=0.05, size=(120, 5, 3))
    P = find_permutations(R, ch4.numbers, progress=False)
    _assert_valid_group(P, ch4.numbers)
    assert len(P) == 24
    with pytest.raises(SymmetryError, match=r"max_group_size=10.*--no-sym"):
        find_permutations(R, ch4.numbers, max_group_size=10, progress=False)
    with pytest.raises(SymmetryError, match="max_group_size=5"):
        find_permutations(_ethanol_md(100), ETHANOL_Z, max_group_size=5, progress=False)


def test_molecules_without_symmetry_and_tiny_inputs():
    water = molecule("H2O")
    R = water.positions[None] + np.random.default_rng(0).normal(scale=0.02, size=(30, 3, 3))
    P = find_permutations(R, water.numbers, progress=False)
    assert len(P) == 2 and is_group(P)  # the two hydrogens
    hocl = molecule("HOCl")
    P = find_permutations(hocl.positions[None], hocl.numbers, progress=False)
    np.testing.assert_array_equal(P, [[0, 1, 2]])
    # one geometry: nothing to compare, identity only
    P = find_permutations(ETHANOL.positions, ETHANOL_Z, progress=False)
    np.testing.assert_array_equal(P, [np.arange(9)])


def test_find_permutations_rejects_bad_input():
    with pytest.raises(SymmetryError, match="shape"):
        find_permutations(np.zeros((4, 9, 2)), ETHANOL_Z, progress=False)
    with pytest.raises(SymmetryError, match="NaN"):
        find_permutations(np.full((2, 9, 3), np.nan), ETHANOL_Z, progress=False)
    R = _ethanol_md(5)
    R[3, 4] = R[3, 5]
    with pytest.raises(SymmetryError, match="geometry 3: atoms 4 and 5"):
        find_permutations(R, ETHANOL_Z, progress=False)


def test_find_permutations_reports_one_line(capsys):
    find_permutations(_ethanol_md(40), ETHANOL_Z)
    err = capsys.readouterr().err
    assert re.fullmatch(r"symmetry search \.\.\. done in \d+\.\d\d s \(6 permutations.*\)\n", err)


# ------------------------------------------------------------------------------------------
# validate_permutations / is_group
# ------------------------------------------------------------------------------------------

def _methyl_cycle(k):
    p = np.arange(9)
    p[METHYL_H] = np.roll(METHYL_H, -k)
    return p


def test_validate_adds_identity_and_sorts():
    P = validate_permutations([_methyl_cycle(2), _methyl_cycle(1), _methyl_cycle(1)], ETHANOL_Z)
    assert P.dtype == np.int64 and P.shape == (3, 9)
    np.testing.assert_array_equal(P[0], np.arange(9))
    assert is_group(P)
    # a single row is accepted; float arrays holding integers too
    np.testing.assert_array_equal(validate_permutations(np.arange(9.0), ETHANOL_Z), [np.arange(9)])


def test_validate_rejects_non_permutations():
    bad = np.arange(9)
    bad[4] = 3
    with pytest.raises(SymmetryError, match=r"permutation 1 is not a permutation of range\(9\).*repeated indices: \[3\].*missing indices: \[4\]"):
        validate_permutations([np.arange(9), bad], ETHANOL_Z)
    with pytest.raises(SymmetryError, match="out of range"):
        validate_permutations([[0, 1, 2, 3, 4, 5, 6, 7, 9]], ETHANOL_Z)
    with pytest.raises(SymmetryError, match="9 atoms"):
        validate_permutations([[0, 1, 2]], ETHANOL_Z)
    with pytest.raises(SymmetryError, match="integer"):
        validate_permutations([np.arange(9) + 0.5], ETHANOL_Z)
    with pytest.raises(ValueError):  # SymmetryError is a ValueError
        validate_permutations(np.zeros((2, 2, 9), dtype=int), ETHANOL_Z)


def test_validate_rejects_species_changes():
    p = np.arange(9)
    p[[2, 3]] = [3, 2]  # O <-> H
    with pytest.raises(SymmetryError, match=r"permutation 0 does not preserve species: atom 2 \(Z=8\)"):
        validate_permutations([p], ETHANOL_Z)


def test_validate_rejects_sets_not_closed():
    with pytest.raises(SymmetryError, match=r"not closed under composition.*gives \[0, 1, 2, 3, 4, 5, 8, 6, 7\]"):
        validate_permutations([_methyl_cycle(1)], ETHANOL_Z)
    swap = np.arange(9)
    swap[METHYLENE_H] = METHYLENE_H[::-1]
    with pytest.raises(SymmetryError, match="not closed"):
        validate_permutations([swap, _methyl_cycle(1), _methyl_cycle(2)], ETHANOL_Z)
    full = validate_permutations(
        [swap, _methyl_cycle(1), _methyl_cycle(2), swap[_methyl_cycle(1)], swap[_methyl_cycle(2)]],
        ETHANOL_Z)
    assert len(full) == 6


def test_is_group():
    assert is_group([np.arange(4)])
    assert is_group([[0, 1, 2, 3], [1, 0, 2, 3]])
    assert not is_group([[1, 0, 2, 3]])  # no identity
    assert not is_group([[0, 1, 2, 3], [1, 2, 0, 3]])  # cube missing
    assert not is_group([[0, 1, 2, 3], [0, 0, 2, 3]])  # not a permutation
    assert not is_group(np.zeros((0, 4), dtype=int))


# ------------------------------------------------------------------------------------------
# rMD17 (skipped when ../shared/data is absent)
# ------------------------------------------------------------------------------------------

def _rmd17(name):
    path = RMD17_DIR / f"rmd17_{name}_train_01.npz"
    if not path.exists():
        pytest.skip(f"rMD17 data not found: {path} (shared data folder absent)")
    with np.load(path) as d:
        return d["coords"], d["nuclear_charges"]


@pytest.mark.shared_data
def test_rmd17_ethanol_1000_frames():
    R, z = _rmd17("ethanol")
    t0 = time.perf_counter()
    P = find_permutations(R[:1000], z, max_geometries=1000, progress=False)
    elapsed = time.perf_counter() - t0
    _assert_valid_group(P, z)
    assert len(P) == 6  # as sGDML
    assert elapsed < 20.0  # about 0.5 s here; sGDML needs 40-65 s
    # only hydrogens move: the 3 methyl and the 2 methylene ones, not the hydroxyl one
    moved = np.flatnonzero(np.any(P != np.arange(len(z)), axis=0))
    assert len(moved) == 5 and np.all(z[moved] == 1)


@pytest.mark.parametrize("name, expected", [
    ("ethanol", 6),
    ("aspirin", 6),
    ("toluene", 12),
    ("malonaldehyde", 4),
    ("uracil", 1),
    ("benzene", 12),
    ("naphthalene", 4),
    ("salicylic", 1),
    ("paracetamol", 12),
    ("azobenzene", 8),
])
@pytest.mark.shared_data
def test_rmd17_molecules(name, expected):
    # 200 of the first 1000 frames (the default max_geometries); the counts are those of
    # sGDML's find_perms, which gives the same sets on these frames.
    R, z = _rmd17(name)
    P = find_permutations(R[:1000], z, progress=False)
    _assert_valid_group(P, z)
    assert len(P) == expected


# ------------------------------------------------------------------------------------------
# progress
# ------------------------------------------------------------------------------------------

class _TTY(io.StringIO):
    def isatty(self):
        return True


def test_progress_disabled_prints_nothing():
    out = io.StringIO()
    with Progress(100, "work", enabled=False, stream=out) as bar:
        for _ in range(100):
            bar.update()
    with step("work", enabled=False, stream=out):
        pass
    assert out.getvalue() == ""


def test_progress_non_tty_prints_few_lines():
    out = io.StringIO()
    with Progress(1000, "assembly", stream=out) as bar:
        for _ in range(1000):
            bar.update()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 1  # a short stage: one line at its end (tests/test_cli.py: long stages)
    assert re.fullmatch(r"assembly  \[#{14}\] 100% 1000/1000  \d+\.\d s", lines[-1])
    # a total of 3 still gives at most one line per update plus the end
    out = io.StringIO()
    with Progress(3, "tiny", stream=out) as bar:
        bar.update(3)
    assert len(out.getvalue().splitlines()) == 1


def test_progress_tty_redraws_one_line():
    out = _TTY()
    with Progress(5, "fit", stream=out) as bar:
        for _ in range(5):
            bar.update()
            time.sleep(0.11)
    text = out.getvalue()
    assert text.startswith("\r") and text.endswith("\n") and text.count("\n") == 1
    assert "100% 5/5" in text.split("\r")[-1]


def test_progress_unknown_total_and_exception():
    out = io.StringIO()
    with pytest.raises(RuntimeError):
        with Progress(None, "scan", stream=out) as bar:
            bar.update(7)
            raise RuntimeError("boom")
    assert out.getvalue().startswith("scan  7  ")


def test_step_reports_time_and_note():
    out = io.StringIO()
    with step("symmetry search", stream=out) as s:
        s.note = "6 permutations"
    assert re.fullmatch(r"symmetry search \.\.\. done in \d+\.\d\d s \(6 permutations\)\n", out.getvalue())
    out = io.StringIO()
    with pytest.raises(KeyError):
        with step("load", stream=out):
            raise KeyError("x")
    assert re.fullmatch(r"load \.\.\. failed after \d+\.\d\d s\n", out.getvalue())
