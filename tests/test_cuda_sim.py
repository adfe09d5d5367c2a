"""The CUDA backend without a GPU: its kernels under Numba's CUDA simulator agree with the
CPU kernels (themselves checked against JAX) to 1e-10 relative, and asking for CUDA where it
cannot run falls back to the CPU with a one-line message.

The simulator is chosen when numba.cuda is first imported, so the comparisons run in one
subprocess (tests/cuda_sim_checks.py) with NUMBA_ENABLE_CUDASIM=1; this process, and the
other tests, never see the simulator.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import cuda_sim_checks
from runtime import cuda_backend
from runtime.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-10
N_COMBINATIONS = len(cuda_sim_checks.COMBINATIONS)


def _run(script_args, env_changes, timeout):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env.update(env_changes)
    return subprocess.run([sys.executable, *script_args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def sim():
    """Every comparison, computed once under the simulator."""
    proc = _run([str(Path(cuda_sim_checks.__file__))], {"NUMBA_ENABLE_CUDASIM": "1"}, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _checks(sim, *words):
    """The relative differences whose name contains all ``words``."""
    found = {k: v for k, v in sim.items() if isinstance(v, float) and all(w in k for w in words)}
    return found


def _assert_close(found, expected_count):
    assert len(found) == expected_count, sorted(found)  # no check silently missing
    worst = max(found, key=found.get)
    assert found[worst] <= TOLERANCE, f"{worst}: relative difference {found[worst]:.3g}"


def test_ran_under_the_simulator(sim):
    assert sim["simulated"] is True
    assert sim["model_device"] == "cuda"


def test_descriptor_and_sparse_jacobian(sim):
    _assert_close(_checks(sim, ": descriptor"), N_COMBINATIONS)
    _assert_close(_checks(sim, ": jacobian"), N_COMBINATIONS)


@pytest.mark.parametrize("perms", ["no permutations", "2 permutations"])
def test_assembled_matrix(sim, perms):
    _assert_close(_checks(sim, "assembly", perms), N_COMBINATIONS)


@pytest.mark.parametrize("what", ["prediction energies", "prediction forces", "contraction"])
def test_prediction(sim, what):
    _assert_close(_checks(sim, what), 2 * N_COMBINATIONS)


def test_matrix_free_product(sim):
    _assert_close(_checks(sim, "matrix-free product"), 2 * N_COMBINATIONS)


def test_gdml_cuda_matches_cpu(sim):
    assert sim["chosen_sigma"][0] == sim["chosen_sigma"][1]
    _assert_close(_checks(sim, "GDML:"), 4)


def test_combined_descriptor_model_on_cuda_matches_cpu(sim):
    _assert_close(_checks(sim, "combination:"), 2)


def test_cli_predict_on_cuda_matches_cpu(sim):
    _assert_close(_checks(sim, "cli:"), 2)


def test_bad_input_gives_clear_errors(sim):
    assert sim["nan_error"].startswith("R: frame 0, atom 1 has a non-finite coordinate")
    assert sim["matvec_shape_error"].startswith("V: expected 2 x n_atoms x 3 entries")
    assert sim["assemble_shape_error"].startswith("fperms: expected feature permutations of shape (P, ")


def test_generated_cuda_source_is_readable(sim):
    path, cpu_path = Path(sim["generated_file"]), Path(sim["cpu_generated_file"])
    assert path.parent == cpu_path.parent  # beside the CPU module
    assert path.name.startswith("cuda_model_two_channel_density_gaussian_times_polynomial_")
    text = path.read_text()
    # the DSL functions are quoted with file and line numbers, as in the CPU module
    assert f"# DSL source: {cuda_sim_checks.__file__}:" in text
    assert "| def two_channel_density(ri, rj, eta):" in text
    assert "| def gaussian_times_polynomial(d, dp, sigma):" in text
    for name in ("def site_term", "def kernel_coefficients", "def descriptor_many", "def assemble_blocks",
                 "def pair_coefficients", "def sum_features", "def sum_energies", "def forces_from_features",
                 "def contract", "cuda.shared.array"):
        assert name in text, name
    assert "cuda.atomic" not in text  # every thread owns its outputs
    # shared memory only as dynamic arrays: the simulator hands out static ones without a lock,
    # and two simulated threads of a block could get different arrays
    assert text.count("cuda.shared.array(") == text.count("cuda.shared.array(0, ")


def test_no_gpu_falls_back_to_cpu_with_one_line():
    code = ("import runtime; m = runtime.GDML(sigma=1.0, progress=False, device='cuda'); "
            "print('DEVICE', m.device)")
    proc = _run(["-c", code], {"CUDA_VISIBLE_DEVICES": ""}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["DEVICE", "cpu"]
    lines = [line for line in proc.stderr.splitlines() if "gdmlc:" in line]
    assert lines == ["gdmlc: device 'cuda' requested but no CUDA GPU is available (NUMBA_ENABLE_CUDASIM=1 "
                     "runs the CUDA kernels in Numba's simulator); using the CPU"]


def test_missing_numba_cuda_falls_back(monkeypatch, capsys):
    monkeypatch.setattr(cuda_backend, "_numba_cuda_installed", lambda: False)
    assert cuda_backend.resolve_device("cuda") == "cpu"
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["gdmlc: device 'cuda' requested but numba-cuda is not installed "
                   "(pip install 'gdmlc[cuda]'); using the CPU"]


def test_device_names():
    assert cuda_backend.resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="device must be one of cpu, cuda, got 'gpu'"):
        cuda_backend.resolve_device("gpu")


def test_gpu_benchmark_arguments():
    from benchmarks import gpu_bench

    args = gpu_bench.parse_args([])
    assert (args.molecules, args.m, args.predict, args.repeats) == (["ethanol", "aspirin"], 1000, [10, 1000], 3)
    tiny = gpu_bench.parse_args(["--simulate", "--tiny"])
    assert (tiny.simulate, tiny.m, tiny.molecules) == (True, 4, ["ethanol"])
    with pytest.raises(SystemExit):
        gpu_bench.parse_args(["--repeats", "2"])


@pytest.mark.parametrize("command", [["train"], ["test", "m.npz", "d.npz"], ["predict", "m.npz", "g.xyz"]])
def test_cli_device_option(command):
    parser = build_parser()
    assert parser.parse_args(command).device == "cpu"
    assert parser.parse_args(command + ["--device", "cuda"]).device == "cuda"
    with pytest.raises(SystemExit):
        parser.parse_args(command + ["--device", "gpu"])


def test_rule_table_cuda_column():
    """Every primitive has a CUDA spelling; sign's (np.sign is not available in CUDA device code)
    is written with comparisons and gives the same values; exp is CUDA's own (the CPU's vexp is
    a CPU vectorisation device)."""
    import math

    import numpy as np

    from compiler.middle import ir
    from compiler.targets.spelling import spell
    from compiler.middle.primitives import PRIMITIVES

    assert all(p.cuda for p in PRIMITIVES.values())
    assert PRIMITIVES["log"].cuda == PRIMITIVES["log"].numba  # default: the Numba spelling
    assert spell(ir.make("exp", ir.var("x")), "cuda") == "math.exp(x)"
    text = spell(ir.make("sign", ir.var("x")), "cuda")
    assert "np." not in text
    for x in (-2.5, 0.0, 3.0):
        assert eval(text, {"math": math}, {"x": x}) == np.sign(x)


def test_kernels_compile_to_ptx():
    """What the simulator cannot see: every generated kernel through Numba's CUDA typing and NVVM
    (PTX for sm_80, no GPU needed).  Needs NVVM and NVRTC (pip install nvidia-cuda-nvcc-cu12
    nvidia-cuda-nvrtc-cu12); without them the test is skipped, with that reason."""
    proc = _run([str(REPO / "tests" / "cuda_ptx_check.py")], {}, timeout=900)
    if proc.returncode == 3:
        pytest.skip(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert proc.stdout.count("compiled 9 kernels") == N_COMBINATIONS + 3
