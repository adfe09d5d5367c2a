"""Smoke test of the benchmark harness (``python -m benchmarks run``), end to end, tiny.

One subprocess run with gdmlc and both JAX modes (no sGDML: ``--no-install``, nothing is
downloaded), M=12 ethanol frames (rMD17 when ../shared/data is there, else the embedded
data), one repeat, tiny floor measurements, into a temporary directory.  The run is given
``--perturb jax_dense=1e-4``: the agreement check must report the pairs involving JAX dense
as failures (relative force difference ~1e-4) while gdmlc vs the JAX contraction passes, so
the check is shown to compare numbers.  Memory-based skipping is checked in-process with
MemAvailable patched to almost nothing (no subprocess runs then).
"""
from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import harness, measure, records, report

REPO = Path(__file__).resolve().parents[1]
SYSTEMS = ("gdmlc", "jax_contraction", "jax_dense")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    cmd = [sys.executable, "-m", "benchmarks", "run", "--systems", "gdmlc,jax", "--molecules", "ethanol",
           "--labels", "old", "--sizes", "12", "--symmetries", "sym", "--repeats", "1",
           "--batches", "1,10", "--n-test", "8", "--n-test-dense", "6", "--min-time", "0.01",
           "--floors", "tiny", "--startup-repeats", "0", "--no-install",
           "--perturb", "jax_dense=1e-4", "--out", str(out), "--name", "smoke"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    run = json.loads(next(out.glob("*-smoke.json")).read_text())
    md = next(out.glob("*-smoke.md")).read_text()
    return run, md, out, proc.stdout


def test_json_holds_the_run(tiny_run):
    run, _, _, _ = tiny_run
    assert run["schema"] == records.SCHEMA
    assert run["command"].startswith("python -m benchmarks run --systems gdmlc,jax")
    assert run["machine"]["nproc"] >= 1 and run["versions"]["numpy"] == np.__version__
    for key in ("memory_bandwidth", "dgemm", "dpotrf"):
        assert run["floors"][key]["value"] > 0 and len(run["floors"][key]["samples"]) >= 1
    assert run["config"]["systems"] == list(SYSTEMS)
    [case] = run["cases"]
    assert case["n_train"] == 12 and len(case["train_idx"]) == 12 and case["symmetric"]
    assert case["n_perms"] == len(case["perms"]) >= 1
    assert case["matrix_bytes"] == (3 * case["n_atoms"] * 12) ** 2 * 8
    assert case["floors"]["assembly"]["seconds"] > 0 and case["floors"]["cholesky"]["seconds"] > 0
    for system in SYSTEMS:
        res = case["results"][system]
        assert res["status"] == "ok", res
        for stage in ("assembly_s", "solve_s", "train_s"):
            assert len(res["timings"][stage]["samples"]) == 1
            assert res["timings"][stage]["median"] > 0
        for b in ("1", "10"):
            assert res["throughput"][b]["geometries_per_s"] > 0
        assert math.isfinite(res["errors"]["force_mae"]) and math.isfinite(res["errors"]["energy_rmse"])
        assert res["peak_rss_bytes"] > 0
    assert case["results"]["gdmlc"]["perms_match"] is True
    assert case["results"]["gdmlc"]["timings"]["symmetry_s"]["median"] > 0
    assert case["results"]["jax_dense"]["n_test"] == 6 and case["results"]["gdmlc"]["n_test"] == 8
    assert run["startup"]["gdmlc"]["status"] == "skipped"


def test_agreement_compares_numbers(tiny_run):
    run, _, _, _ = tiny_run
    agreement = run["cases"][0]["agreement"]
    pairs = {(p["a"], p["b"]): p for p in agreement["pairs"]}
    good = pairs[("jax_contraction", "gdmlc")]
    assert good["pass"] and 0 <= good["force_rel"] <= 1e-6 and good["n_frames"] == 8
    for key in (("jax_dense", "gdmlc"), ("jax_dense", "jax_contraction")):
        bad = pairs[key]
        assert not bad["pass"] and 5e-5 < bad["force_rel"] < 2e-4 and bad["n_frames"] == 6
    assert agreement["status"] == "FAIL"
    verdict = next(t for t in run["targets"] if t["id"] == "agreement")
    assert verdict["met"] is False


def test_markdown_and_plots(tiny_run):
    run, md, out, stdout = tiny_run
    assert run["command"] in md and "SELF-TEST" in md
    for text in ("Hardware floors", "Targets (issue 4)", "Prediction agreement", "**FAIL**", "pass",
                 "JAX contraction", "JAX dense", "gdmlc's advantage", "x floor"):
        assert text in md, text
    assert md.strip() in stdout  # the report is printed too
    if importlib.util.find_spec("matplotlib") is None:  # an optional extra: the run records why
        assert not run["plots"] and "matplotlib" in run["plot_error"]
    else:
        plots = [Path(p) for p in run["plots"]]
        assert plots and all(p.is_file() and p.stat().st_size > 1000 and p.parent == out for p in plots)
    assert report.render_markdown(run) == md  # re-rendering the JSON gives the same report


def test_compare_predictions():
    rng = np.random.default_rng(0)
    E, F = rng.normal(size=5), rng.normal(size=(5, 3, 3))
    same = records.compare_predictions({"a": (E, F), "b": (E.copy(), F.copy())})
    assert same["status"] == "pass" and same["max_rel"] == 0
    shifted = records.compare_predictions({"a": (E, F), "b": (E + 1e-3 * np.ptp(E), F)})
    assert shifted["status"] == "FAIL" and shifted["pairs"][0]["energy_rel"] == pytest.approx(1e-3)
    F_nan = F.copy()
    F_nan[0, 0, 0] = np.nan
    assert records.compare_predictions({"a": (E, F), "b": (E, F_nan)})["status"] == "FAIL"
    assert records.compare_predictions({"a": (E, F)})["status"] == "not compared"


def test_sizes_that_do_not_fit_are_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "available_memory_bytes", lambda: 2**20)
    args = harness.build_parser().parse_args(
        ["run", "--systems", "gdmlc,jax", "--molecules", "ethanol,nosuchmolecule", "--labels", "old",
         "--sizes", "12,1000000",
         "--symmetries", "nosym", "--repeats", "1", "--floors", "skip", "--startup-repeats", "0",
         "--no-install"])
    cfg = harness.build_config(args)
    run, json_path, md_path = harness.run(cfg, tmp_path, "skips", log=lambda *a: None, argv=["run"])
    [case] = run["cases"]
    for system in SYSTEMS:
        res = case["results"][system]
        assert res["status"] == "skipped" and "GiB available" in res["reason"]
    reasons = " ".join(s["reason"] for s in run["skipped"])
    assert "training frames" in reasons and "no data" in reasons
    assert json.loads(json_path.read_text())["cases"][0]["results"]["gdmlc"]["status"] == "skipped"
    assert "skipped" in md_path.read_text()


def test_merge_runs_pools_samples():
    def one(train, secs, peak):
        return {"status": "ok", "timings": {"train_s": measure.summary([train])},
                "throughput": {"10": {"batch": 10, "status": "ok", "seconds_per_call": secs,
                                      "geometries_per_s": 10 / np.median(secs)}},
                "peak_rss_bytes": peak, "errors": {"force_mae": 1.0}, "notes": ["n"]}
    merged = records.merge_runs([one(1.0, [0.1], 5), one(3.0, [0.3], 7), one(2.0, [0.2], 6)])
    assert merged["timings"]["train_s"] == {"samples": [1.0, 3.0, 2.0], "median": 2.0}
    assert merged["throughput"]["10"]["geometries_per_s"] == pytest.approx(50.0)
    assert merged["peak_rss_bytes"] == 7 and merged["rounds"] == 3 and merged["notes"] == ["n"]
    failed = records.merge_runs([one(1.0, [0.1], 5), {"status": "failed", "reason": "boom"}])
    assert failed["status"] == "failed" and failed["rounds_ok"] == 1


# a stand-in for the start-up children: "builds" (writes a marker into GDMLC_GENERATED_DIR) when
# the marker is absent, so that the first of a pair builds and the second finds it cached
PAIR_CHILD = r"""
import json, os, sys
marker = os.path.join(os.environ["GDMLC_GENERATED_DIR"], "built")
built = not os.path.exists(marker) and sys.argv[2] == "build"
open(marker, "a").close()
print("TAG " + json.dumps({"seconds": 1.0 if built else 0.25, "built_now": built}))
"""


def test_first_and_cached_pairs_a_build_with_a_cached_start():
    from benchmarks.startup import first_and_cached, per_key
    logged = []
    first, cached, invalid = first_and_cached(PAIR_CHILD, {"x": np.zeros(2)}, ["build"], 2, "TAG",
                                              lambda k, a, b: logged.append(k), retry_invalid=False)
    assert [r["built_now"] for r in first] == [True, True] and [r["built_now"] for r in cached] == [False, False]
    assert invalid == [] and logged == [1, 2]
    assert all(r["process_wall_s"] > 0 for r in first + cached)
    assert per_key(first, sum) == {"seconds": 2.0, "process_wall_s": sum(r["process_wall_s"] for r in first)}


def test_first_and_cached_rejects_or_retries_a_pair_that_did_not_build():
    from benchmarks.startup import first_and_cached
    with pytest.raises(RuntimeError, match="not a first-compile / cached pair: built_now False then False"):
        first_and_cached(PAIR_CHILD, {"x": np.zeros(2)}, ["never"], 1, "TAG", None, retry_invalid=False)
    first, cached, invalid = first_and_cached(PAIR_CHILD, {"x": np.zeros(2)}, ["never"], 1, "TAG", None,
                                              retry_invalid=True)
    assert first == cached == [] and len(invalid) == 2  # retried once, both pairs kept apart


def test_cpu_model_is_the_model_name_line_of_proc_cpuinfo():
    from benchmarks.environment import cpu_model
    names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.lower().startswith("model name")]
    assert cpu_model() == (names[0] if names else None)


def test_openblas_threads_sets_the_variable_inside_and_restores_it(monkeypatch):
    import os

    from benchmarks.environment import openblas_threads
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    with openblas_threads(1):
        assert os.environ["OPENBLAS_NUM_THREADS"] == "1"
    with openblas_threads(None):
        assert os.environ["OPENBLAS_NUM_THREADS"] == "2"
    assert os.environ["OPENBLAS_NUM_THREADS"] == "2"
    monkeypatch.delenv("OPENBLAS_NUM_THREADS")
    with pytest.raises(ValueError):
        with openblas_threads(4):
            raise ValueError("the run failed")
    assert "OPENBLAS_NUM_THREADS" not in os.environ
