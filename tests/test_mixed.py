"""One local model trained on geometries of several compositions (runtime/mixed.py): padded
arrays z (M, N) with 0 for no atom.  The training matrix's blocks against the generated local
block of each unpadded pair (itself checked against JAX in tests/test_local.py), the solution
against K alpha, prediction at every composition against a JAX energy written from the training
atoms, padded slots inert, model files, and the refusals."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from numeric import rel
from runtime import mixed
from runtime.assembly import assemble
from runtime.local import LocalRows
from runtime.model import GDML
from runtime.model_file import ModelFileError, checksum
from test_local import both, ethanol

jax.config.update("jax_enable_x64", True)

SUBSET = np.array([1, 2, 5, 6, 7])  # C O H H H of ethanol: a second composition, 5 atoms
SIGMA = 1.5


def padded_set():
    """6 ethanol frames and 4 five-atom fragments of other frames, padded to 9 slots."""
    ds = ethanol()
    R, F, Z = np.zeros((10, 9, 3)), np.zeros((10, 9, 3)), np.zeros((10, 9), dtype=np.int64)
    R[:6], F[:6], Z[:6] = ds.R[:6], ds.F[:6], ds.z
    R[6:, :5], F[6:, :5], Z[6:, :5] = ds.R[10:14][:, SUBSET], ds.F[10:14][:, SUBSET], ds.z[SUBSET]
    return R, F, Z, ds


@pytest.fixture(scope="module")
def trained():
    """lambda 1e-3: a fragment's forces (taken from a whole molecule) have a net force and torque no
    local energy can give, so a tiny lambda would make the coefficients huge."""
    R, F, Z, ds = padded_set()
    model = GDML(both, "gaussian", sigma=SIGMA, lam=1e-3, progress=False).fit(R, F, None, Z)
    return model, R, F, Z, ds


def test_training_matrix_is_the_blocks_of_the_unpadded_pairs(trained):
    """Real rows: local_force_block of the two unpadded geometries, whatever their compositions;
    padded rows and columns: zero.  The model predicts K alpha at its training points."""
    model, R, F, Z, _ = trained
    D, JD = model.backend.evaluate(R, Z)
    K = assemble(LocalRows(model.model, Z), D, JD, model.perms, model.kernel_hyper, 9, progress=False)
    K = np.triu(K) + np.triu(K, 1).T
    counts = mixed.atom_counts(Z)
    for i, j in [(0, 3), (1, 7), (6, 9), (8, 8)]:
        n, n_p = counts[i], counts[j]
        block = K[27 * i:27 * (i + 1), 27 * j:27 * (j + 1)]
        reference = model.model.local_force_block(R[i, :n], R[j, :n_p], Z[i, :n], Z[j, :n_p], sigma=SIGMA)
        assert rel(block[:3 * n, :3 * n_p], reference) <= 1e-13, (i, j)
        assert not block[3 * n:].any() and not block[:, 3 * n_p:].any()
    real = np.repeat(Z.ravel() > 0, 3)
    _, F_pred = model.predict(R, z=Z)
    K_real = K[np.ix_(real, real)]
    assert rel(F_pred.reshape(-1)[real], model.label_scale * (K_real @ model.alpha.reshape(-1)[real])) <= 1e-8


def test_padded_slots_have_no_coefficients_and_no_forces(trained):
    model, R, _, Z, _ = trained
    assert not model.alpha[Z == 0].any()
    _, F = model.predict(R, z=Z)
    assert not F[Z == 0].any()


def jax_energy(model, z):
    """E(x) of the atoms z: sum_i sum_t [z_i = z_t] (-grad_dp k(d_i, d_t) . beta_t) over every real
    training atom t, written from the training rows (JAX)."""
    n_slots = model.n_atoms
    n_site = model.D_train.shape[1] // n_slots
    DT, BT = model.D_train.reshape(-1, n_site), model.B_train.reshape(-1, n_site)
    zt = np.asarray(model.z).ravel()
    site_d = model.model.descriptor.jax_function()
    kernel = model.model.kernel.jax_function()

    def energy(R):
        sites = site_d(R, z).reshape(len(z), -1)
        total = 0.0
        for i in range(len(z)):
            same = zt == z[i]
            along = jax.vmap(lambda dt, bt: jax.jvp(lambda dp: kernel(sites[i], dp, sigma=SIGMA), (dt,), (bt,))[1])
            total = total - along(jnp.asarray(DT[same]), jnp.asarray(BT[same])).sum()
        return total * model.label_scale

    return energy


@pytest.mark.parametrize("atoms", [np.arange(9), SUBSET, np.array([0, 1, 3, 4, 8])],
                         ids=["ethanol", "trained fragment", "unseen composition"])
def test_prediction_matches_jax_at_every_composition(trained, atoms):
    """Energies, forces and Hessians of geometries of each composition (one the model never saw,
    of seen elements), alone and padded together, against the JAX energy of the training atoms."""
    model, _, _, _, ds = trained
    z = ds.z[atoms]
    energy = jax_energy(model, z)
    Q = ds.R[30:32][:, atoms]
    E, F, H = model.predict(Q, z=z, hessian=True)
    for q in range(2):
        x = jnp.asarray(Q[q])
        assert rel(E[q], float(energy(x))) <= 1e-10
        assert rel(F[q], -np.asarray(jax.jacfwd(energy)(x))) <= 1e-10
    assert rel(H[0], np.asarray(jax.jacfwd(jax.jacfwd(energy))(jnp.asarray(Q[0]))).reshape(H[0].shape)) <= 1e-8
    # the same geometries padded into one batch with full ethanol frames
    Rp, Zp = np.zeros((3, 9, 3)), np.zeros((3, 9), dtype=np.int64)
    Rp[0], Zp[0] = ds.R[40], ds.z
    Rp[1:, :len(atoms)], Zp[1:, :len(atoms)] = Q, z
    Ep, Fp = model.predict(Rp, z=Zp)
    assert rel(Ep[1:], E) <= 1e-12 and rel(Fp[1:, :len(atoms)], F) <= 1e-12


def test_model_file_round_trip_and_bad_padding(trained, tmp_path):
    model, R, _, Z, _ = trained
    path = tmp_path / "mixed.npz"
    model.save(path)
    loaded = GDML.load(path)
    assert loaded.state == model.state
    np.testing.assert_array_equal(loaded.predict(R, z=Z)[1], model.predict(R, z=Z)[1])
    stored = dict(np.load(path))
    stored["z"] = stored["z"].copy()
    stored["z"][7, 1] = 0  # a hole before real atoms
    stored["checksum"] = np.array(checksum(stored))
    np.savez(tmp_path / "bad.npz", **stored)
    with pytest.raises(ModelFileError, match="frame 7 must hold atomic numbers 1..118 followed only by 0"):
        GDML.load(tmp_path / "bad.npz")


def test_what_several_compositions_do_not_have_yet_is_refused(trained):
    model, R, F, Z, ds = trained
    with pytest.raises(ValueError, match="need a local model"):
        GDML("inverse_distances", "gaussian", sigma=2.0, progress=False).fit(R, F, None, Z)
    with pytest.raises(ValueError, match="CG is not available for geometries of several compositions"):
        GDML(both, "gaussian", sigma=SIGMA, solver="cg", progress=False).fit(R, F, None, Z)
    with pytest.raises(ValueError, match="valid=\\(R, F, E, z\\)"):
        GDML(both, "gaussian", sigma=[1.0, 2.0], progress=False).fit(R, F, None, Z, valid=(R, F))
    with pytest.raises(ValueError, match="pass the query atoms' elements"):
        model.predict(R)
    with pytest.raises(ValueError, match="atom 1 has atomic number 7"):
        model.predict(ds.R[0], z=np.array([6, 7, 8, 1, 1, 1, 1, 1, 1]))


def test_validation_set_of_several_compositions_chooses_sigma(trained):
    """valid=(R, F, E, z): the sweep's validation error is the error over the real atoms."""
    _, R, F, Z, _ = trained
    model = GDML(both, "gaussian", sigma=[1.0, 2.0], lam=1e-8, progress=False)
    model.fit(R[:8], F[:8], None, Z[:8], valid=(R[8:], F[8:], None, Z[8:]))
    _, F_pred = model.predict(R[8:], z=Z[8:])
    real = Z[8:] > 0
    assert model.info["validation"]["force_mae"] == pytest.approx(np.mean(np.abs(F_pred[real] - F[8:][real])),
                                                                  rel=1e-12)


def test_command_line_trains_and_tests_on_several_compositions(tmp_path, capsys):
    """An npz with z per frame (padded) through `gdmlc train`: the split, validation of each
    frame's real atoms, the test errors over real atoms only."""
    from runtime.cli import main
    R, F, Z, _ = padded_set()
    data = tmp_path / "mixed.npz"
    np.savez(data, R=R, F=F, z=Z, e_unit=np.array("kcal/mol"), r_unit=np.array("Ang"))
    out = tmp_path / "m.npz"
    assert main(["train", str(data), "--descriptor", "radial_g2", "--kernel", "gaussian", "--sigma", "2",
                 "--lam", "1e-3", "--n-train", "8", "--n-valid", "0", "--n-test", "2", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "up to 9 atoms, 2 compositions" in text and "test errors (2 frames)" in text
    model = GDML.load(out)
    test = np.setdiff1d(np.arange(10), model.info["train_indices"])
    real = Z[test] > 0
    _, F_pred = model.predict(R[test], z=Z[test])
    assert model.info["test"]["force_mae"] == pytest.approx(np.mean(np.abs(F_pred[real] - F[test][real])), rel=1e-12)


def test_ase_calculator_of_a_local_model_takes_other_atoms(trained):
    """GDMLCalculator of a local model: atoms of another composition (elements seen in training)
    get the model's prediction for them."""
    from ase import Atoms

    from runtime.ase_calculator import GDMLCalculator
    model, _, _, _, ds = trained
    atoms = Atoms(numbers=ds.z[SUBSET], positions=ds.R[50][SUBSET])
    atoms.calc = GDMLCalculator(model, energy_unit="kcal/mol", length_unit="Ang")
    _, F = model.predict(ds.R[50][SUBSET], z=ds.z[SUBSET])
    np.testing.assert_allclose(atoms.get_forces(), F / 23.060547830619026, rtol=1e-6)


def test_energies_of_several_compositions_get_per_element_constants():
    """Training energies shifted by c per hydrogen atom (an atomic reference energy) shift every
    prediction by c per hydrogen, whatever the composition; forces do not change."""
    R, F, Z, ds = padded_set()
    E = np.where(mixed.atom_counts(Z) == 9, ds.E[:10], ds.E[:10] * 5 / 9)  # some energy per composition
    shift = 123.0 * (Z == 1).sum(axis=1)
    plain = GDML(both, "gaussian", sigma=SIGMA, lam=1e-3, progress=False).fit(R, F, E, Z)
    shifted = GDML(both, "gaussian", sigma=SIGMA, lam=1e-3, progress=False).fit(R, F, E + shift, Z)
    for atoms in (np.arange(9), SUBSET):
        Q, z = ds.R[30:32][:, atoms], ds.z[atoms]
        (E0, F0), (E1, F1) = plain.predict(Q, z=z), shifted.predict(Q, z=z)
        np.testing.assert_allclose(E1 - E0, 123.0 * (z == 1).sum(), rtol=1e-9)
        np.testing.assert_allclose(F1, F0, rtol=1e-12, atol=1e-12)
