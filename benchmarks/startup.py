"""First compile and cached start-up, each in a fresh subprocess.

A *pair* is two subprocesses on one new, empty GDMLC_GENERATED_DIR: the first builds the
generated module (parsing, AD, sympy, code generation, Numba JIT), the second finds it cached.
The child code prints one line ``TAG {json}`` holding its own timings and ``built_now``.
Shared by the harness (``gdmlc_startup``) and benchmarks/compiler_bench.py.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.measure import summary

REPO = Path(__file__).resolve().parents[1]


def run_child(code, args, generated_dir, tag, timeout):
    """Run ``python -c code *args`` on generated_dir; its ``tag`` line's dict plus process_wall_s."""
    env = dict(os.environ, GDMLC_GENERATED_DIR=str(generated_dir))
    env.pop("NUMBA_CACHE_DIR", None)  # keep Numba's cache next to the generated module
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{tag} subprocess failed:\n{proc.stdout[-1000:]}\n{proc.stderr[-3000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith(tag + " ")][-1]
    return json.loads(line.split(" ", 1)[1]) | {"process_wall_s": wall}


def first_and_cached(code, inputs, args, repeats, tag, log_pair, retry_invalid, timeout=900):
    """``repeats`` valid pairs: (first runs, cached runs, invalid pairs).

    inputs: arrays saved to an .npz whose path is the child's first argument, args follow.
    A pair whose first run did not build the module, or whose second rebuilt it (e.g. the
    compiler's source changed in between: it is part of the cache key), is not a first-compile
    / cached pair: with retry_invalid it is kept apart and retried (up to ``repeats`` more
    pairs), without it it raises."""
    tmp = Path(tempfile.mkdtemp(prefix="gdmlc_startup_"))
    first, cached, invalid = [], [], []
    try:
        npz = tmp / "inputs.npz"
        np.savez(npz, **inputs)
        for r in range(2 * repeats if retry_invalid else repeats):
            if len(first) == repeats:
                break
            generated = tmp / f"generated_{r}"
            generated.mkdir()
            a, b = (run_child(code, [npz, *args], generated, tag, timeout) for _ in range(2))
            if not a["built_now"] or b["built_now"]:
                if not retry_invalid:
                    raise RuntimeError(f"not a first-compile / cached pair: built_now {a['built_now']} "
                                       f"then {b['built_now']} (directory not empty, or sources changed?)")
                invalid.append([a, b])
                continue
            first.append(a)
            cached.append(b)
            log_pair(len(first), a, b)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return first, cached, invalid


def per_key(runs, reduce):
    """{key: reduce([run[key] for run in runs])} over every timing key of the runs."""
    return {k: reduce([r[k] for r in runs]) for k in runs[0] if k != "built_now"}


# ============================================================================ gdmlc (the harness)

STARTUP_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from runtime.model import GDML
t1 = time.perf_counter()
d = np.load(sys.argv[1])
R, F, E, z = d["R"], d["F"], d["E"], d["z"]
t2 = time.perf_counter()
model = GDML(sigma=float(sys.argv[2]), lam=1e-10, symmetries=None, progress=False)
t3 = time.perf_counter()
model.fit(R[:4], F[:4], E[:4], z)
t4 = time.perf_counter()
model.predict(R[4:5], progress=False)
t5 = time.perf_counter()
print("GDMLC_STARTUP " + json.dumps({"import_s": t1 - t0, "compile_model_s": t3 - t2,
      "first_fit_s": t4 - t3, "first_predict_s": t5 - t4, "to_first_prediction_s": t5 - t2,
      "built_now": bool(model.model.descriptor.built_now)}))
"""


def gdmlc_startup(train, sigma, repeats, log):
    """First compile (empty GDMLC_GENERATED_DIR) and cached start-up, fresh subprocesses."""
    def log_pair(k, first, cached):
        log(f"  gdmlc start-up {k}/{repeats}: first {first['to_first_prediction_s']:.2f} s, "
            f"cached {cached['to_first_prediction_s']:.3f} s (+ import {cached['import_s']:.2f} s)")

    inputs = {"R": train.R[:5], "F": train.F[:5], "E": train.E[:5], "z": train.z}
    first, cached, invalid = first_and_cached(STARTUP_CHILD, inputs, [sigma], repeats, "GDMLC_STARTUP",
                                              log_pair, retry_invalid=True)
    for k, (a, b) in enumerate(invalid):
        log(f"  gdmlc start-up: invalid pair {k + 1} (built_now {a['built_now']}, {b['built_now']}), not counted")
    if not first:
        return {"status": "failed", "invalid_pairs": invalid,
                "reason": "no valid first-compile / cached pair (the first subprocess did not build "
                          "the module or the second rebuilt it)"}
    return {"status": "ok", "repetitions": len(first), "invalid_pairs": invalid,
            "first": per_key(first, summary), "cached": per_key(cached, summary),
            "what": "fresh subprocess: import runtime; GDML(...) (compile_model); fit on 4 "
                    "geometries (first assembly/solve/contract/predict calls); first prediction. "
                    "first = empty GDMLC_GENERATED_DIR, cached = the same directory afterwards"}
