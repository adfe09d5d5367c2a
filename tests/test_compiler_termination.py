"""The compiler always terminates, with a result or a DSL/compile error naming file:line.

Each case that used to hang (exponential IR <-> sympy conversion, unbounded
sympy.simplify) runs in a subprocess with a timeout and reports its own time;
each case that used to crash inside sympy or Numba (cosh, piecewise kernels,
real powers of norms, non-finite constants, bad decorator arguments) must
compile to the right numbers (checked against JAX or finite differences) or be
refused with a DSLError/CompileError pointing at the source.
"""
import json
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

import compiler
from compiler import CompileError, DSLError
from compiler.middle import ir
from compiler.middle.analysis import kernel_program
from compiler.library import load_file
from compiler.front.parser import parse_kernel
from compiler.front.records import user_var
from compiler.middle.primitives import Primitive
from compiler.middle.simplify import NoIRForm, from_sympy

ROOT = Path(__file__).resolve().parents[1]
HEADER = "from compiler.dsl import descriptor, kernel, exp, log, norm, sqrt, sin, tanh, dot, where, sqdist\n"


def write(tmp_path, name, body):
    path = tmp_path / name
    path.write_text(HEADER + textwrap.dedent(body))
    return path.resolve()


def run_bounded(code, timeout, tmp_path):
    """Run ``code`` in a fresh interpreter (own sympy cache, own generated folder); its last
    stdout line is JSON.  A hang fails the test instead of hanging the suite."""
    env = dict(os.environ, GDMLC_GENERATED_DIR=str(tmp_path / "generated"), PYTHONPATH=str(ROOT))
    try:
        done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the compiler did not finish within {timeout} s")
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_program(program, env):
    """Evaluate a simplify.Program (temporaries in order, then outputs) with numpy."""
    env = dict(env)
    for name, expr in program.assignments:
        (env[name],) = ir.evaluate([expr], env)
    return [np.asarray(v, float) for v in ir.evaluate(program.outputs, env)]


# --------------------------------------------------------------------------- no exponential blow-up

CHAIN_STEPS = 16


def test_deep_chain_descriptor_compiles_in_linear_time(tmp_path):
    """x = sin(x)*x + exp(-x), 16 times: > 120 s before (exponential in depth)."""
    steps = "\n".join(["    x = sin(x) * x + exp(-x)"] * CHAIN_STEPS)
    path = write(tmp_path, "chain.py", f"@descriptor(over='pairs')\ndef chain(ri, rj):\n"
                                       f"    x = norm(ri - rj) / 3.0\n{steps}\n    return x\n")
    result = run_bounded(f"""
        import json, time
        import numpy as np
        from compiler.middle.analysis import descriptor_program
        from compiler.library import load_file
        from compiler.front.parser import parse_descriptor
        from compiler.front.records import POSITION_VARS
        from compiler.middle import ir
        dsl = load_file({str(path)!r})["chain"]
        start = time.perf_counter()
        prog = descriptor_program(parse_descriptor(dsl))
        seconds = time.perf_counter() - start
        rng = np.random.default_rng(1)
        ri, rj = rng.normal(size=3), rng.normal(size=3)
        env = dict(zip(POSITION_VARS, [*ri, *rj]))
        for name, e in prog.term.assignments:
            (env[name],) = ir.evaluate([e], env)
        values = [float(v) for v in ir.evaluate(prog.term.outputs, env)]
        print(json.dumps({{"seconds": seconds, "values": values, "ri": list(ri), "rj": list(rj),
                           "notes": prog.term.notes}}))
    """, timeout=90, tmp_path=tmp_path)
    assert result["seconds"] < 20, result["seconds"]
    assert any("simplification skipped: expression too large" in n for n in result["notes"])

    def chain(ri, rj):  # plain numpy, written independently of the DSL file
        x = np.linalg.norm(ri - rj) / 3.0
        for _ in range(CHAIN_STEPS):
            x = np.sin(x) * x + np.exp(-x)
        return x

    ri, rj = np.array(result["ri"]), np.array(result["rj"])
    value, *grad = result["values"]
    assert np.isclose(value, chain(ri, rj), rtol=1e-13)
    h = 1e-6
    for k in range(6):
        e = np.zeros(6)
        e[k] = h
        fd = (chain(ri + e[:3], rj + e[3:]) - chain(ri - e[:3], rj - e[3:])) / (2 * h)
        assert np.isclose(grad[k], fd, rtol=1e-6, atol=1e-9), (k, grad[k], fd)


def test_deep_chain_kernel_is_refused_quickly_with_its_location(tmp_path):
    """A kernel too large for the symbolic check at d = dp: a CompileError, not a hang."""
    steps = "\n".join(["    x = sin(x) * x + exp(-x)"] * CHAIN_STEPS)
    path = write(tmp_path, "chaink.py", f"@kernel\ndef chaink(d, dp, sigma):\n"
                                        f"    x = sqdist(d, dp) / sigma\n{steps}\n    return x\n")
    result = run_bounded(f"""
        import json, time
        import compiler
        start = time.perf_counter()
        try:
            compiler.compile_kernel({str(path)!r} + ":chaink")
            message = None
        except compiler.CompileError as exc:
            message = str(exc)
        print(json.dumps({{"seconds": time.perf_counter() - start, "message": message}}))
    """, timeout=90, tmp_path=tmp_path)
    assert result["seconds"] < 20
    assert result["message"] is not None
    assert result["message"].startswith(f"{path}:{5 + CHAIN_STEPS}:"), result["message"]
    assert "expression too large" in result["message"]


def test_simplify_time_budget_falls_back_to_cse_and_stays_correct(tmp_path):
    """sympy.simplify once ran > 300 s on a one-line kernel: now it has a time budget (shrunk
    here so that any simplification exceeds it) and the coefficients are still right."""
    path = write(tmp_path, "slow.py", """
        @kernel
        def slow(d, dp, sigma):
            return exp(-sqdist(d, dp) / sigma) * tanh(dot(d, dp) / sigma + log(1.0 + sqdist(d, dp)))
        """)
    result = run_bounded(f"""
        import json, time
        import numpy as np
        from compiler.middle import ir, simplify
        from compiler.middle.analysis import kernel_program
        from compiler.library import load_file
        from compiler.front.parser import parse_kernel
        from compiler.front.records import user_var
        simplify.SYMPY_SECONDS = 0.02
        start = time.perf_counter()
        prog = kernel_program(parse_kernel(load_file({str(path)!r})["slow"]))
        seconds = time.perf_counter() - start
        env = {{"s": 0.7, "t": 0.4, user_var("sigma"): 1.3}}
        for name, e in prog.coefficients.assignments:
            (env[name],) = ir.evaluate([e], env)
        coefficients = [float(v) for v in ir.evaluate(prog.coefficients.outputs, env)]
        print(json.dumps({{"seconds": seconds, "notes": prog.coefficients.notes, "c": coefficients,
                          "names": list(prog.partials)}}))
    """, timeout=90, tmp_path=tmp_path)
    assert result["seconds"] < 20
    assert any("simplification stopped after" in n for n in result["notes"]), result["notes"]

    def g(s, t, sigma):
        return jnp.exp(-s / sigma) * jnp.tanh(t / sigma + jnp.log(1.0 + s))

    got = all_five(dict(zip(result["names"], result["c"])))
    assert np.allclose(list(got.values()), jax_coefficients(g, 0.7, 0.4, 1.3), rtol=1e-10)


# --------------------------------------------------------------------------- kernels sympy used to choke on

def jax_coefficients(g, s, t, *hyper):
    """g_s, g_t, g_ss, g_st, g_tt by JAX AD of an independently written g(s, t, ...)."""
    gs, gt = jax.grad(g, 0), jax.grad(g, 1)
    return [float(f(s, t, *hyper)) for f in (gs, gt, jax.grad(gs, 0), jax.grad(gs, 1), jax.grad(gt, 1))]


FIVE = ("g_s", "g_t", "g_ss", "g_st", "g_tt")  # the order of jax_coefficients


def all_five(partials):
    """The five second-order partials from the compiled ones: a partial the compiler does not
    compute (structurally zero) is 0, which JAX must agree with."""
    assert set(partials) <= set(FIVE), partials
    return {name: partials.get(name, 0.0) for name in FIVE}


def coefficients(kir, s, t, **hyper):
    prog = kernel_program(kir)
    values = run_program(prog.coefficients, {"s": s, "t": t, **{user_var(h): v for h, v in hyper.items()}})
    return all_five(dict(zip(prog.partials, values))), prog


def test_tanh_of_dot_product_compiles_through_cosh(tmp_path):
    """'no IR form for sympy cosh' before: its derivatives are written with cosh."""
    path = write(tmp_path, "tanhk.py", """
        @kernel
        def tanhk(d, dp, sigma):
            return tanh(dot(d, dp) / sigma)
        """)
    kir = parse_kernel(load_file(path)["tanhk"])
    for t in (-2.0, 0.3, 5.0):
        got, _ = coefficients(kir, 0.5, t, sigma=1.7)
        ref = jax_coefficients(lambda s, t, sigma: jnp.tanh(t / sigma), 0.5, t, 1.7)
        assert np.allclose(list(got.values()), ref, rtol=1e-12, atol=1e-14)


def test_cosh_and_sinh_are_dsl_functions(tmp_path):
    path = write(tmp_path, "hyp.py", """
        from compiler.dsl import cosh, sinh
        @kernel
        def hyp(d, dp, sigma):
            return 1.0 / cosh(dot(d, dp) / sigma) + sinh(exp(-sqdist(d, dp) / sigma))
        """)
    kir = parse_kernel(load_file(path)["hyp"])

    def g(s, t, sigma):
        return 1.0 / jnp.cosh(t / sigma) + jnp.sinh(jnp.exp(-s / sigma))

    got, _ = coefficients(kir, 0.8, 0.6, sigma=1.1)
    assert np.allclose(list(got.values()), jax_coefficients(g, 0.8, 0.6, 1.1), rtol=1e-12)


def wendland(s, t, sigma):
    r = jnp.sqrt(s) / sigma
    return jnp.where(r < 1, (1 - r) ** 4 * (4 * r + 1), 0.0)


def test_wendland_kernel_of_compact_support(tmp_path):
    """sympy 'as_set has not yet been implemented for multivariate expressions' before."""
    path = write(tmp_path, "wend.py", """
        @kernel
        def wend(d, dp, sigma):
            r = norm(d - dp) / sigma
            return where(r < 1, (1 - r) ** 4 * (4 * r + 1), 0)
        """)
    kir = parse_kernel(load_file(path)["wend"])
    for s in (0.04, 0.5, 1.5, 4.0):  # inside and outside the support (sigma = 1.2: r = 1 at s = 1.44)
        got, prog = coefficients(kir, s, 0.0, sigma=1.2)
        assert np.allclose(list(got.values()), jax_coefficients(wendland, s, 0.0, 1.2),
                           rtol=1e-12, atol=1e-14), s
    # at d = dp: g_s is finite (-10 / sigma^2), g_ss multiplies delta delta^T and is set to 0
    got, prog = coefficients(kir, 0.0, 0.0, sigma=1.2)
    assert np.isclose(got["g_s"], -10 / 1.2 ** 2, rtol=1e-13)
    assert all(np.isfinite(v) for v in got.values())
    assert any(note.startswith("g_ss") for note in prog.guards)


def test_real_power_of_norm(tmp_path):
    path = write(tmp_path, "powers.py", """
        @kernel
        def pow3(d, dp, sigma):
            return exp(-norm(d - dp) ** 3.0 / sigma)

        @kernel
        def pow15(d, dp, sigma):
            return exp(-norm(d - dp) ** 1.5 / sigma)  # <- not twice differentiable at d = dp

        @kernel
        def powp(d, dp, sigma, p=3.0):
            return exp(-norm(d - dp) ** p / sigma)
        """)
    entries = load_file(path)
    got, _ = coefficients(parse_kernel(entries["pow3"]), 0.9, 0.0, sigma=1.4)
    ref = jax_coefficients(lambda s, t, sigma: jnp.exp(-s ** 1.5 / sigma), 0.9, 0.0, 1.4)
    assert np.allclose(list(got.values()), ref, rtol=1e-12)

    with pytest.raises(CompileError) as excinfo:  # a TypeError from sympy's ceiling before
        compiler.compile_kernel(entries["pow15"])
    assert str(excinfo.value).startswith(f"{path}:9:") and "not twice differentiable" in str(excinfo.value)

    with pytest.raises(DSLError) as excinfo:
        compiler.compile_kernel(entries["powp"])
    assert str(excinfo.value).startswith(f"{path}:13:17:"), str(excinfo.value)
    assert "exponent of norm(d - dp) must be a number" in str(excinfo.value)


# --------------------------------------------------------------------------- non-finite constants

CONSTANT_CASES = {  # function -> (line offset of the error in its body, phrase)
    "literal_overflow": "constant inf is not a finite float64 number",
    "power_overflow": "the constant expression 10 ** 400 is not finite",
    "zero_to_negative_power": "the constant expression 0.0 ** (-1) is not finite",
    "log_of_zero": "the constant expression log(0.0) is not finite",
    "division_by_zero": "the constant expression 1.0 / 0.0 is not finite",
    "module_int_overflow": "module-level number 'BIG' = inf",
    "module_inf": "module-level number 'INF' = inf",
    "default_overflow": "default inf is not a finite float64 number",
    "descriptor_constant": "the constant expression 0.0 ** (-1) is not finite",
}


@pytest.fixture(scope="module")
def constants_file(tmp_path_factory):
    return write(tmp_path_factory.mktemp("constants"), "constants.py", """
        BIG = 10 ** 400
        INF = float("inf")

        @kernel
        def literal_overflow(d, dp, sigma):
            return exp(-sqdist(d, dp) / sigma) * 1e400  # <- error

        @kernel
        def power_overflow(d, dp, sigma):
            return exp(-sqdist(d, dp) / sigma) * 10 ** 400  # <- error

        @kernel
        def zero_to_negative_power(d, dp, sigma):
            return exp(-sqdist(d, dp) / sigma) + 0.0 ** -1  # <- error

        @kernel
        def log_of_zero(d, dp, sigma):
            return exp(-sqdist(d, dp) / sigma) * log(0.0)  # <- error

        @kernel
        def division_by_zero(d, dp, sigma):
            c = 1.0 / 0.0  # <- error
            return exp(-sqdist(d, dp) / sigma) * c

        @kernel
        def module_int_overflow(d, dp, sigma):
            return exp(-sqdist(d, dp) / sigma) * BIG  # <- error

        @kernel
        def module_inf(d, dp, sigma):
            return exp(-sqdist(d, dp) / sigma) * INF  # <- error

        @kernel
        def default_overflow(d, dp, sigma=1e400):  # <- error
            return exp(-sqdist(d, dp) / sigma)

        @descriptor(over="pairs")
        def descriptor_constant(ri, rj):
            return 1.0 / norm(ri - rj) + 0.0 ** -1  # <- error
        """)


@pytest.mark.parametrize("function", list(CONSTANT_CASES))
def test_non_finite_constant_is_a_dsl_error(constants_file, function):
    lines = constants_file.read_text().splitlines()
    start = next(k for k, text in enumerate(lines) if text.startswith(f"def {function}("))
    line = next(k for k in range(start, len(lines)) if "# <- error" in lines[k]) + 1
    dsl = load_file(constants_file)[function]
    build = compiler.compile_kernel if dsl.kind == "kernel" else compiler.compile_descriptor
    with pytest.raises(DSLError) as excinfo:
        build(dsl)
    text = str(excinfo.value)
    assert text.startswith(f"{constants_file}:{line}:"), text
    assert int(text.split(":")[2]) >= 1
    assert CONSTANT_CASES[function] in text, text


# --------------------------------------------------------------------------- decorator arguments

DECORATOR_CASES = {
    'over="pair"': "unknown index space over='pair'",
    'over=3': "unknown index space over=3",
    'params={"a": [1.0, 2.0], "b": [1.0, 2.0, 3.0]}': "parameter lists have different lengths",
    'params={"a": "wide", "b": 1.0}': "parameter 'a' = 'wide' is not a finite number",
    'params={"a": [1.0, float("nan")], "b": 1.0}': "is not a finite number",
    'params={"a": [], "b": 1.0}': "is not a finite number or a non-empty list",
    'params={"a": 1.0, "b": 1.0}, sigmas=[1.0, -2.0]': "must be a list of positive numbers",
}


@pytest.mark.parametrize("arguments", list(DECORATOR_CASES))
def test_bad_decorator_arguments_name_file_and_line(tmp_path, arguments):
    """over="pair" was a raw KeyError; unequal parameter lists a ValueError without location."""
    path = write(tmp_path, "deco.py", f"""
        X = 1

        @descriptor({arguments})
        def deco(ri, rj, a, b):
            return a * b / norm(ri - rj)
        """)
    with pytest.raises(DSLError) as excinfo:
        load_file(path)
    text = str(excinfo.value)
    assert text.startswith(f"{path}:5:1:"), text
    assert DECORATOR_CASES[arguments] in text
    if "over=" in arguments:
        assert "pairs, neighbours" in text


def test_params_checked_again_at_compile_time(tmp_path):
    """A DSLFunction built without the decorator (e.g. from stored data) gets the same check."""
    path = write(tmp_path, "direct.py", """
        @descriptor(params={"a": [1.0, 2.0], "b": 1.0})
        def direct(ri, rj, a, b):
            return a * b / norm(ri - rj)
        """)
    dsl = load_file(path)["direct"]
    dsl.params = {"a": [1.0, 2.0], "b": [1.0, 2.0, 3.0]}
    with pytest.raises(DSLError) as excinfo:
        compiler.compile_descriptor(dsl)
    assert str(excinfo.value).startswith(f"{path}:3:1:")
    assert "parameter lists have different lengths" in str(excinfo.value)


# --------------------------------------------------------------------------- missing rules

def test_primitive_without_derivative_rule_is_a_compile_error():
    prim = Primitive("erfish", 1, np.tanh, None, "erfish({0})", "erfish({0})", sp.tanh)
    with pytest.raises(CompileError, match=r"no derivative rule for erfish\(\)"):
        prim.partials((ir.var("x"),), ir.var("y"))


def test_sympy_function_without_ir_form_is_named():
    x = sp.Symbol("x", real=True)
    with pytest.raises(NoIRForm, match="atan"):
        from_sympy(sp.atan(x) + 1, {x: ir.var("x")})
    assert issubclass(NoIRForm, CompileError)
