"""Spelling IR as source text, for Numba or JAX, from the rule table."""
from __future__ import annotations

from compiler.middle import ir
from compiler.errors import CompileError


def spell(expr, style: str, names: dict | None = None) -> str:
    """Source text of one expression; ``names`` renames variables."""
    names = names or {}
    memo = {}
    for node in ir.topological([expr]):
        if node.op == "const":
            memo[id(node)] = _number(node.value)
        elif node.op == "var":
            memo[id(node)] = names.get(node.value, node.value)
        else:
            args = [memo[id(a)] for a in node.args]
            if node.op == "pow" and node.args[1].is_const and node.args[1].value.is_integer():
                args[1] = str(int(node.args[1].value))  # integer powers compile to multiplications
            memo[id(node)] = _spelling(node.op, style).format(*args)
    return memo[id(expr)]


def _spelling(op: str, style: str) -> str:
    """The rule table's ``style`` column for ``op``; a CompileError naming both if it has none."""
    text = getattr(ir.primitive(op), style, None)
    if not isinstance(text, str) or not text:
        raise CompileError(f"primitive {op} has no {style} spelling")
    return text


def _number(value: float) -> str:
    text = repr(float(value))
    return f"({text})" if value < 0 else text


def program_lines(program, style: str, output_names, names=None, indent="    "):
    """``name = expr`` lines for a :class:`~compiler.middle.simplify.Program`."""
    lines = [f"{indent}{name} = {spell(e, style, names)}" for name, e in program.assignments]
    lines += [f"{indent}{out} = {spell(e, style, names)}" for out, e in zip(output_names, program.outputs)]
    return lines


def spell_term(expr, style: str = "numba", names: dict | None = None) -> str:
    """Source text of one expression spliced into a template (the structure's coefficients,
    energy term, ...): as :func:`spell`, with redundant outer parentheses dropped."""
    text = spell(expr, style, names)
    if text.startswith("(") and text.endswith(")") and _balanced(text[1:-1]):
        text = text[1:-1]
    return text


def _balanced(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0
