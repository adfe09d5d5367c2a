"""Side-by-side benchmark: gdmlc, sGDML 1.0.3 (torch and --cpu) and the paper's JAX approach.

This module is the orchestration of one run and its command line; the pieces it puts together:
benchmarks/datasets.py (data files, training indices), floors.py (hardware floors),
startup.py (first compile / cached start-up), workers.py (one system's run in its subprocess),
measure.py (timings, memory, throughput), records.py (JSON, pooled rounds, agreement),
environment.py (versions, machine, git), report.py and plotting.py (markdown and plots).

Run from the repository root::

    python -m benchmarks run --quick          # ethanol, MD17 labels, M=200, P=6 (10-20 min here)
    python -m benchmarks run                  # the full run (hours)
    python -m benchmarks run --systems gdmlc,jax --molecules ethanol --sizes 200,500 --repeats 3
    python -m benchmarks report benchmarks/results/RUN.json   # re-render the markdown and plots

What one run does, on ../shared/data/rmd17 (``--data-dir``; without it, the embedded ethanol data):

* measures the machine's floors first (benchmarks/floors.py: memory bandwidth, DGEMM and
  DPOTRF rates), in the same run as everything else;
* times gdmlc's first compile (fresh subprocess, empty GDMLC_GENERATED_DIR) and cached
  start-up (fresh subprocess on the now-filled directory): import, compile_model, a tiny fit
  and a first prediction;
* for every case (molecule x labels x M x with/without symmetries) and every system:
  trains ``--repeats`` times on the same training indices, sigma, lambda and permutations
  (the group gdmlc's ``find_permutations`` finds in the training geometries, or the identity),
  timing the stages (symmetry search, descriptors, assembly, Cholesky solve, coefficients,
  energy constant, end to end); measures prediction throughput for batches of 1, 10, 1000;
  predicts the test file and computes energy/force MAE and RMSE; each system runs in its own
  subprocess, so its peak RSS (VmHWM, read right after training) is its own;
* checks that the systems' test predictions agree to <= 1e-6 (relative) and reports the
  largest difference, pass or fail;
* writes benchmarks/results/<date>-<name>.json (every sample), <date>-<name>.md (tables) and
  PNG plots, and prints the report.

JSON layout (schema "gdmlc-benchmark/1"; every time in seconds, every memory in bytes)::

    schema, name, command, cwd, started, finished, wall_s, work_dir
    config      the options used (molecules, labels, sizes, symmetries, systems, repeats, batches,
                sigma, lam, seed, n_test, n_test_dense, min_time, max_call_s, timeout, floors,
                interleave, perturb, tolerance, memory_factor, data_dir, quick, ...)
    git         {commit, dirty, dirty_files}
    versions    python, numpy, scipy, numba, jax, jaxlib, sympy, matplotlib, gdmlc, numba threads, env
    machine     cpu_model, nproc, cpu_affinity, ram_bytes, platform, load_average_start/_end,
                floors_description (benchmarks.floors.machine_description())
    floors      {status, memory_bandwidth, dgemm, dpotrf}: floors.py's dicts (value, unit, samples, ...)
    systems     {system: {status, reason}}: availability (sGDML venv, jax_paper importable)
    startup     {gdmlc: {first, cached: {import_s, compile_model_s, first_fit_s, first_predict_s,
                 to_first_prediction_s, process_wall_s: {samples, median}}}}
    cases       [{id, molecule, labels, n_train, n_atoms, symmetric, n_perms, perms, train_idx,
                  n_test, matrix_rows, matrix_bytes, sigma, lam, data, harness_symmetry_search_s,
                  floors: {assembly: {seconds, write_s, flops_s, ...}, cholesky: {seconds, ...}},
                  results: {system: {status: ok|skipped|failed, reason,
                      timings: {symmetry_s, descriptor_s, assembly_s, solve_s, coefficients_s,
                                energy_constant_s, train_s, ...: {samples, median}},
                      throughput: {"1"|"10"|"1000": {status, geometries_per_s, seconds_per_call,
                                   first_call_s, calls_per_sample, reason}},
                      peak_rss_bytes (after training), process_peak_rss_bytes, errors: {energy_mae,
                      energy_rmse, force_mae, force_rmse}, n_test, compile (JAX: first vs later
                      calls, jit seconds), notes, rounds, raw (sGDML: run_sgdml's dict), ...}},
                  agreement: {status: pass|FAIL|not compared, tolerance, max_rel, worst_pair,
                              pairs: [{a, b, n_frames, force_rel, energy_rel, force_max_abs,
                                       energy_max_abs, finite, max_rel, pass}]}}]
    skipped     [{molecule, labels, n_train, reason}]: what did not run and why
    targets     [{id, target, case, value, threshold, met, factor, verdict, detail}]
    plots       [paths]

Before each (system, size) the harness compares an estimate of the memory that system needs
(a multiple of the training matrix, MEMORY_FACTOR) with MemAvailable, and skips the size with
the reason recorded instead of swapping or crashing.  A system that fails is recorded as failed
with the end of its error output; the run goes on.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import floors
from benchmarks.datasets import DEFAULT_DATA_DIR, load_split, molecule_files, training_indices
from benchmarks.environment import git_info, machine, versions
from benchmarks.records import SCHEMA, TOLERANCE, compare_predictions, jsonable, merge_runs, save_json
from benchmarks.startup import gdmlc_startup
from benchmarks.workers import run_system
from runtime.assembly import available_memory_bytes

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
WORK_DIR = REPO / "benchmarks" / "work"  # git-ignored: predictions and worker files

SYSTEMS = ("gdmlc", "sgdml_torch", "sgdml_cpu", "jax_contraction", "jax_dense")
GROUPS = {"gdmlc": ("gdmlc",), "sgdml": ("sgdml_torch", "sgdml_cpu"),
          "jax": ("jax_contraction", "jax_dense")}
# memory a system's training needs, in training matrices (3NM)^2 * 8 bytes, plus a margin
# (estimates: gdmlc works in place on one matrix; sGDML keeps ~3 copies (measured ~16 GB for a
# 5.8 GB matrix; sgdml_runner refuses below 3x itself); the JAX model fills a NumPy matrix from
# 128 MiB chunks, then scipy's cho_factor copies it into Fortran order)
MEMORY_FACTOR = {"gdmlc": 1.05, "sgdml_torch": 3.0, "sgdml_cpu": 3.0,
                 "jax_contraction": 2.2, "jax_dense": 2.2}
MEMORY_MARGIN = 0.75 * 2**30
FULL = dict(molecules=["ethanol", "aspirin"], labels=["old", "new"], sizes=[200, 500, 1000],
            symmetries=["sym", "nosym"], repeats=3, batches=[1, 10, 1000], n_test=1000,
            n_test_dense=100, min_time=0.3, max_call_s=120.0, timeout=4 * 3600)
QUICK = dict(molecules=["ethanol"], labels=["old"], sizes=[200],
             symmetries=["sym"], repeats=3, batches=[1, 10, 1000], n_test=200,
             n_test_dense=50, min_time=0.1, max_call_s=15.0, timeout=900)


def _log(msg=""):
    print(msg, flush=True)


# ============================================================================ the run

def parse_list(text, cast=str):
    return [cast(v.strip()) for v in text.split(",") if v.strip()]


def expand_systems(items):
    out = []
    for item in items:
        if item in GROUPS:
            out += [s for s in GROUPS[item] if s not in out]
        elif item in SYSTEMS:
            out += [item] if item not in out else []
        else:
            raise SystemExit(f"unknown system {item!r}: choose from {', '.join(list(GROUPS) + list(SYSTEMS))}")
    return out


def build_config(args):
    cfg = dict(QUICK if args.quick else FULL)
    for key in ("molecules", "labels", "symmetries"):
        if getattr(args, key):
            cfg[key] = parse_list(getattr(args, key))
    if args.sizes:
        cfg["sizes"] = parse_list(args.sizes, int)
    if args.batches:
        cfg["batches"] = parse_list(args.batches, int)
    for key in ("repeats", "n_test", "n_test_dense", "min_time", "max_call_s", "timeout"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    cfg["systems"] = expand_systems(parse_list(args.systems))
    cfg.update(quick=bool(args.quick), sigma=float(args.sigma), lam=float(args.lam), seed=args.seed,
               data_dir=str(Path(args.data_dir).resolve()), install_sgdml=not args.no_install,
               startup_repeats=(args.startup_repeats if args.startup_repeats is not None
                                else args.repeats if args.repeats is not None else 3),
               floors=args.floors or ("quick" if args.quick else "full"),
               perturb=args.perturb, tolerance=TOLERANCE, interleave=not args.no_interleave, memory_factor=MEMORY_FACTOR,
               memory_margin_bytes=MEMORY_MARGIN, peer_single_thread_from=args.peer_single_thread_from)
    if cfg["repeats"] < 3:
        cfg["note_repeats"] = f"repeats = {cfg['repeats']} < 3: medians of fewer than 3 samples"
    bad = set(cfg["labels"]) - {"old", "new"}
    if bad:
        raise SystemExit(f"--labels takes old,new (got {', '.join(sorted(bad))})")
    bad = set(cfg["symmetries"]) - {"sym", "nosym"}
    if bad:
        raise SystemExit(f"--symmetries takes sym,nosym (got {', '.join(sorted(bad))})")
    return cfg


def output_paths(out_dir, name):
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{_dt.date.today().isoformat()}-{name}"
    k = 1
    while (out_dir / f"{stem}.json").exists():
        k += 1
        stem = f"{_dt.date.today().isoformat()}-{name}-{k}"
    return out_dir, stem


def prepare_systems(cfg, log):
    """{system: {'status': 'ok'|'skipped', 'reason', ...}} and the sGDML runner module."""
    state, runner = {}, None
    wants_sgdml = [s for s in cfg["systems"] if s.startswith("sgdml")]
    if wants_sgdml:
        try:
            runner = importlib.import_module("benchmarks.sgdml_runner")
        except ImportError as exc:
            for s in wants_sgdml:
                state[s] = {"status": "skipped", "reason": f"benchmarks.sgdml_runner not importable: {exc}"}
        if runner is not None:
            venv = REPO / "benchmarks" / ".sgdml-venv"
            venv_python = venv / "bin" / "python"
            if not cfg["install_sgdml"] and not venv_python.exists():
                for s in wants_sgdml:
                    state[s] = {"status": "skipped",
                                "reason": f"--no-install and no sGDML environment at {venv}"}
            else:
                log("sGDML environment: " + ("checking" if venv_python.exists() else
                                             "creating (downloads torch and sgdml: slow)"))
                try:
                    py = runner.ensure_sgdml_env(progress=True)
                    for s in wants_sgdml:
                        state[s] = {"status": "ok", "python": str(py)}
                except Exception as exc:
                    for s in wants_sgdml:
                        state[s] = {"status": "skipped",
                                    "reason": f"sGDML environment unavailable: {type(exc).__name__}: {exc}"}
    wants_jax = [s for s in cfg["systems"] if s.startswith("jax")]
    if wants_jax:
        try:
            importlib.import_module("benchmarks.jax_paper")
            for s in wants_jax:
                state[s] = {"status": "ok"}
        except ImportError as exc:
            for s in wants_jax:
                state[s] = {"status": "skipped", "reason": f"benchmarks.jax_paper not importable: {exc}"}
    if "gdmlc" in cfg["systems"]:
        state["gdmlc"] = {"status": "ok"}
    return state, (runner if any(state.get(s, {}).get("status") == "ok" for s in wants_sgdml) else None)


def run(cfg, out_dir, name, log=_log, argv=None):
    from runtime.symmetry import find_permutations
    from benchmarks import plotting, report

    t_start = time.perf_counter()
    out_dir, stem = output_paths(out_dir, name)
    json_path = out_dir / f"{stem}.json"
    work = WORK_DIR / stem if out_dir.resolve() == RESULTS_DIR.resolve() else out_dir / f"{stem}-work"
    work.mkdir(parents=True, exist_ok=True)
    runinfo = {
        "schema": SCHEMA,
        "command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]),
        "cwd": str(Path.cwd()), "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "name": stem, "config": cfg, "git": git_info(), "versions": versions(), "machine": machine(),
        "work_dir": str(work)}
    log(f"gdmlc benchmark run {stem}: {runinfo['command']}")
    log(f"systems: {', '.join(cfg['systems'])}; molecules {cfg['molecules']}, labels {cfg['labels']}, "
        f"M {cfg['sizes']}, {cfg['symmetries']}, repeats {cfg['repeats']}")

    log("[1] hardware floors")
    runinfo["floors"] = floors.measure_in_subprocess(log, cfg["floors"], work)
    if isinstance(runinfo["floors"].get("machine"), dict):
        runinfo["machine"]["floors_description"] = runinfo["floors"].pop("machine")
    save_json(json_path, runinfo)

    log("[2] systems")
    state, runner = prepare_systems(cfg, log)
    runinfo["systems"] = state
    for s, v in state.items():
        log(f"  {s}: {v['status']}" + (f" ({v['reason']})" if v.get("reason") else ""))
    if runner is not None:
        runinfo["versions"]["sgdml_runner"] = jsonable(getattr(runner, "VERSIONS", None))

    runinfo["cases"], runinfo["skipped"] = [], []
    startup_done = False
    for molecule in cfg["molecules"]:
        files = molecule_files(cfg["data_dir"], molecule)
        if files is None:
            runinfo["skipped"].append({"molecule": molecule, "reason": f"no data in {cfg['data_dir']}"})
            log(f"{molecule}: no data, skipped")
            continue
        labels_list = cfg["labels"] if files["kind"] == "rmd17" else ["default"]
        for labels in labels_list:
            train, test = load_split(files, labels)
            if not startup_done and "gdmlc" in cfg["systems"] and cfg["startup_repeats"] < 1:
                runinfo["startup"] = {"gdmlc": {"status": "skipped", "reason": "--startup-repeats 0"}}
                startup_done = True
            if not startup_done and "gdmlc" in cfg["systems"]:
                log("[3] gdmlc first compile and cached start-up")
                try:
                    runinfo["startup"] = {"gdmlc": gdmlc_startup(train, cfg["sigma"], cfg["startup_repeats"], log)}
                except Exception as exc:
                    runinfo["startup"] = {"gdmlc": {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}}
                startup_done = True
                save_json(json_path, runinfo)
            for m in cfg["sizes"]:
                if m > len(train):
                    runinfo["skipped"].append({"molecule": molecule, "labels": labels, "n_train": m,
                                               "reason": f"only {len(train)} training frames"})
                    continue
                idx = training_indices(len(train), m, cfg["seed"])
                t = time.perf_counter()
                group = find_permutations(train.R[idx], train.z, progress=False)
                t_perm = time.perf_counter() - t
                for symtag in cfg["symmetries"]:
                    sym = symtag == "sym"
                    perms = group if sym else np.arange(len(train.z))[None]
                    case = run_case(cfg, runinfo, state, runner, work, molecule, labels, files,
                                    train, test, idx, sym, perms, log)
                    case["harness_symmetry_search_s"] = t_perm
                    runinfo["cases"].append(case)
                    save_json(json_path, runinfo)

    runinfo["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    runinfo["wall_s"] = time.perf_counter() - t_start
    try:
        runinfo["machine"]["load_average_end"] = list(os.getloadavg())
    except OSError:
        pass
    runinfo["targets"] = report.evaluate_targets(runinfo)
    try:
        runinfo["plots"] = [str(p) for p in plotting.make_plots(runinfo, out_dir, stem)]
    except Exception as exc:
        runinfo["plots"] = []
        runinfo["plot_error"] = f"{type(exc).__name__}: {exc}"
        log(f"plots failed: {runinfo['plot_error']}")
    save_json(json_path, runinfo)
    md = report.render_markdown(runinfo)
    md_path = out_dir / f"{stem}.md"
    md_path.write_text(md)
    log()
    log(md)
    log(f"wrote {json_path}\nwrote {md_path}" + "".join(f"\nwrote {p}" for p in runinfo["plots"]))
    return runinfo, json_path, md_path


def run_case(cfg, runinfo, state, runner, work, molecule, labels, files, train, test, idx, sym,
             perms, log):
    n_atoms, m = len(train.z), len(idx)
    n3m = 3 * n_atoms * m
    case_id = f"{molecule}-{labels}-M{m}-{'sym' if sym else 'nosym'}"
    case = {"id": case_id, "molecule": molecule, "labels": labels, "data": files, "n_train": m,
            "n_atoms": n_atoms, "symmetric": sym, "n_perms": int(len(perms)), "perms": perms.tolist(),
            "train_idx": idx.tolist(), "n_test": min(cfg["n_test"], len(test)),
            "matrix_rows": n3m, "matrix_bytes": n3m * n3m * 8, "sigma": cfg["sigma"], "lam": cfg["lam"],
            "results": {}}
    n_features = n_atoms * (n_atoms - 1) // 2
    if runinfo["floors"].get("status") in ("ok", "partial"):
        case["floors"] = floors.case_floors(runinfo["floors"], n_atoms, m, len(perms), n_features)
    log(f"[case] {case_id}: {n3m} x {n3m} matrix ({case['matrix_bytes'] / 2**30:.2f} GiB), P={len(perms)}")
    spec = {"case_id": case_id, "files": files, "labels": labels, "train_idx": idx.tolist(),
            "perms": perms.tolist(), "symmetric": sym, "sigma": cfg["sigma"], "lam": cfg["lam"],
            "repeats": cfg["repeats"], "batches": cfg["batches"], "n_test": cfg["n_test"],
            "n_test_dense": cfg["n_test_dense"], "min_time": cfg["min_time"],
            "max_call_s": cfg["max_call_s"],
            "peer_blas_threads": 1 if cfg.get("peer_single_thread_from") and m >= cfg["peer_single_thread_from"]
            else None}
    rounds = cfg["repeats"] if cfg.get("interleave", True) else 1
    if rounds > 1:
        spec["repeats"] = 1  # one repetition per subprocess, systems taking turns
    runs = {}
    for r in range(rounds):
        for system in cfg["systems"]:
            if state.get(system, {}).get("status") != "ok":
                case["results"][system] = {"status": "skipped", "reason": state.get(system, {}).get("reason", "")}
                continue
            if runs.get(system) and runs[system][-1][0].get("status") != "ok":
                continue  # skipped or failed in an earlier round: not retried
            need = MEMORY_FACTOR[system] * case["matrix_bytes"] + MEMORY_MARGIN
            avail = available_memory_bytes()
            if avail is not None and need > avail:
                reason = (f"needs about {need / 2**30:.1f} GiB ({MEMORY_FACTOR[system]:g} x the "
                          f"{case['matrix_bytes'] / 2**30:.2f} GiB matrix + margin), "
                          f"{avail / 2**30:.1f} GiB available")
                runs.setdefault(system, []).append(({"status": "skipped", "reason": reason}, {}))
                log(f"  {system}: skipped: {reason}")
                continue
            log(f"  {system}" + (f" (round {r + 1}/{rounds})" if rounds > 1 else "") + " ...")
            t = time.perf_counter()
            res, new_preds = run_system(system, spec, runner, train, test, work, case_id, r, cfg, log)
            res["memory_available_bytes"] = avail
            runs.setdefault(system, []).append((res, new_preds))
            log(f"  {system}: {res['status']} in {time.perf_counter() - t:.1f} s"
                + (f" ({res.get('reason')})" if res.get("status") != "ok" else ""))
    preds = {}
    for system, sys_runs in runs.items():
        res = merge_runs([x for x, _ in sys_runs])
        case["results"][system] = res
        new_preds = sys_runs[-1][1] if res.get("status") == "ok" else {}
        for key, (E, F) in new_preds.items():
            if cfg.get("perturb") and cfg["perturb"].split("=")[0] == system:
                eps = float(cfg["perturb"].split("=")[1])
                F = F * (1.0 + eps)
                res.setdefault("notes", []).append(f"SELF-TEST: forces scaled by 1 + {eps:g} before comparison")
            preds[key] = (E, F)
    case["agreement"] = compare_predictions(preds, cfg["tolerance"])
    a = case["agreement"]
    log(f"  agreement: {a['status']}" + (f", largest relative difference {a['max_rel']:.2e} "
                                         f"({' vs '.join(a['worst_pair'])})" if a.get("pairs") else ""))
    return case


# ============================================================================ command line

def build_parser():
    ap = argparse.ArgumentParser(prog="python -m benchmarks",
                                 description="gdmlc side by side with sGDML and the JAX approach")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the benchmark")
    r.add_argument("--quick", action="store_true",
                   help="a few minutes: ethanol, MD17 ('old') labels, M=200, with and without "
                        "symmetries, 3 repeats, 200 test frames (50 for JAX dense)")
    r.add_argument("--systems", default="gdmlc,sgdml,jax",
                   help="comma list of gdmlc, sgdml (= sgdml_torch,sgdml_cpu), jax "
                        "(= jax_contraction,jax_dense) or single systems [gdmlc,sgdml,jax]")
    r.add_argument("--molecules", help="comma list [ethanol,aspirin; quick: ethanol]")
    r.add_argument("--labels", help="old (MD17), new (rMD17) [old,new; quick: old]")
    r.add_argument("--sizes", help="training set sizes M [200,500,1000; quick: 200]")
    r.add_argument("--symmetries", help="sym,nosym [both; quick: sym]")
    r.add_argument("--repeats", type=int, help="repetitions of every timing [3]")
    r.add_argument("--batches", help="prediction batch sizes [1,10,1000]")
    r.add_argument("--n-test", type=int, dest="n_test", help="test frames for errors [1000; quick 200]")
    r.add_argument("--n-test-dense", type=int, dest="n_test_dense",
                   help="test frames for JAX dense (slow) [100; quick 50]")
    r.add_argument("--min-time", type=float, dest="min_time", help="seconds per timing sample [0.3]")
    r.add_argument("--max-call-s", type=float, dest="max_call_s",
                   help="skip a prediction batch whose one call takes longer [120; quick 15]")
    r.add_argument("--timeout", type=float, help="seconds per system and case [14400; quick 900]")
    r.add_argument("--no-interleave", action="store_true", dest="no_interleave",
                   help="run each system's repeats in one subprocess instead of one subprocess per "
                        "repeat with the systems taking turns (the default, so that all systems "
                        "share the same background load)")
    r.add_argument("--floors", choices=["full", "quick", "tiny", "skip"],
                   help="sizes of the floor measurements [full; quick: quick] (tiny: for tests only)")
    r.add_argument("--startup-repeats", type=int, dest="startup_repeats",
                   help="gdmlc first-compile / cached start-up repetitions, 0 to skip [= --repeats]")
    r.add_argument("--sigma", type=float, default=20.0, help="kernel length scale (an integer: "
                   "sGDML's torch path truncates it) [20]")
    r.add_argument("--lam", type=float, default=1e-10, help="regulariser [1e-10, sGDML's default]")
    r.add_argument("--seed", type=int, default=0, help="seed of the training-index draw [0]")
    r.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR),
                   help="rMD17 folder [../shared/data/rmd17]; without it ethanol uses the embedded data")
    r.add_argument("--peer-single-thread-from", type=int, default=None, metavar="M",
                   help="give sGDML and JAX OPENBLAS_NUM_THREADS=1 from this training-set size on: "
                        "their scipy Cholesky (scipy's OpenBLAS 0.3.30, threaded dpotrf) fails or "
                        "segfaults on ethanol M=1000 with 2 threads on this machine; 1 thread works")
    r.add_argument("--no-install", action="store_true",
                   help="do not create the sGDML environment: skip sGDML (reason recorded) if absent")
    r.add_argument("--out", default=str(RESULTS_DIR), help="output folder [benchmarks/results]")
    r.add_argument("--name", help="run name in <date>-<name>.json [quick / full / custom]")
    r.add_argument("--perturb", metavar="SYSTEM=EPS",
                   help="self-test of the agreement check: scale SYSTEM's predicted forces by "
                        "1+EPS before comparing (recorded and flagged in the report)")
    p = sub.add_parser("report", help="re-render the markdown report and plots of a run's JSON")
    p.add_argument("json")
    p.add_argument("--out", help="folder for the .md and plots [beside the JSON]")
    return ap


def main(argv=None):
    if argv is None:
        argv = sys.argv[1:]
    args = build_parser().parse_args(argv)
    if args.cmd == "report":
        from benchmarks import plotting, report
        path = Path(args.json)
        runinfo = json.loads(path.read_text())
        out = Path(args.out) if args.out else path.parent
        runinfo["targets"] = report.evaluate_targets(runinfo)
        try:
            runinfo["plots"] = [str(p) for p in plotting.make_plots(runinfo, out, path.stem)]
        except Exception as exc:  # e.g. matplotlib (an optional extra) missing
            print(f"plots failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        md = report.render_markdown(runinfo)
        (out / f"{path.stem}.md").write_text(md)
        print(md)
        return 0
    cfg = build_config(args)
    name = args.name or ("quick" if args.quick else "full")
    if args.name is None and (args.systems != "gdmlc,sgdml,jax" or args.molecules or args.labels
                              or args.sizes or args.symmetries or args.repeats is not None):
        name += "-custom"  # not the standard configuration
    run(cfg, args.out, name, argv=argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
