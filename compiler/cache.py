"""Where generated modules live, how they are named, written and loaded.

A module's file name carries a hash of everything that determines its text
(the DSL source, parameters, the compiler's version and source), so an unchanged DSL function
reuses both the generated source and Numba's on-disk cache next to it, and a
changed one gets a fresh module.  Files are written to a temporary name and
renamed, so two processes compiling the same entry never see half a file.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

from . import __version__

ENV_VAR = "GDMLC_GENERATED_DIR"
_LOADED: dict = {}


def generated_dir() -> Path:
    """$GDMLC_GENERATED_DIR, else the repository's generated/, else a user cache."""
    if os.environ.get(ENV_VAR):
        path = Path(os.environ[ENV_VAR]).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        return path
    repo_dir = Path(__file__).resolve().parents[1] / "generated"
    if _writable(repo_dir):
        return repo_dir
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    path = base / "gdmlc" / "generated"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".probe", delete=True)
        probe.close()
        return True
    except OSError:
        return False


@functools.lru_cache(maxsize=1)
def compiler_fingerprint() -> str:
    """Hash of the compiler's own source: a changed code generator never reuses old modules."""
    h = hashlib.sha256(f"gdmlc {__version__}".encode())
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.read_bytes())
    return h.hexdigest()


def content_hash(*parts) -> str:
    h = hashlib.sha256(compiler_fingerprint().encode())
    for part in parts:
        h.update(b"\0")
        h.update(repr(part).encode())
    return h.hexdigest()[:16]


def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_module(path: Path):
    """Import a generated module by path (once per process)."""
    key = str(path)
    if key in _LOADED:
        return _LOADED[key]
    name = f"gdmlc_generated.{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    _LOADED[key] = module
    return module


def get_or_build(stem: str, key: str, build):
    """The generated module ``<stem>_<key>.py``: loaded if present, else built by
    ``build()`` (which returns the source text), written, and loaded.
    Returns (module, path, built_now)."""
    path = generated_dir() / f"{stem}_{key}.py"
    built = False
    if not path.exists():
        write_atomic(path, build())
        built = True
    return load_module(path), path, built
