"""How prediction is scheduled on threads (issue 10, item 7: fast under contention).

Small work (at most compiled.SERIAL_GEOMETRIES geometries: the ASE calculator's single
geometry, a few frames) runs its Numba loops on the calling thread alone, so that it never
waits at a parallel barrier for a thread whose core another process holds; larger batches
keep the caller's threads.  Checked here: the decision itself, that the generated kernels
really run with that thread count, that the count is restored, and that the single-threaded
results equal the all-threads results (bit for bit) and the plain fused loop (independent path).
No timings: those are benchmarks/md_bench.py's.
"""
import numba
import numpy as np
import pytest

import runtime
from compiler.build import compiled
from runtime.data import DEFAULT_DATA

from numeric import rel

SIGMA, LAM = 10.0, 1e-10
TRAIN = np.linspace(5, 2995, 20).astype(int)
QUERIES = np.arange(31, 3000, 97)  # 31 held-out frames: more than SERIAL_GEOMETRIES
PATH_TOLERANCE = 1e-10  # between different summation orders (see the last two tests)
KERNELS = ("descriptor_many", "predict_tiles", "predict_coefficients", "forces_from_descriptor_gradients",
           "predict_energy_weights")


@pytest.fixture(scope="module")
def ds():
    return runtime.load_dataset(DEFAULT_DATA)


def _fit(ds, energy_constraints):
    return runtime.GDML(sigma=SIGMA, lam=LAM, progress=False, energy_constraints=energy_constraints).fit(
        ds.R[TRAIN], ds.F[TRAIN], ds.E[TRAIN], ds.z)


@pytest.fixture(scope="module")
def forces_model(ds):
    """A symmetric ethanol model trained on forces (energies fix only the constant)."""
    return _fit(ds, energy_constraints=False)


@pytest.fixture(scope="module", params=["forces", "energy_constraints"])
def model(request, ds, forces_model):
    """Both kinds of model; 'energy_constraints' also runs the energy-weight kernel."""
    return forces_model if request.param == "forces" else _fit(ds, energy_constraints=True)


@pytest.fixture
def thread_counts(model, monkeypatch):
    """Records the caller's Numba thread count at each call of a generated kernel."""
    seen = []
    module = model.model.module
    for name in KERNELS:
        kernel = getattr(module, name)

        def spy(*args, _kernel=kernel, _name=name):
            seen.append((_name, numba.get_num_threads()))
            return _kernel(*args)
        monkeypatch.setattr(module, name, spy)
    return seen


def test_decision_small_work_one_thread_large_work_all():
    assert compiled.threads_for(1, available=8) == 1
    assert compiled.threads_for(compiled.SERIAL_GEOMETRIES, available=8) == 1
    assert compiled.threads_for(compiled.SERIAL_GEOMETRIES + 1, available=8) == 8
    assert compiled.threads_for(1000, available=3) == 3
    assert compiled.threads_for(1000) == numba.get_num_threads()  # default: the caller's count


def test_numba_threads_sets_and_restores_the_count():
    before = numba.get_num_threads()
    with compiled.numba_threads(1):
        assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == before
    with pytest.raises(RuntimeError, match="inside"):
        with compiled.numba_threads(1):
            raise RuntimeError("inside")
    assert numba.get_num_threads() == before  # restored after an exception too


@pytest.mark.parametrize("n_geometries", [1, 3, compiled.SERIAL_GEOMETRIES])
def test_small_predictions_run_every_kernel_on_one_thread(ds, model, thread_counts, n_geometries):
    before = numba.get_num_threads()
    R = ds.R[QUERIES[:n_geometries]]
    model.predict(R[0] if n_geometries == 1 else R)
    names = {name for name, _ in thread_counts}
    assert {"descriptor_many", "predict_tiles", "forces_from_descriptor_gradients"} <= names
    assert model.energy_constraints == ("predict_energy_weights" in names)
    assert all(count == 1 for _, count in thread_counts), thread_counts
    assert numba.get_num_threads() == before


def test_ase_calculator_single_geometry_runs_on_one_thread(ds, model, thread_counts):
    from ase import Atoms

    from runtime.ase_calculator import GDMLCalculator

    atoms = Atoms(numbers=ds.z, positions=ds.R[QUERIES[0]])
    atoms.calc = GDMLCalculator(model)
    atoms.get_forces()
    assert thread_counts and all(count == 1 for _, count in thread_counts), thread_counts


def test_large_batches_keep_the_callers_threads(ds, model, thread_counts):
    callers = numba.get_num_threads()
    model.predict(ds.R[QUERIES])
    # the batched path's chunks run on worker threads; the caller's own kernels use its count
    main = [count for name, count in thread_counts if name in ("descriptor_many", "forces_from_descriptor_gradients")]
    assert main and all(count == callers for count in main), thread_counts


def _predict_with_all_threads(model, R, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(compiled, "SERIAL_GEOMETRIES", 0)  # the schedule before: every call parallel
        return model.predict(R)


@pytest.mark.parametrize("n_geometries", [1, 2, 7, compiled.SERIAL_GEOMETRIES])
def test_one_thread_results_equal_all_threads_results(ds, model, monkeypatch, n_geometries):
    """Bit for bit: one thread sums the training rows in the same parts as all threads."""
    R = ds.R[QUERIES[:n_geometries]]
    E1, F1 = model.predict(R)
    Ea, Fa = _predict_with_all_threads(model, R, monkeypatch)
    np.testing.assert_array_equal(F1, Fa)
    np.testing.assert_array_equal(E1, Ea)


def _one_at_a_time(model, R):
    """Each geometry predicted alone: one thread, tiled loops."""
    singles = [model.predict(x) for x in R]
    return np.array([e for e, _ in singles]), np.array([f for _, f in singles])


def test_one_geometry_at_a_time_equals_one_large_batch(ds, model):
    """Single-geometry calls against one call on the whole batch (all threads, BLAS path).
    The two sum in different orders, and with lam = 1e-10 the coefficients are ~1e5 times the
    forces, so rounding alone gives ~1e-11 (as between the paths in test_compiler_blocks)."""
    R = ds.R[QUERIES]
    E1, F1 = _one_at_a_time(model, R)
    Eb, Fb = model.predict(R)
    assert rel(F1, Fb) <= PATH_TOLERANCE
    assert rel(E1 - E1.mean(), Eb - Eb.mean()) <= PATH_TOLERANCE


def test_one_geometry_at_a_time_equals_the_plain_loop(ds, forces_model):
    """Single-geometry calls against the plain fused loop per query (no centring, no tiles,
    no BLAS: an independent evaluation of the same sums; it has no energy-weight terms, so
    the forces-only model)."""
    model = forces_model
    R = ds.R[QUERIES]
    E1, F1 = _one_at_a_time(model, R)
    D, JAC, _ = model.model.descriptor.evaluate(R, ds.z)
    training = model._training
    Ed, Fd = model.model.predict_parts_direct(D, JAC, training.DT, training.BT, training.hyper, model.n_atoms)
    assert rel(F1, Fd * model.label_scale) <= PATH_TOLERANCE
    Ed = Ed * model.label_scale
    assert rel(E1 - E1.mean(), Ed - Ed.mean()) <= PATH_TOLERANCE


def test_calculator_recomputes_exactly_when_positions_or_species_change(ds, forces_model, monkeypatch):
    """The calculator's own state check (exact comparison of positions and atomic numbers,
    instead of ASE's np.allclose over every property): a repeated request is served from the
    cache, any move recomputes, a cell change (which the model ignores) does not."""
    from ase import Atoms

    from runtime.ase_calculator import GDMLCalculator

    calls = []
    predict = forces_model.predict
    monkeypatch.setattr(forces_model, "predict", lambda *a, **k: calls.append(1) or predict(*a, **k))
    atoms = Atoms(numbers=ds.z, positions=ds.R[QUERIES[0]])
    atoms.calc = GDMLCalculator(forces_model)
    first = atoms.get_forces()
    atoms.get_potential_energy()
    atoms.get_forces()
    assert len(calls) == 1
    atoms.set_cell([20.0, 20.0, 20.0])
    atoms.get_forces()
    assert len(calls) == 1
    moved = atoms.get_positions()
    moved[3, 1] += 1e-13  # a tiny move is a move
    atoms.set_positions(moved)
    second = atoms.get_forces()
    assert len(calls) == 2
    fresh = Atoms(numbers=ds.z, positions=moved)
    fresh.calc = GDMLCalculator(forces_model)
    np.testing.assert_array_equal(second, fresh.get_forces())
    assert not np.array_equal(first, second)
    numbers = atoms.get_atomic_numbers()
    numbers[[0, 3]] = numbers[[3, 0]]
    atoms.set_atomic_numbers(numbers)
    with pytest.raises(ValueError, match="first difference at atom 0"):
        atoms.get_forces()
