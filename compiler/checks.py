"""Validation of arrays handed to compiled kernels: bad input fails here, with a
message naming the frame and atoms, never as a NaN or a Numba traceback."""
from __future__ import annotations

from functools import lru_cache

import numpy as np

MIN_DISTANCE = 1e-8  # Å; closer atoms make every distance-based descriptor singular


def geometries(R, what="R", n_atoms=None, frame_index=None):
    """Return (R as float64 (M, N, 3), whether a single geometry was given).

    ``frame_index`` (M,): the number messages give frame k (e.g. its index in the file R was
    taken from); by default k itself."""
    arr = np.asarray(R, dtype=np.float64)
    single = arr.ndim == 2
    if arr.ndim not in (2, 3) or arr.shape[-1] != 3:
        raise ValueError(f"{what}: expected shape (n_atoms, 3) or (n_frames, n_atoms, 3), got {arr.shape}")
    arr = arr[None] if single else arr
    if n_atoms is not None and arr.shape[1] != n_atoms:
        raise ValueError(f"{what}: expected {n_atoms} atoms (shape (..., {n_atoms}, 3)), got {arr.shape}")
    if arr.shape[1] < 2:
        raise ValueError(f"{what}: a geometry needs at least 2 atoms, got shape {arr.shape}")
    label = _frame_labels(frame_index, len(arr), what)
    bad = ~np.isfinite(arr)
    if bad.any():
        frame, atom, _ = np.unravel_index(np.argmax(bad), bad.shape)  # the first, without listing all
        raise ValueError(f"{what}: frame {label(frame)}, atom {atom} has a non-finite coordinate "
                         f"{arr[frame, atom].tolist()}")
    _check_distances(arr, what, label)
    return np.ascontiguousarray(arr), single


def _frame_labels(frame_index, n_frames, what):
    """frame k -> the number to print for it."""
    if frame_index is None:
        return int
    index = np.asarray(frame_index).reshape(-1)
    if index.shape != (n_frames,):
        raise ValueError(f"{what}: frame_index needs one entry per frame ({n_frames}), got {index.shape}")
    return lambda k: int(index[k])


def _check_distances(arr, what, label=int, chunk=2048):
    iu, ju = _pairs(arr.shape[1])
    for start in range(0, arr.shape[0], chunk):
        block = arr[start:start + chunk]
        diff = block[:, iu] - block[:, ju]
        close = np.einsum("mpk,mpk->mp", diff, diff) < MIN_DISTANCE ** 2  # squares: no sqrt per pair
        if close.any():
            frame, pair = np.argwhere(close)[0]
            raise ValueError(f"{what}: frame {label(start + frame)}: atoms {iu[pair]} and {ju[pair]} are "
                             f"{np.linalg.norm(diff[frame, pair]):.3g} Å apart (minimum {MIN_DISTANCE:g})")


@lru_cache(maxsize=64)
def _pairs(n):
    """Atom pairs i < j, cached: np.triu_indices costs more than checking one small geometry."""
    iu, ju = np.triu_indices(n, 1)
    iu.flags.writeable = ju.flags.writeable = False
    return iu, ju


def atomic_numbers(z, n_atoms, what="z"):
    arr = np.asarray(z)
    if arr.shape != (n_atoms,):
        raise ValueError(f"{what}: expected shape ({n_atoms},) (one atomic number per atom), got {arr.shape}")
    if not np.all(np.isfinite(arr.astype(float))) or np.any(arr.astype(float) <= 0):
        raise ValueError(f"{what}: atomic numbers must be positive, got {arr.tolist()}")
    return arr.astype(np.float64)


def vectors(d, what):
    arr = np.asarray(d, dtype=np.float64)
    if arr.ndim < 1:
        raise ValueError(f"{what}: expected a descriptor vector of shape (..., n_features), got a scalar")
    if not np.all(np.isfinite(arr)):
        index = tuple(np.argwhere(~np.isfinite(arr))[0])
        raise ValueError(f"{what}: entry {index} is not finite")
    return arr


def permutations(perms, n_atoms):
    """(P, N) int64 atom permutations, identity alone when ``perms`` is None."""
    if perms is None:
        return np.arange(n_atoms, dtype=np.int64)[None]
    arr = np.asarray(perms)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != n_atoms:
        raise ValueError(f"perms: expected shape (n_perms, {n_atoms}), got {arr.shape}")
    for p, row in enumerate(arr):
        if sorted(row.tolist()) != list(range(n_atoms)):
            raise ValueError(f"perms: row {p} is not a permutation of 0..{n_atoms - 1}: {row.tolist()}")
    return arr.astype(np.int64)
