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

pi = float(np.pi)


@dataclass(frozen=True)
class IndexSpace:
    """Which atoms a feature involves.

    ``pairs``: one feature per atom pair i < j (per parameter channel).
    ``neighbours``: one feature per atom i (per channel), the body summed over
    every other atom j.
    """

    name: str

    def __repr__(self):
        return self.name


pairs = IndexSpace("pairs")
neighbours = IndexSpace("neighbours")
INDEX_SPACES = {"pairs": pairs, "neighbours": neighbours}


@dataclass
class DSLFunction:
    """A decorated DSL function: the Python function plus what the decorator said."""

    fn: object
    kind: str                      # 'descriptor' or 'kernel'
    over: IndexSpace | None = None
    params: dict = field(default_factory=dict)
    default_sigmas: tuple | None = None

    @property
    def name(self):
        return self.fn.__name__

    @property
    def filename(self):
        return inspect.getsourcefile(self.fn) or "<unknown>"

    @property
    def source(self):
        return inspect.getsource(self.fn)

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __repr__(self):
        return f"<gdmlc {self.kind} {self.name}>"


def descriptor(fn=None, *, over=pairs, params=None, sigmas=None):
    """Mark ``fn`` as a descriptor over an index space.

    ``params`` maps parameter names to a number (the same for every feature)
    or a list (one feature channel per entry; all lists the same length).
    ``sigmas`` is an optional default grid of kernel length scales suited to
    this descriptor's feature scale.
    """
    if isinstance(over, str):
        over = INDEX_SPACES[over]

    def wrap(f):
        return DSLFunction(f, "descriptor", over, dict(params or {}),
                           None if sigmas is None else tuple(float(s) for s in sigmas))

    return wrap if fn is None else wrap(fn)


def kernel(fn=None):
    """Mark ``fn(d, dp, *hyperparameters)`` as a base kernel."""

    def wrap(f):
        return DSLFunction(f, "kernel")

    return wrap if fn is None else wrap(fn)


# Math names, usable from plain Python on numpy arrays.
sqrt, exp, log, sin, cos, arccos, tanh = np.sqrt, np.exp, np.log, np.sin, np.cos, np.arccos, np.tanh
abs = np.abs  # noqa: A001 - the DSL name is abs


def where(cond, a, b):
    return np.where(cond, a, b)


def norm(v):
    return np.sqrt(np.sum(np.asarray(v) ** 2, axis=-1))


def dot(a, b):
    return np.sum(np.asarray(a) * np.asarray(b), axis=-1)


def sqdist(a, b):
    return np.sum((np.asarray(a) - np.asarray(b)) ** 2, axis=-1)


__all__ = ["descriptor", "kernel", "pairs", "neighbours", "pi", "sqrt", "exp", "log", "sin",
           "cos", "arccos", "tanh", "abs", "where", "norm", "dot", "sqdist", "DSLFunction"]
