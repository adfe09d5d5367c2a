"""The built-in descriptors and kernels against independent JAX references.

Compiled (Numba) values and derivatives are compared with JAX AD of the JAX
lowering of the same DSL source, and the JAX lowering itself with hand-written
jax.numpy versions of every library entry, so a wrong parse, a wrong AD rule, a
wrong simplification or a wrong generated loop each shows up.
"""
from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import compiler
from compiler.library import LIBRARY_DESCRIPTORS, LIBRARY_KERNELS
from numeric import element_resolved, rel

jax.config.update("jax_enable_x64", True)

TOL = 1e-10
# Every library descriptor but the element-resolved ones (ACSF, FCHL19), whose independent references
# are their peers, dscribe and qmllib, in tests/test_reference_descriptors.py (with check_model vs JAX).
HAND_CHECKED = tuple(name for name in LIBRARY_DESCRIPTORS if not element_resolved(name))
Z_ETHANOL = np.array([6, 6, 8, 1, 1, 1, 1, 1, 1])
SETTINGS = settings(max_examples=10, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# Atoms on a jittered 4x3x3 grid, 1.5 Å apart, jitter <= 0.35 Å per axis:
# every distance is >= 1.5 - 2 * 0.35 = 0.8 Å, the largest about 6.3 Å, so
# radial_g2's cutoff (5 Å) is crossed in some draws.
GRID = 1.5 * np.array([(a, b, c) for a in range(4) for b in range(3) for c in range(3)], dtype=float)


@st.composite
def geometries(draw, n_min=3, n_max=7):
    n = draw(st.integers(n_min, n_max))
    sites = draw(st.lists(st.integers(0, len(GRID) - 1), min_size=n, max_size=n, unique=True))
    jitter = draw(arrays(np.float64, (n, 3), elements=st.floats(-0.35, 0.35)))
    R = GRID[sites] + jitter
    dist = np.linalg.norm(R[:, None] - R[None], axis=-1) + 10 * np.eye(n)
    assert dist.min() >= 0.8 - 1e-12
    return R


def z_for(name, n):
    return Z_ETHANOL[:n] if name == "coulomb_matrix" else None


@lru_cache(maxsize=None)
def descriptor(name):
    return compiler.compile_descriptor(name)


@lru_cache(maxsize=None)
def kernel(name):
    return compiler.compile_kernel(name)


@lru_cache(maxsize=None)
def jax_descriptor(name):
    return descriptor(name).jax_function()


def _values_and_jacobian(fn):
    """jit(R, z -> (fn(R, z), d fn / dR)): one XLA program per shape, far cheaper
    than op-by-op JAX when hypothesis draws many atom counts."""
    return jax.jit(lambda R, z: (fn(R, z), jax.jacfwd(fn, argnums=0)(R, z)))


@lru_cache(maxsize=None)
def lowered_reference(name):
    return _values_and_jacobian(jax_descriptor(name))


@lru_cache(maxsize=None)
def hand_reference(name):
    return _values_and_jacobian(HAND_DESCRIPTORS[name])


def z_array(name, n):
    """z for the jitted references (ones where the descriptor takes none)."""
    z = z_for(name, n)
    return jnp.ones(n) if z is None else jnp.asarray(z, dtype=jnp.float64)


# --------------------------------------------------------------------------- hand-written references

G2_ETA = [4.0] * 8
G2_RS = [0.8, 1.2, 1.6, 2.0, 2.4, 2.8, 3.2, 3.6]
G2_RC = 5.0


def _pair_distances(R):
    i, j = np.triu_indices(R.shape[0], 1)
    return jnp.sqrt(jnp.sum((R[i] - R[j]) ** 2, axis=-1)), i, j


def hand_inverse_distances(R, z=None):
    r, _, _ = _pair_distances(R)
    return 1.0 / r


def hand_coulomb_matrix(R, z):
    r, i, j = _pair_distances(R)
    z = jnp.asarray(z, dtype=jnp.float64)
    return z[i] * z[j] / r


def hand_exponential_decay(R, z=None):
    r, _, _ = _pair_distances(R)
    return jnp.exp(-r / 1.0)


ERF_A = 1.0


def hand_erf_coulomb(R, z=None):
    r, _, _ = _pair_distances(R)
    return jax.scipy.special.erf(r / ERF_A) / r


def hand_radial_g2(R, z=None):
    """G2_i,c = sum_{j != i} exp(-eta_c (r_ij - rs_c)^2) f_c(r_ij): atom-major, channels fastest."""
    n = R.shape[0]
    eta, rs = jnp.asarray(G2_ETA), jnp.asarray(G2_RS)
    off = 1.0 - jnp.eye(n)
    # + eye under the root keeps r_ii = 1 (and its gradient finite); off masks it out.
    r = jnp.sqrt(jnp.sum((R[:, None, :] - R[None, :, :]) ** 2, axis=-1) + jnp.eye(n))
    cutoff = jnp.where(r < G2_RC, 0.5 * (jnp.cos(jnp.pi * r / G2_RC) + 1.0), 0.0) * off
    terms = jnp.exp(-eta * (r[:, :, None] - rs) ** 2) * cutoff[:, :, None]  # (i, j, channel)
    return terms.sum(axis=1).reshape(-1)


HAND_DESCRIPTORS = {"inverse_distances": hand_inverse_distances, "coulomb_matrix": hand_coulomb_matrix,
                    "exponential_decay": hand_exponential_decay, "radial_g2": hand_radial_g2,
                    "erf_coulomb": hand_erf_coulomb}


def hand_matern52(d, dp, sigma):
    r = jnp.sqrt(5.0) * jnp.sqrt(jnp.sum((d - dp) ** 2)) / sigma
    return (1.0 + r + r ** 2 / 3.0) * jnp.exp(-r)


def hand_matern32(d, dp, sigma):
    r = jnp.sqrt(3.0) * jnp.sqrt(jnp.sum((d - dp) ** 2)) / sigma
    return (1.0 + r) * jnp.exp(-r)


def hand_gaussian(d, dp, sigma):
    return jnp.exp(-jnp.sum((d - dp) ** 2) / (2.0 * sigma ** 2))


def hand_polynomial(d, dp, sigma, c=1.0, degree=2.0):
    return (c + jnp.dot(d, dp) / sigma ** 2) ** degree


HAND_KERNELS = {"matern52": hand_matern52, "matern32": hand_matern32, "gaussian": hand_gaussian,
                "polynomial": hand_polynomial}


def test_reference_parameters_match_library():
    """The hand-written G2 uses the library's parameters (else the comparison is moot)."""
    from descriptors.exponential_decay import exponential_decay
    from descriptors.radial_g2 import radial_g2

    assert list(radial_g2.params["eta"]) == G2_ETA
    assert list(radial_g2.params["rs"]) == G2_RS
    assert radial_g2.params["rc"] == G2_RC
    assert exponential_decay.params == {"r0": 1.0}
    from descriptors.erf_coulomb import erf_coulomb
    assert erf_coulomb.params == {"a": ERF_A}
    assert set(HAND_DESCRIPTORS) == set(HAND_CHECKED)
    assert set(HAND_KERNELS) == set(LIBRARY_KERNELS)


# --------------------------------------------------------------------------- descriptors

@pytest.mark.parametrize("name", HAND_CHECKED)
@SETTINGS
@given(R=geometries())
def test_descriptor_values_and_jacobian_match_jax(name, R):
    desc = descriptor(name)
    n = R.shape[0]
    z = z_for(name, n)
    x = jnp.asarray(R)
    ref_values, ref_jac = map(np.asarray, lowered_reference(name)(x, z_array(name, n)))
    channels = 8 if name == "radial_g2" else 1
    sites = n if name == "radial_g2" else n * (n - 1) // 2
    assert desc.n_features(n) == sites * channels == ref_values.shape[0]

    values = desc.values(R, z)
    jac = desc.jacobian(R, z)
    assert rel(values, ref_values) <= TOL
    assert rel(jac, ref_jac) <= TOL

    # The sparse form scattered by its atom table gives the same dense Jacobian.
    sparse, atoms = desc.sparse_jacobian(R, z)
    assert sparse.shape[:2] == atoms.shape == (ref_values.shape[0], desc.slots(n))
    dense = np.zeros_like(ref_jac)
    for f in range(atoms.shape[0]):
        for k in range(atoms.shape[1]):
            dense[f, atoms[f, k]] += sparse[f, k]
    assert rel(dense, ref_jac) <= TOL
    # Features have no support outside their atom table.
    support = np.zeros(ref_jac.shape[:2], bool)
    support[np.repeat(np.arange(atoms.shape[0]), atoms.shape[1]), atoms.ravel()] = True
    assert np.all(ref_jac[~support] == 0.0)

    # The JAX lowering of the DSL source is the descriptor as written by hand
    # (same values, derivatives and feature order), and so is the compiled one.
    hand_values, hand_jac = hand_reference(name)(x, z_array(name, n))
    assert rel(ref_values, hand_values) <= TOL
    assert rel(ref_jac, hand_jac) <= TOL
    assert rel(values, hand_values) <= TOL
    assert rel(jac, hand_jac) <= TOL


@pytest.mark.parametrize("name", HAND_CHECKED)
def test_descriptor_batch_and_feature_permutations(name):
    """Several frames at once give each frame's values; feature permutations
    reproduce D(x[perm]) (atomic numbers permuted along) from the JAX reference."""
    rng = np.random.default_rng(7)
    n = 6
    frames = np.stack([GRID[rng.choice(len(GRID), n, replace=False)] + rng.uniform(-0.35, 0.35, (n, 3))
                       for _ in range(3)])
    z = z_for(name, n)
    desc, D_jax = descriptor(name), jax_descriptor(name)
    values = desc.values(frames, z)
    jac = desc.jacobian(frames, z)
    assert values.shape == (3, desc.n_features(n))
    assert jac.shape == (3, desc.n_features(n), n, 3)
    for m in range(3):
        ref_values, ref_jac = lowered_reference(name)(jnp.asarray(frames[m]), z_array(name, n))
        assert rel(values[m], ref_values) <= TOL
        assert rel(jac[m], ref_jac) <= TOL

    perms = np.stack([rng.permutation(n) for _ in range(4)])
    fperms = desc.feature_permutations(perms, n)
    x = jnp.asarray(frames[0])
    base = np.asarray(D_jax(x, z))
    for perm, fperm in zip(perms, fperms):
        zp = None if z is None else z[perm]
        assert rel(base[fperm], D_jax(x[perm], zp)) <= 1e-14


def test_radial_g2_cutoff_branches():
    """A geometry with pairs inside and outside the 5 Å cutoff: values and
    Jacobian against the hand-written G2; atoms beyond rc contribute nothing."""
    R = np.array([[0.0, 0.0, 0.0], [1.1, 0.0, 0.0], [0.0, 1.7, 0.3], [6.5, 0.2, 0.0], [4.2, 2.9, 0.1]])
    desc = descriptor("radial_g2")
    ref_values, ref_jac = hand_reference("radial_g2")(jnp.asarray(R), jnp.ones(5))
    assert rel(desc.values(R), ref_values) <= TOL
    assert rel(desc.jacobian(R), ref_jac) <= TOL
    jac = desc.jacobian(R).reshape(5, 8, 5, 3)
    # atom 0 and atom 3 are 6.5 Å apart: atom 3 does not move atom 0's features.
    assert np.all(jac[0, :, 3] == 0.0)


# --------------------------------------------------------------------------- kernels

HYPER = {"polynomial": {"c": 1.0, "degree": 2.0}}


@st.composite
def descriptor_pairs(draw):
    # A few feature counts only: every new length costs a JAX compilation.
    f = draw(st.sampled_from([10, 23, 40]))
    element = st.floats(0.1, 1.0)
    d = draw(arrays(np.float64, f, elements=element))
    dp = draw(arrays(np.float64, f, elements=element))
    v = draw(arrays(np.float64, f, elements=st.floats(-1.0, 1.0)))
    return d, dp, v


def _kernel_reference(k):
    """jit((d, dp, v, hyper) -> (k, dk/dd, (d2k/dd ddp^T) v)) by JAX AD."""

    def ref(d, dp, v, hyper):
        mixed = jax.jacfwd(jax.grad(lambda a, b: k(a, b, **hyper), argnums=0), argnums=1)(d, dp)
        return k(d, dp, **hyper), jax.grad(lambda a: k(a, dp, **hyper))(d), mixed @ v

    return jax.jit(ref)


@lru_cache(maxsize=None)
def lowered_kernel_reference(name):
    return _kernel_reference(kernel(name).jax_function())


@lru_cache(maxsize=None)
def hand_kernel_reference(name):
    return _kernel_reference(HAND_KERNELS[name])


@pytest.mark.parametrize("name", LIBRARY_KERNELS)
@SETTINGS
@given(vectors=descriptor_pairs(), sigma=st.sampled_from([0.4, 1.0, 2.5, 7.0]))
def test_kernel_derivatives_match_jax(name, vectors, sigma):
    d, dp, v = vectors
    if np.sum((d - dp) ** 2) < 1e-6:  # the JAX reference loses accuracy as d -> dp
        d = d + 0.05
    kern = kernel(name)
    hyper = {"sigma": sigma, **HYPER.get(name, {})}
    ref_value, ref_grad, ref_hv = lowered_kernel_reference(name)(d, dp, v, hyper)

    assert rel(kern.value(d, dp, sigma=sigma), ref_value) <= TOL
    assert rel(kern.gradient(d, dp, sigma=sigma), ref_grad) <= TOL
    assert rel(kern.hessian_vector(d, dp, v, sigma=sigma), ref_hv) <= TOL

    # The JAX lowering is the kernel the user wrote.
    hand_value, hand_grad, hand_hv = hand_kernel_reference(name)(d, dp, v, hyper)
    assert rel(ref_value, hand_value) <= TOL
    assert rel(ref_grad, hand_grad) <= TOL
    assert rel(ref_hv, hand_hv) <= TOL


@pytest.mark.parametrize("name", LIBRARY_KERNELS)
def test_kernel_broadcasts_over_leading_axes(name):
    rng = np.random.default_rng(3)
    d, dp, v = rng.uniform(0.1, 1.0, (3, 4, 12)), rng.uniform(0.1, 1.0, (3, 4, 12)), rng.normal(size=(3, 4, 12))
    kern = kernel(name)
    sigma = 1.5
    value, grad = kern.value(d, dp, sigma=sigma), kern.gradient(d, dp, sigma=sigma)
    hv = kern.hessian_vector(d, dp, v, sigma=sigma)
    assert value.shape == (3, 4) and grad.shape == hv.shape == (3, 4, 12)
    reference = hand_kernel_reference(name)
    hyper = {"sigma": sigma, **HYPER.get(name, {})}
    for a in range(3):
        for b in range(4):
            ref_value, ref_grad, ref_hv = reference(d[a, b], dp[a, b], v[a, b], hyper)
            assert rel(value[a, b], ref_value) <= TOL
            assert rel(grad[a, b], ref_grad) <= TOL
            assert rel(hv[a, b], ref_hv) <= TOL


def test_polynomial_non_default_hyperparameters():
    rng = np.random.default_rng(4)
    d, dp, v = rng.uniform(0.1, 1, 15), rng.uniform(0.1, 1, 15), rng.normal(size=15)
    kern = kernel("polynomial")
    h = dict(sigma=0.8, c=2.5, degree=3.5)
    ref_value, ref_grad, ref_hv = hand_kernel_reference("polynomial")(d, dp, v, h)
    assert rel(kern.value(d, dp, **h), ref_value) <= TOL
    assert rel(kern.gradient(d, dp, **h), ref_grad) <= TOL
    assert rel(kern.hessian_vector(d, dp, v, **h), ref_hv) <= TOL
