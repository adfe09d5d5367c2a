"""An ASE calculator for gdmlc models: energies in eV, forces in eV/Å.

    from runtime.ase_calculator import GDMLCalculator
    atoms.calc = GDMLCalculator("model.npz")        # or GDMLCalculator(trained_gdml)
    atoms.get_potential_energy(), atoms.get_forces()
    atoms.calc.get_hessian(atoms)                   # eV/Å², (3N, 3N); see runtime/vibrations.py

Units.  A model predicts in the units of its training data.  Models trained
with ``gdmlc train`` record them in ``model.info["energy_unit"]`` and
``model.info["length_unit"]`` (from the data set); a model trained from
arrays may not, and then kcal/mol and Å are assumed (the MD17/sGDML
convention).  ``energy_unit=`` / ``length_unit=`` override both, e.g. for a
model whose data set did not state its units (recorded as 'unknown').

* energy: 'kcal/mol', 'eV', 'Hartree' (or 'Ha'), 'kJ/mol';
* length: 'Ang' (or 'Angstrom', 'Å'), 'bohr'.  For a bohr model the positions
  are converted to bohr before predicting and the forces (energy/bohr) back
  to per Å.

Names are matched without regard to case or spaces; any other name is a
ValueError that names it.

Energies.  A model trained without energies has no energy constant: its
energy is defined only up to a constant (still exactly -integral of the
forces).  The calculator returns it all the same, since MD and geometry
optimisation only use differences; ``calc.relative_energy`` is True for
such models.  Do not compare it with energies from another source.

The model describes one molecule with a fixed atom order: the Atoms object
must have exactly the model's atomic numbers in the same order (checked on
every calculation).  Periodic boundary conditions and the cell are ignored:
the positions are used as given, without minimum-image wrapping.
"""
from __future__ import annotations

import os

import numpy as np
from ase import units
from ase.calculators.calculator import Calculator, all_changes

ENERGY_UNITS = {  # value of one model energy unit in eV
    "kcal/mol": units.kcal / units.mol,
    "ev": 1.0,
    "hartree": units.Hartree,
    "ha": units.Hartree,
    "kj/mol": units.kJ / units.mol,
}
LENGTH_UNITS = {  # value of one model length unit in Å
    "ang": 1.0,
    "angstrom": 1.0,
    "å": 1.0,
    "bohr": units.Bohr,
}
DEFAULT_ENERGY_UNIT, DEFAULT_LENGTH_UNIT = "kcal/mol", "Ang"


def _unit_factor(name, table, what, accepted):
    key = "".join(str(name).split()).lower()
    if key not in table:
        raise ValueError(f"unknown {what} unit {name!r} in the model; supported: {accepted}. "
                         f"Pass {what}_unit=... to GDMLCalculator if you know the unit of the training data")
    return table[key]


def energy_unit_factor(name) -> float:
    """eV per model energy unit."""
    return _unit_factor(name, ENERGY_UNITS, "energy", "kcal/mol, eV, Hartree (Ha), kJ/mol")


def length_unit_factor(name) -> float:
    """Å per model length unit."""
    return _unit_factor(name, LENGTH_UNITS, "length", "Ang (Angstrom, Å), bohr")


class GDMLCalculator(Calculator):
    """ASE calculator for a gdmlc model (``runtime.GDML``) or a model file.

    ``model_path_or_GDML``: a path to a model file (read with ``GDML.load``) or a
    trained model object.  ``energy_unit`` / ``length_unit``: the model's units,
    overriding ``model.info`` (see the module docstring).  Other keyword
    arguments go to ``ase.calculators.calculator.Calculator``.
    """

    # "hessian": d2E/dx2 (3N, 3N) in eV/Å², rows 3a + c for atom a, coordinate c (as
    # ase.vibrations.VibrationsData.from_2d reads it); computed only when asked for
    implemented_properties = ["energy", "forces", "hessian"]

    def __init__(self, model_path_or_GDML, energy_unit=None, length_unit=None, **kwargs):
        super().__init__(**kwargs)
        model = model_path_or_GDML
        if isinstance(model, (str, os.PathLike)):
            from .model import GDML

            model = GDML.load(model)
        if not getattr(model, "_trained", True):
            raise ValueError("the model is not trained: call fit() or load a model file")
        self.model = model
        info = getattr(model, "info", {}) or {}
        self.energy_unit = energy_unit if energy_unit is not None else info.get("energy_unit", DEFAULT_ENERGY_UNIT)
        self.length_unit = length_unit if length_unit is not None else info.get("length_unit", DEFAULT_LENGTH_UNIT)
        self.energy_factor = energy_unit_factor(self.energy_unit)  # eV per model energy unit
        self.length_factor = length_unit_factor(self.length_unit)  # Å per model length unit
        self.relative_energy = getattr(model, "energy_constant", None) is None
        self.z = np.asarray(model.z, dtype=np.int64)
        # a local model predicts any atoms whose elements it was trained on (it names an unseen one)
        self.any_atoms = bool(getattr(model, "local", False))

    def check_species(self, atoms):
        if self.any_atoms:
            return
        numbers = np.asarray(atoms.numbers)
        if len(numbers) != len(self.z):
            raise ValueError(f"the model is for {len(self.z)} atoms (atomic numbers {self.z.tolist()}), "
                             f"but the Atoms object has {len(numbers)} ({numbers.tolist()})")
        if not np.array_equal(numbers, self.z):
            atom = int(np.argmax(numbers != self.z))
            raise ValueError(f"atomic numbers differ from the model's: the model expects {self.z.tolist()}, "
                             f"the Atoms object has {numbers.tolist()} (first difference at atom {atom}); "
                             "the atoms must be the same species in the same order")

    def check_state(self, atoms, tol=1e-15):
        """The changes since the last calculation that matter: positions and atomic numbers
        (all the model reads), compared exactly.  ASE's own check compares every property
        with np.allclose, which takes about as long as a whole prediction, and Velocity Verlet
        asks three times a step."""
        if self.atoms is None:
            return super().check_state(atoms, tol)
        return [name for name in ("positions", "numbers")
                if not np.array_equal(self.atoms.arrays[name], atoms.arrays[name])]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.check_species(self.atoms)
        positions = self.atoms.get_positions() / self.length_factor  # in model length units
        atoms = {"z": np.asarray(self.atoms.numbers)} if self.any_atoms else {}  # a local model: these atoms
        if "hessian" in properties:
            energy, forces, hessian = self.model.predict(positions, progress=False, hessian=True, **atoms)
            self.results["hessian"] = np.asarray(hessian) * (self.energy_factor / self.length_factor ** 2)
        else:
            energy, forces = self.model.predict(positions, progress=False, **atoms)
        energy = float(energy) * self.energy_factor
        self.results["energy"] = energy
        self.results["free_energy"] = energy  # no electronic entropy: what ASE's optimisers may ask for
        self.results["forces"] = np.asarray(forces) * (self.energy_factor / self.length_factor)

    def get_hessian(self, atoms=None):
        """d2E/dx2 (3N, 3N) in eV/Å² at ``atoms`` (default: the last ones)."""
        return self.get_property("hessian", atoms)
