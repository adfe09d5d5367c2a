"""Hessian prediction: d2E/dx2 of a model at query geometries, from the generated entry points.

A predicted energy is a sum over permuted training points, E(x) = sum_m e_m(D(x)), so with
d = D(x) and J = dD/dx (sparse),

    d2E/dx2 = J^T (sum_m d2 e_m / dd2) J + sum_f (dE/dd_f) d2 D_f / dx2.

The compiled ``hessian_coefficients`` gives, per training point, the coefficients of
d e_m / dd and d2 e_m / dd2 over the basis delta = d - dp_m, d, dp_m, beta_m (the kernel
structure's prediction_gradient and prediction_hessian; which columns exist is the
compiler's METADATA).  This module, their Python face, sums them: the gradient in descriptor
space; the Hessian's rank-one terms c u w^T with one matrix product (BLAS) per left basis
vector, either in descriptor space (an F x F matrix A, then J^T A J) or in atom space (the
training rows projected through the query's Jacobian first, c (J^T u)(J^T w)^T), whichever
takes fewer flops.  The training rows are kept transposed (F, MP: HessianSide, once per model),
so a training point is a column: its coefficient scales a column, and the projection's loop
over training points vectorises.  Mirrored terms with equal coefficients (c_uw = c_wu, as in the
Hessian of a scalar) are summed once, as S + S^T.  Nothing of size 3N x F x 3N is formed; the
descriptor's own curvature is added term by term by the generated ``add_descriptor_curvature``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from compiler.build.compiled import thread_scratch


@dataclass(frozen=True)
class ColumnLayout:
    """Which column of hessian_coefficients' output is what."""
    gradient: tuple      # (column, basis) of dE/dd
    identity: int | None  # column of the Hessian's identity coefficient
    terms: dict          # left basis u -> ((column, right basis w), ...) of the terms c u w^T
    value: int | None = None  # column of the energy share itself (Hessian observations' columns)

    @classmethod
    def of(cls, columns) -> "ColumnLayout":
        gradient, identity, terms, value = [], None, {}, None
        for k, name in enumerate(columns):
            kind, what = name.split(":")
            if kind == "value":
                value = k
            elif kind == "gradient":
                gradient.append((k, what))
            elif what == "identity":
                identity = k
            else:
                u, w = what.split(",")
                terms.setdefault(u, []).append((k, w))
        return cls(tuple(gradient), identity, {u: tuple(v) for u, v in terms.items()}, value)

    @property
    def projected(self) -> set:
        """The basis vectors the Hessian's rank-one terms project to atom space."""
        return set(self.terms) | {w for pairs in self.terms.values() for _, w in pairs}

    @property
    def weighted_terms(self) -> dict:
        """u -> ((column, w, factor 1), ...): every term c u w^T."""
        return {u: tuple((k, w, 1.0) for k, w in pairs) for u, pairs in self.terms.items()}

    @property
    def mirrored(self):
        """((column of u w^T, column of w u^T), ...) for every u != w, each pair once; None if
        a term has no mirror."""
        column = {(u, w): k for u, pairs in self.terms.items() for k, w in pairs}
        if any((w, u) not in column for u, w in column):
            return None
        return tuple((k, column[w, u]) for (u, w), k in column.items() if u < w)

    @property
    def halved_terms(self) -> dict:
        """S's terms when the sum is S + S^T: u u^T at half its coefficient, and of each mirrored
        pair the orientation whose left vector comes first."""
        order = list(self.terms)
        halves = {u: tuple((k, w, 0.5 if w == u else 1.0) for k, w in pairs
                           if w == u or order.index(u) < order.index(w)) for u, pairs in self.terms.items()}
        return {u: terms for u, terms in halves.items() if terms}

    def mirrored_coefficients_equal(self, CT) -> bool:
        """Whether every mirrored pair of columns of CT (columns, MP) is equal, value for value."""
        pairs = self.mirrored
        return pairs is not None and all(np.array_equal(CT[a], CT[b]) for a, b in pairs)


class HessianSide:
    """The training side of Hessian prediction, prepared once per trained model: DT, BT (MP, F)
    and the energy weights WT (MP,; zeros for a forces-only model) as hessian_coefficients reads
    them, and DT, BT transposed (F, MP), the layout of the sums: there a training point is a
    column, so scaling by its coefficients broadcasts along rows and project_rows' innermost
    loop (over training points) vectorises.  ``GT``: the second directions of Hessian-observation
    pieces (runtime/hessian_training.py), whose rows DT, BT, GT observation_coefficients reads."""

    def __init__(self, DT, BT, WT, GT=None):
        self.DT, self.BT, self.GT = DT, BT, GT
        self.WT = np.zeros(len(DT)) if WT is None else np.ascontiguousarray(WT, dtype=np.float64)
        self.columns = {"dp": np.ascontiguousarray(DT.T), "beta": np.ascontiguousarray(BT.T),
                        **({} if GT is None else {"gamma": np.ascontiguousarray(GT.T)})}

    @property
    def n_rows(self) -> int:
        return self.DT.shape[0]


def predict_hessians(model, R3, z, D, JAC, DT, BT, WT, hyper, side=None, observations=None) -> np.ndarray:
    """d2E/dx2 (Q, 3N, 3N) of a compiled ``model`` at validated geometries R3 (Q, N, 3) with
    descriptors D and sparse Jacobians JAC, against the permuted training rows DT, BT (MP, F) and
    energy weights WT (MP,; None for a forces-only model): the energy E the generated predict
    computes (unscaled, without a constant).  ``side``: their HessianSide, prepared once by the
    caller (else made here).  ``observations``: the HessianSide of a model's Hessian-observation
    pieces (runtime/hessian_training.py), whose energy shares join E."""
    side = HessianSide(DT, BT, WT) if side is None else side
    if side.n_rows != DT.shape[0]:
        raise ValueError(f"Hessian side was prepared for {side.n_rows} training rows, not {DT.shape[0]}")
    layout = ColumnLayout.of(model.hessian_columns)
    q_count, n, _ = R3.shape
    C = thread_scratch("hessian_coefficients", (side.n_rows, len(model.hessian_columns)))
    H = np.empty((q_count, 3 * n, 3 * n))
    for q in range(q_count):
        model.hessian_coefficients(D[q], side.DT, side.BT, side.WT, hyper, C)
        H[q] = _hessian_one(model, layout, R3[q], z, D[q], JAC[q], side, np.ascontiguousarray(C.T), hyper,
                            observations)
    return H


def _hessian_one(model, layout, x, z, d, jac, side, CT, hyper, observations=None):
    """One geometry's Hessian from its coefficients CT (columns, MP) (and its observation pieces')."""
    n3 = 3 * x.shape[0]
    J = dense_jacobian(model, jac, len(d), n3)
    project = lambda columns, name=None: _projected(model, columns, jac, n3, name)
    H, gradient = hessian_terms(layout, d, J, project, side, CT)
    if observations is not None:
        H_pieces, gradient_pieces = observation_terms(model, d, J, project, observations, hyper)
        H += H_pieces
        gradient += gradient_pieces
    model.descriptor.add_curvature(x, z, gradient, H)
    return H


def observation_terms(model, d, J, project, observations, hyper):
    """hessian_terms of the Hessian-observation pieces in ``observations`` (a HessianSide with GT),
    their coefficients from the generated observation_coefficients."""
    C = thread_scratch("observation_coefficients", (observations.n_rows, len(model.observation_columns)))
    model.observation_coefficients(d, observations.DT, observations.BT, observations.GT, hyper, C)
    return hessian_terms(ColumnLayout.of(model.observation_columns), d, J, project, observations,
                         np.ascontiguousarray(C.T))


def hessian_terms(layout, d, J, project, side, CT):
    """(J^T (d2E/dd2) J (3N, 3N), dE/dd (F,)) of the energy sum whose coefficients are CT (columns,
    MP) at the descriptor vector d with Jacobian J (F, 3N); ``project(columns, name)``: J^T columns
    (3N, MP).  The descriptor's own curvature is the caller's (it weights it by dE/dd)."""
    basis = BasisColumns(d, side.columns)
    n3 = J.shape[1]
    in_descriptor_space = descriptor_space_is_cheaper(layout, len(d), n3)
    # each basis vector as columns over training points, in descriptor space (F) or projected to
    # atom space (J^T w: 3N)
    columns = {b: basis[b] if in_descriptor_space else project(basis[b], b) for b in layout.projected}
    total = _rank_one_sum(layout, CT, columns, len(d) if in_descriptor_space else n3)
    H = J.T @ total @ J if in_descriptor_space else total
    if layout.identity is not None:
        H += CT[layout.identity].sum() * (J.T @ J)
    return H, energy_gradient(layout, CT, basis)


def site_hessian(model, d, J, project, side, hyper):
    """hessian_terms of one descriptor vector d (F,) against ``side``'s training rows (a local
    model's atom: runtime/local.py), its coefficients from the generated hessian_coefficients."""
    C = thread_scratch("hessian_coefficients", (side.n_rows, len(model.hessian_columns)))
    model.hessian_coefficients(d, side.DT, side.BT, side.WT, hyper, C)
    return hessian_terms(ColumnLayout.of(model.hessian_columns), d, J, project, side, np.ascontiguousarray(C.T))


def _rank_one_sum(layout, CT, columns, size):
    """(size, size): the sum over training points m and terms (u, w) of c_uw[m] u_m w_m^T, one
    matrix product per left vector u (U (size, MP) times the combination of its right vectors).
    When every mirrored pair of terms has equal coefficients (the Hessian of a scalar: c_uw =
    c_wu), the sum is S + S^T with half the terms in S, so half the matrix products."""
    symmetric = layout.mirrored_coefficients_equal(CT)
    total = np.zeros((size, size))
    for u, terms in (layout.halved_terms if symmetric else layout.weighted_terms).items():
        Y = _combination(CT, terms, columns)  # (size, MP): sum_w c_uw w, column by column
        total += columns[u] @ Y.T if u != "d" else np.outer(columns["d"][:, 0], Y.sum(axis=1))
    return total + total.T if symmetric else total


def _combination(CT, terms, columns):
    """sum over (column k, basis w, factor) of factor * CT[k] * columns[w], in scratch memory."""
    (k, w, factor), rest = terms[0], terms[1:]
    shape = (columns[w].shape[0], CT.shape[1])
    Y = np.multiply(_scaled(CT[k], factor), columns[w], out=thread_scratch("hessian_combination", shape))
    term = thread_scratch("hessian_term", shape)
    for k, w, factor in rest:
        Y += np.multiply(_scaled(CT[k], factor), columns[w], out=term)
    return Y


def _scaled(c, factor):
    return c if factor == 1.0 else factor * c


def descriptor_space_is_cheaper(layout, n_features, n3) -> bool:
    """Whether the rank-one terms cost fewer flops summed as F x F matrices (then J^T A J once)
    than projected first (J^T w for every row, then 3N x 3N sums): F^2 per left vector against
    F 3N per projected vector plus (3N)^2 per left vector.  Ethanol's 36 pair features against
    27 coordinates: descriptor space; aspirin's 210 against 63: atom space."""
    left, projected = len(layout.terms), len(layout.projected)
    return left * n_features ** 2 <= projected * n_features * n3 + left * n3 ** 2


def energy_gradient(layout, CT, basis) -> np.ndarray:
    """dE/dd (F,): sum over training points of the gradient columns times their basis vectors."""
    total = np.zeros(basis.d.shape[0])
    for k, b in layout.gradient:
        total += basis[b] @ CT[k] if b != "d" else CT[k].sum() * basis.d
    return total


class BasisColumns:
    """The basis vectors as columns over training points (F, MP; d: one column), each built once:
    d, the training side's ``columns`` (dp, beta, gamma: a HessianSide's) and delta = d - dp."""

    def __init__(self, d, columns):
        self.d = d
        self._columns = {**columns, "d": d[:, None]}

    def __getitem__(self, name):
        if name not in self._columns:  # delta = d - dp_m, formed in descriptor space: no cancellation in J^T
            dp = self._columns["dp"]
            self._columns[name] = np.subtract(self.d[:, None], dp, out=thread_scratch("hessian_delta", dp.shape))
        return self._columns[name]


def _projected(model, columns, jac, n3, name=None):
    """J^T w for each column w of ``columns`` (F, M) -> (3N, M), through the sparse Jacobian:
    project_rows on the transposes, column-major, where its loop over training points vectorises."""
    shape = (n3, columns.shape[1])
    X = np.empty(shape) if name is None else thread_scratch(f"hessian_projected_{name}", shape)
    model.project_rows(columns.T, jac, X.T)
    return X


def dense_jacobian(model, jac, n_features, n3):
    """J (F, 3N) from the sparse one: column f of J^T is J^T e_f, the projection of a unit vector."""
    return _projected(model, np.eye(n_features), jac, n3).T
