"""The runtime's structure (issue 11, item 6): one backend protocol, the trained state as one
value, the stage hook of fit(), and geometries validated once per call."""
import ast
import inspect
import time

import numpy as np
import pytest

import runtime
from compiler import checks
from runtime import backends, model as model_module
from runtime.assembly import assemble
from runtime.data import DEFAULT_DATA
from runtime.trained import TrainedState

from numeric import rel

SIGMA = 10.0
TRAIN = np.linspace(5, 2995, 12).astype(int)
QUERIES = np.arange(40, 3000, 250)  # 12 held-out frames: the batched and the tiled schedule
FIT_STAGES = {"symmetries", "descriptors", "assembly", "solve", "coefficients", "energy_constant"}


@pytest.fixture(scope="module")
def ds():
    return runtime.load_dataset(DEFAULT_DATA)


def _fit(ds, **options):
    return runtime.GDML(sigma=SIGMA, progress=False, **options).fit(ds.R[TRAIN], ds.F[TRAIN], ds.E[TRAIN], ds.z)


@pytest.fixture(scope="module")
def trained(ds):
    return _fit(ds)


def test_the_stage_hook_reports_every_stage_with_times_within_the_fit(ds):
    calls = []
    start = time.perf_counter()
    model = _fit(ds, on_stage=lambda name, seconds: calls.append((name, seconds)))
    wall = time.perf_counter() - start
    assert {name for name, _ in calls} == FIT_STAGES  # no validation set: no "validation" stage
    assert all(seconds >= 0 for _, seconds in calls)
    assert sum(seconds for _, seconds in calls) <= wall
    # one sigma, no retry: one assembly and one solve; info holds the same totals
    assert [name for name, _ in calls].count("assembly") == [name for name, _ in calls].count("solve") == 1
    totals = {}
    for name, seconds in calls:
        totals[name] = totals.get(name, 0.0) + seconds
    assert model.info["timings"] == pytest.approx(totals, rel=0, abs=0)


def test_the_validation_stage_is_reported_once_per_sigma(ds):
    calls = []
    runtime.GDML(sigma=[5.0, SIGMA], progress=False, on_stage=lambda n, s: calls.append(n)).fit(
        ds.R[TRAIN], ds.F[TRAIN], ds.E[TRAIN], ds.z, valid=(ds.R[QUERIES], ds.F[QUERIES], ds.E[QUERIES]))
    assert calls.count("validation") == 2 and calls.count("assembly") == 2


def test_a_saved_and_loaded_model_has_an_equal_state_and_predicts_the_same(ds, trained, tmp_path):
    trained.save(tmp_path / "m.npz")
    loaded = runtime.GDML.load(tmp_path / "m.npz")
    assert isinstance(loaded.state, TrainedState) and loaded.state == trained.state
    for field in ("alpha", "B_train", "D_train", "perms", "z", "R_train"):
        np.testing.assert_array_equal(getattr(loaded.state, field), getattr(trained.state, field))
    E, F = trained.predict(ds.R[QUERIES])
    El, Fl = loaded.predict(ds.R[QUERIES])
    np.testing.assert_array_equal(El, E)
    np.testing.assert_array_equal(Fl, F)


def test_states_differing_in_one_array_entry_are_not_equal(trained):
    import dataclasses
    alpha = trained.state.alpha.copy()
    alpha.flat[3] += 1e-9
    assert dataclasses.replace(trained.state, alpha=alpha) != trained.state
    assert dataclasses.replace(trained.state, energy_constant=None) != trained.state


def test_a_state_copied_into_another_model_predicts_the_same(ds, trained):
    """What benchmarks/gpu_bench.py does to compare devices: one model's state in another."""
    other = runtime.GDML(sigma=SIGMA, progress=False)
    other.state = trained.state
    E, F = trained.predict(ds.R[QUERIES])
    Eo, Fo = other.predict(ds.R[QUERIES])
    np.testing.assert_array_equal(Eo, E)
    np.testing.assert_array_equal(Fo, F)
    assert other.sigma == trained.sigma and other.n_atoms == len(ds.z)


def test_an_untrained_model_has_no_state_attributes():
    model = runtime.GDML(sigma=SIGMA, progress=False)
    assert model.state is None
    with pytest.raises(AttributeError, match="not trained"):
        model.alpha


def test_both_backends_satisfy_the_protocol(trained):
    from runtime.cuda_backend import CudaBackend
    assert isinstance(trained.backend, backends.Backend)
    members = [name for name in dir(backends.Backend) if not name.startswith("_")]
    for name in members:  # the CUDA face without a GPU: its class has every member
        assert hasattr(CudaBackend, name), name


def test_gdml_has_no_device_branches():
    """GDML talks to its backend only: no test of the device in its methods."""
    source = inspect.getsource(model_module.GDML)
    tree = ast.parse(source.lstrip() if source.startswith(" ") else source)
    tests = [ast.unparse(node.test) for node in ast.walk(tree) if isinstance(node, (ast.If, ast.IfExp))]
    assert not [t for t in tests if "cuda" in t or "device" in t], tests


def test_cpu_matrix_free_product_equals_the_assembled_matrix(ds, trained):
    """C V without the matrix against the assembled training matrix (mirrored) times V."""
    model, n = trained.model, len(ds.z)
    R = ds.R[TRAIN[:4]]
    D, JAC, _ = model.descriptor.evaluate(R, ds.z)
    fperms = model.feature_permutations(trained.perms, n)
    hyper = trained.kernel_hyper
    K = assemble(model, D, JAC, fperms, hyper, n, progress=False)
    K = np.triu(K) + np.triu(K, 1).T  # the block upper triangle is written; blocks are symmetric too
    V = np.random.default_rng(3).normal(size=R.shape)
    got = trained.backend.matvec(D, JAC, fperms, hyper, V)
    assert rel(got, (K @ V.ravel()).reshape(V.shape)) <= 1e-10


def _count_geometry_checks(monkeypatch):
    calls = []
    original = checks.geometries

    def counting(R, *args, **kwargs):
        calls.append(np.shape(R))
        return original(R, *args, **kwargs)
    monkeypatch.setattr(checks, "geometries", counting)
    return calls


def test_predict_and_evaluate_check_geometries_once(ds, trained, monkeypatch):
    calls = _count_geometry_checks(monkeypatch)
    trained.predict(ds.R[QUERIES])
    assert len(calls) == 1
    trained.predict(ds.R[QUERIES[0]])  # one geometry: the calculator's case
    assert len(calls) == 2
    trained.evaluate(ds.R[QUERIES], ds.F[QUERIES], ds.E[QUERIES])
    assert len(calls) == 3


def test_the_ase_calculator_checks_geometries_once(ds, trained, monkeypatch):
    from ase import Atoms

    from runtime.ase_calculator import GDMLCalculator
    atoms = Atoms(numbers=ds.z, positions=ds.R[QUERIES[0]])
    atoms.calc = GDMLCalculator(trained)
    calls = _count_geometry_checks(monkeypatch)
    atoms.get_forces()
    assert len(calls) == 1


def test_validated_predictions_still_refuse_another_molecule(ds, trained):
    with pytest.raises(ValueError, match=f"expected {len(ds.z)} atoms"):
        trained.predict(ds.R[QUERIES][:, :-1], validated=True)


def test_cli_predict_checks_each_geometry_once(ds, trained, tmp_path, monkeypatch):
    from runtime.cli import main
    trained.save(tmp_path / "m.npz")
    np.savez(tmp_path / "g.npz", R=ds.R[QUERIES], z=ds.z)
    calls = _count_geometry_checks(monkeypatch)
    assert main(["predict", str(tmp_path / "m.npz"), str(tmp_path / "g.npz"), "-o", str(tmp_path / "p.npz")]) == 0
    assert len(calls) == 1
    with np.load(tmp_path / "p.npz") as f:
        E, F = trained.predict(ds.R[QUERIES])
        np.testing.assert_array_equal(f["F"], F)


def test_cli_predict_of_another_molecule_is_refused_without_z(ds, trained, tmp_path):
    """Without z the species are not checked, so the atom count is, with exit code 2."""
    from runtime.cli import main
    trained.save(tmp_path / "m.npz")
    np.savez(tmp_path / "g.npz", R=ds.R[QUERIES][:, :-1])
    assert main(["predict", str(tmp_path / "m.npz"), str(tmp_path / "g.npz")]) == 2
