"""Source transformation: a DSL function's Python source → IR.

The parser reads the function with ``inspect``/``ast`` (it never runs it) and
walks straight-line code: assignments, one final ``return``, arithmetic,
comparisons inside ``where``, and calls of DSL functions.  Positions are
3-vectors, scalarised into three IR variables each (``ri_0``, ``ri_1``,
``ri_2``); a kernel's descriptor vectors stay symbolic and may appear only
inside the reductions that define the kernel's structure: the squared
distance ``s = |d - dp|^2`` and the dot product ``t = d . dp``.

Anything else is rejected with a :class:`DSLError` that names file, line,
column, the construct, and what to write instead.
"""
from __future__ import annotations

import ast
import inspect
import math
import textwrap
from dataclasses import dataclass

from compiler.middle import ir
from compiler.dsl import DSLFunction, StoredSource
from compiler.errors import DSLError
from compiler.middle.primitives import COMPARISONS, DSL_FUNCTIONS
from compiler.front.records import DescriptorIR, KernelIR, S, SourceInfo, T, user_var

VECTOR_HELPERS = ("norm", "dot", "sqdist")
ALLOWED_CALLS = sorted(DSL_FUNCTIONS) + list(VECTOR_HELPERS)
class Vec3(tuple):
    """A 3-vector of scalar IR expressions (descriptor bodies)."""


@dataclass(frozen=True)
class KernelVector:
    """A symbolic descriptor-space vector in a kernel body."""
    kind: str  # 'd', 'dp' or 'delta' (= ±(d - dp): only its norm is ever taken)


def _read_function(dsl: DSLFunction):
    fn = dsl.fn
    if dsl.stored:  # read from a model file: its text, never a live function
        lines, first_line = dsl.stored.source.splitlines(keepends=True), dsl.stored.first_line
        filename = dsl.filename
    else:
        try:
            lines, first_line = inspect.getsourcelines(fn)
        except (OSError, TypeError) as exc:
            raise DSLError(f"cannot read the source of {fn.__name__!r} ({exc})",
                           getattr(fn, "__code__", None) and fn.__code__.co_filename or "<unknown>",
                           0, 0, "define DSL functions in a .py file, not interactively") from None
        filename = inspect.getsourcefile(fn) or "<unknown>"
    source = textwrap.dedent("".join(lines))
    indent = len(lines[0]) - len(lines[0].lstrip())
    tree = ast.parse(source)
    fdef = next(n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))
    info = SourceInfo(dsl.name, filename, first_line, lines)
    return fdef, info, indent


class _BodyParser:
    """Walks one function body; subclasses decide what vectors mean."""

    def __init__(self, fdef, info: SourceInfo, indent: int, constants: dict):
        self.fdef, self.info, self.indent = fdef, info, indent
        self.constants = constants
        self.env: dict = {}

    # -- errors ---------------------------------------------------------
    def error(self, node, message, hint=""):
        line = self.info.first_line + getattr(node, "lineno", 1) - 1
        col = getattr(node, "col_offset", 0) + self.indent + 1
        raise DSLError(message, self.info.filename, line, col, hint)

    # -- statements -----------------------------------------------------
    def run(self):
        body = list(self.fdef.body)
        if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                and isinstance(body[0].value.value, str):
            body = body[1:]  # docstring
        if isinstance(self.fdef, ast.AsyncFunctionDef):
            self.error(self.fdef, "async functions are not DSL functions", "use a plain def")
        for stmt in body:
            if isinstance(stmt, ast.Return):
                if stmt is not body[-1]:
                    self.error(body[body.index(stmt) + 1], "code after return is never run",
                               "end the body with its single return statement")
                if stmt.value is None:
                    self.error(stmt, "return without a value", "return the feature (or kernel) value")
                return self.scalar(self.expr(stmt.value), stmt.value, "the returned value"), \
                    self.info.first_line + stmt.lineno - 1
            self.statement(stmt)
        self.error(self.fdef, f"function {self.info.name!r} has no return statement",
                   "end the body with `return <expression>`")

    def statement(self, stmt):
        if isinstance(stmt, ast.Assign):
            if len(stmt.targets) != 1 or not isinstance(stmt.targets[0], ast.Name):
                self.error(stmt, "only assignments to a single name are supported (no unpacking, "
                                 "indexing or attributes)", "write one `name = expression` per line")
            self.env[stmt.targets[0].id] = self.expr(stmt.value)
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            self.env[stmt.target.id] = self.expr(stmt.value)
        elif isinstance(stmt, ast.AugAssign):
            if not isinstance(stmt.target, ast.Name):
                self.error(stmt, "augmented assignment to something other than a name",
                           "write `name = name + value`")
            current = self.lookup(stmt.target.id, stmt.target)
            self.env[stmt.target.id] = self.binop(stmt.op, current, self.expr(stmt.value), stmt)
        elif isinstance(stmt, (ast.For, ast.AsyncFor, ast.While)):
            self.error(stmt, "loops are not allowed in a DSL body",
                       "write the body for one pair of atoms; sums over atoms come from the index "
                       "space (over=neighbours), sums over features from the kernel's reductions")
        elif isinstance(stmt, ast.If):
            self.error(stmt, "if statements are not allowed in a DSL body",
                       "use where(condition, a, b) or the expression `a if condition else b`")
        elif isinstance(stmt, (ast.Global, ast.Nonlocal)):
            self.error(stmt, f"{type(stmt).__name__.lower()} statements are not allowed: a DSL "
                             "function cannot change module state", "return a value instead")
        elif isinstance(stmt, (ast.FunctionDef, ast.Lambda, ast.ClassDef)):
            self.error(stmt, "nested definitions are not allowed in a DSL body",
                       "define a separate module-level DSL function or inline the expression")
        elif isinstance(stmt, ast.Pass):
            pass
        elif isinstance(stmt, ast.Expr):
            self.error(stmt, "an expression statement has no effect (calls cannot mutate anything)",
                       "assign it to a name or return it")
        else:
            self.error(stmt, f"{type(stmt).__name__} statements are not supported in a DSL body",
                       "use assignments and one final return")

    # -- expressions ----------------------------------------------------
    def expr(self, node):
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                self.error(node, f"constant {node.value!r} is not a number", "use int or float literals")
            return self.finite_constant(node.value, node, "constant")
        if isinstance(node, ast.Name):
            return self.lookup(node.id, node)
        if isinstance(node, ast.BinOp):
            return self.binop(node.op, self.expr(node.left), self.expr(node.right), node)
        if isinstance(node, ast.UnaryOp):
            operand = self.expr(node.operand)
            if isinstance(node.op, ast.USub):
                return self.negate(operand, node)
            if isinstance(node.op, ast.UAdd):
                return operand
            self.error(node, f"unary operator {type(node.op).__name__} is not supported",
                       "use arithmetic, comparisons inside where(), and DSL functions")
        if isinstance(node, ast.Call):
            return self.call(node)
        if isinstance(node, ast.IfExp):
            cond = self.condition(node.test)
            return self.where(cond, self.expr(node.body), self.expr(node.orelse), node)
        if isinstance(node, ast.Compare):
            self.error(node, "a comparison can only be the condition of where() or of `a if c else b`",
                       "write where(x < y, a, b)")
        if isinstance(node, ast.Attribute):
            self.error(node, "attribute access (e.g. np.sqrt, x.y) is not allowed in a DSL body",
                       "call DSL functions by bare name: from compiler.dsl import sqrt, exp, norm, ...")
        if isinstance(node, ast.Subscript):
            self.error(node, "indexing is not allowed in a DSL body",
                       "positions are whole 3-vectors: use norm(ri - rj) and dot(a, b)")
        if isinstance(node, ast.BoolOp):
            self.error(node, "and/or are not supported", "nest where() calls instead")
        if isinstance(node, (ast.Lambda, ast.ListComp, ast.GeneratorExp, ast.SetComp, ast.DictComp)):
            self.error(node, f"{type(node).__name__} is not allowed in a DSL body",
                       "write straight-line arithmetic")
        self.error(node, f"{type(node).__name__} expressions are not supported in a DSL body",
                   "use numbers, names, arithmetic (+ - * / **) and DSL functions")

    def lookup(self, name, node):
        if name in self.env:
            return self.env[name]
        if name in self.constants:
            return self.finite_constant(self.constants[name], node, f"module-level number {name!r} =")
        self.error(node, f"name {name!r} is not defined in the DSL body",
                   "use an argument, a local assigned above, a module-level number, or a DSL "
                   f"function ({', '.join(ALLOWED_CALLS)})")

    def finite_constant(self, value, node, what):
        """A finite float64 constant; 1e400, 10**400 (as a literal) and inf are DSL errors."""
        number = _finite_float(value)
        if number is None:
            self.error(node, f"{what} {_short(value)} is not a finite float64 number",
                       "use a finite number (|x| < 1.8e308)")
        return ir.const(number)

    def folded(self, value, node):
        """``value``, checked finite where it is an operation on constants: 1 / 0, 10 ** 400,
        0.0 ** -1, log(0) are errors here rather than inf or NaN in the generated code."""
        if isinstance(value, ir.Expr) and value.args and all(a.is_const for a in value.args):
            (number,) = ir.evaluate([value], {})
            if _finite_float(number) is None:
                self.error(node, f"the constant expression {ast.unparse(node)} is not finite ({number})",
                           "fix the constant (e.g. a division by zero or an overflow)")
        return value

    def condition(self, node):
        if isinstance(node, ast.BoolOp):
            self.error(node, "and/or are not supported in a condition", "nest where() calls instead")
        if not isinstance(node, ast.Compare):
            self.error(node, "the condition must be a comparison like r < rc", "write where(r < rc, a, b)")
        if len(node.ops) != 1:
            self.error(node, "chained comparisons (a < b < c) are not supported", "nest where() calls")
        op = COMPARISONS.get(type(node.ops[0]).__name__)
        if op is None:
            self.error(node, f"comparison {type(node.ops[0]).__name__} is not supported", "use < <= > >= == !=")
        left = self.scalar(self.expr(node.left), node.left, "a comparison operand")
        right = self.scalar(self.expr(node.comparators[0]), node.comparators[0], "a comparison operand")
        return ir.make(op, left, right)

    def where(self, cond, a, b, node):
        a = self.scalar(a, node, "a branch of where()")
        b = self.scalar(b, node, "a branch of where()")
        return ir.make("where", cond, a, b)

    def call(self, node):
        if not isinstance(node.func, ast.Name):
            self.error(node, "only DSL functions called by bare name are allowed",
                       "write sqrt(x), not np.sqrt(x) or math.sqrt(x)")
        name = node.func.id
        if name == self.info.name:
            self.error(node, f"recursive call to {name!r}", "DSL bodies are straight-line code")
        if node.keywords:
            self.error(node, f"keyword arguments in a call to {name!r} are not supported", "pass them by position")
        if name in self.env:
            self.error(node, f"{name!r} is a local value, not a function", "rename the local")
        if name not in DSL_FUNCTIONS and name not in VECTOR_HELPERS:
            self.error(node, f"unknown function {name!r}", f"allowed: {', '.join(ALLOWED_CALLS)}")
        if name == "where":
            self.arity(node, 3)
            return self.where(self.condition(node.args[0]), self.expr(node.args[1]),
                              self.expr(node.args[2]), node)
        args = [self.expr(a) for a in node.args]
        if name in VECTOR_HELPERS:
            self.arity(node, 1 if name == "norm" else 2)
            return self.vector_helper(name, args, node)
        self.arity(node, 1)
        return self.folded(ir.make(DSL_FUNCTIONS[name], self.scalar(args[0], node, f"the argument of {name}()")),
                           node)

    def arity(self, node, n):
        if len(node.args) != n:
            self.error(node, f"{node.func.id}() takes {n} argument{'s' if n > 1 else ''}, "
                             f"got {len(node.args)}", "")

    def scalar(self, value, node, what):
        if isinstance(value, ir.Expr):
            if value.op in COMPARISONS.values():
                self.error(node, f"a comparison cannot be used as {what}", "use it as the condition of where()")
            return value
        self.error(node, f"{what} must be a scalar, but it is a vector",
                   "reduce vectors with norm(v), dot(a, b) or sqdist(a, b)")

    def binop(self, op, a, b, node):
        raise NotImplementedError

    def negate(self, a, node):
        raise NotImplementedError

    def vector_helper(self, name, args, node):
        raise NotImplementedError


_SCALAR_OPS = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div", ast.Pow: "pow"}


def _scalar_binop(parser, op, a, b, node):
    kind = _SCALAR_OPS.get(type(op))
    if kind is None:
        parser.error(node, f"operator {type(op).__name__} is not supported", "use + - * / **")
    return parser.folded(ir.make(kind, parser.scalar(a, node, "an operand"), parser.scalar(b, node, "an operand")),
                         node)


def _finite_float(value):
    """``value`` as a finite float, or None (inf, nan, or an int too large for float64)."""
    try:
        number = float(value)
    except (OverflowError, TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _as_float(number):
    """float(number), with ints beyond float64 as ±inf (reported where a body reads them)."""
    try:
        return float(number)
    except OverflowError:
        return math.inf if number > 0 else -math.inf


def _short(value, limit=40):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


class _DescriptorParser(_BodyParser):
    def binop(self, op, a, b, node):
        va, vb = isinstance(a, Vec3), isinstance(b, Vec3)
        if not va and not vb:
            return _scalar_binop(self, op, a, b, node)
        if va and vb and isinstance(op, (ast.Add, ast.Sub)):
            kind = "add" if isinstance(op, ast.Add) else "sub"
            return Vec3(ir.make(kind, x, y) for x, y in zip(a, b))
        if isinstance(op, ast.Mult) and va != vb:
            v, c = (a, b) if va else (b, a)
            c = self.scalar(c, node, "a vector's scale factor")
            return Vec3(ir.make("mul", x, c) for x in v)
        if isinstance(op, ast.Div) and va and not vb:
            return Vec3(ir.make("div", x, self.scalar(b, node, "a divisor")) for x in a)
        self.error(node, f"operator {type(op).__name__} is not defined between these vectors/scalars",
                   "vectors support +, -, scaling by a scalar, norm(v), dot(a, b), sqdist(a, b)")

    def negate(self, a, node):
        return Vec3(ir.make("neg", x) for x in a) if isinstance(a, Vec3) else ir.make("neg", a)

    def vector_helper(self, name, args, node):
        if not all(isinstance(a, Vec3) for a in args):
            self.error(node, f"{name}() takes 3-vectors (atom positions or their differences)",
                       "for scalars use abs(x) or arithmetic")
        if name == "norm":
            return ir.make("sqrt", _dot3(args[0], args[0]))
        if name == "dot":
            return _dot3(args[0], args[1])
        diff = Vec3(ir.make("sub", x, y) for x, y in zip(args[0], args[1]))
        return _dot3(diff, diff)


def _dot3(a, b):
    total = ir.make("mul", a[0], b[0])
    for x, y in zip(a[1:], b[1:]):
        total = ir.make("add", total, ir.make("mul", x, y))
    return total


class _KernelParser(_BodyParser):
    def binop(self, op, a, b, node):
        ka, kb = isinstance(a, KernelVector), isinstance(b, KernelVector)
        if not ka and not kb:
            if isinstance(op, ast.Pow):
                self.numeric_exponent_of_distance(a, b, node)
            return _scalar_binop(self, op, a, b, node)
        if ka and kb and isinstance(op, ast.Sub) and {a.kind, b.kind} == {"d", "dp"}:
            return KernelVector("delta")
        self.error(node, "descriptor vectors may only be combined as d - dp inside a reduction",
                   "a kernel depends on d and dp only through norm(d - dp), sqdist(d, dp) or dot(d, dp)")

    def numeric_exponent_of_distance(self, base, exponent, node):
        """x ** p with x depending on |d - dp| needs a number p: whether the kernel is twice
        differentiable at d = dp depends on p's value, which the compiler must check."""
        if isinstance(exponent, ir.Expr) and not exponent.is_const and isinstance(base, ir.Expr) \
                and S in ir.free_variables([base]):
            self.error(node, f"the exponent of {ast.unparse(node.left)} must be a number: the base "
                             "depends on |d - dp|", "write e.g. norm(d - dp) ** 1.5, not ** p with a "
                             "hyperparameter p (differentiability at d = dp depends on its value)")

    def negate(self, a, node):
        if isinstance(a, KernelVector):
            if a.kind == "delta":
                return a
            self.error(node, "a descriptor vector can only appear inside a reduction",
                       "use norm(d - dp), sqdist(d, dp) or dot(d, dp)")
        return ir.make("neg", a)

    def vector_helper(self, name, args, node):
        kinds = tuple(a.kind if isinstance(a, KernelVector) else None for a in args)
        if name == "norm" and kinds == ("delta",):
            return ir.make("sqrt", ir.var(S))
        if name == "sqdist" and set(kinds) == {"d", "dp"}:
            return ir.var(S)
        if name == "dot" and kinds == ("delta", "delta"):
            return ir.var(S)
        if name == "dot" and set(kinds) == {"d", "dp"}:
            return ir.var(T)
        self.error(node, f"unsupported reduction {name}({', '.join(str(k) for k in kinds)})",
                   "a kernel depends on d and dp only through norm(d - dp), sqdist(d, dp) "
                   "or dot(d, dp)")


def module_constants(fn):
    """Numbers the body may read from its module or closure (for a function read from a
    model file: the numbers stored with it)."""
    if isinstance(fn, DSLFunction):
        fn = fn.fn
    if isinstance(fn, StoredSource):
        return {"pi": math.pi, **fn.constants}
    try:
        closure = inspect.getclosurevars(fn)
        names = {**closure.globals, **closure.nonlocals}
    except (TypeError, ValueError):
        names = dict(getattr(fn, "__globals__", {}))
    # an int beyond float64 becomes ±inf, which the parser reports where the body reads it
    consts = {k: _as_float(v) for k, v in names.items()
              if isinstance(v, (int, float)) and not isinstance(v, bool)}
    consts.setdefault("pi", math.pi)
    return consts


def _arguments(fdef, parser):
    a = fdef.args
    if a.vararg or a.kwarg or a.kwonlyargs or a.posonlyargs:
        parser.error(fdef, "*args, **kwargs, keyword-only and positional-only arguments are not supported",
                     "list every argument by name")
    return [arg.arg for arg in a.args], a.defaults


def parse_descriptor(dsl: DSLFunction) -> DescriptorIR:
    if dsl.kind != "descriptor":
        raise TypeError(f"{dsl.name} is a {dsl.kind}, not a descriptor")
    fdef, info, indent = _read_function(dsl)
    parser = _DescriptorParser(fdef, info, indent, module_constants(dsl.fn))
    names, defaults = _arguments(fdef, parser)
    if defaults:
        parser.error(fdef, "descriptor arguments cannot have defaults",
                     "give parameter values in @descriptor(params={...})")
    space = dsl.over  # which atoms the term involves: their positions and atomic numbers
    if len(names) < space.arity:
        parser.error(fdef, f"a descriptor takes the positions of the {space.atom_count} it involves first, "
                           f"got {len(names)} argument(s)",
                     f"write def my_descriptor({', '.join(space.position_args)}, ...)")
    for atom, name in zip(space.atoms, names[:space.arity]):
        parser.env[name] = Vec3(ir.var(v) for v in space.position_names(atom))
    z_args, param_names = [], []
    for name in names[space.arity:]:
        if name in space.z_vars:
            parser.env[name] = ir.var(name)
            z_args.append(name)
        elif name in dsl.params:
            parser.env[name] = ir.var(user_var(name))
            param_names.append(name)
        else:
            parser.error(fdef, f"argument {name!r} has no value",
                         f"atomic numbers are called {' and '.join(space.z_vars)}; give parameters in "
                         "@descriptor(params={...})")
    unused = set(dsl.params) - set(param_names)
    if unused:
        parser.error(fdef, f"params {sorted(unused)} are not arguments of {info.name}",
                     "add them to the signature or remove them from params")
    body, line = parser.run()
    return DescriptorIR(info, dsl.over, tuple(z_args), tuple(param_names), body, line, dsl.layout)


def parse_kernel(dsl: DSLFunction) -> KernelIR:
    if dsl.kind != "kernel":
        raise TypeError(f"{dsl.name} is a {dsl.kind}, not a kernel")
    fdef, info, indent = _read_function(dsl)
    parser = _KernelParser(fdef, info, indent, module_constants(dsl.fn))
    names, defaults = _arguments(fdef, parser)
    if len(names) < 2:
        parser.error(fdef, "a kernel takes two descriptor vectors first", "write def my_kernel(d, dp, sigma)")
    parser.env[names[0]] = KernelVector("d")
    parser.env[names[1]] = KernelVector("dp")
    hyper = names[2:]
    for name in hyper:  # any name: user names are prefixed in the IR, so `s` never meets the reduction s
        parser.env[name] = ir.var(user_var(name))
    hyper_defaults = {}
    for name, default in zip(names[len(names) - len(defaults):], defaults):
        if name not in hyper or not (isinstance(default, ast.Constant) and isinstance(default.value, (int, float))
                                     and not isinstance(default.value, bool)):
            parser.error(default, "hyperparameter defaults must be numbers", "e.g. def k(d, dp, sigma, c=1.0)")
        hyper_defaults[name] = parser.finite_constant(default.value, default, "default").value
    body, line = parser.run()
    return KernelIR(info, tuple(hyper), hyper_defaults, body, line)
