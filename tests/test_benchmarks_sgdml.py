"""benchmarks/sgdml_runner.py: sGDML dataset files, argument checks, and (when the sGDML
virtual environment exists) sGDML 1.0.3 against gdmlc on rMD17 ethanol."""
import numpy as np
import pytest

from benchmarks import sgdml_runner as sr
from runtime.data import load_dataset

from conftest import RMD17_DIR

NO_PYTHON = "/nonexistent/python"  # argument errors must come before any environment is used


def small_arrays():
    """The fixed toy data whose fingerprints were computed with sgdml.utils.io.dataset_md5."""
    R = np.arange(18, dtype=np.float64).reshape(2, 3, 3) * 0.5 + np.array([0, 0.1, 0.2])
    F = -R[::-1].copy()
    E = np.array([1.5, -2.25])
    z = np.array([8, 1, 1], dtype=np.int64)
    return R, z, E, F


def test_md5_matches_sgdml_fingerprint():
    R, z, E, F = small_arrays()
    assert sr.sgdml_dataset_md5({"z": z, "R": R, "E": E, "F": F}) == b"0b5f143c59519c95566040ce88749c88"
    assert sr.sgdml_dataset_md5({"z": z, "R": R, "F": F}) == b"361558986ac9cd1dd9f98c68b95d0858"


def test_dataset_round_trip(tmp_path):
    R, z, E, F = small_arrays()
    perms = np.array([[0, 1, 2], [0, 2, 1]])
    path = sr.write_sgdml_dataset(tmp_path / "toy.npz", R, z, E, F, "toy", "made up", perms=perms)
    with np.load(path, allow_pickle=False) as d:
        data = {k: d[k] for k in d.files}
    required = {"type", "code_version", "name", "theory", "R", "z", "F", "E", "md5", "r_unit", "e_unit",
                "F_min", "F_max", "F_mean", "F_var", "E_min", "E_max", "E_mean", "E_var", "perms"}
    assert required <= set(data)
    assert str(data["type"]) == "d" and str(data["name"]) == "toy" and str(data["theory"]) == "made up"
    assert str(data["r_unit"]) == "Ang" and str(data["e_unit"]) == "kcal/mol"
    assert data["R"].shape == (2, 3, 3) and data["R"].dtype == np.float64
    assert data["F"].shape == (2, 3, 3) and data["E"].shape == (2,) and data["z"].shape == (3,)
    np.testing.assert_array_equal(data["R"], R)
    np.testing.assert_array_equal(data["F"], F)
    np.testing.assert_array_equal(data["E"], E)
    np.testing.assert_array_equal(data["z"], z)
    np.testing.assert_array_equal(data["perms"], perms)
    assert data["F_min"] == F.min() and data["E_var"] == pytest.approx(E.var())
    # the stored fingerprint is sGDML's, of the arrays as they read back
    assert data["md5"].item() == b"0b5f143c59519c95566040ce88749c88"
    assert data["md5"].item() == sr.sgdml_dataset_md5(data)
    # gdmlc reads it as an sGDML dataset
    ds = load_dataset(path)
    np.testing.assert_array_equal(ds.R, R)
    np.testing.assert_array_equal(ds.E, E)


def test_dataset_without_energies(tmp_path):
    R, z, _, F = small_arrays()
    path = sr.write_sgdml_dataset(tmp_path / "noE.npz", R, z, None, F, "toy", "x")
    with np.load(path) as d:
        assert "E" not in d.files and "E_mean" not in d.files and "perms" not in d.files
        assert d["md5"].item() == b"361558986ac9cd1dd9f98c68b95d0858"


@pytest.mark.parametrize("change, message", [
    (dict(F=np.zeros((2, 3, 2))), "F: expected shape"),
    (dict(R=np.zeros((2, 3))), "R: expected shape"),
    (dict(z=np.array([8, 1])), "z: expected shape"),
    (dict(z=np.array([8, 1, 0])), "atomic numbers"),
    (dict(E=np.zeros(3)), "E: expected shape"),
    (dict(E=np.array([1.0, np.nan])), "E: contains non-finite"),
])
def test_dataset_argument_errors(tmp_path, change, message):
    R, z, E, F = small_arrays()
    args = dict(R=R, z=z, E=E, F=F)
    args.update(change)
    with pytest.raises(ValueError, match=message):
        sr.write_sgdml_dataset(tmp_path / "bad.npz", args["R"], args["z"], args["E"], args["F"], "n", "t")
    assert not (tmp_path / "bad.npz").exists()


def test_dataset_path_and_perms_errors(tmp_path):
    R, z, E, F = small_arrays()
    with pytest.raises(ValueError, match="must end in .npz"):
        sr.write_sgdml_dataset(tmp_path / "x.dat", R, z, E, F, "n", "t")
    with pytest.raises(ValueError, match="identity"):
        sr.write_sgdml_dataset(tmp_path / "x.npz", R, z, E, F, "n", "t", perms=[[0, 2, 1]])
    with pytest.raises(ValueError, match="another element"):
        sr.write_sgdml_dataset(tmp_path / "x.npz", R, z, E, F, "n", "t", perms=[[0, 1, 2], [1, 0, 2]])
    with pytest.raises(ValueError, match="not a permutation"):
        sr.write_sgdml_dataset(tmp_path / "x.npz", R, z, E, F, "n", "t", perms=[[0, 1, 2], [0, 1, 1]])


@pytest.mark.parametrize("change, message", [
    (dict(train_idx=[0, 5]), "train_idx: indices must be in"),
    (dict(train_idx=[1, 1]), "duplicate"),
    (dict(train_idx=[]), "non-empty"),
    (dict(R_test=np.zeros((1, 2, 3))), "R_test: expected shape"),
    (dict(sigma=2.5, use_torch=True), "not an integer"),
    (dict(sigma=-1), "sigma must be a positive"),
    (dict(lam=-1e-10), "lam must be"),
    (dict(perms=[[1, 0, 2]]), "perms:"),
    (dict(perms="auto"), "perms must be"),
    (dict(batches=(0,)), "batches"),
    (dict(batches=()), "batches"),
    (dict(solver="gmres"), "solver must be"),
])
def test_run_sgdml_argument_errors(change, message):
    R, z, E, F = small_arrays()
    args = dict(R=R, z=z, E=E, F=F, train_idx=[0, 1], R_test=R[:1], sigma=10, lam=1e-10,
                perms=None, use_torch=False)
    args.update(change)
    with pytest.raises(ValueError, match=message):
        sr.run_sgdml(**args, python=NO_PYTHON)


def test_run_sgdml_all_argument_errors(tmp_path):
    R, z, E, F = small_arrays()
    not_sgdml = tmp_path / "plain.npz"
    np.savez(not_sgdml, coords=R)
    with pytest.raises(ValueError, match="not an sGDML dataset"):
        sr.run_sgdml_all(not_sgdml, 1, 1, 1, 10, tmp_path, python=NO_PYTHON)
    path = sr.write_sgdml_dataset(tmp_path / "toy.npz", np.concatenate([R, R + 0.01]), z,
                                  np.concatenate([E, E]), np.concatenate([F, F]), "toy", "x")
    with pytest.raises(ValueError, match="exceeds the 4 frames"):
        sr.run_sgdml_all(path, 2, 2, 1, 10, tmp_path, python=NO_PYTHON)
    with pytest.raises(ValueError, match="only integers"):
        sr.run_sgdml_all(path, 1, 1, 1, 2.5, tmp_path, python=NO_PYTHON)
    with pytest.raises(ValueError, match="n_valid must be a positive"):
        sr.run_sgdml_all(path, 1, 0, 1, 10, tmp_path, python=NO_PYTHON)
    with pytest.raises(ValueError, match="no such file"):
        sr.run_sgdml_all(tmp_path / "missing.npz", 1, 1, 1, 10, tmp_path, python=NO_PYTHON)


def test_parse_cli_output():
    text = ("\x1b[1m[DONE]\x1b[0m Assembling kernel matrix            took 0.4 s\n"
            "[100%] Bi-partite matching   took 1.5 s\r\n"
            "Test errors (MAE/RMSE)     50 + 50 points\n"
            "  Energy:            0.5221/0.6526 [kcal/mol]    relative to expected: +nan%\n"
            "  Forces:            1.7823/2.4807 [kcal/mol/Ang]\n"
            "    Magnitude:       2.2/3.0 [Ang]\n")
    errors, steps = sr._parse_cli_output(text)
    assert errors == {"energy_mae": 0.5221, "energy_rmse": 0.6526, "force_mae": 1.7823, "force_rmse": 2.4807}
    assert steps == [{"step": "Assembling kernel matrix", "seconds": 0.4},
                     {"step": "Bi-partite matching", "seconds": 1.5}]


def test_cg_progress_summary(tmp_path):
    from benchmarks.sgdml_cg import progress_summary, read_progress

    assert read_progress(tmp_path / "missing.jsonl") == [] and progress_summary([]) == {"products": 0}
    path = tmp_path / "progress.jsonl"
    path.write_text("".join(
        f'{{"product": {k}, "t": {10.0 + k}, "product_s": {s}, "iteration": {k - 1}, '
        f'"rel_resid": {0.1 ** k}, "vmhwm_bytes": {v}}}\n'
        for k, s, v in ((1, 3.0, 100), (2, 1.0, 300), (3, 2.0, 200))))
    summary = progress_summary(read_progress(path), every=2)
    assert summary["products"] == 3 and summary["iterations"] == 2
    assert summary["product_s_median"] == 2.0 and (summary["product_s_min"], summary["product_s_max"]) == (1.0, 3.0)
    assert summary["peak_vmhwm_bytes"] == 300 and summary["rel_resid"] == pytest.approx(1e-3)
    assert (summary["first_product_at_s"], summary["last_product_at_s"]) == (11.0, 13.0)
    assert [r["product"] for r in summary["trace"]] == [1, 3]  # every 2nd, and the last


# ------------------------------------------------------------------ with the sGDML environment

needs_venv = pytest.mark.skipif(
    not sr._installed(sr.VENV_DIR),
    reason="sGDML environment benchmarks/.sgdml-venv absent (create it with "
           "`python -c 'from benchmarks.sgdml_runner import ensure_sgdml_env; ensure_sgdml_env()'`)")
ETHANOL = RMD17_DIR / "rmd17_ethanol_train_01.npz"
needs_data = pytest.mark.skipif(not ETHANOL.is_file(), reason=f"{ETHANOL} absent")


@needs_venv
@needs_data
@pytest.mark.parametrize("use_torch", [False, True])
def test_sgdml_agrees_with_gdmlc(tmp_path, use_torch):
    import runtime
    from runtime.symmetry import find_permutations

    ds = load_dataset(ETHANOL, labels="old")
    train_idx = np.arange(0, 600, 30)  # 20 frames
    R_test = ds.R[700:720]
    perms = find_permutations(ds.R[train_idx], ds.z, progress=False)
    ours = runtime.GDML(sigma=10, lam=1e-10, symmetries=perms, progress=False)
    ours.fit(ds.R[train_idx], ds.F[train_idx], ds.E[train_idx], ds.z)
    E0, F0 = ours.predict(R_test)
    res = sr.run_sgdml(ds.R, ds.z, ds.E, ds.F, train_idx, R_test, 10, 1e-10, perms, use_torch,
                       batches=(1, 10), repeats=1, workdir=tmp_path)
    assert res["versions"]["sgdml"] == "1.0.3" and res["n_perms"] == len(perms) == 6
    assert res["symmetry"]["n_perms"] == 6
    assert {tuple(p) for p in res["symmetry"]["perms"]} == {tuple(p) for p in perms.tolist()}
    for key in ("assembly", "solve", "cholesky", "train"):
        assert len(res["timings"][key]) == 1 and res["timings"][key][0] > 0
    assert set(res["throughput"]) == {1, 10} and res["peak_rss_train_bytes"] > 0
    # torch: GDMLPredict casts geometries to float32; the same model on float64 input is exact
    E1, F1 = ((res["E_pred_float64_input"], res["F_pred_float64_input"]) if use_torch
              else (res["E_pred"], res["F_pred"]))
    assert np.max(np.abs(E1 - E0)) <= 1e-6 * np.max(np.abs(E0))
    assert np.max(np.abs(F1 - F0)) <= 1e-6 * np.max(np.abs(F0))


@needs_venv
@needs_data
def test_sgdml_all_cli(tmp_path):
    ds = load_dataset(ETHANOL, labels="old")
    path = sr.write_sgdml_dataset(tmp_path / "ethanol.npz", ds.R[:200], ds.z, ds.E[:200], ds.F[:200],
                                  "ethanol", "PBE+vdW-TS")
    res = sr.run_sgdml_all(path, 20, 20, 50, 10, tmp_path, cpu=True)
    assert res["wall_time"] > 0 and res["n_test"] == 50 and res["sigma"] == 10
    errors = res["test_errors"]
    assert set(errors) == {"energy_mae", "energy_rmse", "force_mae", "force_rmse"}
    for key, value in res["printed_errors"].items():
        assert value == pytest.approx(errors[key], abs=1e-4)


# 50 ethanol frames: sGDML's closed form would need more than 0.006 GB, so it takes its CG
# solver (with 5 inducing points); the time limit of 0 s stops it at its first product.
CG_ARGS = dict(sigma=10, lam=1e-10, perms="sgdml", use_torch=True, batches=(), repeats=1,
               train_repeats=1, solver="cg", max_memory_gb=0.006, seed=0)


@needs_venv
@needs_data
def test_sgdml_cg_stops_at_time_limit(tmp_path):
    from benchmarks.sgdml_cg import read_progress

    ds = load_dataset(ETHANOL, labels="old")
    res = sr.run_sgdml(ds.R, ds.z, ds.E, ds.F, np.arange(0, 1000, 20), ds.R[:5], workdir=tmp_path,
                       time_limit_s=0, **CG_ARGS)
    cg = res["cg"]
    assert cg["time_limit_reached"] and not cg["converged"] and cg["products"] == 1
    assert cg["checkpoint_iteration"] is None and "F_pred" not in res  # nothing to test yet
    records = read_progress(cg["progress_jsonl"])
    assert len(records) == 1 and records[0]["product_s"] > 0 and records[0]["vmhwm_bytes"] > 0
