"""An independent sGDML reference model in JAX, written from the math alone.

Nothing here imports gdmlc (compiler/, runtime/, descriptors/): the descriptor,
the kernel, the force-covariance blocks, the training system and the
predictions are written from scratch, so a disagreement with ``runtime.GDML``
points at gdmlc (its DSL, AD, simplification, code generation, assembly,
solver or prediction), not at a shared bug.

Math (sGDML, Chmiela et al. 2017/2018)
--------------------------------------
* descriptor D(x): inverse interatomic distances 1/|x_i - x_j| for the pairs
  i < j in ``np.triu_indices(N, 1)`` order;
* base kernel: Matérn 5/2, kappa(d, d') = (1 + r + r^2/3) exp(-r),
  r = a |d - d'|, a = sqrt(5)/sigma;
* symmetric kernel k(x, x') = sum_P kappa(D(x), D(x'[P])) over a group of atom
  permutations P (``x[P]``: atom a of the permuted geometry is atom P[a]);
* force block C(x, x') = grad_x grad_x'^T k(x, x')  (3N x 3N), by
  ``jax.jacfwd(jax.grad(k, 0), 1)``;
* training: (C + lam I) alpha = F / scale, C the dense 3NM x 3NM matrix of
  blocks C_ij = C(x_i, x_j), scale = std of all training force components;
  solved with ``scipy.linalg.cho_factor/cho_solve``;
* prediction: F(x) = scale sum_j C(x, x_j) alpha_j,
  E(x) = -scale sum_j grad_x' k(x, x_j) . alpha_j + c, with
  c = mean over training of (E_ref - E_pred without c).
* joint energy+force training (sGDML's E_cstr), energy E ~ GP(c, k), F = -grad E:
  cov(F_i, F_j) = C(x_i, x_j), cov(F_i, E_j) = -grad_x k(x_i, x_j),
  cov(E_i, E_j) = k(x_i, x_j); labels [F, E - c] / scale with c = mean(E_train);
  E(x) = c + scale sum_j (-grad_x' k(x, x_j) . alpha_j + k(x, x_j) a_j),
  F(x) = scale sum_j (C(x, x_j) alpha_j - grad_x k(x, x_j) a_j).

NaN-safety at d = d' (the "diagonal" of the kernel)
---------------------------------------------------
|d - d'| = sqrt(s) has an infinite derivative at s = 0, so naive JAX AD of the
Matérn kernel gives 0 * inf = NaN wherever D(x) == D(x'[P]) exactly: for the
identity term of every diagonal block C(x_i, x_i), for any permutation that
maps x_i onto itself exactly, and for gradients evaluated at a training
geometry (the energy constant is fitted there).

1. ``matern52`` uses the "double where": s_safe = where(s > 0, s, 1) and
   r = where(s > 0, a sqrt(s_safe), 0).  Values are unchanged (no epsilon is
   added anywhere), and no NaN is created, neither forward nor in AD.  The
   first derivative at s = 0 is exact: dkappa/dd = 2 f'(s) (d - d') = 0 there,
   and AD through the constant branch gives 0 as well.
2. The second derivative is *not* exact through the constant branch (AD sees
   kappa == 1 locally and returns 0), and AD is pure round-off for s > 0 tiny
   (dkappa/dr = -(r/3)(1 + r) e^-r is formed as a difference of O(1) terms and
   then multiplied by dr/ds = a^2/(2r)).  The true limit is finite: with
   kappa = f(s), d2kappa/dd dd'^T = -2 f'(s) I - 4 f''(s) (d - d')(d - d')^T,
   f'(s) = -(a^2/6)(1 + r) e^-r and f''(s) = (a^4/12) e^-r, so at d = d'
   d2kappa/dd dd'^T = (a^2/3) I = 5/(3 sigma^2) I.  Hence for each
   permutation term with D(x) == D(x'[P]) *exactly* the block is the closed
   form (a^2/3) J(x)^T J_P(x'), J = dD(x)/dx and J_P = dD(x'[P])/dx', both by
   ``jax.jacfwd``.  Which terms those are is decided in NumPy on the concrete
   inputs (``same_descriptors``), not from s inside jit: XLA may fuse D(x) and
   D(x[P]) differently and return s ~ 1e-32 for x' = x (this happened: a 45%
   wrong diagonal block).  Distinct training frames are far apart (r = O(0.1)
   or more), where AD is accurate.
   The tests check the closed form against AD blocks at x' = x +- eps u.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

jax.config.update("jax_enable_x64", True)

__all__ = ["inverse_distances", "matern52", "symmetric_kernel", "force_block", "energy_gradient",
           "same_descriptors", "ReferenceGDML"]


# --------------------------------------------------------------------------- building blocks

def inverse_distances(x):
    """D(x): 1/|x_i - x_j| for i < j in np.triu_indices order; x (N, 3) -> (N(N-1)/2,)."""
    i, j = np.triu_indices(x.shape[0], 1)
    diff = x[i] - x[j]
    return 1.0 / jnp.sqrt(jnp.sum(diff * diff, axis=-1))


def matern52(d, dp, sigma):
    """Matérn 5/2 of |d - dp| (NaN-safe at d == dp by the double where, see the module doc)."""
    a = jnp.sqrt(5.0) / sigma
    s = jnp.sum((d - dp) ** 2)
    positive = s > 0
    s_safe = jnp.where(positive, s, 1.0)
    r = jnp.where(positive, a * jnp.sqrt(s_safe), 0.0)
    return (1.0 + r + r * r / 3.0) * jnp.exp(-r)


def _permuted(x, perm):
    return jnp.asarray(x)[perm]


def symmetric_kernel(x, xp, perms, sigma):
    """k(x, x') = sum_P kappa(D(x), D(x'[P])); perms (P, N) int array."""
    d = inverse_distances(x)
    return jnp.sum(jax.vmap(lambda p: matern52(d, inverse_distances(_permuted(xp, p)), sigma))(perms))


def _term_block(x, xp, perm, same, sigma):
    """grad_x grad_x'^T kappa(D(x), D(x'[P])) (3N x 3N); the closed form where ``same``."""
    n = x.shape[0]

    def term(a, b):
        return matern52(inverse_distances(a), inverse_distances(_permuted(b, perm)), sigma)

    by_ad = jax.jacfwd(jax.grad(term, 0), 1)(x, xp).reshape(3 * n, 3 * n)
    J = jax.jacfwd(inverse_distances)(x).reshape(-1, 3 * n)
    Jp = jax.jacfwd(lambda b: inverse_distances(_permuted(b, perm)))(xp).reshape(-1, 3 * n)
    closed = (5.0 / (3.0 * sigma ** 2)) * J.T @ Jp
    return jnp.where(same, closed, by_ad)


def _force_block(x, xp, perms, same, sigma):
    return jnp.sum(jax.vmap(lambda p, e: _term_block(x, xp, p, e, sigma))(perms, same), axis=0)


def same_descriptors(X, XP, perms):
    """(Q, P) bool: D(X[q]) == D(XP[q][P]) exactly, decided in NumPy on concrete values.

    Not decided inside the jitted function: XLA may compute D(x) and D(x[P]) with
    different fusions, so that s = |D(x) - D(x[P])|^2 comes out ~1e-32 instead of 0
    for x' = x and the AD branch would be used at an s where it is pure round-off.
    NumPy evaluates both with the same code, so equal inputs give equal descriptors.
    """
    def D(R):
        i, j = np.triu_indices(R.shape[1], 1)
        diff = R[:, i] - R[:, j]
        return 1.0 / np.sqrt(np.sum(diff * diff, axis=-1))

    X, XP = np.asarray(X, dtype=np.float64), np.asarray(XP, dtype=np.float64)
    d = D(X)
    return np.stack([np.all(D(XP[:, p]) == d, axis=1) for p in np.asarray(perms)], axis=1)


def _perm_array(perms, n):
    if perms is None:
        return np.arange(n, dtype=np.int64)[None]
    return np.atleast_2d(np.asarray(perms, dtype=np.int64))


_force_block_jit = jax.jit(_force_block)


def force_block(x, xp, perms, sigma):
    """C(x, x') = grad_x grad_x'^T k(x, x') as a (3N, 3N) NumPy array; perms (P, N) (None: identity)."""
    x, xp = np.asarray(x, dtype=np.float64), np.asarray(xp, dtype=np.float64)
    perms = _perm_array(perms, len(x))
    same = same_descriptors(x[None], xp[None], perms)[0]
    return np.asarray(_force_block_jit(jnp.asarray(x), jnp.asarray(xp), jnp.asarray(perms),
                                       jnp.asarray(same), sigma))


def energy_gradient(x, xp, perms, sigma):
    """grad_x' k(x, x') (N, 3); exact (zero) at D(x) == D(x'[P]) by the double where."""
    return jax.grad(symmetric_kernel, 1)(x, xp, perms, sigma)


def kernel_gradient_x(x, xp, perms, sigma):
    """grad_x k(x, x') (N, 3), the first argument's gradient."""
    return jax.grad(symmetric_kernel, 0)(x, xp, perms, sigma)


# vmapped over pairs of geometries, evaluated in fixed-size chunks so that XLA compiles each
# function once per (chunk, N, P) shape and not once per number of pairs
_CHUNK = 128
_blocks_chunk = jax.jit(jax.vmap(_force_block, in_axes=(0, 0, None, 0, None)))
_grads_chunk = jax.jit(jax.vmap(energy_gradient, in_axes=(0, 0, None, None)))
_grads_x_chunk = jax.jit(jax.vmap(kernel_gradient_x, in_axes=(0, 0, None, None)))
_values_chunk = jax.jit(jax.vmap(symmetric_kernel, in_axes=(0, 0, None, None)))


def _pad(a, pad):
    return np.concatenate([a, np.repeat(a[:1], pad, axis=0)]) if pad else a


def _over_pairs(kind, X, XP, perms, sigma):
    """For the pairs (X[k], XP[k]), as NumPy: blocks (kind 'blocks'), x'-gradients ('grads'),
    x-gradients ('grads_x') or kernel values ('values')."""
    out = []
    for start in range(0, len(X), _CHUNK):
        x, xp = X[start:start + _CHUNK], XP[start:start + _CHUNK]
        pad = _CHUNK - len(x)
        x, xp = jnp.asarray(_pad(x, pad)), jnp.asarray(_pad(xp, pad))
        if kind == "blocks":
            same = jnp.asarray(_pad(same_descriptors(X[start:start + _CHUNK], XP[start:start + _CHUNK], perms),
                                    pad))
            result = _blocks_chunk(x, xp, jnp.asarray(perms), same, sigma)
        else:
            fn = {"grads": _grads_chunk, "grads_x": _grads_x_chunk, "values": _values_chunk}[kind]
            result = fn(x, xp, jnp.asarray(perms), sigma)
        out.append(np.asarray(result)[:_CHUNK - pad])
    return np.concatenate(out)


# --------------------------------------------------------------------------- the model

class ReferenceGDML:
    """Dense, slow, obviously-correct GDML/sGDML with inverse distances and Matérn 5/2.

    ``perms``: (P, N) atom permutations (None: identity only), used exactly as given.
    ``energy_constraints``: joint energy+force training (see the module doc).
    """

    def __init__(self, sigma, lam=1e-10, perms=None, energy_constraints=False):
        self.sigma, self.lam, self.perms_in = float(sigma), float(lam), perms
        self.energy_constraints = energy_constraints

    def fit(self, R, F, E=None):
        R = np.asarray(R, dtype=np.float64)
        F = np.asarray(F, dtype=np.float64)
        m, n, _ = R.shape
        self.R_train, self.n_atoms = R, n
        self.perms = _perm_array(self.perms_in, n)
        self.scale = float(np.std(F))
        i, j = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")
        blocks = _over_pairs("blocks", R[i.ravel()], R[j.ravel()], self.perms, self.sigma)
        # (m*m, 3n, 3n) -> (m, 3n, m, 3n) -> (3nm, 3nm)
        K = blocks.reshape(m, m, 3 * n, 3 * n).transpose(0, 2, 1, 3).reshape(3 * n * m, 3 * n * m)
        y = F.reshape(-1)
        self.energy_weights = None
        if self.energy_constraints:
            E = np.asarray(E, dtype=np.float64)
            # cov(F_i, E_j) = -grad_x k(x_i, x_j): rows (i, atom, xyz), columns j
            K_fe = -_over_pairs("grads_x", R[i.ravel()], R[j.ravel()], self.perms, self.sigma)
            K_fe = K_fe.reshape(m, m, 3 * n).transpose(0, 2, 1).reshape(3 * n * m, m)
            K_ee = _over_pairs("values", R[i.ravel()], R[j.ravel()], self.perms, self.sigma).reshape(m, m)
            K = np.block([[K, K_fe], [K_fe.T, K_ee]])
            y = np.concatenate([y, E - np.mean(E)])
        if not np.all(np.isfinite(K)):
            raise FloatingPointError("reference training matrix has non-finite entries")
        self.K = K
        factor = scipy.linalg.cho_factor(K + self.lam * np.eye(len(K)), lower=True)
        x = scipy.linalg.cho_solve(factor, y / self.scale)
        self.alpha = x[:3 * n * m].reshape(m, n, 3)
        self.energy_constant = 0.0
        if self.energy_constraints:
            self.energy_weights = x[3 * n * m:]
            self.energy_constant = float(np.mean(E))
        elif E is None:
            self.energy_constant = None
        else:
            E_pred, _ = self.predict(R)
            self.energy_constant = float(np.mean(np.asarray(E, dtype=np.float64) - E_pred))
        return self

    def _pairs(self, R):
        q, m = len(R), len(self.R_train)
        iq = np.repeat(np.arange(q), m)
        it = np.tile(np.arange(m), q)
        return R[iq], self.R_train[it], q, m

    def predict_forces(self, R):
        R = np.asarray(R, dtype=np.float64)
        X, XT, q, m = self._pairs(R)
        n = self.n_atoms
        blocks = _over_pairs("blocks", X, XT, self.perms, self.sigma).reshape(q, m, 3 * n, 3 * n)
        F = np.einsum("qjab,jb->qa", blocks, self.alpha.reshape(m, 3 * n))
        if self.energy_weights is not None:
            grads_x = _over_pairs("grads_x", X, XT, self.perms, self.sigma).reshape(q, m, 3 * n)
            F -= np.einsum("qja,j->qa", grads_x, self.energy_weights)
        return self.scale * F.reshape(q, n, 3)

    def predict_energies(self, R):
        """Energies including the constant (relative when trained without energies)."""
        R = np.asarray(R, dtype=np.float64)
        X, XT, q, m = self._pairs(R)
        grads = _over_pairs("grads", X, XT, self.perms, self.sigma).reshape(q, m, self.n_atoms, 3)
        E = -self.scale * np.einsum("qjab,jab->q", grads, self.alpha)
        if self.energy_weights is not None:
            values = _over_pairs("values", X, XT, self.perms, self.sigma).reshape(q, m)
            E += self.scale * values @ self.energy_weights
        return E + (self.energy_constant or 0.0)

    def predict(self, R):
        """(E (M,), F (M, N, 3)) for R (M, N, 3)."""
        return self.predict_energies(R), self.predict_forces(R)
