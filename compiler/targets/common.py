"""Text both Numba targets (CPU and CUDA) write the same way: quoted DSL source, parameter
unpacking, the descriptor's site term, and the names the kernel structure's terms take in
the generated loops."""
from __future__ import annotations

from compiler.front.records import DescriptorIR, user_var
from compiler.middle.analysis import DescriptorProgram, KernelProgram
from compiler.middle.structure import Matrix
from compiler.targets.spelling import program_lines, spell_term


def quote_source(info) -> list:
    """The DSL function as comment lines, each with its file and line."""
    lines = [f"# DSL source: {info.filename}:{info.first_line}"]
    for k, text in enumerate(info.lines):
        lines.append(f"#   {info.first_line + k:4d} | {text.rstrip()}")
    return lines


def unpack_lines(names, array) -> list:
    """`u_name = array[k]`: the DSL's parameters or hyperparameters under their IR names."""
    return [f"    {user_var(name)} = {array}[{k}]" for k, name in enumerate(names)]


def site_term_lines(dir_: DescriptorIR, prog: DescriptorProgram, decorator: str, style: str) -> list:
    """The descriptor's site_term (one feature term and its position gradient), quoted source
    first, under ``decorator`` and spelled from the primitive table's ``style`` column."""
    space = dir_.over
    out_names = ["value"] + [f"d_{v}" for v in space.position_vars]
    args = ", ".join([*space.position_vars, *space.z_vars, "params"])
    lines = [*quote_source(dir_.source), decorator, f"def site_term({args}):",
             f'    """One feature term of {dir_.source.name} and its gradient in {" and ".join(space.position_args)} '
             f'(from {dir_.source.filename}:{dir_.body_line})."""']
    lines += unpack_lines(dir_.param_names, "params")
    lines += program_lines(prog.term, style, out_names)
    lines += [f"    return {', '.join(out_names)}", "", ""]
    return lines


def layout_lines(dir_: DescriptorIR, decorator: str) -> list:
    """The constants and helpers the space's loops read for a declared layout: ELEMENTS,
    element_block and pair_block (element blocks), CUTOFF_SQ (cutoff)."""
    layout, space = dir_.layout, dir_.over
    lines = []
    if layout.elements:
        n = len(layout.elements)
        lines += [f"ELEMENTS = {tuple(layout.elements)!r}  # @descriptor(elements=...): one block of features "
                  "per element (pair)",
                  f"N_BLOCKS = {layout.n_blocks(space)}", "", "",
                  decorator, "def element_block(z):",
                  '    """The index of atomic number z in ELEMENTS (the runtime checks every atom is there)."""',
                  "    for b in range(len(ELEMENTS)):",
                  "        if z == ELEMENTS[b]:",
                  "            return b",
                  "    return 0", "", ""]
        if "pair_block" in space.block_code(layout):
            lines += [decorator, "def pair_block(a, b):",
                      f'    """The block of the unordered element pair (a, b): (0, 0), (0, 1), ..., ({n - 1}, {n - 1})."""',
                      "    lo = min(a, b)",
                      "    hi = max(a, b)",
                      f"    return lo * {n} - lo * (lo - 1) // 2 + hi - lo", "", ""]
    if layout.cutoff is not None:
        lines += [f"CUTOFF_SQ = {layout.cutoff ** 2!r}  # @descriptor(cutoff={layout.cutoff!r}): terms with a "
                  "neighbour this far (squared) contribute nothing", "", ""]
    return lines


def site_curvature_lines(dir_: DescriptorIR, prog: DescriptorProgram, decorator: str, style: str) -> list:
    """site_curvature: the second derivatives of one feature term in its position variables
    (upper triangle, h_p_q for p <= q), for Hessian prediction."""
    space = dir_.over
    pairs = prog.curvature_pairs(len(space.position_vars))
    out_names = [f"h_{p}_{q}" for p, q in pairs]
    args = ", ".join([*space.position_vars, *space.z_vars, "params"])
    lines = [decorator, f"def site_curvature({args}):",
             f'    """Second derivatives of site_term in ({", ".join(space.position_vars)}): h_p_q for p <= q."""']
    lines += unpack_lines(dir_.param_names, "params")
    lines += program_lines(prog.curvature, style, out_names)
    lines += [f"    return {', '.join(out_names)}", "", ""]
    return lines


def partials_tuple(prog: KernelProgram, program: str | None = None) -> str:
    """The partials kernel_coefficients (``program`` "hessian" or "observation":
    kernel_coefficients_hessian or _observation) returns, as a tuple to return or unpack
    (`a, b` or `a,`)."""
    names = getattr(prog, program).partials if program else prog.partials
    return ", ".join(names) + ("," if len(names) == 1 else "")


def rank_one_terms(hessian: Matrix):
    """(coefficient expression, left vector, right vector) of H's rank-one part: the structure's
    terms c u w^T, with u and w named u_<basis> and w_<basis> in the generated loops."""
    return [(coef, f"u_{u}", f"w_{w}") for (u, w), coef in hessian.terms.items()]


def describe_terms(terms) -> str:
    """The rank-one terms for a docstring: `coefficient u_delta w_delta^T; ...`."""
    return "; ".join(f"{spell_term(c)} {u} {w}^T" for c, u, w in terms) or "none"


# Templates index the structure's h_beta = c_identity beta + c_delta delta + c_dp dp by these
# names; a kernel's H beta has no other terms (grad_d k is along delta and dp).
H_BETA_NAMES = {"beta": "c_identity", "delta": "c_delta", "dp": "c_dp"}


def h_beta_coefficients(prog: KernelProgram) -> dict:
    """c_identity, c_delta, c_dp (by name) as expressions from the structure; ir.ZERO if absent."""
    h_beta = prog.structure.h_beta
    extra = set(h_beta.terms) - set(H_BETA_NAMES)
    if extra:
        raise AssertionError(f"H beta has terms along {sorted(extra)}, which the templates do not handle")
    return {name: h_beta[b] for b, name in H_BETA_NAMES.items()}


def h_beta_spelled(prog: KernelProgram, style: str) -> dict:
    """h_beta_coefficients as source text in ``style``."""
    return {name: spell_term(c, style) for name, c in h_beta_coefficients(prog).items()}
