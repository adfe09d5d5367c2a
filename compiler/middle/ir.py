"""The scalar intermediate representation: a hash-consed expression DAG.

Every value in a DSL body becomes an :class:`Expr` node.  Nodes are interned,
so structurally equal subexpressions are the same object: the DAG is its own
common-subexpression table, and differentiation rules can compare nodes with
``is``.  Constructors fold constants and drop identities (x + 0, x * 1, x * 0)
so that derivative expressions stay small before sympy ever sees them.

What each operation means (value, derivatives, spellings) lives in one place,
:mod:`compiler.middle.primitives`; this module only builds and walks graphs.  It is the
bottom layer: it imports only compiler.errors (a leaf), and the rule table fills its
registry (:func:`register`, JAX-style) when :mod:`compiler.middle.primitives` is imported.
``compiler/__init__.py`` imports that module first, so ``import compiler.middle.ir`` (which
runs the package's ``__init__``) always finds the registry filled.

Interning is weak: the table holds each node only while some graph uses it, so
compilations do not accumulate nodes.  While two equal nodes would both be alive
they are the same object (a node keeps its arguments alive, so the ids in a key
cannot be reused by other nodes while the key's node exists).
"""
from __future__ import annotations

import math
import weakref

import numpy as np

from compiler.errors import CompileError  # a leaf module: no import circle

_INTERNED = weakref.WeakValueDictionary()
# name -> Primitive, filled by compiler.middle.primitives (register)
PRIMITIVES: dict = {}


class UnknownPrimitive(CompileError):
    """An op that no table row registered."""


def register(row):
    """Add one rule-table row; make/evaluate/AD/lowering look primitives up here."""
    PRIMITIVES[row.name] = row
    return row


def primitive(op):
    """The registered row for ``op``, or a clear error naming it."""
    try:
        return PRIMITIVES[op]
    except KeyError:
        raise UnknownPrimitive(f"unknown primitive {op!r}: no row of the rule table (compiler/middle/primitives.py) "
                               "registers it") from None


class Expr:
    """One node: ``op`` is 'const', 'var' or a primitive name."""

    __slots__ = ("op", "args", "value", "__weakref__")

    def __init__(self, op, args, value):
        self.op, self.args, self.value = op, args, value

    # Python operators build IR, so derivative rules read like math.
    def __add__(self, other): return make("add", self, as_expr(other))
    def __radd__(self, other): return make("add", as_expr(other), self)
    def __sub__(self, other): return make("sub", self, as_expr(other))
    def __rsub__(self, other): return make("sub", as_expr(other), self)
    def __mul__(self, other): return make("mul", self, as_expr(other))
    def __rmul__(self, other): return make("mul", as_expr(other), self)
    def __truediv__(self, other): return make("div", self, as_expr(other))
    def __rtruediv__(self, other): return make("div", as_expr(other), self)
    def __pow__(self, other): return make("pow", self, as_expr(other))
    def __neg__(self): return make("neg", self)

    @property
    def is_const(self):
        return self.op == "const"

    def __repr__(self):
        if self.op == "const":
            return repr(self.value)
        if self.op == "var":
            return self.value
        return f"{self.op}({', '.join(map(repr, self.args))})"


def const(value) -> Expr:
    value = float(value)
    return _intern("const", (), value)


def var(name: str) -> Expr:
    return _intern("var", (), name)


def as_expr(x) -> Expr:
    if isinstance(x, Expr):
        return x
    if isinstance(x, (int, float, np.floating, np.integer)) and not isinstance(x, bool):
        return const(x)
    raise TypeError(f"cannot use {x!r} in an expression")


def _intern(op, args, value):
    key = (op, tuple(id(a) for a in args), value)
    node = _INTERNED.get(key)
    if node is None:
        node = Expr(op, tuple(args), value)
        _INTERNED[key] = node
    return node


# Constant operations folded at build time.  Division and functions stay
# symbolic so sympy sees sqrt(5) and 1/3 exactly, which it needs to cancel
# removable singularities such as Matérn's at s = 0.
_EXACT_FOLDS = {"add", "sub", "mul", "neg"}

ZERO = const(0.0)
ONE = const(1.0)


def make(op: str, *args: Expr) -> Expr:
    """Build ``op(*args)``, folding constants and algebraic identities."""
    prim = primitive(op)
    if len(args) != prim.arity:
        raise TypeError(f"{op} takes {prim.arity} arguments, got {len(args)}")
    if op in _EXACT_FOLDS and all(a.is_const for a in args):
        with np.errstate(all="ignore"):
            value = float(prim.evaluate(*[a.value for a in args]))
        if math.isfinite(value):
            return const(value)
    simpler = _identity(op, args)
    if simpler is not None:
        return simpler
    return _intern(op, args, None)


def _identity(op, args):
    """Algebraic shortcuts that are exact for finite operands."""
    a = args[0]
    b = args[1] if len(args) > 1 else None
    if op == "add":
        if a is ZERO: return b
        if b is ZERO: return a
    elif op == "sub":
        if b is ZERO: return a
        if a is ZERO: return make("neg", b)
        if a is b: return ZERO
    elif op == "mul":
        if a is ZERO or b is ZERO: return ZERO
        if a is ONE: return b
        if b is ONE: return a
        if a.is_const and a.value == -1.0: return make("neg", b)
        if b.is_const and b.value == -1.0: return make("neg", a)
    elif op == "div":
        if a is ZERO: return ZERO
        if b is ONE: return a
    elif op == "neg":
        if a.op == "neg": return a.args[0]
    elif op == "pow":
        if b is ONE: return a
        if b is ZERO: return ONE
    elif op == "where":
        cond, x, y = args
        if x is y: return x
        if cond.is_const: return x if cond.value else y
    return None


def topological(outputs) -> list:
    """Nodes reachable from ``outputs``, each after all of its arguments."""
    order, seen = [], set()
    stack = [(o, False) for o in reversed(list(outputs))]
    while stack:
        node, expanded = stack.pop()
        if id(node) in seen:
            continue
        if expanded:
            seen.add(id(node))
            order.append(node)
            continue
        stack.append((node, True))
        for arg in reversed(node.args):
            if id(arg) not in seen:
                stack.append((arg, False))
    return order


def free_variables(outputs) -> set:
    return {n.value for n in topological(outputs) if n.op == "var"}


def count_ops(outputs) -> int:
    """Distinct operations (non-leaf nodes) needed to compute ``outputs``."""
    return sum(1 for n in topological(outputs) if n.op not in ("const", "var"))


def evaluate(outputs, env: dict):
    """Evaluate expressions with numpy (broadcasting over array inputs)."""
    values = {}
    with np.errstate(all="ignore"):
        for node in topological(outputs):
            if node.op == "const":
                v = node.value
            elif node.op == "var":
                try:
                    v = env[node.value]
                except KeyError:
                    raise KeyError(f"no value given for variable {node.value!r}") from None
            else:
                v = primitive(node.op).evaluate(*[values[id(a)] for a in node.args])
            values[id(node)] = v
    return [values[id(o)] for o in outputs]


def substitute(outputs, mapping: dict) -> list:
    """Replace variables (by name) with expressions."""
    new = {}
    for node in topological(outputs):
        if node.op == "var" and node.value in mapping:
            new[id(node)] = as_expr(mapping[node.value])
        elif node.op in ("const", "var"):
            new[id(node)] = node
        else:
            new[id(node)] = make(node.op, *[new[id(a)] for a in node.args])
    return [new[id(o)] for o in outputs]
