"""benchmarks/floors.py: tiny measurements (shape of the results) and the floor arithmetic
checked against values computed by hand."""
from statistics import median

import numpy as np
import pytest

from benchmarks import floors


def test_force_block_flops_by_hand():
    # per permutation: (6 + 15*2 + 18*4) F + 18 N^2 + 3 N + 16 = 108 F + 18 N^2 + 3 N + 16
    assert floors.force_block_flops(2, 1, 1) == 108 + 72 + 6 + 16
    # ethanol: 108*36 + 18*81 + 27 + 16 = 5389 per permutation, 6 permutations
    assert floors.force_block_flops(9, 36, 6) == 32334
    # aspirin without symmetries: 108*210 + 18*441 + 63 + 16 = 30697
    assert floors.force_block_flops(21, 210) == 30697
    # one Jacobian slot (atom-centred feature): (6 + 15 + 18) F + ...
    assert floors.force_block_flops(2, 1, 1, n_slots=1) == 39 + 72 + 6 + 16


def test_assembly_floor_memory_and_flop_bound_cases():
    # N = 2, M = 2: n = 12, upper triangle 78 entries = 624 bytes; 3 blocks of 202 flops = 606
    parts = floors.assembly_floor_parts(2, 2, 1, 1, bandwidth=1.0, dgemm=1.0)
    assert parts["matrix_bytes_upper"] == 624 and parts["blocks"] == 3 and parts["flops"] == 606
    assert parts["write_s"] == pytest.approx(624e-9, rel=1e-12)
    assert parts["flops_s"] == pytest.approx(606e-9, rel=1e-12)
    assert parts["bound"] == "memory"
    assert floors.assembly_floor(2, 2, 1, 1, 1.0, 1.0) == pytest.approx(624e-9, rel=1e-12)
    assert floors.assembly_floor(2, 2, 1, 1, 1.0, 0.5) == pytest.approx(1212e-9, rel=1e-12)  # flop bound
    # ethanol M = 1000, P = 6 at 20 GB/s and 50 GFLOP/s:
    # write 8 * 27000 * 27001 / 2 = 2,916,108,000 bytes -> 0.1458054 s
    # flops 500,500 blocks * 32,334 = 1.6183167e10 -> 0.32366334 s
    parts = floors.assembly_floor_parts(9, 1000, 6, 36, 20.0, 50.0)
    assert parts["write_s"] == pytest.approx(0.1458054, rel=1e-12)
    assert parts["flops_s"] == pytest.approx(0.32366334, rel=1e-12)
    assert floors.assembly_floor(9, 1000, 6, 36, {"value": 20.0}, {"value": 50.0}) == \
        pytest.approx(0.32366334, rel=1e-12)


def test_cholesky_floor_by_hand():
    assert floors.cholesky_floor(3000, 45.0) == pytest.approx(0.2, rel=1e-12)  # 9e9 / 45e9
    assert floors.cholesky_floor(27000, {"value": 54.0}) == pytest.approx(121.5, rel=1e-12)


@pytest.mark.parametrize("call", [
    lambda: floors.cholesky_floor(0, 50.0),
    lambda: floors.cholesky_floor(10, 0.0),
    lambda: floors.cholesky_floor(10, float("nan")),
    lambda: floors.cholesky_floor(10, {"rate": 1.0}),
    lambda: floors.assembly_floor(9, 10, 6, 36, -1.0, 50.0),
    lambda: floors.assembly_floor(9, 0, 6, 36, 10.0, 50.0),
    lambda: floors.assembly_floor(9.5, 10, 6, 36, 10.0, 50.0),
    lambda: floors.memory_bandwidth(nbytes=0),
    lambda: floors.dgemm_rate(n=10, repeats=0),
])
def test_bad_arguments_raise(call):
    with pytest.raises(ValueError):
        call()


def test_tiny_measurements_report_value_from_median_of_samples():
    bw = floors.memory_bandwidth(nbytes=8 * 4096, repeats=3)
    assert bw["counts"] == "read+write" and len(bw["samples"]) == 3
    assert bw["value"] == pytest.approx(2 * 8 * 4096 / median(bw["samples"]) / 1e9, rel=1e-12)
    gemm = floors.dgemm_rate(n=64, repeats=3)
    assert gemm["n"] == 64 and len(gemm["samples"]) == 3
    assert gemm["value"] == pytest.approx(2 * 64 ** 3 / median(gemm["samples"]) / 1e9, rel=1e-12)
    potrf = floors.dpotrf_rate(n=80, repeats=2)
    assert potrf["n"] == 80 and len(potrf["samples"]) == 2
    assert potrf["value"] == pytest.approx(80 ** 3 / 3 / median(potrf["samples"]) / 1e9, rel=1e-12)
    for result in (bw, gemm, potrf):
        assert np.isfinite(result["value"]) and result["value"] > 0


def test_machine_description_has_versions_and_date():
    info = floors.machine_description()
    for key in ("cpu", "logical_cpus", "memory_bytes", "versions", "blas", "date_utc"):
        assert key in info
    assert info["versions"]["numpy"] == np.__version__
    assert info["date_utc"].endswith("+00:00")


@pytest.mark.parametrize("data", ["embedded", pytest.param("rmd17", marks=pytest.mark.shared_data)])
def test_assembly_profile_smoke(data, monkeypatch, tmp_path):
    """benchmarks/assembly_profile.py on a tiny ethanol set (the embedded data, as in a fresh clone,
    and rMD17 when ../shared is there): every phase measured, and the blocks of one row cost less
    than the whole assembly.  Labels 'new': the embedded data has one label set."""
    from benchmarks import assembly_profile
    from conftest import RMD17_DIR
    if data == "embedded":
        monkeypatch.setattr(assembly_profile, "DEFAULT_DATA_DIR", tmp_path / "no_rmd17_here")
    elif not (RMD17_DIR / "rmd17_ethanol_train_01.npz").is_file():
        pytest.skip(f"rMD17 data not found at {RMD17_DIR} (../shared absent)")
    res = assembly_profile.profile("ethanol", m=6, repeats=1, labels="new")
    med = res["medians"]
    assert res["n_perms"] >= 1 and res["blocks"] == 21
    assert all(med[key] > 0 for key in ("cold_s", "warm_s", "touch_s", "block_us"))
    assert med["block_us"] * 1e-6 * 6 < med["warm_s"] + med["cold_s"]
