"""Atomic file writes: a reader, a crash or a full disk never sees half a file.

Everything a user keeps (models, predictions, plots) and everything the compiler
caches (generated modules) is written to a temporary file in the destination's
folder, flushed and fsynced, then renamed over the destination.  A failure at any
point leaves the previous file untouched and removes the temporary one.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

FILE_MODE = 0o644  # mkstemp creates 0600; outputs are ordinary readable files


@contextlib.contextmanager
def atomic_writer(path, binary: bool = True, mode: int = FILE_MODE):
    """``with atomic_writer(path) as fh: ...`` writes ``path`` all at once or not at all."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_folder(path.parent)


def write_text_atomic(path, text: str) -> None:
    with atomic_writer(path, binary=False) as fh:
        fh.write(text)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every filesystem allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
