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
    """Largest |value - reference| over the largest |reference|; inf when either side has a
    non-finite entry (a plain max would drop a NaN: max(0.0, nan) is 0.0)."""
    value, reference = np.asarray(value, float), np.asarray(reference, float)
    if nonfinite_entry(value, reference) is not None:
        return float("inf")
    scale = max(np.abs(reference).max(), 1e-300)
    return float(np.abs(value - reference).max() / scale)


def nonfinite_entry(value, reference):
    """'non-finite at index ...: ours X, JAX Y' for the first entry where either array is not
    finite, else None."""
    value, reference = np.broadcast_arrays(np.asarray(value, float), np.asarray(reference, float))
    bad = ~(np.isfinite(value) & np.isfinite(reference))
    if not bad.any():
        return None
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    return f"non-finite at index {index}: ours {float(value[index])!r}, JAX {float(reference[index])!r}"


def check_model(model, n_atoms=6, trials=3, seed=0, sigma=None, notes=None):
    """Max relative error of each entry point against JAX: {name: error}.  An entry point whose
    output or reference has a non-finite entry gets error inf, and ``notes`` (a dict, if given)
    the first such entry.  References are forward-mode JAX derivatives: reverse mode turns the
    unselected branch of a where() into 0 * NaN (e.g. a cutoff (1 - x)**1.5 beyond x = 1)."""
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(seed)
    desc, kern = model.descriptor, model.kernel
    z = np.array([6, 6, 8, 1, 1, 1, 1, 1, 1, 7, 6, 1] * 4)[:n_atoms]
    D_jax, k_jax = desc.jax_function(), kern.jax_function()
    errors = {}

    def track(name, value, reference):
        error = relative_error(value, reference)
        if notes is not None and name not in notes and nonfinite_entry(value, reference):
            notes[name] = nonfinite_entry(value, reference)
        errors[name] = max(errors.get(name, 0.0), error)

    perms = np.array([np.arange(n_atoms), _swap_alike(z)])
    for _ in range(trials):
        x, xp = random_geometry(rng, n_atoms), random_geometry(rng, n_atoms)
        for geometry in (x, xp):
            track("descriptor values", desc.values(geometry, z), np.asarray(D_jax(jnp.asarray(geometry), z)))
            track("descriptor Jacobian", desc.jacobian(geometry, z),
                  np.asarray(jax.jacfwd(D_jax)(jnp.asarray(geometry), z)))
        d, dp = desc.values(x, z), desc.values(xp, z)
        if not (np.all(np.isfinite(d)) and np.all(np.isfinite(dp))):
            continue  # failed above; the kernel's entry points refuse non-finite descriptors
        # sigma of the order of |d - dp|, but not equal to it: r = |d - dp| / sigma = 1 would sit exactly
        # on the edge of a kernel of compact support (where(r < 1, ...)), where the two sides may differ
        scale = sigma or max(1.37 * float(np.linalg.norm(d - dp)), 1e-3)
        hyper = {name: scale if name == kern.sigma_name else kern.ir.hyper_defaults.get(name, 1.0)
                 for name in kern.hyper_names}
        track("kernel value", kern.value(d, dp, **hyper), float(k_jax(d, dp, **hyper)))
        track("kernel gradient", kern.gradient(d, dp, **hyper), np.asarray(jax.jacfwd(k_jax)(d, dp, **hyper)))
        v = rng.normal(size=d.shape)
        # (d2k / dd ddp^T) v as the d-gradient of k's derivative along v in dp, all forward mode:
        # memory F^2, not the F^3 of a nested jacfwd (FCHL19's 3600 features)
        along_v = lambda d_: jax.jvp(lambda dp_: k_jax(d_, dp_, **hyper), (dp,), (v,))[1]  # noqa: E731
        hvp = jax.jacfwd(along_v)(d)
        track("kernel Hessian-vector product", kern.hessian_vector(d, dp, v, **hyper), np.asarray(hvp))
        track("force block", model.force_block(x, xp, z=z, **hyper),
              model.jax_force_block(x, xp, z=z, **hyper))
        if desc.maps_atom_permutations:
            track("force block, symmetric (2 permutations)", model.force_block(x, xp, perms, z=z, **hyper),
                  model.jax_force_block(x, xp, perms, z=z, **hyper))
        if model.can_be_local:  # against a geometry with one atom fewer, its elements in another order
            zs = rng.permutation(z[:-1])
            track("local force block (different atoms)", model.local_force_block(x, xp[:-1], z, zs, **hyper),
                  model.jax_local_force_block(x, xp[:-1], z, zs, **hyper))
        W = rng.normal(size=d.shape)
        curvature = np.zeros((3 * n_atoms, 3 * n_atoms))
        desc.add_curvature(x, z, W, curvature)
        track("descriptor curvature", curvature,
              np.asarray(jax.jacfwd(jax.jacfwd(lambda r: jnp.dot(W, D_jax(r, z))))(jnp.asarray(x)))
              .reshape(curvature.shape))
        track("prediction (forces)", *_prediction(model, rng, x, z, perms, hyper))
        if model.kernel.metadata.get("hessian_columns") is not None:
            track("prediction (Hessian)", *_prediction_hessian(model, rng, x, z, perms, hyper))
        if model.kernel.metadata.get("observation_columns") is not None:
            track("Hessian observations (Hessian of their energy)", *_observation_hessian(model, rng, x, z, hyper))
    return errors


def _swap_alike(z):
    """The permutation exchanging the last two atoms of one species (identity if all differ)."""
    p = np.arange(len(z))
    for species in np.unique(z):
        same = np.flatnonzero(z == species)
        if len(same) >= 2:
            p[same[-2:]] = same[-2:][::-1]
            return p
    return p


def _training_rows(model, rng, n, z, perms):
    """Two random training geometries, random coefficients alpha, and their permuted rows
    DT, BT (as a trained model's prediction reads them)."""
    train = np.stack([random_geometry(rng, n) for _ in range(2)])
    alpha = rng.normal(size=train.shape)
    fperms = model.feature_permutations(perms, n)
    D, JAC, _ = model.descriptor.evaluate(train, z)
    B = model.contract(JAC, alpha)
    return train, alpha, D[:, fperms].reshape(-1, D.shape[1]), B[:, fperms].reshape(-1, D.shape[1])


def _prediction(model, rng, x, z, perms, hyper):
    """Forces at x from two training geometries through the contraction path,
    and the same from dense JAX blocks."""
    n = x.shape[0]
    desc = model.descriptor
    if not desc.maps_atom_permutations:
        perms = perms[:1]
    train, alpha, DT, BT = _training_rows(model, rng, n, z, perms)
    DQ, JACQ, _ = desc.evaluate(x, z)
    # the generated fused loop; the runtime's faster schedules (runtime/prediction.py) are
    # tested against it in tests/test_compiler_blocks.py
    _, F = model.predict_parts_direct(DQ, JACQ, DT, BT, model.kernel.hyper(**hyper), n)
    reference = sum(model.jax_force_block(x, t, perms, z=z, **hyper) @ a.ravel() for t, a in zip(train, alpha))
    return F[0].ravel(), reference


def _prediction_hessian(model, rng, x, z, perms, hyper):
    """d2E/dx2 at x of a joint energy+force model with random rows (the generated
    hessian_coefficients, project_rows and add_descriptor_curvature, summed by
    compiler/build/hessian.py), and jax.hessian of the JAX lowering of the same energy."""
    import jax

    from compiler.build.hessian import predict_hessians
    from compiler.targets.jax_reference import prediction_energy_function

    if not model.descriptor.maps_atom_permutations:
        perms = perms[:1]
    _, _, DT, BT = _training_rows(model, rng, x.shape[0], z, perms)
    WT = rng.normal(size=len(DT))
    h = model.kernel.hyper(**hyper)
    DQ, JACQ, _ = model.descriptor.evaluate(x, z)
    H = predict_hessians(model, x[None], z, DQ, JACQ, DT, BT, WT, h)[0]
    energy = prediction_energy_function(model.descriptor.jax_function(), model.kernel.jax_function(), DT, BT, WT,
                                        dict(zip(model.kernel.hyper_names, h)))
    reference = jax.jacfwd(jax.jacfwd(lambda r: energy(r, z)))(x)
    return H, np.asarray(reference).reshape(H.shape)


def _observation_hessian(model, rng, x, z, hyper):
    """d2E/dx2 at x of the energy of Hessian-observation pieces, E = sum_m beta_m^T (d2k/ddp2)
    gamma_m at random rows (the generated observation_coefficients summed by
    compiler/build/hessian.py), and jax.hessian of the same energy written with JAX's second
    directional derivative of the kernel in dp."""
    import jax

    from compiler.build.hessian import HessianSide, predict_hessians

    _, _, DT, _ = _training_rows(model, rng, x.shape[0], z, np.arange(x.shape[0])[None])
    BT, GT = rng.normal(size=DT.shape), rng.normal(size=DT.shape)
    h = model.kernel.hyper(**hyper)
    DQ, JACQ, _ = model.descriptor.evaluate(x, z)
    zeros = np.zeros_like(DT)  # no force pieces: the Hessian is the observation pieces' alone
    H = predict_hessians(model, x[None], z, DQ, JACQ, DT, zeros, None, h,
                         observations=HessianSide(DT, BT, None, GT))[0]
    descriptor, kernel = model.descriptor.jax_function(), model.kernel.jax_function()
    named = dict(zip(model.kernel.hyper_names, h))

    def energy(r):
        d = descriptor(r, z)
        total = 0.0
        for dp, beta, gamma in zip(DT, BT, GT):
            along_gamma = lambda q: jax.jvp(lambda p: kernel(d, p, **named), (q,), (gamma,))[1]  # noqa: E731
            total = total + jax.jvp(along_gamma, (dp,), (beta,))[1]
        return total

    return H, np.asarray(jax.jacfwd(jax.jacfwd(energy))(x)).reshape(H.shape)
