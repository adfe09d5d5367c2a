"""Harmonic frequencies of ethanol: a model trained on the embedded data against GFN2-xTB.

    python -m benchmarks.frequencies --n-train 200 --json out.json      # needs tblite (.[datagen])

Reference: GFN2-xTB (tblite's ASE calculator, the method that labelled the embedded data)
relaxed with BFGS to 1e-4 eV/Å from the first embedded frame, frequencies by ASE's
finite-difference vibrational analysis (delta 0.005 Å, 4 displacements per coordinate).
Model: ``GDML`` trained on the first N frames with energy constraints (σ from a validation
sweep on the next 200 frames), relaxed from the same frame with its own forces, frequencies
from its analytic Hessian (runtime/vibrations.py).  Also the model's frequencies at the xTB
minimum (no relaxation).  Reports the 21 vibrational frequencies side by side, their mean
absolute and largest deviations in cm⁻¹.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np


def xtb_frequencies(atoms, fmax, workdir):
    from ase.optimize import BFGS
    from ase.vibrations import Vibrations
    from tblite.ase import TBLite

    atoms = atoms.copy()
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    BFGS(atoms, logfile=None).run(fmax=fmax, steps=2000)
    vib = Vibrations(atoms, name=f"{workdir}/xtb-vib", delta=0.005, nfree=4)
    vib.run()
    frequencies = np.sort(np.abs(vib.get_frequencies()))[6:]
    vib.clean()
    return frequencies.real, atoms


def train_model(R, F, E, z, n_train, sigmas):
    from runtime.model import GDML

    valid = slice(n_train, n_train + 200)
    model = GDML(sigma=sigmas, energy_constraints=True, progress=False)
    model.fit(R[:n_train], F[:n_train], E[:n_train], z=z, valid=(R[valid], F[valid], E[valid]))
    model.info.update(energy_unit="kcal/mol", length_unit="Ang")
    return model


def main(argv=None):
    from ase import Atoms

    from runtime.data import DEFAULT_DATA
    from runtime.vibrations import harmonic_analysis, vibrational_frequencies

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=200)
    parser.add_argument("--sigmas", default="5,10,15,20,30,40")
    parser.add_argument("--fmax", type=float, default=1e-4)
    parser.add_argument("--workdir", default="/tmp")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    data = np.load(DEFAULT_DATA)
    R, F, E, z = data["R"], data["F"], data["E"], data["z"]
    start = Atoms(numbers=z, positions=R[0])
    t = time.perf_counter()
    reference, xtb_minimum = xtb_frequencies(start, args.fmax, args.workdir)
    xtb_seconds = time.perf_counter() - t
    t = time.perf_counter()
    model = train_model(R, F, E, z, args.n_train, [float(s) for s in args.sigmas.split(",")])
    train_seconds = time.perf_counter() - t
    t = time.perf_counter()
    vib, model_minimum = harmonic_analysis(model, start, relax=True, fmax=args.fmax)
    relaxed = vibrational_frequencies(vib)
    model_seconds = time.perf_counter() - t
    at_xtb = vibrational_frequencies(harmonic_analysis(model, xtb_minimum)[0])
    rmsd = float(np.sqrt(np.mean((model_minimum.positions - xtb_minimum.positions) ** 2)))
    out = {"n_train": args.n_train, "sigma": model.sigma, "validation": model.info.get("validation"),
           "xtb_cm1": reference.tolist(), "model_relaxed_cm1": relaxed.tolist(), "model_at_xtb_minimum_cm1": at_xtb.tolist(),
           "mad_relaxed_cm1": float(np.mean(np.abs(relaxed - reference))),
           "max_relaxed_cm1": float(np.max(np.abs(relaxed - reference))),
           "mad_at_xtb_minimum_cm1": float(np.mean(np.abs(at_xtb - reference))),
           "max_at_xtb_minimum_cm1": float(np.max(np.abs(at_xtb - reference))),
           "minimum_rmsd_A": rmsd, "seconds": {"xtb_relax_and_fd": xtb_seconds, "train": train_seconds,
                                                "model_relax_and_hessian": model_seconds}}
    print(f"{'mode':>4} {'xTB':>9} {'model (own min)':>16} {'model (xTB min)':>16}")
    for k, (a, b, c) in enumerate(zip(reference, relaxed, at_xtb)):
        print(f"{k:>4} {a:9.1f} {b:16.1f} {c:16.1f}")
    print(json.dumps({k: v for k, v in out.items() if not k.endswith("cm1") or k.startswith(("mad", "max"))}))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
