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
takes fewer flops.  Nothing of size 3N x F x 3N is formed; the descriptor's own curvature is
added term by term by the generated ``add_descriptor_curvature``.
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

    @classmethod
    def of(cls, columns) -> "ColumnLayout":
        gradient, identity, terms = [], None, {}
        for k, name in enumerate(columns):
            kind, what = name.split(":")
            if kind == "gradient":
                gradient.append((k, what))
            elif what == "identity":
                identity = k
            else:
                u, w = what.split(",")
                terms.setdefault(u, []).append((k, w))
        return cls(tuple(gradient), identity, {u: tuple(v) for u, v in terms.items()})

    @property
    def projected(self) -> set:
        """The basis vectors the Hessian's rank-one terms project to atom space."""
        return set(self.terms) | {w for pairs in self.terms.values() for _, w in pairs}


def predict_hessians(model, R3, z, D, JAC, DT, BT, WT, hyper) -> np.ndarray:
    """d2E/dx2 (Q, 3N, 3N) of a compiled ``model`` at validated geometries R3 (Q, N, 3) with
    descriptors D and sparse Jacobians JAC, against the permuted training rows DT, BT (MP, F) and
    energy weights WT (MP,; None for a forces-only model): the energy E the generated predict
    computes (unscaled, without a constant)."""
    layout = ColumnLayout.of(model.hessian_columns)
    q_count, n, _ = R3.shape
    WT = np.zeros(len(DT)) if WT is None else np.ascontiguousarray(WT, dtype=np.float64)
    C = np.empty((len(DT), len(model.hessian_columns)))
    H = np.empty((q_count, 3 * n, 3 * n))
    for q in range(q_count):
        model.hessian_coefficients(D[q], DT, BT, WT, hyper, C)
        H[q] = _hessian_one(model, layout, R3[q], z, D[q], JAC[q], DT, BT, C)
    return H


def _hessian_one(model, layout, x, z, d, jac, DT, BT, C):
    basis = _Basis(d, DT, BT)
    n3 = 3 * x.shape[0]
    J = _dense_jacobian(model, jac, len(d), n3)
    in_descriptor_space = descriptor_space_is_cheaper(layout, len(d), n3)
    # each basis vector's rows, in descriptor space (F) or projected to atom space (J^T w: 3N)
    rows = {b: basis[b] if in_descriptor_space else _projected(model, basis[b], jac, n3, b)
            for b in layout.projected}
    total = np.zeros((len(d), len(d)) if in_descriptor_space else (n3, n3))
    for u, pairs in layout.terms.items():
        Y = _combination(C, pairs, rows)  # (MP, .): sum_w c_uw w, row by row
        total += rows[u].T @ Y if u != "d" else np.outer(rows["d"][0], Y.sum(axis=0))
    H = J.T @ total @ J if in_descriptor_space else total
    if layout.identity is not None:
        H += C[:, layout.identity].sum() * (J.T @ J)
    model.descriptor.add_curvature(x, z, energy_gradient(layout, C, basis), H)
    return H


def _combination(C, pairs, rows):
    """sum over (column k, basis w) of C[:, k] * rows[w], row by row, in scratch memory."""
    (k, w), rest = pairs[0], pairs[1:]
    shape = (C.shape[0], rows[w].shape[1])
    Y = np.multiply(C[:, k, None], rows[w], out=thread_scratch("hessian_combination", shape))
    term = thread_scratch("hessian_term", shape)
    for k, w in rest:
        Y += np.multiply(C[:, k, None], rows[w], out=term)
    return Y


def descriptor_space_is_cheaper(layout, n_features, n3) -> bool:
    """Whether the rank-one terms cost fewer flops summed as F x F matrices (then J^T A J once)
    than projected first (J^T w for every row, then 3N x 3N sums): F^2 per left vector against
    F 3N per projected vector plus (3N)^2 per left vector.  Ethanol's 36 pair features against
    27 coordinates: descriptor space; aspirin's 210 against 63: atom space."""
    left, projected = len(layout.terms), len(layout.projected)
    return left * n_features ** 2 <= projected * n_features * n3 + left * n3 ** 2


def energy_gradient(layout, C, basis) -> np.ndarray:
    """dE/dd (F,): sum over training points of the gradient columns times their basis vectors."""
    total = np.zeros(basis.d.shape[0])
    for k, b in layout.gradient:
        total += C[:, k] @ basis[b] if b != "d" else C[:, k].sum() * basis.d
    return total


class _Basis:
    """The basis vectors as rows over training points (d: one row), each built once."""

    def __init__(self, d, DT, BT):
        self.d = d
        self._rows = {"dp": DT, "beta": BT, "d": d[None]}

    def __getitem__(self, name):
        if name not in self._rows:  # delta = d - dp_m, formed in descriptor space: no cancellation in J^T
            dp = self._rows["dp"]
            self._rows[name] = np.subtract(self.d, dp, out=thread_scratch("hessian_delta", dp.shape))
        return self._rows[name]


def _projected(model, rows, jac, n3, name=None):
    """J^T w for each row w (MP, F) -> (MP, 3N), through the sparse Jacobian."""
    X = np.empty((rows.shape[0], n3)) if name is None else thread_scratch(f"hessian_projected_{name}",
                                                                          (rows.shape[0], n3))
    model.project_rows(rows, jac, X)
    return X


def _dense_jacobian(model, jac, n_features, n3):
    """J (F, 3N) from the sparse one: row f of J is J^T e_f, the projection of a unit vector."""
    return _projected(model, np.eye(n_features), jac, n3)
