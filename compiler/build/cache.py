"""Where generated modules live, how they are named, written and loaded.

A module's file name carries a hash of everything that determines its text (the target, the
DSL source, which arguments are parameters, the compiler's version and source; parameter
values are read at run time), so an unchanged DSL function reuses both the generated source
and Numba's on-disk cache next to it, and a changed one gets a fresh module.  Files are written to a temporary name and
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

from compiler import __version__
from compiler.atomic_io import write_text_atomic
from compiler.errors import CompileError

ENV_VAR = "GDMLC_GENERATED_DIR"
END_MARKER = "# gdmlc: end of generated module\n"  # a file without it was cut short: rebuilt
_LOADED: dict = {}


def generated_dir() -> Path:
    """$GDMLC_GENERATED_DIR, else the repository's generated/, else a user cache.

    A $GDMLC_GENERATED_DIR that cannot be written falls back to the user cache with a
    one-line warning; when no folder is writable, a CompileError names them all."""
    user_dir = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gdmlc" / "generated"
    if os.environ.get(ENV_VAR):
        chosen = Path(os.environ[ENV_VAR]).expanduser()
        problem = _unwritable_reason(chosen)
        if problem is None:
            return chosen
        tried = [f"{ENV_VAR}={chosen} ({problem})"]
        if _unwritable_reason(user_dir) is None:
            _warn_once(f"gdmlc: warning: {ENV_VAR}={chosen} is not a writable folder ({problem}); "
                       f"generated modules go to {user_dir}")
            return user_dir
    else:
        repo_dir = Path(__file__).resolve().parents[2] / "generated"
        problem = _unwritable_reason(repo_dir)
        if problem is None:
            return repo_dir
        tried = [f"{repo_dir} ({problem})"]
    problem = _unwritable_reason(user_dir)
    if problem is None:
        return user_dir
    raise CompileError(f"no writable folder for generated modules: {'; '.join(tried)}; {user_dir} ({problem}); "
                       f"set {ENV_VAR} to a writable folder")


def _unwritable_reason(path: Path):
    """None if generated modules can be written to ``path`` (created if missing), else why not."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".probe", delete=True)
        probe.close()
        return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


_WARNED: set = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        print(message, file=sys.stderr)


@functools.lru_cache(maxsize=1)
def compiler_fingerprint() -> str:
    """Hash of the compiler's own source: a changed code generator never reuses old modules."""
    h = hashlib.sha256(f"gdmlc {__version__}".encode())
    package = Path(__file__).resolve().parents[1]  # compiler/, every sub-package included
    for path in sorted(package.rglob("*.py")):
        h.update(str(path.relative_to(package)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def content_hash(*parts) -> str:
    h = hashlib.sha256(compiler_fingerprint().encode())
    for part in parts:
        h.update(b"\0")
        h.update(repr(part).encode())
    return h.hexdigest()[:16]


def write_atomic(path: Path, text: str) -> None:
    """Write a generated module all at once (mode 0644), never half a file."""
    write_text_atomic(path, text)


def load_module(path: Path):
    """Import a generated module by path (once per process)."""
    key = str(path)
    if key in _LOADED:
        return _LOADED[key]
    name = f"gdmlc_generated.{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    _LOADED[key] = module
    return module


def _complete(path: Path) -> bool:
    """The file ends with the line get_or_build appends: no truncated or cut-off module passes."""
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, path.stat().st_size - len(END_MARKER) - 8))
            return fh.read().rstrip().endswith(END_MARKER.strip().encode())
    except OSError:
        return False


def _load_complete(path: Path):
    """The module at ``path``, or None if it is truncated, corrupt or lacks METADATA."""
    if not _complete(path):
        return None
    try:
        module = load_module(path)
    except Exception:  # noqa: BLE001 - any failure to import a cached file means: rebuild it
        return None
    return module if hasattr(module, "METADATA") else None


def get_or_build(stem: str, key: str, build):
    """The generated module ``<stem>_<key>.py``: loaded if present and complete, else built by
    ``build()`` (which returns the source text), written atomically, and loaded.
    Returns (module, path, built_now)."""
    path = generated_dir() / f"{stem}_{key}.py"
    module = _load_complete(path) if path.exists() else None
    if module is not None:
        return module, path, False
    _LOADED.pop(str(path), None)
    write_atomic(path, build().rstrip("\n") + "\n" + END_MARKER)
    return load_module(path), path, True
