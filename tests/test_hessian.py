"""Hessian prediction (runtime/hessian.py, the generated hessian_coefficients, project_rows and
add_descriptor_curvature) against independent references: jax.hessian of the JAX lowering of
the same trained model, jax.hessian of the from-scratch JAX reference model
(tests/jax_reference_model.py), central differences of the predicted forces, and the third-order
structure against jax.jacfwd; plus the refusals (a kernel without a third derivative)."""
import jax
import numpy as np
import pytest

from compiler.build.compiled import HessianUnavailableError
from compiler.library import resolve
from compiler.front.parser import parse_kernel
from compiler.front.records import S, T, user_var
from compiler.middle import ir, structure
from compiler.targets import jax_reference
from numeric import rel
from runtime.data import DEFAULT_DATA
from runtime.model import GDML

jax.config.update("jax_enable_x64", True)

TOL = 1e-8  # the bound for H against the JAX Hessian, relative to max |H|


@pytest.fixture(scope="module")
def ethanol():
    data = np.load(DEFAULT_DATA)
    return data["R"], data["F"], data["E"], data["z"]


def trained(ethanol, descriptor, kernel, sigma, energy_constraints=False, symmetries=None, m=10, **hyper):
    R, F, E, z = ethanol
    model = GDML(descriptor=descriptor, kernel=kernel, sigma=sigma, energy_constraints=energy_constraints,
                 symmetries=symmetries, hyper=hyper or None, progress=False,
                 local=False)  # global models; the local ones: tests/test_local.py
    return model.fit(R[:m], F[:m], E[:m], z=z)


def jax_hessian(model, x):
    """d2E/dx2 (3N, 3N) by JAX AD of the JAX lowering of the model's own DSL and training rows."""
    training = model._training
    kernel = model.model.kernel
    energy = jax_reference.prediction_energy_function(
        model.model.descriptor.jax_function(), kernel.jax_function(), training.DT, training.BT, training.WT,
        dict(zip(kernel.hyper_names, training.hyper)))
    n3 = 3 * len(x)
    H = jax.jacfwd(jax.jacfwd(lambda r: energy(r, model.z)))(np.asarray(x, float))
    return np.asarray(H).reshape(n3, n3) * model.label_scale


MODELS = {  # (descriptor, kernel, sigma, energy constraints, symmetries, extra hyperparameters)
    "inverse_distances-gaussian": ("inverse_distances", "gaussian", 3.0, False, None, {}),
    "inverse_distances-matern52-energies-symmetric": ("inverse_distances", "matern52", 10.0, True, "auto", {}),
    "radial_g2-gaussian (neighbours)": ("radial_g2", "gaussian", 2.0, False, None, {}),
    "coulomb_matrix-polynomial (z, t)": ("coulomb_matrix", "polynomial", 60.0, False, None, {"degree": 2.0}),
}


@pytest.mark.parametrize("name", MODELS)
def test_hessian_matches_jax_hessian_of_the_model(ethanol, name):
    descriptor, kernel, sigma, constraints, symmetries, hyper = MODELS[name]
    model = trained(ethanol, descriptor, kernel, sigma, constraints, symmetries, **hyper)
    R = ethanol[0][30:33]  # not training geometries
    E, F, H = model.predict(R, hessian=True)
    E2, F2 = model.predict(R)
    np.testing.assert_array_equal(F, F2)  # hessian=True leaves energies and forces as they were
    assert H.shape == (3, 27, 27)
    for q in range(len(R)):
        assert rel(H[q], jax_hessian(model, R[q])) <= TOL, (name, q)
        assert rel(H[q], H[q].T) <= 1e-10  # symmetric without being made so


def test_hessian_matches_the_independent_reference_model(ethanol):
    """jax.hessian of E(x) = scale * sum_j -grad_x' k(x, x_j) . alpha_j + c written from the math
    in tests/jax_reference_model.py (no gdmlc code), with gdmlc's trained alpha."""
    import jax.numpy as jnp
    import jax_reference_model as ref

    model = trained(ethanol, "inverse_distances", "matern52", 10.0, symmetries="auto")
    perms = jnp.asarray(model.perms)
    alpha, R_train = jnp.asarray(model.alpha), jnp.asarray(model.R_train)

    def energy(x):
        grads = jax.vmap(lambda xp: jax.jacfwd(ref.symmetric_kernel, 1)(x, xp, perms, model.sigma))(R_train)
        return -model.label_scale * jnp.sum(grads * alpha)

    x = ethanol[0][40]
    _, _, H = model.predict(x, hessian=True)
    assert H.shape == (27, 27)
    assert rel(H, np.asarray(jax.jacfwd(jax.jacfwd(energy))(x)).reshape(27, 27)) <= TOL


def test_hessian_is_minus_the_force_derivative_at_a_training_geometry(ethanol):
    """At a training geometry (d = dp for one training point: the s = 0 guards of g_sss) and
    away from one, H = -dF/dx by central differences of the model's own forces."""
    model = trained(ethanol, "inverse_distances", "matern52", 10.0, energy_constraints=True)
    for x in (ethanol[0][0], ethanol[0][50]):
        _, _, H = model.predict(x, hessian=True)
        h = 1e-5
        fd = np.empty_like(H)
        for k in range(H.shape[0]):
            step = np.zeros(H.shape[0])
            step[k] = h
            _, Fp = model.predict(x + step.reshape(-1, 3))
            _, Fm = model.predict(x - step.reshape(-1, 3))
            fd[:, k] = -(Fp - Fm).ravel() / (2 * h)
        assert rel(H, fd) <= 1e-6


@pytest.mark.parametrize("descriptor", ["inverse_distances", "coulomb_matrix", "exponential_decay", "radial_g2",
                                        "erf_coulomb"])
def test_descriptor_curvature_matches_jax(ethanol, descriptor):
    """sum_f W[f] d2 D_f / dx2 (the generated add_descriptor_curvature) against jax.hessian of
    W . D(x) of the JAX lowering, for pair and neighbour-sum descriptors."""
    from compiler import compile_descriptor

    compiled = compile_descriptor(descriptor)
    R, z = ethanol[0][5], ethanol[3]
    W = np.random.default_rng(1).normal(size=compiled.n_features(len(z)))
    H = np.zeros((27, 27))
    compiled.add_curvature(R, z, W, H)
    D = compiled.jax_function()
    reference = jax.jacfwd(jax.jacfwd(lambda x: W @ D(x, z)))(R).reshape(27, 27)  # forward: see verify.py
    assert rel(H, np.asarray(reference)) <= 1e-10


@pytest.mark.parametrize("name", ["gaussian", "matern52", "polynomial"])
def test_prediction_structure_against_jax(name):
    """The structure's prediction_gradient / prediction_hessian (the columns the runtime sums)
    against jax.grad / jax.jacfwd of one training point's energy share
    e(d) = -grad_dp k(d, dp) . beta + w k(d, dp), with the partials from gdmlc AD."""
    hyper = {"gaussian": {"sigma": 0.9}, "matern52": {"sigma": 1.3},
             "polynomial": {"sigma": 2.1, "c": 0.7, "degree": 3.0}}[name]
    kir = parse_kernel(resolve(name, "kernel"))
    kst = structure.KernelStructure(kir.body)
    k = jax_reference.kernel_function(kir)
    rng = np.random.default_rng(3)
    d = rng.uniform(-0.6, 0.6, 7)
    dp, beta, w = d + rng.uniform(-0.5, 0.5, 7), rng.normal(size=7), 0.37

    def share(x):
        return -jax.numpy.dot(jax.jacfwd(lambda y: k(x, y, **hyper))(dp), beta) + w * k(x, dp, **hyper)

    env = {S: np.sum((d - dp) ** 2), T: np.sum(d * dp), structure.ENERGY_WEIGHT: w,
           **{user_var(h): v for h, v in hyper.items()}}
    vectors = {"delta": d - dp, "d": d, "dp": dp, "beta": beta}
    env.update(structure.contractions(vectors))
    for partial in kst.hessian_partials:
        env[partial] = float(ir.evaluate([kst.partial_expr(partial)], env)[0])
    gradient = kst.evaluate("prediction_gradient", env, vectors)
    hessian = kst.evaluate("prediction_hessian", env, vectors)
    assert rel(gradient, np.asarray(jax.grad(share)(d))) <= 1e-10
    assert rel(hessian, np.asarray(jax.jacfwd(jax.grad(share))(d))) <= 1e-10
    # the energy's gradient in d is minus H beta (what force prediction sums)
    assert rel(kst.evaluate("energy_gradient", env, vectors), -kst.evaluate("h_beta", env, vectors)) <= 1e-12


def test_kernel_without_a_third_derivative_is_refused_clearly(ethanol):
    """Matern 3/2 is twice differentiable at d = dp but not three times: forces work, Hessians are
    refused before any work, saying why."""
    model = trained(ethanol, "inverse_distances", "matern32", 10.0, m=6)
    E, F = model.predict(ethanol[0][20])
    assert np.all(np.isfinite(F))
    with pytest.raises(HessianUnavailableError, match="not three times differentiable.*g_ss"):
        model.predict(ethanol[0][20], hessian=True)


def test_hessian_of_bad_geometries_is_a_clear_error(ethanol):
    model = trained(ethanol, "inverse_distances", "gaussian", 3.0, m=6)
    R = ethanol[0][20].copy()
    R[4, 1] = np.nan
    with pytest.raises(ValueError, match="atom 4"):
        model.predict(R, hessian=True)
    with pytest.raises(ValueError):
        model.predict(ethanol[0][20][:5], hessian=True)  # wrong atom count


def test_the_models_above_sum_in_both_spaces():
    """compiler/build/hessian.py sums the rank-one terms in descriptor space or in atom space by
    their flop counts; the parametrised comparisons with JAX above cover both: ethanol's 36 pair
    features (27 coordinates) in descriptor space, radial_g2's 9 x 8 neighbour features in atom space."""
    from compiler import compile_descriptor
    from compiler.build.hessian import ColumnLayout, descriptor_space_is_cheaper

    layout = ColumnLayout.of([name for name, _ in
                              structure.KernelStructure(parse_kernel(resolve("gaussian", "kernel")).body).prediction_columns])
    features = {name: compile_descriptor(name).n_features(9) for name in ("inverse_distances", "radial_g2")}
    assert descriptor_space_is_cheaper(layout, features["inverse_distances"], 27)
    assert not descriptor_space_is_cheaper(layout, features["radial_g2"], 27)
