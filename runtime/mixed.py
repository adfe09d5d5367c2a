"""Geometries of different compositions in one local model, as padded arrays.

A set of geometries with different atom counts or elements is held as rectangular arrays:
R (M, N, 3), F (M, N, 3) and z (M, N), N the largest atom count, where z[m, a] = 0 marks a
padded slot (no atom; slots after the real atoms only).  A local model
(runtime/local.py) compares atoms, so a padded slot is an atom that matches nothing: its
features and Jacobian rows are zero and its element 0 never equals a real one.  Its training
matrix rows are zero but for lambda on the diagonal, and its label is 0, so its coefficient is
exactly 0 and the real rows' solution is that of the unpadded system.  Descriptors are always
evaluated per composition, on the real atoms only (a padded slot must not be anyone's neighbour),
and scattered into the padded layout.
"""
from __future__ import annotations

import numpy as np

from compiler import checks
from compiler.build.compiled import SiteJacobians


def is_padded(z) -> bool:
    """Whether z gives elements per geometry (M, N) rather than one composition (N,)."""
    return np.ndim(z) == 2


def atom_counts(Z) -> np.ndarray:
    """The real atoms of each geometry (M,)."""
    return (np.asarray(Z) > 0).sum(axis=1)


def checked_elements(Z, n_frames, n_slots, what="z") -> np.ndarray:
    """Z (M, N) as int64: atomic numbers 1..118 then only zeros in each row, at least 2 atoms;
    ValueError naming the frame otherwise."""
    Z = np.asarray(Z)
    if Z.shape != (n_frames, n_slots):
        raise ValueError(f"{what}: expected shape ({n_frames}, {n_slots}) (elements per geometry, 0 for a "
                         f"padded slot), got {Z.shape}")
    if not np.issubdtype(Z.dtype, np.integer) and not (np.isfinite(Z).all() and (Z == np.round(Z)).all()):
        raise ValueError(f"{what}: atomic numbers must be integers")
    Z = Z.astype(np.int64)
    for m, row in enumerate(Z):
        n = int((row > 0).sum())
        if row.min() < 0 or row.max() > 118 or (row[:n] == 0).any() or (row[n:] != 0).any():
            raise ValueError(f"{what}: frame {m} must hold atomic numbers 1..118 followed only by 0 (padded "
                             f"slots), got {row.tolist()}")
        if n < 2:
            raise ValueError(f"{what}: frame {m} has {n} atom(s); a geometry needs at least 2")
    return Z


def element_counts(Z) -> np.ndarray:
    """(M, 119): how many atoms of each atomic number every geometry has (padded slots not counted)."""
    Z = np.asarray(Z, dtype=np.int64)
    counts = np.zeros((len(Z), 119))
    np.add.at(counts, (np.repeat(np.arange(len(Z)), Z.shape[1]), Z.ravel()), 1.0)
    counts[:, 0] = 0.0
    return counts


def compositions(Z):
    """[(elements (n,), frame indices), ...]: the geometries grouped by their real atoms' elements."""
    groups = {}
    for m, row in enumerate(np.asarray(Z)):
        groups.setdefault(tuple(row[row > 0].tolist()), []).append(m)
    return [(np.array(key, dtype=np.int64), np.array(frames)) for key, frames in groups.items()]


def checked_geometries(R, Z, what="R", frame_index=None):
    """R (M, N, 3) float64 with every geometry's real atoms checked (checks.geometries; messages
    number frame k as frame_index[k], by default k); the padded slots' coordinates are set to 0."""
    R = np.array(R, dtype=np.float64)
    if R.ndim != 3 or R.shape[:2] != np.shape(Z) or R.shape[2] != 3:
        raise ValueError(f"{what}: expected shape {np.shape(Z) + (3,)} (padded like z), got {R.shape}")
    index = np.arange(len(R)) if frame_index is None else np.asarray(frame_index)
    for elements, frames in compositions(Z):
        checks.geometries(R[frames, :len(elements)], what, frame_index=index[frames])
    R[np.asarray(Z) == 0] = 0.0
    return R


def padded_descriptors(evaluate, R, Z, n_slots):
    """(D (M, N F_site), SiteJacobians (M, N, F_site, 3N)) of padded geometries, each composition
    evaluated on its real atoms by ``evaluate(R (m, n, 3), z (n,))`` -> (D, dense site Jacobians)."""
    D = JD = None
    for elements, frames in compositions(Z):
        n = len(elements)
        d, jd = evaluate(np.ascontiguousarray(R[frames, :n]), elements)
        n_site = d.shape[1] // n
        if D is None:
            D = np.zeros((len(R), n_slots * n_site))
            JD = np.zeros((len(R), n_slots, n_site, 3 * n_slots))
        D[frames, :n * n_site] = d
        JD[frames[:, None], np.arange(n)[None, :], :, :3 * n] = jd
    return D, SiteJacobians(JD)


def contract_sites(JD: SiteJacobians, V) -> np.ndarray:
    """B (M, N F_site): each site's Jacobian times its geometry's coefficients V (M, N, 3)."""
    m, n, n_site, n3 = JD.dense.shape
    return np.einsum("mifc,mc->mif", JD.dense, V.reshape(m, n3)).reshape(m, n * n_site)


def scattered(R, Z, compute, shapes):
    """Per composition, ``compute(R (m, n, 3), elements (n,))`` -> arrays whose leading axis is the
    geometry and whose atom-sized axes (3N or N, as ``shapes`` lists: 'E', 'F' or 'H') are padded
    back to the slots of R."""
    m, n_slots = len(R), R.shape[1]
    out = {"E": lambda: np.zeros(m), "F": lambda: np.zeros((m, n_slots, 3)),
           "H": lambda: np.zeros((m, 3 * n_slots, 3 * n_slots))}
    results = [out[kind]() for kind in shapes]
    for elements, frames in compositions(Z):
        n = len(elements)
        for kind, result, part in zip(shapes, results, compute(np.ascontiguousarray(R[frames, :n]), elements)):
            if kind == "E":
                result[frames] = part
            elif kind == "F":
                result[frames, :n] = part
            else:
                result[frames[:, None, None], np.arange(3 * n)[None, :, None], np.arange(3 * n)[None, None, :]] = part
    return results
