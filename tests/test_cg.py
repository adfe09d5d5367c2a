"""Matrix-free preconditioned CG (runtime/cg.py, runtime/preconditioner.py) against the dense
training matrix and the dense Cholesky solve; the solver options of GDML and the CLI."""
import numpy as np
import pytest

import runtime
from runtime import cg, model as model_module
from runtime.assembly import assemble
from runtime.cli import main
from runtime.matvec import TrainingProduct
from runtime.model import GDML, TrainingError
from runtime.preconditioner import TrainingColumns, make_preconditioner
from runtime.solver import NonFiniteMatrixError, NotPositiveDefiniteError
from numeric import ethanol_training_problem

SIGMA = 2.0
TRAIN = np.random.default_rng(0).permutation(2000)[:30]
TEST = np.arange(1000, 1060)


def rel(a, b):
    return np.linalg.norm(np.ravel(a) - np.ravel(b)) / np.linalg.norm(np.ravel(b))


@pytest.fixture(scope="module")
def ds():
    return runtime.load_dataset(runtime.DEFAULT_DATA)


@pytest.fixture(scope="module")
def problem(ds):
    """(gdml, D, JAC, fperms, hyper, R) for 8 ethanol frames with its 6 permutations."""
    R = ds.R[TRAIN[:8]]
    return (*ethanol_training_problem(R, ds.z, ds.R[TRAIN], SIGMA), R)


def full_matrix(problem, energy_rows):
    """The assembled training matrix, mirrored (the independent reference)."""
    gdml, D, JAC, fperms, hyper, R = problem
    K = assemble(gdml.model, D, JAC, fperms, hyper, R.shape[1], progress=False, energy_rows=energy_rows)
    return np.triu(K) + np.triu(K, 1).T


@pytest.mark.parametrize("energy_rows", [False, True])
def test_matrix_free_product_equals_the_assembled_matrix(problem, energy_rows):
    gdml, D, JAC, fperms, hyper, R = problem
    K = full_matrix(problem, energy_rows)
    op = cg.TrainingOperator(gdml.backend, D, JAC, fperms, hyper, R.shape[1], lam=0.3, energy_rows=energy_rows)
    x = np.random.default_rng(1).normal(size=(len(K), 2))
    for column in x.T:
        assert rel(op.product(column), K @ column) <= 1e-10
        assert rel(op(column), K @ column + 0.3 * column) <= 1e-10


@pytest.mark.parametrize("precomputed_bytes", [0, 1 << 30])  # dq DT^T recomputed per product, or kept
@pytest.mark.parametrize("energy_rows", [False, True])
def test_prepared_product_equals_the_assembled_matrix(problem, energy_rows, precomputed_bytes):
    gdml, D, JAC, fperms, hyper, R = problem
    K = full_matrix(problem, energy_rows)
    plan = TrainingProduct(gdml.model, D, JAC, fperms, hyper, precomputed_bytes=precomputed_bytes)
    assert (plan.T is None) == (precomputed_bytes == 0)
    m, n_force = len(D), K.shape[0] - (len(D) if energy_rows else 0)
    for x in np.random.default_rng(4).normal(size=(3, len(K))):  # the same plan for several vectors
        V = x[:n_force].reshape(m, -1, 3)
        if energy_rows:
            F, E = plan.matvec_energy(V, x[n_force:])
            assert rel(np.concatenate([F.ravel(), E]), K @ x) <= 1e-12
        else:
            assert rel(plan.matvec(V), K @ x) <= 1e-12


def _product_matrix(gdml, D, JAC, fperms, hyper, n_atoms):
    K = assemble(gdml.model, D, JAC, fperms, hyper, n_atoms, progress=False)
    return np.triu(K) + np.triu(K, 1).T


def test_backend_products_follow_sigma_and_data_changes(problem):
    """backend.matvec reuses its plan only for equal values: a new sigma, training data changed
    in place, and new permutations each give the product of the new matrix, never the old one's."""
    gdml, D, JAC, fperms, hyper, R = problem
    n_atoms = R.shape[1]
    V = np.random.default_rng(5).normal(size=(len(D), n_atoms, 3))
    D, JAC = D.copy(), JAC.copy()
    first = gdml.backend.matvec(D, JAC, fperms, hyper, V)
    assert rel(first, _product_matrix(gdml, D, JAC, fperms, hyper, n_atoms) @ V.ravel()) <= 1e-12
    other_sigma = gdml._kernel_hyper(2 * SIGMA)
    assert rel(gdml.backend.matvec(D, JAC, fperms, other_sigma, V),
               _product_matrix(gdml, D, JAC, fperms, other_sigma, n_atoms) @ V.ravel()) <= 1e-12
    D *= 1.1  # the same arrays, other values
    JAC *= 0.9
    changed = gdml.backend.matvec(D, JAC, fperms, hyper, V)
    assert rel(changed, first) > 1e-2
    assert rel(changed, _product_matrix(gdml, D, JAC, fperms, hyper, n_atoms) @ V.ravel()) <= 1e-12
    identity = fperms[:1]
    assert rel(gdml.backend.matvec(D, JAC, identity, hyper, V),
               _product_matrix(gdml, D, JAC, identity, hyper, n_atoms) @ V.ravel()) <= 1e-12


def test_a_plan_answers_for_the_values_it_was_built_from(problem):
    """The plan copies its inputs: changing the caller's arrays afterwards changes neither its
    products nor what it says it was prepared for."""
    gdml, D, JAC, fperms, hyper, R = problem
    D2, JAC2 = D.copy(), JAC.copy()
    plan = TrainingProduct(gdml.model, D2, JAC2, fperms, hyper)
    assert plan.prepared_for(D, JAC, fperms, hyper)
    assert not plan.prepared_for(D, JAC, fperms, gdml._kernel_hyper(2 * SIGMA))
    assert not plan.prepared_for(D[:-1], JAC[:-1], fperms, hyper)
    V = np.random.default_rng(6).normal(size=(len(D), R.shape[1], 3))
    before = plan.matvec(V)
    D2 += 1.0
    JAC2 *= 2.0
    assert not plan.prepared_for(D2, JAC2, fperms, hyper)
    assert np.array_equal(plan.matvec(V), before)
    assert rel(before, _product_matrix(gdml, D, JAC, fperms, hyper, R.shape[1]) @ V.ravel()) <= 1e-12


def test_a_plan_refuses_vectors_of_another_problem(problem):
    gdml, D, JAC, fperms, hyper, R = problem
    plan = TrainingProduct(gdml.model, D, JAC, fperms, hyper)
    with pytest.raises(ValueError, match=r"V: expected 8 x n_atoms x 3 entries, got shape \(7, 9, 3\)"):
        plan.matvec(np.zeros((7, 9, 3)))
    with pytest.raises(ValueError, match=r"w: expected 8 energy weights, got shape \(3,\)"):
        plan.matvec_energy(np.zeros((8, 9, 3)), np.zeros(3))


def test_a_backend_without_a_plan_multiplies_through_its_matvec(problem):
    """The CUDA face's training_product (UnpreparedProduct) calls backend.matvec per product."""
    from runtime.backends import UnpreparedProduct
    gdml, D, JAC, fperms, hyper, R = problem
    K = full_matrix(problem, energy_rows=True)
    product = UnpreparedProduct(gdml.backend, D, JAC, fperms, hyper)
    x = np.random.default_rng(8).normal(size=len(K))
    V, w = x[:-len(D)].reshape(len(D), -1, 3), x[-len(D):]
    F, E = product.matvec_energy(V, w)
    assert rel(np.concatenate([F.ravel(), E]), K @ x) <= 1e-12
    n_force = K.shape[0] - len(D)
    assert rel(product.matvec(V), K[:n_force, :n_force] @ V.ravel()) <= 1e-12


def test_training_operator_prepares_its_product_once(problem, monkeypatch):
    gdml, D, JAC, fperms, hyper, R = problem
    built = []
    original = gdml.backend.training_product
    monkeypatch.setattr(gdml.backend, "training_product", lambda *args: built.append(1) or original(*args))
    op = cg.TrainingOperator(gdml.backend, D, JAC, fperms, hyper, R.shape[1], lam=0.3)
    for x in np.random.default_rng(7).normal(size=(3, op.size)):
        op(x)
    assert len(built) == 1 and op.plan.prepared_for(D, JAC, fperms, hyper)


@pytest.mark.parametrize("energy_rows", [False, True])
def test_training_columns_and_diagonal_equal_the_assembled_matrix(problem, energy_rows):
    gdml, D, JAC, fperms, hyper, R = problem
    K = full_matrix(problem, energy_rows)
    columns = TrainingColumns(gdml.model, D, JAC, fperms, hyper, R.shape[1], energy_rows)
    points = np.array([1, 4, 5])
    assert rel(columns.columns(points), K[:, columns.indices(points)]) <= 1e-12
    assert rel(columns.diagonal(), np.diag(K)) <= 1e-12


def test_rigid_body_modes_are_null_vectors_of_the_matrix(problem):
    """Translations and rotations of each geometry: K n = 0 (against the dense matrix), 6 per point."""
    gdml, D, JAC, fperms, hyper, R = problem
    K = full_matrix(problem, energy_rows=True)
    modes = cg.RigidModes(R, JAC, gdml.backend.contract, K.shape[0] - len(R))
    Q = modes.Q
    assert [np.linalg.matrix_rank(q) for q in Q] == [6] * len(R)
    for i in range(len(R)):
        for k in range(6):
            n = np.zeros(len(K))
            n[i * Q.shape[1]:(i + 1) * Q.shape[1]] = Q[i, :, k]
            assert np.linalg.norm(K @ n) <= 1e-10 * np.linalg.norm(K)
    x = np.random.default_rng(2).normal(size=len(K))
    removed = modes.remove(x)
    assert np.allclose(modes.component(removed), 0.0, atol=1e-12)
    assert np.allclose(removed[-len(R):], x[-len(R):])  # energy entries untouched


def test_conjugate_gradients_solves_an_spd_system():
    """The bare iteration on a dense SPD matrix against numpy's solve."""
    rng = np.random.default_rng(3)
    A = rng.normal(size=(60, 60))
    A = A @ A.T + 60 * np.eye(60)
    b = rng.normal(size=60)
    result = cg.conjugate_gradients(lambda v: A @ v, b, lambda r: r / np.diag(A), tol=1e-12, maxiter=200)
    assert rel(result.x, np.linalg.solve(A, b)) <= 1e-10
    assert result.residual == pytest.approx(np.linalg.norm(b - A @ result.x) / np.linalg.norm(b))


def test_conjugate_gradients_refuses_an_indefinite_matrix():
    A = np.diag([1.0, 2.0, -3.0])
    with pytest.raises(NotPositiveDefiniteError, match="not positive definite"):
        cg.conjugate_gradients(lambda v: A @ v, np.ones(3), lambda r: r, tol=1e-12, maxiter=10)


def _fit(ds, **kw):
    kw.setdefault("sigma", SIGMA)
    return GDML(progress=False, **kw).fit(ds.R[TRAIN], ds.F[TRAIN], ds.E[TRAIN], ds.z)


def _coefficients(gdml):
    parts = [gdml.alpha.ravel()]
    if gdml.energy_weights is not None:
        parts.append(gdml.energy_weights)
    return np.concatenate(parts)


@pytest.fixture(scope="module")
def dense(ds):
    """Dense Cholesky models at lambda 1e-6: K + lam I is well enough conditioned there (about
    1e8) that both solutions are accurate to far better than 1e-6."""
    return {ec: _fit(ds, lam=1e-6, solver="cholesky", energy_constraints=ec) for ec in (False, True)}


@pytest.mark.parametrize("energy_constraints", [False, True])
@pytest.mark.parametrize("preconditioner", ["rpcholesky", "nystrom"])
def test_cg_solution_equals_the_dense_solution(ds, dense, energy_constraints, preconditioner):
    gdml = _fit(ds, lam=1e-6, solver="cg", cg_tol=1e-10, preconditioner=preconditioner,
                energy_constraints=energy_constraints)
    reference = dense[energy_constraints]
    assert gdml.info["solver"] == "cg" and reference.info["solver"] == "cholesky"
    assert gdml.info["cg_residual"] <= 1e-10 and gdml.info["cg_preconditioner"] == preconditioner
    assert rel(_coefficients(gdml), _coefficients(reference)) <= 1e-6
    E, F = gdml.predict(ds.R[TEST])
    E_ref, F_ref = reference.predict(ds.R[TEST])
    assert rel(F, F_ref) <= 1e-6
    assert np.max(np.abs(E - E_ref)) <= 1e-6 * np.max(np.abs(E_ref - np.mean(E_ref)))


def test_cg_predictions_equal_dense_ones_at_the_default_lambda(ds):
    """lambda 1e-10: K + lam I has a condition number near 1e12, so either solution's own error
    is about 1e12 x eps; predictions agree to far better than the model's errors."""
    gdml, reference = _fit(ds, solver="cg", cg_tol=1e-10), _fit(ds, solver="cholesky")
    assert gdml.info["cg_residual"] <= 1e-10
    assert rel(gdml.predict(ds.R[TEST])[1], reference.predict(ds.R[TEST])[1]) <= 1e-4


def test_preconditioners_reduce_the_iterations(ds, problem):
    """On one fixed problem (seeded inducing points) both low-rank preconditioners need fewer
    iterations than none, at a rank of 8 of the 30 training points."""
    iterations = {}
    for kind in ("none", "nystrom", "rpcholesky"):
        gdml = _fit(ds, lam=1e-3, solver="cg", cg_tol=1e-6, cg_maxiter=3000, preconditioner=kind,
                    preconditioner_points=8)
        iterations[kind] = gdml.info["cg_iterations"]
    assert iterations["nystrom"] < iterations["none"] and iterations["rpcholesky"] < iterations["none"], iterations


def test_preconditioner_is_positive_definite(problem):
    """P^{-1} of a low-rank approximation is symmetric positive definite (CG needs that)."""
    gdml, D, JAC, fperms, hyper, R = problem
    columns = TrainingColumns(gdml.model, D, JAC, fperms, hyper, R.shape[1], energy_rows=True)
    for kind in ("nystrom", "rpcholesky"):
        P = make_preconditioner(kind, columns, 1e-10, n_points=3)
        inverse = np.stack([P(e) for e in np.eye(columns.size)], axis=1)
        assert np.allclose(inverse, inverse.T, rtol=0, atol=1e-10 * np.abs(inverse).max())
        assert np.linalg.eigvalsh(inverse).min() > 0


def test_non_convergence_is_a_clear_error(ds):
    gdml = GDML(sigma=SIGMA, progress=False, solver="cg", cg_maxiter=2, preconditioner="none")
    with pytest.raises(cg.CGNotConvergedError, match=r"did not converge in 2 iterations .* sigma 2, lambda"):
        gdml.fit(ds.R[TRAIN], ds.F[TRAIN], ds.E[TRAIN], ds.z)
    assert gdml.state is None  # nothing half-solved can be saved or used


def test_non_finite_products_name_sigma(ds, monkeypatch):
    gdml = GDML(sigma=SIGMA, progress=False, solver="cg", preconditioner="none")
    monkeypatch.setattr(TrainingProduct, "matvec", lambda self, V: np.full(np.shape(V), np.nan))
    with pytest.raises(TrainingError, match=r"sigma 2: conjugate gradients produced a non-finite value"):
        gdml.fit(ds.R[TRAIN], ds.F[TRAIN], ds.E[TRAIN], ds.z)
    with pytest.raises(NonFiniteMatrixError, match=r"non-finite .* with sigma 2"):
        gdml._solve_cg(*_solve_cg_arguments(gdml, ds))


def _solve_cg_arguments(gdml, ds):
    """(base, JAC, fperms, sigma, y) as _fit hands them to _solve_cg."""
    from runtime.trained import TrainedState
    R = ds.R[TRAIN]
    D, JAC = gdml.backend.evaluate(R, ds.z)
    perms = gdml._permutations(R, ds.z)
    base = TrainedState(z=ds.z, R_train=R, perms=perms, alpha=None, D_train=D, B_train=None, energy_weights=None,
                        sigma=None, lam_used=None, label_scale=1.0, energy_constant=None)
    return base, JAC, gdml.model.feature_permutations(perms, len(ds.z)), SIGMA, ds.F[TRAIN].ravel()


def test_auto_uses_cg_without_allocating_a_matrix_when_dense_does_not_fit(ds, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the CG path allocated a training matrix")
    monkeypatch.setattr(model_module, "dense_fits", lambda n_rows: False)
    monkeypatch.setattr(model_module, "allocate_training_matrix", refuse)
    gdml = GDML(sigma=[2.0, 4.0], progress=False)  # a sweep: one CG solve per sigma
    gdml.fit(ds.R[TRAIN], ds.F[TRAIN], ds.E[TRAIN], ds.z, valid=(ds.R[TEST], ds.F[TEST], ds.E[TEST]))
    assert gdml.info["solver"] == "cg"
    assert [r["sigma"] for r in gdml.info["sigma_sweep"]] == [2.0, 4.0]
    assert all(r["cg_iterations"] >= 1 for r in gdml.info["sigma_sweep"])
    assert "cg_iterations" not in gdml.info["validation"]


def test_auto_uses_cholesky_when_the_matrix_fits(ds):
    assert _fit(ds).info["solver"] == "cholesky"


@pytest.mark.parametrize("option, value", [("solver", "qr"), ("cg_tol", 0.0), ("cg_tol", 1.5), ("cg_maxiter", 0),
                                           ("preconditioner", "ilu"), ("preconditioner_points", 0)])
def test_bad_solver_options_are_refused(option, value):
    with pytest.raises(ValueError, match=option):
        GDML(sigma=SIGMA, **{option: value})


def test_cli_trains_with_cg_and_stores_its_residual(tmp_path, capsys):
    out = tmp_path / "cg.npz"
    code = main(["train", "--n-train", "20", "--n-valid", "0", "--n-test", "20", "--sigma", "2", "--solver", "cg",
                 "--cg-tol", "1e-9", "--cg-maxiter", "500", "--preconditioner", "nystrom", "-o", str(out)])
    assert code == 0
    assert "conjugate gradients:" in capsys.readouterr().out
    info = GDML.load(out).info  # the model file keeps them
    assert info["solver"] == "cg" and info["cg_preconditioner"] == "nystrom"
    assert 1 <= info["cg_iterations"] <= 500 and info["cg_residual"] <= 1e-9


@pytest.mark.parametrize("args", [["--solver", "qr"], ["--cg-tol", "2"], ["--cg-tol", "x"], ["--cg-maxiter", "0"],
                                  ["--preconditioner", "ilu"]])
def test_cli_bad_solver_values_exit_2(args, capsys):
    assert main(["train", "--n-train", "5", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gdmlc: error:") and args[0] in err


def test_cli_non_convergence_exits_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "cg.npz"
    code = main(["train", "--n-train", "20", "--n-valid", "0", "--n-test", "0", "--sigma", "2", "--solver", "cg",
                 "--cg-maxiter", "1", "--preconditioner", "none", "-o", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert "did not converge in 1 iterations" in err and "--cg-maxiter" in err
    assert not out.exists()


RESUMABLE = dict(lam=1e-3, solver="cg", cg_tol=1e-9, preconditioner="nystrom", preconditioner_points=8)


@pytest.fixture(scope="module")
def uninterrupted(ds):
    return _fit(ds, **RESUMABLE)


def _interrupt_after(gdml, calls):
    """Make the training product raise KeyboardInterrupt (as Ctrl-C) on call number ``calls``."""
    original, count = gdml.backend.training_product, [0]

    def training_product(*args):
        plan = original(*args)
        product = plan.matvec

        def counted(V):
            count[0] += 1
            if count[0] == calls:
                raise KeyboardInterrupt
            return product(V)
        plan.matvec = counted
        return plan
    gdml.backend.training_product = training_product


@pytest.mark.parametrize("stop", ["iteration limit", "interrupt"])
def test_resume_reaches_the_uninterrupted_solution(ds, uninterrupted, tmp_path, stop):
    path = tmp_path / "m.cg-checkpoint.npz"
    assert uninterrupted.info["cg_iterations"] > 12
    first = GDML(progress=False, sigma=SIGMA, checkpoint=path, checkpoint_every=0.0,
                 **{**RESUMABLE, "cg_maxiter": 7 if stop == "iteration limit" else RESUMABLE.get("cg_maxiter", 2000)})
    if stop == "interrupt":
        _interrupt_after(first, 10)
    with pytest.raises(cg.CGNotConvergedError if stop == "iteration limit" else KeyboardInterrupt):
        first.fit(ds.R[TRAIN], ds.F[TRAIN], ds.E[TRAIN], ds.z)
    with np.load(path) as stored:
        assert 5 <= int(stored["iteration"]) <= 9
    resumed = GDML(progress=False, sigma=SIGMA, checkpoint=path, resume=True, **RESUMABLE)
    resumed.fit(ds.R[TRAIN], ds.F[TRAIN], ds.E[TRAIN], ds.z)
    assert resumed.info["cg_iterations"] == uninterrupted.info["cg_iterations"]
    assert rel(resumed.alpha, uninterrupted.alpha) <= 1e-12
    assert not path.exists()  # a finished solve leaves nothing to resume


def test_a_checkpoint_of_another_problem_is_refused(ds, tmp_path):
    path = tmp_path / "m.cg-checkpoint.npz"
    first = GDML(progress=False, sigma=SIGMA, checkpoint=path, checkpoint_every=0.0, **{**RESUMABLE, "cg_maxiter": 3})
    with pytest.raises(cg.CGNotConvergedError):
        first.fit(ds.R[TRAIN], ds.F[TRAIN], ds.E[TRAIN], ds.z)
    other_data = GDML(progress=False, sigma=SIGMA, checkpoint=path, resume=True, **RESUMABLE)
    with pytest.raises(cg.CheckpointError, match="another problem"):
        other_data.fit(ds.R[TRAIN + 1], ds.F[TRAIN + 1], ds.E[TRAIN + 1], ds.z)
    other_lambda = GDML(progress=False, sigma=SIGMA, checkpoint=path, resume=True, **{**RESUMABLE, "lam": 1e-2})
    with pytest.raises(cg.CheckpointError, match="another problem"):
        other_lambda.fit(ds.R[TRAIN], ds.F[TRAIN], ds.E[TRAIN], ds.z)
    dense = GDML(progress=False, sigma=SIGMA, checkpoint=path, resume=True, **{**RESUMABLE, "solver": "cholesky"})
    with pytest.raises(ValueError, match="resuming continues a CG solve, but this training uses the cholesky"):
        dense.fit(ds.R[TRAIN], ds.F[TRAIN], ds.E[TRAIN], ds.z)
    assert path.exists()  # refused before anything was written or removed
    with pytest.raises(cg.CheckpointError, match="sigma 2, which is not in the sigma grid 3"):
        GDML(progress=False, sigma=3.0, checkpoint=path, resume=True, **RESUMABLE)
    with pytest.raises(cg.CheckpointError, match="cannot resume"):
        GDML(progress=False, sigma=SIGMA, checkpoint=tmp_path / "absent.npz", resume=True, **RESUMABLE)


def test_cli_resume_continues_a_stopped_training(tmp_path, capsys):
    out = tmp_path / "m.npz"
    args = ["train", "--n-train", "20", "--n-valid", "0", "--n-test", "0", "--sigma", "2", "--solver", "cg",
            "--lam", "1e-3", "--preconditioner", "none", "--checkpoint-every", "0", "-o", str(out)]
    assert main(args + ["--cg-maxiter", "3"]) == 2
    checkpoint = tmp_path / "m.cg-checkpoint.npz"
    assert checkpoint.exists() and not out.exists()
    assert main(args + ["--resume"]) == 0
    assert out.exists() and not checkpoint.exists()
    assert GDML.load(out).info["cg_iterations"] > 3
    assert main(args + ["--resume"]) == 2  # nothing left to resume from
    assert "cannot resume" in capsys.readouterr().err


def test_progress_shows_iterations_and_residual(ds, capsys):
    GDML(sigma=SIGMA, progress=True, solver="cg").fit(ds.R[TRAIN[:10]], ds.F[TRAIN[:10]], ds.E[TRAIN[:10]], ds.z)
    err = capsys.readouterr().err
    assert "cg sigma 2 (" in err and " iterations, residual " in err
