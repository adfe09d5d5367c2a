"""Training on Hessians (runtime/hessian_training.py, the generated observation_coefficients):
the Hessian-observation rows of the training matrix against JAX AD of the symmetric kernel
(Cov(H, F): third order, Cov(H, H): fourth), a trained model's predictions against a JAX energy
written here from its coefficients, its own training Hessians reproduced, model files, the
command line and the refusals."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compiler import compile_model
from compiler.build.compiled import HessianUnavailableError
from numeric import rel
from runtime import hessian_training as ht
from runtime.cli import main
from runtime.data import DEFAULT_HESSIAN_DATA, load_dataset
from runtime.model import GDML
from runtime.model_file import ModelFileError, checksum

jax.config.update("jax_enable_x64", True)

TOL = 1e-10
Z4 = np.array([8, 1, 1, 6])
X4 = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0], [0.3, -0.5, 1.2]])
PERMS4 = np.array([[0, 1, 2, 3], [0, 2, 1, 3]])  # the two hydrogens swapped


def geometries(count, seed=0, scale=0.05):
    rng = np.random.default_rng(seed)
    return np.stack([X4 + rng.normal(scale=scale, size=X4.shape) for _ in range(count)])


def hessian_rows(model, R, sigma):
    """The training matrix of R (every geometry observed by forces, energies and Hessians), its
    Hessian rows filled by assemble_hessian_rows (the force and energy corner left zero); returns
    K, the first Hessian row, the entries per Hessian T and the first energy row."""
    fperms = model.feature_permutations(PERMS4, 4)
    hyper = model.kernel.hyper(sigma=sigma)
    D, JAC, _ = model.descriptor.evaluate(R, Z4)
    observed = ht.observed_geometries(model, R, Z4, D, JAC)
    n3 = 12
    n_force, T = len(R) * n3, n3 * (n3 + 1) // 2
    first = n_force + len(R)
    K = np.zeros((first + len(R) * T, first + len(R) * T))
    ht.assemble_hessian_rows(model, D, JAC, fperms, hyper, observed, K, n_force, progress=False, energy_rows=True)
    return K, first, T, n_force


@pytest.mark.parametrize("kernel", ["gaussian", "matern52"])
def test_hessian_rows_match_jax(kernel):
    """Cov(H(x_a), F(x_b)) and Cov(H(x_a), H(x_b)) for b >= a, entries r <= s, with a permutation
    group: against JAX's forward-mode derivatives of the symmetric kernel.  JAX's Matern 5/2 is
    NaN at d = d' (x_a = x_b), so there the Gaussian alone is compared; the Matern diagonal block
    is test_matern_diagonal_block_is_the_limit's."""
    model = compile_model("inverse_distances", kernel)
    R = geometries(3)
    K, first, T, n_force = hessian_rows(model, R, sigma=1.7)
    iu, ju = np.triu_indices(12)
    for a in range(3):
        rows = slice(first + a * T, first + (a + 1) * T)
        for b in range(3):
            if kernel == "matern52" and a == b:
                continue
            hf, hh, he = model.jax_hessian_observation_blocks(R[a], R[b], PERMS4, Z4, sigma=1.7)
            assert rel(K[b * 12:(b + 1) * 12, rows].T, hf[iu, ju]) <= TOL, (a, b)
            assert rel(K[n_force + b, rows], he[iu, ju]) <= TOL, (a, b)
            if b >= a:
                columns = slice(first + b * T, first + (b + 1) * T)
                assert rel(K[rows, columns], hh[iu, ju][:, iu, ju]) <= TOL, (a, b)


def test_matern_diagonal_block_is_the_limit():
    """Matern 5/2's Cov(H(x), H(x)) (at d = d': the guarded fourth partials) is the limit of JAX's
    Cov(H(x), H(x + eps u)) as eps -> 0 (the error shrinks linearly in eps)."""
    model = compile_model("inverse_distances", "matern52")
    R = geometries(1)
    K, first, T, _ = hessian_rows(model, R, sigma=1.7)
    ours = K[first:, first:]
    assert np.isfinite(ours).all()
    iu, ju = np.triu_indices(12)
    u = np.random.default_rng(5).normal(size=X4.shape)
    errors = []
    for eps in (1e-3, 1e-4):
        _, hh, _ = model.jax_hessian_observation_blocks(R[0], R[0] + eps * u, PERMS4, Z4, sigma=1.7)
        errors.append(rel(np.triu(ours), np.triu(hh[iu, ju][:, iu, ju])))
    assert errors[1] <= 1e-3 and errors[1] < 0.3 * errors[0], errors


# --------------------------------------------------------------------------- trained models

def potential(x):
    """A smooth pair potential (its forces and Hessians are consistent labels), symmetric under
    PERMS4: harmonic bonds to the reference distances plus a soft repulsion."""
    i, j = np.triu_indices(4, 1)
    r = jnp.linalg.norm(x[i] - x[j], axis=1)
    r0 = np.linalg.norm(X4[i] - X4[j], axis=1)
    return jnp.sum(20.0 * (r - r0) ** 2 + jnp.exp(-2.0 * r))


def potential_labels(R, observed):
    """Energies, forces and the Hessians of the frames ``observed`` of the pair potential at R."""
    E = np.array([potential(jnp.asarray(x)) for x in R])
    F = np.stack([-np.asarray(jax.grad(potential)(jnp.asarray(x))) for x in R])
    H = np.stack([np.asarray(jax.hessian(potential)(jnp.asarray(R[a]))).reshape(12, 12) for a in observed])
    return E, F, H


def trained_on_hessians(sigma=0.3, lam=1e-10, count=3, observed=(0, 2), energy_constraints=False):
    R = geometries(count, seed=1, scale=0.08)
    E, F, H = potential_labels(R, observed)
    model = GDML("inverse_distances", "gaussian", sigma=sigma, lam=lam, symmetries=PERMS4, progress=False,
                 energy_constraints=energy_constraints)
    return model.fit(R, F, E, Z4, H=H, H_frames=np.array(observed)), R, F, H


def jax_symmetric_kernel(model):
    """k(x, x') = sum_P k(D(x), D(x'[P])) in JAX, for the atoms Z4."""
    descriptor = model.model.descriptor.jax_function()
    kernel = model.model.kernel.jax_function()
    perms = [np.asarray(p) for p in model.perms]

    def k(x, xp):
        d = descriptor(x, Z4)
        return sum(kernel(d, descriptor(xp[p], Z4), sigma=model.sigma) for p in perms)

    return k


def jax_energy(model, k):
    """The trained model's energy (unscaled, no constant) written from its coefficients with the
    kernel k (JAX): E(x) = sum_b -grad_x' k(x, x_b) . alpha_b (+ e_b k(x, x_b) with energy weights
    e_b) + sum_a sum_{r<=s} w_a,rs d2k/dx'_r dx'_s (x, x_a)."""
    iu, ju = np.triu_indices(12)

    def energy(x):
        total = 0.0
        for b, (xb, ab) in enumerate(zip(model.R_train, model.alpha)):
            total -= jax.jvp(lambda xp: k(x, xp), (jnp.asarray(xb),), (jnp.asarray(ab),))[1]
            if model.energy_weights is not None:
                total += model.energy_weights[b] * k(x, jnp.asarray(xb))
        for xa, w in zip(model.R_hessian, model.hessian_weights):
            hp = jax.jacfwd(jax.jacfwd(lambda xp: k(x, xp)))(jnp.asarray(xa)).reshape(12, 12)
            total += jnp.sum(hp[iu, ju] * w)
        return total

    return energy


@pytest.mark.parametrize("energy_constraints", [False, True])
def test_prediction_matches_the_jax_energy_of_its_coefficients(energy_constraints):
    """Energies, forces and Hessians of a model trained on forces (and energies) and Hessians (with
    a symmetry) at new geometries, against JAX derivatives of the energy written from its
    coefficients."""
    model, _, _, _ = trained_on_hessians(energy_constraints=energy_constraints)
    energy = jax_energy(model, jax_symmetric_kernel(model))
    Q = geometries(2, seed=7, scale=0.08)
    E, F, H = model.predict(Q, hessian=True)
    for q, x in enumerate(Q):
        x = jnp.asarray(x)
        scale = model.label_scale
        assert rel(E[q] - model.energy_constant, scale * energy(x)) <= TOL
        assert rel(F[q], -scale * np.asarray(jax.grad(energy)(x))) <= TOL
        assert rel(H[q], scale * np.asarray(jax.jacfwd(jax.jacfwd(energy))(x)).reshape(12, 12)) <= 1e-8


@pytest.mark.parametrize("energy_constraints", [False, True])
def test_trained_model_reproduces_its_training_hessians(energy_constraints):
    """With a tiny lambda the model interpolates its observations: the forces of every training
    frame, the Hessians of the observed ones (and the energies, with energy constraints)."""
    model, R, F, H = trained_on_hessians(energy_constraints=energy_constraints)
    E_pred, F_pred, H_pred = model.predict(R, hessian=True)
    assert rel(F_pred, F) <= 1e-7
    assert rel(H_pred[[0, 2]], H) <= 1e-7
    if energy_constraints:
        E = np.array([potential(jnp.asarray(x)) for x in R])
        assert np.abs(E_pred - E).max() <= 1e-7 * np.abs(F).max()


def test_hessians_on_ethanol_improve_force_and_hessian_errors():
    """GFN2-xTB ethanol (the committed Hessian set): 8 frames with Hessians predict 20 other frames'
    forces and Hessians better than the same frames' forces alone (measured: force MAE 14.0 against
    16.6, Hessian MAE 21.8 against 29.6)."""
    ds = load_dataset(DEFAULT_HESSIAN_DATA)
    train, test = ds.subset(np.arange(8)), ds.subset(np.arange(20, 40))
    errors = {}
    for name, hessians in (("forces", None), ("forces+hessians", train.H)):
        model = GDML(kernel="gaussian", sigma=2.0, progress=False)
        model.fit(train.R, train.F, train.E, train.z, H=hessians)
        _, F, H = model.predict(test.R, hessian=True)
        errors[name] = (np.abs(F - test.F).mean(), np.abs(H - test.H).mean())
    assert errors["forces+hessians"][0] < errors["forces"][0], errors
    assert errors["forces+hessians"][1] < errors["forces"][1], errors


def test_model_file_round_trip(tmp_path):
    model, _, _, _ = trained_on_hessians()
    path = tmp_path / "m.npz"
    model.save(path)
    loaded = GDML.load(path)
    assert loaded.state == model.state
    Q = geometries(2, seed=9)
    for a, b in zip(model.predict(Q, hessian=True), loaded.predict(Q, hessian=True)):
        np.testing.assert_array_equal(a, b)


def _rewritten(path, out, change):
    stored = dict(np.load(path))
    change(stored)
    stored["checksum"] = np.array(checksum(stored))
    np.savez(out, **stored)
    return out


def test_model_file_with_bad_hessian_observations_is_refused(tmp_path):
    model, _, _, _ = trained_on_hessians()
    path = tmp_path / "m.npz"
    model.save(path)

    def overlapping(stored):
        stored["R_hessian"] = stored["R_hessian"].copy()
        stored["R_hessian"][0, 1] = stored["R_hessian"][0, 0]

    cases = {"without its partner": lambda stored: stored.pop("hessian_weights"),
             "'hessian_weights'": lambda stored: stored.update(hessian_weights=stored["hessian_weights"][:, :5]),
             "R_hessian": overlapping}
    for expected, change in cases.items():
        with pytest.raises(ModelFileError, match=expected):
            GDML.load(_rewritten(path, tmp_path / "bad.npz", change))


def test_what_training_on_hessians_does_not_have_yet_is_refused():
    R = geometries(2)
    H = np.zeros((2, 12, 12))
    F = np.zeros(R.shape)
    with pytest.raises(ValueError, match="CG solver"):
        GDML("inverse_distances", "gaussian", sigma=2.0, progress=False, solver="cg").fit(R, F, np.zeros(2), Z4, H=H)
    local = GDML("radial_g2", "gaussian", sigma=2.0, progress=False)
    with pytest.raises(ValueError, match="geometries of several compositions"):
        local.fit(R, F, None, np.array([Z4, Z4]), H=H)
    with pytest.raises(HessianUnavailableError, match="fourth derivative"):
        GDML("inverse_distances", "matern32", sigma=2.0, progress=False).fit(R, F, None, Z4, H=H)


def test_cli_trains_on_the_hessians_of_its_training_frames(tmp_path, capsys):
    out = tmp_path / "m.npz"
    args = ["train", str(DEFAULT_HESSIAN_DATA), "--kernel", "gaussian", "--sigma", "2", "--n-train", "4",
            "--n-valid", "0", "--n-test", "4", "-o"]
    assert main(args + [str(out)]) == 0
    assert "4 training frames with Hessians" in capsys.readouterr().out
    assert GDML.load(out).R_hessian.shape == (4, 9, 3)
    assert main(args + [str(tmp_path / "f.npz"), "--no-hessians"]) == 0
    assert "not used in training (--no-hessians)" in capsys.readouterr().err
    assert GDML.load(tmp_path / "f.npz").R_hessian is None


# --------------------------------------------------------------------------- local models

def jax_local_kernel(model):
    """k(x, x') = sum_ij [z_i = z'_j] k(d_i(x), d_j(x')) in JAX, for the atoms Z4."""
    descriptor = model.model.descriptor.jax_function()
    kernel = model.model.kernel.jax_function()
    pairs = [(i, j) for i in range(4) for j in range(4) if Z4[i] == Z4[j]]

    def k(x, xp):
        sites, sites_p = descriptor(x, Z4).reshape(4, -1), descriptor(xp, Z4).reshape(4, -1)
        return sum(kernel(sites[i], sites_p[j], sigma=model.sigma) for i, j in pairs)

    return k


def trained_local(energy_constraints=False):
    from test_local import radial
    R = geometries(3, seed=1, scale=0.08)
    E, F, H = potential_labels(R, (0, 2))
    model = GDML(radial, "gaussian", sigma=0.5, lam=1e-10, progress=False, energy_constraints=energy_constraints)
    return model.fit(R, F, E, Z4, H=H, H_frames=np.array([0, 2])), R, F, H


@pytest.mark.parametrize("energy_constraints", [False, True])
def test_local_model_on_hessians_matches_jax(energy_constraints):
    """A local model trained on forces (and energies) and Hessians: its prediction against the JAX
    energy written from its coefficients with the local kernel, E(x) = sum_b -grad_x' k . alpha_b
    (+ e_b k) + sum_a sum_{r<=s} w_a,rs d2k/dx'_r dx'_s; and it reproduces its training Hessians."""
    model, R, F, H = trained_local(energy_constraints)
    assert model.local
    energy = jax_energy(model, jax_local_kernel(model))

    Q = geometries(1, seed=7, scale=0.08)
    E, F_pred, H_pred = model.predict(Q, hessian=True)
    x = jnp.asarray(Q[0])
    scale = model.label_scale
    # 1e-9: the interpolating fit's coefficients (|alpha| ~ 1e4) cancel in the sums
    assert rel(E[0] - model.energy_constant, scale * energy(x)) <= 1e-9
    assert rel(F_pred[0], -scale * np.asarray(jax.grad(energy)(x))) <= 1e-9
    assert rel(H_pred[0], scale * np.asarray(jax.jacfwd(jax.jacfwd(energy))(x)).reshape(12, 12)) <= 1e-8
    _, F_train, H_train = model.predict(R, hessian=True)
    assert rel(H_train[[0, 2]], H) <= 1e-6 and rel(F_train, F) <= 1e-6


def test_a_non_finite_entry_is_named_by_its_observation():
    """Rows after the force and energy rows are named as Hessian observations and entries."""
    T = 12 * 13 // 2
    where = GDML._matrix_entry(24 + 2 + T + 5, 13, m=2, n_atoms=4, energy_rows=True)
    assert where == " (Hessian observation 1, entry 5 with training frame 1, atom 0 y)"
    assert GDML._matrix_entry(25, 24, m=2, n_atoms=4, energy_rows=True) == \
        " (training frame 1, energy with training frame 0, energy)"
