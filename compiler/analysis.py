"""From parsed IR to the derivative programs the code generator emits.

Descriptors: one feature term and its gradient in the positions of the two
atoms it involves (reverse mode), simplified and CSE'd.

Kernels: a kernel is g(s, t) with s = |d - dp|^2 and t = d . dp, so its
descriptor-space derivatives have a fixed structure,

    grad_d  k = 2 g_s delta + g_t dp,        grad_dp k = -2 g_s delta + g_t d,
    d2k/dd ddp^T = (g_t - 2 g_s) I - 4 g_ss delta delta^T
                   + 2 g_st (delta d^T - dp delta^T) + g_tt dp d^T,

a scaled identity plus at most a few rank-one terms.  Only the scalar
coefficients g_s, g_t, g_ss, g_st, g_tt need AD; whichever is structurally
zero drops its term from the generated code.  Each coefficient is simplified
with sympy and checked at s = 0 (every diagonal block): a removable
singularity must be gone, and a genuinely singular coefficient is accepted
only where the vector it multiplies vanishes faster.
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from . import ad, ir
from .errors import CompileError, DSLError
from .records import POSITION_VARS, S, T, DescriptorIR, KernelIR, user_var
from .simplify import Program, limit_from_above, optimise, symbols_for

# Coefficient name -> (IR variables it differentiates g by, powers of delta it multiplies).
COEFFICIENTS = {
    "g_s": (("s",), 1),
    "g_t": (("t",), 0),
    "g_ss": (("s", "s"), 2),
    "g_st": (("s", "t"), 1),
    "g_tt": (("t", "t"), 0),
}
# g_s also enters the identity coefficient g_t - 2 g_s, which must be finite.
MUST_BE_FINITE_AT_ZERO = {"g_s", "g_t", "g_tt"}


@dataclass
class DescriptorProgram:
    term: Program            # outputs: value, d/d ri_0..2, d/d rj_0..2
    symmetric: bool          # term(i, j) == term(j, i): atom permutations map to feature permutations


@dataclass
class KernelProgram:
    value: Program           # outputs: g
    coefficients: Program    # outputs: g_s, g_t, g_ss, g_st, g_tt (zeros where absent)
    present: dict            # coefficient name -> bool (structurally nonzero)
    guards: list             # human-readable notes on s = 0 handling
    uses: tuple              # subset of ('s', 't')


def descriptor_program(dir_: DescriptorIR) -> DescriptorProgram:
    body = dir_.body
    grads = ad.grad(body, POSITION_VARS)
    if all(g is ir.ZERO for g in grads):
        raise DSLError(f"descriptor {dir_.source.name!r} does not depend on the atom positions "
                       "(its gradient is zero), so it cannot learn forces", *_return_location(dir_.source, dir_.body_line),
                       "use the positions, e.g. norm(ri - rj)")
    names = list(POSITION_VARS) + list(dir_.z_args) + [user_var(p) for p in dir_.param_names]
    symbols = symbols_for(names, positive=dir_.z_args)
    # CSE only: sympy.simplify on position gradients costs seconds to minutes and, on
    # the library, never gave fewer operations than CSE alone.
    program = optimise([body] + grads, symbols, full=False, prefix="t")
    return DescriptorProgram(program, _is_pair_symmetric(dir_))


def _return_location(info, line):
    """(file, line, column) of the return statement on ``line`` of a DSL function."""
    text = info.excerpt(line)
    return info.filename, line, text.find("return") + 1 if "return" in text else 1


def _is_pair_symmetric(dir_: DescriptorIR, trials=8) -> bool:
    """Numerically: does swapping the two atoms leave the feature unchanged?"""
    import numpy as np

    rng = np.random.default_rng(0)
    swap = {f"ri_{k}": f"rj_{k}" for k in range(3)}
    swap.update({v: k for k, v in swap.items()})
    swap.update({"zi": "zj", "zj": "zi"})
    env = {name: rng.uniform(0.5, 2.0, trials) for name in list(POSITION_VARS) + ["zi", "zj"]}
    env.update({user_var(p): rng.uniform(0.5, 2.0, trials) for p in dir_.param_names})
    swapped = {k: env[swap.get(k, k)] for k in env}
    a, = ir.evaluate([dir_.body], env)
    b, = ir.evaluate([dir_.body], swapped)
    a, b = np.broadcast_to(a, (trials,)), np.broadcast_to(b, (trials,))
    return bool(np.allclose(a, b, rtol=1e-12, atol=0.0, equal_nan=True))


def kernel_program(kir: KernelIR) -> KernelProgram:
    g = kir.body
    free = ir.free_variables([g])
    uses = tuple(v for v in (S, T) if v in free)
    if not uses:
        raise CompileError(f"{kir.source.filename}:{kir.body_line}: kernel {kir.source.name!r} does not "
                           "depend on its descriptor arguments (use norm(d - dp), sqdist(d, dp) or dot(d, dp))")
    hyper = [user_var(h) for h in kir.hyper_names]
    symbols = symbols_for([S, T, *hyper], positive=hyper, nonnegative=(S,))
    value = optimise([g], symbols, full=True, prefix="v", require_sympy=True,
                     origin=f"{kir.source.filename}:{kir.body_line}")  # _guard_value needs its sympy form
    value.outputs, value_guards = _guard_value(value, symbols, kir)  # first: a divergent value says why
    raw = {name: ad.derivative(g, list(wrt)) for name, (wrt, _) in COEFFICIENTS.items()}
    present = {name: expr is not ir.ZERO for name, expr in raw.items()}
    simplified = optimise(list(raw.values()), symbols, full=True, prefix="c", require_sympy=True,
                          origin=f"{kir.source.filename}:{kir.body_line}")
    coefficient_exprs, guards = _guard_origin(simplified, symbols, kir)
    simplified.outputs = coefficient_exprs
    return KernelProgram(value, simplified, present, value_guards + guards, uses)


def _guard_value(program: Program, symbols, kir: KernelIR):
    """The kernel value (energies, energy constraints) finite at s = 0: a removable 0/0
    replaced by its limit, or the kernel refused."""
    (expr,) = program.outputs
    s = symbols[S]
    full = _expand(expr, program, symbols)
    if not full.has(s) or not full.subs(s, 0).has(sp.zoo, sp.nan, sp.oo, -sp.oo):
        return [expr], []
    limit = limit_from_above(full, s)
    if limit is None or not limit.is_finite:
        tends = "has no limit sympy can find" if limit is None else f"tends to {limit}"
        raise DSLError(f"kernel {kir.source.name!r} is not finite at d = dp: its value {tends} "
                       "at s = |d - dp|^2 = 0", *_return_location(kir.source, kir.body_line),
                       "a kernel must be finite where its two descriptors are equal")
    guarded = ir.make("where", ir.make("gt", ir.var(S), ir.ZERO), expr, _limit_expr(limit, symbols))
    return [guarded], [f"value: removable singularity at s = 0 replaced by its limit {limit}"]


def _guard_origin(program: Program, symbols, kir: KernelIR):
    """Make every coefficient finite at s = 0 (delta = 0), or refuse the kernel."""
    s = symbols[S]
    where = f"{kir.source.filename}:{kir.body_line}"
    outputs, guards = [], []
    for (name, (_, delta_power)), expr in zip(COEFFICIENTS.items(), program.outputs):
        full = _expand(expr, program, symbols)
        at_zero = full.subs(s, 0)
        if not full.has(s) or not at_zero.has(sp.zoo, sp.nan, sp.oo, -sp.oo):
            outputs.append(expr)
            continue
        if name in MUST_BE_FINITE_AT_ZERO or delta_power == 0:
            limit = limit_from_above(full, s)
            if limit is None:
                raise CompileError(f"{where}: kernel {kir.source.name!r}: cannot decide whether {name} is "
                                   "finite at d = dp (s = |d - dp|^2 = 0); use numeric exponents and "
                                   "conditions that sympy can evaluate at s = 0")
            if not limit.is_finite:
                raise CompileError(f"{where}: kernel {kir.source.name!r} is not twice differentiable at "
                                   f"d = dp: {name} diverges at s = |d - dp|^2 = 0")
            guards.append(f"{name}: removable singularity at s = 0 replaced by its limit {limit}")
            outputs.append(ir.make("where", ir.make("gt", ir.var(S), ir.ZERO), expr,
                                   _limit_expr(limit, symbols)))
            continue
        scaled = limit_from_above(full * s ** sp.Rational(delta_power, 2), s)
        if scaled != 0:  # None (sympy cannot tell) is refused too
            tends = "cannot be shown to vanish" if scaled is None else f"tends to {scaled}"
            raise CompileError(f"{where}: kernel {kir.source.name!r} is not twice differentiable at "
                               f"d = dp: {name} * |delta|^{delta_power} {tends} at s = 0")
        guards.append(f"{name}: singular at s = 0 but multiplies delta^{delta_power}, whose product "
                      "vanishes there; set to 0 at s = 0")
        outputs.append(ir.make("where", ir.make("gt", ir.var(S), ir.ZERO), expr, ir.ZERO))
    return outputs, guards


def _expand(expr, program: Program, symbols):
    """The sympy form of a program output with its CSE temporaries substituted back."""
    from .simplify import to_sympy

    temps = {}
    syms = dict(symbols)
    for name, e in program.assignments:
        syms[name] = sp.Symbol(name)
    for name, e in program.assignments:
        (temps[sp.Symbol(name)],) = to_sympy([e], syms)
    (out,) = to_sympy([expr], syms)
    for name, _ in reversed(program.assignments):
        out = out.subs(sp.Symbol(name), temps[sp.Symbol(name)])
    return out


def _limit_expr(limit, symbols):
    from .simplify import from_sympy

    names = {sym: ir.var(name) for name, sym in symbols.items()}
    return from_sympy(limit, names)
