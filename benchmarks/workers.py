"""One system's run for one case of the benchmark, and the protocol of its subprocess.

gdmlc and the JAX models run in a fresh subprocess each (``python -m benchmarks.workers SPEC``),
so that a peak RSS is the system's own: the harness writes a JSON spec (the case: data files,
training indices, permutations, sigma, lambda, repeats, batches, ...; out_json, out_npz), the
worker trains ``repeats`` times timing the stages, measures prediction throughput, predicts the
test frames, and writes its result dict to out_json and its predictions to out_npz.  sGDML runs
through benchmarks/sgdml_runner.py (its own subprocess in its own environment); its dict is
mapped onto the same result layout here.
"""
from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
import traceback
from pathlib import Path
from statistics import median

import numpy as np

from benchmarks.datasets import load_split
from benchmarks.environment import openblas_threads
from benchmarks.measure import STAGES, StageTotals, current_rss_bytes, peak_rss_bytes, summary, throughput
from benchmarks.records import jsonable
from runtime.model import GDML, error_table

REPO = Path(__file__).resolve().parents[1]


# ============================================================================ inside the subprocess

def _gdmlc_worker(spec, train, test, log):
    perms = np.asarray(spec["perms"], dtype=np.int64)
    idx = np.asarray(spec["train_idx"])
    R, F, E, z = train.R[idx], train.F[idx], train.E[idx], train.z
    sym = spec["symmetric"]
    sigma, lam = spec["sigma"], spec["lam"]

    # warm-up: load the compiled module and Numba's cache (first-call cost is measured separately)
    GDML(sigma=sigma, lam=lam, symmetries=perms, progress=False).fit(R[:3], F[:3], E[:3], z)
    rss_before = current_rss_bytes()

    timings = {k: [] for k in STAGES}
    perms_match, lam_used, model = None, None, None
    for r in range(spec["repeats"]):
        model = None  # free the previous repeat's model before the next matrix
        clock = StageTotals()
        model = GDML(sigma=sigma, lam=lam, symmetries="auto" if sym else None, progress=False, on_stage=clock)
        t = time.perf_counter()
        model.fit(R, F, E, z)
        total = time.perf_counter() - t
        for k in STAGES[:-1]:
            timings[k].append(clock.totals.get(k))
        timings["train_s"].append(total)
        lam_used = model.lam_used
        if sym:
            perms_match = sorted(map(tuple, model.perms.tolist())) == sorted(map(tuple, perms.tolist()))
        log(f"    train {r + 1}/{spec['repeats']}: {total:.3g} s (" + ", ".join(
            f"{k[:-2]} {v:.3g}" for k, v in clock.totals.items()) + ")")
    peak = peak_rss_bytes()

    def predict(Rb):
        return model.predict(Rb, progress=False)

    n_test = min(spec["n_test"], len(test))
    E_pred, F_pred = model.predict(test.R[:n_test], progress=False)
    tp = throughput(predict, test.R, spec["batches"], spec["repeats"], spec["min_time"],
                    spec["max_call_s"], log)
    notes = []
    missing = [k for k in STAGES if k != "symmetry_s" and any(v is None for v in timings[k])]
    if missing:
        notes.append("stage(s) not observed in GDML.fit (runtime changed?): " + ", ".join(missing))
    if not sym:
        timings["symmetry_s"] = []
    return {"timings": {k: summary(v) for k, v in timings.items()},
            "throughput": tp, "peak_rss_bytes": peak, "rss_before_training_bytes": rss_before,
            "lam_used": lam_used, "perms_match": perms_match, "n_perms_used": int(len(model.perms)),
            "notes": notes}, E_pred, F_pred


def _jax_worker(spec, train, test, log):
    from benchmarks import jax_paper
    mode = spec["system"].split("_", 1)[1]
    perms = np.asarray(spec["perms"], dtype=np.int64)
    idx = np.asarray(spec["train_idx"])
    R, F, E, z = train.R[idx], train.F[idx], train.E[idx], train.z
    model = jax_paper.JaxPaperModel(z, perms, spec["sigma"], mode=mode)
    notes = []
    compile_info = {}

    def compile_seconds():
        return sum(sum(v) for v in getattr(model, "compile_times", {}).values())

    # first call of the assembly (jit compile included); later calls: inside fit() below
    t = time.perf_counter()
    K = model.assemble(R)
    compile_info["assemble_first_call_s"] = time.perf_counter() - t
    compile_info["assemble_compile_s"] = compile_seconds()
    del K
    log(f"    first assemble call: {compile_info['assemble_first_call_s']:.3g} s "
        f"({compile_info['assemble_compile_s']:.2f} s jit compile)")
    rss_before = current_rss_bytes()
    timings = {k: [] for k in STAGES}
    in_fit = []
    for r in range(spec["repeats"]):
        c0 = compile_seconds()
        t = time.perf_counter()
        model.fit(R, F, E, spec["lam"])
        total = time.perf_counter() - t
        compiled = compile_seconds() - c0  # jit compiles inside fit (first predict shape)
        in_fit.append(compiled)
        timings["train_s"].append(total - compiled)
        st = getattr(model, "timings", {}) or {}
        timings["assembly_s"].append(st.get("assemble_s", st.get("assembly_s")))
        timings["solve_s"].append(st.get("solve_s"))
        rest = total - compiled - sum(v for v in (timings["assembly_s"][-1], timings["solve_s"][-1]) if v)
        timings["energy_constant_s"].append(rest)
        log(f"    fit {r + 1}/{spec['repeats']}: {total:.3g} s" + (f" ({compiled:.2f} s jit compile, "
                                                                  "not counted)" if compiled else ""))
    if any(in_fit):
        notes.append("train_s excludes the jit compile seconds logged during fit() (compile.compile_in_fit_s)")
    notes.append("energy_constant_s: fit time minus assembly and solve (coefficients + energy constant)")
    compile_info["compile_in_fit_s"] = in_fit
    compile_info["assemble_later_call_s"] = median([a for a in timings["assembly_s"] if a is not None] or [0.0])
    peak = peak_rss_bytes()

    def predict(Rb):
        return model.predict(Rb)

    n_test = min(spec["n_test_dense"] if mode == "dense" else spec["n_test"], len(test))
    E_pred, F_pred = (np.asarray(a) for a in model.predict(test.R[:n_test]))
    tp = throughput(predict, test.R, spec["batches"], spec["repeats"], spec["min_time"],
                    spec["max_call_s"], log)
    for b, v in tp.items():
        if "first_call_s" in v:
            compile_info[f"predict_{b}_first_call_s"] = v["first_call_s"]
        if v.get("seconds_per_call"):
            compile_info[f"predict_{b}_later_call_s"] = median(v["seconds_per_call"])
    compile_info["compile_times"] = dict(getattr(model, "compile_times", {}))
    compile_info["total_compile_s"] = compile_seconds()
    versions = {}
    try:
        import jax
        import jaxlib
        versions = {"jax": jax.__version__, "jaxlib": jaxlib.__version__}
    except ImportError:
        pass
    return {"timings": {k: summary(v) for k, v in timings.items()}, "throughput": tp,
            "peak_rss_bytes": peak, "rss_before_training_bytes": rss_before,
            "compile": compile_info, "versions": versions, "notes": notes}, E_pred, F_pred


def worker_main(spec_path):
    """Entry point of one system's subprocess: read the spec, run, write result + predictions."""
    spec = json.loads(Path(spec_path).read_text())
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    result = {"status": "ok"}
    try:
        train, test = load_split(spec["files"], spec["labels"])
        fn = _gdmlc_worker if spec["system"] == "gdmlc" else _jax_worker
        res, E_pred, F_pred = fn(spec, train, test, log)
        result.update(res)
        n = len(E_pred)
        result["n_test"] = n
        result["errors"] = error_table(E_pred, F_pred, test.E[:n], test.F[:n])
        np.savez(spec["out_npz"], E=np.asarray(E_pred), F=np.asarray(F_pred))
        result["predictions"] = spec["out_npz"]
    except MemoryError as exc:  # includes runtime.assembly.MemoryLimitError
        result = {"status": "skipped", "reason": f"{type(exc).__name__}: {exc}"}
    except Exception as exc:
        result = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc()[-4000:]}
    result["process_peak_rss_bytes"] = peak_rss_bytes()  # whole worker, prediction included
    Path(spec["out_json"]).write_text(json.dumps(jsonable(result), indent=1))
    return 0


def run_worker(spec, workdir, timeout, log):
    """Run one system in a fresh subprocess; returns its result dict (never raises)."""
    tag = f"{spec['system']}-{spec['case_id']}"
    spec = dict(spec, out_json=str(workdir / f"{tag}.json"), out_npz=str(workdir / f"{tag}.npz"))
    spec_path = workdir / f"{tag}.spec.json"
    spec_path.write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "benchmarks.workers", str(spec_path)]
    t = time.perf_counter()
    env = dict(os.environ)
    if spec.get("peer_blas_threads") and spec["system"] != "gdmlc":
        env["OPENBLAS_NUM_THREADS"] = str(spec["peer_blas_threads"])  # see --peer-single-thread-from
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env=env)
    tail = []
    deadline = time.monotonic() + timeout
    timed_out = False
    sel = selectors.DefaultSelector()
    sel.register(proc.stderr, selectors.EVENT_READ)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            os.killpg(proc.pid, 9)
            break
        if not sel.select(timeout=min(left, 5.0)):
            continue
        line = proc.stderr.readline()
        if not line:
            break
        tail = (tail + [line.rstrip()])[-40:]
        log(line.rstrip())
    sel.close()
    proc.wait()
    wall = time.perf_counter() - t
    out = Path(spec["out_json"])
    if out.is_file() and not timed_out:
        res = json.loads(out.read_text())
    elif timed_out:
        res = {"status": "failed", "reason": f"timed out after {timeout:g} s"}
    else:
        res = {"status": "failed",
               "reason": f"worker exited with status {proc.returncode} without a result"
                         + (" (killed: out of memory?)" if proc.returncode in (-9, 137) else ""),
               "stderr_tail": "\n".join(tail)}
    res["process_wall_s"] = wall
    res["returncode"] = proc.returncode
    return res


# ============================================================================ sGDML

def sgdml_case(runner, spec, train, test, use_torch, workdir, timeout):
    """One sGDML run (benchmarks/sgdml_runner.run_sgdml, its own subprocess in its venv)."""
    idx = np.asarray(spec["train_idx"])
    n_test = min(spec["n_test"], len(test))
    threads = spec.get("peer_blas_threads")
    try:
        t = time.perf_counter()
        with openblas_threads(threads):  # inherited by sGDML's process only
            res = runner.run_sgdml(train.R, train.z, train.E, train.F, idx, test.R[:n_test],
                                   sigma=spec["sigma"], lam=spec["lam"],
                                   perms=np.asarray(spec["perms"], dtype=np.int64), use_torch=use_torch,
                                   batches=tuple(spec["batches"]), repeats=spec["repeats"],
                                   workdir=workdir, progress=True, timeout=timeout)
        wall = time.perf_counter() - t
    except MemoryError as exc:
        return {"status": "skipped", "reason": f"{type(exc).__name__}: {exc}"}, {}
    except Exception as exc:
        return {"status": "failed", "reason": f"{type(exc).__name__}: {str(exc)[-2000:]}",
                "traceback": traceback.format_exc()[-4000:]}, {}
    result, predictions = normalise_sgdml(res, wall, test, spec)
    if threads:
        result["notes"].append(f"sGDML ran with OPENBLAS_NUM_THREADS={threads} (--peer-single-thread-from): "
                               "with 2 threads its scipy Cholesky fails at this size here")
    return result, predictions


def normalise_sgdml(res, wall, test, spec):
    """Map run_sgdml's dict onto the harness's result layout.

    Returns (result, predictions) with predictions {name: (E, F)}: 'as run' (sGDML's own
    prediction; its torch path casts geometries to float32) and, where the runner gives
    them, the torch model fed float64 geometries."""
    out = {"status": "ok", "process_wall_s": wall, "notes": []}
    tim = res.get("timings", {})
    timings = {}
    for key, value in tim.items():
        name = key if key.endswith("_s") else key + "_s"
        if name == "assemble_s":
            name = "assembly_s"
        vals = value if isinstance(value, list) else [value]
        timings[name] = summary(v for v in vals if isinstance(v, (int, float)))
    sym = res.get("symmetry") or {}
    timings["symmetry_s"] = summary([sym["time"]] if spec["symmetric"] and "time" in sym else [])
    if spec["symmetric"] and "time" in sym:
        out["notes"].append(f"symmetry_s: sGDML's find_perms on the training geometries "
                            f"(found {sym.get('n_perms')} permutations; training used the given "
                            f"{len(spec['perms'])})")
        out["symmetry_n_perms"] = sym.get("n_perms")
    for k in STAGES:
        timings.setdefault(k, summary([]))
    out["timings"] = timings
    rates = res.get("throughput", {}) or {}
    times = res.get("predict_times", {}) or {}
    tp = {}
    for b in spec["batches"]:
        r = rates.get(b, rates.get(str(b)))
        secs = times.get(b, times.get(str(b)))
        if isinstance(r, (int, float)) and r > 0:
            tp[str(b)] = {"batch": b, "status": "ok", "geometries_per_s": float(r),
                          "seconds_per_call": secs if isinstance(secs, list) else None}
        else:
            tp[str(b)] = {"batch": b, "status": "missing", "reason": f"run_sgdml gave {r!r}"}
    out["throughput"] = tp
    out["peak_rss_bytes"] = res.get("peak_rss_train_bytes")
    out["memory"] = res.get("memory")
    out["versions"] = res.get("versions")
    out["predict_config"] = jsonable(res.get("predict_config"))
    out["raw"] = jsonable({k: v for k, v in res.items()
                            if k not in ("log", "perms_used") and not k.startswith(("E_pred", "F_pred"))})
    preds = {}
    n_atoms = test.R.shape[1]
    for tag, ek, fk in (("", "E_pred", "F_pred"),
                        ("[float64 input]", "E_pred_float64_input", "F_pred_float64_input")):
        if res.get(ek) is not None and res.get(fk) is not None:
            preds[tag] = (np.asarray(res[ek], dtype=np.float64).reshape(-1),
                          np.asarray(res[fk], dtype=np.float64).reshape(-1, n_atoms, 3))
    if "" in preds:
        E_pred, F_pred = preds[""]
        n = len(E_pred)
        out["n_test"] = n
        out["errors"] = error_table(E_pred, F_pred, test.E[:n], test.F[:n])
    else:
        out["notes"].append("run_sgdml returned no predictions")
    return out, preds


# ============================================================================ in the harness

def run_system(system, spec, runner, train, test, work, case_id, round_, cfg, log):
    """One subprocess run of one system: (result, {name: (E_pred, F_pred)})."""
    spec = dict(spec, system=system, case_id=f"{case_id}-r{round_}")
    if system.startswith("sgdml"):
        res, extra = sgdml_case(runner, spec, train, test, system == "sgdml_torch",
                                work / f"{system}-{case_id}-r{round_}", cfg["timeout"])
        return res, {system + tag: p for tag, p in extra.items()}
    res = run_worker(spec, work, cfg["timeout"], lambda line: log("  " + line))
    if spec.get("peer_blas_threads") and system != "gdmlc":
        res.setdefault("notes", []).append(
            f"ran with OPENBLAS_NUM_THREADS={spec['peer_blas_threads']} (--peer-single-thread-from): with 2 "
            "threads its scipy Cholesky segfaults at this size here")
    preds = {}
    if res.get("status") == "ok" and res.get("predictions"):
        with np.load(res["predictions"]) as d:
            preds[system] = (d["E"], d["F"])
    return res, preds


if __name__ == "__main__":
    raise SystemExit(worker_main(sys.argv[1]))
