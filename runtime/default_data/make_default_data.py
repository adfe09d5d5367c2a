#!/usr/bin/env python
"""Generate gdmlc's small embedded default dataset (ethanol, GFN2-xTB, 500 K).

The dataset is produced by Langevin molecular dynamics of a single ethanol
molecule (``ase.build.molecule('CH3CH2OH')``, 9 atoms, atom order exactly as
ASE gives it: C C O H H H H H H) driven by GFN2-xTB through the ``tblite``
ASE calculator.  After an equilibration period, one frame is recorded every
``--stride`` steps until ``--n-frames`` frames have been collected.

The output is an sGDML dataset file (``np.savez_compressed``) with keys

    type    'd'
    name    'ethanol'
    theory  'GFN2-xTB (tblite <version>), Langevin MD 500 K, 0.5 fs step, every N-th step'
    R       (M, 9, 3) float64  positions            [Angstrom]
    z       (9,)      int64    atomic numbers
    E       (M,)      float64  total (potential) energy       [kcal/mol]
    F       (M, 9, 3) float64  forces, F = -dE/dR   [kcal/mol/Angstrom]
    r_unit  'Ang'
    e_unit  'kcal/mol'
    md5     fingerprint, computed exactly like sGDML's ``io.dataset_md5``:
            md5 over the md5 digests of z, R, E, F (each raveled), hex string

Energies/forces are converted from ASE's eV and eV/Angstrom with
1 eV = 23.060547830619026 kcal/mol (``ase.units`` with CODATA 2018, i.e.
``U['mol'] / U['kcal']`` for ``U = ase.units.create_units('2018')``).

``tblite`` is only needed to *generate* the data (``pip install tblite`` or the
project's optional ``datagen`` extra); gdmlc's runtime never imports it.

The defaults reproduce the committed file::

    python runtime/default_data/make_default_data.py

Bit-for-bit reproducibility requires the same tblite/ASE/numpy versions and
platform: the MD is chaotic, so round-off differences (e.g. from a different
BLAS or thread count) grow into a different, but statistically equivalent,
trajectory.  The script therefore pins OMP_NUM_THREADS=1 unless the caller set
it (single-threaded is also the fastest setting for a 9-atom molecule).

``--verify PATH`` only checks an existing file (shapes, units, md5, bonded
topology intact, and F = -dE/dR by central finite differences on a few frames
using the same calculator settings).

``--hessians K`` instead writes the small Hessian set
``ethanol_gfn2xtb_500K_hessians.npz``: GFN2-xTB Hessians of K frames of the
main file (evenly spaced over the trajectory) and of the relaxed minimum (BFGS
from frame 0, fmax 1e-4 eV/Angstrom).  tblite has no analytic Hessian, so each
is the central finite difference of tblite's analytic forces,
H[:, k] = -(F(x + h e_k) - F(x - h e_k)) / (2 h), then symmetrised.  Keys:

    R, z, E, F, H   K frames (like the main file; H (K, 27, 27) in kcal/mol/Angstrom^2)
    main_frames     (K,) the frames' indices in ethanol_gfn2xtb_500K.npz
    H_asymmetry     (K,) max |H - H^T| before symmetrising (the finite-difference error's scale)
    R_min, E_min, F_min, H_min, H_min_asymmetry   the relaxed minimum, the same quantities
    main_md5        the main file's md5, so that main_frames cannot point into another file

``--verify`` on that file checks symmetry, that the minimum's forces vanish,
and H = -dF/dx again by central differences with twice the step on a few frames.
"""

from __future__ import annotations

import os

# Must happen before numpy / tblite load their threading runtimes.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import hashlib
import sys
import time
from importlib.metadata import version as _pkg_version
from pathlib import Path

import numpy as np

import ase.units
from ase.build import molecule
from ase.md.langevin import Langevin
from ase.constraints import FixCom
from ase.md.velocitydistribution import Stationary, ZeroRotation

try:  # ASE >= 3.29
    from ase.md.velocitydistribution import thermalize_momenta as _thermalize
except ImportError:  # older ASE
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    def _thermalize(atoms, temperature_K, rng=None):
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "ethanol_gfn2xtb_500K.npz"
HESSIAN_OUT = HERE / "ethanol_gfn2xtb_500K_hessians.npz"

_U2018 = ase.units.create_units("2018")
#: kcal/mol per eV (CODATA 2018 via ase.units) == 23.060547830619026
KCALMOL_PER_EV = _U2018["mol"] / _U2018["kcal"]
assert abs(KCALMOL_PER_EV - 23.060547830619026) < 1e-12, KCALMOL_PER_EV

METHOD = "GFN2-xTB"
#: tblite SCF accuracy multiplier (tblite default 1.0).  0.01 converges the SCF
#: ~100x tighter at no measurable cost for ethanol; with 1.0 the forces of a
#: geometry depend on the SCF starting guess at the ~1e-2 kcal/mol/Ang level,
#: with 0.01 at the ~1e-4 level.
DEFAULT_ACCURACY = 0.01
#: SCF accuracy for Hessians: a difference quotient divides the forces' SCF noise by 2h; at
#: accuracy 0.01 that noise (~1e-4 kcal/mol/Ang) is ~0.1 kcal/mol/Ang^2 at h = 5e-4, at 1e-4 it is
#: below the truncation error.  The forces change by ~1e-5 kcal/mol/Ang against the main file's.
HESSIAN_ACCURACY = 1e-4
#: finite-difference step [Angstrom]: the truncation error (~h^2, about 1e-3 kcal/mol/Ang^2 here,
#: 1e-6 of max|H| ~ 1300) balanced against the SCF noise, which grows as 1/h (measured on the
#: minimum and frame 1234 for h = 5e-4 .. 8e-3 against a Richardson extrapolation)
HESSIAN_STEP = 5e-4
#: BFGS convergence of the relaxed minimum [eV/Angstrom]
MINIMUM_FMAX = 1e-4


def dataset_md5(data) -> str:
    """sGDML's dataset fingerprint (``sgdml.utils.io.dataset_md5``).

    md5 over the concatenated md5 digests of ``z``, ``R``, ``E`` (if present),
    ``F``, each array raveled (C order).  Returned as a hex string.
    """
    h = hashlib.md5()
    keys = ["z", "R"] + (["E"] if "E" in data else []) + ["F"]
    for k in keys:
        d = np.ascontiguousarray(np.asarray(data[k]).ravel())
        h.update(hashlib.md5(d).digest())
    return h.hexdigest()


def make_calculator(accuracy=DEFAULT_ACCURACY):
    from tblite.ase import TBLite

    return TBLite(method=METHOD, accuracy=accuracy, verbosity=0)


def tblite_version() -> str:
    return _pkg_version("tblite")


def build_ethanol():
    atoms = molecule("CH3CH2OH")
    assert len(atoms) == 9, len(atoms)
    assert atoms.get_chemical_formula(mode="hill") == "C2H6O"
    return atoms


def _bond_graph(R, z, scale=1.25):
    """Set of bonded atom pairs from covalent radii (used to detect breakup)."""
    from ase.data import covalent_radii

    rc = covalent_radii[z]
    d = np.linalg.norm(R[:, None, :] - R[None, :, :], axis=-1)
    cut = scale * (rc[:, None] + rc[None, :])
    i, j = np.nonzero(np.triu(d < cut, k=1))
    return set(zip(i.tolist(), j.tolist()))


def generate(args) -> Path:
    out = Path(args.output)
    rng = np.random.default_rng(args.seed)
    ver = tblite_version()

    atoms = build_ethanol()
    atoms.calc = make_calculator(args.accuracy)
    z = atoms.numbers.astype(np.int64).copy()
    ref_bonds = _bond_graph(atoms.positions, z)

    dt = args.timestep * ase.units.fs
    friction = args.friction / ase.units.fs
    _thermalize(atoms, temperature_K=args.temperature, rng=rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    # Centre of mass fixed by a constraint (ASE's recommended replacement for
    # Langevin(fixcm=True), which does not sample NVT exactly for small
    # systems).  get_temperature() then uses 3N-3 degrees of freedom.
    atoms.set_constraint(FixCom())
    dyn = Langevin(
        atoms,
        timestep=dt,
        temperature_K=args.temperature,
        friction=friction,
        fixcm=False,
        rng=rng,
    )

    def temp_K():
        return atoms.get_temperature()

    n_equil = int(round(args.equil * 1000.0 / args.timestep))  # ps -> steps
    print(
        f"[make_default_data] tblite {ver}, {METHOD}, T={args.temperature} K, "
        f"dt={args.timestep} fs, friction={args.friction}/fs, seed={args.seed}, "
        f"SCF accuracy={args.accuracy}",
        flush=True,
    )
    print(
        f"[make_default_data] equilibration: {n_equil} steps ({args.equil} ps); "
        f"production: {args.n_frames} frames x stride {args.stride} "
        f"= {args.n_frames * args.stride} steps",
        flush=True,
    )

    t0 = time.perf_counter()
    chunk = max(1, n_equil // 10)
    done = 0
    while done < n_equil:
        n = min(chunk, n_equil - done)
        dyn.run(n)
        done += n
        print(
            f"  equil {done:7d}/{n_equil} steps  T={temp_K():7.1f} K  "
            f"Epot={atoms.get_potential_energy() * KCALMOL_PER_EV:12.4f} kcal/mol  "
            f"{time.perf_counter() - t0:7.1f} s",
            flush=True,
        )

    M = args.n_frames
    R = np.empty((M, len(atoms), 3))
    E = np.empty(M)
    F = np.empty((M, len(atoms), 3))
    T = np.empty(M)
    t1 = time.perf_counter()
    report_every = max(1, M // 20)
    for m in range(M):
        dyn.run(args.stride)
        # Results are cached by the calculator for exactly these positions.
        # apply_constraint=False: store the raw -dE/dR, not the FixCom-projected
        # forces the integrator uses.
        R[m] = atoms.get_positions()
        E[m] = atoms.get_potential_energy() * KCALMOL_PER_EV
        F[m] = atoms.get_forces(apply_constraint=False) * KCALMOL_PER_EV
        T[m] = temp_K()
        if _bond_graph(R[m], z) != ref_bonds:
            print(f"  WARNING: bonding topology changed at frame {m}", flush=True)
        if (m + 1) % report_every == 0 or m + 1 == M:
            el = time.perf_counter() - t1
            print(
                f"  frame {m + 1:5d}/{M}  T={T[m]:7.1f} K (running mean "
                f"{T[: m + 1].mean():6.1f})  E={E[m]:12.4f} kcal/mol  "
                f"{el:7.1f} s  (ETA {el / (m + 1) * (M - m - 1):6.1f} s)",
                flush=True,
            )

    nth = {1: "st", 2: "nd", 3: "rd"}.get(args.stride % 10 if args.stride % 100 not in (11, 12, 13) else 0, "th")
    theory = (
        f"{METHOD} (tblite {ver}), Langevin MD {args.temperature:g} K, "
        f"{args.timestep:g} fs step, every {args.stride}{nth} step"
    )
    data = {
        "type": np.array("d"),
        "name": np.array("ethanol"),
        "theory": np.array(theory),
        "R": R,
        "z": z,
        "E": E,
        "F": F,
        "r_unit": np.array("Ang"),
        "e_unit": np.array("kcal/mol"),
    }
    data["md5"] = np.array(dataset_md5(data))
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **data)
    total = time.perf_counter() - t0
    print(
        f"[make_default_data] wrote {out} ({out.stat().st_size / 1e6:.2f} MB), "
        f"{M} frames, mean T (recorded) = {T.mean():.1f} K, md5 {data['md5']}, "
        f"total time {total:.1f} s",
        flush=True,
    )
    return out


def verify(path, n_fd_frames=2, h=1e-4, seed=0, accuracy=DEFAULT_ACCURACY) -> bool:
    """Load ``path`` and sanity-check it; returns True if all checks pass."""
    ok = True
    with np.load(path) as f:
        d = {k: f[k] for k in f.files}
    R, z, E, F = d["R"], d["z"], d["E"], d["F"]
    M, N = R.shape[:2]
    print(f"[verify] {path}")
    for k in ("type", "name", "theory", "r_unit", "e_unit", "md5"):
        print(f"  {k:7s} = {str(d[k])!r}")
    print(f"  R {R.shape} {R.dtype}, z {z.tolist()}, E {E.shape}, F {F.shape}")
    checks = {
        "shapes": R.shape == (M, N, 3) and F.shape == (M, N, 3) and E.shape == (M,) and z.shape == (N,),
        "dtypes": R.dtype == F.dtype == E.dtype == np.float64 and np.issubdtype(z.dtype, np.integer),
        "finite": bool(np.isfinite(R).all() and np.isfinite(E).all() and np.isfinite(F).all()),
        "md5": str(d["md5"]) == dataset_md5(d),
        "units": str(d["r_unit"]) == "Ang" and str(d["e_unit"]) == "kcal/mol",
    }
    ref_bonds = _bond_graph(build_ethanol().positions, z)
    n_broken = sum(_bond_graph(R[m], z) != ref_bonds for m in range(M))
    checks["topology intact"] = n_broken == 0

    fn = np.linalg.norm(F, axis=-1)
    print(
        f"  E: min {E.min():.4f}  max {E.max():.4f}  range {np.ptp(E):.4f}  "
        f"mean {E.mean():.4f}  std {E.std():.4f}  kcal/mol"
    )
    print(
        f"  |F_i|: mean {fn.mean():.3f}  std {fn.std():.3f}  median {np.median(fn):.3f}  "
        f"max {fn.max():.3f}  kcal/mol/Ang;  F component std {F.std():.3f}"
    )
    print(f"  max |sum_i F_i| (net force) {np.abs(F.sum(axis=1)).max():.2e} kcal/mol/Ang")

    # Finite-difference check F = -dE/dR with the same calculator settings.
    atoms = build_ethanol()
    atoms.calc = make_calculator(accuracy)
    rng = np.random.default_rng(seed)
    frames = sorted(rng.choice(M, size=min(n_fd_frames, M), replace=False).tolist())
    fd_ok = True
    for m in frames:
        atoms.set_positions(R[m])
        e0 = atoms.get_potential_energy() * KCALMOL_PER_EV
        f0 = atoms.get_forces() * KCALMOL_PER_EV
        Ffd = np.empty((N, 3))
        for i in range(N):
            for c in range(3):
                Rp = R[m].copy()
                Rp[i, c] += h
                atoms.set_positions(Rp)
                ep = atoms.get_potential_energy()
                Rp[i, c] -= 2 * h
                atoms.set_positions(Rp)
                em = atoms.get_potential_energy()
                Ffd[i, c] = -(ep - em) / (2 * h) * KCALMOL_PER_EV
        rel = np.linalg.norm(Ffd - F[m]) / np.linalg.norm(F[m])
        maxabs = np.abs(Ffd - F[m]).max()
        recomp = max(abs(e0 - E[m]), np.abs(f0 - F[m]).max())
        print(
            f"  FD frame {m:5d}: ||F_fd - F||/||F|| = {rel:.2e}, max abs diff "
            f"{maxabs:.2e} kcal/mol/Ang; recompute |dE|,|dF| max {recomp:.2e}"
        )
        fd_ok &= rel < 1e-3
    checks["F = -dE/dR (FD)"] = fd_ok
    for k, v in checks.items():
        print(f"  check {k:18s}: {'OK' if v else 'FAIL'}")
        ok &= bool(v)
    if n_broken:
        print(f"  ({n_broken} frames with changed bond topology)")
    return ok


def force_hessian(atoms, R, h=HESSIAN_STEP):
    """(H raw (3N, 3N) kcal/mol/Ang^2, column k = -dF/dx_k by central differences of step h)."""
    n3 = R.size
    H = np.empty((n3, n3))
    for k in range(n3):
        step = np.zeros(n3)
        step[k] = h
        step = step.reshape(R.shape)
        atoms.set_positions(R + step)
        f_plus = atoms.get_forces(apply_constraint=False)
        atoms.set_positions(R - step)
        f_minus = atoms.get_forces(apply_constraint=False)
        H[:, k] = -(f_plus - f_minus).ravel() / (2 * h) * KCALMOL_PER_EV
    return H


def labelled(atoms, R, h=HESSIAN_STEP):
    """(E, F, H symmetrised, max |H - H^T| before) at positions R, in kcal/mol and Angstrom."""
    H = force_hessian(atoms, R, h)
    asymmetry = np.abs(H - H.T).max()
    atoms.set_positions(R)
    E = atoms.get_potential_energy() * KCALMOL_PER_EV
    F = atoms.get_forces(apply_constraint=False) * KCALMOL_PER_EV
    return E, F, 0.5 * (H + H.T), asymmetry


def relaxed_minimum(atoms, R0):
    """Positions of the GFN2-xTB minimum reached by BFGS from R0."""
    from ase.optimize import BFGS

    atoms.set_positions(R0)
    BFGS(atoms, logfile=None).run(fmax=MINIMUM_FMAX, steps=1000)
    return atoms.get_positions().copy()


def generate_hessians(args) -> Path:
    """The Hessian set: K evenly spaced frames of the main file and the relaxed minimum."""
    t0 = time.perf_counter()
    with np.load(args.main) as f:
        main = {k: f[k] for k in f.files}
    frames = np.linspace(0, len(main["R"]) - 1, args.hessians).round().astype(np.int64)
    atoms = build_ethanol()
    assert np.array_equal(atoms.numbers, main["z"])
    atoms.calc = make_calculator(HESSIAN_ACCURACY)
    labels = [labelled(atoms, main["R"][m]) for m in frames]
    R_min = relaxed_minimum(atoms, main["R"][0])
    E_min, F_min, H_min, asym_min = labelled(atoms, R_min)
    theory = (
        f"{METHOD} (tblite {tblite_version()}, accuracy {HESSIAN_ACCURACY:g}), frames of "
        f"{Path(args.main).name}; H by central differences of analytic forces, h = {HESSIAN_STEP:g} Ang"
    )
    data = {
        "type": np.array("d"), "name": np.array("ethanol"), "theory": np.array(theory),
        "R": main["R"][frames], "z": main["z"],
        "E": np.array([e for e, _, _, _ in labels]), "F": np.stack([f for _, f, _, _ in labels]),
        "H": np.stack([h for _, _, h, _ in labels]), "H_asymmetry": np.array([a for _, _, _, a in labels]),
        "main_frames": frames, "main_md5": np.array(str(main["md5"])),
        "R_min": R_min, "E_min": np.array(E_min), "F_min": F_min, "H_min": H_min,
        "H_min_asymmetry": np.array(asym_min),
        "r_unit": np.array("Ang"), "e_unit": np.array("kcal/mol"),
    }
    data["md5"] = np.array(dataset_md5(data))
    out = Path(args.output)
    np.savez_compressed(out, **data)
    print(
        f"[make_default_data] wrote {out} ({out.stat().st_size / 1e3:.0f} kB), {len(frames)} Hessians + the "
        f"minimum (E {E_min:.4f} kcal/mol), max raw asymmetry {data['H_asymmetry'].max():.2e} kcal/mol/Ang^2, "
        f"{time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    return out


def verify_hessians(path, n_fd_frames=3, seed=0) -> bool:
    """Checks of a Hessian set: symmetric, minimum force-free, H = -dF/dx again with step 2h."""
    with np.load(path) as f:
        d = {k: f[k] for k in f.files}
    H, R = d["H"], d["R"]
    print(f"[verify] {path}: {len(H)} Hessians {H.shape}, max|H| {np.abs(H).max():.1f} kcal/mol/Ang^2, "
          f"raw asymmetry max {d['H_asymmetry'].max():.2e}")
    eigenvalues = np.linalg.eigvalsh(d["H_min"])
    print(f"  minimum: E {float(d['E_min']):.4f} kcal/mol, max|F| {np.abs(d['F_min']).max():.2e} kcal/mol/Ang, "
          f"H eigenvalues {eigenvalues[:6].round(3).tolist()} (6 near 0) ... {eigenvalues[-1]:.1f}")
    checks = {
        "md5": str(d["md5"]) == dataset_md5(d),
        "symmetric": all(np.array_equal(h, h.T) for h in (*H, d["H_min"])),
        "minimum force-free": np.abs(d["F_min"]).max() < MINIMUM_FMAX * KCALMOL_PER_EV,
        "minimum positive": (eigenvalues[6:] > 0).all(),
    }
    atoms = build_ethanol()
    atoms.calc = make_calculator(HESSIAN_ACCURACY)
    rng = np.random.default_rng(seed)
    frames = sorted(rng.choice(len(H), size=min(n_fd_frames, len(H)), replace=False).tolist())
    worst = 0.0
    for m in frames:
        again = force_hessian(atoms, R[m], 2 * HESSIAN_STEP)
        difference = np.abs(again - H[m]).max()
        worst = max(worst, difference / np.abs(H[m]).max())
        print(f"  frame {m:3d} (main frame {d['main_frames'][m]}): max |H(2h) - H| = {difference:.2e} kcal/mol/Ang^2")
    checks["H = -dF/dx (FD, 2h)"] = worst < 1e-5
    for k, v in checks.items():
        print(f"  check {k:20s}: {'OK' if v else 'FAIL'}")
    return all(bool(v) for v in checks.values())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("-o", "--output", default=str(DEFAULT_OUT), help="output .npz path")
    p.add_argument("--temperature", type=float, default=500.0, help="thermostat temperature [K]")
    p.add_argument("--timestep", type=float, default=0.5, help="MD time step [fs]")
    p.add_argument("--friction", type=float, default=0.01, help="Langevin friction [1/fs]")
    p.add_argument("--equil", type=float, default=2.0, help="equilibration time before recording [ps]")
    p.add_argument("--stride", type=int, default=10, help="record one frame every STRIDE steps")
    p.add_argument("--n-frames", type=int, default=3000, help="number of frames to record")
    p.add_argument("--accuracy", type=float, default=DEFAULT_ACCURACY, help="tblite SCF accuracy (smaller = tighter)")
    p.add_argument("--seed", type=int, default=20240501, help="random seed (velocities + Langevin noise)")
    p.add_argument("--no-verify", action="store_true", help="skip the sanity checks after generation")
    p.add_argument("--verify", metavar="PATH", help="only verify an existing dataset file and exit")
    p.add_argument("--hessians", type=int, metavar="K",
                   help=f"write the Hessian set of K frames of --main and the minimum (default output {HESSIAN_OUT.name})")
    p.add_argument("--main", default=str(DEFAULT_OUT), help="--hessians: the main file whose frames are used")
    args = p.parse_args(argv)

    if args.verify:
        with np.load(args.verify) as f:
            has_hessians = "H" in f.files
        if has_hessians:
            return 0 if verify_hessians(args.verify) else 1
        return 0 if verify(args.verify, accuracy=args.accuracy) else 1
    if args.hessians:
        if args.output == str(DEFAULT_OUT):
            args.output = str(HESSIAN_OUT)
        out = generate_hessians(args)
        return 0 if args.no_verify or verify_hessians(out) else 1
    out = generate(args)
    if not args.no_verify:
        return 0 if verify(out, accuracy=args.accuracy) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
