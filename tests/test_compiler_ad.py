"""gdmlc's own AD (compiler.middle.ad) on IR, to fourth order and in every mode
combination, against JAX AD of hand-written functions and closed forms."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import compiler
from compiler.middle import ad, ir
from compiler.library import resolve
from compiler.front.parser import parse_descriptor, parse_kernel
from compiler.front.records import POSITION_VARS, user_var

jax.config.update("jax_enable_x64", True)

TOL = 1e-10
MODE_CHOICES = [None, ["forward"] * 4, ["reverse"] * 4, ["forward", "reverse", "reverse", "forward"],
                ["reverse", "reverse", "forward", "forward"]]


def close(value, reference, tol=TOL):
    value, reference = np.asarray(value, float), np.asarray(reference, float)
    assert value.shape == reference.shape
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(reference))
    return float(np.abs(value - reference).max()) <= tol * float(np.abs(reference).max())


def irname(name):
    """The IR variable of a DSL name: s, t, positions and zi/zj as they are; parameters and
    hyperparameters prefixed."""
    return name if name in ("s", "t", "zi", "zj", *POSITION_VARS) else user_var(name)


def evaluate(expr, **env):
    (value,) = ir.evaluate([expr], {irname(k): v for k, v in env.items()})
    return np.asarray(value, dtype=float)


# --------------------------------------------------------------------------- kernels, 4th order

def matern52_g(s, sigma):
    a = jnp.sqrt(5.0) / sigma
    return (1.0 + a * jnp.sqrt(s) + a ** 2 * s / 3.0) * jnp.exp(-a * jnp.sqrt(s))


def nth_grad(f, n, argnums=0):
    for _ in range(n):
        f = jax.grad(f, argnums=argnums)
    return f


@pytest.fixture(scope="module")
def matern52_ir():
    from descriptors.matern52 import matern52
    kir = parse_kernel(matern52)
    assert kir.hyper_names == ("sigma",)
    assert ir.free_variables([kir.body]) == {"s", irname("sigma")}
    return kir


@pytest.mark.parametrize("modes", MODE_CHOICES, ids=lambda m: "default" if m is None else "-".join(m))
def test_matern52_fourth_derivative_in_s(matern52_ir, modes):
    expr = ad.derivative(matern52_ir.body, ["s"] * 4, modes)
    ref = nth_grad(matern52_g, 4)(0.7, 1.3)
    assert close(evaluate(expr, s=0.7, sigma=1.3), ref)
    # ir.evaluate broadcasts: several points at once
    s = np.array([0.05, 0.7, 2.3, 9.0])
    ref = jax.vmap(nth_grad(matern52_g, 4), in_axes=(0, None))(s, 1.3)
    assert close(evaluate(expr, s=s, sigma=1.3), ref)


def test_matern52_all_orders_and_sigma(matern52_ir):
    """Orders 0..3 in s, and mixed with the hyperparameter sigma."""
    for order in range(4):
        expr = ad.derivative(matern52_ir.body, ["s"] * order)
        assert close(evaluate(expr, s=0.7, sigma=1.3), nth_grad(matern52_g, order)(0.7, 1.3))
    for variables in (["s", "sigma"], ["sigma", "s", "s"], ["s", "sigma", "sigma", "s"]):
        expr = ad.derivative(matern52_ir.body, [irname(v) for v in variables])
        f = matern52_g
        for v in variables:
            f = jax.grad(f, argnums=0 if v == "s" else 1)
        assert close(evaluate(expr, s=0.7, sigma=1.3), f(0.7, 1.3)), variables


def test_polynomial_fourth_derivative_in_t():
    from descriptors.polynomial import polynomial
    kir = parse_kernel(polynomial)
    assert kir.hyper_defaults == {"c": 1.0, "degree": 2.0}
    env = dict(t=0.9, sigma=1.3, c=1.0)
    for modes in MODE_CHOICES:
        expr = ad.derivative(kir.body, ["t"] * 4, modes)
        # closed form: degree (degree-1) (degree-2) (degree-3) (c + t/sigma^2)^(degree-4) / sigma^8
        p = 5.5
        closed = p * (p - 1) * (p - 2) * (p - 3) * (1.0 + 0.9 / 1.3 ** 2) ** (p - 4) / 1.3 ** 8
        assert close(evaluate(expr, degree=p, **env), closed)
        assert evaluate(expr, degree=2.0, **env) == 0.0  # a quadratic has no 4th derivative
        assert ir.free_variables([expr]) <= {irname(v) for v in ("t", "sigma", "c", "degree")}
    # s does not occur: every derivative in s is structurally zero
    assert ad.derivative(kir.body, ["s", "t"]) is ir.ZERO
    assert ad.derivative(kir.body, ["t", "s"], ["forward", "forward"]) is ir.ZERO


def mixed_st_g(s, t, sigma, c=0.5):
    return jnp.exp(-s / (2 * sigma ** 2)) * (c + t / sigma ** 2) ** 3 + jnp.sin(jnp.sqrt(s) * t / sigma)


@pytest.mark.parametrize("variables", [["s", "t", "s", "t"], ["t", "t", "t", "s"], ["s", "s", "t", "sigma"]])
def test_mixed_fourth_derivative_of_a_dsl_kernel(dsl_samples, variables):
    dsl = resolve(f"{dsl_samples / 'ad_kernels.py'}:mixed_st", "kernel")
    kir = parse_kernel(dsl)
    assert ir.free_variables([kir.body]) == {irname(v) for v in ("s", "t", "sigma", "c")}
    f = mixed_st_g
    for v in variables:
        f = jax.grad(f, argnums="st".index(v) if v in "st" else 2)
    point = dict(s=0.6, t=1.7, sigma=1.1, c=0.5)
    ref = f(point["s"], point["t"], point["sigma"], point["c"])
    for modes in itertools.product(["forward", "reverse"], repeat=4):
        expr = ad.derivative(kir.body, [irname(v) for v in variables], list(modes))
        assert close(evaluate(expr, **point), ref), modes


def test_derivative_rejects_unknown_mode(matern52_ir):
    with pytest.raises(ValueError, match="forward.*reverse"):
        ad.derivative(matern52_ir.body, ["s"], ["sideways"])


# --------------------------------------------------------------------------- descriptor bodies

def g2_term(ri, rj, eta, rs, rc):
    r = jnp.sqrt(jnp.sum((ri - rj) ** 2))
    return jnp.where(r < rc, jnp.exp(-eta * (r - rs) ** 2) * 0.5 * (jnp.cos(jnp.pi * r / rc) + 1.0), 0.0)


def coulomb_term(ri, rj, zi, zj):
    return zi * zj / jnp.sqrt(jnp.sum((ri - rj) ** 2))


@pytest.mark.parametrize("name", ["radial_g2", "coulomb_matrix"])
def test_forward_and_reverse_gradients_agree_on_descriptor_bodies(name):
    dir_ = parse_descriptor(resolve(name, "descriptor"))
    body = dir_.body
    reverse = ad.vjp(body, list(POSITION_VARS))
    forward = [ad.jvp([body], {v: 1.0})[0] for v in POSITION_VARS]
    # a direction mixing all coordinates at once
    direction = dict(zip(POSITION_VARS, [0.3, -1.2, 0.7, 2.0, 0.1, -0.4]))
    (directional,) = ad.jvp([body], direction)

    rng = np.random.default_rng(0)
    m = 64
    ri = rng.uniform(-3, 3, (m, 3))
    rj = rng.uniform(-3, 3, (m, 3))
    env = {f"ri_{k}": ri[:, k] for k in range(3)} | {f"rj_{k}": rj[:, k] for k in range(3)}
    if name == "radial_g2":
        params = dict(eta=4.0, rs=1.6, rc=5.0)
        ref = jax.vmap(jax.grad(g2_term, argnums=(0, 1)), in_axes=(0, 0, None, None, None))(
            ri, rj, params["eta"], params["rs"], params["rc"])
        assert (np.linalg.norm(ri - rj, axis=1) > 5.0).any()  # both where() branches are hit
    else:
        params = dict(zi=6.0, zj=8.0)
        ref = jax.vmap(jax.grad(coulomb_term, argnums=(0, 1)), in_axes=(0, 0, None, None))(
            ri, rj, params["zi"], params["zj"])
    env.update(params)
    ref = np.concatenate([np.asarray(ref[0]), np.asarray(ref[1])], axis=1)  # (m, 6)
    rev = np.stack([np.broadcast_to(evaluate(e, **env), (m,)) for e in reverse], axis=1)
    fwd = np.stack([np.broadcast_to(evaluate(e, **env), (m,)) for e in forward], axis=1)
    assert close(rev, ref) and close(fwd, ref)
    assert np.max(np.abs(rev - fwd)) <= 1e-13 * np.abs(ref).max()
    assert close(np.broadcast_to(evaluate(directional, **env), (m,)),
                 ref @ np.array(list(direction.values())))


def test_descriptor_body_third_derivatives():
    """Forward-over-reverse-over-forward on the G2 body vs JAX."""
    dir_ = parse_descriptor(resolve("radial_g2", "descriptor"))
    ri, rj = np.array([0.1, 0.4, -0.2]), np.array([1.3, -0.5, 0.9])
    env = {f"ri_{k}": ri[k] for k in range(3)} | {f"rj_{k}": rj[k] for k in range(3)}
    env.update(eta=4.0, rs=1.2, rc=5.0)
    T3 = jax.jacfwd(jax.jacrev(jax.grad(g2_term, argnums=0), argnums=1), argnums=0)(ri, rj, 4.0, 1.2, 5.0)
    for (a, b, c) in [(0, 0, 0), (1, 2, 0), (2, 1, 1)]:
        expr = ad.derivative(dir_.body, [f"ri_{a}", f"rj_{b}", f"ri_{c}"], ["forward", "reverse", "forward"])
        assert close(evaluate(expr, **env), T3[a, b, c])


# --------------------------------------------------------------------------- coefficients at s = 0

SIGMAS = [0.3, 1.3, 17.0]


@pytest.mark.parametrize("sigma", SIGMAS)
def test_matern52_coefficients_at_zero(sigma):
    kern = compiler.compile_model("inverse_distances", "matern52").kernel
    c = kern.coefficients(0.0, 0.0, sigma=sigma)
    # g(s) = 1 - a^2 s / 6 + a^4 s^2 / 24 + O(s^(5/2)), a^2 = 5 / sigma^2
    assert abs(c["g_s"] - (-5.0 / (6.0 * sigma ** 2))) <= 1e-12 * 5.0 / (6.0 * sigma ** 2)
    assert abs(c["g_ss"] - 25.0 / (12.0 * sigma ** 4)) <= 1e-12 * 25.0 / (12.0 * sigma ** 4)
    assert set(c) == {"g_s", "g_ss"}  # g_t, g_st, g_tt structurally zero: not even computed


@pytest.mark.parametrize("sigma", SIGMAS)
def test_other_kernels_coefficients_at_zero(sigma):
    c = compiler.compile_model("inverse_distances", "matern32").kernel.coefficients(0.0, 0.0, sigma=sigma)
    # g(s) = 1 - a^2 s / 2 + a^3 s^(3/2) / 3 + ..., a^2 = 3 / sigma^2: g_ss ~ s^(-1/2) is only
    # ever used times delta delta^T, so it must come out finite at s = 0.
    assert abs(c["g_s"] - (-1.5 / sigma ** 2)) <= 1e-12 * 1.5 / sigma ** 2
    assert np.isfinite(c["g_ss"])
    assert set(c) == {"g_s", "g_ss"}

    c = compiler.compile_model("inverse_distances", "gaussian").kernel.coefficients(0.0, 0.0, sigma=sigma)
    assert abs(c["g_s"] - (-0.5 / sigma ** 2)) <= 1e-12 * 0.5 / sigma ** 2
    assert abs(c["g_ss"] - 0.25 / sigma ** 4) <= 1e-12 * 0.25 / sigma ** 4

    # polynomial (1 + t / sigma^2)^2 at t = 0: g_t = 2 / sigma^2, g_tt = 2 / sigma^4
    c = compiler.compile_model("inverse_distances", "polynomial").kernel.coefficients(0.0, 0.0, sigma=sigma)
    assert set(c) == {"g_t", "g_tt"}  # g_s, g_ss, g_st structurally zero
    assert abs(c["g_t"] - 2.0 / sigma ** 2) <= 1e-12 * 2.0 / sigma ** 2
    assert abs(c["g_tt"] - 2.0 / sigma ** 4) <= 1e-12 * 2.0 / sigma ** 4


@pytest.mark.parametrize("name", ["matern52", "matern32", "gaussian"])
def test_coefficients_away_from_zero_match_jax(name):
    """g_s and g_ss at s > 0 (including tiny s, where the simplified forms must
    not lose accuracy) against JAX derivatives of the hand-written g(s)."""
    kern = compiler.compile_model("inverse_distances", name).kernel
    sigma = 1.3

    def g(s):
        if name == "gaussian":
            return jnp.exp(-s / (2 * sigma ** 2))
        a = jnp.sqrt(5.0 if name == "matern52" else 3.0) / sigma
        u = a * jnp.sqrt(s)
        return (1 + u + u * u / 3) * jnp.exp(-u) if name == "matern52" else (1 + u) * jnp.exp(-u)

    for s in [1e-3, 0.25, 0.7, 4.0, 30.0]:
        c = kern.coefficients(s, 0.0, sigma=sigma)
        assert close(c["g_s"], jax.grad(g)(s))
        assert close(c["g_ss"], jax.grad(jax.grad(g))(s))
    # near s = 0 the coefficients approach their limits (the JAX reference is
    # inaccurate there: AD through sqrt(s))
    g_s0, g_ss0 = (kern.coefficients(0.0, 0.0, sigma=sigma)[n] for n in ("g_s", "g_ss"))
    g_s, g_ss = (kern.coefficients(1e-14, 0.0, sigma=sigma)[n] for n in ("g_s", "g_ss"))
    assert abs(g_s - g_s0) <= 1e-6 * abs(g_s0)
    if name != "matern32":
        assert abs(g_ss - g_ss0) <= 1e-6 * abs(g_ss0)
