"""Harmonic vibrations from a model's analytic Hessian: frequencies in cm⁻¹ and normal modes.

ASE does what it already does well: the optional relaxation (BFGS), mass weighting,
diagonalisation and units (``ase.vibrations.VibrationsData``).  The Hessian is the model's own
(GDMLCalculator's 'hessian', eV/Å²), not finite differences of forces.
"""
from __future__ import annotations

import numpy as np

RELAX_FMAX = 1e-4   # eV/Å: frequencies need a tight minimum (a residual force shifts the soft modes)
RELAX_STEPS = 2000


class RelaxationError(ValueError):
    """The relaxation did not reach the force threshold."""


def harmonic_analysis(model, atoms, relax=False, fmax=RELAX_FMAX, steps=RELAX_STEPS, logfile=None):
    """(VibrationsData, atoms used) for a trained GDML model (or a GDMLCalculator) at ``atoms``
    (ase.Atoms, copied; relaxed first with ``relax``).  RelaxationError if BFGS does not reach
    ``fmax`` (eV/Å) in ``steps`` steps."""
    from ase.vibrations import VibrationsData

    from .ase_calculator import GDMLCalculator

    atoms = atoms.copy()
    atoms.calc = model if isinstance(model, GDMLCalculator) else GDMLCalculator(model)
    if relax:
        _relax(atoms, fmax, steps, logfile)
    return VibrationsData.from_2d(atoms, atoms.calc.get_hessian(atoms)), atoms


def _relax(atoms, fmax, steps, logfile):
    from ase.optimize import BFGS

    optimizer = BFGS(atoms, logfile=logfile)
    if not optimizer.run(fmax=fmax, steps=steps):
        largest = float(np.linalg.norm(atoms.get_forces(), axis=1).max())
        raise RelaxationError(f"the relaxation did not converge in {steps} steps: the largest force is "
                              f"{largest:.3g} eV/Å, above --fmax {fmax:g} (try more --steps or a looser --fmax)")


def real_frequencies(vibrations) -> np.ndarray:
    """Frequencies in cm⁻¹ as real numbers, an imaginary one (a saddle point, or numerical noise in
    the translations and rotations) as negative, in ASE's order (ascending |energy|)."""
    frequencies = vibrations.get_frequencies()
    return np.where(np.abs(frequencies.imag) > np.abs(frequencies.real), -np.abs(frequencies.imag),
                    frequencies.real)


def vibrational_frequencies(vibrations, linear=False) -> np.ndarray:
    """The 3N - 6 (3N - 5 if ``linear``) vibrational frequencies: the modes left after dropping
    the six (five) of smallest magnitude, the translations and rotations."""
    frequencies = real_frequencies(vibrations)
    rigid = 5 if linear else 6
    keep = np.sort(np.argsort(np.abs(frequencies))[rigid:])
    return frequencies[keep]
