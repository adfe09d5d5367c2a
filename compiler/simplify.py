"""Simplification with sympy: IR → sympy → (simplify, CSE) → straight-line IR.

Two jobs.  First, common-subexpression elimination and algebraic clean-up so
generated code does no redundant work (op counts are reported before and
after).  Second, correctness: a derivative like d/ds of a Matérn kernel,
written through r = sqrt(s), carries a removable 0/0 at s = 0 that the naive
chain rule cannot evaluate; ``sympy.simplify`` cancels it, and
:func:`value_at` tells whether the result is finite there.
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from . import ir
from .primitives import PRIMITIVES

# Above this many operations sympy.simplify gets slow; CSE alone is used.
FULL_SIMPLIFY_LIMIT = 400


@dataclass
class Program:
    """Straight-line code: ``assignments`` then ``outputs`` (IR over earlier names)."""
    assignments: list   # [(name, Expr)]
    outputs: list       # [Expr]
    ops_before: int
    ops_after: int


def to_sympy(outputs, symbols: dict):
    """IR → sympy; ``symbols`` maps IR variable names to sympy symbols."""
    memo = {}
    for node in ir.topological(outputs):
        if node.op == "const":
            value = node.value
            # Decimal literals become exact rationals (0.1 -> 1/10) so cancellation is exact.
            memo[id(node)] = sp.Integer(int(value)) if value.is_integer() else sp.Rational(repr(value))
        elif node.op == "var":
            memo[id(node)] = symbols[node.value]
        else:
            memo[id(node)] = PRIMITIVES[node.op].sympy(*[memo[id(a)] for a in node.args])
    return [memo[id(o)] for o in outputs]


_FUNCS = {sp.exp: "exp", sp.log: "log", sp.sin: "sin", sp.cos: "cos", sp.acos: "arccos",
          sp.tanh: "tanh", sp.Abs: "abs", sp.sign: "sign"}
_RELATIONS = {sp.StrictLessThan: "lt", sp.LessThan: "le", sp.StrictGreaterThan: "gt",
              sp.GreaterThan: "ge", sp.Equality: "eq", sp.Unequality: "ne"}


def from_sympy(expr, names: dict):
    """sympy → IR; ``names`` maps sympy symbols to IR expressions."""
    if expr in names:
        return names[expr]
    if expr.is_Number or isinstance(expr, sp.NumberSymbol):
        return ir.const(float(expr))
    if isinstance(expr, sp.Add):
        terms = [from_sympy(a, names) for a in expr.args if not _is_negative(a)]
        negatives = [from_sympy(-a, names) for a in expr.args if _is_negative(a)]
        total = terms[0] if terms else ir.ZERO
        for t in terms[1:]:
            total = ir.make("add", total, t)
        for t in negatives:
            total = ir.make("sub", total, t)
        return total
    if isinstance(expr, sp.Mul):
        num, den = [], []
        for a in expr.args:
            base, e = a.as_base_exp()
            if e.is_Number and e < 0:
                den.append(from_sympy(base ** (-e), names))
            else:
                num.append(from_sympy(a, names))
        return ir.make("div", _product(num), _product(den)) if den else _product(num)
    if isinstance(expr, sp.Pow):
        base, e = expr.args
        if e == sp.Rational(1, 2):
            return ir.make("sqrt", from_sympy(base, names))
        if e.is_Number and e < 0:
            return ir.make("div", ir.ONE, from_sympy(base ** (-e), names))
        if isinstance(e, sp.Rational) and e.q == 2:
            return ir.make("pow", ir.make("sqrt", from_sympy(base, names)), ir.const(e.p))
        return ir.make("pow", from_sympy(base, names), from_sympy(e, names))
    for func, op in _FUNCS.items():
        if isinstance(expr, func):
            return ir.make(op, from_sympy(expr.args[0], names))
    for rel, op in _RELATIONS.items():
        if isinstance(expr, rel):
            return ir.make(op, from_sympy(expr.lhs, names), from_sympy(expr.rhs, names))
    if isinstance(expr, sp.Piecewise):
        *branches, (last, _) = expr.args
        out = from_sympy(last, names)
        for value, cond in reversed(branches):
            out = ir.make("where", from_sympy(cond, names), from_sympy(value, names), out)
        return out
    raise NotImplementedError(f"no IR form for sympy {type(expr).__name__}: {expr}")


def _is_negative(term):
    return term.could_extract_minus_sign()


def _product(factors):
    out = factors[0] if factors else ir.ONE
    for f in factors[1:]:
        out = ir.make("mul", out, f)
    return out


def symbols_for(names, positive=(), nonnegative=()):
    out = {}
    for name in names:
        if name in positive:
            out[name] = sp.Symbol(name, positive=True)
        elif name in nonnegative:
            out[name] = sp.Symbol(name, nonnegative=True)
        else:
            out[name] = sp.Symbol(name, real=True)
    return out


def optimise(outputs, symbols: dict, full=False, prefix="t", require_sympy=False) -> Program:
    """Simplify (``full``: sympy.simplify each output first) and CSE ``outputs``.

    Falls back to the IR's own sharing when sympy's result is not smaller,
    unless ``require_sympy`` (the simplified form is needed for finiteness).
    """
    before = ir.count_ops(outputs)
    exprs = to_sympy(outputs, symbols)
    if full:
        exprs = [sp.simplify(e) if sp.count_ops(e) <= FULL_SIMPLIFY_LIMIT else e for e in exprs]
    replacements, reduced = sp.cse(exprs, symbols=sp.numbered_symbols(prefix), order="none")
    names = {sym: ir.var(name) for name, sym in symbols.items()}
    assignments = []
    try:
        for sym, e in replacements:
            assignments.append((str(sym), from_sympy(e, names)))
            names[sym] = ir.var(str(sym))
        results = [from_sympy(e, names) for e in reduced]
    except NotImplementedError:
        if require_sympy:
            raise
        return _dag_program(outputs, before, prefix)
    after = sum(ir.count_ops([e]) for _, e in assignments) + ir.count_ops(results)
    if after > before and not require_sympy:
        return _dag_program(outputs, before, prefix)
    return Program(assignments, results, before, after)


def _dag_program(outputs, before, prefix):
    """Straight-line code from the IR DAG itself: one name per shared node."""
    uses = {}
    for node in ir.topological(outputs):
        for a in node.args:
            uses[id(a)] = uses.get(id(a), 0) + 1
    assignments, rename = [], {}
    for node in ir.topological(outputs):
        if node.op in ("const", "var"):
            continue
        node2 = ir.make(node.op, *[rename.get(id(a), a) for a in node.args])
        if uses.get(id(node), 0) > 1:
            name = f"{prefix}{len(assignments)}"
            assignments.append((name, node2))
            rename[id(node)] = ir.var(name)
        else:
            rename[id(node)] = node2
    return Program(assignments, [rename.get(id(o), o) for o in outputs], before, before)


def value_at(expr, symbols: dict, point: dict):
    """sympy value of an IR expression at a point (``zoo``/``nan`` when singular)."""
    (e,) = to_sympy([expr], symbols)
    return e.subs({symbols[k]: v for k, v in point.items()})
