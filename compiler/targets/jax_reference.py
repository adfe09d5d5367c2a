"""The same IR lowered to jax.numpy: the independent reference in tests.

Only values are lowered (no gdmlc derivatives, no sympy): tests differentiate
these functions with JAX's own AD, so a disagreement points at gdmlc's AD,
simplification or code generation.  JAX is imported lazily; it is a test
dependency, never a run-time one.
"""
from __future__ import annotations

import numpy as np

from compiler.middle import ir
from compiler.targets.spelling import spell
from compiler.middle.primitives import namespace as namespace_for
from compiler.front.records import S, T, DescriptorIR, KernelIR, user_var


def _jax():
    try:
        import jax
        import jax.numpy as jnp
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the JAX reference needs jax: pip install -e .[test]") from exc
    jax.config.update("jax_enable_x64", True)
    return jax, jnp


def _function_text(name, args, body, prologue=()):
    """Source of ``def name(args): ...; return body`` with one line per shared node."""
    uses = {}
    for node in ir.topological([body]):
        for a in node.args:
            uses[id(a)] = uses.get(id(a), 0) + 1
    lines = [f"def {name}({', '.join(args)}):", *[f"    {p}" for p in prologue]]
    rename, k = {}, 0
    for node in ir.topological([body]):
        if node.op in ("const", "var"):
            continue
        rebuilt = ir.make(node.op, *[rename.get(id(a), a) for a in node.args])
        if uses.get(id(node), 0) > 1:
            lines.append(f"    u{k} = {spell(rebuilt, 'jax')}")
            rename[id(node)] = ir.var(f"u{k}")
            k += 1
        else:
            rename[id(node)] = rebuilt
    lines.append(f"    return {spell(rename.get(id(body), body), 'jax')}")
    return "\n".join(lines) + "\n"


def descriptor_function(dir_: DescriptorIR, params_table: np.ndarray):
    """``D(R, z=None) -> (F,)`` in jax.numpy, features ordered as the Numba kernels."""
    jax, jnp = _jax()
    space = dir_.over
    args = [*space.position_vars, *space.z_vars] + [user_var(p) for p in dir_.param_names]
    source = _function_text("term", args, dir_.body)
    namespace = {**namespace_for("jax"), "jnp": jnp}  # the table's jax spellings' names
    exec(compile(source, f"<gdmlc jax {dir_.source.name}>", "exec"), namespace)
    term = namespace["term"]
    table = jnp.asarray(params_table)

    def descriptor(R, z=None):
        n = R.shape[0]
        atoms = space.jax_sites(n)  # per atom of the term: (sites, terms per site, 1) indices
        zf = jnp.ones(n) if z is None else jnp.asarray(z, dtype=jnp.float64)
        gathered = {}
        for a, z_name, index in zip(space.atoms, space.z_vars, atoms):
            gathered.update({name: R[index, k] for k, name in enumerate(space.position_names(a))})
            gathered[z_name] = zf[index]
        params = {user_var(p): table[:, k] for k, p in enumerate(dir_.param_names)}
        values = term(**gathered, **params)
        values = jnp.broadcast_to(values, atoms[0].shape[:-1] + (table.shape[0],))  # (sites, terms, channels)
        if not dir_.layout.elements:
            return values.sum(axis=1).reshape(-1)
        # element blocks: each term counts in the block of its atoms' elements (cutoffs are not
        # applied here: the term itself vanishes beyond them, which is what the Numba loops rely on)
        weights = space.jax_block_weights(tuple(zf[index[..., 0]] for index in atoms), dir_.layout)
        return jnp.einsum("stb,stc->sbc", weights.astype(jnp.float64), values).reshape(-1)

    descriptor.source = source
    return descriptor


def combined_descriptor_function(parts):
    """``D(R, z=None)`` of a combination (compiler.dsl.combine): each atom's features of every
    part, part after part, from the parts' own JAX functions."""
    _, jnp = _jax()

    def descriptor(R, z=None):
        n = R.shape[0]
        return jnp.concatenate([part(R, z).reshape(n, -1) for part in parts], axis=1).reshape(-1)

    return descriptor


def kernel_function(kir: KernelIR):
    """``k(d, dp, **hyper)`` in jax.numpy, with s and t computed from whole vectors;
    ``hyper`` by the DSL's names (the lowered text uses the IR's prefixed ones)."""
    jax, jnp = _jax()
    source = _function_text("kernel", ["d", "dp", *map(user_var, kir.hyper_names)], kir.body,
                            prologue=[f"{S} = jnp.sum((d - dp) ** 2)", f"{T} = jnp.sum(d * dp)"])
    namespace = {**namespace_for("jax"), "jnp": jnp}  # the table's jax spellings' names, and the prologue's
    exec(compile(source, f"<gdmlc jax {kir.source.name}>", "exec"), namespace)
    lowered = namespace["kernel"]

    def kernel(d, dp, /, **hyper):  # /: a hyperparameter may be named d
        return lowered(d, dp, **{user_var(name): value for name, value in hyper.items()})

    kernel.source = source
    return kernel


def symmetric_kernel(descriptor, kernel):
    """k(x, x', perms, z, hyper) = sum_P k(D(x), D(x'[perm])): the symmetric kernel of geometries."""
    def energy_kernel(x, xp, perms, z, hyper):
        d = descriptor(x, z)
        return sum(kernel(d, descriptor(xp[np.asarray(p)], z), **hyper) for p in perms)

    return energy_kernel


def force_block_function(descriptor, kernel):
    """C(x, x') = sum_P d/dx d/dx'^T k(D(x), D(x'[perm])) by JAX AD, forward over forward:
    reverse mode would multiply the NaN derivative of a where()'s unselected branch by 0."""
    jax, jnp = _jax()

    energy_kernel = symmetric_kernel(descriptor, kernel)

    def block(x, xp, perms, z, hyper):
        x, xp = jnp.asarray(x), jnp.asarray(xp)
        n = x.shape[0]
        C = jax.jacfwd(jax.jacfwd(energy_kernel, argnums=0), argnums=1)(x, xp, perms, z, hyper)
        return np.asarray(C).reshape(3 * n, 3 * n)

    return block


def hessian_observation_blocks_function(descriptor, kernel):
    """(Cov(H(x), F(x')), Cov(H(x), H(x')), Cov(H(x), E(x'))) by JAX AD, forward mode throughout
    (as force_block_function): with k the symmetric kernel, d2/dx2 (-d/dx') k, shape (3N, 3N, 3N),
    d2/dx2 d2/dx'2 k, shape (3N, 3N, 3N, 3N), and d2/dx2 k, shape (3N, 3N) (training on Hessians)."""
    jax, jnp = _jax()

    energy_kernel = symmetric_kernel(descriptor, kernel)

    def blocks(x, xp, perms, z, hyper):
        x, xp = jnp.asarray(x), jnp.asarray(xp)
        n3 = 3 * x.shape[0]
        query_hessian = jax.jacfwd(jax.jacfwd(energy_kernel, argnums=0), argnums=0)
        hf = -jax.jacfwd(query_hessian, argnums=1)(x, xp, perms, z, hyper)
        hh = jax.jacfwd(jax.jacfwd(query_hessian, argnums=1), argnums=1)(x, xp, perms, z, hyper)
        he = query_hessian(x, xp, perms, z, hyper)
        return (np.asarray(hf).reshape(n3, n3, n3), np.asarray(hh).reshape(n3, n3, n3, n3),
                np.asarray(he).reshape(n3, n3))

    return blocks


def local_force_block_function(descriptor, kernel):
    """C(x, x') of the local kernel sum_ij [z_i = z'_j] k(d_i(x), d_j(x')) by JAX AD (forward over
    forward, as force_block_function); x and x' may have different atoms."""
    jax, jnp = _jax()

    def energy_kernel(x, xp, z, zp, hyper):
        sites, sites_p = descriptor(x, z).reshape(len(z), -1), descriptor(xp, zp).reshape(len(zp), -1)
        pairs = [(i, j) for i in range(len(z)) for j in range(len(zp)) if z[i] == zp[j]]
        return sum(kernel(sites[i], sites_p[j], **hyper) for i, j in pairs)

    def block(x, xp, z, zp, hyper):
        z, zp = [float(v) for v in z], [float(v) for v in zp]
        C = jax.jacfwd(jax.jacfwd(energy_kernel, argnums=0), argnums=1)(jnp.asarray(x), jnp.asarray(xp), z, zp, hyper)
        return np.asarray(C).reshape(3 * len(z), 3 * len(zp))

    return block


def prediction_energy_function(descriptor, kernel, DT, BT, WT=None, hyper=None):
    """E(R, z=None) = sum_m [-grad_dp k(D(R), dt_m) . bt_m + w_m k(D(R), dt_m)]: a trained
    model's energy (unscaled, no constant) from the training rows DT, BT (MP, F) and energy
    weights WT (MP,) by JAX AD, forward mode throughout (see force_block_function); its
    jax.hessian is the reference of Hessian prediction."""
    jax, jnp = _jax()
    hyper = hyper or {}
    WT = jnp.zeros(len(DT)) if WT is None else jnp.asarray(WT)
    def one(d, dt, bt, w):  # grad_dp k . bt as k's derivative along bt: memory F, not F^2 (FCHL19: 3600 features)
        along_bt = jax.jvp(lambda dp: kernel(d, dp, **hyper), (dt,), (bt,))[1]
        return -along_bt + w * kernel(d, dt, **hyper)

    terms = jax.vmap(one, in_axes=(None, 0, 0, 0))

    def energy(R, z=None):
        return terms(descriptor(R, z), jnp.asarray(DT), jnp.asarray(BT), WT).sum()

    return energy
