"""The rule table: one row per primitive operation.

Each row states, in one place, everything about a primitive: its value (numpy,
also the plain-Python DSL function), its local partial derivatives (as IR, so
they can be differentiated again), how it is spelled in Numba, JAX and sympy
(and in Numba CUDA, or in loops LLVM should vectorise, where those differ from
the CPU spelling: the ``cuda`` and ``numba_vector`` columns default to the
``numba`` one), the sympy class that reads back as it, its DSL name, and the
interval the tests sample its arguments from.  Everything else derives from
the table: :mod:`compiler.middle.ir`'s registry (filled below, JAX-style), the DSL's
function names (:data:`DSL_FUNCTIONS`, :mod:`compiler.dsl`), the parser's
comparisons, sympy's way back (:data:`SYMPY_CLASSES`), the namespaces the
spellings need (:func:`namespace`) and tests/test_primitives.py, which checks
every row against JAX.  Adding a primitive means adding one row here.

Forward and reverse mode both use ``partials``: a tangent is
``sum_i partial_i * tangent(arg_i)`` and an adjoint contribution is
``partial_i * adjoint(out)``.  ``None`` marks an argument with no derivative
(a condition, a comparison operand).
"""
from __future__ import annotations

import ast
import builtins
import importlib
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.special
import sympy as sp

from compiler.middle import ir
from compiler.errors import CompileError

SPELLINGS = ("numba", "numba_vector", "cuda", "jax")
# Names a spelling may use, and where they come from (module, attribute or None); the
# generated Numba modules import the CPU ones in their header (codegen.module_source).
SPELLING_NAMES = {"math": ("math", None), "np": ("numpy", None), "vexp": ("compiler.targets.numba_math", "vexp"),
                  "jnp": ("jax.numpy", None), "jax": ("jax", None)}


@dataclass(frozen=True)
class Primitive:
    name: str
    arity: int
    evaluate: Callable          # numpy value; also the plain-Python DSL function (compiler.dsl)
    partials: Callable | None   # (args, out) -> tuple of Expr | None, one per argument
    numba: str                  # format string over the argument spellings
    jax: str
    sympy: Callable             # sympy constructor
    differentiable: bool = True
    cuda: str | None = None     # Numba CUDA spelling; None: same as ``numba``
    # Numba spelling inside loops LLVM should vectorise (prediction); None: same as ``numba``
    numba_vector: str | None = None
    # the sympy class read back as this primitive (simplify.from_sympy); None: sympy writes
    # it with its core classes (Add, Mul, Pow, Piecewise), which from_sympy reads structurally
    sympy_class: type | None = None
    dsl: str | None = None      # the name a DSL body calls it by; None: not a DSL function
    python_op: str | None = None  # the ast operator class a DSL body writes it with (comparisons)
    domain: tuple = (-2.0, 2.0)   # where tests sample its arguments (inside its domain)

    def __post_init__(self):
        for column in ("cuda", "numba_vector"):
            if getattr(self, column) is None:
                object.__setattr__(self, column, self.numba)
        if self.partials is None:
            object.__setattr__(self, "partials", _no_derivative_rule(self.name))


def _no_derivative_rule(name):
    """Partials of a primitive without a rule: a clear error, never a silent zero."""
    def partials(args, out):
        raise CompileError(f"no derivative rule for {name}(): it cannot be differentiated")
    return partials


def spelling_names(row: Primitive, column: str) -> set:
    """The free names (modules, functions) that ``row``'s ``column`` spelling uses; a
    CompileError naming the row and column if it is missing or not a Python expression."""
    text = getattr(row, column, None)
    if not isinstance(text, str) or not text:
        raise CompileError(f"primitive {row.name} has no {column} spelling")
    placeholders = [f"_arg{k}" for k in range(row.arity)]
    try:
        tree = ast.parse(text.format(*placeholders), mode="eval")
    except (SyntaxError, IndexError, KeyError, ValueError) as exc:
        raise CompileError(f"primitive {row.name}: its {column} spelling {text!r} is not a Python expression "
                           f"over {row.arity} argument(s) ({exc})") from None
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    return {n for n in names if n not in placeholders and not hasattr(builtins, n)}


def check_row(row: Primitive) -> Primitive:
    """A CompileError naming the row and what is missing, unless every column is usable."""
    for column in SPELLINGS:
        unknown = spelling_names(row, column) - set(SPELLING_NAMES)
        if unknown:
            raise CompileError(f"primitive {row.name}: its {column} spelling uses {', '.join(sorted(unknown))}, "
                               f"which compiler.middle.primitives.SPELLING_NAMES does not provide")
    if not callable(row.evaluate) or not callable(row.sympy):
        raise CompileError(f"primitive {row.name} has no numpy evaluate or sympy constructor")
    return row


def namespace(column: str, rows=None) -> dict:
    """The names ``column``'s spellings use, imported: what exec needs for lowered text."""
    out = {}
    for row in rows if rows is not None else PRIMITIVES.values():
        for name in spelling_names(row, column):
            module, attribute = SPELLING_NAMES[name]
            value = importlib.import_module(module)
            out[name] = getattr(value, attribute) if attribute else value
    return out


def _sign_partials(args, out):
    return (None,)


def _pow_partials(args, out):
    base, expo = args
    d_base = expo * ir.make("pow", base, expo - 1.0)
    d_expo = None if expo.is_const else out * ir.make("log", base)
    return (d_base, d_expo)


def _where_partials(args, out):
    cond = args[0]
    return (None, ir.make("where", cond, ir.ONE, ir.ZERO), ir.make("where", cond, ir.ZERO, ir.ONE))


def _abs_partials(args, out):
    return (ir.make("sign", args[0]),)


def _arccos_partials(args, out):
    x = args[0]
    return (-(ir.ONE / ir.make("sqrt", 1.0 - x * x)),)


def _erf_partials(args, out):
    x = args[0]
    return (ir.const(2.0 / math.sqrt(math.pi)) * ir.make("exp", -(x * x)),)


def _compare(name, symbol, python_op, np_fn, sp_class):
    return Primitive(name, 2, np_fn, lambda a, o: (None, None),
                     f"({{0}} {symbol} {{1}})", f"({{0}} {symbol} {{1}})", sp_class,
                     differentiable=False, sympy_class=sp_class, python_op=python_op)


def _unary(name, np_fn, partial, numba_name, jax_name, sp_fn, **columns):
    """A function row; by default its DSL name is its name and sympy reads it back by its constructor."""
    columns = {"dsl": name, "sympy_class": sp_fn, **columns}
    return Primitive(name, 1, np_fn, partial, f"{numba_name}({{0}})", f"{jax_name}({{0}})", sp_fn, **columns)


def _np_where(c, a, b):
    return np.where(c, a, b)


POSITIVE = (0.2, 3.0)  # sampling domain of rows defined for positive arguments only

_TABLE = [
    Primitive("add", 2, np.add, lambda a, o: (ir.ONE, ir.ONE),
              "({0} + {1})", "({0} + {1})", lambda x, y: x + y),
    Primitive("sub", 2, np.subtract, lambda a, o: (ir.ONE, ir.const(-1.0)),
              "({0} - {1})", "({0} - {1})", lambda x, y: x - y),
    Primitive("mul", 2, np.multiply, lambda a, o: (a[1], a[0]),
              "({0} * {1})", "({0} * {1})", lambda x, y: x * y),
    Primitive("div", 2, np.divide, lambda a, o: (1.0 / a[1], -(o / a[1])),
              "({0} / {1})", "({0} / {1})", lambda x, y: x / y, domain=POSITIVE),
    Primitive("neg", 1, np.negative, lambda a, o: (ir.const(-1.0),),
              "(-{0})", "(-{0})", lambda x: -x),
    Primitive("pow", 2, np.power, _pow_partials,
              "({0} ** {1})", "({0} ** {1})", lambda x, y: x ** y, domain=POSITIVE),
    # sympy writes sqrt as Pow(x, 1/2): read back structurally (no sympy_class)
    _unary("sqrt", np.sqrt, lambda a, o: (0.5 / o,), "math.sqrt", "jnp.sqrt", sp.sqrt,
           sympy_class=None, domain=POSITIVE),
    # in vectorised loops vexp (compiler/targets/numba_math.py): libm's exp keeps LLVM from vectorising
    # any loop it is in; in scalar code libm's is faster (a table, not a 13-term polynomial)
    _unary("exp", np.exp, lambda a, o: (o,), "math.exp", "jnp.exp", sp.exp, numba_vector="vexp({0})"),
    _unary("log", np.log, lambda a, o: (1.0 / a[0],), "math.log", "jnp.log", sp.log, domain=POSITIVE),
    _unary("sin", np.sin, lambda a, o: (ir.make("cos", a[0]),), "math.sin", "jnp.sin", sp.sin),
    _unary("cos", np.cos, lambda a, o: (-ir.make("sin", a[0]),), "math.cos", "jnp.cos", sp.cos),
    _unary("arccos", np.arccos, _arccos_partials, "math.acos", "jnp.arccos", sp.acos, domain=(-0.9, 0.9)),
    _unary("tanh", np.tanh, lambda a, o: (1.0 - o * o,), "math.tanh", "jnp.tanh", sp.tanh),
    # sympy writes derivatives of tanh with cosh/sinh, so they need IR forms too
    _unary("cosh", np.cosh, lambda a, o: (ir.make("sinh", a[0]),), "math.cosh", "jnp.cosh", sp.cosh),
    _unary("sinh", np.sinh, lambda a, o: (ir.make("cosh", a[0]),), "math.sinh", "jnp.sinh", sp.sinh),
    _unary("erf", scipy.special.erf, _erf_partials, "math.erf", "jax.lax.erf", sp.erf),
    _unary("abs", np.abs, _abs_partials, "abs", "jnp.abs", sp.Abs),
    # np.sign is not available in CUDA device code: spell it with comparisons there
    Primitive("sign", 1, np.sign, _sign_partials, "np.sign({0})", "jnp.sign({0})", sp.sign,
              differentiable=False, sympy_class=sp.sign,
              cuda="(1.0 if {0} > 0.0 else (-1.0 if {0} < 0.0 else 0.0))"),
    # sympy writes it as a Piecewise: read back structurally (no sympy_class)
    Primitive("where", 3, _np_where, _where_partials,
              "({1} if {0} else {2})", "jnp.where({0}, {1}, {2})",
              lambda c, x, y: sp.Piecewise((x, c), (y, True)), dsl="where"),
    _compare("lt", "<", "Lt", np.less, sp.StrictLessThan),
    _compare("le", "<=", "LtE", np.less_equal, sp.LessThan),
    _compare("gt", ">", "Gt", np.greater, sp.StrictGreaterThan),
    _compare("ge", ">=", "GtE", np.greater_equal, sp.GreaterThan),
    _compare("eq", "==", "Eq", np.equal, sp.Equality),
    _compare("ne", "!=", "NotEq", np.not_equal, sp.Unequality),
]

for _row in _TABLE:
    ir.register(check_row(_row))

PRIMITIVES: dict[str, Primitive] = ir.PRIMITIVES

# Names a DSL body may call, mapped to the primitive they build.
DSL_FUNCTIONS = {p.dsl: p.name for p in _TABLE if p.dsl}
# ast comparison operators (class names) a DSL body may write, mapped to their primitive.
COMPARISONS = {p.python_op: p.name for p in _TABLE if p.python_op}
# sympy classes read back as IR primitives by simplify.from_sympy (the rest are sympy's core classes).
SYMPY_CLASSES = {p.sympy_class: p.name for p in _TABLE if p.sympy_class}
