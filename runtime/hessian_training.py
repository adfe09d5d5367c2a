"""Training on Hessians: Hessian observations beside force observations (global models, CPU).

An observation is a linear functional of the energy E ~ GP(0, k): a force component
F_r = -dE/dx_r, or a Hessian entry H_rs = d2E/dx_r dx_s with r <= s (the 3N(3N+1)/2 independent
entries of a symmetric matrix, in np.triu_indices order).  The training matrix holds each pair's
covariance: one functional applied to each argument of k(x, x') = sum_P g(D(x), D(P x')).  On the
training side, with d' = D(x') (permuted), J' its Jacobian and C'_f = d2D_f/dx'2 its curvature,

    d2k/dx'_r dx'_s = (J' e_r)^T (d2g/ddp2) (J' e_s) + grad_dp g . C'[:, r, s]:

the kernel structure's observation_term with beta = J' e_r, gamma = J' e_s (fourth order with
the query side's Hessian), plus the energy share of a force observation (energy_term) with
beta = -C'[:, r, s].  So every column of the matrix is a sum of *pieces*: force pieces (dp, beta),
whose energy shares' gradient and Hessian in the query's d come from the generated
hessian_coefficients, and observation pieces (dp, beta, gamma), from the generated
observation_coefficients.  A Hessian row of geometry x is J^T (d2e/dd2) J + sum_f (de/dd_f) C_f
of a piece's share e at x; the force rows of Hessian columns are the transpose of the Hessian
rows of force columns (the matrix is symmetric), so only Hessian rows are computed here, next
to the force-force blocks the generated assembly writes.

A trained model's energy is the same sum, weighted by the solution: the force coefficients as
before, and for each observed geometry its Hessian coefficients as a symmetric matrix G (3N x 3N).
Their pieces fold: the curvature parts into one force piece, beta = -sum_rs G_rs C[:, r, s],
appended to the training rows the generated prediction reads; the rest, <G, J^T (d2g/ddp2) J>,
into 3N observation pieces through G's eigenvectors (beta = lambda_k J v_k, gamma = J v_k).

Dense per-geometry arrays (J: F x 3N, C: F x 3N x 3N) are formed for the observed geometries
and J for the training geometries: training on Hessians is for tens of observed geometries.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from compiler.build.hessian import BasisColumns, ColumnLayout, HessianSide, dense_jacobian, energy_gradient

from .progress import Progress

# force columns whose pieces go through one call: bounds the scratch arrays (pieces x entries)
FORCE_FRAMES_PER_CALL = 16


@dataclass(frozen=True)
class ObservedGeometry:
    """What a Hessian row or column needs of one geometry: its descriptor d (F,), dense Jacobian
    J (F, 3N) and curvature C (F, 3N, 3N)."""
    d: np.ndarray
    J: np.ndarray
    C: np.ndarray

    def permuted(self, fperm) -> "ObservedGeometry":
        """The same geometry with its atoms permuted (features reordered by fperm)."""
        return ObservedGeometry(self.d[fperm], self.J[fperm], self.C[fperm])

    def sites(self, n_atoms) -> list:
        """Each atom's part (an atom-centred descriptor's features are by atom): what a local
        kernel compares."""
        n_site = len(self.d) // n_atoms
        return [ObservedGeometry(self.d[rows], self.J[rows], self.C[rows])
                for rows in (slice(i * n_site, (i + 1) * n_site) for i in range(n_atoms))]


def upper_entries(n3: int):
    """(rows, columns) of the independent entries of a symmetric 3N x 3N matrix, r <= s."""
    return np.triu_indices(n3)


def hessian_labels(H) -> np.ndarray:
    """The observed entries of Hessians H (K, 3N, 3N): (K * 3N(3N+1)/2,), in row order."""
    iu, ju = upper_entries(H.shape[1])
    return np.ascontiguousarray(H[:, iu, ju]).ravel()


def dense_jacobians(model, JAC, n_features, n3) -> np.ndarray:
    """J (M, F, 3N) of every geometry from the sparse Jacobians."""
    return np.stack([dense_jacobian(model, jac, n_features, n3) for jac in JAC])


def observed_geometries(model, R, z, D, JAC) -> list:
    """ObservedGeometry of each geometry R (K, N, 3) with descriptors D and sparse Jacobians JAC:
    the curvature one feature at a time through the generated add_descriptor_curvature."""
    n_features, n3 = D.shape[1], 3 * R.shape[1]
    out = []
    for x, d, jac in zip(R, D, JAC):
        C = np.zeros((n_features, n3, n3))
        unit = np.zeros(n_features)
        for f in range(n_features):
            unit[f] = 1.0
            model.descriptor.add_curvature(x, z, unit, C[f])
            unit[f] = 0.0
        out.append(ObservedGeometry(d, dense_jacobian(model, jac, n_features, n3), C))
    return out


# --------------------------------------------------------------------------- Hessian rows of pieces

def _piece_entries(layout, CT, d, pieces: dict, query: ObservedGeometry) -> np.ndarray:
    """(T, pieces): the independent Hessian entries at ``query`` of each piece's energy share, from
    its coefficients CT (columns, pieces) over the basis; ``pieces``: the pieces' basis vectors dp,
    beta (, gamma) as columns (F, pieces).  Entries are rows, so every gather reads whole rows of
    the projected vectors (3N, pieces), and each left vector u needs one product with the sum of
    its right vectors."""
    n3 = query.J.shape[1]
    iu, ju = upper_entries(n3)
    basis = BasisColumns(d, pieces)
    projected = {}

    def P(name):  # J^T w for each piece (3N, pieces); d is one column
        if name not in projected:
            projected[name] = query.J.T @ basis[name]
        return projected[name]

    gradient = _piece_gradients(layout, CT, basis)  # (F, pieces)
    out = query.C[:, iu, ju].T @ gradient  # the descriptor's curvature weighted by each gradient
    if layout.identity is not None:
        JtJ = query.J.T @ query.J
        out += JtJ[iu, ju][:, None] * CT[layout.identity][None, :]
    for u, terms in layout.terms.items():
        right = sum(CT[k] * P(w) for k, w in terms)  # (3N, pieces): sum_w c_uw (J^T w)
        out += P(u)[iu] * right[ju]
    return out


def _piece_gradients(layout, CT, basis) -> np.ndarray:
    """(F, pieces): each piece's energy-share gradient in d (not summed over pieces)."""
    total = None
    for k, b in layout.gradient:
        term = CT[k] * basis[b]
        total = term if total is None else total + term
    return total


def _force_piece_entries(model, hyper, query, dp, beta, weights=None):
    """Hessian entries at ``query`` of force pieces (dp, beta) (rows (pieces, F) each); with
    ``weights`` (pieces,), energy pieces w k(d, dp) are added (an energy observation's share)."""
    C = np.empty((len(dp), len(model.hessian_columns)))
    model.hessian_coefficients(query.d, dp, beta, np.zeros(len(dp)) if weights is None else weights, hyper, C)
    return _piece_entries(ColumnLayout.of(model.hessian_columns), np.ascontiguousarray(C.T), query.d,
                          {"dp": dp.T, "beta": beta.T}, query)


def _observation_piece_entries(model, hyper, query, dp, beta, gamma):
    """Hessian entries at ``query`` of observation pieces (dp, beta, gamma)."""
    C = np.empty((len(dp), len(model.observation_columns)))
    model.observation_coefficients(query.d, dp, beta, gamma, hyper, C)
    return _piece_entries(ColumnLayout.of(model.observation_columns), np.ascontiguousarray(C.T), query.d,
                          {"dp": dp.T, "beta": beta.T, "gamma": gamma.T}, query)


# --------------------------------------------------------------------------- assembly

def hessian_column_entries(model, hyper, query: ObservedGeometry, column: ObservedGeometry) -> np.ndarray:
    """Cov(H(x), H(x')) (T, T) of one permuted copy ``column`` of an observed geometry x': row
    entries at ``query``, column entries r <= s of x'."""
    n3 = column.J.shape[1]
    iu, ju = upper_entries(n3)
    dp = np.repeat(column.d[None], len(iu), axis=0)
    JT = np.ascontiguousarray(column.J.T)
    second = _observation_piece_entries(model, hyper, query, dp, JT[iu], JT[ju])
    return second + _force_piece_entries(model, hyper, query, dp, np.ascontiguousarray(-column.C[:, iu, ju].T))


def force_column_entries(model, hyper, query: ObservedGeometry, D, J) -> np.ndarray:
    """Cov(H(x), F(x_m)) (T, M 3N) of permuted training geometries with descriptors D (M, F) and
    dense Jacobians J (M, F, 3N): row entries at ``query``, columns each geometry's force components."""
    m, n_features, n3 = J.shape
    dp = np.repeat(D, n3, axis=0)
    beta = np.ascontiguousarray(J.transpose(0, 2, 1).reshape(m * n3, n_features))
    return _force_piece_entries(model, hyper, query, dp, beta)


def energy_column_entries(model, hyper, query: ObservedGeometry, D) -> np.ndarray:
    """Cov(H(x), E(x_m)) (T, M) of permuted training geometries with descriptors D (M, F): the
    Hessian entries at ``query`` of k(D(x), d_m)."""
    return _force_piece_entries(model, hyper, query, D, np.zeros_like(D), np.ones(len(D)))


def assemble_hessian_rows(model, D, JAC, fperms, hyper, observed: list, K, n_force_rows, progress=True,
                          energy_rows=False):
    """Writes the Hessian observations' rows into the training matrix K (C-ordered, upper triangle
    read by the solver): for each observed geometry a (rows n_force_rows + a T ..., after the M
    energy rows with ``energy_rows``), its covariance with every force column and energy column
    (written transposed, into those rows: the upper triangle) and with every observed geometry
    b >= a.  ``observed``: ObservedGeometry per observed geometry."""
    m, n_features = D.shape
    n3 = observed[0].J.shape[1]
    T = n3 * (n3 + 1) // 2
    first = n_force_rows + (m if energy_rows else 0)  # the first Hessian row
    J = dense_jacobians(model, JAC, n_features, n3)
    with Progress(len(observed), "Hessian rows", enabled=progress) as bar:
        for a, query in enumerate(observed):
            rows = slice(first + a * T, first + (a + 1) * T)
            for start in range(0, m, FORCE_FRAMES_PER_CALL):
                frames = slice(start, min(start + FORCE_FRAMES_PER_CALL, m))
                block = sum(force_column_entries(model, hyper, query, D[frames][:, p], J[frames][:, p])
                            for p in fperms)
                K[frames.start * n3:frames.stop * n3, rows] = block.T
            if energy_rows:
                K[n_force_rows:n_force_rows + m, rows] = sum(energy_column_entries(model, hyper, query, D[:, p])
                                                             for p in fperms).T
            for b in range(a, len(observed)):
                columns = slice(first + b * T, first + (b + 1) * T)
                K[rows, columns] = sum(hessian_column_entries(model, hyper, query, observed[b].permuted(p))
                                       for p in fperms)
            bar.update(1)


def assemble_local_hessian_rows(model, D, JAC, z, hyper, observed: list, K, n_force_rows, progress=True,
                                energy_rows=False):
    """assemble_hessian_rows for the local kernel sum_ij [z_i = z'_j] k(d_i, d'_j): every entry is the
    sum over pairs of like atoms of the global entries between the two atoms' parts (a query atom's
    d_i, J_i, C_i against a training atom's), since each term of k involves one atom of each side."""
    m, n = D.shape[0], len(z)
    n3 = 3 * n
    T = n3 * (n3 + 1) // 2
    first = n_force_rows + (m if energy_rows else 0)
    JS = model.descriptor.dense_site_jacobians(JAC, n)  # (M, N, F_site, 3N)
    DS = D.reshape(m, n, -1)
    sites = [geometry.sites(n) for geometry in observed]
    with Progress(len(observed), "Hessian rows", enabled=progress) as bar:
        for a, query_sites in enumerate(sites):
            rows = slice(first + a * T, first + (a + 1) * T)
            forces, energies = np.zeros((T, m, n3)), np.zeros((T, m))
            hessians = np.zeros((T, (len(observed) - a) * T))
            for i, query in enumerate(query_sites):
                same = np.flatnonzero(z == z[i])  # the training atoms a term pairs with atom i
                for start in range(0, m, FORCE_FRAMES_PER_CALL):
                    frames = slice(start, min(start + FORCE_FRAMES_PER_CALL, m))
                    count = frames.stop - frames.start
                    entries = force_column_entries(model, hyper, query, DS[frames][:, same].reshape(-1, DS.shape[2]),
                                                   JS[frames][:, same].reshape(-1, *JS.shape[2:]))
                    forces[:, frames] += entries.reshape(T, count, len(same), n3).sum(axis=2)
                if energy_rows:
                    entries = energy_column_entries(model, hyper, query, DS[:, same].reshape(-1, DS.shape[2]))
                    energies += entries.reshape(T, m, len(same)).sum(axis=2)
                for b in range(a, len(observed)):
                    block = hessians[:, (b - a) * T:(b - a + 1) * T]
                    for j in same:
                        block += hessian_column_entries(model, hyper, query, sites[b][j])
            K[:n_force_rows, rows] = forces.reshape(T, -1).T
            if energy_rows:
                K[n_force_rows:n_force_rows + m, rows] = energies.T
            K[rows, rows.start:first + len(observed) * T] = hessians
            bar.update(1)


# --------------------------------------------------------------------------- the trained model's pieces

@dataclass(frozen=True)
class ObservationPieces:
    """A trained model's Hessian-observation terms as pieces: ``force`` (DT, BT rows to append to
    the permuted training rows, one per observed geometry and permutation) and ``side`` (a
    HessianSide of the observation pieces, 3N per observed geometry and permutation; for a local
    model a dict element -> HessianSide, 3N per observed atom of that element)."""
    force_DT: np.ndarray
    force_BT: np.ndarray
    side: HessianSide | dict


def observation_pieces(observed: list, weights, fperms, z=None) -> ObservationPieces:
    """The pieces of observed geometries (ObservedGeometry each) with Hessian coefficients
    ``weights`` (K, T), for every feature permutation.  With ``z`` (a local model's atoms), the
    observation pieces are per atom and ``side`` is a dict: element -> HessianSide of its atoms'."""
    n3 = observed[0].J.shape[1]
    iu, ju = upper_entries(n3)
    force_DT, force_BT, pieces = [], [], []
    for geometry, w in zip(observed, weights):
        G = np.zeros((n3, n3))
        G[iu, ju] = w
        G = 0.5 * (G + G.T)  # <G, S> = sum_{r<=s} w_rs S_rs for every symmetric S
        lam, V = np.linalg.eigh(G)
        for p in fperms:
            copy = geometry.permuted(p)
            force_DT.append(copy.d)
            force_BT.append(-np.einsum("rs,frs->f", G, copy.C))  # feature by feature: atom parts included
            for element, part in ([(None, copy)] if z is None else zip(z, copy.sites(len(z)))):
                JV = part.J @ V  # (F, 3N): J v_k
                pieces.append((element, np.repeat(part.d[None], n3, axis=0), (JV * lam).T, JV.T))
    sides = {element: _side([piece for piece in pieces if piece[0] == element])
             for element in {piece[0] for piece in pieces}}
    return ObservationPieces(np.array(force_DT), np.array(force_BT), sides[None] if z is None else sides)


def _side(pieces) -> HessianSide:
    """The HessianSide of observation pieces [(element, DT, BT, GT), ...]."""
    DT, BT, GT = (np.ascontiguousarray(np.concatenate([piece[k] for piece in pieces])) for k in (1, 2, 3))
    return HessianSide(DT, BT, None, GT)


def with_observations(model, backend, state, fperms, training, observed=None, local=False):
    """``training`` (PermutedTraining) with a trained state's Hessian observations as pieces: their
    force pieces appended to DT, BT (for a ``local`` model as extra geometries: each atom's part of a
    force piece is its own), the observation pieces as ``observations``.  ``observed``: the
    ObservedGeometry of each of state.R_hessian, when the caller has them (else evaluated here)."""
    if observed is None:
        D, JAC = backend.evaluate(state.R_hessian, state.z)
        observed = observed_geometries(model, state.R_hessian, state.z, D, JAC)
    pieces = observation_pieces(observed, state.hessian_weights, fperms, state.z if local else None)
    # the appended force pieces carry no energy weight
    WT = None if training.WT is None else np.concatenate([training.WT, np.zeros(len(pieces.force_DT))])
    return dataclasses.replace(training, DT=np.ascontiguousarray(np.concatenate([training.DT, pieces.force_DT])),
                               BT=np.ascontiguousarray(np.concatenate([training.BT, pieces.force_BT])), WT=WT,
                               observations=pieces.side)


def observation_sums(model, d, side: HessianSide, hyper):
    """(energy share, its gradient in d (F,)) of all observation pieces of ``side`` at the
    descriptor vector d (a geometry's, or a local model's atom's)."""
    layout = ColumnLayout.of(model.observation_columns)
    C = np.empty((side.n_rows, len(model.observation_columns)))
    model.observation_coefficients(d, side.DT, side.BT, side.GT, hyper, C)
    CT = np.ascontiguousarray(C.T)
    return CT[layout.value].sum(), energy_gradient(layout, CT, BasisColumns(d, side.columns))


def add_observation_terms(model, DQ, JACQ, side, hyper, E, F, z=None):
    """E, F += the observation pieces' energy shares and forces at query geometries (in place);
    for a local model (``z``: the query atoms), ``side`` maps each element to its pieces and every
    atom's part of d gets its element's."""
    acc = np.zeros(DQ.shape)
    n_site = DQ.shape[1] // (1 if z is None else len(z))
    for q, d in enumerate(DQ):
        for i, element in enumerate([None] if z is None else z):
            if element is not None and element not in side:
                continue  # no observed atom of this element
            rows = slice(i * n_site, (i + 1) * n_site)
            energy, acc[q, rows] = observation_sums(model, d[rows], side if z is None else side[element], hyper)
            E[q] += energy
    forces = np.empty(F.shape)
    model.forces_from_descriptor_gradients(JACQ, acc, forces)
    F -= forces
