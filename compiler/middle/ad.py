"""Automatic differentiation on the IR: forward (tangent) and reverse (adjoint).

Both modes read each primitive's local partials from the rule table and
return new IR, so they compose freely: ``grad(grad(f))`` is reverse over
reverse, ``jvp(grad(f))`` forward over reverse, to any order.  Zero
derivatives are never materialised: a node with no path to a seeded
variable has no tangent, and a partial of ``None`` is skipped.

``where(c, a, b)`` differentiates by selecting the branch's derivative,
``where(c, a', b')``: the unselected branch may be NaN (a cutoff such as
``(1 - x)**1.5`` beyond x = 1), and NaN must only ever be selected away, never
multiplied by 0.  Forward mode selects the tangents; reverse mode selects the
adjoints that leave a branch (see :func:`vjp`).
"""
from __future__ import annotations

from compiler.middle import ir
from compiler.middle.primitives import PRIMITIVES


def jvp(outputs, tangents: dict) -> list:
    """Forward mode: directional derivatives of ``outputs``.

    ``tangents`` maps variable names to the tangent (an Expr or number) of
    that variable; unnamed variables are held fixed.
    """
    dot = {}
    for node in ir.topological(outputs):
        if node.op == "var":
            if node.value in tangents:
                dot[id(node)] = ir.as_expr(tangents[node.value])
            continue
        if node.op == "const":
            continue
        if node.op == "where":
            cond, a, b = node.args
            if id(a) in dot or id(b) in dot:
                dot[id(node)] = ir.make("where", cond, dot.get(id(a), ir.ZERO), dot.get(id(b), ir.ZERO))
            continue
        terms = [id(a) in dot for a in node.args]
        if not any(terms):
            continue
        partials = PRIMITIVES[node.op].partials(node.args, node)
        total = ir.ZERO
        for arg, partial in zip(node.args, partials):
            if partial is not None and id(arg) in dot:
                total = total + partial * dot[id(arg)]
        if total is not ir.ZERO:
            dot[id(node)] = total
    return [dot.get(id(o), ir.ZERO) for o in outputs]


def vjp(output, wrt, cotangent=None) -> list:
    """Reverse mode: the gradient of one scalar ``output`` with respect to the
    variables named in ``wrt``, scaled by ``cotangent`` (default 1).

    Inside a where() branch, adjoints are computed unmasked (NaN where the branch is not
    taken) and selected once, where they leave the branch: each contribution to a node
    carries its guard, the (condition, branch taken) pairs on its way to the output."""
    order = ir.topological([output])
    parts = {id(output): [((), ir.ONE if cotangent is None else ir.as_expr(cotangent))]}
    by_name = {}
    for node in reversed(order):
        if id(node) not in parts or node.op == "const":
            continue
        guard, adjoint = _adjoint(parts.pop(id(node)))
        if node.op == "var":
            by_name[node.value] = _masked(adjoint, guard)
            continue
        if node.op == "where":
            cond, a, b = node.args
            for branch, taken in ((a, True), (b, False)):
                if branch.op != "const":
                    parts.setdefault(id(branch), []).append((guard + ((cond, taken),), adjoint))
            continue
        prim = PRIMITIVES[node.op]
        if not prim.differentiable:
            continue
        for arg, partial in zip(node.args, prim.partials(node.args, node)):
            if partial is not None and arg.op != "const":
                parts.setdefault(id(arg), []).append((guard, partial * adjoint))
    return [by_name.get(name, ir.ZERO) for name in wrt]


def _adjoint(parts):
    """(guard common to all contributions, their sum): each contribution is masked with the
    branches of its own guard that the others do not share."""
    common = tuple(g for g in parts[0][0] if all(g in guard for guard, _ in parts))
    total = None
    for guard, value in parts:
        value = _masked(value, tuple(g for g in guard if g not in common))
        total = value if total is None else total + value
    return common, total


def _masked(value, guard):
    """``value`` where every branch in ``guard`` is selected, else 0 (there the node does not
    reach the output: its true derivative contribution is 0)."""
    for cond, taken in guard:
        value = ir.make("where", cond, value, ir.ZERO) if taken else ir.make("where", cond, ir.ZERO, value)
    return value


def grad(output, wrt) -> list:
    return vjp(output, wrt)


def derivative(output, variables, modes=None):
    """The mixed partial derivative of ``output`` in the listed variables
    (repeats allowed, e.g. ``['s', 's']``).  ``modes`` chooses 'forward' or
    'reverse' per order (default alternating reverse, forward, ...)."""
    modes = modes or ["reverse" if k % 2 == 0 else "forward" for k in range(len(variables))]
    expr = output
    for name, mode in zip(variables, modes):
        if mode == "forward":
            (expr,) = jvp([expr], {name: 1.0})
        elif mode == "reverse":
            (expr,) = vjp(expr, [name])
        else:
            raise ValueError(f"mode must be 'forward' or 'reverse', not {mode!r}")
    return expr
