"""The kernel-structure algebra (compiler/middle/structure.py) against JAX: gradients, the
descriptor-space Hessian, H beta, the energy term and d(H beta)/dd (third order) of library
kernels and of a kernel using both s and t, with the partials of g evaluated from the
kernel's IR by gdmlc's AD; and the structure itself (which terms exist, the powers of delta
the s = 0 guard reads, zero terms folding away)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compiler.middle import ir, structure
from compiler.dsl import dot, exp, kernel, sqdist
from compiler.targets.jax_reference import kernel_function
from compiler.library import resolve
from compiler.front.parser import parse_kernel
from compiler.front.records import S, T, user_var
from numeric import rel

jax.config.update("jax_enable_x64", True)

TOL = 1e-10
F = 7


@kernel
def gaussian_times_polynomial(d, dp, sigma):
    return exp(-sqdist(d, dp) / (2.0 * sigma ** 2)) * (1.0 + dot(d, dp) / sigma ** 2) ** 2


@kernel
def only_s(d, dp, sigma):
    return exp(-sqdist(d, dp) / sigma)


KERNELS = {"matern52": ("matern52", {"sigma": 1.3}), "gaussian": ("gaussian", {"sigma": 0.9}),
           "polynomial": ("polynomial", {"sigma": 2.1, "c": 0.7, "degree": 3.0}),
           "gaussian_times_polynomial": (gaussian_times_polynomial, {"sigma": 1.1})}


def parsed(name):
    spec, hyper = KERNELS[name]
    return parse_kernel(resolve(spec, "kernel")), hyper


def random_point(seed):
    rng = np.random.default_rng(seed)
    d = rng.uniform(-0.6, 0.6, F)
    return d, d + rng.uniform(-0.5, 0.5, F), rng.normal(size=F)


def scalar_env(kst, kir, hyper, d, dp, beta, gamma=None):
    """s, t, the contractions and every partial of g up to fourth order, evaluated from the
    kernel's IR (gdmlc AD + ir.evaluate) at (d, dp)."""
    env = {S: np.sum((d - dp) ** 2), T: np.sum(d * dp), **{user_var(h): v for h, v in hyper.items()}}
    vectors = {"delta": d - dp, "d": d, "dp": dp, "beta": beta, **({} if gamma is None else {"gamma": gamma})}
    env.update(structure.contractions(vectors))
    for order in range(5):
        for k in range(order + 1):
            name = structure.partial_name((S,) * (order - k) + (T,) * k)
            env[name] = float(ir.evaluate([kst.partial_expr(name)], env)[0])
    return env, vectors


@pytest.fixture(scope="module", params=sorted(KERNELS))
def case(request):
    kir, hyper = parsed(request.param)
    k = kernel_function(kir)
    return request.param, kir, hyper, (lambda d, dp: k(d, dp, **hyper))


@pytest.mark.parametrize("seed", [0, 1])
def test_results_match_jax(case, seed):
    name, kir, hyper, k = case
    kst = structure.KernelStructure(kir.body)
    d, dp, beta = random_point(seed)
    env, vectors = scalar_env(kst, kir, hyper, d, dp, beta)

    def hessian(x, xp):
        return jax.jacfwd(jax.grad(k, 0), 1)(x, xp)

    reference = {
        "grad_d": jax.grad(k, 0)(d, dp),
        "grad_dp": jax.grad(k, 1)(d, dp),
        "hessian": hessian(d, dp),
        "h_beta": hessian(d, dp) @ beta,
        "energy_term": -jnp.dot(jax.grad(k, 1)(d, dp), beta),
        "d_h_beta": jax.jacfwd(lambda x: hessian(x, dp) @ beta)(d),
    }
    for result, ref in reference.items():
        got = kst.evaluate(result, env, vectors)
        assert rel(got, np.asarray(ref)) <= TOL, (name, result)


@pytest.mark.parametrize("seed", [0, 1])
def test_observation_results_match_jax(case, seed):
    """A Hessian observation's energy share beta^T (d2k/ddp2) gamma and its gradient and Hessian in
    d (fourth order in k) against JAX."""
    name, kir, hyper, k = case
    kst = structure.KernelStructure(kir.body)
    d, dp, beta = random_point(seed)
    gamma = np.random.default_rng(seed + 10).normal(size=F)
    env, vectors = scalar_env(kst, kir, hyper, d, dp, beta, gamma)

    def share(x):
        return beta @ jax.hessian(k, 1)(x, dp) @ gamma

    reference = {"observation_term": share(d), "observation_gradient": jax.grad(share)(d),
                 "observation_hessian": jax.hessian(share)(d)}
    for result, ref in reference.items():
        got = kst.evaluate(result, env, vectors)
        assert rel(got, np.asarray(ref)) <= TOL, (name, result)


def test_hessian_terms_are_the_hand_formula():
    """(g_t - 2 g_s) I - 4 g_ss delta delta^T + 2 g_st delta d^T - 2 g_st dp delta^T + g_tt dp d^T,
    checked symbolically by evaluating both at random values of the partials."""
    h = structure.KernelStructure().hessian
    assert set(h.terms) == {("delta", "delta"), ("delta", "d"), ("dp", "delta"), ("dp", "d")}
    rng = np.random.default_rng(3)
    g = {n: rng.normal() for n in ("g_s", "g_t", "g_ss", "g_st", "g_tt")}
    value = lambda e: float(ir.evaluate([e], g)[0])
    assert np.isclose(value(h.identity), g["g_t"] - 2 * g["g_s"], rtol=1e-15)
    expected = {("delta", "delta"): -4 * g["g_ss"], ("delta", "d"): 2 * g["g_st"],
                ("dp", "delta"): -2 * g["g_st"], ("dp", "d"): g["g_tt"]}
    for key, ref in expected.items():
        assert np.isclose(value(h.terms[key]), ref, rtol=1e-15), key


@pytest.mark.parametrize("name, pairs, partials", [
    ("matern52", {("delta", "delta")}, ("g_s", "g_ss")),
    ("gaussian", {("delta", "delta")}, ("g_s", "g_ss")),
    ("polynomial", {("dp", "d")}, ("g_t", "g_tt")),
    ("gaussian_times_polynomial", {("delta", "delta"), ("delta", "d"), ("dp", "delta"), ("dp", "d")},
     ("g_s", "g_t", "g_ss", "g_st", "g_tt")),
])
def test_terms_present_per_kernel(name, pairs, partials):
    """Only the rank-one terms whose partials are structurally nonzero exist (matern52: no d or dp
    terms), and the generated code receives exactly the partials those terms use."""
    kst = structure.KernelStructure(parsed(name)[0].body)
    assert set(kst.hessian.terms) == pairs
    assert kst.partials == partials


def test_zero_terms_fold_away():
    """A kernel of s alone: g_t appears nowhere, at any order, and no vector is along d or dp."""
    kst = structure.KernelStructure(parse_kernel(resolve(only_s, "kernel")).body)
    for result in ("grad_d", "grad_dp", "hessian", "h_beta", "energy_term", "d_h_beta"):
        used = structure.partials_needed([getattr(kst, result)])
        assert not any("t" in name[2:] for name in used), (result, used)
    assert set(kst.grad_d.terms) == {"delta"} and set(kst.h_beta.terms) == {"beta", "delta"}
    assert "d_beta" not in ir.free_variables([kst.energy_term])


def test_delta_powers_for_the_s0_guard():
    """The power of delta multiplying each partial, read from the terms of the emitted results."""
    kst = structure.KernelStructure()
    results = [kst.hessian, kst.h_beta, kst.energy_term]
    table = {p: structure.delta_power(results, p) for p in ("g_s", "g_t", "g_ss", "g_st", "g_tt")}
    assert table == {"g_s": 0, "g_t": 0, "g_ss": 2, "g_st": 1, "g_tt": 0}
    # alone, the energy multiplies g_s by delta . beta (power 1) and the gradient by delta
    assert structure.delta_power([kst.energy_term], "g_s") == 1
    assert structure.delta_power([kst.grad_d], "g_s") == 1
    assert structure.delta_power([kst.grad_d], "g_ss") is None
    # third order: g_sss multiplies delta delta^T times delta . beta
    assert structure.delta_power([kst.d_h_beta], "g_sss") == 3


def test_partial_names():
    assert structure.partial_name(()) == "g"
    assert structure.partial_name(("t", "s", "s")) == "g_sst"
    assert structure.partial_index("g_sst") == ("s", "s", "t")
    assert structure.partial_index("u_g_s") is None and structure.partial_index("delta_beta") is None


def test_only_beta_is_contracted():
    kst = structure.KernelStructure()
    with pytest.raises(ValueError, match="beta"):
        structure.dot(kst.grad_d, "d")
    with pytest.raises(ValueError, match="wrt"):
        structure.gradient(ir.var("g"), "beta")
