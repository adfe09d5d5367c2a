"""The training matrix in packed storage: one triangle, as column panels, in one buffer.

The matrix is symmetric and the Cholesky solver reads one triangle, so only that one is kept:
about n (n + b) / 2 entries instead of n^2.  Panel p covers rows and columns from ``starts[p]``
(= k) to ``starts[p + 1]`` (= k + b): it is a C-ordered (b, n - k) array holding the rows k..k+b
of the block upper triangle from column k on.  Its transpose is a Fortran (n - k, b) array: the
columns k..k+b of the lower triangle from row k down, which is what the blocked Cholesky
(runtime/solver.py) factorises, panel by panel, with BLAS level-3 calls.  The strict lower
triangle of each panel's diagonal block (its upper triangle, seen as Fortran) is scratch.

Panels of training matrices start at block rows (multiples of 3N), so the compiled
``assemble_rows`` writes a panel's block rows straight into it (``absolute_view``); energy rows
(if any) follow the force rows in panels of their own.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

BLOCK = 1024  # panel width: big enough for dgemm's peak rate, small enough for dpotrf/dtrsm


def panel_starts(n: int, block=BLOCK, unit=1, unit_rows=None) -> np.ndarray:
    """Panel boundaries 0 = s_0 < s_1 < ... < s_P = n.  The first ``unit_rows`` rows (all when
    None) are split at multiples of ``unit`` (about ``block`` wide, at least one unit); the rest
    (energy rows) into panels of ``block``."""
    unit_rows = n if unit_rows is None else unit_rows
    width = unit * max(1, round(block / unit))
    starts = list(range(0, unit_rows, width)) + list(range(unit_rows, n, block))
    return np.array(starts + [n], dtype=np.int64)


def packed_size(n: int, block=BLOCK) -> int:
    """Entries of the packed triangle of an n x n matrix split into panels of width ``block``."""
    starts = panel_starts(n, block)
    return int(sum((b - a) * (n - a) for a, b in zip(starts[:-1], starts[1:])))


class PackedMatrix:
    """A symmetric n x n float64 matrix stored as the column panels of one triangle (module doc)."""

    def __init__(self, starts):
        starts = np.asarray(starts, dtype=np.int64)
        if starts.ndim != 1 or len(starts) < 1 or starts[0] != 0 or np.any(np.diff(starts) <= 0):
            raise ValueError(f"panel starts must rise strictly from 0, got {starts}")
        self.n = int(starts[-1])
        self.starts = starts
        widths = np.diff(starts)
        offsets = np.concatenate([[0], np.cumsum(widths * (self.n - starts[:-1]))]).astype(np.int64)
        self.data = np.empty(int(offsets[-1]))
        self._offsets = offsets
        # panel p as C rows (b, n - k); .T of one is the Fortran lower panel the solver factorises
        self.rows = [self.data[a:b].reshape(w, self.n - k)
                     for a, b, w, k in zip(offsets[:-1], offsets[1:], widths, starts[:-1])]

    @classmethod
    def for_training(cls, m: int, n_atoms: int, energy_rows=False, block=BLOCK):
        """The (3NM [+ M])^2 training matrix, its force panels starting at block rows."""
        n3m = 3 * n_atoms * m
        return cls(panel_starts(n3m + (m if energy_rows else 0), block, unit=3 * n_atoms, unit_rows=n3m))

    @property
    def shape(self):
        return (self.n, self.n)

    @property
    def nbytes(self) -> int:
        return self.data.nbytes

    @property
    def lower_panels(self) -> list[np.ndarray]:
        """Fortran (n - k, b) views: columns k..k+b of the lower triangle from row k down."""
        return [rows.T for rows in self.rows]

    def panel_of(self, index: int) -> int:
        """The panel holding row (of the upper triangle) ``index``."""
        return int(np.searchsorted(self.starts, index, side="right") - 1)

    def absolute_view(self, p: int) -> np.ndarray:
        """An (n, n) view addressed by absolute (row, column) whose rows starts[p]..starts[p+1]
        from column starts[p] on are panel p: what the compiled assembly writes into.  Only those
        entries may be touched; the view's other rows alias other panels (or nothing)."""
        k, n = int(self.starts[p]), self.n
        origin = int(self._offsets[p]) - k * (n - k) - k  # where entry (0, 0) would be
        if origin < 0:  # never: the panels before p hold at least k (n - k) + k entries
            raise ValueError(f"panel {p} cannot be addressed absolutely")
        return as_strided(self.data[origin:], shape=(n, n), strides=(8 * (n - k), 8))

    def add_to_diagonal(self, value: float):
        for rows in self.rows:
            diagonal = np.arange(rows.shape[0])
            rows[diagonal, diagonal] += value

    def to_dense(self) -> np.ndarray:
        """The full symmetric matrix (for tests and small problems)."""
        out = np.zeros((self.n, self.n))
        for k, rows in zip(self.starts, self.rows):
            out[k:k + rows.shape[0], k:] = rows
        upper = np.triu(out)  # drops the scratch of the diagonal blocks
        return upper + np.triu(upper, 1).T

    def fill_from_upper(self, matrix):
        """Copy the upper triangle of an (n, n) matrix (host array or row-sliceable device array,
        read one panel of rows at a time) into the panels."""
        for k, rows in zip(self.starts, self.rows):
            block = matrix[k:k + rows.shape[0]]
            block = block.copy_to_host() if hasattr(block, "copy_to_host") else np.asarray(block)
            rows[:] = block[:, k:]
