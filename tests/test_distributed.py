"""CG's training product on a dask.distributed cluster (runtime/distributed.py) against the
single-process product and solve; a worker lost mid-solve; GDML(cluster=) and --scheduler."""
import os
import signal

import distributed as dask_distributed  # in the test extra: CI runs these
import numpy as np
import pytest

import runtime
from runtime import cg, distributed
from runtime.assembly import assemble
from runtime.cli import main
from runtime.matvec import TrainingProduct
from runtime.model import GDML
from numeric import ethanol_training_problem

SIGMA = 2.0
TRAIN = np.random.default_rng(0).permutation(2000)[:20]
TEST = np.arange(1000, 1040)


def rel(a, b):
    return np.linalg.norm(np.ravel(a) - np.ravel(b)) / np.linalg.norm(np.ravel(b))


def local_cluster():
    return dask_distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                         dashboard_address=":0")


@pytest.fixture(scope="module")
def client():
    with local_cluster() as cluster, dask_distributed.Client(cluster) as client:
        yield client


@pytest.fixture(scope="module")
def ds():
    return runtime.load_dataset(runtime.DEFAULT_DATA)


@pytest.fixture(scope="module")
def problem(ds):
    """(gdml, D, JAC, fperms, hyper, n_atoms) for 20 ethanol frames with their 6 permutations."""
    return (*ethanol_training_problem(ds.R[TRAIN], ds.z, ds.R[TRAIN], SIGMA), len(ds.z))


@pytest.mark.parametrize("energy_rows", [False, True])
def test_a_block_of_rows_is_those_rows_of_the_assembled_matrix(problem, energy_rows):
    gdml, D, JAC, fperms, hyper, n_atoms = problem
    K = assemble(gdml.model, D, JAC, fperms, hyper, n_atoms, progress=False, energy_rows=energy_rows)
    K = np.triu(K) + np.triu(K, 1).T
    m, n3 = len(D), 3 * n_atoms
    plan = TrainingProduct(gdml.model, D, JAC, fperms, hyper, rows=slice(7, 13))
    x = np.random.default_rng(2).normal(size=len(K))
    Kx = K @ x
    V = x[:n3 * m].reshape(m, n_atoms, 3)
    if energy_rows:
        F, E = plan.matvec_energy(V, x[n3 * m:])
        assert rel(E, Kx[n3 * m + 7:n3 * m + 13]) <= 1e-12
    else:
        F = plan.matvec(V)
    assert F.shape == (6, n_atoms, 3)
    assert rel(F, Kx[7 * n3:13 * n3]) <= 1e-12


@pytest.mark.parametrize("energy_rows", [False, True])
def test_cluster_product_equals_the_single_process_product(client, problem, energy_rows):
    gdml, D, JAC, fperms, hyper, n_atoms = problem
    texts = distributed.model_texts(gdml.descriptor_dsl, gdml.kernel_dsl)
    remote = distributed.ClusterOperator(client, texts, D, JAC, fperms, hyper, n_atoms, 0.3, energy_rows)
    local = cg.TrainingOperator(gdml.backend, D, JAC, fperms, hyper, n_atoms, 0.3, energy_rows)
    assert len(remote.blocks) == 2 and remote.size == local.size
    for x in np.random.default_rng(1).normal(size=(2, local.size)):  # the resident plans, reused
        assert rel(remote.product(x), local.product(x)) <= 1e-12
        assert rel(remote(x), local(x)) <= 1e-12


def _fit(ds, **kw):
    return GDML(sigma=SIGMA, progress=False, lam=1e-6, cg_tol=1e-10, **kw).fit(
        ds.R[TRAIN], ds.F[TRAIN], ds.E[TRAIN], ds.z)


def _coefficients(gdml):
    return np.concatenate([gdml.alpha.ravel(), [] if gdml.energy_weights is None else gdml.energy_weights])


@pytest.mark.parametrize("energy_constraints", [False, True])
def test_cluster_training_equals_single_process_cg(client, ds, energy_constraints):
    remote = _fit(ds, cluster=client, energy_constraints=energy_constraints)  # solver "auto": CG on a cluster
    local = _fit(ds, solver="cg", energy_constraints=energy_constraints)
    assert remote.info["solver"] == "cg"
    assert remote.info["cg_iterations"] == local.info["cg_iterations"] > 1
    assert rel(_coefficients(remote), _coefficients(local)) <= 1e-10
    E, F = remote.predict(ds.R[TEST])
    E_ref, F_ref = local.predict(ds.R[TEST])
    assert rel(F, F_ref) <= 1e-10 and rel(E, E_ref) <= 1e-10


def test_a_worker_killed_mid_solve_is_a_clear_error(ds, monkeypatch):
    """SIGKILL one worker process at the third product: a ClusterError naming it, no model."""
    with local_cluster() as cluster, dask_distributed.Client(cluster) as client:
        pids = client.run(os.getpid)
        victim = sorted(pids)[1]
        product, calls = distributed.ClusterOperator.product, []

        def kill_at_third(self, x):
            calls.append(1)
            if len(calls) == 3:
                os.kill(pids[victim], signal.SIGKILL)
            return product(self, x)
        monkeypatch.setattr(distributed.ClusterOperator, "product", kill_at_third)
        gdml = GDML(sigma=SIGMA, progress=False, cluster=client)
        with pytest.raises(distributed.ClusterError, match=f"Dask worker {victim} was lost during the product of "
                                                           "training rows 10-19"):
            gdml.fit(ds.R[TRAIN], ds.F[TRAIN], ds.E[TRAIN], ds.z)
        assert len(calls) == 3 and gdml.state is None


def test_the_dense_solver_is_refused_on_a_cluster(client):
    with pytest.raises(ValueError, match="solver='cholesky' cannot run on a cluster"):
        GDML(sigma=SIGMA, solver="cholesky", cluster=client)


def test_cli_trains_on_a_scheduler(client, tmp_path, capsys):
    out = tmp_path / "model.npz"
    args = ["train", "--n-train", "12", "--n-valid", "0", "--n-test", "0", "--sigma", "2", "--lam", "1e-6"]
    assert main([*args, "--scheduler", client.scheduler.address, "-o", str(out)]) == 0
    assert main([*args, "--solver", "cg", "-o", str(tmp_path / "local.npz")]) == 0
    assert "conjugate gradients:" in capsys.readouterr().out
    remote, local = GDML.load(out), GDML.load(tmp_path / "local.npz")
    assert remote.info["cg_iterations"] == local.info["cg_iterations"]
    assert rel(remote.alpha, local.alpha) <= 1e-10


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:1", "no-port"])
def test_cli_unreachable_scheduler_exits_2_with_one_line(tmp_path, capsys, monkeypatch, address):
    monkeypatch.setattr(distributed, "CONNECT_TIMEOUT", "1s")
    out = tmp_path / "model.npz"
    assert main(["train", "--n-train", "5", "--sigma", "2", "--scheduler", address, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"gdmlc: error: cannot reach the Dask scheduler at '{address}'")
    assert not out.exists()
