"""Compare every generated entry point with the JAX reference on random input.

Used by ``gdmlc check``.  The reference is JAX's own AD applied to the JAX
lowering of the same DSL source, so gdmlc's AD, simplification and code
generation are all under test; only the parser is shared.
"""
from __future__ import annotations

import numpy as np

TOLERANCE = 1e-10


def random_geometry(rng, n_atoms, min_distance=0.9, scale=None):
    """Atoms in a ball, at least ``min_distance`` Å apart (rejection sampling)."""
    scale = scale or 0.9 * n_atoms ** (1 / 3)
    for _ in range(10000):
        x = rng.normal(size=(n_atoms, 3)) * scale
        dist = np.linalg.norm(x[:, None] - x[None], axis=-1) + np.eye(n_atoms) * 1e9
        if dist.min() >= min_distance:
            return x
    raise RuntimeError("could not place atoms; lower min_distance")


def relative_error(value, reference):
    value, reference = np.asarray(value, float), np.asarray(reference, float)
    scale = max(np.abs(reference).max(), 1e-300)
    return float(np.abs(value - reference).max() / scale)


def check_model(model, n_atoms=6, trials=3, seed=0, sigma=None):
    """Max relative error of each entry point against JAX: {name: error}."""
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(seed)
    desc, kern = model.descriptor, model.kernel
    z = np.array([6, 6, 8, 1, 1, 1, 1, 1, 1, 7, 6, 1] * 4)[:n_atoms]
    D_jax, k_jax = desc.jax_function(), kern.jax_function()
    errors = {}

    def track(name, value, reference):
        errors[name] = max(errors.get(name, 0.0), relative_error(value, reference))

    perms = np.array([np.arange(n_atoms), _swap(n_atoms, 3, 4)])  # H atoms 3 and 4
    for _ in range(trials):
        x, xp = random_geometry(rng, n_atoms), random_geometry(rng, n_atoms)
        d_ref = np.asarray(D_jax(jnp.asarray(x), z))
        track("descriptor values", desc.values(x, z), d_ref)
        track("descriptor Jacobian", desc.jacobian(x, z),
              np.asarray(jax.jacfwd(D_jax)(jnp.asarray(x), z)))
        d, dp = desc.values(x, z), desc.values(xp, z)
        scale = sigma or max(float(np.linalg.norm(d - dp)), 1e-3)
        hyper = {name: scale if name == "sigma" else kern.ir.hyper_defaults.get(name, 1.0)
                 for name in kern.hyper_names}
        track("kernel value", kern.value(d, dp, **hyper), float(k_jax(d, dp, **hyper)))
        track("kernel gradient", kern.gradient(d, dp, **hyper), np.asarray(jax.grad(k_jax)(d, dp, **hyper)))
        v = rng.normal(size=d.shape)
        hvp = jax.jacfwd(jax.grad(k_jax, argnums=0), argnums=1)(d, dp, **hyper) @ v
        track("kernel Hessian-vector product", kern.hessian_vector(d, dp, v, **hyper), np.asarray(hvp))
        track("force block", model.force_block(x, xp, z=z, **hyper),
              model.jax_force_block(x, xp, z=z, **hyper))
        if desc.symmetric or desc.over == "neighbours":
            track("force block, symmetric (2 permutations)", model.force_block(x, xp, perms, z=z, **hyper),
                  model.jax_force_block(x, xp, perms, z=z, **hyper))
        track("prediction (forces)", *_prediction(model, rng, x, z, perms, hyper))
    return errors


def _swap(n, a, b):
    p = np.arange(n)
    p[[a, b]] = p[[b, a]]
    return p


def _prediction(model, rng, x, z, perms, hyper):
    """Forces at x from two training geometries through the contraction path,
    and the same from dense JAX blocks."""
    n = x.shape[0]
    desc = model.descriptor
    if not (desc.symmetric or desc.over == "neighbours"):
        perms = perms[:1]
    train = np.stack([random_geometry(rng, n) for _ in range(2)])
    alpha = rng.normal(size=train.shape)
    fperms = model.feature_permutations(perms, n)
    D, JAC, _ = desc.evaluate(train, z)
    B = model.contract(JAC, alpha)
    DT = D[:, fperms].reshape(-1, D.shape[1])
    BT = B[:, fperms].reshape(-1, D.shape[1])
    DQ, JACQ, _ = desc.evaluate(x, z)
    _, F = model.predict_parts(DQ, JACQ, DT, BT, model.kernel.hyper(**hyper), n)
    reference = sum(model.jax_force_block(x, t, perms, z=z, **hyper) @ a.ravel() for t, a in zip(train, alpha))
    return F[0].ravel(), reference
