"""Markdown report and target verdicts of a benchmark run (the JSON written by harness.py).

``render_markdown(run)`` -> str; ``evaluate_targets(run)`` -> list of verdicts (issue 4's
targets, met / missed / not measured, with the factor by which).  Both read only the run's
JSON, so a run can be re-rendered later: ``python -m benchmarks report RUN.json``.
"""
from __future__ import annotations

import math

SYSTEM_LABEL = {"gdmlc": "gdmlc", "sgdml_torch": "sGDML 1.0.3 (torch)", "sgdml_cpu": "sGDML 1.0.3 (--cpu)",
                "jax_contraction": "JAX contraction", "jax_dense": "JAX dense"}
PEERS = ("sgdml_torch", "sgdml_cpu", "jax_contraction", "jax_dense")
GIB = 2**30


# ----------------------------------------------------------------------------- accessors

def ok(res):
    return isinstance(res, dict) and res.get("status") == "ok"


def stage(res, key):
    """Median seconds of a stage, or None."""
    if not ok(res):
        return None
    v = res.get("timings", {}).get(key)
    return v.get("median") if isinstance(v, dict) else None


def rate(res, batch):
    if not ok(res):
        return None
    v = res.get("throughput", {}).get(str(batch))
    return v.get("geometries_per_s") if isinstance(v, dict) and v.get("status") == "ok" else None


def peak(res):
    if not ok(res):
        return None
    # peak RSS right after the training repeats (before prediction), else the whole process
    return res.get("peak_rss_bytes") or res.get("process_peak_rss_bytes")


def floor_s(case, which):
    f = (case.get("floors") or {}).get(which)
    if not isinstance(f, dict):
        return None
    for k in ("seconds", "value", "floor_s", "time_s"):
        if isinstance(f.get(k), (int, float)):
            return float(f[k])
    return None


def fmt(x, digits=3, unit=""):
    if x is None:
        return "–"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if x == 0:
        return "0" + unit
    return f"{x:.{digits}g}{unit}"


def ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


# ----------------------------------------------------------------------------- targets

def _target_case(run, molecule):
    """The case a molecule's targets are judged on: symmetric, MD17 labels if present, the
    largest M at which gdmlc ran."""
    cases = [c for c in run.get("cases", []) if c["molecule"] == molecule and c["symmetric"]
             and ok(c["results"].get("gdmlc"))]
    if not cases:
        return None
    order = {"old": 0, "default": 1, "new": 2}
    return max(cases, key=lambda c: (c["n_train"], -order.get(c["labels"], 3)))


def _verdict(tid, text, case, value, threshold, higher_is_better, detail=""):
    out = {"id": tid, "target": text, "case": case["id"] if case else None, "value": value,
           "threshold": threshold, "detail": detail}
    if value is None or (isinstance(value, float) and math.isnan(value)):
        out.update(met=None, factor=None, verdict="not measured")
        return out
    met = value >= threshold if higher_is_better else value <= threshold
    factor = (value / threshold if higher_is_better else threshold / value) if value else None
    # factor > 1: met with that much to spare; < 1: missed, off by 1/factor
    out.update(met=bool(met), factor=factor,
               verdict=("met" if met else "MISSED") + (f" ({factor:.2f}x to spare)" if met and factor else "")
               + (f" (off by {1 / factor:.2f}x)" if not met and factor else ""))
    return out


def evaluate_targets(run):
    """Issue 4's targets, judged on this run's numbers (never on remembered ones)."""
    out = []
    for molecule in ("ethanol", "aspirin"):
        case = _target_case(run, molecule)
        if case is None:
            out.append({"id": f"{molecule}", "target": f"all {molecule} targets", "case": None,
                        "met": None, "verdict": "not measured", "detail": "no symmetric gdmlc case ran"})
            continue
        r = case["results"]
        g = r.get("gdmlc")
        size_note = ""
        if molecule == "ethanol" and case["n_train"] != 1000:
            size_note = f"measured at M={case['n_train']}; the target is stated for M=1000"
        elif molecule == "aspirin":
            size_note = f"largest M that ran: {case['n_train']}"
        pre = f"{molecule}: "
        ga = stage(g, "assembly_s")
        out.append(_verdict(f"{molecule}.assembly_vs_sgdml", pre + "assembly >= 20x faster than sGDML (torch)",
                            case, ratio(stage(r.get("sgdml_torch"), "assembly_s"), ga), 20.0, True,
                            size_note))
        out.append(_verdict(f"{molecule}.assembly_floor", pre + "assembly within 3x of its floor", case,
                            ratio(ga, floor_s(case, "assembly")), 3.0, False, size_note))
        out.append(_verdict(f"{molecule}.cholesky_floor", pre + "Cholesky within 1.3x of the DPOTRF floor",
                            case, ratio(stage(g, "solve_s"), floor_s(case, "cholesky")), 1.3, False,
                            size_note + ("; solve_s includes the triangular solves" if size_note else
                                         "solve_s includes the triangular solves")))
        out.append(_verdict(f"{molecule}.memory", pre + "peak memory of training <= 1.1x the matrix", case,
                            ratio(peak(g), case["matrix_bytes"]), 1.1, False,
                            "whole training process peak RSS (interpreter, libraries, data included)"
                            + (f"; {size_note}" if size_note else "")))
        out.append(_verdict(f"{molecule}.cholesky_share", pre + "training dominated by the Cholesky (>= 70%)",
                            case, ratio(stage(g, "solve_s"), stage(g, "train_s")), 0.70, True, size_note))
        for peer, label in (("sgdml_torch", "sGDML (torch)"), ("jax_contraction", "the JAX contraction")):
            for b in (10, 1000):
                out.append(_verdict(f"{molecule}.predict_{b}_vs_{peer}",
                                    pre + f"prediction throughput (batch {b}) >= 10x {label}", case,
                                    ratio(rate(g, b), rate(r.get(peer), b)), 10.0, True, size_note))
    for v in out:
        if v["id"].endswith(("assembly_floor", "cholesky_floor")) and v.get("value") is not None and v["value"] < 1:
            v["detail"] += ("; BELOW its floor: the floor's rate measurement was disturbed (load on the "
                            "machine) or the floor model does not bound this algorithm: treat as unreliable")
    cases = run.get("cases", [])
    compared = [c for c in cases if c.get("agreement", {}).get("pairs")]
    worst = max((c["agreement"]["max_rel"] for c in compared), default=None)
    fails = [c["id"] for c in compared if c["agreement"]["status"] != "pass"]
    v = _verdict("agreement", f"predictions agree to <= {run['config'].get('tolerance', 1e-6):g} relative "
                 "(all cases, all system pairs)", None, worst, run["config"].get("tolerance", 1e-6), False,
                 f"{len(compared)} case(s) compared" + (f"; FAILED in: {', '.join(fails)}" if fails else ""))
    if worst == 0:
        v.update(met=True, factor=None, verdict="met")
    out.append(v)
    return out


# ----------------------------------------------------------------------------- markdown

def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _floor_row(name, d):
    if not isinstance(d, dict):
        return [name, "–", "", ""]
    if d.get("status") == "failed":
        return [name, "failed", "", d.get("reason", "")]
    val = d.get("value")
    samples = d.get("samples")
    unit = d.get("unit", "")
    s = ", ".join(fmt(x, 3) for x in samples) if isinstance(samples, list) else ""
    extra = {k: v for k, v in d.items() if k not in ("value", "samples", "unit", "status")}
    return [name, f"{fmt(val, 4)} {unit}".strip(), s, "; ".join(f"{k}: {v}" for k, v in extra.items())[:300]]


def _with_floor(t, f, samples=None):
    if t is None:
        return "–"
    return fmt(t) + _spread(samples) + (f" ({t / f:.2f}x)" if f else "")


def _spread(samples):
    """' [min–max]' of the samples when there are several (the run's noise, shown honestly)."""
    if not samples or len(samples) < 2:
        return ""
    return f" [{fmt(min(samples), 2)}–{fmt(max(samples), 2)}]"


def _samples(res, key):
    v = res.get("timings", {}).get(key) if ok(res) else None
    return v.get("samples") if isinstance(v, dict) else None


def render_case(case):
    r = case["results"]
    fa, fc = floor_s(case, "assembly"), floor_s(case, "cholesky")
    batches = sorted({int(b) for res in r.values() if ok(res) for b in res.get("throughput", {})}) or [1, 10, 1000]
    header = ["system", "symmetry s", "assembly s [range] (x floor)", "solve s [range] (x floor)", "train s [range]",
              "solve/train", "peak RSS GiB (x matrix)"] + [f"pred/s b={b}" for b in batches] + \
             ["test frames", "E MAE", "E RMSE", "F MAE", "F RMSE"]
    rows = []
    for system, res in r.items():
        if not ok(res):
            rows.append([SYSTEM_LABEL.get(system, system), f"**{res.get('status', '?')}**: "
                         + str(res.get("reason", "")).replace("|", "/").replace("\n", " ")[:200]]
                        + [""] * (len(header) - 2))
            continue
        pk = peak(res)
        err = res.get("errors", {})
        rows.append([SYSTEM_LABEL.get(system, system), fmt(stage(res, "symmetry_s")),
                     _with_floor(stage(res, "assembly_s"), fa, _samples(res, "assembly_s")),
                     _with_floor(stage(res, "solve_s"), fc, _samples(res, "solve_s")),
                     fmt(stage(res, "train_s")) + _spread(_samples(res, "train_s")), fmt(ratio(stage(res, "solve_s"), stage(res, "train_s")), 2),
                     (f"{pk / GIB:.2f} ({pk / case['matrix_bytes']:.2f}x)" if pk else "–")]
                    + [fmt(rate(res, b)) for b in batches]
                    + [str(res.get("n_test", "–"))]
                    + [fmt(err.get(k), 3) for k in ("energy_mae", "energy_rmse", "force_mae", "force_rmse")])
    out = [f"### {case['id']}: {case['molecule']}, {case['labels']} labels, M={case['n_train']}, "
           f"P={case['n_perms']} ({'with' if case['symmetric'] else 'without'} symmetries)", "",
           f"Matrix {case['matrix_rows']} x {case['matrix_rows']} ({case['matrix_bytes'] / GIB:.2f} GiB); "
           f"floors: assembly {fmt(fa, 3, ' s')}, Cholesky {fmt(fc, 3, ' s')}; "
           f"{case.get('n_test')} test frames (errors in the data's units: kcal/mol, kcal/mol/Å).", "",
           _table(header, rows), ""]
    g = r.get("gdmlc")
    if ok(g):
        rrows = []
        for peer in PEERS:
            p = r.get(peer)
            if not ok(p):
                continue
            rrows.append([SYSTEM_LABEL[peer]]
                         + [fmt(ratio(stage(p, k), stage(g, k)), 3, "x") for k in
                            ("symmetry_s", "assembly_s", "solve_s", "train_s")]
                         + [fmt(ratio(rate(g, b), rate(p, b)), 3, "x") for b in batches]
                         + [fmt(ratio(peak(p), peak(g)), 3, "x")])
        if rrows:
            out += ["gdmlc's advantage (peer time / gdmlc time; for throughput gdmlc rate / peer rate; "
                    "> 1: gdmlc better):", "",
                    _table(["vs", "symmetry", "assembly", "solve", "train"] + [f"pred b={b}" for b in batches]
                           + ["peak memory"], rrows), ""]
    notes = [f"{SYSTEM_LABEL.get(s, s)}: {n}" for s, res in r.items() if isinstance(res, dict)
             for n in res.get("notes", [])]
    if ok(g) and g.get("perms_match") is False:
        notes.append("gdmlc: GDML.fit found a different permutation group from the harness's")
    if notes:
        out += ["Notes: " + "; ".join(notes), ""]
    return "\n".join(out)


def render_ratios(run):
    """One table over all cases: gdmlc's advantage over each peer (ratios within this run)."""
    rows = []
    batches = sorted({int(b) for c in run.get("cases", []) for res in c["results"].values() if ok(res)
                      for b in res.get("throughput", {})})
    for c in run.get("cases", []):
        g = c["results"].get("gdmlc")
        if not ok(g):
            continue
        for peer in PEERS:
            p = c["results"].get(peer)
            if not ok(p):
                continue
            rows.append([c["id"], SYSTEM_LABEL[peer]]
                        + [fmt(ratio(stage(p, k), stage(g, k)), 3, "x")
                           for k in ("symmetry_s", "assembly_s", "solve_s", "train_s")]
                        + [fmt(ratio(rate(g, b), rate(p, b)), 3, "x") for b in batches]
                        + [fmt(ratio(peak(p), peak(g)), 3, "x")])
    if not rows:
        return "no case with gdmlc and a peer"
    return _table(["case", "gdmlc vs", "symmetry", "assembly", "solve", "train"]
                  + [f"predict b={b}" for b in batches] + ["peak memory"], rows)


def render_agreement(run):
    rows = []
    for c in run.get("cases", []):
        a = c.get("agreement", {})
        if not a.get("pairs"):
            rows.append([c["id"], "–", "–", "–", "–", a.get("status", "–") + ": " + a.get("reason", "")])
            continue
        for p in a["pairs"]:
            rows.append([c["id"], f"{p['a']} vs {p['b']}", p["n_frames"], f"{p['force_rel']:.2e}",
                         f"{p['energy_rel']:.2e}", "pass" if p["pass"] else "**FAIL**"])
    return _table(["case", "systems", "test frames", "max rel. force diff", "max rel. energy diff",
                   f"<= {run['config'].get('tolerance', 1e-6):g}"], rows)


def first_compile_records(run, systems):
    """(case, system, result) for each of systems, from the first case where it ran and recorded
    its compile information."""
    seen = set()
    for c in run.get("cases", []):
        for s in systems:
            res = c["results"].get(s)
            if s not in seen and ok(res) and res.get("compile"):
                seen.add(s)
                yield c, s, res


def render_startup(run):
    rows = []
    g = (run.get("startup") or {}).get("gdmlc")
    if isinstance(g, dict) and g.get("status") == "ok":
        for key, label in (("import_s", "import runtime"), ("compile_model_s", "GDML(...) (compile_model)"),
                           ("first_fit_s", "first fit (4 geometries)"), ("first_predict_s", "first predict"),
                           ("to_first_prediction_s", "**compile_model to first prediction**"),
                           ("process_wall_s", "whole subprocess")):
            rows.append(["gdmlc", label, fmt(g["first"][key]["median"], 3, " s"),
                         fmt(g["cached"][key]["median"], 3, " s")])
        if g.get("invalid_pairs"):
            rows.append(["gdmlc", f"{len(g['invalid_pairs'])} invalid pair(s) not counted (module not built "
                         "first or rebuilt when cached)", "", ""])
    elif isinstance(g, dict):
        rows.append(["gdmlc", g.get("status", "?"), g.get("reason", ""), ""])
    for c, s, res in first_compile_records(run, ("jax_contraction", "jax_dense")):
        ci = res["compile"]
        rows.append([SYSTEM_LABEL[s], f"assemble, {c['id']} (first call: {fmt(ci.get('assemble_compile_s'), 3)} s "
                     "jit compile)", fmt(ci.get("assemble_first_call_s"), 3, " s"),
                     fmt(ci.get("assemble_later_call_s"), 3, " s")])
        rows.append([SYSTEM_LABEL[s], "jit compile seconds, all functions and shapes of one process",
                     fmt(ci.get("total_compile_s"), 3, " s"), "–"])
        for b in ("1", "10", "1000"):
            if f"predict_{b}_first_call_s" in ci:
                rows.append([SYSTEM_LABEL[s], f"predict batch {b} (first call of the timing loop; already "
                             "compiled if the test prediction used the same chunk shape)",
                             fmt(ci[f"predict_{b}_first_call_s"], 3, " s"),
                             fmt(ci.get(f"predict_{b}_later_call_s"), 3, " s")])
    for _, s, res in first_compile_records(run, ("sgdml_torch", "sgdml_cpu")):
        rows.append([SYSTEM_LABEL[s], str(res["compile"])[:200], "", ""])
    rows.append(["sGDML", "no JIT; interpreter and torch start-up are not timed", "–", "–"])
    return _table(["system", "step", "first (cold)", "cached / later call"], rows)


def render_markdown(run):
    cfg = run.get("config", {})
    m = run.get("machine", {})
    v = dict(run.get("versions", {}))
    env = v.pop("env", {})
    blas = v.pop("blas", None)
    out = [f"## Benchmark run {run.get('name', '')}", ""]
    if cfg.get("perturb"):
        out += [f"**SELF-TEST RUN: `--perturb {cfg['perturb']}` scaled that system's forces before the "
                "agreement check; its agreement results are deliberately wrong.**", ""]
    out += ["**Command** (repository root):", "", "```", run.get("command", ""), "```", "",
            f"**Date.** started {run.get('started')}, finished {run.get('finished', 'not finished')}"
            + (f", {run['wall_s'] / 60:.1f} min" if run.get("wall_s") else ""), "",
            f"**Machine.** {m.get('cpu_model')}, {m.get('nproc')} logical CPUs (affinity {m.get('cpu_affinity')}), "
            f"{(m.get('ram_bytes') or 0) / GIB:.1f} GiB RAM, {m.get('platform')}; load average "
            f"{_load(m.get('load_average_start'))} at start, {_load(m.get('load_average_end'))} at end.",
            ""]
    fd = m.get("floors_description")
    if isinstance(fd, dict):
        fblas = fd.get("blas", {}) if isinstance(fd.get("blas"), dict) else {}
        parts = []
        for key, label in (("blas", "numpy BLAS"), ("scipy_lapack", "scipy LAPACK")):
            d = fblas.get(key) or {}
            if d:
                parts.append(f"{label}: {d.get('name')} {d.get('version')}")
        for p in fblas.get("threadpools", []) or []:
            parts.append(f"threadpool {p.get('internal_api')} {p.get('version')} ({p.get('num_threads')} threads)")
        out += [f"From benchmarks/floors.machine_description(): {fd.get('cpu')}, {fd.get('usable_cpus')} usable "
                f"CPUs, {fd.get('memory_gib')} GiB; " + "; ".join(parts)
                + (f"; environment {fblas['env']}" if fblas.get("env") else "") + ".", ""]
    out += ["**Versions.** " + ", ".join(f"{k} {val}" for k, val in v.items() if val is not None)
            + (f"; environment {env}" if env else "") + ".", ""]
    if blas:
        out += ["BLAS: " + "; ".join(f"{b.get('internal_api')} {b.get('version')} ({b.get('num_threads')} threads)"
                                     for b in blas), ""]
    sg = {c["results"][s].get("versions") and str(c["results"][s]["versions"]) for c in run.get("cases", [])
          for s in ("sgdml_torch", "sgdml_cpu") if ok(c["results"].get(s))} - {None}
    if sg:
        out += ["sGDML environment: " + "; ".join(sorted(sg)), ""]
    git = run.get("git", {})
    out += [f"**Code.** git {git.get('commit')}" + (" with uncommitted changes" if git.get("dirty") else ""), "",
            f"**Setup.** sigma = {cfg.get('sigma')}, lambda = {cfg.get('lam')}, training indices: the first M of "
            f"a permutation of the train file drawn with seed {cfg.get('seed')} (sorted; identical for every "
            f"system), permutations: the group gdmlc's find_permutations finds in the training geometries "
            f"(or the identity), given to every system; {cfg.get('repeats')} repetitions of every timing, "
            f"medians quoted; prediction throughput: samples of >= {cfg.get('min_time')} s; test errors on the "
            f"first {cfg.get('n_test')} frames of the test file ({cfg.get('n_test_dense')} for JAX dense). "
            + ("Every repetition runs in a fresh subprocess, the systems taking turns (round 1 of every "
               "system, then round 2, ...), so that they share the machine's background load; "
               if cfg.get("interleave", False) and (cfg.get("repeats") or 1) > 1 else
               "Each system runs all its repetitions in one subprocess; ")
            + "peak memory is that process's peak RSS (VmHWM) right after training; JIT compile time "
              "is excluded from the training and prediction timings and reported separately.", ""]
    if cfg.get("note_repeats"):
        out += [f"**Note:** {cfg['note_repeats']}.", ""]
    systems = run.get("systems", {})
    if systems:
        out += ["**Systems.** " + "; ".join(f"{SYSTEM_LABEL.get(s, s)}: {d.get('status')}"
                                            + (f" ({d['reason']})" if d.get("reason") else "")
                                            for s, d in systems.items()), ""]
    fl = run.get("floors", {})
    out += ["### Hardware floors (measured in this run)", ""]
    if fl.get("status") == "ok":
        out += [_table(["quantity", "value", "samples", "details"],
                       [_floor_row(k, fl.get(k)) for k in ("memory_bandwidth", "dgemm", "dpotrf")]), ""]
    else:
        out += [f"not measured: {fl.get('reason', fl.get('status'))}", ""]
    out += ["### Start-up and compile time", "", render_startup(run), ""]
    out += ["### Targets (issue 4)", "",
            _table(["target", "case", "value", "threshold", "verdict", "detail"],
                   [[t["target"], t.get("case") or "–", fmt(t.get("value"), 3), fmt(t.get("threshold"), 3),
                     t["verdict"] if t.get("met") is not False else f"**{t['verdict']}**", t.get("detail", "")]
                    for t in run.get("targets", [])]), ""]
    out += ["### gdmlc against sGDML and JAX (ratios within this run; > 1: gdmlc faster or smaller)", "",
            "Times: peer median / gdmlc median; throughput: gdmlc rate / peer rate; memory: peer peak RSS / "
            "gdmlc peak RSS.", "", render_ratios(run), ""]
    out += ["### Prediction agreement", "",
            "Forces: max |F_a − F_b| / max |F_b|; energies: max |E_a − E_b| / (max E_b − min E_b), on the "
            "common test frames.", "", render_agreement(run), ""]
    out += ["### Results per case", ""]
    for c in run.get("cases", []):
        out += [render_case(c), ""]
    if run.get("skipped"):
        out += ["### Skipped", ""] + [f"- {s}" for s in run["skipped"]] + [""]
    if run.get("plots"):
        out += ["### Plots", ""] + [f"![{p.rsplit('/', 1)[-1]}]({p.rsplit('/', 1)[-1]})" for p in run["plots"]] + [""]
    return "\n".join(out)


def _load(x):
    return "/".join(f"{v:.1f}" for v in x) if x else "?"
