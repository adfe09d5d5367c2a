"""The training matrix: memory check, allocation and parallel assembly.

Only the block upper triangle (blocks i <= j) is written: the Cholesky solver
reads one triangle, so mirroring would double the memory traffic for nothing.
Rows are handed to the compiled kernel in chunks (for progress) and in an
interleaved order (long row, short row, ...) so that Numba's static split
of a ``prange`` gives every thread the same amount of work.
"""
from __future__ import annotations

import resource
from pathlib import Path, PurePosixPath

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .packed import PackedMatrix, packed_size
from .progress import Progress

UNLIMITED = 2 ** 60  # cgroup v1 writes "no limit" as about 2^63
# resource limit -> the /proc/self/status field that counts against it
RLIMIT_USAGE = {"RLIMIT_AS": "VmSize", "RLIMIT_DATA": "VmData"}


class MemoryLimitError(MemoryError):
    pass


def proc_field_bytes(field: str, path="/proc/meminfo") -> int | None:
    """A 'Field:  123 kB' line of /proc/meminfo or /proc/self/status, in bytes (None where absent)."""
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_memory_bytes(meminfo="/proc/meminfo", cgroup_list="/proc/self/cgroup",
                           cgroup_root="/sys/fs/cgroup", status="/proc/self/status",
                           rlimits=None) -> int | None:
    """Bytes this process can still allocate (None where nothing is known): the least of
    MemAvailable, the room under every cgroup memory limit above it (v2 and v1, each ancestor)
    and under RLIMIT_AS / RLIMIT_DATA.  A container's MemAvailable is the host's, so it alone
    lets a training matrix start that the cgroup then kills.  ``rlimits``: {name: soft limit}
    instead of asking the kernel (for tests)."""
    known = [proc_field_bytes("MemAvailable", meminfo), *cgroup_room(cgroup_list, cgroup_root),
             *rlimit_room(status, rlimits)]
    known = [v for v in known if v is not None]
    return max(0, min(known)) if known else None


def cgroup_room(cgroup_list="/proc/self/cgroup", cgroup_root="/sys/fs/cgroup") -> list[int]:
    """Bytes left under each memory limit of this process's cgroups and their ancestors:
    limit - usage + inactive page cache (which the kernel reclaims before it kills)."""
    room = []
    for version, folder in _memory_cgroup_folders(cgroup_list, cgroup_root):
        if version == 2:
            limit, usage = _read_int(folder / "memory.max"), _read_int(folder / "memory.current")
            cache = _stat_field(folder / "memory.stat", "inactive_file")
        else:
            limit, usage = _read_int(folder / "memory.limit_in_bytes"), _read_int(folder / "memory.usage_in_bytes")
            cache = _stat_field(folder / "memory.stat", "total_inactive_file")
        if limit is not None and limit < UNLIMITED and usage is not None:
            room.append(limit - usage + (cache or 0))
    return room


def _memory_cgroup_folders(cgroup_list, cgroup_root):
    """(version, folder) for this process's memory cgroups (v2 unified and v1 'memory'), deepest first."""
    try:
        lines = Path(cgroup_list).read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            version, base = 2, Path(cgroup_root)
        elif "memory" in controllers.split(","):
            version, base = 1, Path(cgroup_root) / "memory"
        else:
            continue
        rel = PurePosixPath(path).parts[1:]  # without the leading "/"
        out += [(version, base.joinpath(*rel[:k])) for k in range(len(rel), -1, -1)]
    return out


def _read_int(path) -> int | None:
    """An integer file of the cgroup tree; None if absent or 'max' (no limit)."""
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _stat_field(path, key) -> int | None:
    try:
        for line in Path(path).read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return None


def rlimit_room(status="/proc/self/status", rlimits=None) -> list[int]:
    """Bytes left under RLIMIT_AS and RLIMIT_DATA: the soft limit minus what is mapped now."""
    room = []
    for name, field in RLIMIT_USAGE.items():
        soft = rlimits.get(name) if rlimits is not None else resource.getrlimit(getattr(resource, name))[0]
        if soft is None or soft == resource.RLIM_INFINITY or soft < 0:
            continue
        room.append(soft - (proc_field_bytes(field, status) or 0))
    return room


def check_memory(n_rows: int, what="training matrix", fraction=0.9, packed=True) -> int:
    """Refuse (with the size needed) rather than swap or be killed.  ``packed``: the matrix is
    kept as one triangle (runtime/packed.py), else as the full n x n array."""
    needed = training_matrix_bytes(n_rows, packed)
    available = available_memory_bytes()
    if available is not None and needed > fraction * available:
        layout = "one triangle of " if packed else ""
        raise MemoryLimitError(
            f"the {what} needs {needed / 2**30:.1f} GiB ({layout}{n_rows} x {n_rows} float64) but only "
            f"{available / 2**30:.1f} GiB are available; use fewer training points "
            f"(it grows with the square of n_train)")
    return needed


def training_matrix_bytes(n_rows: int, packed=True) -> int:
    return 8 * (packed_size(n_rows) if packed else n_rows * n_rows)


def dense_fits(n_rows: int, fraction=0.9) -> bool:
    """Whether the dense solve's packed n x n matrix fits in the memory available now."""
    available = available_memory_bytes()
    return available is None or training_matrix_bytes(n_rows) <= fraction * available


def allocate_training_matrix(m: int, n_atoms: int, energy_rows=False) -> PackedMatrix:
    """The packed training matrix of M geometries (memory checked first)."""
    check_memory(3 * n_atoms * m + (m if energy_rows else 0))
    return PackedMatrix.for_training(m, n_atoms, energy_rows)


def interleaved_rows(m: int) -> np.ndarray:
    """0, m-1, 1, m-2, ...: pairs a long block row with a short one."""
    order = np.empty(m, dtype=np.int64)
    order[0::2] = np.arange((m + 1) // 2)
    order[1::2] = m - 1 - np.arange(m // 2)
    return order


def assemble(model, D, JAC, fperms, hyper, n_atoms, out=None, progress=True, chunks=20, energy_rows=False):
    """The (3NM, 3NM) force-field kernel matrix, block upper triangle filled.

    With ``energy_rows`` the matrix of joint energy+force training, (3NM + M)^2:
    M energy rows and columns follow the force ones.  ``out``: a C-ordered full matrix (made
    when None) or a PackedMatrix (runtime/packed.py), written panel by panel."""
    m = D.shape[0]
    n3m = 3 * n_atoms * m
    size = n3m + (m if energy_rows else 0)
    if isinstance(out, PackedMatrix):
        return assemble_packed(model, D, JAC, fperms, hyper, n_atoms, out, progress, energy_rows)
    if out is None:
        check_memory(size, packed=False)
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


def assemble_packed(model, D, JAC, fperms, hyper, n_atoms, out: PackedMatrix, progress=True, energy_rows=False):
    """The training matrix into packed storage: each force panel's block rows written by the
    compiled kernel straight into the panel; energy columns through a small scratch."""
    m = D.shape[0]
    n3 = 3 * n_atoms
    n3m = n3 * m
    _check_packed_layout(out, n3, n3m, n3m + (m if energy_rows else 0))
    with Progress(m * (m + 1) // 2, "assembly", enabled=progress) as bar:  # in block pairs
        for p, (start, end) in enumerate(zip(out.starts[:-1], out.starts[1:])):
            if start >= n3m:
                break
            block_rows = np.arange(start // n3, end // n3)
            order = block_rows[interleaved_rows(len(block_rows))]  # long and short rows alternate
            model.assemble_rows(D, JAC, fperms, hyper, out.absolute_view(p), order, n_atoms, mirror=False)
            bar.update(int(np.sum(m - block_rows)))
    if energy_rows:
        assemble_energy_columns_packed(model, D, JAC, fperms, hyper, n_atoms, out)
    return out


def _check_packed_layout(out: PackedMatrix, n3: int, n3m: int, size: int):
    """Force panels must start at block rows (the kernel writes whole block rows), and the
    energy rows must start a panel."""
    force_starts = out.starts[out.starts < n3m]
    if out.n != size or np.any(force_starts % n3) or (size > n3m and n3m not in out.starts):
        raise ValueError(f"assembly needs a packed ({size}, {size}) matrix whose panels start at multiples "
                         f"of {n3} below row {n3m} (PackedMatrix.for_training), got panels at {out.starts}")


def assemble_energy_columns_packed(model, D, JAC, fperms, hyper, n_atoms, out: PackedMatrix):
    """The last M columns (energy) of every row, assembled into an (n, M) scratch, M/n of the
    matrix, then copied into the panels.  The compiled kernel addresses entries absolutely: the
    scratch is seen through an (n, n) view whose columns n - M.. are the scratch's."""
    m, n = D.shape[0], out.n
    e0 = n - m
    buffer = np.zeros(e0 + n * m)  # view[r, c] = buffer[r m + c]; columns c >= e0 land on scratch
    scratch = buffer[e0:].reshape(n, m)
    model.assemble_energy_rows(D, JAC, fperms, hyper, as_strided(buffer, shape=(n, n), strides=(8 * m, 8)),
                               n_atoms)
    for k, rows in zip(out.starts, out.rows):
        first = max(e0, int(k))  # the panel's first energy column
        rows[:, first - k:] = scratch[k:k + rows.shape[0], first - e0:]
