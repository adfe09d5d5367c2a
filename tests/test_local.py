"""Local kernel models (issue 12, item 3): k(x, x') = sum_ij [z_i = z'_j] k(d_i(x), d_j(x')).

References: JAX AD of the JAX lowering for the force blocks (compiler.targets.jax_reference),
a JAX energy written here from the formula for prediction, the assembled dense matrix for the
matrix-free product and CG, and atom permutations (a local model is invariant by construction).
"""
import numpy as np
import pytest

import compiler
from compiler.build.verify import random_geometry
from compiler.dsl import combine, cos, descriptor, dot, exp, norm, pi, where
from numeric import rel

RC = 4.0
ELEMENTS = [1, 6, 8]


@descriptor(over="neighbours", params={"eta": [0.3, 1.2], "rc": RC}, elements=ELEMENTS, cutoff=RC)
def radial(ri, rj, eta, rc):
    """Behler's G2 with a cosine cutoff."""
    r = norm(rj - ri)
    return where(r < rc, exp(-eta * r ** 2) * 0.5 * (cos(pi * r / rc) + 1.0), 0.0)


@descriptor(over="neighbour_pairs", params={"zeta": [1.0, 2.0], "rc": RC}, elements=ELEMENTS, cutoff=RC)
def angular(ri, rj, rk, zeta, rc):
    """An angular term with cosine cutoffs on the two bonds to the centre."""
    rij = norm(rj - ri)
    rik = norm(rk - ri)
    cos_t = dot(rj - ri, rk - ri) / (rij * rik)
    fij = where(rij < rc, 0.5 * (cos(pi * rij / rc) + 1.0), 0.0)
    fik = where(rik < rc, 0.5 * (cos(pi * rik / rc) + 1.0), 0.0)
    return (1.0 + cos_t) ** zeta * exp(-0.1 * (rij ** 2 + rik ** 2)) * fij * fik


both = combine(radial, angular, name="local_test_acsf")


def ethanol():
    from pathlib import Path

    from runtime.data import load_dataset
    return load_dataset(Path(__file__).resolve().parents[1] / "runtime" / "default_data" / "ethanol_gfn2xtb_500K.npz")


@pytest.mark.parametrize("desc, kernel, sigma", [(radial, "gaussian", 1.0), (angular, "matern52", 0.5),
                                                (both, "gaussian", 1.0)])
def test_local_force_block_matches_jax(desc, kernel, sigma):
    """Blocks between geometries of different atom counts and compositions (an element on one side
    only), against JAX's second derivative of sum_ij [z_i = z'_j] k(d_i, d'_j)."""
    model = compiler.compile_model(desc, kernel)
    rng = np.random.default_rng(3)
    for n, n_p, z, zp in [(5, 4, [6, 1, 1, 8, 1], [1, 6, 6, 1]), (4, 4, [8, 8, 1, 6], [6, 1, 8, 1])]:
        x, xp = random_geometry(rng, n, scale=1.0), random_geometry(rng, n_p, scale=1.0)
        block = model.local_force_block(x, xp, z, zp, sigma=sigma)
        assert block.shape == (3 * n, 3 * n_p)
        assert rel(block, model.jax_local_force_block(x, xp, z, zp, sigma=sigma)) <= 1e-10


def test_local_block_of_atoms_without_a_common_element_is_zero():
    model = compiler.compile_model(radial, "gaussian")
    rng = np.random.default_rng(5)
    block = model.local_force_block(random_geometry(rng, 3), random_geometry(rng, 3), [1, 1, 1], [6, 8, 6], sigma=2.0)
    assert np.array_equal(block, np.zeros((9, 9)))


def test_local_model_refuses_a_descriptor_without_atom_vectors():
    from runtime.model import GDML
    with pytest.raises(ValueError, match="descriptor inverse_distances is over pairs, which has no feature vector "
                                         "per atom"):
        GDML("inverse_distances", "gaussian", local=True, progress=False)
    assert not GDML("inverse_distances", "gaussian", progress=False).local  # auto: global for pairs


@pytest.fixture(scope="module")
def trained():
    """A local model (auto: the descriptor is atom-centred) on a few embedded ethanol frames."""
    from runtime.model import GDML
    ds = ethanol()
    model = GDML(both, "gaussian", sigma=1.5, lam=1e-8, progress=False)
    model.fit(ds.R[:8], ds.F[:8], ds.E[:8], ds.z)
    return model, ds


def test_training_matrix_is_the_local_blocks(trained):
    """The assembled matrix's blocks are local_force_block's, and the trained model predicts
    K alpha at its training points."""
    from runtime.assembly import assemble
    from runtime.local import LocalRows
    model, ds = trained
    assert model.local and len(model.perms) == 1
    R, z = ds.R[:8], ds.z
    D, JAC = model.backend.evaluate(R, z)
    K = assemble(LocalRows(model.model, z), D, JAC, model.perms, model.kernel_hyper, len(z), progress=False)
    n3 = 3 * len(z)
    for i, j in [(0, 0), (1, 5), (2, 7)]:
        assert rel(K[i * n3:(i + 1) * n3, j * n3:(j + 1) * n3], model.model.local_force_block(R[i], R[j], z, z,
                                                                                          sigma=1.5)) <= 1e-13
    K = np.triu(K) + np.triu(K, 1).T
    _, F = model.predict(R)
    assert rel(F.ravel(), model.label_scale * (K @ model.alpha.ravel())) <= 1e-8


def test_local_prediction_matches_jax_energy(trained):
    """E(x) = sum_i sum_t [z_i = z_t] (-grad_dp k(d_i, d_t) . beta_t), written here in JAX from the
    training atoms' vectors and coefficients; forces are its negative gradient, Hessians its second
    derivative."""
    import jax
    import jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)
    model, ds = trained
    z = ds.z
    n = len(z)
    site_d = model.model.descriptor.jax_function()
    kernel = model.model.kernel.jax_function()
    DT, BT = model.D_train.reshape(-1, model.D_train.shape[1] // n), model.B_train.reshape(-1, model.D_train.shape[1] // n)
    zt = np.tile(z, len(model.D_train))

    def energy(R):
        sites = site_d(R, z).reshape(n, -1)
        total = 0.0
        for i in range(n):
            same = zt == z[i]
            along = jax.vmap(lambda dt, bt: jax.jvp(lambda dp: kernel(sites[i], dp, sigma=1.5), (dt,), (bt,))[1])
            total = total - along(jnp.asarray(DT[same]), jnp.asarray(BT[same])).sum()
        return total * model.label_scale + model.energy_constant

    R = ds.R[20:23]
    E, F, H = model.predict(R, hessian=True)
    for k in range(len(R)):
        x = jnp.asarray(R[k])
        assert rel(E[k], float(energy(x))) <= 1e-10
        assert rel(F[k], -np.asarray(jax.jacfwd(energy)(x))) <= 1e-10
    reference = np.asarray(jax.jacfwd(jax.jacfwd(energy))(jnp.asarray(R[0]))).reshape(H[0].shape)
    assert rel(H[0], reference) <= 1e-8
    assert np.array_equal(H[0], H[0].T) or rel(H[0], H[0].T) <= 1e-14


def test_local_prediction_is_invariant_under_atom_permutations(trained):
    """Ethanol's atoms 3..8 are hydrogens: swapping two of them swaps their forces, energy unchanged."""
    model, ds = trained
    hydrogens = np.flatnonzero(ds.z == 1)
    perm = np.arange(len(ds.z))
    perm[hydrogens[0]], perm[hydrogens[-1]] = hydrogens[-1], hydrogens[0]
    R = ds.R[30:32]
    E, F = model.predict(R)
    Ep, Fp = model.predict(R[:, perm])
    assert rel(Ep, E) <= 1e-10 and rel(Fp, F[:, perm]) <= 1e-9  # summed in another order: roundoff only


def test_local_cg_solution_equals_dense(trained):
    """CG with the local training product and preconditioner columns against the dense solve."""
    from runtime.model import GDML
    _, ds = trained
    args = dict(sigma=1.5, lam=1e-6, progress=False)
    dense = GDML(both, "gaussian", solver="cholesky", **args).fit(ds.R[:8], ds.F[:8], ds.E[:8], ds.z)
    cg = GDML(both, "gaussian", solver="cg", cg_tol=1e-11, preconditioner_points=4, **args).fit(
        ds.R[:8], ds.F[:8], ds.E[:8], ds.z)
    assert cg.info["solver"] == "cg" and cg.info["cg_iterations"] > 1
    assert rel(cg.alpha, dense.alpha) <= 1e-6
    assert rel(cg.predict(ds.R[20:22])[1], dense.predict(ds.R[20:22])[1]) <= 1e-6


def test_local_model_file_round_trip(trained, tmp_path):
    from runtime.model import GDML
    model, ds = trained
    model.save(tmp_path / "local.npz")
    loaded = GDML.load(tmp_path / "local.npz")
    assert loaded.local
    E, F = model.predict(ds.R[40:43])
    E2, F2 = loaded.predict(ds.R[40:43])
    assert np.array_equal(E, E2) and np.array_equal(F, F2)


@pytest.mark.parametrize("change, message", [
    ({"kernel_scope": np.array("nearby")}, "'kernel_scope' must be 'local' or 'global'"),
    ({"perms": "two"}, "a local model has no symmetries: 'perms' must be the identity alone, but it holds 2"),
])
def test_tampered_local_model_file_is_refused(trained, tmp_path, change, message):
    from runtime.model import GDML
    from runtime.model_file import CHECKSUM_KEY, ModelFileError, checksum
    model, ds = trained
    model.save(tmp_path / "local.npz")
    with np.load(tmp_path / "local.npz") as f:
        arrays = {k: f[k] for k in f.files}
    if change.get("perms") == "two":  # two valid permutations of ethanol's hydrogens
        swapped = np.arange(len(ds.z))
        swapped[[3, 4]] = [4, 3]
        change = {"perms": np.stack([np.arange(len(ds.z)), swapped])}
    arrays.update(change)
    arrays[CHECKSUM_KEY] = np.array(checksum({k: v for k, v in arrays.items() if k != CHECKSUM_KEY}))
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ModelFileError, match=message):
        GDML.load(tmp_path / "bad.npz")


@pytest.fixture(scope="module")
def trained_with_energies():
    """A local model trained on energies and forces jointly (sGDML's E_cstr)."""
    from runtime.model import GDML
    ds = ethanol()
    model = GDML(both, "gaussian", sigma=1.5, lam=1e-6, progress=False, energy_constraints=True)
    model.fit(ds.R[:6], ds.F[:6], ds.E[:6], ds.z)
    return model, ds


def jax_local_kernel(model, z):
    """k(x, x') = sum_ij [z_i = z_j] k(d_i(x), d_j(x')) in JAX, for geometries of the atoms z."""
    site_d, kernel = model.model.descriptor.jax_function(), model.model.kernel.jax_function()
    n = len(z)
    pairs = [(i, j) for i in range(n) for j in range(n) if z[i] == z[j]]

    def k(x, xp):
        d, dp = site_d(x, z).reshape(n, -1), site_d(xp, z).reshape(n, -1)
        return sum(kernel(d[i], dp[j], sigma=model.sigma) for i, j in pairs)
    return k


def test_local_energy_rows_match_jax(trained_with_energies):
    """The joint matrix's energy rows: cov(E_i, E_j) = k(x_i, x_j), cov(F_i, E_j) = -grad_x k."""
    import jax
    import jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)
    from runtime.assembly import assemble
    from runtime.local import LocalRows
    model, ds = trained_with_energies
    R, z, m, n3 = ds.R[:6], ds.z, 6, 3 * len(ds.z)
    D, JAC = model.backend.evaluate(R, z)
    K = assemble(LocalRows(model.model, z), D, JAC, model.perms, model.kernel_hyper, len(z), progress=False,
                 energy_rows=True)
    k = jax_local_kernel(model, z)
    for i, j in [(0, 0), (1, 4), (2, 5)]:
        xi, xj = jnp.asarray(R[i]), jnp.asarray(R[j])
        assert rel(K[n3 * m + i, n3 * m + j], float(k(xi, xj))) <= 1e-12
        grad = -np.asarray(jax.jacfwd(k, argnums=0)(xi, xj)).ravel()
        assert rel(K[i * n3:(i + 1) * n3, n3 * m + j], grad) <= 1e-10


def test_local_energy_weights_in_prediction_match_jax(trained_with_energies):
    """E(x) = sum_m [-alpha_m . grad_x' k(x, x_m) + w_m k(x, x_m)] (times the label scale, plus the
    constant): the JAX local kernel's derivatives against what the model predicts."""
    import jax
    import jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)
    model, ds = trained_with_energies
    k = jax_local_kernel(model, ds.z)
    train = [jnp.asarray(x) for x in ds.R[:6]]

    def energy(x):
        total = sum(-jax.jvp(lambda xp: k(x, xp), (xm,), (jnp.asarray(a),))[1] + w * k(x, xm)
                    for xm, a, w in zip(train, model.alpha, model.energy_weights))
        return total * model.label_scale + model.energy_constant

    R = ds.R[30:32]
    E, F = model.predict(R)
    for q in range(len(R)):
        assert rel(E[q], float(energy(jnp.asarray(R[q])))) <= 1e-9
        assert rel(F[q], -np.asarray(jax.jacfwd(energy)(jnp.asarray(R[q])))) <= 1e-9


def test_local_cg_with_energies_equals_dense(trained_with_energies):
    from runtime.model import GDML
    dense, ds = trained_with_energies
    cg = GDML(both, "gaussian", sigma=1.5, lam=1e-6, progress=False, energy_constraints=True, solver="cg",
              cg_tol=1e-11, preconditioner_points=3).fit(ds.R[:6], ds.F[:6], ds.E[:6], ds.z)
    assert rel(cg.alpha, dense.alpha) <= 1e-6 and rel(cg.energy_weights, dense.energy_weights) <= 1e-6


def test_what_local_models_do_not_have_yet_is_refused(trained):
    from runtime.model import GDML
    with pytest.raises(ValueError, match="CG on a cluster is not available for local models yet"):
        GDML(both, "gaussian", progress=False, cluster="tcp://127.0.0.1:1")
    model, ds = trained
    swap = np.arange(len(ds.z))
    swap[[3, 4]] = [4, 3]
    with pytest.raises(ValueError, match="invariant under atom permutations by construction: it takes no symmetries"):
        GDML(both, "gaussian", sigma=1.5, progress=False, symmetries=np.stack([np.arange(len(ds.z)), swap])).fit(
            ds.R[:3], ds.F[:3], ds.E[:3], ds.z)
    assert not GDML(both, "gaussian", progress=False, local=False).local


def test_unseen_element_is_named():
    from runtime.local import SiteSides
    sides = SiteSides(np.zeros((2, 3 * 4)), np.zeros((2, 3 * 4)), [1, 6, 1])
    with pytest.raises(ValueError, match="atom 2 has atomic number 8, which this local model has no training atoms "
                                         "of \\(it was trained on elements 1, 6\\)"):
        sides.check_elements(np.array([1.0, 6.0, 8.0]))


@pytest.mark.parametrize("flags, expected", [([], "local kernel: atoms of one element compared, no symmetry search"),
                                             (["--global"], "symmetries: auto")])
def test_command_line_trains_a_local_model_for_a_descriptor_over_atoms(tmp_path, capsys, flags, expected):
    from runtime.cli import main
    from runtime.model import GDML
    out = tmp_path / "model.npz"
    code = main(["train", "--descriptor", "radial_g2", "--kernel", "gaussian", "--sigma", "2", "--n-train", "6",
                 "--n-valid", "0", "--n-test", "5", "-o", str(out), *flags])
    assert code == 0
    assert expected in capsys.readouterr().out
    assert GDML.load(out).local is (not flags)
