"""The model file: an npz of plain data that loading never executes.

Each DSL function is stored as its own source text (the ``def`` with its decorator
lines) plus, as JSON, what its decorator said and the module-level numbers its body
reads.  Loading rebuilds it as a :class:`compiler.dsl.StoredSource` that the parser
reads with ``ast`` (never imported, executed or written to disk), so anything that is
not pure DSL is refused.  Every array is checked against the others (shapes from z
and R_train, permutations, finite values), and a sha256 over all arrays, sources and
metadata refuses a file modified after it was written.  Saves are atomic.

Format 1 stored each function's whole module text; it is read through the same path:
the named ``def`` is taken from the module's syntax tree, decorator arguments and
module numbers are read as literals, nothing else in the module is allowed.
"""
from __future__ import annotations

import ast
import hashlib
import inspect
import json
import keyword
import math
import operator
import textwrap
import zipfile
import zlib
from pathlib import Path

import numpy as np

import compiler
from compiler import checks
from compiler.atomic_io import atomic_writer
from compiler.dsl import (DEFAULT_INDEX_SPACE, INDEX_SPACES, Combination, DSLFunction, Layout, StoredSource,
                          checked_layout, combine)
from compiler.errors import CompileError, DSLError
from compiler.front.parser import module_constants, parse_descriptor, parse_kernel

from . import mixed
from .trained import TrainedState

FORMAT = "gdmlc-model"
FORMAT_VERSION = 2
CHECKSUM_KEY = "checksum"
KINDS = ("descriptor", "kernel")
MAX_SOURCE_CHARS = 100_000
LINE_BREAKS = "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\x00"  # all but \n: a stored line is one line


class ModelFileError(ValueError):
    pass


# --------------------------------------------------------------------------- saving

def save_model(model, path):
    """Write ``model`` to ``path`` atomically: the previous file stays intact until the new one is complete."""
    state = model.state
    if state is None:
        raise RuntimeError("nothing to save: the model is not trained")
    arrays = {
        "format": np.array(FORMAT), "format_version": np.array(FORMAT_VERSION),
        "compiler_version": np.array(compiler.__version__),
        "sigma": np.array(state.sigma), "lam": np.array(state.lam_used),
        "perms": state.perms, "z": state.z, "R_train": state.R_train, "alpha": state.alpha,
        "D_train": state.D_train, "B_train": state.B_train,
        "label_scale": np.array(state.label_scale),
        "energy_constant": np.array(np.nan if state.energy_constant is None else state.energy_constant),
        "info": np.array(json.dumps(model.info, default=_jsonable)),
        "hyper": np.array(json.dumps({k: float(v) for k, v in model.hyper_values.items()})),
        "kernel_scope": np.array("local" if model.local else "global"),
    }
    for kind, dsl in zip(KINDS, (model.descriptor_dsl, model.kernel_dsl)):
        arrays.update(function_arrays(dsl, kind))
    if state.energy_weights is not None:
        arrays["energy_weights"] = np.asarray(state.energy_weights)
    if state.hessian_observations:
        arrays["R_hessian"], arrays["hessian_weights"] = state.R_hessian, state.hessian_weights
    if state.element_energies is not None:
        arrays["element_energies"] = state.element_energies
    arrays[CHECKSUM_KEY] = np.array(checksum(arrays))
    with atomic_writer(Path(path)) as fh:
        np.savez(fh, **arrays)


def _jsonable(x):
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    raise TypeError(f"cannot store {type(x).__name__} in model info")


def function_arrays(dsl: DSLFunction | Combination, kind: str) -> dict:
    """``<kind>_source`` (the def as written) and ``<kind>_meta`` (JSON) for one DSL function;
    checked by the loader's own rules first, so every saved model loads.  A combination of
    descriptors stores its parts' defs one after the other and each part's metadata with the
    span of its text."""
    if isinstance(dsl, Combination):
        records = [_function_record(part, kind) for part in dsl.parts]
        spans = np.cumsum([0] + [len(source) for source, _ in records]).tolist()
        source = "".join(source for source, _ in records)
        meta = {"name": dsl.name, "kind": dsl.kind, "default_sigmas": _sigma_list(dsl.default_sigmas),
                "parts": [{**part_meta, "source_span": spans[k:k + 2]} for k, (_, part_meta) in enumerate(records)]}
    else:
        source, meta = _function_record(dsl, kind)
    try:
        restore_function(kind, source, meta)
    except ModelFileError as exc:
        raise ModelFileError(f"cannot store {kind} {dsl.name} in a model file: {exc}") from None
    return {f"{kind}_source": np.array(source), f"{kind}_meta": np.array(json.dumps(meta))}


def _sigma_list(sigmas):
    return None if sigmas is None else [float(s) for s in sigmas]


def _function_record(dsl: DSLFunction, kind: str) -> tuple:
    """(source, metadata) of one DSL function."""
    meta = {"name": dsl.name, "kind": dsl.kind, "over": None if dsl.over is None else dsl.over.name,
            "params": {k: _plain_numbers(v) for k, v in dsl.params.items()},
            "default_sigmas": _sigma_list(dsl.default_sigmas),
            "elements": list(dsl.layout.elements) or None, "cutoff": dsl.layout.cutoff,
            "constants": module_constants(dsl), "filename": dsl.filename, "first_line": _first_line(dsl)}
    return _storable_source(dsl.source, kind, dsl.name), meta


def _storable_source(source: str, kind: str, name: str) -> str:
    """The source as written, unless its decorator computes its arguments (``np.linspace(...)``): the
    metadata holds their values, so the decorator lines become a bare ``@kind`` and comment lines
    (the line count, and so every line number the generated code quotes, stays the same)."""
    try:
        _check_decorator(kind, name, _single_function(kind, name, source))
        return source
    except ModelFileError:
        pass
    lines = textwrap.dedent(source).splitlines(keepends=True)
    fdef = _single_function(kind, name, "".join(lines))
    n_decorator = fdef.lineno - 1
    if n_decorator < 1:
        return source
    canonical = [f"@{kind}  # arguments stored as data\n"] + ["#\n"] * (n_decorator - 1)
    return "".join(canonical + lines[n_decorator:])


def _plain_numbers(value):
    arr = np.asarray(value, dtype=np.float64)
    return arr.tolist() if arr.ndim else float(arr)


def _first_line(dsl: DSLFunction) -> int:
    return dsl.stored.first_line if dsl.stored else inspect.getsourcelines(dsl.fn)[1]


def checksum(arrays: dict) -> str:
    """sha256 over every array but the checksum itself, in key order: name, dtype, shape, bytes."""
    h = hashlib.sha256(b"gdmlc-model-checksum 1")
    for key in sorted(k for k in arrays if k != CHECKSUM_KEY):
        a = np.asarray(arrays[key])
        h.update(f"\0{key}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- DSL functions from stored text

_DATA_NODES = (ast.Constant, ast.Name, ast.Load, ast.List, ast.Tuple, ast.Dict, ast.Set, ast.UnaryOp,
               ast.UAdd, ast.USub, ast.BinOp, ast.Add, ast.Sub, ast.Mult, ast.Div)


def restore_function(kind: str, source, meta, part_of=None) -> DSLFunction | Combination:
    """A DSLFunction rebuilt from stored text and metadata, parsed (never run) and checked to be pure DSL;
    a combination of descriptors from its parts, each restored the same way."""
    if not isinstance(meta, dict):
        raise ModelFileError(f"the stored {kind} metadata is not a JSON object")
    if "parts" in meta:
        return _restore_combination(kind, source, meta, part_of)
    name = _identifier(meta.get("name"), f"the stored {kind} name")
    if meta.get("kind") != kind:
        raise ModelFileError(f"the stored {kind} {name} is marked as a {meta.get('kind')!r}, not a {kind}")
    _check_decorator(kind, name, _single_function(kind, name, source))
    over = _index_space(kind, meta.get("over"))
    params = _params(kind, name, meta.get("params", {}))
    sigmas = _sigmas(kind, meta.get("default_sigmas"))
    constants = {_identifier(k, f"a constant of {name}"): _finite(v, f"constant {k} of {name}")
                 for k, v in _mapping(meta.get("constants", {}), f"the constants of {name}").items()}
    first_line = meta.get("first_line", 1)
    if not (isinstance(first_line, int) and 1 <= first_line < 10**7):
        raise ModelFileError(f"the stored {kind} {name} has an invalid first line {first_line!r}")
    stored = StoredSource(name, source, _safe_text(str(meta.get("filename", f"<stored {kind}>"))),
                          first_line, constants)
    dsl = DSLFunction(stored, kind, over, params, sigmas, _layout(kind, name, over, meta))
    try:
        (parse_descriptor if kind == "descriptor" else parse_kernel)(dsl)
    except (DSLError, TypeError, ValueError) as exc:
        raise ModelFileError(f"the stored {kind} {name} is not pure DSL: {exc}") from None
    return dsl


def _restore_combination(kind, source, meta, part_of) -> Combination:
    name = _identifier(meta.get("name"), f"the stored {kind} name")
    parts = meta.get("parts")
    if kind != "descriptor" or part_of is not None or not isinstance(parts, list) or len(parts) < 2:
        raise ModelFileError(f"the stored {kind} {name} is not a valid combination of two or more descriptors")
    restored = []
    for k, part in enumerate(parts):
        span = part.get("source_span") if isinstance(part, dict) else None
        if not (isinstance(span, list) and len(span) == 2 and all(isinstance(a, int) for a in span)
                and 0 <= span[0] < span[1] <= len(source)):
            raise ModelFileError(f"part {k} of the stored descriptor {name} has no valid source span")
        restored.append(restore_function(kind, source[span[0]:span[1]], part, part_of=name))
    try:
        return combine(*restored, name=name, sigmas=_sigmas(kind, meta.get("default_sigmas")))
    except DSLError as exc:
        raise ModelFileError(f"the stored descriptor {name}: {exc.dsl_message}") from None


def _identifier(name, what) -> str:
    if not (isinstance(name, str) and name.isidentifier() and not keyword.iskeyword(name)):
        raise ModelFileError(f"{what} {name!r} is not a Python identifier")
    return name


def _single_function(kind, name, source) -> ast.FunctionDef:
    """The one top-level ``def name`` the stored text must consist of."""
    if not isinstance(source, str) or not source.strip():
        raise ModelFileError(f"the stored {kind} {name} has no source text")
    if len(source) > MAX_SOURCE_CHARS or any(c in source for c in LINE_BREAKS):
        raise ModelFileError(f"the stored {kind} {name} source is not plain DSL text "
                             f"(over {MAX_SOURCE_CHARS} characters or control characters)")
    tree = _parse(textwrap.dedent(source), f"the stored {kind} {name}")
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    if len(tree.body) != 1 or len(defs) != 1:
        extra = next((n for n in tree.body if not isinstance(n, ast.FunctionDef)), None)
        where = f" (line {extra.lineno})" if extra is not None else ""
        raise ModelFileError(f"the stored {kind} {name} must be exactly one function definition, found "
                             f"{len(tree.body)} top-level statement(s){where}; other code is never loaded")
    if defs[0].name != name:
        raise ModelFileError(f"the stored {kind} source defines {defs[0].name!r}, not {name!r}")
    return defs[0]


def _parse(text, what) -> ast.Module:
    try:
        return ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise ModelFileError(f"{what} is not valid Python ({type(exc).__name__}: {exc})") from None


def _check_decorator(kind, name, fdef):
    """One ``@descriptor(...)``/``@kernel`` decorator whose arguments are literal data, and no code in
    annotations: the stored metadata, not this text, gives the values, but code here means the file
    was not written by gdmlc."""
    if len(fdef.decorator_list) != 1:
        raise ModelFileError(f"the stored {kind} {name} must have exactly one @{kind} decorator, "
                             f"found {len(fdef.decorator_list)}")
    dec = fdef.decorator_list[0]
    call = dec if isinstance(dec, ast.Call) else None
    target = call.func if call else dec
    dotted = all(isinstance(n, (ast.Name, ast.Attribute, ast.Load)) for n in ast.walk(target))
    label = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", None)
    if not dotted or label != kind:
        shown = label if dotted and label else ast.unparse(dec)[:60]
        raise ModelFileError(f"the stored {kind} {name} is decorated @{shown}, not @{kind}")
    values = ([*call.args, *(k.value for k in call.keywords)] if call else [])
    annotations = [a.annotation for a in fdef.args.args if a.annotation is not None]
    for node in values + annotations + ([fdef.returns] if fdef.returns else []):
        if not all(isinstance(n, _DATA_NODES) for n in ast.walk(node)):
            raise ModelFileError(f"the stored {kind} {name} has code in its decorator or annotations "
                                 f"(line {node.lineno}: {ast.unparse(node)[:60]!r}); only literal data is allowed")


def _index_space(kind, over):
    if kind == "kernel":
        if over is not None:
            raise ModelFileError(f"a stored kernel has no index space, got {over!r}")
        return None
    if over not in INDEX_SPACES:
        raise ModelFileError(f"the stored descriptor's index space {over!r} is not one of {', '.join(INDEX_SPACES)}")
    return INDEX_SPACES[over]


def _params(kind, name, params) -> dict:
    params = _mapping(params, f"the params of {name}")
    if kind == "kernel" and params:
        raise ModelFileError(f"a stored kernel has no params, got {sorted(params)}")
    out = {}
    for key, value in params.items():
        key = _identifier(key, f"a parameter of {name}")
        if isinstance(value, list):
            if not value:
                raise ModelFileError(f"parameter {key} of {name} is an empty list")
            out[key] = [_finite(v, f"parameter {key} of {name}") for v in value]
        else:
            out[key] = _finite(value, f"parameter {key} of {name}")
    return out


def _layout(kind, name, over, meta) -> Layout:
    elements, cutoff = meta.get("elements"), meta.get("cutoff")
    if kind == "kernel":
        if elements is not None or cutoff is not None:
            raise ModelFileError(f"a stored kernel has no elements or cutoff, got {elements!r}, {cutoff!r}")
        return Layout()
    if elements is not None and not isinstance(elements, list):
        raise ModelFileError(f"the stored elements of {name} must be a list, got {elements!r}")

    def error(message, hint):
        return ModelFileError(f"descriptor {name}: {message}")
    return checked_layout(over, elements, cutoff, error)


def _sigmas(kind, sigmas):
    if sigmas is None:
        return None
    if kind == "kernel" or not isinstance(sigmas, list) or not sigmas:
        raise ModelFileError(f"stored default sigmas must be a non-empty list for a descriptor, got {sigmas!r}")
    values = tuple(_finite(s, "a default sigma") for s in sigmas)
    if min(values) <= 0:
        raise ModelFileError(f"stored default sigmas must be positive, got {list(values)}")
    return values


def _mapping(value, what) -> dict:
    if not isinstance(value, dict):
        raise ModelFileError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _finite(value, what) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ModelFileError(f"{what} must be a number, got {value!r}")
    try:
        out = float(value)
    except OverflowError:
        out = math.inf
    if not math.isfinite(out):
        raise ModelFileError(f"{what} must be finite, got {value!r}")
    return out


def _safe_text(text: str) -> str:
    """A stored file name as it may appear in generated code's comments and docstrings."""
    return "".join(c if c.isprintable() and c not in "\"'\\" else "_" for c in text[:500])


# --------------------------------------------------------------------------- format 1: whole module text

_ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_DSL_NAMES = {"pi": math.pi, **{name: name for name in INDEX_SPACES}}  # what compiler.dsl exports as data


def format1_function(kind: str, module_text, name) -> DSLFunction:
    """The named function of a format-1 file's stored module text, through the same checks as format 2."""
    name = _identifier(name, f"the stored {kind} name")
    if not isinstance(module_text, str) or len(module_text) > 50 * MAX_SOURCE_CHARS:
        raise ModelFileError(f"the stored {kind} module is not text of a sensible size")
    lines = module_text.splitlines(keepends=True)
    tree = _parse(module_text, f"the stored {kind} module")
    values = _module_literals(kind, tree)
    fdef = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name), None)
    if fdef is None:
        raise ModelFileError(f"the stored {kind} module does not define {name!r}")
    first = min([fdef.lineno] + [d.lineno for d in fdef.decorator_list])
    used = {n.id for stmt in fdef.body for n in ast.walk(stmt) if isinstance(n, ast.Name)}
    constants = {k: _finite(v, f"module constant {k}") for k, v in values.items()
                 if k in used and isinstance(v, (int, float)) and not isinstance(v, bool)}
    meta = {"name": name, "kind": kind, "over": None, "params": {}, "default_sigmas": None,
            "constants": constants, "filename": f"<{kind} {name} of a format-1 model file>", "first_line": first}
    if kind == "descriptor":
        meta["over"] = DEFAULT_INDEX_SPACE.name  # the decorator's default
        meta.update(_decorator_arguments(fdef, values))
    return restore_function(kind, "".join(lines[first - 1:fdef.end_lineno]), meta)


def _module_literals(kind, tree) -> dict:
    """Module-level ``NAME = literal`` values; anything at module level that could run code is refused."""
    values = {}
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef)):
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # docstring
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and all(isinstance(n, _DATA_NODES) for n in ast.walk(node.value))):
            values[node.targets[0].id] = _literal(node.value, {**_DSL_NAMES, **values})
            continue
        raise ModelFileError(
            f"the stored {kind} module of this format-1 model has code at module level (line {node.lineno}: "
            f"{ast.unparse(node)[:60]!r}), which gdmlc no longer runs: retrain the model")
    return values


def _decorator_arguments(fdef, values) -> dict:
    """over/params/sigmas of ``@descriptor(...)``, read as literals (names resolved to module literals)."""
    dec = fdef.decorator_list[0] if len(fdef.decorator_list) == 1 else None
    if not isinstance(dec, ast.Call):
        return {}
    out = {}
    for kw in dec.keywords:
        key = {"over": "over", "params": "params", "sigmas": "default_sigmas", "elements": "elements",
               "cutoff": "cutoff"}.get(kw.arg)
        if key is None or not all(isinstance(n, _DATA_NODES) for n in ast.walk(kw.value)):
            raise ModelFileError(f"descriptor {fdef.name}: decorator argument {ast.unparse(kw)[:60]!r} is not "
                                 "literal data: retrain the model")
        out[key] = _literal(kw.value, {**_DSL_NAMES, **values})
    if "default_sigmas" in out and not isinstance(out["default_sigmas"], list):
        out["default_sigmas"] = list(out["default_sigmas"])
    return out


def _literal(node, names):
    """Value of a data-only expression: constants, containers, known names, + - * / on numbers (in float,
    so nothing can take long)."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in names:
            raise ModelFileError(f"line {node.lineno}: {node.id!r} is not a literal defined in the stored module")
        return names[node.id]
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return [_literal(e, names) for e in node.elts]
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise ModelFileError(f"line {node.lineno}: '**' in a dict is not literal data")
        return {_literal(k, names): _literal(v, names) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.UnaryOp):
        value = _finite(_literal(node.operand, names), f"line {node.lineno}: operand")
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
        a = _finite(_literal(node.left, names), f"line {node.lineno}: operand")
        b = _finite(_literal(node.right, names), f"line {node.lineno}: operand")
        try:
            return _ARITHMETIC[type(node.op)](a, b)
        except (ArithmeticError, ValueError):
            raise ModelFileError(f"line {node.lineno}: {ast.unparse(node)[:60]!r} cannot be evaluated") from None
    raise ModelFileError(f"line {getattr(node, 'lineno', '?')}: {ast.unparse(node)[:60]!r} is not literal data")


# --------------------------------------------------------------------------- loading

REQUIRED_KEYS = ("sigma", "lam", "perms", "z", "R_train", "alpha", "D_train", "B_train", "label_scale",
                 "energy_constant", "info")
VERSION1_KEYS = ("descriptor_name", "descriptor_source", "kernel_name", "kernel_source")
VERSION2_KEYS = (CHECKSUM_KEY, "descriptor_source", "descriptor_meta", "kernel_source", "kernel_meta")


def load_model(cls, path):
    """A trained ``cls`` (GDML) from a model file; any problem with the file is a ModelFileError naming it."""
    path = Path(path)
    try:
        stored = _read_npz(path)
        version = _format_version(stored)
        for key in REQUIRED_KEYS + (VERSION2_KEYS if version >= 2 else VERSION1_KEYS):
            _get(stored, key)
        if version >= 2:
            _verify_checksum(stored)
        arrays = _checked_arrays(stored)  # before compiling anything
        if version >= 2:
            descriptor, kernel = (restore_function(kind, _text(stored, f"{kind}_source"),
                                                   _json(stored, f"{kind}_meta")) for kind in KINDS)
        else:
            descriptor, kernel = (format1_function(kind, _text(stored, f"{kind}_source"),
                                                   _text(stored, f"{kind}_name")) for kind in KINDS)
        return _build_model(cls, arrays, descriptor, kernel)
    except ModelFileError as exc:
        raise ModelFileError(f"{path}: {exc}") from None


def _read_npz(path) -> dict:
    try:
        f = np.load(path, allow_pickle=False)
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise ValueError("a single .npy array, not an npz archive")
        with f:
            return {k: f[k] for k in f.files}
    except FileNotFoundError as exc:
        raise ModelFileError(f"not a readable npz model file (No such file: {exc.filename})") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error, KeyError) as exc:
        reason = ("it contains pickled Python objects, which gdmlc never loads" if "pickle" in str(exc)
                  else str(exc) or type(exc).__name__)
        raise ModelFileError(f"not a readable npz model file ({reason})") from None


def _format_version(stored) -> int:
    fmt = stored.get("format")
    if fmt is None or fmt.dtype.kind != "U" or str(fmt) != FORMAT:
        raise ModelFileError(f"not a gdmlc model (keys: {', '.join(sorted(stored)) or 'none'}); "
                             "a dataset? train a model with `gdmlc train` first")
    version = _scalar(stored, "format_version", "iu")
    if version > FORMAT_VERSION or version < 1:
        raise ModelFileError(f"model format {version} is not one this gdmlc reads (1..{FORMAT_VERSION}); "
                             "upgrade gdmlc or retrain the model")
    return int(version)


def _verify_checksum(stored):
    if checksum(stored) != _text(stored, CHECKSUM_KEY):
        raise ModelFileError("model file modified or corrupt: its checksum does not match its contents")


def _get(stored, key):
    if key not in stored:
        raise ModelFileError(f"model file is missing {key!r}; it is corrupt or from another tool")
    return stored[key]


def _text(stored, key) -> str:
    a = _get(stored, key)
    if a.dtype.kind != "U" or a.ndim != 0:
        raise ModelFileError(f"{key!r} must be a text string, got a {a.dtype} array of shape {a.shape}")
    return str(a)


def _json(stored, key):
    try:
        return json.loads(_text(stored, key))
    except (ValueError, RecursionError) as exc:
        raise ModelFileError(f"{key!r} is not valid JSON ({exc})") from None


def _scalar(stored, key, kinds="fiu"):
    a = _get(stored, key)
    if a.dtype.kind not in kinds or a.ndim != 0:
        raise ModelFileError(f"{key!r} must be a number, got a {a.dtype} array of shape {a.shape}")
    return a[()]


def _array(stored, key, shape, kinds="f", finite=True) -> np.ndarray:
    """``stored[key]`` checked for dtype kind, shape (None: any size) and finite values."""
    a = _get(stored, key)
    expected = "(" + ", ".join("any" if s is None else str(s) for s in shape) + ")"
    if a.dtype.kind not in kinds or a.ndim != len(shape) or any(s is not None and s != t
                                                                 for s, t in zip(shape, a.shape)):
        raise ModelFileError(f"{key!r} has dtype {a.dtype} and shape {a.shape}, expected "
                             f"{'floats' if kinds == 'f' else 'integers'} of shape {expected}")
    if finite and a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise ModelFileError(f"{key!r} contains non-finite values (NaN or inf)")
    return a


def _positive(stored, key, allow_zero=False) -> float:
    value = float(_scalar(stored, key))
    if not (math.isfinite(value) and (value >= 0 if allow_zero else value > 0)):
        raise ModelFileError(f"{key!r} must be a finite {'non-negative' if allow_zero else 'positive'} "
                             f"number, got {value}")
    return value


def _checked_arrays(stored) -> dict:
    """Every array, checked against the shapes z (N atoms) and R_train (M geometries) imply."""
    z = _elements(stored)
    n = z.shape[-1]
    R = _array(stored, "R_train", (None, n, 3))
    m = R.shape[0]
    if m < 1:
        raise ModelFileError("'R_train' holds no training geometries")
    if z.ndim == 2 and len(z) != m:
        raise ModelFileError(f"'z' gives elements for {len(z)} geometries, but 'R_train' holds {m}")
    perms = _array(stored, "perms", (None, n), kinds="iu")
    identity = np.arange(n)
    for k, p in enumerate(perms):
        if not np.array_equal(np.sort(p), identity) or not np.array_equal(z[..., p], z):
            raise ModelFileError(f"'perms' row {k} is not a permutation of range({n}) mapping each atom onto "
                                 f"one of its species: {p.tolist()}")
    if len(perms) < 1:
        raise ModelFileError("'perms' holds no permutation (the identity at least)")
    out = {"z": z, "R_train": R, "perms": perms.astype(np.int64), "alpha": _array(stored, "alpha", (m, n, 3)),
           "D_train": _array(stored, "D_train", (m, None)), "B_train": _array(stored, "B_train", (m, None)),
           "energy_weights": (_array(stored, "energy_weights", (m,)) if "energy_weights" in stored else None),
           "sigma": _positive(stored, "sigma"), "lam": _positive(stored, "lam", allow_zero=True),
           "label_scale": _positive(stored, "label_scale")}
    constant = float(_scalar(stored, "energy_constant"))
    if np.isinf(constant):
        raise ModelFileError(f"'energy_constant' must be finite (or NaN for none), got {constant}")
    out["energy_constant"] = None if np.isnan(constant) else constant
    info = _json(stored, "info")
    out["info"] = _mapping(info, "'info'")
    hyper = _json(stored, "hyper") if "hyper" in stored else {}  # absent: written before hyper= existed
    out["hyper"] = {_identifier(k, "a hyperparameter name"): _finite(v, f"hyperparameter {k}")
                    for k, v in _mapping(hyper, "'hyper'").items()}
    out["local"] = _kernel_scope(stored, perms)
    if z.ndim == 2 and not out["local"]:
        raise ModelFileError("'z' gives elements per geometry (several compositions), which only a local model "
                             "can hold")
    out["R_hessian"], out["hessian_weights"] = _hessian_observations(stored, n, out["local"])
    out["element_energies"] = _array(stored, "element_energies", (119,)) if "element_energies" in stored else None
    if out["element_energies"] is not None and z.ndim != 2:
        raise ModelFileError("'element_energies' belongs to a model of several compositions (z per geometry)")
    return out


def _elements(stored) -> np.ndarray:
    """'z': the training molecule's atomic numbers (N,), or per geometry (M, N) padded with 0 (a local
    model of several compositions, runtime/mixed.py)."""
    z = _array(stored, "z", (None,) if np.ndim(_get(stored, "z")) != 2 else (None, None), kinds="iu")
    if z.ndim == 2:
        try:
            return mixed.checked_elements(z, *z.shape, what="'z'")
        except ValueError as exc:
            raise ModelFileError(str(exc)) from None
    if len(z) < 2 or z.min() < 1 or z.max() > 118:
        raise ModelFileError(f"'z' must hold at least 2 atomic numbers in 1..118, got {z.tolist()[:20]}")
    return z


def _hessian_observations(stored, n, local):
    """(R_hessian (K, N, 3), hessian_weights (K, 3N(3N+1)/2)) of a model trained on Hessians, or
    (None, None): both keys or neither."""
    present = [key for key in ("R_hessian", "hessian_weights") if key in stored]
    if not present:
        return None, None
    if len(present) == 1:
        raise ModelFileError(f"{present[0]!r} is stored without its partner: a model trained on Hessians "
                             "stores both 'R_hessian' and 'hessian_weights'")
    if local:
        raise ModelFileError("a local model cannot hold Hessian observations")
    R = _array(stored, "R_hessian", (None, n, 3))
    n3 = 3 * n
    weights = _array(stored, "hessian_weights", (len(R), n3 * (n3 + 1) // 2))
    if len(R) < 1:
        raise ModelFileError("'R_hessian' holds no geometries")
    try:  # its descriptors are evaluated on loading: no overlapping atoms
        checks.geometries(R, "'R_hessian'", n_atoms=n)
    except ValueError as exc:
        raise ModelFileError(str(exc)) from None
    return R, weights


def _kernel_scope(stored, perms) -> bool:
    """Whether the file holds a local model ('kernel_scope'; absent: global, as every model written
    before local kernels existed).  A local model has no permutations but the identity."""
    if "kernel_scope" not in stored:
        return False
    scope = _text(stored, "kernel_scope")
    if scope not in ("local", "global"):
        raise ModelFileError(f"'kernel_scope' must be 'local' or 'global', got {scope[:40]!r}")
    if scope == "local" and not np.array_equal(perms, np.arange(perms.shape[1])[None]):
        raise ModelFileError(f"a local model has no symmetries: 'perms' must be the identity alone, but it holds "
                             f"{len(perms)} permutation(s)")
    return scope == "local"


def _channels(descriptor) -> int:
    """Features per site the stored descriptor gives (a combination: per atom, all parts)."""
    if isinstance(descriptor, Combination):
        return sum(_channels(part) for part in descriptor.parts)
    lengths = [len(v) for v in descriptor.params.values() if isinstance(v, list)]
    return (lengths[0] if lengths else 1) * descriptor.layout.n_blocks(descriptor.over)


def _check_features(arrays, descriptor):
    """D_train and B_train have as many features as the descriptor gives for these atoms (before compiling)."""
    space = descriptor.parts[0].over if isinstance(descriptor, Combination) else descriptor.over
    n_features = space.n_features(arrays["z"].shape[-1], _channels(descriptor))
    for key in ("D_train", "B_train"):
        if arrays[key].shape[1] != n_features:
            raise ModelFileError(f"{key!r} has {arrays[key].shape[1]} features per geometry, but "
                                 f"{descriptor.name} gives {n_features} for {arrays['z'].shape[-1]} atoms")


def _build_model(cls, arrays, descriptor, kernel):
    _check_features(arrays, descriptor)
    try:
        model = cls(descriptor, kernel, sigma=arrays["sigma"], lam=arrays["lam"], symmetries=arrays["perms"],
                    progress=False, hyper=arrays["hyper"], local=arrays["local"])
        fperms = model.model.feature_permutations(arrays["perms"], arrays["z"].shape[-1])
    except (DSLError, CompileError, ValueError, TypeError) as exc:
        raise ModelFileError(f"the stored descriptor and kernel do not compile: {exc}") from None
    state = TrainedState(z=arrays["z"], R_train=arrays["R_train"], perms=arrays["perms"], alpha=arrays["alpha"],
                         D_train=arrays["D_train"], B_train=arrays["B_train"],
                         energy_weights=arrays["energy_weights"],  # None: a forces-only model
                         sigma=arrays["sigma"], lam_used=arrays["lam"], label_scale=arrays["label_scale"],
                         energy_constant=arrays["energy_constant"], R_hessian=arrays["R_hessian"],
                         hessian_weights=arrays["hessian_weights"], element_energies=arrays["element_energies"])
    model.energy_constraints = state.energy_constraints
    model.info = arrays["info"]
    model._install(state, fperms)
    return model
