"""The user-facing DSL: decorators, index spaces and math names.

A descriptor is a Python function over the positions of the atoms it
involves (``ri``, ``rj``), optionally their atomic numbers (``zi``, ``zj``),
and named parameters; the decorator says which index space it maps over.
A kernel is a function of two descriptor vectors ``d``, ``dp`` and scalar
hyperparameters.  The decorators only record what the compiler needs; the
compiler reads the function's source, it never calls it.

The math names below also work on numpy arrays, so a DSL function can be
tried out in plain Python, but the compiler treats them as primitives.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import numpy as np

from compiler.middle.index_spaces import (DEFAULT_INDEX_SPACE, INDEX_SPACES, IndexSpace, Layout,  # noqa: F401
                                          neighbour_pairs, neighbours, pairs)

from compiler.middle import primitives as _primitives

pi = float(np.pi)


# Index spaces (``pairs``, ``neighbours``) are objects of compiler.middle.index_spaces: each owns
# its variables, sites, permutation rule and loops; the DSL only names them.


@dataclass(frozen=True)
class StoredSource:
    """A DSL function's text as stored in a model file, standing in for the Python function.

    It is only ever parsed (``ast``), never imported or executed: the parser reads
    ``source`` and ``constants`` instead of inspecting a live function."""

    name: str
    source: str          # the def with its decorator lines, as inspect.getsource gives it
    filename: str        # where it was defined when the model was trained (messages only)
    first_line: int      # line of its first decorator there
    constants: dict      # the module-level numbers the body reads

    def __call__(self, *args, **kwargs):
        raise TypeError(f"{self.name} was read from a model file: it can be compiled, not called")


@dataclass
class DSLFunction:
    """A decorated DSL function: the Python function (or its stored text) plus what the
    decorator said."""

    fn: object                     # a Python function, or a StoredSource read from a model file
    kind: str                      # 'descriptor' or 'kernel'
    over: IndexSpace | None = None
    params: dict = field(default_factory=dict)
    default_sigmas: tuple | None = None
    layout: Layout = Layout()      # element blocks and cutoff radius (descriptors)

    @property
    def stored(self):
        """The StoredSource when this function was read from a model file, else None."""
        return self.fn if isinstance(self.fn, StoredSource) else None

    @property
    def name(self):
        return self.stored.name if self.stored else self.fn.__name__

    @property
    def filename(self):
        if self.stored:
            return self.stored.filename
        return inspect.getsourcefile(self.fn) or "<unknown>"

    @property
    def source(self):
        return self.stored.source if self.stored else inspect.getsource(self.fn)

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __repr__(self):
        return f"<gdmlc {self.kind} {self.name}>"


def descriptor(fn=None, *, over=DEFAULT_INDEX_SPACE, params=None, sigmas=None, elements=None, cutoff=None):
    """Mark ``fn`` as a descriptor over an index space.

    ``params`` maps parameter names to a number (the same for every feature)
    or a list (one feature channel per entry; all lists the same length).
    ``sigmas`` is an optional default grid of kernel length scales suited to
    this descriptor's feature scale.
    ``elements`` (atomic numbers; atom-centred spaces) gives each site one block of features
    per element of the neighbour (``neighbours``) or per unordered pair of the neighbours'
    elements (``neighbour_pairs``): a term adds only to its own block.
    ``cutoff`` (Å) promises the term and its gradient are exactly zero once a neighbour is
    that far from the centre (checked when compiled), so the loops skip those terms.
    """
    def wrap(f):
        site = _definition_site(f)
        space = _index_space(over, site)
        return DSLFunction(f, "descriptor", space, _checked_params(params, site),
                           None if sigmas is None else _checked_sigmas(sigmas, site),
                           checked_layout(space, elements, cutoff, lambda m, h: _decorator_error(site, m, h)))

    return wrap if fn is None else wrap(fn)


def _definition_site(f):
    """(file, line) of the decorator above ``f``: where its arguments were written."""
    code = getattr(f, "__code__", None)
    if code is not None:
        return code.co_filename, code.co_firstlineno
    return getattr(f, "filename", "<unknown>"), getattr(f, "first_line", 0)


def _decorator_error(site, message, hint):
    from compiler.errors import DSLError
    return DSLError(message, site[0], site[1], 1, hint)


def _index_space(over, site) -> IndexSpace:
    if isinstance(over, IndexSpace):
        return over
    if isinstance(over, str) and over in INDEX_SPACES:
        return INDEX_SPACES[over]
    raise _decorator_error(site, f"unknown index space over={over!r}",
                           f"valid index spaces: {', '.join(INDEX_SPACES)}")


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_)) \
        and bool(np.isfinite(float(x)))


def _checked_params(params, site) -> dict:
    """``params`` as a dict of finite numbers or equal-length lists of them."""
    hint = "give each parameter a number or a list of numbers; all lists of the same length"
    if params is None:
        return {}
    if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
        raise _decorator_error(site, f"params must be a dict of names to values, got {params!r}", hint)
    lengths = {}
    for name, value in params.items():
        values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]
        if not values or not all(_is_number(v) for v in values):
            raise _decorator_error(site, f"parameter {name!r} = {value!r} is not a finite number "
                                         "or a non-empty list of finite numbers", hint)
        if isinstance(value, (list, tuple, np.ndarray)) and len(values) > 1:
            lengths[name] = len(values)
    if len(set(lengths.values())) > 1:
        raise _decorator_error(site, f"parameter lists have different lengths {lengths}", hint)
    return dict(params)


def checked_layout(space, elements, cutoff, error) -> Layout:
    """The Layout for ``elements`` and ``cutoff`` as declared; ``error(message, hint)`` builds
    the exception (the decorator's line, or the model file)."""
    if elements is not None:
        if not space.allows_elements:
            raise error(f"elements= needs an atom-centred index space, not {space.name}",
                        "use over='neighbours' or over='neighbour_pairs', or drop elements=")
        values = list(elements) if isinstance(elements, (list, tuple, np.ndarray)) else [elements]
        if not values or not all(_is_number(e) and float(e) == int(e) and 1 <= e <= 118 for e in values) \
                or len(set(map(float, values))) != len(values):
            raise error(f"elements={elements!r} must be distinct atomic numbers (1..118)", "e.g. elements=[1, 6, 7, 8]")
        elements = tuple(float(e) for e in values)
    if cutoff is not None and not (_is_number(cutoff) and float(cutoff) > 0):
        raise error(f"cutoff={cutoff!r} must be a positive number (Å)", "e.g. cutoff=5.0")
    return Layout(elements or (), None if cutoff is None else float(cutoff))


def _checked_sigmas(sigmas, site) -> tuple:
    values = list(sigmas) if isinstance(sigmas, (list, tuple, np.ndarray)) else [sigmas]
    if not values or not all(_is_number(s) and float(s) > 0 for s in values):
        raise _decorator_error(site, f"sigmas={sigmas!r} must be a list of positive numbers",
                               "e.g. sigmas=[0.5, 1, 2, 4]")
    return tuple(float(s) for s in values)


@dataclass(frozen=True)
class Combination:
    """Several descriptor terms as one per-atom feature vector (``combine``): atom i's features
    are part 0's features of atom i, then part 1's, and so on, so a model sees one vector per atom
    whatever the parts' index spaces (all atom-centred).  Each part compiles on its own."""

    parts: tuple                  # DSLFunctions, kind 'descriptor', atom-centred spaces
    name: str
    default_sigmas: tuple | None = None
    kind = "descriptor"

    @property
    def filename(self):
        return self.parts[0].filename

    def __repr__(self):
        return f"<gdmlc descriptor {self.name} = combine({', '.join(p.name for p in self.parts)})>"


def combine(*parts, name=None, sigmas=None) -> Combination:
    """One per-atom feature vector from several atom-centred descriptors, e.g. two-body radial
    and three-body angular terms: ``acsf = combine(g2, g4, name="acsf")``."""
    site = _definition_site(parts[0].fn) if parts and isinstance(parts[0], DSLFunction) else ("<combine>", 0)
    hint = "combine descriptors over atom-centred spaces, e.g. combine(radial, angular, name='acsf')"
    if len(parts) < 2 or not all(isinstance(p, DSLFunction) and p.kind == "descriptor" for p in parts):
        raise _decorator_error(site, f"combine() takes two or more @descriptor functions, got {parts!r}", hint)
    flat = [p for p in parts if not p.over.atom_centred]
    if flat:
        raise _decorator_error(site, f"combine(): {flat[0].name} is over {flat[0].over.name}, which has no "
                                     "per-atom features", hint)
    name = name or "_".join(p.name for p in parts)
    if not (isinstance(name, str) and name.isidentifier()):
        raise _decorator_error(site, f"combine(): name={name!r} is not an identifier", hint)
    return Combination(tuple(parts), name, None if sigmas is None else _checked_sigmas(sigmas, site))


def kernel(fn=None):
    """Mark ``fn(d, dp, *hyperparameters)`` as a base kernel."""

    def wrap(f):
        return DSLFunction(f, "kernel")

    return wrap if fn is None else wrap(fn)


# Math names, usable from plain Python on numpy arrays: each DSL function of the rule
# table (compiler.middle.primitives) is its row's numpy value (sqrt, exp, ..., abs, where, erf).
MATH_NAMES = {p.dsl: p.evaluate for p in _primitives.PRIMITIVES.values() if p.dsl}
globals().update(MATH_NAMES)


def norm(v):
    return np.sqrt(np.sum(np.asarray(v) ** 2, axis=-1))


def dot(a, b):
    return np.sum(np.asarray(a) * np.asarray(b), axis=-1)


def sqdist(a, b):
    return np.sum((np.asarray(a) - np.asarray(b)) ** 2, axis=-1)


__all__ = ["descriptor", "combine", "Combination", "kernel", "pairs", "neighbours", "neighbour_pairs", "pi", *MATH_NAMES, "norm", "dot", "sqdist",
           "DSLFunction", "StoredSource"]
