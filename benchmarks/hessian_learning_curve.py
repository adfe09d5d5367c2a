"""Training on Hessians: the learning curve of ethanol with and without Hessian observations.

    python -m benchmarks.hessian_learning_curve --json out.json

Data: the embedded GFN2-xTB ethanol sets (runtime/default_data): training frames are the first K
frames of the Hessian set (40 MD frames with GFN2-xTB Hessians), observed by forces alone or by
forces and Hessians; test frames are 500 frames of the main set that are not Hessian frames;
sigma is chosen for each run from a grid on 100 other main frames (validation force MAE).  The
frequency reference is the set's GFN2-xTB Hessian at its relaxed geometry (R_min, H_min): the
model's harmonic frequencies at R_min (its analytic Hessian, runtime/vibrations.py) against
those of H_min, both through ASE's VibrationsData.  Forces alone with 100 main frames give the
error the issue's moonshot compares against.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

KCAL_PER_EV = 23.060547830619026


def frequencies_of(atoms, hessian_kcal):
    from ase.vibrations import VibrationsData

    from runtime.vibrations import vibrational_frequencies
    return vibrational_frequencies(VibrationsData.from_2d(atoms, hessian_kcal / KCAL_PER_EV))


def run(K, hessians, data, sigmas):
    """One point of the curve: test force MAE, Hessian MAE at the test frames that have one, the
    frequency MAD at R_min, sigma and the fit time."""
    from ase import Atoms

    from runtime.model import GDML

    train, valid, test, hs = data["train"], data["valid"], data["test"], data["hessian_set"]
    R, F, E = train["R"][:K], train["F"][:K], train["E"][:K]
    model = GDML(kernel="gaussian", sigma=sigmas, progress=False)
    t = time.perf_counter()
    model.fit(R, F, E, hs["z"], valid=(valid["R"], valid["F"], valid["E"]),
              H=train["H"][:K] if hessians else None)
    fit_seconds = time.perf_counter() - t
    _, F_pred = model.predict(test["R"])
    atoms = Atoms(numbers=hs["z"], positions=hs["R_min"])
    _, _, H_min = model.predict(hs["R_min"], hessian=True)
    reference = frequencies_of(atoms, hs["H_min"])
    return {"frames": K, "hessians": hessians, "sigma": model.sigma, "fit_s": round(fit_seconds, 2),
            "test_force_mae": float(np.mean(np.abs(F_pred - test["F"]))),
            "frequency_mad_cm1": float(np.mean(np.abs(frequencies_of(atoms, H_min) - reference)))}


def load():
    from runtime.data import DEFAULT_DATA, DEFAULT_HESSIAN_DATA

    main, hs = dict(np.load(DEFAULT_DATA)), dict(np.load(DEFAULT_HESSIAN_DATA))
    others = np.setdiff1d(np.arange(len(main["R"])), hs["main_frames"])
    pick = lambda idx: {key: main[key][idx] for key in ("R", "F", "E")}  # noqa: E731
    # the forces-only reference: 100 frames spread over the stretch the first 25 Hessian frames span
    # (main frames 0..1846), as those are: consecutive frames 5 fs apart would be a narrower sample
    span = others[others <= hs["main_frames"][24]]
    spread = span[np.linspace(0, len(span) - 1, 100).round().astype(int)]
    return {"hessian_set": hs, "train": {key: hs[key] for key in ("R", "F", "E", "H")},
            "valid": pick(others[2000:2100]), "test": pick(others[2400:2900]), "main_train": pick(spread)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", default="1,2,4,8,16,25", help="comma-separated; '' for the reference alone")
    parser.add_argument("--sigmas", default="1,2,4,8,16")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    data = load()
    sigmas = [float(s) for s in args.sigmas.split(",")]
    rows = []
    for K in (int(k) for k in args.frames.split(",") if k):
        for hessians in (False, True):
            rows.append(run(K, hessians, data, sigmas))
            print(json.dumps(rows[-1]), flush=True)
    # the moonshot's reference: forces alone on 100 frames
    data100 = dict(data, train={**data["main_train"], "H": None})
    rows.append(run(100, False, data100, sigmas))
    print(json.dumps(rows[-1]), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"command": "python -m benchmarks.hessian_learning_curve " + " ".join(argv or []),
                       "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
