"""Never a silent NaN: the training matrix, the solution, the sigma sweep, predictions,
validation errors and saved models are finite or training fails with a clear error;
validation arrays are checked up front; the memory check respects cgroups and rlimits.

References are independent: numpy (np.std, np.isfinite), the linearity of GDML in its labels
(a model trained on c*F predicts c times the model trained on F), positions placed by the test,
and fake /proc and cgroup trees whose numbers the test chooses."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import runtime
import runtime.model as model_module
from compiler import checks
from compiler.errors import CompileError, DSLError
from runtime import assembly, backends
from runtime.model import GDML, NonFiniteResultError, TrainingError, rms
from runtime.solver import NonFiniteMatrixError, check_finite_solution, cholesky_lower_inplace, \
    cholesky_solve_inplace

from numeric import rel

DATA = Path(runtime.__file__).resolve().parent / "default_data" / "ethanol_gfn2xtb_500K.npz"
TRAIN = np.linspace(11, 2900, 12).astype(int)
VALID = np.arange(40, 3000, 400)  # 8 frames, none in TRAIN
DSL_SAMPLES = Path(__file__).resolve().parent / "dsl_samples"


@pytest.fixture(scope="module")
def ds():
    return runtime.load_dataset(DATA)


def _model(sigma=10.0, **kw):
    return GDML("inverse_distances", "matern52", sigma=sigma, lam=1e-10, symmetries=None, progress=False, **kw)


def _train(ds, idx=TRAIN):
    return ds.R[idx], ds.F[idx], ds.E[idx], ds.z


def _valid(ds):
    return ds.R[VALID].copy(), ds.F[VALID].copy(), ds.E[VALID].copy()


def _spd(n, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, n + 3))
    return x @ x.T + 1e-3 * np.eye(n)


# --------------------------------------------------------------------------- the solver

def test_all_nan_matrix_is_refused_by_the_blocked_cholesky():
    """OpenBLAS's dpotrf takes a NaN pivot as positive: without the check this 'factorises'."""
    a = np.full((40, 40), np.nan, order="F")
    with pytest.raises(NonFiniteMatrixError, match=r"not finite: entry \(0, 0\) is nan"):
        cholesky_lower_inplace(a, block=8, progress=False)


@pytest.mark.parametrize("row, col, value", [(0, 0, np.nan), (5, 2, np.inf), (17, 3, -np.inf),
                                             (39, 38, np.nan), (23, 16, np.nan), (30, 30, np.inf)])
def test_non_finite_entry_is_located(row, col, value):
    """Any panel, diagonal block or below it; garbage in the unread upper triangle is ignored."""
    a = np.array(_spd(40), order="F")
    a[np.triu_indices(40, 1)] = np.nan  # scratch: never read
    a[row, col] = value
    with pytest.raises(NonFiniteMatrixError) as info:
        cholesky_lower_inplace(a, block=8, progress=False)
    assert (info.value.row, info.value.column) == (row, col)


def test_huge_finite_entries_are_not_mistaken_for_non_finite_ones():
    """Entries whose sum overflows are still finite: the matrix factorises."""
    a = np.asfortranarray(np.diag(np.full(12, 1e308)))
    assert cholesky_lower_inplace(a, block=4, progress=False) == 0
    assert np.array_equal(np.diag(a), np.full(12, np.sqrt(1e308)))


def test_solve_refuses_a_c_ordered_matrix_with_a_nan_in_its_upper_triangle():
    n = 30
    K = np.triu(_spd(n, 1)) + np.tril(np.full((n, n), np.nan), -1)  # the runtime's layout
    K[4, 21] = np.nan
    with pytest.raises(NonFiniteMatrixError) as info:
        cholesky_solve_inplace(K, np.ones(n), 1e-8, progress=False)
    assert (info.value.row, info.value.column) == (21, 4)  # the same entry, seen from the lower triangle


def test_an_overflowing_solution_is_refused():
    """A finite, positive definite matrix whose solution overflows: x = 1e300 / 1e-300."""
    K = np.eye(6) * 1e-300
    with pytest.raises(NonFiniteMatrixError, match="solution is not finite"):
        cholesky_solve_inplace(K, np.full(6, 1e300), 0.0, progress=False)
    with pytest.raises(NonFiniteMatrixError, match="first at index 2"):
        check_finite_solution(np.array([1.0, 2.0, np.nan, np.inf]))


# --------------------------------------------------------------------------- the sigma sweep

def test_a_sigma_whose_matrix_is_nan_fails_clearly_and_leaves_no_model(ds, tmp_path):
    model = _model(sigma=1e-100)
    with pytest.raises(TrainingError, match=r"tried 1e-100\).*kernel matrix is not finite.*training frame 0"):
        model.fit(*_train(ds))
    with pytest.raises(RuntimeError, match="not trained"):
        model.save(tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()


def test_lambda_is_not_escalated_for_a_nan_matrix(ds, monkeypatch):
    """A NaN matrix is assembled once per sigma: a larger lambda cannot make it finite."""
    calls = []
    original = backends.assemble  # the CPU backend's assembly
    monkeypatch.setattr(backends, "assemble", lambda *a, **k: calls.append(1) or original(*a, **k))
    with pytest.raises(TrainingError, match="tried 1e-200, 1e-150"):
        _model(sigma=[1e-200, 1e-150]).fit(*_train(ds), valid=_valid(ds))
    assert len(calls) == 2


def test_the_sweep_skips_a_nan_sigma(ds):
    model = _model(sigma=[1e-200, 10.0]).fit(*_train(ds), valid=_valid(ds))
    skipped, chosen = model.info["sigma_sweep"]
    assert skipped["sigma"] == 1e-200 and "not finite" in skipped["skipped"]
    assert model.sigma == chosen["sigma"] == 10.0 and np.isfinite(chosen["force_mae"])
    alone = _model(sigma=10.0).fit(*_train(ds))
    assert rel(model.predict(ds.R[VALID])[1], alone.predict(ds.R[VALID])[1]) < 1e-12


def test_a_nan_validation_error_is_never_chosen(ds, monkeypatch):
    """`nan < x` is False: a NaN error must be skipped, not kept as the first 'best'."""
    nan_errors = {"force_mae": np.nan, "force_rmse": np.nan, "energy_mae": np.nan, "energy_rmse": np.nan}
    monkeypatch.setattr(model_module, "error_table", lambda *a: dict(nan_errors))
    model = _model(sigma=[5.0, 10.0])
    with pytest.raises(TrainingError, match=r"tried 5, 10\).*error \(force_mae.*\) is not finite"):
        model.fit(*_train(ds), valid=_valid(ds))
    assert not model._trained


# --------------------------------------------------------------------------- predictions and saving

@pytest.fixture
def trained(ds):
    return _model().fit(*_train(ds))


@pytest.mark.parametrize("attribute", ["label_scale", "energy_constant"])
def test_a_non_finite_prediction_is_an_error(ds, trained, attribute):
    setattr(trained, attribute, np.nan)  # as a corrupted model would
    with pytest.raises(NonFiniteResultError, match=r"not finite for frame 0 \(2 of 2 frames\)"):
        trained.predict(ds.R[VALID[:2]])
    with pytest.raises(NonFiniteResultError):
        trained.evaluate(*_valid(ds))


@pytest.mark.parametrize("attribute", ["alpha", "B_train"])
def test_a_model_with_non_finite_coefficients_is_not_saved(tmp_path, trained, attribute):
    getattr(trained, attribute).flat[7] = np.inf
    with pytest.raises(TrainingError, match="refusing to save"):
        trained.save(tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()


# --------------------------------------------------------------------------- huge labels

def test_rms_matches_numpy_std_without_overflow():
    x = np.random.default_rng(2).standard_normal(1000)
    assert rms(x - x.mean()) == pytest.approx(np.std(x), rel=1e-13)
    assert rms((x - x.mean()) * 1e200) == pytest.approx(np.std(x) * 1e200, rel=1e-13)
    assert rms(np.zeros(4)) == 0.0


def test_forces_of_1e160_train_a_finite_model_scaled_by_1e160(ds):
    """GDML is linear in its labels: 1e160 times the labels, 1e160 times the prediction."""
    R, F, E, z = _train(ds)
    scale = 1e160
    big = _model().fit(R, F * scale, E * scale, z)
    small = _model().fit(R, F, E, z)
    assert big.label_scale == pytest.approx(np.std(F) * scale, rel=1e-12)
    E_big, F_big = big.predict(ds.R[VALID])
    E_small, F_small = small.predict(ds.R[VALID])
    assert np.isfinite(F_big).all() and np.isfinite(E_big).all()
    assert rel(F_big / scale, F_small) < 1e-10
    assert rel(E_big / scale, E_small) < 1e-10


# --------------------------------------------------------------------------- arrays validated up front

def _nan_in_valid_F(ds):
    R, F, E = _valid(ds)
    F[1, 2, 0] = np.nan
    return (R, F, E), r"validation data: F: frame 1, atom 2 is not finite"


def _nan_in_valid_R(ds):
    R, F, E = _valid(ds)
    R[3, 5, 1] = np.inf
    return (R, F, E), r"validation data: R: frame 3, atom 5 is not finite"


def _coincident_valid_atoms(ds):
    R, F, E = _valid(ds)
    R[2, 4] = R[2, 1]
    return (R, F, E), r"validation geometries: frame 2: atoms 1 and 4 are 0 Å apart"


def _wrong_valid_atom_count(ds):
    R, F, E = _valid(ds)
    return (R[:, :8], F[:, :8], E), r"validation geometries: expected 9 atoms"


def _nan_in_valid_E(ds):
    R, F, E = _valid(ds)
    E[6] = np.nan
    return (R, F, E), r"validation data: E: frame 6 is not finite"


@pytest.mark.parametrize("case", [_nan_in_valid_F, _nan_in_valid_R, _coincident_valid_atoms,
                                  _wrong_valid_atom_count, _nan_in_valid_E])
def test_validation_arrays_are_checked_before_any_work(ds, monkeypatch, case):
    valid, message = case(ds)
    model = _model(sigma=[5.0, 10.0])

    def must_not_run(*args, **kwargs):
        raise AssertionError("work started before the validation data was checked")
    monkeypatch.setattr(backends, "assemble", must_not_run)
    monkeypatch.setattr(model.model.descriptor, "evaluate", must_not_run)
    with pytest.raises(ValueError, match=message):
        model.fit(*_train(ds), valid=valid)


def test_valid_must_be_a_tuple_of_arrays(ds):
    with pytest.raises(ValueError, match=r"valid must be a tuple \(R, F\), \(R, F, E\) or, for several "
                                         r"compositions, \(R, F, E, z\)"):
        _model(sigma=[5.0, 10.0]).fit(*_train(ds), valid=ds.R[VALID])


def test_geometry_errors_can_name_the_files_frame_index():
    R = np.random.default_rng(3).standard_normal((3, 4, 3))
    R[1, 3] = R[1, 0]
    with pytest.raises(ValueError, match=r"test data: frame 207: atoms 0 and 3"):
        checks.geometries(R, "test data", frame_index=[5, 207, 999])
    R[2, 1, 0] = np.nan
    with pytest.raises(ValueError, match=r"frame 999, atom 1 has a non-finite"):
        checks.geometries(R, "test data", frame_index=np.array([5, 207, 999]))
    with pytest.raises(ValueError, match=r"frame_index needs one entry per frame \(3\)"):
        checks.geometries(R, "test data", frame_index=[1, 2])


# --------------------------------------------------------------------------- a kernel 0/0 at d = d'

def test_a_kernel_that_is_0_over_0_at_the_origin_never_trains_a_nan_model(ds):
    """Its energy-energy entries need k(d, d): refused at compile time, a clear training
    error, or (if the compiler guards the value) a finite model -- never NaN."""
    kernel = f"{DSL_SAMPLES / 'zero_over_zero_kernel.py'}:gaussian_mixture_0_over_0"
    try:
        model = GDML("inverse_distances", kernel, sigma=10.0, lam=1e-8, symmetries=None, progress=False,
                     energy_constraints=True)
    except (CompileError, DSLError):
        return
    try:
        model.fit(*_train(ds))
    except TrainingError as exc:
        assert "kernel matrix is not finite" in str(exc) and "energy" in str(exc)
        return
    E, F = model.predict(ds.R[VALID])
    assert np.isfinite(E).all() and np.isfinite(F).all()


def test_nan_energy_rows_are_reported_by_frame(ds, monkeypatch):
    """The same failure without depending on the compiler: a NaN written into an energy row."""
    model = _model(energy_constraints=True)
    original = model.model.assemble_energy_rows

    def nan_energy_entry(D, JAC, fperms, hyper, out, n_atoms):
        original(D, JAC, fperms, hyper, out, n_atoms)
        row = 3 * n_atoms * D.shape[0] + 4  # the energy of training frame 4, on the diagonal
        out[row, row] = np.nan
    monkeypatch.setattr(model.model, "assemble_energy_rows", nan_energy_entry)
    with pytest.raises(TrainingError, match="training frame 4, energy with training frame 4, energy"):
        model.fit(*_train(ds))


# --------------------------------------------------------------------------- the memory check

GIB = 2 ** 30


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _meminfo(tmp_path, available_gib=64):
    _write(tmp_path / "meminfo",
           f"MemTotal: {128 * GIB // 1024} kB\nMemAvailable: {available_gib * GIB // 1024} kB\n")
    return tmp_path / "meminfo"


def test_cgroup_v2_limit_and_its_ancestors(tmp_path):
    root = tmp_path / "cgroup"
    _write(tmp_path / "self_cgroup", "0::/user.slice/job\n")
    _write(root / "user.slice/job/memory.max", f"{2 * GIB}\n")
    _write(root / "user.slice/job/memory.current", f"{GIB + GIB // 2}\n")
    _write(root / "user.slice/job/memory.stat", "anon 5\ninactive_file 4096\nactive_file 7\n")
    _write(root / "user.slice/memory.max", "max\n")  # no limit at this level
    _write(root / "user.slice/memory.current", f"{10 * GIB}\n")
    kwargs = dict(meminfo=_meminfo(tmp_path), cgroup_list=tmp_path / "self_cgroup", cgroup_root=root, rlimits={})
    assert assembly.available_memory_bytes(**kwargs) == GIB // 2 + 4096
    _write(root / "user.slice/memory.max", f"{10 * GIB + GIB // 4}\n")  # a tighter ancestor
    assert assembly.available_memory_bytes(**kwargs) == GIB // 4
    _write(root / "memory.max", f"{100 * GIB}\n")
    _write(root / "memory.current", f"{100 * GIB - GIB // 8}\n")  # and the tightest at the root
    assert assembly.available_memory_bytes(**kwargs) == GIB // 8


def test_cgroup_v1_limit(tmp_path):
    root = tmp_path / "cgroup"
    _write(tmp_path / "self_cgroup", "5:cpu,cpuacct:/x\n4:memory:/docker/abc\n0::/\n")
    folder = root / "memory/docker/abc"
    _write(folder / "memory.limit_in_bytes", f"{4 * GIB}\n")
    _write(folder / "memory.usage_in_bytes", f"{3 * GIB}\n")
    _write(folder / "memory.stat", "inactive_file 1\ntotal_inactive_file 1024\n")
    _write(root / "memory/memory.limit_in_bytes", "9223372036854771712\n")  # v1's 'no limit'
    _write(root / "memory/memory.usage_in_bytes", f"{50 * GIB}\n")
    kwargs = dict(meminfo=_meminfo(tmp_path), cgroup_list=tmp_path / "self_cgroup", cgroup_root=root, rlimits={})
    assert assembly.available_memory_bytes(**kwargs) == GIB + 1024
    folder.joinpath("memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert assembly.available_memory_bytes(**kwargs) == 64 * GIB  # MemAvailable alone


def test_rlimits_count_what_is_already_mapped(tmp_path):
    _write(tmp_path / "status", f"Name: python\nVmSize: {3 * GIB // 1024} kB\nVmData: {GIB // 1024} kB\n")
    kwargs = dict(meminfo=_meminfo(tmp_path), cgroup_list=tmp_path / "none", cgroup_root=tmp_path / "none",
                  status=tmp_path / "status")
    assert assembly.available_memory_bytes(rlimits={"RLIMIT_AS": 5 * GIB}, **kwargs) == 2 * GIB
    assert assembly.available_memory_bytes(rlimits={"RLIMIT_AS": 5 * GIB, "RLIMIT_DATA": GIB + 10},
                                           **kwargs) == 10
    assert assembly.available_memory_bytes(rlimits={"RLIMIT_AS": -1}, **kwargs) == 64 * GIB  # RLIM_INFINITY


def test_nothing_known_means_no_limit(tmp_path):
    missing = tmp_path / "missing"
    assert assembly.available_memory_bytes(missing, missing, missing, missing, rlimits={}) is None


def test_check_memory_refuses_a_matrix_beyond_a_real_rlimit_as():
    """In a subprocess: RLIMIT_AS set to 256 MiB above what is mapped; a 1 GiB matrix is refused."""
    code = (
        "import resource\n"
        "from runtime.assembly import MemoryLimitError, check_memory, proc_field_bytes\n"
        "size = proc_field_bytes('VmSize', '/proc/self/status')\n"
        "resource.setrlimit(resource.RLIMIT_AS, (size + 2**28, resource.getrlimit(resource.RLIMIT_AS)[1]))\n"
        "check_memory(4096)\n"  # 128 MiB: fits
        "try:\n"
        "    check_memory(11586, packed=False)\n"  # 1 GiB as a full matrix
        "except MemoryLimitError as exc:\n"
        "    print('refused:', exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "refused: the training matrix needs 1.0 GiB" in out.stdout


def test_benchmarks_read_proc_through_the_runtime():
    """One reader of /proc memory fields: the benchmark helpers give MemTotal as parsed here."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import environment, floors, measure
    total = next(int(line.split()[1]) * 1024 for line in open("/proc/meminfo") if line.startswith("MemTotal:"))
    assert floors._memory_bytes() == environment.machine()["ram_bytes"] == total
    assert 0 < measure.current_rss_bytes() <= measure.peak_rss_bytes()


# --------------------------------------------------------------------------- the command line

def test_cli_train_with_a_nan_sigma_exits_2_and_writes_nothing(tmp_path, capsys):
    from runtime.cli import main
    out = tmp_path / "model.npz"
    code = main(["train", "--n-train", "10", "--n-valid", "0", "--n-test", "5", "--sigma", "1e-100",
                 "--no-sym", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "no sigma gives a finite model (tried 1e-100)" in err and "Traceback" not in err
    assert not out.exists()
