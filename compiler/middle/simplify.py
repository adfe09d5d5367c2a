"""Simplification with sympy: IR → sympy → (simplify, CSE) → straight-line IR.

Two jobs.  First, common-subexpression elimination and algebraic clean-up so
generated code does no redundant work (op counts are reported before and
after).  Second, correctness: a derivative like d/ds of a Matérn kernel,
written through r = sqrt(s), carries a removable 0/0 at s = 0 that the naive
chain rule cannot evaluate; ``sympy.simplify`` cancels it, and
:func:`value_at` tells whether the result is finite there.
"""
from __future__ import annotations

import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import sympy as sp

from compiler.middle import ir
from compiler.errors import CompileError
from compiler.middle.primitives import PRIMITIVES, SYMPY_CLASSES

# sympy's algorithms walk expressions as trees (a shared subexpression once per use), so
# sizes are counted that way.  Above FULL_SIMPLIFY_LIMIT operations sympy.simplify gets
# slow and CSE alone is used; above SYMPY_TREE_LIMIT sympy is not used at all (its
# constructors alone can take minutes) and the hash-consed IR DAG, already free of
# common subexpressions, is emitted as it is.
FULL_SIMPLIFY_LIMIT = 400
SYMPY_TREE_LIMIT = 20_000
# Wall-clock budgets (main thread only: they need SIGALRM): all sympy.simplify calls of one
# optimise() together, where running out only costs a larger program; and each step that
# cannot be skipped (building sympy's form, CSE, a limit at d = dp), where it is an error.
SYMPY_SECONDS = 10.0
SYMPY_STEP_SECONDS = 30.0


@dataclass
class Program:
    """Straight-line code: ``assignments`` then ``outputs`` (IR over earlier names)."""
    assignments: list   # [(name, Expr)]
    outputs: list       # [Expr]
    ops_before: int
    ops_after: int
    notes: list = field(default_factory=list)   # why simplification was skipped, if it was


class SympyBudgetExceeded(Exception):
    """sympy did not finish within its time budget."""


@contextmanager
def sympy_budget(seconds=None):
    """Interrupt the enclosed sympy work after ``seconds`` (default SYMPY_STEP_SECONDS; by
    SIGALRM: where that is not available, outside the main thread or with a timer already
    set, nothing is bounded here and only the size limits apply)."""
    seconds = SYMPY_STEP_SECONDS if seconds is None else seconds
    usable = (hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
              and signal.getitimer(signal.ITIMER_REAL)[0] == 0)
    if not usable:
        yield
        return

    def expire(signum, frame):
        if _importing(frame):  # sympy imports lazily: a half-run import would break sympy for good
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            return
        raise SympyBudgetExceeded(f"sympy took longer than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _importing(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def tree_ops(outputs) -> int:
    """Operations in ``outputs`` written out as trees (linear time: memoised per node)."""
    size = {}
    for node in ir.topological(outputs):
        own = 0 if node.op in ("const", "var") else 1
        size[id(node)] = own + sum(size[id(a)] for a in node.args)
    return sum(size[id(o)] for o in outputs)


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


class NoIRForm(CompileError):
    """A sympy expression with no IR primitive (e.g. a function sympy introduced)."""


def from_sympy(expr, names: dict, memo: dict | None = None):
    """sympy → IR; ``names`` maps sympy symbols to IR expressions.

    Memoised per sympy subexpression, so the time is linear in the number of
    distinct subexpressions even where sympy shares them many times."""
    memo = {} if memo is None else memo
    if expr in names:
        return names[expr]
    if expr not in memo:
        memo[expr] = _from_sympy_node(expr, lambda e: from_sympy(e, names, memo))
    return memo[expr]


def _from_sympy_node(expr, convert):
    if expr.is_Number or isinstance(expr, sp.NumberSymbol):
        value = float(expr)  # real: zoo and I are not numbers here and end below
        if not math.isfinite(value):
            raise NoIRForm(f"the derivatives contain the non-finite constant {expr}")
        return ir.const(value)
    if isinstance(expr, sp.Add):
        terms = [convert(a) for a in expr.args if not _is_negative(a)]
        negatives = [convert(-a) for a in expr.args if _is_negative(a)]
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
                den.append(convert(base ** (-e)))
            else:
                num.append(convert(a))
        return ir.make("div", _product(num), _product(den)) if den else _product(num)
    if isinstance(expr, sp.Pow):
        base, e = expr.args
        if e == sp.Rational(1, 2):
            return ir.make("sqrt", convert(base))
        if e.is_Number and e < 0:
            return ir.make("div", ir.ONE, convert(base ** (-e)))
        if isinstance(e, sp.Rational) and e.q == 2:
            return ir.make("pow", ir.make("sqrt", convert(base)), ir.const(e.p))
        return ir.make("pow", convert(base), convert(e))
    for cls, op in SYMPY_CLASSES.items():  # functions and relations, from the rule table
        if isinstance(expr, cls):
            return ir.make(op, *[convert(a) for a in expr.args])
    if isinstance(expr, sp.Piecewise):
        # straight back to IR selects: never through sympy's set logic (as_set)
        *branches, (last, _) = expr.args
        out = convert(last)
        for value, cond in reversed(branches):
            out = _select(cond, convert(value), out, convert)
        return out
    if isinstance(expr, (sp.Max, sp.Min)):
        out = convert(expr.args[0])
        for a in expr.args[1:]:
            b = convert(a)
            out = ir.make("where", ir.make("gt" if isinstance(expr, sp.Max) else "lt", out, b), out, b)
        return out
    raise NoIRForm(f"no IR form for sympy {type(expr).__name__} in {expr}")


def _select(cond, a, b, convert):
    """IR for ``a if cond else b`` with a sympy condition (and/or/not become nested selects)."""
    if cond is sp.true:
        return a
    if cond is sp.false:
        return b
    if isinstance(cond, sp.And):
        first, *rest = cond.args
        return ir.make("where", convert(first), _select(sp.And(*rest), a, b, convert), b)
    if isinstance(cond, sp.Or):
        first, *rest = cond.args
        return ir.make("where", convert(first), a, _select(sp.Or(*rest), a, b, convert))
    if isinstance(cond, sp.Not):
        return _select(cond.args[0], b, a, convert)
    return ir.make("where", convert(cond), a, b)


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


def optimise(outputs, symbols: dict, full=False, prefix="t", require_sympy=False, origin="") -> Program:
    """Simplify (``full``: sympy.simplify each output first) and CSE ``outputs``.

    Falls back to the IR's own sharing when sympy's result is not smaller, too
    large or too slow to get, unless ``require_sympy`` (the sympy form is needed
    for the finiteness check at d = dp): then such a case is a CompileError
    (``origin``, e.g. 'file.py:12', starts its message).  ``Program.notes`` say
    what was skipped and why.
    """
    before = ir.count_ops(outputs)
    size = tree_ops(outputs)
    if size > SYMPY_TREE_LIMIT:
        return _fallback(outputs, before, prefix, f"expression too large ({size} ops)", require_sympy, origin)
    try:
        with sympy_budget():
            exprs = to_sympy(outputs, symbols)
    except SympyBudgetExceeded:
        return _fallback(outputs, before, prefix, f"sympy could not build the expression in {SYMPY_STEP_SECONDS:g} s",
                         require_sympy, origin)
    notes = []
    simplified = _simplified_all(exprs, notes) if full else exprs
    try:
        try:
            program = _cse_program(simplified, symbols, prefix)
        except NoIRForm:
            if simplified is exprs:
                raise
            notes.append("the simplified form has no IR form; CSE of the unsimplified form used")
            program = _cse_program(exprs, symbols, prefix)
    except NoIRForm as exc:
        return _fallback(outputs, before, prefix, str(exc), require_sympy, origin)
    if program is None:
        return _fallback(outputs, before, prefix, f"sympy's CSE took longer than {SYMPY_STEP_SECONDS:g} s",
                         require_sympy, origin)
    program.ops_before, program.notes = before, list(dict.fromkeys(notes))
    if program.ops_after > before and not require_sympy:
        return _dag_program(outputs, before, prefix, notes)
    return program


def simplified(expr: ir.Expr, symbols: dict) -> ir.Expr:
    """``expr`` simplified by sympy within the budgets, back as IR (``expr`` itself where sympy
    cannot): for derivatives taken step by step, each from a simplified parent."""
    try:
        with sympy_budget():
            (form,) = to_sympy([expr], symbols)
    except SympyBudgetExceeded:
        return expr
    result = _simplified(form, [], SYMPY_SECONDS)
    if result is form:
        return expr
    try:
        return from_sympy(result, {sym: ir.var(name) for name, sym in symbols.items()})
    except NoIRForm:
        return expr


def _simplified_all(exprs, notes):
    """sympy.simplify of each expression, all within one time budget."""
    deadline = time.monotonic() + SYMPY_SECONDS
    return [_simplified(e, notes, deadline - time.monotonic()) for e in exprs]


def _simplified(expr, notes, seconds):
    """sympy.simplify within the size and time budgets; ``expr`` itself where it is not."""
    ops = sp.count_ops(expr)
    if ops > FULL_SIMPLIFY_LIMIT:
        notes.append(f"simplification skipped: expression too large ({ops} ops); CSE only")
        return expr
    stopped = f"simplification stopped after {SYMPY_SECONDS:g} s; CSE only"
    if seconds <= 0:
        notes.append(stopped)
        return expr
    try:
        with sympy_budget(seconds):
            return sp.simplify(expr)
    except SympyBudgetExceeded:
        notes.append(stopped)
    except Exception as exc:  # sympy's own failures (e.g. TypeError from ceiling) must not escape
        notes.append(f"simplification failed in sympy ({type(exc).__name__}); CSE only")
    return expr


def _cse_program(exprs, symbols, prefix):
    """CSE'd straight-line IR; None when sympy's CSE runs out of time (NoIRForm
    when the result has no IR form)."""
    try:
        with sympy_budget():
            replacements, reduced = sp.cse(exprs, symbols=sp.numbered_symbols(prefix), order="none")
    except SympyBudgetExceeded:
        return None
    names = {sym: ir.var(name) for name, sym in symbols.items()}
    memo, assignments = {}, []
    for sym, e in replacements:
        assignments.append((str(sym), from_sympy(e, names, memo)))
        names[sym] = ir.var(str(sym))
    results = [from_sympy(e, names, memo) for e in reduced]
    after = sum(ir.count_ops([e]) for _, e in assignments) + ir.count_ops(results)
    return Program(assignments, results, 0, after)


def _fallback(outputs, before, prefix, reason, require_sympy, origin):
    """The IR DAG as straight-line code, or a CompileError when sympy's form is required."""
    if require_sympy:
        where = f"{origin}: " if origin else ""
        raise CompileError(f"{where}cannot analyse the kernel at d = dp symbolically: {reason} -- "
                           "write the kernel with fewer nested operations or supported functions")
    return _dag_program(outputs, before, prefix, [f"simplification skipped: {reason}; CSE only"])


def _dag_program(outputs, before, prefix, notes=()):
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
    return Program(assignments, [rename.get(id(o), o) for o in outputs], before, before, list(notes))


def limit_from_above(expr, symbol, point=0):
    """``lim expr`` as ``symbol`` -> ``point``+, within the time budget; None when sympy
    cannot tell.  Piecewise branches are chosen first by where the point lies: sympy's
    limit of a Piecewise goes through set logic (as_set) that fails for several variables."""
    try:
        with sympy_budget():
            expr = expr.replace(lambda e: isinstance(e, sp.Piecewise),
                                lambda e: _branch_near(e, symbol, point))
            return sp.limit(expr, symbol, point, "+")
    except Exception:  # sympy's own failures (NotImplementedError, ValueError, ...) and the budget
        return None


def _branch_near(piecewise, symbol, point):
    """The branch of ``piecewise`` taken just above ``point``, or ``piecewise`` if unclear."""
    for value, cond in piecewise.args:
        holds = _holds_near(cond, symbol, point)
        if holds is None:
            return piecewise
        if holds:
            return value
    return piecewise


def _holds_near(cond, symbol, point):
    """Whether ``cond`` holds on a neighbourhood of ``point`` (None: cannot tell)."""
    if cond in (sp.true, sp.false):
        return bool(cond)
    if isinstance(cond, (sp.And, sp.Or)):
        parts = [_holds_near(c, symbol, point) for c in cond.args]
        if None in parts:
            return None
        return all(parts) if isinstance(cond, sp.And) else any(parts)
    if isinstance(cond, sp.core.relational.Relational):
        gap = (cond.lhs - cond.rhs).subs(symbol, point)
        at_point = cond.subs(symbol, point)
        # strictly inside one side (gap != 0), so the same side holds nearby
        if gap.is_zero is False and at_point in (sp.true, sp.false):
            return bool(at_point)
    return None


def value_at(expr, symbols: dict, point: dict):
    """sympy value of an IR expression at a point (``zoo``/``nan`` when singular)."""
    (e,) = to_sympy([expr], symbols)
    return e.subs({symbols[k]: v for k, v in point.items()})
