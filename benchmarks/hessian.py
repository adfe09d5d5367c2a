"""Hessian prediction against force prediction, and against JAX's jax.hessian, same run.

    python -m benchmarks.hessian --molecules ethanol aspirin --m 1000 --batches 1 100

For each molecule: M training frames of rMD17 split 01 (the embedded ethanol data without
../shared) with their permutational symmetries (found on the first 200 frames) and random
coefficients alpha: the cost of prediction does not depend on alpha's values, and aspirin's
dense training system at M = 1000 (29.6 GiB) does not fit this machine.  Measured per geometry
(median of repeats, each call >= 0.3 s of work):

* gdmlc forces: ``GDML.predict(R)``;
* gdmlc Hessians: ``GDML.predict(R, hessian=True)`` (energies, forces and Hessians);
* JAX: ``jax.jit(jax.vmap(jax.hessian(E)))`` of the JAX lowering of the same model
  (compiler/targets/jax_reference.prediction_energy_function), compile excluded.

Prints a table and writes JSON with --json.
"""
from __future__ import annotations

import argparse
import json
import time
from statistics import median

import numpy as np

from benchmarks.datasets import load_split, molecule_files, training_indices, DEFAULT_DATA_DIR
from benchmarks.environment import machine, versions


def model_with_random_coefficients(train, m, sigma, seed=0):
    """A GDML model on M training frames with random alpha (an installed TrainedState)."""
    from runtime import symmetry
    from runtime.model import GDML
    from runtime.trained import TrainedState

    frames = training_indices(len(train.R), m, seed)
    R, z = train.R[frames], train.z
    perms = symmetry.find_permutations(R[:200], z, progress=False)
    model = GDML(sigma=sigma, symmetries=perms, progress=False)
    D, JAC = model.backend.evaluate(R, z)
    alpha = np.random.default_rng(seed).normal(size=R.shape)
    model.state = TrainedState(z=z, R_train=R, perms=perms, alpha=alpha, D_train=D,
                               B_train=model.backend.contract(JAC, alpha), energy_weights=None, sigma=sigma,
                               lam_used=1e-10, label_scale=1.0, energy_constant=None)
    return model


def seconds_per_call(call, repeats=5, min_time=0.3):
    call()  # warm (compiles on the first use)
    t = time.perf_counter()
    call()
    once = max(time.perf_counter() - t, 1e-6)
    n = max(1, int(min_time / once))
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(n):
            call()
        samples.append((time.perf_counter() - t) / n)
    return median(samples)


def jax_hessian_call(model, R):
    import jax
    import jax.numpy as jnp

    from compiler.targets.jax_reference import prediction_energy_function

    jax.config.update("jax_enable_x64", True)
    training, kernel = model._training, model.model.kernel
    energy = prediction_energy_function(model.model.descriptor.jax_function(), kernel.jax_function(), training.DT,
                                        training.BT, None, dict(zip(kernel.hyper_names, training.hyper)))
    hessians = jax.jit(jax.vmap(jax.hessian(lambda r: energy(r, model.z))))
    Rj = jnp.asarray(R)
    return (lambda: hessians(Rj).block_until_ready()), hessians


def run(molecules, m, batches, sigma, repeats, with_jax, data_dir):
    rows = []
    for molecule in molecules:
        files = molecule_files(data_dir, molecule)
        if files is None:
            print(f"{molecule}: no data, skipped")
            continue
        train, test = load_split(files, "new" if files["kind"] == "rmd17" else "default")
        model = model_with_random_coefficients(train, m, sigma)
        for b in batches:
            R = np.ascontiguousarray(test.R[:b])
            forces = seconds_per_call(lambda: model.predict(R), repeats)
            hessians = seconds_per_call(lambda: model.predict(R, hessian=True), repeats)
            row = {"molecule": molecule, "n_atoms": int(train.R.shape[1]), "M": m, "perms": len(model.perms),
                   "batch": b, "forces_s_per_geometry": forces / b, "hessian_s_per_geometry": hessians / b,
                   "hessian_over_forces": hessians / forces}
            if with_jax:
                call, hessians_jax = jax_hessian_call(model, R)
                jax_seconds = seconds_per_call(call, repeats)
                _, _, H = model.predict(R, hessian=True)
                reference = np.asarray(hessians_jax(R)).reshape(H.shape)
                row.update(jax_s_per_geometry=jax_seconds / b, jax_over_gdmlc_hessian=jax_seconds / hessians,
                           max_relative_difference_to_jax=float(np.abs(H - reference).max() / np.abs(reference).max()))
            rows.append(row)
            print(json.dumps(row))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--molecules", nargs="+", default=["ethanol", "aspirin"])
    parser.add_argument("--m", type=int, default=1000)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 100])
    parser.add_argument("--sigma", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-jax", action="store_true")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    rows = run(args.molecules, args.m, args.batches, args.sigma, args.repeats, not args.no_jax, args.data_dir)
    print(f"\n{'molecule':>9} {'M':>5} {'P':>3} {'batch':>5} {'forces ms':>10} {'Hessian ms':>11} {'H/F':>6}"
          f" {'JAX ms':>9} {'JAX/gdmlc':>9}")
    for r in rows:
        jax_ms = f"{1e3 * r['jax_s_per_geometry']:9.2f}" if "jax_s_per_geometry" in r else f"{'-':>9}"
        ratio = f"{r['jax_over_gdmlc_hessian']:9.1f}" if "jax_over_gdmlc_hessian" in r else f"{'-':>9}"
        print(f"{r['molecule']:>9} {r['M']:>5} {r['perms']:>3} {r['batch']:>5} {1e3 * r['forces_s_per_geometry']:10.3f}"
              f" {1e3 * r['hessian_s_per_geometry']:11.3f} {r['hessian_over_forces']:6.2f} {jax_ms} {ratio}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": machine(), "versions": versions(), "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
