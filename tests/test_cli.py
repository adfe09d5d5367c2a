"""The gdmlc command line, run in-process: train/test/predict/info and their errors."""
import numpy as np
import pytest

from runtime import GDML, load_dataset
from runtime.cli import DEFAULT_DATA, main, parse_sigma


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "model.npz"
    code = main(["train", "--n-train", "20", "--n-valid", "10", "--n-test", "30", "--sigma", "15,30",
                 "-o", str(out)])
    assert code == 0
    return out


def test_train_reports_and_saves(trained, capsys):
    model = GDML.load(trained)
    assert model.R_train.shape == (20, 9, 3)
    assert len(model.perms) == 6  # ethanol
    assert model.sigma in (15.0, 30.0)
    assert [r["sigma"] for r in model.info["sigma_sweep"]] == [15.0, 30.0]
    assert "test" in model.info and model.info["energy_unit"] == "kcal/mol"
    used = np.concatenate([model.info["train_indices"], model.info["valid_indices"], model.info["test_indices"]])
    assert len(set(used.tolist())) == 60  # disjoint split


def test_test_command_skips_training_frames(trained, capsys, tmp_path):
    assert main(["test", str(trained), str(DEFAULT_DATA), "--n", "50"]) == 0
    out = capsys.readouterr().out
    assert "forces" in out and "kcal/mol/Ang" in out and "50 frames not used in training" in out


def test_predict_matches_python_api(trained, tmp_path):
    ds = load_dataset(DEFAULT_DATA)
    geoms = tmp_path / "g.npz"
    np.savez(geoms, R=ds.R[100:103])
    out = tmp_path / "pred.npz"
    assert main(["predict", str(trained), str(geoms), "-o", str(out)]) == 0
    E, F = GDML.load(trained).predict(ds.R[100:103])
    with np.load(out) as f:
        assert np.array_equal(f["E"], E) and np.array_equal(f["F"], F)


def test_info_on_model_and_dataset(trained, capsys):
    assert main(["info", str(trained)]) == 0
    assert "inverse_distances x matern52" in capsys.readouterr().out
    assert main(["info", str(DEFAULT_DATA)]) == 0
    assert "3000 frames" in capsys.readouterr().out


def test_n_train_larger_than_data(capsys):
    assert main(["train", "--n-train", "5000", "--sigma", "20"]) == 2
    assert "larger than the data (3000 frames)" in capsys.readouterr().err


def test_sigma_grid_without_validation(capsys):
    assert main(["train", "--n-train", "10", "--n-valid", "0", "--n-test", "0", "--sigma", "10,20"]) == 2
    assert "validation" in capsys.readouterr().err


def test_unknown_descriptor_and_missing_file(capsys, tmp_path):
    assert main(["train", "--descriptor", "nope", "--sigma", "20", "--n-train", "5"]) == 2
    assert "unknown descriptor 'nope'" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing.npz")]) == 2
    assert "missing.npz" in capsys.readouterr().err


def test_train_with_energy_constraints(capsys, tmp_path):
    out = tmp_path / "joint.npz"
    assert main(["train", "--energy-constraints", "--sigma", "10", "--n-train", "8", "--n-valid", "0",
                 "--n-test", "20", "-o", str(out)]) == 0
    assert "energy constraints" in capsys.readouterr().out
    model = GDML.load(out)
    assert model.energy_constraints and model.energy_weights.shape == (8,)


def test_parse_sigma():
    assert parse_sigma("20") == [20.0]
    assert parse_sigma("10,20,40") == [10.0, 20.0, 40.0]
    assert parse_sigma("10:30:10") == [10.0, 20.0, 30.0]


# --------------------------------------------------------------------------- issue 10: never silently wrong


def test_test_file_alone_still_validates_on_training_frames(tmp_path, capsys):
    ds = load_dataset(DEFAULT_DATA)
    test_file = tmp_path / "held_out.npz"
    with open(test_file, "wb") as fh:
        np.savez(fh, R=ds.R[2900:2910], z=ds.z, F=ds.F[2900:2910], E=ds.E[2900:2910])
    out = tmp_path / "m.npz"
    assert main(["train", "--test", str(test_file), "--n-train", "10", "--n-valid", "6", "--sigma", "15,30",
                 "-o", str(out)]) == 0
    captured = capsys.readouterr()
    model = GDML.load(out)
    train, valid = model.info["train_indices"], model.info["valid_indices"]
    assert len(train) == 10 and len(valid) == 6 and not set(train) & set(valid)
    assert [r["sigma"] for r in model.info["sigma_sweep"]] == [15.0, 30.0]  # a sweep needs validation
    assert "test errors (10 frames)" in captured.out
    grid = [15.0, 30.0]
    assert ("warning: sigma" in captured.err) == (model.sigma in (min(grid), max(grid)))


def test_n_test_draws_from_a_given_test_file(tmp_path, capsys):
    ds = load_dataset(DEFAULT_DATA)
    test_file = tmp_path / "held_out.npz"
    with open(test_file, "wb") as fh:
        np.savez(fh, R=ds.R[2900:2910], z=ds.z, F=ds.F[2900:2910], E=ds.E[2900:2910])
    assert main(["train", "--test", str(test_file), "--n-test", "4", "--n-train", "8", "--sigma", "15",
                 "-o", str(tmp_path / "m.npz")]) == 0
    assert "test errors (4 frames)" in capsys.readouterr().out


def test_sigma_edge_warning():
    from types import SimpleNamespace

    from runtime.cli import sigma_edge_warning
    assert sigma_edge_warning(SimpleNamespace(sigma_grid=[10.0, 20.0, 40.0], sigma=20.0)) is None
    assert "largest" in sigma_edge_warning(SimpleNamespace(sigma_grid=[10.0, 20.0, 40.0], sigma=40.0))
    assert "smallest" in sigma_edge_warning(SimpleNamespace(sigma_grid=[40.0, 10.0, 20.0], sigma=10.0))
    assert sigma_edge_warning(SimpleNamespace(sigma_grid=[20.0], sigma=20.0)) is None


def test_predict_r_only_npz_notes_unchecked_species(trained, tmp_path, capsys):
    ds = load_dataset(DEFAULT_DATA)
    geoms = tmp_path / "r_only.npz"
    np.savez(geoms, R=ds.R[5:7])
    out = tmp_path / "pred.npz"
    assert main(["predict", str(trained), str(geoms), "-o", str(out)]) == 0
    assert "species and atom order could not be checked" in capsys.readouterr().err
    E, F = GDML.load(trained).predict(ds.R[5:7])
    with np.load(out) as f:
        assert np.array_equal(f["E"], E) and np.array_equal(f["F"], F)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.npz", "r_only.npz"]  # no temporary file


def test_predict_xyz_in_the_model_atom_order(trained, tmp_path, capsys):
    import ase.io
    from ase import Atoms
    ds = load_dataset(DEFAULT_DATA)
    geoms = tmp_path / "g.xyz"
    ase.io.write(geoms, [Atoms(numbers=ds.z, positions=ds.R[k]) for k in (8, 9)], format="extxyz")
    assert main(["predict", str(trained), str(geoms)]) == 0
    E, _ = GDML.load(trained).predict(ds.R[8:10])
    out = capsys.readouterr().out
    assert f"frame 0: E = {E[0]:.6f} kcal/mol" in out and f"frame 1: E = {E[1]:.6f} kcal/mol" in out


def test_failed_predict_write_keeps_the_previous_file(trained, tmp_path, monkeypatch, capsys):
    ds = load_dataset(DEFAULT_DATA)
    geoms, out = tmp_path / "g.npz", tmp_path / "pred.npz"
    np.savez(geoms, R=ds.R[:2], z=ds.z)
    out.write_bytes(b"previous")

    def failing_savez(fh, **arrays):
        fh.write(b"partial")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(np, "savez", failing_savez)
    assert main(["predict", str(trained), str(geoms), "-o", str(out)]) == 2
    assert "No space left" in capsys.readouterr().err
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.npz", "pred.npz"]


def test_parity_plot_is_written_as_png(trained, tmp_path):
    pytest.importorskip("matplotlib", reason="--plot needs the [plot] extra")
    plot = tmp_path / "parity.png"
    assert main(["test", str(trained), str(DEFAULT_DATA), "--n", "20", "--plot", str(plot)]) == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["parity.png"]


def test_info_on_dataset_without_forces_and_units(tmp_path, capsys):
    ds = load_dataset(DEFAULT_DATA)
    path = tmp_path / "no_forces.npz"
    np.savez(path, R=ds.R[:4], z=ds.z)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "4 frames" in out and "forces no" in out and "energies no" in out
    assert "unknown units" in out and "unknown/unknown" not in out


def test_version(capsys):
    from importlib.metadata import version
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"gdmlc {version('gdmlc')}"


def test_default_data_is_exported_and_absolute():
    import runtime
    assert runtime.DEFAULT_DATA == DEFAULT_DATA and runtime.DEFAULT_DATA.is_absolute()
    assert len(runtime.load_dataset(runtime.DEFAULT_DATA)) == 3000


def test_hyper_option(monkeypatch):
    import inspect

    from runtime import cli
    assert cli.parse_hyper("alpha=0.5") == ("alpha", 0.5)
    if "hyper" in inspect.signature(GDML).parameters:
        assert cli._hyper_option([("alpha", 0.5), ("beta", 2.0)]) == {"hyper": {"alpha": 0.5, "beta": 2.0}}
        with pytest.raises(cli.CLIError, match="more than once"):
            cli._hyper_option([("alpha", 0.5), ("alpha", 2.0)])
    else:
        with pytest.raises(cli.CLIError, match="--hyper"):
            cli._hyper_option([("alpha", 0.5)])
    assert cli._hyper_option(None) == {}


# --------------------------------------------------------------------------- progress output


class _Stream:
    def __init__(self, tty):
        self.tty, self.text = tty, ""

    def isatty(self):
        return self.tty

    def write(self, text):
        self.text += text

    def flush(self):
        pass


def test_progress_to_a_file_is_one_line_per_stage():
    from runtime.progress import Progress
    stream = _Stream(tty=False)
    with Progress(1000, "assembly", stream=stream) as bar:
        for _ in range(1000):
            bar.update()
    assert stream.text.count("\n") == 1 and "100% 1000/1000" in stream.text


def test_progress_to_a_file_prints_a_line_a_minute_in_a_long_stage(monkeypatch):
    """A 10-unit stage at 25 s a unit (250 s): lines at 75 s (3 done), 150 s (6), 225 s (9), then the end."""
    from runtime import progress
    clock = iter([25.0 * k for k in range(12)])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    stream = _Stream(tty=False)
    with progress.Progress(10, "solve", stream=stream) as bar:
        for _ in range(10):
            bar.update()
    lines = stream.text.splitlines()
    assert [line.split()[3] for line in lines] == ["3/10", "6/10", "9/10", "10/10"], lines


def test_progress_eta_ignores_the_compile_time_of_the_first_update(monkeypatch):
    """First update after 10 s (JIT compilation), then 1 s per unit: 6 units left -> eta 6.0 s."""
    from runtime import progress
    clock = iter([0.0, 10.0, 11.0, 12.0, 13.0, 14.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    stream = _Stream(tty=True)
    bar = progress.Progress(10, "assembly", stream=stream)  # t = 0
    for _ in range(4):
        bar.update()  # t = 10, 11, 12, 13: 4 done
    line = stream.text.split("\r")[-1]
    assert "4/10" in line and "eta 6.0 s" in line  # (13 - 10) s / 3 units * 6 units left
