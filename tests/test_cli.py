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
