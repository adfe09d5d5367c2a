"""The training matrix: memory check, allocation and parallel assembly.

Only the block upper triangle (blocks i <= j) is written: the Cholesky solver
reads one triangle, so mirroring would double the memory traffic for nothing.
Rows are handed to the compiled kernel in chunks (for progress) and in an
interleaved order (long row, short row, ...) so that Numba's static split
of a ``prange`` gives every thread the same amount of work.
"""
from __future__ import annotations

import numpy as np

from .progress import Progress


class MemoryLimitError(MemoryError):
    pass


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (None where unknown)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(n_rows: int, what="training matrix", fraction=0.9) -> int:
    """Refuse (with the size needed) rather than swap."""
    needed = n_rows * n_rows * 8
    available = available_memory_bytes()
    if available is not None and needed > fraction * available:
        raise MemoryLimitError(
            f"the {what} needs {needed / 2**30:.1f} GiB ({n_rows} x {n_rows} float64) but only "
            f"{available / 2**30:.1f} GiB are available; use fewer training points "
            f"(it grows with the square of n_train)")
    return needed


def interleaved_rows(m: int) -> np.ndarray:
    """0, m-1, 1, m-2, ...: pairs a long block row with a short one."""
    order = np.empty(m, dtype=np.int64)
    order[0::2] = np.arange((m + 1) // 2)
    order[1::2] = m - 1 - np.arange(m // 2)
    return order


def assemble(model, D, JAC, fperms, hyper, n_atoms, out=None, progress=True, chunks=20, energy_rows=False):
    """The (3NM, 3NM) force-field kernel matrix, block upper triangle filled.

    With ``energy_rows`` the matrix of joint energy+force training, (3NM + M)^2:
    M energy rows and columns follow the force ones."""
    m = D.shape[0]
    n3m = 3 * n_atoms * m
    size = n3m + (m if energy_rows else 0)
    if out is None:
        check_memory(size)
        out = np.empty((size, size))
    if out.shape != (size, size) or not out.flags.c_contiguous:
        raise ValueError(f"assembly needs a C-ordered ({size}, {size}) matrix, got {out.shape}")
    rows = interleaved_rows(m)
    # each chunk holds whole long/short pairs so every chunk costs about the same
    step = 2 * max(1, -(-m // (2 * chunks)))
    with Progress(m, "assembly", enabled=progress) as bar:
        for start in range(0, m, step):
            chunk = rows[start:start + step]
            model.assemble_rows(D, JAC, fperms, hyper, out, chunk, n_atoms, mirror=False)
            bar.update(len(chunk))
    if energy_rows:
        model.assemble_energy_rows(D, JAC, fperms, hyper, out, n_atoms)
    return out
