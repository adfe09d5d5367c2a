"""Property-based tests of the DSL compiler (hypothesis, derandomised for CI).

(a) Random valid descriptors and kernels, written as source text: random
    expression trees over the DSL's functions and operators, with safe domains
    (exp/cosh/sinh of bounded arguments, log/sqrt of positive ones).  Their
    compiled programs (parser -> AD -> sympy simplify/CSE -> straight-line IR)
    must agree with plain numpy evaluation of the same formula (values) and
    with JAX's AD of it (derivatives).
(b) Random mutations of valid source (a loop, an attribute, an index, an
    unknown call, a bad constant, a tuple assignment, a deleted return, ...)
    must raise a DSLError naming the file and the line, never another exception
    type, and quickly.
"""
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import compiler
from compiler import DSLError
from compiler.middle import ir, simplify
from compiler.middle.analysis import descriptor_program, kernel_program
from compiler.library import load_file
from compiler.front.parser import parse_descriptor, parse_kernel
from compiler.front.records import POSITION_VARS, user_var

SETTINGS = dict(derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
IMPORTS = ("from compiler.dsl import descriptor, kernel, sqrt, exp, log, sin, cos, arccos, tanh, "
           "cosh, sinh, abs, where, norm, dot, sqdist\n")

# --------------------------------------------------------------------------- expression trees

# Each unary form is total and smooth on all reals; {f} is the function namespace
# ('' in the DSL, 'np.' for numpy, 'jnp.' for JAX), {a} the argument.
UNARY = {
    "exp": "{f}exp({f}tanh({a}))",
    "gauss": "{f}exp(-({a}) * ({a}))",
    "log": "{f}log(1.0 + ({a}) * ({a}))",
    "sqrt": "{f}sqrt(1.5 + ({a}) * ({a}))",
    "sin": "{f}sin({a})",
    "cos": "{f}cos({a})",
    "tanh": "{f}tanh({a})",
    "cosh": "{f}cosh({f}tanh({a}))",
    "sinh": "{f}sinh({f}tanh({a}))",
    "arccos": "{f}arccos(0.8 * {f}tanh({a}))",
    "square": "({a}) ** 2",
    "power": "(1.0 + ({a}) * ({a})) ** 1.5",
    "neg": "(-({a}))",
}
BINARY = {
    "add": "({a} + {b})",
    "sub": "({a} - {b})",
    "mul": "({a} * {b})",
    "div": "({a} / (1.25 + ({b}) * ({b})))",
}


def spell(tree, f):
    """Source text of an expression tree in one namespace."""
    kind = tree[0]
    if kind == "leaf":
        return tree[1]
    if kind == "const":
        return repr(tree[1])
    if kind == "unary":
        return UNARY[tree[1]].format(f=f, a=spell(tree[2], f))
    if kind == "binary":
        return BINARY[tree[1]].format(a=spell(tree[2], f), b=spell(tree[3], f))
    a, b, x, y = (spell(t, f) for t in tree[1:])  # where(a < b, x, y)
    if f == "":
        return f"where({a} < {b}, {x}, {y})"
    return f"{f}where({a} < {b}, {x}, {y})"


def trees(leaves, with_where, max_leaves=7):
    base = st.one_of(st.sampled_from([("leaf", name) for name in leaves]),
                     st.builds(lambda v: ("const", v), st.sampled_from([0.5, 0.75, 1.5, 2.0, 3.0])))

    def extend(children):
        options = [
            st.tuples(st.just("unary"), st.sampled_from(sorted(UNARY)), children),
            st.tuples(st.just("binary"), st.sampled_from(sorted(BINARY)), children, children),
        ]
        if with_where:
            options.append(st.tuples(st.just("where"), children, children, children, children))
        return st.one_of(options)

    return st.recursive(base, extend, max_leaves=max_leaves)


def write(tmp_path, source):
    path = tmp_path / f"gen_{abs(hash(source))}.py"
    path.write_text(IMPORTS + source)
    return path.resolve()


def run_program(program, env):
    env = dict(env)
    for name, expr in program.assignments:
        (env[name],) = ir.evaluate([expr], env)
    return [float(v) for v in ir.evaluate(program.outputs, env)]


# --------------------------------------------------------------------------- (a) valid functions

def descriptor_source(first, second):
    return textwrap.dedent(f"""
        @descriptor(over="pairs")
        def feature(ri, rj):
            r = norm(ri - rj)
            q = sqdist(ri, rj) / 4.0
            u = {spell(first, "")}
            return {spell(second, "")} + 1.0 / r
        """)


def descriptor_reference(first, second, xp):
    """The same formula in numpy or jax.numpy, from the same tree."""
    f = "np." if xp is np else "jnp."
    namespace = {"np": np, "jnp": jnp}
    exec(textwrap.dedent(f"""
        def feature(ri, rj):
            r = {f}sqrt({f}sum((ri - rj) ** 2))
            q = {f}sum((ri - rj) ** 2) / 4.0
            u = {spell(first, f)}
            return {spell(second, f)} + 1.0 / r
        """), namespace)
    return namespace["feature"]


@settings(max_examples=25, **SETTINGS)
@given(first=trees(["r", "q"], with_where=False), second=trees(["r", "q", "u"], with_where=False),
       seed=st.integers(0, 2 ** 16))
def test_random_descriptor_matches_numpy_and_jax(tmp_path_factory, first, second, seed):
    path = write(tmp_path_factory.mktemp("desc"), descriptor_source(first, second))
    program = descriptor_program(parse_descriptor(load_file(path)["feature"])).term
    rng = np.random.default_rng(seed)
    ri, rj = rng.normal(size=3), rng.normal(size=3)
    rj = ri + (0.8 + rng.uniform(0, 1.5)) * (rj - ri) / np.linalg.norm(rj - ri)  # |ri - rj| in [0.8, 2.3]
    value, *grad = run_program(program, dict(zip(POSITION_VARS, [*ri, *rj])))
    assert np.isclose(value, descriptor_reference(first, second, np)(ri, rj), rtol=1e-12, atol=1e-12)
    f = descriptor_reference(first, second, jnp)
    ref = np.concatenate([jax.grad(f, 0)(ri, rj), jax.grad(f, 1)(ri, rj)])
    assert np.allclose(grad, ref, rtol=1e-10, atol=1e-10 * max(1.0, np.abs(ref).max()))


def kernel_source(tree):
    return textwrap.dedent(f"""
        @kernel
        def k(d, dp, sigma):
            x = sqdist(d, dp) / sigma
            y = dot(d, dp) / sigma
            return exp(-x) * (1.0 + {spell(tree, "")})
        """)


def kernel_reference(tree):
    namespace = {"jnp": jnp}
    exec(textwrap.dedent(f"""
        def g(s, t, sigma):
            x = s / sigma
            y = t / sigma
            return jnp.exp(-x) * (1.0 + {spell(tree, "jnp.")})
        """), namespace)
    return namespace["g"]


@pytest.fixture(scope="module")
def short_simplify_budget():
    """sympy.simplify of random kernels is given 1 s in all (not 10): the programs must be
    right whether or not simplification finishes, and the file must run in CI time."""
    saved, simplify.SYMPY_SECONDS = simplify.SYMPY_SECONDS, 1.0
    yield
    simplify.SYMPY_SECONDS = saved


@settings(max_examples=12, **SETTINGS)
@given(tree=trees(["x", "y"], with_where=True, max_leaves=5), s=st.floats(0.05, 2.0),
       t=st.floats(-1.5, 1.5), sigma=st.floats(0.5, 2.0))
def test_random_kernel_matches_jax(tmp_path_factory, short_simplify_budget, tree, s, t, sigma):
    path = write(tmp_path_factory.mktemp("kern"), kernel_source(tree))
    prog = kernel_program(parse_kernel(load_file(path)["k"]))
    env = {"s": s, "t": t, user_var("sigma"): sigma}
    g = kernel_reference(tree)
    (value,) = run_program(prog.value, env)
    assert np.isclose(value, float(g(s, t, sigma)), rtol=1e-11, atol=1e-12)
    gs, gt = jax.grad(g, 0), jax.grad(g, 1)
    reference = {"g_s": gs, "g_t": gt, "g_ss": jax.grad(gs, 0), "g_st": jax.grad(gs, 1),
                 "g_tt": jax.grad(gt, 1)}
    got = dict(zip(prog.partials, run_program(prog.coefficients, env)))
    assert set(got) <= set(reference), got
    for name, fn in reference.items():  # a partial the compiler leaves out is structurally zero
        ref = float(fn(s, t, sigma))
        assert np.isclose(got.get(name, 0.0), ref, rtol=1e-9, atol=1e-10), (name, got.get(name), ref)


# --------------------------------------------------------------------------- (b) mutations

VALID_DESCRIPTOR = """\
@descriptor(over="pairs", params={"w": [1.0, 2.0]})
def feature(ri, rj, w):
    r = norm(ri - rj)
    u = exp(-r / w)
    return u / r
"""
VALID_KERNEL = """\
@kernel
def k(d, dp, sigma):
    r = norm(d - dp) / sigma
    v = 1.0 + r
    return v * exp(-r)
"""

# a statement inserted before some body line -> the error must name that line
STATEMENTS = [
    "for k in range(3):\n    pass", "while r:\n    pass", "if r > 1.0:\n    r = 1.0",
    "z = ri.x", "z = np.exp(1.0)", "z = ri[0]", "z = softplus(1.0)", "z = 1e400", "z = 10 ** 400",
    "z = 0.0 ** -1", "z = log(0.0)", "z = 1.0 / 0.0", "a, b = 1.0, 2.0", "z = 'text'", "z = lambda: 1.0",
    "z = (1.0 < 2.0)", "z = where(1.0 < 2.0 < 3.0, 1.0, 0.0)", "z = where(r and r, 1.0, 0.0)",
    "z = [1.0]", "z = {1.0: 2.0}", "print(1.0)", "global zz", "z = undefined_name", "import math",
    "del r", "z = r @ r", "z = ~r", "z = r % 2.0", "z = exp(1.0, 2.0)", "z = exp(x=1.0)",
    "z: float", "z = float('inf')", "def inner():\n    return 1.0", "z = feature(1.0)",
    "z = k(1.0)", "z = sqrt(True)", "z = None", "z = r if r else 1.0", "z = (yield 1.0)",
]


def insert_statement(source, line_index, statement):
    """Insert ``statement`` (indented) before body line ``line_index``; return text and its line."""
    lines = source.splitlines()
    body_start = next(k for k, text in enumerate(lines) if text.startswith("def ")) + 1
    at = body_start + line_index % (len(lines) - body_start)
    new = [f"    {text}" for text in statement.splitlines()]
    return "\n".join(lines[:at] + new + lines[at:]) + "\n", at + 1


def other_mutation(source, which):
    """(mutated text, the line the error must name relative to the text) for edits that are
    not insertions."""
    lines = source.splitlines()
    ret = next(k for k, text in enumerate(lines) if text.strip().startswith("return"))
    deco = next(k for k, text in enumerate(lines) if text.startswith("@"))
    defn = deco + 1
    if which == "delete return":
        lines[ret] = lines[ret].replace("return ", "z = ")
        return "\n".join(lines) + "\n", defn + 1
    if which == "code after return":
        return "\n".join(lines + ["    z = 1.0"]) + "\n", ret + 2
    if which == "return nothing":
        lines[ret] = "    return"
        return "\n".join(lines) + "\n", ret + 1
    if which == "return a vector":
        lines[ret] = "    return " + ("ri - rj" if "ri" in source else "d")
        return "\n".join(lines) + "\n", ret + 1
    if which == "unknown index space":
        if "over=" not in lines[deco]:
            return None
        lines[deco] = lines[deco].replace('over="pairs"', 'over="pair"')
        return "\n".join(lines) + "\n", deco + 1
    if which == "unequal parameter lists":
        if "params=" not in lines[deco]:
            return None
        lines[deco] = lines[deco].replace('{"w": [1.0, 2.0]}', '{"w": [1.0, 2.0], "v": [1.0, 2.0, 3.0]}')
        lines[defn] = lines[defn].replace("w):", "w, v):")
        return "\n".join(lines) + "\n", deco + 1
    if which == "non-numeric parameter":
        if "params=" not in lines[deco]:
            return None
        lines[deco] = lines[deco].replace("[1.0, 2.0]", '"wide"')
        return "\n".join(lines) + "\n", deco + 1
    raise AssertionError(which)


OTHER = ["delete return", "code after return", "return nothing", "return a vector", "unknown index space",
         "unequal parameter lists", "non-numeric parameter"]


def expect_dsl_error(path, line):
    """Import and compile every DSL function in ``path``: a DSLError naming ``path:line``."""
    start = time.perf_counter()
    with pytest.raises(DSLError) as excinfo:  # any other exception type fails the test
        for dsl in load_file(path).values():
            (compiler.compile_descriptor if dsl.kind == "descriptor" else compiler.compile_kernel)(dsl)
    assert time.perf_counter() - start < 10.0
    err = excinfo.value
    assert err.filename == str(path) and str(err).startswith(f"{path}:"), str(err)
    assert err.lineno == line + 1, (str(err), line + 1)  # +1: the import line written above the source
    assert int(str(err)[len(f"{path}:"):].split(":")[1]) >= 1  # a column


@settings(max_examples=60, **SETTINGS)
@given(base=st.sampled_from([VALID_DESCRIPTOR, VALID_KERNEL]), statement=st.sampled_from(STATEMENTS),
       position=st.integers(0, 10))
def test_inserted_construct_is_a_dsl_error_at_its_line(tmp_path_factory, base, statement, position):
    source, line = insert_statement(base, position, statement)
    path = write(tmp_path_factory.mktemp("mut"), source)
    expect_dsl_error(path, line)


@settings(max_examples=14, **SETTINGS)
@given(base=st.sampled_from([VALID_DESCRIPTOR, VALID_KERNEL]), which=st.sampled_from(OTHER))
def test_edited_function_is_a_dsl_error_at_its_line(tmp_path_factory, base, which):
    mutated = other_mutation(base, which)
    if mutated is None:  # a decorator edit that this base (a kernel) has no argument for
        mutated = other_mutation(VALID_DESCRIPTOR, which)
    source, line = mutated
    path = write(tmp_path_factory.mktemp("edit"), source)
    expect_dsl_error(path, line)


@pytest.mark.parametrize("base", [VALID_DESCRIPTOR, VALID_KERNEL], ids=["descriptor", "kernel"])
@pytest.mark.parametrize("statement", STATEMENTS)
def test_every_inserted_construct_is_a_dsl_error(tmp_path, base, statement):
    """Every mutation at least once (hypothesis draws a sample of them above)."""
    source, line = insert_statement(base, 1, statement)
    expect_dsl_error(write(tmp_path, source), line)
