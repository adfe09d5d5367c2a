"""Low-rank preconditioners of the training system (K + lam I) for conjugate gradients.

K is approximated on inducing columns, K ~ F F^T with F (n, r), from whole training points'
columns (3N force columns each, and its energy column in a joint energy+force system: one force
block row costs the same as one of its columns):

* ``nystrom``: sGDML's choice, inducing points drawn uniformly, F = C W^{-1/2} with
  C = K[:, S], W = K[S, S];
* ``rpcholesky``: randomly pivoted Cholesky (Chen, Epperly, Tropp, Webber 2023), block form:
  points drawn in rounds with probability proportional to the diagonal of the residual
  K - F F^T, so the columns go where the approximation is still poor.

Both only need columns of K, written by the generated assembly kernel (``force_columns``).
With F = U diag(L)^{1/2} V^T, the preconditioner's inverse is (Frangella, Tropp, Udell 2023)

    P^{-1} = U (L + lam)^{-1} U^T + (I - U U^T) / (L_min + lam)

which maps K + lam I's top r eigenvalues to about 1 and the rest below 1, with no 1/lam blow-up.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from compiler.build.compiled import numba_threads, threads_for

from .prediction import permuted_rows

PRECONDITIONERS = ("rpcholesky", "nystrom", "none")
DEFAULT_COLUMNS = 2000  # default rank: min(n_force, 2000) columns, rounded down to whole points
RPCHOLESKY_ROUNDS = 8   # rpcholesky draws its points in this many rounds
RELATIVE_EIGENVALUE_FLOOR = 1e-10  # below this x the largest, an eigenvalue is rounding (rigid-body modes)


def default_points(m, n_atoms, columns=DEFAULT_COLUMNS):
    """Inducing training points of the default rank: min(3NM, ``columns``) columns, whole points."""
    return max(1, min(m, columns // (3 * n_atoms)))


@dataclass
class TrainingColumns:
    """Columns of the training matrix (force rows first, then M energy rows with
    ``energy_rows``), from the compiled assembly and energy-weight kernels."""
    model: object  # compiler.build.compiled.CompiledModel
    D: np.ndarray
    JAC: np.ndarray
    fperms: np.ndarray
    hyper: np.ndarray
    n_atoms: int
    energy_rows: bool = False

    @property
    def n3(self):
        return 3 * self.n_atoms

    @property
    def m(self):
        return self.D.shape[0]

    @property
    def size(self):
        return self.n3 * self.m + (self.m if self.energy_rows else 0)

    def indices(self, points):
        """The matrix columns of training points: their 3N force columns, then their energy columns."""
        points = np.asarray(points, dtype=np.int64)
        force = (points[:, None] * self.n3 + np.arange(self.n3)).ravel()
        return np.concatenate([force, self.n3 * self.m + points]) if self.energy_rows else force

    def row_points(self):
        """The training point each row belongs to (size,)."""
        every = np.arange(self.m)
        return np.concatenate([np.repeat(every, self.n3), every if self.energy_rows else every[:0]])

    def columns(self, points):
        """K[:, indices(points)] (size, len(indices(points)))."""
        points = np.asarray(points, dtype=np.int64)
        force = self.force_columns(points)
        if not self.energy_rows:
            return force
        every = np.arange(self.m)
        terms = [self._energy_weight_terms(every, p) for p in points]  # one energy column each
        energy = np.concatenate([np.stack([F.ravel() for _, F in terms], axis=1),
                                 np.stack([E for E, _ in terms], axis=1)])
        return np.concatenate([np.concatenate([force, self._force_columns_energy_rows(points)]), energy], axis=1)

    def force_columns(self, points):
        """K_ff[:, force columns of ``points``] (3NM, 3N len(points)).

        The kernel writes block rows i <= j; with the chosen points put first and then every
        point, block row r of the extended problem holds K[point r, every point], i.e. by
        symmetry the wanted columns (the blocks among the chosen points themselves are scratch)."""
        s, m, n3 = len(points), self.m, self.n3
        D = np.concatenate([self.D[points], self.D])
        JAC = np.concatenate([self.JAC[points], self.JAC])
        rows = np.empty((s * n3, (s + m) * n3))
        self.model.assemble_rows(D, JAC, self.fperms, self.hyper, rows, np.arange(s), self.n_atoms, mirror=False)
        return np.ascontiguousarray(rows[:, s * n3:].T)

    def _energy_weight_terms(self, queries, point):
        """(E (Q,), F (Q, 3N)): K_ee[queries, point] and K_fe[force rows of queries, point]."""
        E = np.zeros(len(queries))
        F = np.zeros((len(queries), self.n_atoms, 3))
        with numba_threads(threads_for(len(queries))):  # small calls: a parallel region costs more
            self.model.predict_energy_weights(self.D[queries], self.JAC[queries],
                                              permuted_rows(self.D[[point]], self.fperms), np.ones(len(self.fperms)),
                                              self.hyper, E, F)
        return E, F.reshape(len(queries), -1)

    def _force_columns_energy_rows(self, points):
        """K_ef[every energy row, force columns of points] = K_fe[those force rows, every energy column]."""
        return np.stack([self._energy_weight_terms(points, i)[1].ravel() for i in range(self.m)])

    def diagonal(self):
        """diag(K) (size,): the diagonal force blocks one point at a time, then k(x_i, x_i)
        summed over the permutations for the energy rows."""
        out = np.empty(self.size)
        with numba_threads(1):  # one block per call: a parallel region would cost more than the block
            self._diagonal_into(out)
        return out

    def _diagonal_into(self, out):
        n3 = self.n3
        block = np.empty((n3, n3))
        for i in range(self.m):
            self.model.assemble_rows(self.D[i:i + 1], self.JAC[i:i + 1], self.fperms, self.hyper, block,
                                     np.zeros(1, np.int64), self.n_atoms, mirror=False)
            out[i * n3:(i + 1) * n3] = np.diag(block)
            if self.energy_rows:
                out[n3 * self.m + i] = self._energy_weight_terms(np.array([i]), i)[0][0]


class LowRankPreconditioner:
    """P^{-1} r for K ~ U diag(L) U^T (see the module docstring)."""

    def __init__(self, U, L, lam, kind="", points=0):
        self.U, self.L, self.lam = U, L, float(lam)
        self.kind, self.points = kind, points
        self.rest = 1.0 / (L.min() + lam) if len(L) else 1.0  # on the complement of U's span
        self.inner = 1.0 / (L + lam) - self.rest  # >= 0: P^{-1} is positive definite for any U

    @property
    def rank(self):
        return len(self.L)

    def __call__(self, r):
        return self.rest * r + self.U @ (self.inner * (self.U.T @ r))


class IdentityPreconditioner:
    kind, rank, points = "none", 0, 0

    def __call__(self, r):
        return r.copy()


def make_preconditioner(kind, columns: TrainingColumns, lam, n_points=None, seed=0):
    """The preconditioner ``kind`` (PRECONDITIONERS) on ``n_points`` inducing training points
    (default: default_points)."""
    if kind not in PRECONDITIONERS:
        raise ValueError(f"preconditioner must be one of {', '.join(PRECONDITIONERS)}, got {kind!r}")
    if kind == "none":
        return IdentityPreconditioner()
    m = columns.m
    n_points = min(m, n_points or default_points(m, columns.n_atoms))
    rng = np.random.default_rng(seed)
    if kind == "nystrom":
        F = nystrom_factor(columns, rng.choice(m, n_points, replace=False))
    else:
        F = rpcholesky_factor(columns, n_points, rng)
    U, L = orthonormal_factor(F)
    return LowRankPreconditioner(U, L, lam, kind=kind, points=n_points)


def _factor_block(G, cols):
    """F_new with F_new F_new^T = G G[cols]^+ G^T: G (n, c) residual columns, G[cols] their
    (c, c) block, its numerically zero eigenvalues (rigid-body modes) dropped."""
    values, vectors = np.linalg.eigh(G[cols])
    keep = values > RELATIVE_EIGENVALUE_FLOOR * max(values.max(initial=0.0), 0.0)
    if not keep.any():
        return G[:, :0]
    return G @ (vectors[:, keep] / np.sqrt(values[keep]))


def nystrom_factor(columns: TrainingColumns, points):
    """F (n, r) with F F^T = C W^+ C^T on the given points (uniform Nystrom)."""
    points = np.sort(np.asarray(points))
    return _factor_block(columns.columns(points), columns.indices(points))


def rpcholesky_factor(columns: TrainingColumns, n_points, rng, rounds=RPCHOLESKY_ROUNDS):
    """F (n, r) by block randomly pivoted Cholesky over training points: each round draws
    points (without replacement) with probability proportional to their residual diagonal."""
    m = columns.m
    residual = columns.diagonal()
    owner = columns.row_points()
    F = np.zeros((columns.size, 0))
    chosen = np.zeros(m, dtype=bool)
    per_round = -(-n_points // rounds)
    while chosen.sum() < n_points:
        weight = np.bincount(owner, weights=np.clip(residual, 0.0, None), minlength=m)
        weight[chosen] = 0.0
        count = min(per_round, n_points - int(chosen.sum()), int((weight > 0).sum()))
        if count == 0:
            break  # the approximation is exact on every remaining point
        points = np.sort(rng.choice(m, count, replace=False, p=weight / weight.sum()))
        chosen[points] = True
        cols = columns.indices(points)
        G = columns.columns(points) - F @ F[cols].T
        F_new = _factor_block(G, cols)
        F = np.concatenate([F, F_new], axis=1)
        residual -= np.einsum("ij,ij->i", F_new, F_new)
    return F


def orthonormal_factor(F):
    """(U, L): F F^T = U diag(L) U^T, U orthonormal, L > 0 (numerically zero directions dropped)."""
    if F.shape[1] == 0:
        return F, np.zeros(0)
    values, vectors = np.linalg.eigh(F.T @ F)
    keep = values > RELATIVE_EIGENVALUE_FLOOR * values.max()
    values, vectors = values[keep], vectors[:, keep]
    return (F @ vectors) / np.sqrt(values), values
