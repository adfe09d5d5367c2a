"""Every row of the rule table (compiler/middle/primitives.py) against independent references.

Parametrised over the table itself, so a new row is tested without touching this file:
its partials against JAX's derivative of its own jax spelling, to second order (the
second through gdmlc's AD of the partials); its numpy value against the jax spelling;
its numba, numba_vector and cuda spellings compiled or evaluated against numpy (CUDA
under Numba's simulator, in a subprocess: see tests/test_cuda_sim.py for why); its sympy
round trip.  Then the things derived from the table (DSL names, parser, sympy classes,
generated-module imports), the clear errors for missing rules, and bounded interning.
"""
import gc
import inspect
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sympy as sp
from numba import njit

import compiler
from compiler import CompileError, dsl
from compiler.middle import ad, ir, simplify
from compiler.targets import numba_cpu, numba_cuda
from compiler.front import parser
from compiler.targets.spelling import spell
from compiler.middle.primitives import (COMPARISONS, DSL_FUNCTIONS, PRIMITIVES, SPELLING_NAMES, SYMPY_CLASSES,
                                 Primitive, check_row, namespace, spelling_names)

jax.config.update("jax_enable_x64", True)

REPO = Path(__file__).resolve().parents[1]
ROWS = sorted(PRIMITIVES)
DIFFERENTIABLE = [name for name in ROWS if PRIMITIVES[name].differentiable]
N_POINTS = 6
RTOL, ATOL = 1e-12, 1e-14


# --------------------------------------------------------------------------- one expression per row

def expression(name):
    """``name`` applied to fresh variables x0, x1, ...; where()'s condition is the comparison
    x0 < x1 (a condition is boolean, never a number)."""
    row = PRIMITIVES[name]
    if name == "where":
        args = (ir.make("lt", ir.var("x0"), ir.var("x1")), ir.var("x2"), ir.var("x3"))
    else:
        args = tuple(ir.var(f"x{k}") for k in range(row.arity))
    return ir.make(name, *args)


def variables(expr):
    return sorted(ir.free_variables([expr]))


def points(name, seed=0):
    """N_POINTS samples of every variable inside the row's domain (comparisons: some equal)."""
    row = PRIMITIVES[name]
    rng = np.random.default_rng(seed)
    env = {v: rng.uniform(*row.domain, N_POINTS) for v in variables(expression(name))}
    if row.python_op is not None:
        env["x1"][::2] = env["x0"][::2]  # eq/ne/le/ge must see both outcomes
    return env


def jax_lowered(expr):
    """f(x0, x1, ...) from the row's jax spelling, in the namespace the table declares."""
    names = variables(expr)
    source = f"lambda {', '.join(names)}: {spell(expr, 'jax')}"
    return eval(source, namespace("jax")), names


def close(got, ref):
    got, ref = np.asarray(got, float), np.asarray(ref, float)
    return np.allclose(got, ref, rtol=RTOL, atol=ATOL), (got, ref)


# --------------------------------------------------------------------------- derivatives against JAX

@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_partials_match_jax_to_second_order(name):
    expr = expression(name)
    f, names = jax_lowered(expr)
    env = points(name)
    partials = PRIMITIVES[name].partials(expr.args, expr)
    assert len(partials) == len(expr.args)
    X = [jnp.asarray(env[v]) for v in names]
    hess = jax.vmap(jax.hessian(f, argnums=tuple(range(len(names)))))(*X)
    checked = 0
    for arg, partial in zip(expr.args, partials):
        if partial is None:
            assert arg.op != "var", f"{name}: no partial for a real argument"
            continue
        k = names.index(arg.value)
        (got,) = ir.evaluate([partial], env)
        ref = jax.vmap(jax.grad(f, argnums=k))(*X)
        ok, detail = close(np.broadcast_to(got, ref.shape), ref)
        assert ok, (name, arg, detail)
        # second order: gdmlc's AD of the partial against JAX's Hessian
        second = ad.grad(partial, names)
        for j, d2 in enumerate(second):
            (got2,) = ir.evaluate([d2], env)
            ok, detail = close(np.broadcast_to(got2, hess[k][j].shape), hess[k][j])
            assert ok, (name, arg.value, names[j], detail)
        checked += 1
    assert checked >= 1


@pytest.mark.parametrize("name", ROWS)
def test_numpy_value_matches_jax_spelling(name):
    expr = expression(name)
    f, names = jax_lowered(expr)
    env = points(name)
    (got,) = ir.evaluate([expr], env)
    ref = f(*[jnp.asarray(env[v]) for v in names])
    assert close(got, ref)[0], (name, close(got, ref)[1])


# --------------------------------------------------------------------------- Numba and CUDA spellings

def numba_function(expr, column):
    names = variables(expr)
    scope = namespace(column, [PRIMITIVES[n.op] for n in ir.topological([expr]) if n.op not in ("var", "const")])
    exec(f"def f({', '.join(names)}):\n    return {spell(expr, column)}\n", scope)
    return njit(error_model="numpy")(scope["f"]), names


@pytest.mark.parametrize("column", ["numba", "numba_vector"])
@pytest.mark.parametrize("name", ROWS)
def test_numba_spellings_compile_and_match_numpy(name, column):
    expr = expression(name)
    if column == "numba_vector" and PRIMITIVES[name].numba_vector == PRIMITIVES[name].numba:
        assert spell(expr, column) == spell(expr, "numba")  # the same text: tested with column='numba'
        return
    fn, names = numba_function(expr, column)
    env = points(name)
    (ref,) = ir.evaluate([expr], env)
    got = [fn(*[float(env[v][p]) for v in names]) for p in range(N_POINTS)]
    assert close(got, np.broadcast_to(ref, (N_POINTS,)))[0], (name, column, got, ref)


@pytest.mark.parametrize("name", ROWS)
def test_cuda_spelling_is_python_over_math(name):
    """The cuda text parses, uses only names the CUDA module header imports, and as plain
    Python on scalars gives numpy's values (what Numba CUDA compiles is this same text)."""
    header = inspect.getsource(numba_cuda.module_source)
    for needed in spelling_names(PRIMITIVES[name], "cuda"):
        module = SPELLING_NAMES[needed][0]
        assert f"import {module}" in header, (name, needed)
    expr = expression(name)
    env = points(name)
    (ref,) = ir.evaluate([expr], env)
    text = spell(expr, "cuda")
    got = [eval(text, namespace("cuda"), {v: float(env[v][p]) for v in env}) for p in range(N_POINTS)]
    assert close(got, np.broadcast_to(ref, (N_POINTS,)))[0], (name, got, ref)


CUDA_SIM_SCRIPT = """
import json, math, sys
import numpy as np
from numba import cuda
rows = json.loads(sys.argv[1])
out = {}
for name, (names, text, samples) in rows.items():
    scope = {"math": math, "np": np, "cuda": cuda}
    exec(f"def f({', '.join(names)}):\\n    return {text}\\n", scope)
    dev = cuda.jit(device=True)(scope["f"])
    args = ", ".join(f"a[{k}, i]" for k in range(len(names)))
    exec(f"def kern(a, o):\\n    i = cuda.grid(1)\\n    if i < o.shape[0]:\\n        o[i] = dev({args})\\n",
         {"cuda": cuda, "dev": dev}, scope)
    a = np.asarray(samples, dtype=np.float64).reshape(len(names), -1)
    o = np.zeros(a.shape[1])
    cuda.jit(scope["kern"])[1, a.shape[1]](a, o)
    out[name] = o.tolist()
print(json.dumps({"simulated": cuda.simulator_enabled if hasattr(cuda, "simulator_enabled") else True,
                  "values": out}))
"""


def test_cuda_spellings_under_the_simulator():
    """Each row's cuda spelling in a device function called from a kernel, under Numba's CUDA
    simulator (a subprocess: the simulator is chosen when numba.cuda is first imported)."""
    rows, refs = {}, {}
    for name in ROWS:
        expr = expression(name)
        env = points(name)
        names = variables(expr)
        rows[name] = (names, spell(expr, "cuda"), [env[v].tolist() for v in names])
        (ref,) = ir.evaluate([expr], env)
        refs[name] = np.broadcast_to(np.asarray(ref, float), (N_POINTS,))
    env = {k: v for k, v in os.environ.items()}
    env["NUMBA_ENABLE_CUDASIM"] = "1"
    proc = subprocess.run([sys.executable, "-c", CUDA_SIM_SCRIPT, json.dumps(rows)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    values = json.loads(proc.stdout.strip().splitlines()[-1])["values"]
    assert set(values) == set(ROWS)
    for name in ROWS:
        assert close(values[name], refs[name])[0], (name, values[name], refs[name])


def test_generated_module_header_provides_the_numba_names():
    """Every name a numba/numba_vector spelling uses is imported by the generated module's header."""
    scope = {}
    exec(numba_cpu.module_text("header", [], {}), scope)
    for row in PRIMITIVES.values():
        for column in ("numba", "numba_vector"):
            missing = spelling_names(row, column) - set(scope)
            assert not missing, (row.name, column, missing)


# --------------------------------------------------------------------------- sympy round trip

@pytest.mark.parametrize("name", ROWS)
def test_sympy_round_trip(name):
    """IR -> sympy -> IR evaluates equal: every sympy form the table writes reads back."""
    expr = expression(name)
    names = variables(expr)
    symbols = simplify.symbols_for(names)
    (sym,) = simplify.to_sympy([expr], symbols)
    back = simplify.from_sympy(sym, {symbols[v]: ir.var(v) for v in names})
    env = points(name)
    (a,), (b,) = ir.evaluate([expr], env), ir.evaluate([back], env)
    assert close(np.broadcast_to(b, (N_POINTS,)), np.broadcast_to(a, (N_POINTS,)))[0], (name, sym, back)
    row = PRIMITIVES[name]
    if row.sympy_class is not None:
        assert isinstance(sym, row.sympy_class) and SYMPY_CLASSES[row.sympy_class] == name


# --------------------------------------------------------------------------- what derives from the table

def test_dsl_names_parser_and_comparisons_come_from_the_table():
    for row in PRIMITIVES.values():
        if row.dsl:
            assert DSL_FUNCTIONS[row.dsl] == row.name
            assert getattr(dsl, row.dsl) is row.evaluate and row.dsl in dsl.__all__
            assert row.dsl in parser.ALLOWED_CALLS
        if row.python_op:
            assert COMPARISONS[row.python_op] == row.name
    assert set(DSL_FUNCTIONS) >= {"sqrt", "exp", "log", "where", "abs", "erf"}
    assert set(COMPARISONS) == {"Lt", "LtE", "Gt", "GtE", "Eq", "NotEq"}
    assert ir.PRIMITIVES is PRIMITIVES  # the registry is the table, filled on import


def test_erf_in_plain_python_and_dsl_kernel_against_jax(tmp_path):
    """The DSL's erf works on numpy arrays, and a kernel using it compiles (sympy reads its
    derivatives back) to JAX's values and gradient."""
    x = np.linspace(-2.0, 2.0, 7)
    assert np.allclose(dsl.erf(x), [math.erf(v) for v in x], rtol=1e-15, atol=1e-16)
    path = tmp_path / "erfk.py"
    path.write_text(textwrap.dedent("""
        from compiler.dsl import kernel, erf, exp, sqdist, dot
        @kernel
        def erfk(d, dp, sigma):
            return exp(-sqdist(d, dp) / sigma) * (1.0 + erf(dot(d, dp) / sigma))
        """))
    k = compiler.compile_kernel(f"{path}:erfk")
    rng = np.random.default_rng(3)
    d, dp = rng.uniform(0.1, 1.0, 6), rng.uniform(0.1, 1.0, 6)
    ref = k.jax_function()
    assert np.isclose(k.value(d, dp, sigma=1.3), ref(jnp.asarray(d), jnp.asarray(dp), sigma=1.3), rtol=1e-12)
    grad = jax.grad(lambda a: ref(a, jnp.asarray(dp), sigma=1.3))(jnp.asarray(d))
    assert np.allclose(k.gradient(d, dp, sigma=1.3), grad, rtol=1e-11, atol=1e-14)


# --------------------------------------------------------------------------- missing rules: clear errors

@pytest.fixture
def temporary_row():
    """Register a row for one test, then remove it (the registry is global)."""
    added = []

    def add(row):
        added.append(row.name)
        return ir.register(row)

    yield add
    for name in added:
        del ir.PRIMITIVES[name]


def test_primitive_without_partials_is_a_clear_error_when_differentiated(temporary_row):
    temporary_row(Primitive("nopartial", 1, np.tanh, None, "math.tanh({0})", "jnp.tanh({0})", sp.tanh))
    y = ir.make("nopartial", ir.var("x"))
    with pytest.raises(CompileError, match=r"no derivative rule for nopartial\(\)"):
        ad.grad(y, ["x"])
    with pytest.raises(CompileError, match=r"no derivative rule for nopartial\(\)"):
        ad.jvp([y], {"x": 1.0})


def test_sympy_function_without_ir_form_is_a_clear_error():
    x = sp.Symbol("x", real=True)
    with pytest.raises(simplify.NoIRForm, match="no IR form for sympy atan"):
        simplify.from_sympy(sp.atan(x) + 1, {x: ir.var("x")})


def test_row_whose_sympy_class_is_missing_fails_the_round_trip(temporary_row):
    """A row that builds a sympy function but does not name the class to read back: the way
    back is a NoIRForm naming it, not a silent fallback."""
    temporary_row(Primitive("atanish", 1, np.arctan, None, "math.atan({0})", "jnp.arctan({0})", sp.atan))
    x = sp.Symbol("x", real=True)
    (sym,) = simplify.to_sympy([ir.make("atanish", ir.var("x"))], {"x": x})
    with pytest.raises(simplify.NoIRForm, match="atan"):
        simplify.from_sympy(sym, {x: ir.var("x")})


def test_missing_or_unknown_spelling_is_a_clear_error(temporary_row):
    with pytest.raises(CompileError, match="primitive nocuda has no cuda spelling"):
        check_row(Primitive("nocuda", 1, np.tanh, None, "math.tanh({0})", "jnp.tanh({0})", sp.tanh, cuda=""))
    with pytest.raises(CompileError, match="primitive oddjax: its jax spelling uses jsp"):
        check_row(Primitive("oddjax", 1, np.tanh, None, "math.tanh({0})", "jsp.tanh({0})", sp.tanh))
    with pytest.raises(CompileError, match="primitive badtext: its numba spelling"):
        check_row(Primitive("badtext", 1, np.tanh, None, "math.tanh({0}", "jnp.tanh({0})", sp.tanh))
    temporary_row(Primitive("novector", 1, np.tanh, None, "math.tanh({0})", "jnp.tanh({0})", sp.tanh,
                            numba_vector=""))
    with pytest.raises(CompileError, match="primitive novector has no numba_vector spelling"):
        spell(ir.make("novector", ir.var("x")), "numba_vector")
    with pytest.raises(CompileError, match="unknown primitive 'nosuch'"):
        ir.make("nosuch", ir.var("x"))


def test_every_table_row_passes_its_own_checks():
    for row in PRIMITIVES.values():
        assert check_row(row) is row


# --------------------------------------------------------------------------- interning

def test_interning_gives_identity_while_alive_and_does_not_grow():
    x = ir.var("x_interning")
    a = ir.make("exp", ir.make("mul", x, ir.const(2.5)))
    b = ir.make("exp", ir.make("mul", ir.var("x_interning"), ir.const(2.5)))
    assert a is b

    from compiler.middle.analysis import kernel_program
    from compiler.library import resolve

    gc.collect()
    before = len(ir._INTERNED)
    for name in ("matern52", "gaussian"):  # different kernels: a strong table would keep both graphs
        kernel_program(parser.parse_kernel(resolve(name, "kernel")))
        gc.collect()
        assert len(ir._INTERNED) == before, name  # the compilation left no nodes behind
    del a, b, x
    gc.collect()
    assert not any(k[0] == "var" and k[2] == "x_interning" for k in list(ir._INTERNED.keys()))
