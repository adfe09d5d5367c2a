"""From parsed IR to the derivative programs the code generator emits.

Descriptors: one feature term and its gradient in the positions of the two
atoms it involves (reverse mode), simplified and CSE'd; and its second derivatives (the
curvature Hessian prediction adds term by term).

Kernels: a kernel is g(s, t) with s = |d - dp|^2 and t = d . dp, so its
descriptor-space derivatives are a scaled identity plus a few rank-one terms
over delta = d - dp, d and dp (compiler/middle/structure.py derives them).  Only the
partials of g those terms use need AD; a structurally zero partial drops its
terms.  Each partial is simplified with sympy and checked at s = 0 (every
diagonal block): a removable singularity must be gone, and a genuinely
singular partial is accepted only where every vector it multiplies vanishes
faster (the power of delta is read from the structure's terms).

Hessian prediction needs third derivatives: a separate program of the partials its results
use (structure.HESSIAN_EMITTED), each the AD derivative of its simplified parent, guarded the
same way.  A kernel that is not three times differentiable at d = dp (Matern 3/2) still
compiles; it has no Hessian program and ``hessian_refusal`` says why.  Training on Hessian
observations needs fourth derivatives (structure.OBSERVATION_EMITTED): a third program, built the
same way, or ``observation_refusal`` saying why there is none.
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from compiler.middle import ad, ir
from compiler.errors import CompileError, DSLError
from compiler.front.records import S, T, DescriptorIR, KernelIR, user_var
from compiler.middle.simplify import Program, limit_from_above, optimise, simplified, symbols_for
from compiler.middle.structure import (EMITTED, HESSIAN_EMITTED, OBSERVATION_EMITTED, KernelStructure, partial_index,
                                       partial_name)


@dataclass
class DescriptorProgram:
    term: Program            # outputs: value, d/d of each position variable of the space (ri_0 .. rj_2)
    symmetric: bool          # the term is unchanged when its atoms are swapped (term(i, j) == term(j, i))
    curvature: Program       # outputs: d2 term / dv_p dv_q for p <= q over the position variables (Hessians)

    @staticmethod
    def curvature_pairs(n_positions: int) -> list:
        """(p, q), p <= q: the order of curvature's outputs."""
        return [(p, q) for p in range(n_positions) for q in range(p, n_positions)]


@dataclass
class HessianProgram:
    """The partials Hessian prediction (third order) or Hessian observations (fourth order) need,
    simplified and guarded at s = 0."""
    coefficients: Program    # outputs: the partials named in `partials`, in that order
    partials: tuple
    guards: list


@dataclass
class KernelProgram:
    value: Program           # outputs: g
    coefficients: Program    # outputs: the partials of g named in `partials`, in that order
    guards: list             # human-readable notes on s = 0 handling
    uses: tuple              # subset of ('s', 't')
    structure: KernelStructure  # the kernel's descriptor-space derivatives, as IR over the partials
    partials: tuple          # names of the partials the emitted results use (structurally nonzero)
    hessian: HessianProgram | None = None  # None: the kernel is not three times differentiable
    hessian_refusal: str = ""  # why there is no Hessian program
    observation: HessianProgram | None = None  # None: the kernel is not four times differentiable
    observation_refusal: str = ""  # why there is no Hessian-observation program

    @property
    def present(self) -> dict:
        """Partial name -> True for each partial the generated code computes."""
        return {name: True for name in self.partials}


def descriptor_program(dir_: DescriptorIR) -> DescriptorProgram:
    body, space = dir_.body, dir_.over
    grads = ad.grad(body, space.position_vars)
    if all(g is ir.ZERO for g in grads):
        raise DSLError(f"descriptor {dir_.source.name!r} does not depend on the atom positions "
                       "(its gradient is zero), so it cannot learn forces", *_return_location(dir_.source, dir_.body_line),
                       "use the positions, e.g. norm(ri - rj)")
    names = list(space.position_vars) + list(dir_.z_args) + [user_var(p) for p in dir_.param_names]
    symbols = symbols_for(names, positive=dir_.z_args)
    # CSE only: sympy.simplify on position gradients costs seconds to minutes and, on
    # the library, never gave fewer operations than CSE alone.
    program = optimise([body] + grads, symbols, full=False, prefix="t")
    # second derivatives, for Hessian prediction: each from the first (reverse over reverse)
    pairs = DescriptorProgram.curvature_pairs(len(space.position_vars))
    second = [ad.grad(grads[p], [space.position_vars[q]])[0] for p, q in pairs]
    curvature = optimise(second, symbols, full=False, prefix="h")
    return DescriptorProgram(program, space.term_is_symmetric(body, [user_var(p) for p in dir_.param_names]),
                             curvature)


def _return_location(info, line):
    """(file, line, column) of the return statement on ``line`` of a DSL function."""
    text = info.excerpt(line)
    return info.filename, line, text.find("return") + 1 if "return" in text else 1


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
    structure = KernelStructure(g)
    simplified, guards = _partials_program(kir, symbols, structure, structure.partials, EMITTED, "twice")
    # Hessian prediction and Hessian observations are optional: a kernel that is only C^2 still
    # trains and predicts forces
    hessian, refusal = _optional_program(kir, symbols, structure, structure.hessian_partials, HESSIAN_EMITTED,
                                         "three times", "h")
    observation, observation_refusal = (None, refusal) if hessian is None else _optional_program(
        kir, symbols, structure, structure.observation_partials, OBSERVATION_EMITTED, "four times", "o")
    return KernelProgram(value, simplified, value_guards + guards, uses, structure, structure.partials,
                         hessian, refusal, observation, observation_refusal)


def _optional_program(kir, symbols, structure, partials, results, order, prefix):
    """(HessianProgram of ``partials``, "") or (None, why the kernel is not ``order`` differentiable)."""
    try:
        program, guards = _partials_program(kir, symbols, structure, partials, results, order, prefix=prefix,
                                            raw=_stepwise_partials(structure, symbols, partials))
    except CompileError as exc:
        return None, str(exc)
    return HessianProgram(program, partials, guards), ""


def _stepwise_partials(structure, symbols, names) -> list:
    """Each partial as our AD's derivative of its simplified parent (g_sss = d g_ss / ds with
    g_ss simplified first): the third derivative of a kernel taken from the body at once is too
    large for sympy to simplify (Matern 5/2's g_sss: 434 operations, against a dozen for d g_ss / ds),
    and unsimplified its singular terms at s = 0 do not cancel exactly."""
    memo = {"g": structure.body}

    def partial(name):
        if name not in memo:
            index = partial_index(name)
            parent = partial(partial_name(index[:-1]))
            memo[name] = simplified(ad.derivative(parent, [index[-1]]), symbols)
        return memo[name]
    return [partial(name) for name in names]


def _partials_program(kir, symbols, structure, partials, results, order, prefix="c", raw=None):
    """The partials of g that ``results`` use (``raw``: their IR, by default by AD of the body),
    simplified, CSE'd and made finite at s = 0 (or the kernel refused: it is not ``order``
    differentiable at d = dp)."""
    raw = raw if raw is not None else [structure.partial_expr(name) for name in partials]
    simplified = optimise(raw, symbols, full=True, prefix=prefix, require_sympy=True,
                          origin=f"{kir.source.filename}:{kir.body_line}")
    simplified.outputs, guards = _guard_origin(simplified, symbols, kir, structure, partials, results, order)
    return simplified, guards


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


def _guard_origin(program: Program, symbols, kir: KernelIR, structure: KernelStructure, partials, results,
                  order="twice"):
    """Make every partial finite at s = 0 (delta = 0), or refuse the kernel.  A partial that
    multiplies delta^0 somewhere in ``results`` (the identity coefficient, a dp d^T term) must
    be finite."""
    s = symbols[S]
    where = f"{kir.source.filename}:{kir.body_line}"
    outputs, guards = [], []
    for name, expr in zip(partials, program.outputs):
        delta_power = structure.delta_power(name, results)
        full = _expand(expr, program, symbols)
        at_zero = full.subs(s, 0)
        if not full.has(s) or not at_zero.has(sp.zoo, sp.nan, sp.oo, -sp.oo):
            outputs.append(expr)
            continue
        if delta_power == 0:
            limit = limit_from_above(full, s)
            if limit is None:
                raise CompileError(f"{where}: kernel {kir.source.name!r}: cannot decide whether {name} is "
                                   "finite at d = dp (s = |d - dp|^2 = 0); use numeric exponents and "
                                   "conditions that sympy can evaluate at s = 0")
            if not limit.is_finite:
                raise CompileError(f"{where}: kernel {kir.source.name!r} is not {order} differentiable at "
                                   f"d = dp: {name} diverges at s = |d - dp|^2 = 0")
            guards.append(f"{name}: removable singularity at s = 0 replaced by its limit {limit}")
            outputs.append(ir.make("where", ir.make("gt", ir.var(S), ir.ZERO), expr,
                                   _limit_expr(limit, symbols)))
            continue
        scaled = limit_from_above(full * s ** sp.Rational(delta_power, 2), s)
        if scaled != 0:  # None (sympy cannot tell) is refused too
            tends = "cannot be shown to vanish" if scaled is None else f"tends to {scaled}"
            raise CompileError(f"{where}: kernel {kir.source.name!r} is not {order} differentiable at "
                               f"d = dp: {name} * |delta|^{delta_power} {tends} at s = 0")
        guards.append(f"{name}: singular at s = 0 but multiplies delta^{delta_power}, whose product "
                      "vanishes there; set to 0 at s = 0")
        outputs.append(ir.make("where", ir.make("gt", ir.var(S), ir.ZERO), expr, ir.ZERO))
    return outputs, guards


def _expand(expr, program: Program, symbols):
    """The sympy form of a program output with its CSE temporaries substituted back."""
    from compiler.middle.simplify import to_sympy

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
    from compiler.middle.simplify import from_sympy

    names = {sym: ir.var(name) for name, sym in symbols.items()}
    return from_sympy(limit, names)
