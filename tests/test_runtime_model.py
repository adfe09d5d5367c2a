"""Tests for runtime.GDML (training, prediction, symmetries, model files, input errors).

The compiled model is checked against ``jax_reference_model``, an independent
dense JAX implementation of the sGDML equations that shares no code with gdmlc.

Set-up: 25 training frames spread over the default ethanol data set (xTB,
kcal/mol and Å), sigma = 10, lam = 1e-10.  With inverse distances the
training matrix is singular (6 rigid-body directions per frame) and has more
eigenvalues below lam as sigma grows, so a prediction amplifies the ~1e-15
relative differences between two correct training matrices by roughly
1/lam times the weight of those directions: at sigma = 20 with the 6
symmetries the two implementations still agree, but only to ~9e-9, too
close to the 1e-8 requirement; at sigma = 10 they agree to ~1e-9.  The
training matrices themselves are compared directly (1e-12), which is not
subject to conditioning.
"""
import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

import runtime
from runtime import prediction
from runtime.assembly import assemble
from runtime.data import DatasetError
from runtime.model_file import ModelFileError
from runtime.symmetry import find_permutations

import jax_reference_model as ref_model
from numeric import rel

DATA = Path(runtime.__file__).resolve().parent / "default_data" / "ethanol_gfn2xtb_500K.npz"
SIGMA = 10.0
LAM = 1e-10
M_TRAIN = 25
TRAIN = np.linspace(7, 2990, M_TRAIN).astype(int)  # spread over the 15 ps trajectory
TEST = np.arange(61, 3000, 300)  # 10 held-out frames, none in TRAIN
N_ATOMS = 9


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def ds():
    return runtime.load_dataset(DATA)


def _fit(ds, symmetries, idx=TRAIN, sigma=SIGMA, energies=True):
    return runtime.GDML("inverse_distances", "matern52", sigma=sigma, lam=LAM, symmetries=symmetries,
                        progress=False).fit(ds.R[idx], ds.F[idx], ds.E[idx] if energies else None, ds.z)


@pytest.fixture(scope="module")
def model_plain(ds):
    return _fit(ds, None)


@pytest.fixture(scope="module")
def model_sym(ds):
    return _fit(ds, "auto")


@pytest.fixture(scope="module")
def models(model_plain, model_sym):
    return {"identity": model_plain, "symmetric": model_sym}


@pytest.fixture(scope="module")
def references(ds, models):
    """The JAX reference trained on the same frames with the permutations the runtime used."""
    return {name: ref_model.ReferenceGDML(SIGMA, lam=LAM, perms=m.perms).fit(ds.R[TRAIN], ds.F[TRAIN],
                                                                              ds.E[TRAIN])
            for name, m in models.items()}


# --------------------------------------------------------------------------- the reference itself

def test_reference_diagonal_block_is_the_limit_of_nearby_blocks(ds, model_sym):
    """The closed form used at D(x) == D(x'[P]) matches AD blocks at x' -> x (central average)."""
    x = np.asarray(ds.R[TRAIN[3]])
    u = np.random.default_rng(0).normal(size=x.shape)
    for perms in (np.arange(N_ATOMS)[None], model_sym.perms):
        diagonal = np.asarray(ref_model.force_block(x, x, perms, SIGMA))
        eps = 1e-4
        near = 0.5 * (np.asarray(ref_model.force_block(x, x + eps * u, perms, SIGMA))
                      + np.asarray(ref_model.force_block(x, x - eps * u, perms, SIGMA)))
        assert rel(diagonal, near) < 1e-6
        # symmetric positive semi-definite, as a covariance must be
        assert np.allclose(diagonal, diagonal.T, rtol=0, atol=1e-14 * np.abs(diagonal).max())
        assert np.linalg.eigvalsh(diagonal).min() > -1e-12 * np.abs(diagonal).max()


def test_reference_block_transposes(ds, model_sym):
    x, xp = ds.R[TEST[0]], ds.R[TEST[1]]
    C = np.asarray(ref_model.force_block(x, xp, model_sym.perms, SIGMA))
    Ct = np.asarray(ref_model.force_block(xp, x, model_sym.perms, SIGMA))
    assert rel(C, Ct.T) < 1e-13


# --------------------------------------------------------------------------- against the reference

@pytest.mark.parametrize("kind", ["identity", "symmetric"])
def test_training_matrix_matches_reference(ds, models, references, kind):
    """Every block of the assembled (block upper triangle) matrix, before regularisation."""
    model, reference = models[kind], references[kind]
    D, JAC, _ = model.model.descriptor.evaluate(ds.R[TRAIN], ds.z)
    fperms = model.model.feature_permutations(model.perms, N_ATOMS)
    K = assemble(model.model, D, JAC, fperms, model.model.kernel.hyper(sigma=SIGMA), N_ATOMS, progress=False)
    upper = np.kron(np.triu(np.ones((M_TRAIN, M_TRAIN))), np.ones((3 * N_ATOMS, 3 * N_ATOMS))).astype(bool)
    assert np.abs(K - reference.K)[upper].max() / np.abs(reference.K).max() < 1e-12


@pytest.mark.parametrize("kind", ["identity", "symmetric"])
@pytest.mark.parametrize("frames", ["held_out", "training"])
def test_predictions_match_reference(ds, models, references, kind, frames):
    model, reference = models[kind], references[kind]
    idx = TEST if frames == "held_out" else TRAIN  # training frames use the diagonal (d == d') blocks
    E, F = model.predict(ds.R[idx])
    E_ref, F_ref = reference.predict(ds.R[idx])
    assert rel(F, F_ref) <= 1e-8
    assert rel(E, E_ref) <= 1e-8
    # stricter for energies: the constant (~7000 kcal/mol) makes the line above easy;
    # differences between frames are compared to their own spread
    assert rel(E - E.mean(), E_ref - E_ref.mean()) <= 1e-7
    # the constant absorbs an almost uniform offset of the raw energies (conditioning, see top)
    assert model.energy_constant == pytest.approx(reference.energy_constant, rel=1e-8)
    # predict() takes one of two paths by batch size (10 frames here): both against the reference
    D, JAC, _ = model.model.descriptor.evaluate(ds.R[idx], ds.z)
    training = model._training  # the permuted training arrays prediction reads
    for path in (prediction.predict_parts_batched, prediction.predict_parts_tiled):
        E_p, F_p = path(model.model, D, JAC, training.DT, training.BT, training.hyper, N_ATOMS)
        assert rel(F_p * model.label_scale, F_ref) <= 1e-8
        E_p = E_p * model.label_scale + model.energy_constant
        assert rel(E_p - E_p.mean(), E_ref - E_ref.mean()) <= 1e-7


def test_runtime_uses_six_permutations_and_fits_the_data(ds, model_sym):
    assert len(model_sym.perms) == 6 and model_sym.info["n_perms"] == 6
    # sanity of the fit: training forces nearly interpolated, held-out forces reasonable
    _, F_train = model_sym.predict(ds.R[TRAIN])
    assert rel(F_train, ds.F[TRAIN]) < 1e-3
    _, F_test = model_sym.predict(ds.R[TEST])
    assert np.mean(np.abs(F_test - ds.F[TEST])) < 0.2 * np.mean(np.abs(ds.F[TEST]))


# --------------------------------------------------------------------------- forces = -grad E

def test_forces_are_minus_energy_gradient(ds, model_sym):
    """Central differences, h = 1e-5 Å.  The truncation error (h^2 F''/6) is ~1e-10 here; the
    floor is round-off: with lam = 1e-10 the coefficients are large (|alpha| ~ 1e7, cancelling),
    so E carries an absolute noise of ~1e-9 kcal/mol, i.e. ~5e-7 relative in the difference
    quotient with the symmetric model (3e-8 without symmetries; 7e-8 at h = 1e-4)."""
    x = ds.R[TEST[2]].copy()
    _, F = model_sym.predict(x)
    h = 1e-5
    for atom, k in [(0, 0), (1, 2), (2, 1), (3, 0), (5, 2), (8, 1)]:
        plus, minus = x.copy(), x.copy()
        plus[atom, k] += h
        minus[atom, k] -= h
        E_plus, _ = model_sym.predict(plus)
        E_minus, _ = model_sym.predict(minus)
        fd = -(E_plus - E_minus) / (2 * h)
        assert abs(fd - F[atom, k]) <= 1e-6 * np.abs(F).max(), (atom, k, fd, F[atom, k])


# --------------------------------------------------------------------------- symmetries

def test_find_permutations_on_default_data(ds, model_sym):
    perms = find_permutations(ds.R, ds.z, progress=False)
    assert perms.shape == (6, N_ATOMS)
    assert sorted(map(tuple, perms)) == sorted(map(tuple, model_sym.perms))
    for p in perms:
        assert np.array_equal(ds.z[p], ds.z)  # species preserved


@pytest.mark.parametrize("frame", [int(TRAIN[4]), int(TEST[3])], ids=["training", "held_out"])
def test_permuted_geometry_predicts_permuted_forces(ds, model_sym, model_plain, frame):
    x = ds.R[frame]
    E, F = model_sym.predict(x)
    broken = 0.0
    for perm in model_sym.perms:
        E_p, F_p = model_sym.predict(x[perm])
        assert rel(F_p, F[perm]) <= 1e-8
        assert E_p == pytest.approx(E, rel=1e-12, abs=1e-9)
        _, F_plain = model_plain.predict(x[perm])
        broken = max(broken, rel(F_plain, model_plain.predict(x)[1][perm]))
    assert broken > 1e-3  # without the symmetries the test above would fail: it is not vacuous


# --------------------------------------------------------------------------- model files

def test_save_load_round_trip_is_bitwise(tmp_path, ds, model_sym):
    path = tmp_path / "model.npz"
    model_sym.save(path)
    loaded = runtime.GDML.load(path)
    for R in (ds.R[TEST], ds.R[TRAIN[:3]]):
        E0, F0 = model_sym.predict(R)
        E1, F1 = loaded.predict(R)
        assert np.array_equal(E0, E1) and np.array_equal(F0, F1)
    assert loaded.info == model_sym.info
    assert loaded.sigma == model_sym.sigma == SIGMA
    assert np.array_equal(loaded.perms, model_sym.perms)
    assert np.array_equal(loaded.z, model_sym.z)
    assert loaded.energy_constant == model_sym.energy_constant


def test_save_load_without_energies_keeps_no_constant(tmp_path, ds):
    model = _fit(ds, None, idx=TRAIN[:8], energies=False)
    assert model.energy_constant is None
    model.save(tmp_path / "m.npz")
    loaded = runtime.GDML.load(tmp_path / "m.npz")
    assert loaded.energy_constant is None
    assert np.array_equal(loaded.predict(ds.R[TEST])[0], model.predict(ds.R[TEST])[0])
    assert "energy_mae" not in loaded.evaluate(ds.R[TEST], ds.F[TEST], ds.E[TEST])


def test_saving_an_untrained_model_fails(tmp_path):
    with pytest.raises(RuntimeError, match="not trained"):
        runtime.GDML(sigma=SIGMA, progress=False).save(tmp_path / "m.npz")


@pytest.fixture(scope="module")
def saved_bytes(tmp_path_factory, model_plain):
    path = tmp_path_factory.mktemp("model") / "model.npz"
    model_plain.save(path)
    return path.read_bytes()


@pytest.mark.parametrize("content", ["random", "truncated", "empty"])
def test_corrupt_model_file(tmp_path, saved_bytes, content):
    data = {"random": np.random.default_rng(1).bytes(5000), "truncated": saved_bytes[: len(saved_bytes) // 2],
            "empty": b""}[content]
    path = tmp_path / "model.npz"
    path.write_bytes(data)
    with pytest.raises(ModelFileError, match=re.escape(str(path)) + ": not a readable npz model file"):
        runtime.GDML.load(path)


def test_model_file_with_a_missing_array(tmp_path, saved_bytes):
    good = tmp_path / "good.npz"
    good.write_bytes(saved_bytes)
    with np.load(good) as f:
        arrays = {k: f[k] for k in f.files if k != "alpha"}
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ModelFileError, match="missing 'alpha'"):
        runtime.GDML.load(tmp_path / "bad.npz")


def test_dataset_is_not_a_model():
    with pytest.raises(ModelFileError, match="not a gdmlc model.*a dataset"):
        runtime.GDML.load(DATA)


def test_missing_model_file(tmp_path):
    with pytest.raises(ModelFileError, match="No such file"):
        runtime.GDML.load(tmp_path / "nothing.npz")


# --------------------------------------------------------------------------- bad input

SMALL = TRAIN[:4]


def test_nan_coordinates_in_training_name_frame_and_atom(ds):
    R = ds.R[SMALL].copy()
    R[2, 5, 1] = np.nan
    with pytest.raises(DatasetError, match=r"training data: R: frame 2, atom 5 is not finite"):
        runtime.GDML(sigma=SIGMA, progress=False).fit(R, ds.F[SMALL], ds.E[SMALL], ds.z)


def test_nan_forces_in_training_name_frame_and_atom(ds):
    F = ds.F[SMALL].copy()
    F[1, 3, 0] = np.inf
    with pytest.raises(DatasetError, match=r"F: frame 1, atom 3 is not finite"):
        runtime.GDML(sigma=SIGMA, progress=False).fit(ds.R[SMALL], F, None, ds.z)


def test_mismatched_shapes_of_R_and_F(ds):
    with pytest.raises(DatasetError, match=r"F: expected shape \(4, 9, 3\) \(same as R\), got \(3, 9, 3\)"):
        runtime.GDML(sigma=SIGMA, progress=False).fit(ds.R[SMALL], ds.F[SMALL[:3]], None, ds.z)


def test_mismatched_energies(ds):
    with pytest.raises(DatasetError, match=r"E: expected shape \(4,\)"):
        runtime.GDML(sigma=SIGMA, progress=False).fit(ds.R[SMALL], ds.F[SMALL], ds.E[:3], ds.z)


def test_missing_forces(ds):
    with pytest.raises(DatasetError, match="no forces"):
        runtime.GDML(sigma=SIGMA, progress=False).fit(ds.R[SMALL], None, ds.E[SMALL], ds.z)


def test_missing_atomic_numbers(ds):
    with pytest.raises(ValueError, match=r"z \(atomic numbers"):
        runtime.GDML(sigma=SIGMA, progress=False).fit(ds.R[SMALL], ds.F[SMALL], ds.E[SMALL])


def test_wrong_number_of_atomic_numbers(ds):
    with pytest.raises(DatasetError, match=r"z: expected shape \(9,\)"):
        runtime.GDML(sigma=SIGMA, progress=False).fit(ds.R[SMALL], ds.F[SMALL], None, ds.z[:8])


def test_predict_with_wrong_atom_count(ds, model_plain):
    with pytest.raises(ValueError, match=r"expected 9 atoms"):
        model_plain.predict(ds.R[0, :8])
    with pytest.raises(ValueError, match=r"expected 9 atoms"):
        model_plain.predict(np.concatenate([ds.R[:2], ds.R[:2, :1]], axis=1))


def test_predict_with_overlapping_atoms_names_frame_and_atoms(ds, model_plain):
    R = ds.R[:3].copy()
    R[1, 6] = R[1, 2]
    with pytest.raises(ValueError, match=r"frame 1: atoms 2 and 6 are 0 Å apart"):
        model_plain.predict(R)


def test_predict_with_nan_coordinates(ds, model_plain):
    R = ds.R[:3].copy()
    R[2, 4, 0] = np.nan
    with pytest.raises(ValueError, match=r"frame 2, atom 4 has a non-finite coordinate"):
        model_plain.predict(R)


def test_overlapping_atoms_in_training(ds):
    R = ds.R[SMALL].copy()
    R[3, 1] = R[3, 0]
    with pytest.raises(ValueError, match=r"frame 3: atoms 0 and 1"):
        runtime.GDML(sigma=SIGMA, symmetries=None, progress=False).fit(R, ds.F[SMALL], None, ds.z)


def test_sigma_grid_needs_a_validation_set(ds):
    with pytest.raises(ValueError, match="needs a validation set"):
        runtime.GDML(sigma=[10, 20], progress=False).fit(ds.R[SMALL], ds.F[SMALL], None, ds.z)


@pytest.mark.parametrize("sigma", [0, -1, np.nan, []])
def test_bad_sigma(sigma):
    with pytest.raises(ValueError, match="sigma must be positive"):
        runtime.GDML(sigma=sigma, progress=False)


def test_unknown_descriptor_and_kernel():
    with pytest.raises(ValueError, match=r"unknown descriptor 'inverse_distance'.*inverse_distances"):
        runtime.GDML(descriptor="inverse_distance", progress=False)
    with pytest.raises(ValueError, match=r"unknown kernel 'matern'.*matern52"):
        runtime.GDML(kernel="matern", progress=False)


def test_predict_before_fit(ds):
    with pytest.raises(RuntimeError, match="not trained"):
        runtime.GDML(sigma=SIGMA, progress=False).predict(ds.R[0])


def test_bad_symmetries_argument(ds):
    with pytest.raises(ValueError, match="symmetries must be 'auto', None or an array"):
        runtime.GDML(sigma=SIGMA, symmetries="yes", progress=False).fit(ds.R[SMALL], ds.F[SMALL], None, ds.z)


def test_frames_of_several_compositions_need_a_local_model(tmp_path):
    """Data loading pads frames whose species differ (runtime/mixed.py); a global model, which
    compares whole molecules, refuses them."""
    import ase.io
    from ase import Atoms

    frames = [Atoms("OHH", positions=[[0, 0, 0], [1, 0, 0], [0, 1, 0]]),
              Atoms("OHC", positions=[[0, 0, 0], [1, 0, 0], [0, 1, 0]])]
    for atoms in frames:
        atoms.arrays["REF_forces"] = np.ones((3, 3))
    path = tmp_path / "mixed.xyz"
    ase.io.write(path, frames, format="extxyz")
    ds = runtime.load_dataset(path)
    assert ds.padded
    with pytest.raises(ValueError, match="need a local model"):
        runtime.GDML(sigma=SIGMA, progress=False).fit(ds.R, ds.F, None, ds.z)


# --------------------------------------------------------------------------- sigma sweep

def test_sigma_sweep_picks_lowest_validation_error(ds):
    """On these 20 frames the validation force MAE is lowest near sigma = 2 (inverse distances
    differ little between frames of one molecule): the minimum lies inside the grid, and the
    sweep stops after the error has risen twice (as sGDML), before sigma = 10."""
    train, valid = TRAIN[:20], TEST
    grid = [0.5, 1.0, 2.0, 3.0, 5.0, 10.0]
    model = runtime.GDML(sigma=grid, lam=LAM, symmetries=None, progress=False)
    model.fit(ds.R[train], ds.F[train], ds.E[train], ds.z, valid=(ds.R[valid], ds.F[valid], ds.E[valid]))
    sweep = model.info["sigma_sweep"]
    sigmas = [entry["sigma"] for entry in sweep]
    assert 3 <= len(sigmas) < len(grid) and sigmas == grid[: len(sigmas)]
    maes = [entry["force_mae"] for entry in sweep]
    assert len(set(maes)) == len(maes)  # the choice is not a tie
    best = sweep[int(np.argmin(maes))]
    assert best["sigma"] not in (sigmas[0], sigmas[-1])  # neither "the first" nor "the last" would do
    assert all(set(entry) >= {"sigma", "lam", "force_mae", "force_rmse", "energy_mae"} for entry in sweep)
    assert model.sigma == model.info["sigma"] == best["sigma"]
    # the recorded validation error is that of the final model ...
    errors = model.evaluate(ds.R[valid], ds.F[valid], ds.E[valid])
    assert errors["force_mae"] == pytest.approx(best["force_mae"], rel=1e-10)
    assert model.info["validation"]["force_mae"] == best["force_mae"]
    # ... which is the model trained with the chosen sigma alone
    single = runtime.GDML(sigma=best["sigma"], lam=LAM, symmetries=None, progress=False)
    single.fit(ds.R[train], ds.F[train], ds.E[train], ds.z)
    assert rel(model.predict(ds.R[valid])[1], single.predict(ds.R[valid])[1]) < 1e-12


# --------------------------------------------------------------------------- energy constraints (E_cstr)

M_ECSTR = 12
TRAIN_ECSTR = TRAIN[::2][:M_ECSTR]
# lam 100x the forces-only tests: the energy rows make the symmetric system worse conditioned, and
# at lam = 1e-10 two correct implementations (matrices equal to 1e-14) differ by ~1e-7 in forces
LAM_ECSTR = 1e-8


@pytest.fixture(scope="module")
def ecstr_models(ds):
    """Joint energy+force models (and their JAX references), without and with symmetries."""
    out = {}
    for kind, symmetries in (("identity", None), ("symmetric", "auto")):
        model = runtime.GDML("inverse_distances", "matern52", sigma=SIGMA, lam=LAM_ECSTR,
                             symmetries=symmetries, progress=False, energy_constraints=True)
        model.fit(ds.R[TRAIN_ECSTR], ds.F[TRAIN_ECSTR], ds.E[TRAIN_ECSTR], ds.z)
        reference = ref_model.ReferenceGDML(SIGMA, lam=LAM_ECSTR, perms=model.perms, energy_constraints=True)
        reference.fit(ds.R[TRAIN_ECSTR], ds.F[TRAIN_ECSTR], ds.E[TRAIN_ECSTR])
        out[kind] = (model, reference)
    return out


@pytest.mark.parametrize("kind", ["identity", "symmetric"])
def test_energy_constrained_matrix_matches_reference(ds, ecstr_models, kind):
    """The joint (3NM + M)^2 matrix: force blocks, energy-force columns and energy-energy block."""
    model, reference = ecstr_models[kind]
    D, JAC, _ = model.model.descriptor.evaluate(ds.R[TRAIN_ECSTR], ds.z)
    fperms = model.model.feature_permutations(model.perms, N_ATOMS)
    K = assemble(model.model, D, JAC, fperms, model.model.kernel.hyper(sigma=SIGMA), N_ATOMS, progress=False,
                 energy_rows=True)
    n3m = 3 * N_ATOMS * M_ECSTR
    assert K.shape == reference.K.shape == (n3m + M_ECSTR, n3m + M_ECSTR)
    upper = np.zeros(K.shape, bool)
    upper[:n3m, :n3m] = np.kron(np.triu(np.ones((M_ECSTR, M_ECSTR))), np.ones((3 * N_ATOMS,) * 2))
    upper[:n3m, n3m:] = True
    upper[n3m:, n3m:] = np.triu(np.ones((M_ECSTR, M_ECSTR)))
    scale = np.abs(reference.K).max()
    assert np.abs(K - reference.K)[upper].max() / scale < 1e-12
    # the energy parts are not negligible: the test above would see them wrong
    assert np.abs(reference.K[:n3m, n3m:]).max() > 1e-3 * scale
    assert np.abs(reference.K[n3m:, n3m:]).max() > 1e-3 * scale


@pytest.mark.parametrize("kind", ["identity", "symmetric"])
@pytest.mark.parametrize("frames", ["held_out", "training"])
def test_energy_constrained_predictions_match_reference(ds, ecstr_models, kind, frames):
    model, reference = ecstr_models[kind]
    idx = TEST if frames == "held_out" else TRAIN_ECSTR
    E, F = model.predict(ds.R[idx])
    E_ref, F_ref = reference.predict(ds.R[idx])
    assert rel(F, F_ref) <= 1e-8
    assert rel(E - E.mean(), E_ref - E_ref.mean()) <= 1e-7  # as the forces-only test: spread ~4 kcal/mol
    assert model.energy_constant == reference.energy_constant == pytest.approx(np.mean(ds.E[TRAIN_ECSTR]))
    # the energy weights matter: dropping them changes the prediction well beyond the tolerance
    state = model.state
    model.state = dataclasses.replace(state, energy_weights=None)
    try:
        E_forces_only, F_forces_only = model.predict(ds.R[idx])
    finally:
        model.state = state
    assert rel(F_forces_only, F_ref) > 1e-4 and rel(E_forces_only - E_forces_only.mean(), E_ref - E_ref.mean()) > 1e-4


def _fit_small(ds, lam, energy_constraints):
    return runtime.GDML(sigma=SIGMA, lam=lam, symmetries="auto", progress=False,
                        energy_constraints=energy_constraints).fit(ds.R[TRAIN_ECSTR], ds.F[TRAIN_ECSTR],
                                                                   ds.E[TRAIN_ECSTR], ds.z)


def test_energy_constraints_fit_training_energies(ds):
    """Joint training reproduces the training energies themselves, forces-only training does not
    (it only sees them through the constant): measured 0.05 vs 1.1 kcal/mol at lam = 1e-10.  Not
    to round-off: lam times the huge coefficients (~1e7) of this singular system remains."""
    errors = {}
    for joint in (False, True):
        E, _ = _fit_small(ds, LAM, joint).predict(ds.R[TRAIN_ECSTR])
        errors[joint] = np.abs(E - ds.E[TRAIN_ECSTR]).max()
    assert errors[True] < 0.2 * errors[False]


def test_energy_constrained_forces_are_minus_energy_gradient(ds):
    """Central differences.  lam = 1e-4 keeps the coefficients small: at lam = 1e-8 the energy weights
    (~1e6) leave ~1e-8 kcal/mol of round-off in E, which dominates a difference quotient with
    h <= 1e-5 (errors ~1e-4 relative); here h = 1e-4 agrees to ~3e-8."""
    model = _fit_small(ds, 1e-4, True)
    x = ds.R[TEST[4]].copy()
    _, F = model.predict(x)
    h = 1e-4
    for atom, k in [(0, 1), (2, 0), (4, 2), (7, 1)]:
        plus, minus = x.copy(), x.copy()
        plus[atom, k] += h
        minus[atom, k] -= h
        fd = -(model.predict(plus)[0] - model.predict(minus)[0]) / (2 * h)
        assert abs(fd - F[atom, k]) <= 1e-6 * np.abs(F).max(), (atom, k, fd, F[atom, k])


def test_energy_constrained_save_load_is_bitwise(tmp_path, ds, ecstr_models):
    model, _ = ecstr_models["symmetric"]
    model.save(tmp_path / "m.npz")
    loaded = runtime.GDML.load(tmp_path / "m.npz")
    assert loaded.energy_constraints and loaded.info["energy_constraints"]
    E0, F0 = model.predict(ds.R[TEST])
    E1, F1 = loaded.predict(ds.R[TEST])
    assert np.array_equal(E0, E1) and np.array_equal(F0, F1)


def test_energy_constraints_need_energies(ds):
    model = runtime.GDML(sigma=SIGMA, symmetries=None, progress=False, energy_constraints=True)
    with pytest.raises(ValueError, match="energy_constraints=True needs training energies"):
        model.fit(ds.R[SMALL], ds.F[SMALL], None, ds.z)
