"""The rule table: one entry per primitive operation.

Each primitive states, in one place, its value (numpy), its local partial
derivatives (as IR, so they can be differentiated again), and how it is
spelled in Numba, JAX and sympy (and in Numba CUDA, or in loops LLVM should
vectorise, where those differ from the CPU spelling: the ``cuda`` and
``numba_vector`` columns default to the ``numba`` one).  Adding a primitive
means adding one entry here and, if the DSL should expose it, one name in
:data:`DSL_FUNCTIONS`.

Forward and reverse mode both use ``partials``: a tangent is
``sum_i partial_i * tangent(arg_i)`` and an adjoint contribution is
``partial_i * adjoint(out)``.  ``None`` marks an argument with no derivative
(a condition, a comparison operand).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import sympy as sp


@dataclass(frozen=True)
class Primitive:
    name: str
    arity: int
    evaluate: Callable          # numpy value
    partials: Callable | None   # (args, out) -> tuple of Expr | None, one per argument
    numba: str                  # format string over the argument spellings
    jax: str
    sympy: Callable             # sympy constructor
    differentiable: bool = True
    cuda: str | None = None     # Numba CUDA spelling; None: same as ``numba``
    # Numba spelling inside loops LLVM should vectorise (prediction); None: same as ``numba``
    numba_vector: str | None = None

    def __post_init__(self):
        for column in ("cuda", "numba_vector"):
            if getattr(self, column) is None:
                object.__setattr__(self, column, self.numba)
        if self.partials is None:
            object.__setattr__(self, "partials", _no_derivative_rule(self.name))


def _no_derivative_rule(name):
    """Partials of a primitive without a rule: a clear error, never a silent zero."""
    def partials(args, out):
        from .errors import CompileError
        raise CompileError(f"no derivative rule for {name}(): it cannot be differentiated")
    return partials


def _lazy():
    from . import ir
    return ir


def _sign_partials(args, out):
    return (None,)


def _pow_partials(args, out):
    ir = _lazy()
    base, expo = args
    d_base = expo * ir.make("pow", base, expo - 1.0)
    d_expo = None if expo.is_const else out * ir.make("log", base)
    return (d_base, d_expo)


def _where_partials(args, out):
    ir = _lazy()
    cond = args[0]
    return (None, ir.make("where", cond, ir.ONE, ir.ZERO), ir.make("where", cond, ir.ZERO, ir.ONE))


def _abs_partials(args, out):
    return (_lazy().make("sign", args[0]),)


def _arccos_partials(args, out):
    ir = _lazy()
    x = args[0]
    return (-(ir.ONE / ir.make("sqrt", 1.0 - x * x)),)


def _compare(name, symbol, np_fn, sp_fn):
    return Primitive(name, 2, np_fn, lambda a, o: (None, None),
                     f"({{0}} {symbol} {{1}})", f"({{0}} {symbol} {{1}})", sp_fn,
                     differentiable=False)


def _unary(name, np_fn, partial, numba_name, jax_name, sp_fn):
    return Primitive(name, 1, np_fn, partial, f"{numba_name}({{0}})", f"{jax_name}({{0}})", sp_fn)


def _np_where(c, a, b):
    return np.where(c, a, b)


_TABLE = [
    Primitive("add", 2, np.add, lambda a, o: (_lazy().ONE, _lazy().ONE),
              "({0} + {1})", "({0} + {1})", lambda x, y: x + y),
    Primitive("sub", 2, np.subtract, lambda a, o: (_lazy().ONE, _lazy().const(-1.0)),
              "({0} - {1})", "({0} - {1})", lambda x, y: x - y),
    Primitive("mul", 2, np.multiply, lambda a, o: (a[1], a[0]),
              "({0} * {1})", "({0} * {1})", lambda x, y: x * y),
    Primitive("div", 2, np.divide, lambda a, o: (1.0 / a[1], -(o / a[1])),
              "({0} / {1})", "({0} / {1})", lambda x, y: x / y),
    Primitive("neg", 1, np.negative, lambda a, o: (_lazy().const(-1.0),),
              "(-{0})", "(-{0})", lambda x: -x),
    Primitive("pow", 2, np.power, _pow_partials,
              "({0} ** {1})", "({0} ** {1})", lambda x, y: x ** y),
    _unary("sqrt", np.sqrt, lambda a, o: (0.5 / o,), "math.sqrt", "jnp.sqrt", sp.sqrt),
    # in vectorised loops vexp (compiler/numba_math.py): libm's exp keeps LLVM from vectorising
    # any loop it is in; in scalar code libm's is faster (a table, not a 13-term polynomial)
    Primitive("exp", 1, np.exp, lambda a, o: (o,), "math.exp({0})", "jnp.exp({0})", sp.exp,
              numba_vector="vexp({0})"),
    _unary("log", np.log, lambda a, o: (1.0 / a[0],), "math.log", "jnp.log", sp.log),
    _unary("sin", np.sin, lambda a, o: (_lazy().make("cos", a[0]),), "math.sin", "jnp.sin", sp.sin),
    _unary("cos", np.cos, lambda a, o: (-_lazy().make("sin", a[0]),), "math.cos", "jnp.cos", sp.cos),
    _unary("arccos", np.arccos, _arccos_partials, "math.acos", "jnp.arccos", sp.acos),
    _unary("tanh", np.tanh, lambda a, o: (1.0 - o * o,), "math.tanh", "jnp.tanh", sp.tanh),
    # sympy writes derivatives of tanh with cosh/sinh, so they need IR forms too
    _unary("cosh", np.cosh, lambda a, o: (_lazy().make("sinh", a[0]),), "math.cosh", "jnp.cosh", sp.cosh),
    _unary("sinh", np.sinh, lambda a, o: (_lazy().make("cosh", a[0]),), "math.sinh", "jnp.sinh", sp.sinh),
    _unary("abs", np.abs, _abs_partials, "abs", "jnp.abs", sp.Abs),
    # np.sign is not available in CUDA device code: spell it with comparisons there
    Primitive("sign", 1, np.sign, _sign_partials, "np.sign({0})", "jnp.sign({0})", sp.sign,
              differentiable=False,
              cuda="(1.0 if {0} > 0.0 else (-1.0 if {0} < 0.0 else 0.0))"),
    Primitive("where", 3, _np_where, _where_partials,
              "({1} if {0} else {2})", "jnp.where({0}, {1}, {2})",
              lambda c, x, y: sp.Piecewise((x, c), (y, True))),
    _compare("lt", "<", np.less, sp.StrictLessThan),
    _compare("le", "<=", np.less_equal, sp.LessThan),
    _compare("gt", ">", np.greater, sp.StrictGreaterThan),
    _compare("ge", ">=", np.greater_equal, sp.GreaterThan),
    _compare("eq", "==", np.equal, sp.Eq),
    _compare("ne", "!=", np.not_equal, sp.Ne),
]

PRIMITIVES: dict[str, Primitive] = {p.name: p for p in _TABLE}

# Names a DSL body may call, mapped to the primitive they build.
DSL_FUNCTIONS = {
    "sqrt": "sqrt", "exp": "exp", "log": "log", "sin": "sin", "cos": "cos",
    "arccos": "arccos", "tanh": "tanh", "cosh": "cosh", "sinh": "sinh", "abs": "abs", "where": "where",
}

COMPARISONS = {"Lt": "lt", "LtE": "le", "Gt": "gt", "GtE": "ge", "Eq": "eq", "NotEq": "ne"}
