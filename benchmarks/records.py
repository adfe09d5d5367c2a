"""The result records of a benchmark run: JSON conversion and saving, one result pooled from a
system's rounds, and the agreement between systems' predictions."""
from __future__ import annotations

import json
from pathlib import Path
from statistics import median

import numpy as np

from benchmarks.measure import summary

SCHEMA = "gdmlc-benchmark/1"
TOLERANCE = 1e-6  # largest relative difference allowed between systems' predictions


def jsonable(obj):
    """obj with numpy values, paths and tuples turned into what json.dumps writes."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist() if obj.size <= 10000 else f"<array {obj.shape}>"
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return repr(obj)


def save_json(path, run):
    """Write the run's JSON through a temporary file, so that a reader never sees half of it."""
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(jsonable(run), indent=1) + "\n")
    tmp.replace(path)


def merge_runs(results):
    """One result from a system's rounds (one subprocess each): samples pooled, medians
    recomputed, peaks maxed; errors and predictions of the last round.  A round that did not
    finish makes the whole result that round's status (with the count of finished rounds)."""
    if len(results) == 1:
        return results[0]
    bad = [r for r in results if r.get("status") != "ok"]
    if bad:
        out = dict(bad[0])
        out["rounds_ok"] = len(results) - len(bad)
        return out
    out = dict(results[-1])
    out["rounds"] = len(results)
    keys = [k for r in results for k in r.get("timings", {})]
    out["timings"] = {k: summary([v for r in results for v in r.get("timings", {}).get(k, {}).get("samples", [])])
                      for k in dict.fromkeys(keys)}
    tp = {}
    for b in dict.fromkeys(k for r in results for k in r.get("throughput", {})):
        entries = [r.get("throughput", {}).get(b) for r in results]
        if not all(isinstance(e, dict) and e.get("status") == "ok" for e in entries):
            tp[b] = next(e for e in entries if not (isinstance(e, dict) and e.get("status") == "ok")) or {}
            continue
        secs = [s for e in entries for s in (e.get("seconds_per_call") or [])]
        merged = dict(entries[0])
        merged["seconds_per_call"] = secs
        merged["first_call_s"] = [e.get("first_call_s") for e in entries]
        merged["geometries_per_s"] = (int(b) / median(secs) if secs
                                      else median([e["geometries_per_s"] for e in entries]))
        tp[b] = merged
    out["throughput"] = tp
    for k in ("peak_rss_bytes", "process_peak_rss_bytes"):
        vals = [r[k] for r in results if isinstance(r.get(k), (int, float))]
        if vals:
            out[k] = max(vals)
    for k in ("process_wall_s",):
        out[k] = sum(r.get(k) or 0 for r in results)
    if any("compile" in r for r in results):
        out["compile"] = results[0].get("compile")
        out["compile_rounds"] = [r.get("compile") for r in results]
    if any("raw" in r for r in results):
        out["raw"] = [r.get("raw") for r in results]
    out["notes"] = list(dict.fromkeys(n for r in results for n in r.get("notes", [])))
    return out


def compare_predictions(preds, tolerance=TOLERANCE):
    """Largest relative differences between every pair of systems' test predictions.

    preds: {system: (E (n,), F (n, N, 3))}, compared on their common first frames.
    Forces: max |F_a - F_b| / max |F_b|.  Energies: max |E_a - E_b| / (max E_b - min E_b)
    (energies carry a large constant offset, so the spread is the scale that matters).
    The reference b of each pair is the earlier system in ``preds``."""
    names = [k for k, v in preds.items() if v is not None and v[0] is not None]
    pairs = []
    for i, a in enumerate(names):
        for b in names[:i]:
            Ea, Fa = (np.asarray(x, dtype=np.float64) for x in preds[a])
            Eb, Fb = (np.asarray(x, dtype=np.float64) for x in preds[b])
            n = min(len(Ea), len(Eb))
            if n == 0:
                continue
            Ea, Eb, Fa, Fb = Ea[:n], Eb[:n], Fa[:n], Fb[:n]
            f_abs = float(np.max(np.abs(Fa - Fb)))
            e_abs = float(np.max(np.abs(Ea - Eb)))
            f_scale = float(np.max(np.abs(Fb))) or 1.0
            e_scale = float(np.ptp(Eb)) or max(float(np.max(np.abs(Eb))), 1.0)
            f_rel, e_rel = f_abs / f_scale, e_abs / e_scale
            finite = bool(np.all(np.isfinite(Fa)) and np.all(np.isfinite(Ea)))
            worst = max(f_rel, e_rel) if finite else float("inf")
            pairs.append({"a": a, "b": b, "n_frames": n, "force_max_abs": f_abs,
                          "force_rel": f_rel, "energy_max_abs": e_abs, "energy_rel": e_rel,
                          "finite": finite, "max_rel": worst, "pass": bool(worst <= tolerance)})
    if not pairs:
        return {"status": "not compared", "tolerance": tolerance, "pairs": [],
                "reason": f"fewer than two systems with predictions ({', '.join(names) or 'none'})"}
    worst = max(pairs, key=lambda p: p["max_rel"])
    return {"status": "pass" if all(p["pass"] for p in pairs) else "FAIL", "tolerance": tolerance,
            "max_rel": worst["max_rel"], "worst_pair": [worst["a"], worst["b"]], "pairs": pairs}
