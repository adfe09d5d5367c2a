"""benchmarks/jax_paper.py: the paper's JAX approach (dense and contraction modes).

Small synthetic molecule: 5 atoms (C, O, 3 H), 10 training and 6 held-out geometries
(0.1 Å Gaussian displacements of one structure), energies and forces from an analytic
anharmonic pair potential (so the labels are conservative), 2 permutations (identity and
the swap of H2/H3), sigma = 1, lam = 1e-10.  References: gdmlc's ``runtime.GDML`` (compiled
Numba kernels) and the independent dense ``jax_reference_model`` (training matrix).  At this
sigma the two implementations agree to ~1e-13 (see the module doc of test_runtime_model for
how lam = 1e-10 amplifies matrix round-off at larger sigma).
"""
import numpy as np
import pytest

import jax

import runtime
from benchmarks.jax_paper import JaxPaperModel, matern52_of_s

import jax_reference_model as ref_model
from numeric import rel

Z = np.array([6, 8, 1, 1, 1])
BASE = np.array([[0.0, 0.0, 0.0], [1.4, 0.0, 0.0], [-0.5, 0.9, 0.0],
                 [-0.5, -0.45, 0.8], [-0.5, -0.45, -0.8]])
PERMS = np.array([[0, 1, 2, 3, 4], [0, 1, 3, 2, 4]])
SIGMA, LAM = 1.0, 1e-10
M_TRAIN = 10
_I, _J = np.triu_indices(5, 1)


def potential(R):
    """Anharmonic pair potential around BASE: energies (M,), forces (M, 5, 3)."""
    r0 = np.linalg.norm(BASE[_I] - BASE[_J], axis=1)
    d = R[:, _I] - R[:, _J]
    r = np.linalg.norm(d, axis=-1)
    E = 0.5 * np.sum(10 * (r - r0) ** 2 + 3 * (r - r0) ** 3, axis=1)
    g = (10 * (r - r0) + 4.5 * (r - r0) ** 2)[..., None] * d / r[..., None]
    G = np.zeros_like(R)
    np.add.at(G, (slice(None), _I), g)
    np.add.at(G, (slice(None), _J), -g)
    return E, -G


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    R = BASE + 0.1 * rng.standard_normal((M_TRAIN + 6, 5, 3))
    E, F = potential(R)
    return R, F, E


@pytest.fixture(scope="module")
def models(data):
    R, F, E = data
    return {mode: JaxPaperModel(Z, PERMS, SIGMA, mode=mode).fit(R[:M_TRAIN], F[:M_TRAIN], E[:M_TRAIN], lam=LAM)
            for mode in ("dense", "contraction")}


@pytest.fixture(scope="module")
def reference(data):
    R, F, E = data
    return ref_model.ReferenceGDML(SIGMA, lam=LAM, perms=PERMS).fit(R[:M_TRAIN], F[:M_TRAIN], E[:M_TRAIN])


@pytest.fixture(scope="module")
def gdmlc_model(data):
    R, F, E = data
    return runtime.GDML("inverse_distances", "matern52", sigma=SIGMA, lam=LAM, symmetries=PERMS,
                        progress=False).fit(R[:M_TRAIN], F[:M_TRAIN], E[:M_TRAIN], Z)


def test_potential_forces_are_minus_gradient(data):
    """The synthetic labels themselves are conservative (else the fixtures mean little)."""
    R = data[0][:1]
    _, F = potential(R)
    h = 1e-6
    for atom, k in [(0, 0), (2, 1), (4, 2)]:
        Rp, Rm = R.copy(), R.copy()
        Rp[0, atom, k] += h
        Rm[0, atom, k] -= h
        fd = -(potential(Rp)[0] - potential(Rm)[0])[0] / (2 * h)
        assert fd == pytest.approx(F[0, atom, k], rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("mode", ["dense", "contraction"])
def test_training_matrix_matches_independent_reference(data, models, reference, mode):
    R = data[0][:M_TRAIN]
    K = models[mode].assemble(R)
    assert K.shape == (3 * 5 * M_TRAIN,) * 2 and K.dtype == np.float64
    assert rel(K, reference.K) < 1e-12
    n3 = 15  # diagonal blocks (d == d' for the identity term) are the closed form, finite
    assert np.abs(K - K.T).max() < 1e-12 * np.abs(K).max()
    assert np.abs(np.diag(K)).min() > 0 and np.isfinite(K[:n3, :n3]).all()


def test_order_of_permutations_does_not_matter(data, models):
    """Identity not first: the contraction path takes the row-side Jacobians separately."""
    R = data[0][:M_TRAIN]
    model = JaxPaperModel(Z, PERMS[::-1], SIGMA, mode="contraction")
    model.warmup(R)
    assert rel(model.assemble(R), models["dense"].assemble(R)) < 1e-13


@pytest.mark.parametrize("frames", ["held_out", "training"])
def test_modes_agree_with_each_other_and_with_gdmlc(data, models, gdmlc_model, frames):
    R = data[0]
    idx = slice(M_TRAIN, None) if frames == "held_out" else slice(0, M_TRAIN)
    E_g, F_g = gdmlc_model.predict(R[idx])
    E_d, F_d = models["dense"].predict(R[idx])
    E_c, F_c = models["contraction"].predict(R[idx])
    assert F_d.shape == F_g.shape and E_d.shape == E_g.shape
    for E, F in ((E_d, F_d), (E_c, F_c)):
        assert rel(F, F_g) <= 1e-8
        assert rel(E, E_g) <= 1e-8
        assert rel(E - E.mean(), E_g - E_g.mean()) <= 1e-8
    assert rel(F_d, F_c) <= 1e-8 and rel(E_d, E_c) <= 1e-8
    for mode in models:
        assert models[mode].energy_constant == pytest.approx(gdmlc_model.energy_constant, rel=1e-8, abs=1e-10)


def test_model_learns_the_potential(data, models):
    """Not vacuous: the fitted model is close to the labels, and far from an untrained guess."""
    R, F, E = data
    E_p, F_p = models["contraction"].predict(R[M_TRAIN:])
    err = np.abs(F_p - F[M_TRAIN:]).mean()
    assert err < 0.6 * np.abs(F[M_TRAIN:]).mean()
    _, F_train = models["dense"].predict(R[:M_TRAIN])
    assert rel(F_train, F[:M_TRAIN]) < 1e-4  # lam = 1e-10 interpolates the training forces


@pytest.mark.parametrize("mode", ["dense", "contraction"])
def test_forces_are_minus_energy_gradient(data, models, mode):
    model = models[mode]
    x = data[0][M_TRAIN + 1]
    _, F = model.predict(x[None])
    h = 1e-5
    steps = np.zeros((15, 5, 3))
    steps.reshape(15, 15)[np.arange(15), np.arange(15)] = h  # one coordinate per row
    displaced = np.concatenate([x + steps, x - steps])  # predicted in batches of M_TRAIN: the
    E2 = np.concatenate([model.predict(displaced[i:i + M_TRAIN])[0]  # shape compiled in fit
                         for i in range(0, 30, M_TRAIN)])
    fd = (-(E2[:15] - E2[15:]) / (2 * h)).reshape(5, 3)
    assert np.abs(fd - F[0]).max() <= 1e-6 * np.abs(F).max(), (fd, F[0])


def test_matern_derivatives_in_s_are_exact_and_finite_at_zero():
    sigma = 1.7
    a = np.sqrt(5.0) / sigma
    g = matern52_of_s(sigma)
    g1, g2 = jax.grad(g), jax.grad(jax.grad(g))
    for s in (0.3, 2.0):
        h = 1e-5
        assert float(g1(s)) == pytest.approx((float(g(s + h)) - float(g(s - h))) / (2 * h), rel=1e-8)
        assert float(g2(s)) == pytest.approx((float(g1(s + h)) - float(g1(s - h))) / (2 * h), rel=1e-7)
    assert float(g(0.0)) == 1.0
    assert float(g1(0.0)) == pytest.approx(-a * a / 6, rel=1e-15)
    assert float(g2(0.0)) == pytest.approx(a ** 4 / 12, rel=1e-15)


def test_warmup_compiles_once_and_later_calls_do_not_recompile(data):
    R, F, E = data
    model = JaxPaperModel(Z, PERMS, SIGMA, mode="contraction")
    seconds = model.warmup(R[:M_TRAIN])
    assert seconds > 0 and "assemble_rows_contraction" in model.compile_times
    model.fit(R[:M_TRAIN], F[:M_TRAIN])  # no energies: relative energies, no constant
    assert len(model.compile_times["assemble_rows_contraction"]) == 1  # warm-up was reused
    assert model.energy_constant is None
    model.warmup(R[:3])
    n = len(model.compile_times["predict_contraction"])
    model.predict(R[3:6])
    model.predict(R[6:9])
    assert len(model.compile_times["predict_contraction"]) == n
    assert set(model.timings) == {"assemble_s", "solve_s", "fit_s"}


def test_bad_input_is_refused(data, models):
    R, F, E = data
    with pytest.raises(ValueError, match="mode"):
        JaxPaperModel(Z, PERMS, SIGMA, mode="sparse")
    with pytest.raises(ValueError, match="sigma"):
        JaxPaperModel(Z, PERMS, -1.0)
    with pytest.raises(ValueError, match="species"):
        JaxPaperModel(Z, [[1, 0, 2, 3, 4]], SIGMA)
    with pytest.raises(ValueError, match="not a permutation"):
        JaxPaperModel(Z, [[0, 0, 2, 3, 4]], SIGMA)
    with pytest.raises(ValueError, match=r"perms: expected shape \(P, 5\)"):
        JaxPaperModel(Z, [[0, 1, 2, 3]], SIGMA)
    model = JaxPaperModel(Z, PERMS, SIGMA, mode="dense")
    with pytest.raises(RuntimeError, match="not trained"):
        model.predict(R[:2])
    with pytest.raises(ValueError, match="F_train"):
        model.fit(R[:4], F[:3])
    with pytest.raises(ValueError, match="E_train"):
        model.fit(R[:4], F[:4], E[:3])
    with pytest.raises(ValueError, match=r"\(M, 5, 3\)"):
        models["dense"].predict(R[:2, :4])
    bad = R[:2].copy()
    bad[1, 3, 0] = np.nan
    with pytest.raises(ValueError, match="frame 1, atom 3"):
        models["contraction"].predict(bad)
    with pytest.raises(ValueError, match="lam"):
        model.fit(R[:4], F[:4], lam=-1.0)
