"""Automatic differentiation on the IR: forward (tangent) and reverse (adjoint).

Both modes read each primitive's local partials from the rule table and
return new IR, so they compose freely: ``grad(grad(f))`` is reverse over
reverse, ``jvp(grad(f))`` forward over reverse, to any order.  Zero
derivatives are never materialised: a node with no path to a seeded
variable has no tangent, and a partial of ``None`` is skipped.
"""
from __future__ import annotations

from . import ir
from .primitives import PRIMITIVES


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
    variables named in ``wrt``, scaled by ``cotangent`` (default 1)."""
    order = ir.topological([output])
    bar = {id(output): ir.ONE if cotangent is None else ir.as_expr(cotangent)}
    for node in reversed(order):
        adjoint = bar.get(id(node))
        if adjoint is None or node.op in ("const", "var"):
            continue
        prim = PRIMITIVES[node.op]
        if not prim.differentiable:
            continue
        for arg, partial in zip(node.args, prim.partials(node.args, node)):
            if partial is None or arg.op == "const":
                continue
            contribution = partial * adjoint
            bar[id(arg)] = bar[id(arg)] + contribution if id(arg) in bar else contribution
    by_name = {n.value: bar.get(id(n), ir.ZERO) for n in order if n.op == "var"}
    return [by_name.get(name, ir.ZERO) for name in wrt]


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
