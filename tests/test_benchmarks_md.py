"""Smoke test of benchmarks/md_bench.py (MD through the ASE calculator, idle and with a busy core)."""
import json
import math

import numpy as np


def test_md_bench_quick_runs_and_conserves_energy(monkeypatch, tmp_path, capsys):
    """--quick on the embedded data (as in a fresh clone): both conditions measured, the printed
    table names them, and Velocity Verlet through the calculator conserves the total energy
    (20 steps of 0.5 fs at 300 K: a drift of 1e-2 eV would mean wrong forces)."""
    from benchmarks import md_bench

    monkeypatch.setattr(md_bench, "RMD17_ETHANOL", tmp_path / "no_rmd17_here.npz")
    out = tmp_path / "md.json"
    assert md_bench.main(["--quick", "--json", str(out)]) == 0
    run = json.loads(out.read_text())
    assert "ethanol_gfn2xtb_500K.npz" in run["data"] and run["n_train"] == 50
    for condition in ("idle", "busy"):
        samples = run["gdmlc"]["samples"][condition]
        assert len(samples["steps_per_s"]) == len(samples["predict_ms"]) == run["repeats"] == 2
        medians = run["gdmlc"]["medians"][condition]
        assert math.isfinite(medians["steps_per_s"]) and medians["steps_per_s"] > 0
        assert math.isfinite(medians["predict_ms"]) and medians["predict_ms"] > 0
        assert medians["max_energy_drift_eV"] < 1e-2
    assert np.isfinite(run["gdmlc"]["start_forces_eV_per_A"]).all()
    before = run["gdmlc"]["all_threads"]["medians"]  # the schedule before issue 10, same run
    assert all(before[c]["predict_ms"] > 0 and before[c]["max_energy_drift_eV"] < 1e-2 for c in ("idle", "busy"))
    assert "--quick" in run["sgdml"]["skipped"]
    printed = capsys.readouterr().out
    assert "| gdmlc | idle |" in printed and "| gdmlc | busy |" in printed and "sGDML: skipped" in printed
    assert "| gdmlc, every call on all threads (before) | busy |" in printed


def test_busy_core_spins_while_it_lasts():
    """The 'busy' condition really has another process using CPU time until the context ends."""
    import os
    import time

    from benchmarks import md_bench

    def cpu_seconds(pid):  # utime + stime from /proc (after the command name, fields 14 and 15)
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    with md_bench.busy_core() as spinner:
        start = cpu_seconds(spinner.pid)
        time.sleep(0.5)
        assert spinner.poll() is None
        assert cpu_seconds(spinner.pid) - start > 0.05
    assert spinner.returncode is not None  # ended with the context
