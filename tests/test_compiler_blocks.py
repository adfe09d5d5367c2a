"""Fused force-field kernels (force blocks, prediction, training-matrix assembly)
against JAX AD of the JAX lowering, hand-written JAX and closed forms."""
from functools import lru_cache
from itertools import permutations, product

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import compiler
from compiler.build.compiled import PredictionSide
from compiler.library import LIBRARY_DESCRIPTORS, LIBRARY_KERNELS
from runtime import prediction
from numeric import element_resolved, rel

jax.config.update("jax_enable_x64", True)

TOL = 1e-10
# erf_coulomb (the erf demonstration) with one kernel only: its primitive is proven row by row in
# tests/test_primitives.py, and each extra pair costs a compile and its JAX references in CI.
# The element-resolved library terms (ACSF, FCHL19) are checked in tests/test_reference_descriptors.py:
# against dscribe and qmllib, and whole models (force blocks with permutations, predictions,
# Hessians) against JAX by compiler.build.verify.check_model.
PAIRS = [(d, k) for d, k in product(LIBRARY_DESCRIPTORS, LIBRARY_KERNELS)
         if (d != "erf_coulomb" or k == "matern52") and not element_resolved(d)]
# Length scales suited to each descriptor's feature scale, so that kernels
# are neither ~1 nor ~0 between the geometries below.
SIGMA = {"inverse_distances": 0.5, "coulomb_matrix": 30.0, "exponential_decay": 0.5, "radial_g2": 2.0,
         "erf_coulomb": 0.5}

N5_Z = np.array([6, 6, 8, 1, 1])
N5_GROUP = np.array([[0, 1, 2, 3, 4], [0, 1, 2, 4, 3]])  # identity and the H-H swap: a group

# A bigger example: 7 atoms (C C O H H H H) and a group of 12 same-element
# permutations: the two carbons swapped or not, times all orders of H 3, 4, 5.
N7_Z = np.array([6, 6, 8, 1, 1, 1, 1])
N7_GROUP = np.array([[a, b, 2, *h, 6] for a, b in ((0, 1), (1, 0)) for h in permutations((3, 4, 5))])

GRID = 1.5 * np.array([(a, b, c) for a in range(4) for b in range(3) for c in range(3)], dtype=float)


def geometry(rng, n):
    """n atoms on a jittered grid: every distance >= 0.8 Å."""
    return GRID[rng.choice(len(GRID), n, replace=False)] + rng.uniform(-0.35, 0.35, (n, 3))


@lru_cache(maxsize=None)
def model(desc, kern):
    return compiler.compile_model(desc, kern)


def hyper_for(desc, kern):
    return {"sigma": SIGMA[desc]}


def is_group(perms):
    rows = {tuple(p) for p in perms}
    return all(tuple(np.asarray(a)[np.asarray(b)]) in rows for a in rows for b in rows)


def test_permutation_examples_are_groups():
    assert is_group(N5_GROUP) and is_group(N7_GROUP) and len(N7_GROUP) == 12
    for perm in N7_GROUP:
        assert np.all(N7_Z[perm] == N7_Z)


# --------------------------------------------------------------------------- off-diagonal blocks

@pytest.mark.parametrize("desc,kern", PAIRS)
def test_force_block_matches_jax(desc, kern):
    rng = np.random.default_rng(PAIRS.index((desc, kern)))
    m = model(desc, kern)
    h = hyper_for(desc, kern)
    x, xp = geometry(rng, 5), geometry(rng, 5)
    for perms in (None, N5_GROUP):
        C = m.force_block(x, xp, perms=perms, z=N5_Z, **h)
        ref = m.jax_force_block(x, xp, perms=perms, z=N5_Z, **h)
        assert C.shape == (15, 15)
        assert rel(C, ref) <= TOL, (perms, rel(C, ref))
        # C(x, x') = C(x', x)^T, each side computed on its own (the group is closed under inverses).
        assert rel(m.force_block(xp, x, perms=perms, z=N5_Z, **h).T, C) <= 1e-12


@pytest.mark.parametrize("desc,kern", PAIRS)
def test_force_block_bigger_group(desc, kern):
    rng = np.random.default_rng(1 + PAIRS.index((desc, kern)))
    m = model(desc, kern)
    h = hyper_for(desc, kern)
    x, xp = geometry(rng, 7), geometry(rng, 7)
    C = m.force_block(x, xp, perms=N7_GROUP, z=N7_Z, **h)
    ref = chain_rule_block(desc, kern, x, xp, N7_GROUP, N7_Z, h["sigma"])
    assert rel(C, ref) <= TOL
    # Summing over a group makes the block invariant under relabelling x' by a group
    # element (here a 3-cycle), up to the matching relabelling of its columns.
    g = N7_GROUP[4]
    assert sorted(g[3:6]) == [3, 4, 5] and all(g[3:6] != [3, 4, 5])
    assert rel(m.force_block(x, xp[g], perms=N7_GROUP, z=N7_Z, **h), _relabel_columns(C, g)) <= 1e-12


def _relabel_columns(C, perm):
    """C(x, x'[perm]) from C(x, x'): column block of atom a of x'[perm] is atom perm[a] of x'."""
    n = len(perm)
    cols = (3 * np.asarray(perm)[:, None] + np.arange(3)).ravel()
    assert C.shape == (3 * n, 3 * n)
    return C[:, cols]


# --------------------------------------------------------------------------- diagonal blocks (s = 0)

def descriptor_space_hessian_at_zero(kern, sigma, d):
    """d2k / dd ddp^T at d = dp, in closed form."""
    F = d.shape[0]
    if kern == "matern52":   # k = 1 - 5 s / (6 sigma^2) + O(s^2)
        return 5.0 / (3.0 * sigma ** 2) * np.eye(F)
    if kern == "matern32":   # k = (1 + a r) e^{-a r} = 1 - a^2 r^2 / 2 + O(r^3), a = sqrt(3) / sigma
        return 3.0 / sigma ** 2 * np.eye(F)
    if kern == "gaussian":   # k = exp(-s / (2 sigma^2))
        return 1.0 / sigma ** 2 * np.eye(F)
    if kern == "polynomial":  # k = (1 + t / sigma^2)^2: 2 (1 + t/sigma^2)/sigma^2 I + 2/sigma^4 dp d^T
        t = d @ d
        return 2.0 * (1.0 + t / sigma ** 2) / sigma ** 2 * np.eye(F) + 2.0 / sigma ** 4 * np.outer(d, d)
    raise KeyError(kern)


@lru_cache(maxsize=None)
def jax_descriptor(desc):
    D = model(desc, "matern52").descriptor.jax_function()
    return jax.jit(lambda R, z: (D(R, z), jax.jacfwd(D)(R, z)))


def reference_jacobian(desc, x, z):
    d, J = jax_descriptor(desc)(jnp.asarray(x), jnp.asarray(z, dtype=jnp.float64))
    d, J = np.asarray(d), np.asarray(J)
    return d, J.reshape(J.shape[0], -1)


@lru_cache(maxsize=None)
def jax_kernel_hessian(kern):
    k = model("inverse_distances", kern).kernel.jax_function()
    return jax.jit(lambda d, dp, h: jax.jacfwd(jax.grad(lambda a, b: k(a, b, **h), argnums=0), argnums=1)(d, dp))


def chain_rule_block(desc, kern, x, xp, perms, z, sigma):
    """sum_P J(x)^T H(D(x), D(x'[P])) d D(x'[P]) / dx', every factor by jitted JAX AD
    of the JAX lowering (cheaper than the op-by-op jax_force_block for many calls)."""
    n = x.shape[0]
    perms = np.arange(n)[None] if perms is None else np.asarray(perms)
    kernel = model(desc, kern).kernel
    hyper = dict(zip(kernel.hyper_names, kernel.hyper(sigma=sigma).tolist()))  # with defaults
    d, J = reference_jacobian(desc, x, z)
    C = np.zeros((3 * n, 3 * n))
    for perm in perms:
        dP, JP = reference_jacobian(desc, xp[perm], z)  # z[perm] == z for the groups used here
        # column block a of J(x'[P]) belongs to atom perm[a] of x'
        JPx = np.zeros_like(JP)
        cols = (3 * perm[:, None] + np.arange(3)).ravel()
        JPx[:, cols] = JP
        H = np.asarray(jax_kernel_hessian(kern)(d, dP, hyper))
        C += J.T @ H @ JPx
    return C


def test_chain_rule_reference_agrees_with_jax_force_block():
    rng = np.random.default_rng(11)
    x, xp = geometry(rng, 7), geometry(rng, 7)
    m = model("inverse_distances", "matern32")
    perms = N7_GROUP[:4]  # identity, two swaps and a 3-cycle (a perm that is not its own inverse)
    ref = m.jax_force_block(x, xp, perms=perms, z=N7_Z, sigma=0.5)
    assert rel(chain_rule_block("inverse_distances", "matern32", x, xp, perms, N7_Z, 0.5), ref) <= 1e-12


@pytest.mark.parametrize("desc,kern", PAIRS)
def test_diagonal_block_closed_form(desc, kern):
    """C(x, x) = J^T H(d, d) J with the closed-form H at d = dp (where the JAX
    reference itself breaks down: AD through sqrt(s) at s = 0)."""
    rng = np.random.default_rng(2 + PAIRS.index((desc, kern)))
    m = model(desc, kern)
    sigma = SIGMA[desc]
    x = geometry(rng, 5)
    C = m.force_block(x, x, z=N5_Z, sigma=sigma)
    assert np.all(np.isfinite(C))
    d, J = reference_jacobian(desc, x, N5_Z)
    ref = J.T @ descriptor_space_hessian_at_zero(kern, sigma, d) @ J
    assert rel(C, ref) <= TOL
    # With symmetries: the identity term in closed form, every other one where s > 0 by JAX.
    C = m.force_block(x, x, perms=N5_GROUP, z=N5_Z, sigma=sigma)
    assert np.all(np.isfinite(C))
    ref = ref + chain_rule_block(desc, kern, x, x, N5_GROUP[1:], N5_Z, sigma)
    assert rel(C, ref) <= TOL


@pytest.mark.parametrize("kern", LIBRARY_KERNELS)
@pytest.mark.parametrize("scale", [1e-7, 1e-4])
def test_nearly_diagonal_block_is_continuous(kern, scale):
    """Just off d = dp the block is within O(|delta|) of the closed form at d = dp
    (catches a guard at s = 0 that is right at 0 but wrong next to it)."""
    rng = np.random.default_rng(5)
    desc = "inverse_distances"
    m = model(desc, kern)
    sigma = SIGMA[desc]
    x = geometry(rng, 5)
    xp = x + scale * rng.normal(size=x.shape)
    C = m.force_block(x, xp, z=N5_Z, sigma=sigma)
    d, J = reference_jacobian(desc, x, N5_Z)
    ref = J.T @ descriptor_space_hessian_at_zero(kern, sigma, d) @ J
    # Matérn 3/2's mixed derivative has an O(|delta|) term, the others O(|delta|^2)
    assert rel(C, ref) <= 200 * scale


# --------------------------------------------------------------------------- prediction

PREDICT_PAIRS = [("inverse_distances", "matern52"), ("coulomb_matrix", "gaussian"),
                 ("exponential_decay", "polynomial"), ("radial_g2", "matern32")]


def _training_set(rng, M=3, n=5):
    return np.stack([geometry(rng, n) for _ in range(M)])


def _permuted_training(m, R, alpha, perms, z):
    """DT[(j, p)] = D_j[fperm_p], BT[(j, p)] = (J_j alpha_j)[fperm_p]."""
    n = R.shape[1]
    D, JAC, _ = m.descriptor.evaluate(R, z)
    B = m.contract(JAC, alpha)
    fperms = m.feature_permutations(perms, n)
    DT = D[:, fperms].reshape(-1, D.shape[1])
    BT = B[:, fperms].reshape(-1, D.shape[1])
    return D, JAC, B, fperms, DT, BT


@pytest.mark.parametrize("desc,kern", PREDICT_PAIRS)
def test_contract_matches_dense_jacobian(desc, kern):
    rng = np.random.default_rng(8)
    m = model(desc, kern)
    R = _training_set(rng)
    alpha = rng.normal(size=R.shape)
    _, JAC, _ = m.descriptor.evaluate(R, N5_Z)
    B = m.contract(JAC, alpha)
    for j in range(len(R)):
        _, J = reference_jacobian(desc, R[j], N5_Z)
        assert rel(B[j], J @ alpha[j].ravel()) <= TOL


@pytest.mark.parametrize("desc,kern", PREDICT_PAIRS)
def test_predict_parts_matches_dense_reference(desc, kern):
    rng = np.random.default_rng(9)
    m = model(desc, kern)
    sigma = SIGMA[desc]
    n, perms, z = 5, N5_GROUP, N5_Z
    R = _training_set(rng)
    alpha = rng.normal(size=R.shape)
    X = np.stack([geometry(rng, n) for _ in range(2)])
    hyper = m.kernel.hyper(sigma=sigma)
    _, _, _, _, DT, BT = _permuted_training(m, R, alpha, perms, z)
    DQ, JACQ, _ = m.descriptor.evaluate(X, z)
    E, F = prediction.predict_parts_batched(m, DQ, JACQ, DT, BT, hyper, n)
    assert E.shape == (2,) and F.shape == (2, n, 3)
    # the fused one-loop kernel (no BLAS, used for small batches) agrees with the batched path,
    # which is checked against JAX below; also at training geometries, where s = 0 exactly (the
    # batched path must recompute s there rather than take |d|^2 + |d'|^2 - 2 d.d')
    DR, JACR, _ = m.descriptor.evaluate(R[:2], z)
    for dq, jq in ((DQ, JACQ), (DR, JACR)):
        Ed, Fd = m.predict_parts_direct(dq, jq, DT, BT, hyper, n)
        for fast in (prediction.predict_parts_batched, prediction.predict_parts_tiled):
            Ef, Ff = fast(m, dq, jq, DT, BT, hyper, n)
            assert rel(Ff, Fd) <= 1e-12 and rel(Ef, Ed) <= 1e-12

    # Forces: sum_j C(x, x_j) alpha_j with every block by JAX AD (one by jax_force_block).
    assert rel(chain_rule_block(desc, kern, X[0], R[0], perms, z, sigma),
               m.jax_force_block(X[0], R[0], perms=perms, z=z, sigma=sigma)) <= 1e-12
    for q in range(2):
        ref = sum(chain_rule_block(desc, kern, X[q], R[j], perms, z, sigma) @ alpha[j].ravel()
                  for j in range(len(R)))
        assert rel(F[q].ravel(), ref) <= TOL

    # Energies: E(x) = -sum_j grad_x' [sum_P k(D(x), D(x'[P]))](x_j) . alpha_j in JAX.
    D_jax, k_jax = m.descriptor.jax_function(), m.kernel.jax_function()
    h = dict(zip(m.kernel.hyper_names, hyper.tolist()))
    zj = jnp.asarray(z, dtype=jnp.float64)

    def summed_kernel(x, xp):
        d = D_jax(x, zj)
        return sum(k_jax(d, D_jax(xp[np.asarray(p)], zj), **h) for p in perms)

    grad_xp = jax.jit(jax.grad(summed_kernel, argnums=1))
    for q in range(2):
        ref = -sum(float(jnp.vdot(grad_xp(jnp.asarray(X[q]), jnp.asarray(R[j])), alpha[j]))
                   for j in range(len(R)))
        assert abs(E[q] - ref) <= TOL * max(abs(ref), 1e-300)

    # Forces are minus the gradient of the predicted energies (central differences).
    step = 1e-5
    shifted = []
    for a in range(n):
        for c in range(3):
            for sign in (1.0, -1.0):
                y = X[0].copy()
                y[a, c] += sign * step
                shifted.append(y)
    DS, JACS, _ = m.descriptor.evaluate(np.stack(shifted), z)
    ES, _ = prediction.predict_parts_batched(m, DS, JACS, DT, BT, hyper, n)
    fd = -(ES[0::2] - ES[1::2]) / (2 * step)
    assert rel(F[0].ravel(), fd) <= 1e-6


@pytest.mark.parametrize("desc,kern", PREDICT_PAIRS)
def test_fast_prediction_paths_across_tiles_and_chunks(desc, kern):
    """More training rows than one tile of predict_tiles and more queries than one of its
    chunks or one task of the batched path: every path agrees with the plain fused loop,
    also with a point of the training set among the queries (s = 0 there)."""
    from compiler.targets.numba_cpu import PREDICT_TILE
    rng = np.random.default_rng(12)
    m = model(desc, kern)
    n, z = 5, N5_Z
    R = _training_set(rng, M=PREDICT_TILE // 2 + 7)  # x 2 permutations: one tile and a part
    alpha = rng.normal(size=R.shape)
    *_, DT, BT = _permuted_training(m, R, alpha, N5_GROUP, z)
    assert DT.shape[0] > PREDICT_TILE
    X = np.concatenate([np.stack([geometry(rng, n) for _ in range(prediction.TILE_QUERIES + 5)]), R[3:4]])
    DQ, JACQ, _ = m.descriptor.evaluate(X, z)
    hyper = m.kernel.hyper(sigma=SIGMA[desc])
    Ed, Fd = m.predict_parts_direct(DQ, JACQ, DT, BT, hyper, n)
    side = PredictionSide(DT, BT)
    for Ef, Ff in (prediction.predict_parts_tiled(m, DQ, JACQ, DT, BT, hyper, n, side=side),
                   prediction.predict_parts_batched(m, DQ, JACQ, DT, BT, hyper, n, side=side, chunk=4),
                   prediction.predict_parts(m, DQ, JACQ, DT, BT, hyper, n, side=side),
                   prediction.predict_parts(m, DQ[:3], JACQ[:3], DT, BT, hyper, n, side=side)):
        q = len(Ef)
        assert rel(Ff, Fd[:q]) <= 1e-12 and rel(Ef, Ed[:q]) <= 1e-12
    with pytest.raises(ValueError, match="prepared for"):
        prediction.predict_parts(m, DQ, JACQ, DT[:-1], BT[:-1], hyper, n, side=side)


# --------------------------------------------------------------------------- training matrix

@pytest.mark.parametrize("desc,kern", PREDICT_PAIRS)
def test_assemble_rows_matches_blocks(desc, kern):
    rng = np.random.default_rng(10)
    m = model(desc, kern)
    sigma = SIGMA[desc]
    n, perms, z, M = 5, N5_GROUP, N5_Z, 3
    R = _training_set(rng, M, n)
    D, JAC, _ = m.descriptor.evaluate(R, z)
    fperms = m.feature_permutations(perms, n)
    hyper = m.kernel.hyper(sigma=sigma)
    K = np.full((3 * n * M, 3 * n * M), np.nan)
    m.assemble_rows(D, JAC, fperms, hyper, K, [2, 0, 1], n, mirror=True)
    assert np.all(np.isfinite(K))
    assert rel(K.T, K) <= 1e-13  # diagonal blocks are symmetric up to rounding ...
    for i in range(M):
        for j in range(i + 1, M):  # ... mirrored ones exactly
            assert np.array_equal(block_of(K, j, i, n), block_of(K, i, j, n).T)

    def block(i, j):
        return K[3 * n * i:3 * n * (i + 1), 3 * n * j:3 * n * (j + 1)]

    for i in range(M):
        for j in range(M):
            if i != j:
                ref = chain_rule_block(desc, kern, R[i], R[j], perms, z, sigma)
            else:
                d, J = reference_jacobian(desc, R[i], z)
                ref = (J.T @ descriptor_space_hessian_at_zero(kern, sigma, d) @ J
                       + chain_rule_block(desc, kern, R[i], R[i], perms[1:], z, sigma))
            assert rel(block(i, j), ref) <= TOL, (i, j)

    # Without mirroring only the upper block triangle of the listed rows is written.
    K2 = np.full_like(K, np.nan)
    m.assemble_rows(D, JAC, fperms, hyper, K2, [1], n, mirror=False)
    for i in range(M):
        for j in range(M):
            written = i == 1 and j >= 1
            assert np.all(np.isfinite(block_of(K2, i, j, n))) == written
            if written:
                assert np.array_equal(block_of(K2, i, j, n), block(i, j))


def block_of(K, i, j, n):
    return K[3 * n * i:3 * n * (i + 1), 3 * n * j:3 * n * (j + 1)]
