"""Vibrations from the model's Hessian: the ASE calculator's 'hessian' (eV/Å²) against central
differences of its own forces (eV/Å), harmonic frequencies against ASE's finite-difference
vibrational analysis (ase.vibrations.Vibrations, forces only), and `gdmlc vibrations`."""
import numpy as np
import pytest
from ase import Atoms

from runtime.ase_calculator import GDMLCalculator
from runtime.cli import main
from runtime.data import DEFAULT_DATA
from runtime.model import GDML
from runtime.vibrations import harmonic_analysis, real_frequencies, vibrational_frequencies


@pytest.fixture(scope="module")
def data():
    d = np.load(DEFAULT_DATA)
    return d["R"], d["F"], d["E"], d["z"]


@pytest.fixture(scope="module")
def model_file(data, tmp_path_factory):
    R, F, E, z = data
    model = GDML(kernel="gaussian", sigma=3.0, energy_constraints=True, symmetries=None, progress=False)
    model.fit(R[:40], F[:40], E[:40], z=z)
    model.info.update(energy_unit="kcal/mol", length_unit="Ang")
    path = tmp_path_factory.mktemp("vib") / "model.npz"
    model.save(path)
    return path


def test_calculator_hessian_is_minus_the_derivative_of_its_forces(data, model_file):
    R, _, _, z = data
    calc = GDMLCalculator(str(model_file), energy_unit="Hartree", length_unit="bohr")  # units matter here
    atoms = Atoms(numbers=z, positions=R[60] * 0.529177)
    atoms.calc = calc
    H = calc.get_hessian(atoms)
    assert H.shape == (27, 27)
    h = 1e-5
    fd = np.empty_like(H)
    for k in range(27):
        forces = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.positions.reshape(-1)[k] += sign * h
            moved.calc = calc
            forces.append(moved.get_forces().ravel())
        fd[:, k] = -(forces[0] - forces[1]) / (2 * h)
    assert np.abs(H - fd).max() <= 1e-6 * np.abs(H).max()


def test_frequencies_match_ase_finite_differences(data, model_file, tmp_path):
    from ase.vibrations import Vibrations

    R, _, _, z = data
    atoms = Atoms(numbers=z, positions=R[3])
    vib, used = harmonic_analysis(GDML.load(model_file), atoms, relax=True, fmax=1e-4)
    assert np.linalg.norm(used.get_forces(), axis=1).max() <= 1e-4
    analytic = vibrational_frequencies(vib)
    assert len(analytic) == 21 and np.all(analytic > 0)  # a minimum: no imaginary vibration
    used.calc = GDMLCalculator(str(model_file))
    fd = Vibrations(used, name=str(tmp_path / "fd"), delta=1e-3, nfree=4)
    fd.run()
    reference = np.sort(np.abs(fd.get_frequencies()))[6:]
    assert np.abs(analytic - reference).max() <= 0.5  # cm^-1; FD error at delta 1e-3 Å


def test_vibrations_command(data, model_file, tmp_path, capsys):
    from ase.io import write

    R, _, _, z = data
    geometry = tmp_path / "ethanol.xyz"
    write(geometry, Atoms(numbers=z, positions=R[7]))
    out = tmp_path / "vib.npz"
    assert main(["vibrations", str(model_file), str(geometry), "--relax", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "cm^-1" in printed and "wrote" in printed
    saved = np.load(out)
    assert saved["frequencies_cm1"].shape == (27,) and saved["modes"].shape == (27, 9, 3)
    assert np.allclose(saved["hessian_eV_per_A2"], saved["hessian_eV_per_A2"].T, rtol=0, atol=1e-9)
    # the saved frequencies are those of the saved Hessian at the saved geometry
    vib_again, _ = harmonic_analysis(GDML.load(model_file), Atoms(numbers=z, positions=saved["positions_A"]))
    assert np.allclose(real_frequencies(vib_again), saved["frequencies_cm1"], rtol=1e-8, atol=1e-6)


def test_vibrations_command_refusals(data, model_file, tmp_path, capsys):
    from ase.io import write

    R, F, E, z = data
    geometry = tmp_path / "ethanol.xyz"
    write(geometry, Atoms(numbers=z, positions=R[7]))
    assert main(["vibrations", str(model_file), str(geometry), "--frame", "3", "-o", str(tmp_path / "v.npz")]) == 2
    assert "--frame 3" in capsys.readouterr().err
    matern32 = GDML(kernel="matern32", sigma=10.0, symmetries=None, progress=False).fit(R[:5], F[:5], z=z)
    path = tmp_path / "m32.npz"
    matern32.save(path)
    assert main(["vibrations", str(path), str(geometry), "-o", str(tmp_path / "v.npz")]) == 2
    assert "three times differentiable" in capsys.readouterr().err
    assert not (tmp_path / "v.npz").exists()
