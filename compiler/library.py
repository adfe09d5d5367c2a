"""Finding DSL functions: by library name, by ``FILE.py:func``, or in a file."""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from compiler.dsl import Combination, DSLFunction

LIBRARY_DESCRIPTORS = ("inverse_distances", "coulomb_matrix", "exponential_decay", "radial_g2", "erf_coulomb",
                       "acsf_g2", "acsf_g4", "fchl19_two_body", "fchl19_three_body", "acsf", "fchl19")
LIBRARY_KERNELS = ("matern52", "matern32", "gaussian", "polynomial")
DEFAULT_DESCRIPTOR, DEFAULT_KERNEL = "inverse_distances", "matern52"


def load_file(path) -> dict:
    """Every DSL function defined in a Python file, by name (in file order)."""
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no such DSL file: {path}")
    name = f"gdmlc_user.{path.stem}_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return {k: v for k, v in vars(module).items()
            if isinstance(v, (DSLFunction, Combination)) and Path(v.filename).resolve() == path}


def resolve(spec, kind: str) -> DSLFunction:
    """A DSLFunction (or a descriptors' Combination) from itself, a library name, or 'FILE.py:func'."""
    if isinstance(spec, (DSLFunction, Combination)):
        found = spec
    elif isinstance(spec, str) and ":" in spec and spec.split(":")[0].endswith(".py"):
        path, func = spec.rsplit(":", 1)
        entries = load_file(path)
        if func not in entries:
            raise ValueError(f"{path} defines no DSL function {func!r} (found: {', '.join(entries) or 'none'})")
        found = entries[func]
    elif isinstance(spec, str):
        names = LIBRARY_DESCRIPTORS if kind == "descriptor" else LIBRARY_KERNELS
        if spec not in names:
            raise ValueError(f"unknown {kind} {spec!r}: library {kind}s are {', '.join(names)}; "
                             f"or pass a DSL function or 'FILE.py:function'")
        found = getattr(importlib.import_module(f"descriptors.{spec}"), spec)
    else:
        raise TypeError(f"expected a DSL {kind} (decorated function), a library name or 'FILE.py:func', "
                        f"got {spec!r}")
    if found.kind != kind:
        raise TypeError(f"{found.name} is a {found.kind}, not a {kind}")
    return found
