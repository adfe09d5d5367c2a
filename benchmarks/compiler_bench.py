"""Compiler kernels vs jax.jit: compile time, descriptor and force-block throughput.

Run from the repository root::

    python -m benchmarks.compiler_bench            # full run (several minutes)
    python -m benchmarks.compiler_bench --quick    # fewer repetitions, smaller batches (< 2 min)
    python -m benchmarks.compiler_bench --json out.json

What is measured (all on the same inputs, in the same run, float64):

1. Compile time of ``inverse_distances`` x ``matern52``, each repetition in fresh
   subprocesses: *first compile* with GDMLC_GENERATED_DIR set to a new empty directory
   (compile_model through the first force_block call: parsing, AD, sympy, code generation,
   Numba JIT), then *cached start-up* in a second fresh subprocess on the same directory
   (compile_model + first force_block; Numba loads its on-disk cache).  ``import compiler``
   alone is timed in the same subprocesses, before anything else is imported.  As extra
   information, the first calls of the other entry points the runtime uses (assemble_rows,
   contract, predict) are timed after the first force block.
2. Descriptor + Jacobian evaluations per second: ``CompiledDescriptor.evaluate`` on a batch
   of geometries vs ``jax.jit(jax.vmap(x -> (D(x), jacfwd(D)(x))))`` of the JAX lowering.
   (gdmlc returns the sparse (F, 2, 3) Jacobian, JAX the dense (F, N, 3) one: each system's
   natural output.)
3. Force blocks per second on M training geometries (M(M+1)/2 blocks, the upper block
   triangle of a training matrix): gdmlc ``assemble_rows`` on precomputed descriptors
   ("parts": only force_block_parts), the same including the descriptor evaluation of the
   M geometries ("full"), the public ``model.force_block`` called once per pair from a
   Python loop (per-call overhead included), vs ``jax.jit(jax.vmap(block))`` of the JAX
   reference block (jacfwd of grad of sum_P k(D(x), D(x'[P]))) over the same pairs.

JIT compile times are excluded from the throughput numbers (everything is warmed up);
JAX results are waited for with block_until_ready.  Each throughput number is the median
over repetitions, each repetition long enough (``min_time``) to swamp timer noise, and the
repetitions of the systems compared are interleaved so that they share the background load
of a shared machine; the best (minimum) repetition is kept in the JSON too.  gdmlc is timed
twice: with Numba's default threads (``prange`` over NUMBA_NUM_THREADS threads) and with
one thread; JAX runs with XLA's defaults (for these vmapped programs it keeps about one core
busy: the measured CPU-time / wall-time ratio of each system is reported as cores_busy).

The JAX reference block is NaN on diagonal pairs (x == x': AD through |d - d'| at d = d');
the pairs are timed anyway (same cost) and the comparison of values skips them.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
from pathlib import Path
from statistics import median

import numpy as np

from benchmarks.datasets import FALLBACK_DATA, rmd17_file
from benchmarks.environment import git_info
from benchmarks.startup import first_and_cached, per_key

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"

DESCRIPTOR, KERNEL = "inverse_distances", "matern52"
SIGMA = 20.0

TARGETS = {"force_block_speedup": 10.0, "first_compile_s": 15.0, "cached_load_s": 1.0}


# --------------------------------------------------------------------------- data

def load_molecule(name):
    """(R (M, N, 3), z (N,), source) for 'ethanol' or 'aspirin'; None when unavailable."""
    path = rmd17_file(name)
    if path.is_file():
        with np.load(path) as d:
            return np.ascontiguousarray(d["coords"], float), np.asarray(d["nuclear_charges"]), str(path)
    if name == "ethanol" and FALLBACK_DATA.is_file():
        with np.load(FALLBACK_DATA) as d:
            return np.ascontiguousarray(d["R"], float), np.asarray(d["z"]), str(FALLBACK_DATA)
    return None


def take(R, m):
    """m geometries evenly spaced over the data set (repeated if there are fewer)."""
    idx = np.linspace(0, len(R) - 1, m).round().astype(int) if m <= len(R) else np.arange(m) % len(R)
    return np.ascontiguousarray(R[idx])


# --------------------------------------------------------------------------- timing

def timeit(entries, reps, min_time):
    """Median seconds per call for each named entry {name: (fn, numba_threads or None)}.

    Each fn is warmed up and calibrated to run n calls per repetition (about min_time);
    the repetitions of all entries are interleaved (a, b, c, a, b, c, ...) so that every
    system sees the same background load on a shared machine.  Also returns the median
    CPU-time / wall-time ratio of each entry (how many cores it kept busy) and the best
    (minimum) time of each, which is less sensitive to other users' load."""
    import numba
    default = numba.get_num_threads()

    def run(fn, threads, n):
        numba.set_num_threads(threads or default)
        try:
            t, c = time.perf_counter(), time.process_time()
            for _ in range(n):
                fn()
            return time.perf_counter() - t, time.process_time() - c
        finally:
            numba.set_num_threads(default)

    calls = {}
    for name, (fn, threads) in entries.items():
        run(fn, threads, 1)
        once = max(run(fn, threads, 1)[0], 1e-7)
        calls[name] = max(1, int(np.ceil(min_time / once)))
    wall = {name: [] for name in entries}
    cores = {name: [] for name in entries}
    for _ in range(reps):
        for name, (fn, threads) in entries.items():
            w, c = run(fn, threads, calls[name])
            wall[name].append(w / calls[name])
            cores[name].append(c / w)
    best = {name: min(v) for name, v in wall.items()}
    return ({name: median(v) for name, v in wall.items()},
            {name: median(v) for name, v in cores.items()}, best)


# --------------------------------------------------------------------------- 1. compile time

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import compiler
t1 = time.perf_counter()
import numpy as np
inputs = np.load(sys.argv[1])
x, xp, z = inputs["x"], inputs["xp"], inputs["z"]
t2 = time.perf_counter()
model = compiler.compile_model(%(desc)r, %(kernel)r)
t3 = time.perf_counter()
C = model.force_block(x, xp, None, z, sigma=%(sigma)r)
t4 = time.perf_counter()
# the other entry points the runtime calls (training matrix, coefficients, prediction)
n = x.shape[0]
h = model.kernel.hyper(sigma=%(sigma)r)
D, JAC, _ = model.descriptor.evaluate(np.stack([x, xp]), z)
fperms = model.feature_permutations(None, n)
K = np.empty((6 * n, 6 * n))
model.assemble_rows(D, JAC, fperms, h, K, np.arange(2), n)
B = model.contract(JAC, np.ones((2, n, 3)))
from runtime.prediction import predict_parts
predict_parts(model, D, JAC, D, B, h, n)
t5 = time.perf_counter()
assert np.all(np.isfinite(C))
print("GDMLC_BENCH " + json.dumps({
    "import_s": t1 - t0, "compile_model_s": t3 - t2, "first_force_block_s": t4 - t3,
    "compile_to_first_block_s": t4 - t2, "other_entry_points_s": t5 - t4,
    "built_now": bool(model.descriptor.built_now)}))
"""


def bench_compile(R, z, reps, log):
    def log_pair(k, a, b):
        log(f"  rep {k}/{reps}: first compile {a['compile_to_first_block_s']:.2f} s, "
            f"cached {b['compile_to_first_block_s']:.3f} s, import {b['import_s']:.3f} s")

    code = CHILD % {"desc": DESCRIPTOR, "kernel": KERNEL, "sigma": SIGMA}
    first, cached, _ = first_and_cached(code, {"x": R[0], "xp": R[1], "z": z}, [], reps, "GDMLC_BENCH",
                                        log_pair, retry_invalid=False, timeout=600)

    def medians(runs):
        return per_key(runs, median) | {"runs": runs}

    return {"repetitions": reps, "first": medians(first), "cached": medians(cached),
            "import_s": median([r["import_s"] for r in first + cached])}


# --------------------------------------------------------------------------- JAX reference

def _jax():
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    return jax, jnp


def jax_descriptor_batch(model, z):
    """jit(vmap(x -> (D(x), dense Jacobian dD/dx)))."""
    jax, jnp = _jax()
    D = model.descriptor.jax_function()
    zj = jnp.asarray(z, dtype=jnp.float64)

    def one(x):
        return D(x, zj), jax.jacfwd(D, argnums=0)(x, zj)

    return jax.jit(jax.vmap(one))


def jax_block_batch(model, perms, z):
    """jit(vmap((x, x', hyper) -> C (3N, 3N))): the reference block of jax_lowering
    (jacfwd of grad of sum_P k(D(x), D(x'[P]))), hyperparameters as a traced argument."""
    jax, jnp = _jax()
    D = model.descriptor.jax_function()
    k = model.kernel.jax_function()
    names = model.kernel.hyper_names
    zj = jnp.asarray(z, dtype=jnp.float64)
    perm_list = [np.asarray(p) for p in perms]

    def energy_kernel(x, xp, h):
        hyper = {name: h[i] for i, name in enumerate(names)}
        d = D(x, zj)
        return sum(k(d, D(xp[p], zj), **hyper) for p in perm_list)

    def block(x, xp, h):
        n = x.shape[0]
        return jax.jacfwd(jax.grad(energy_kernel, argnums=0), argnums=1)(x, xp, h).reshape(3 * n, 3 * n)

    return jax.jit(jax.vmap(block, in_axes=(0, 0, None)))


# --------------------------------------------------------------------------- 2. descriptors

def bench_descriptor(model, name, R, z, batch, reps, min_time, log):
    jax, jnp = _jax()
    Rb = take(R, batch)
    desc = model.descriptor
    f_j = jax_descriptor_batch(model, z)
    Rj = jax.device_put(jnp.asarray(Rb))
    t = time.perf_counter()
    Dj, Jj = jax.block_until_ready(f_j(Rj))
    jax_compile = time.perf_counter() - t

    times, cores, best = timeit({"gdmlc": (lambda: desc.evaluate(Rb, z), None),
                           "gdmlc_1thread": (lambda: desc.evaluate(Rb, z), 1),
                           "jax": (lambda: jax.block_until_ready(f_j(Rj)), None)}, reps, min_time)

    # same numbers? (dense Jacobian of gdmlc on a few geometries)
    Dg, _, _ = desc.evaluate(Rb[:4], z)
    err = max(float(np.abs(Dg - np.asarray(Dj[:4])).max()),
              float(np.abs(desc.jacobian(Rb[:4], z) - np.asarray(Jj[:4])).max()))
    res = {"molecule": name, "n_atoms": R.shape[1], "n_features": desc.n_features(R.shape[1]),
           "batch": batch, "gdmlc_per_s": batch / times["gdmlc"],
           "gdmlc_1thread_per_s": batch / times["gdmlc_1thread"], "jax_per_s": batch / times["jax"],
           "ratio": times["jax"] / times["gdmlc"], "ratio_1thread": times["jax"] / times["gdmlc_1thread"],
           "best_per_s": {k: batch / v for k, v in best.items()},
           "cores_busy": cores, "jax_jit_compile_s": jax_compile, "max_abs_diff": err}
    log(f"  {name}: gdmlc {res['gdmlc_per_s']:.3g}/s (1 thread {res['gdmlc_1thread_per_s']:.3g}/s), "
        f"jax {res['jax_per_s']:.3g}/s, ratio {res['ratio']:.1f} (1 thread {res['ratio_1thread']:.1f}), "
        f"max|diff| {err:.1e}")
    return res


# --------------------------------------------------------------------------- 3. force blocks

BLOCK_VARIANTS = ["parts", "full", "loop"]


def bench_blocks(model, name, R, z, perms, m, reps, min_time, log):
    from runtime.assembly import interleaved_rows
    jax, jnp = _jax()

    n = R.shape[1]
    Rm = take(R, m)
    n_blocks = m * (m + 1) // 2
    h = model.kernel.hyper(sigma=SIGMA)
    fperms = model.feature_permutations(perms, n)
    rows = interleaved_rows(m)
    K = np.zeros((3 * n * m, 3 * n * m))
    D, JAC, _ = model.descriptor.evaluate(Rm, z)

    def parts():  # force_block_parts only, on precomputed descriptors and Jacobians
        model.assemble_rows(D, JAC, fperms, h, K, rows, n, mirror=False)

    def full():  # descriptor evaluation of the M geometries included
        D_, JAC_, _ = model.descriptor.evaluate(Rm, z)
        model.assemble_rows(D_, JAC_, fperms, h, K, rows, n, mirror=False)

    I, J = np.triu_indices(m)

    def loop():  # the public per-pair API from Python
        for i, j in zip(I, J):
            model.force_block(Rm[i], Rm[j], perms, z, sigma=SIGMA)

    f_j = jax_block_batch(model, perms, z)
    X, XP = jax.device_put(jnp.asarray(Rm[I])), jax.device_put(jnp.asarray(Rm[J]))
    hj = jax.device_put(jnp.asarray(h))
    t = time.perf_counter()
    Cj = jax.block_until_ready(f_j(X, XP, hj))
    jax_compile = time.perf_counter() - t

    entries = {}
    for variant, fn in zip(BLOCK_VARIANTS, (parts, full, loop)):
        entries[variant] = (fn, None)
        entries[variant + "_1thread"] = (fn, 1)
    entries["jax"] = (lambda: jax.block_until_ready(f_j(X, XP, hj)), None)
    times, cores, best = timeit(entries, reps, min_time)

    # same blocks? every off-diagonal pair against the assembled upper triangle (the JAX
    # reference is NaN on diagonal pairs x == x': AD of |d - d'| at d = d')
    full()
    n3 = 3 * n
    Cj = np.asarray(Cj)
    jax_nonfinite = int((~np.isfinite(Cj).all(axis=(1, 2))).sum())
    err = max(float(np.abs(K[i * n3:(i + 1) * n3, j * n3:(j + 1) * n3] - Cj[q]).max())
              for q, (i, j) in enumerate(zip(I, J)) if i != j)
    scale = float(np.abs(Cj[I != J]).max())
    gdmlc_finite = bool(np.isfinite(K[np.triu(np.ones((m, m), bool)).repeat(n3, 0).repeat(n3, 1)]).all())

    res = {"molecule": name, "n_atoms": n, "n_perms": len(perms), "m_geometries": m,
           "n_blocks": n_blocks, "jax_per_s": n_blocks / times["jax"]}
    for key, t_ in times.items():
        if key != "jax":
            res[f"gdmlc_{key}_per_s"] = n_blocks / t_
            res[f"ratio_{key}"] = times["jax"] / t_
    res["best_per_s"] = {k: n_blocks / v for k, v in best.items()}
    res["best_ratio"] = {k: best["jax"] / v for k, v in best.items() if k != "jax"}
    res.update({"cores_busy": cores, "jax_jit_compile_s": jax_compile,
                "max_abs_diff_offdiag": err, "max_abs_block": scale,
                "jax_nonfinite_blocks": jax_nonfinite, "gdmlc_all_finite": gdmlc_finite})
    log(f"  {name} P={len(perms)}: " + ", ".join(
        f"{k} {res[f'gdmlc_{k}_per_s']:.3g}/s" for k in times if k != "jax")
        + f", jax {res['jax_per_s']:.3g}/s; max|diff| {err:.1e} (max|C| {scale:.1e}), "
        f"JAX non-finite blocks {jax_nonfinite}/{n_blocks}")
    return res


# --------------------------------------------------------------------------- environment

def environment():
    import jax
    import numba
    import compiler
    from .floors import machine_description
    machine = machine_description()
    cpu, mem = machine["cpu"], machine["memory_gib"]
    git = git_info()
    return {"date": _dt.datetime.now().isoformat(timespec="seconds"),
            "nproc": os.cpu_count(), "cpu_affinity": len(os.sched_getaffinity(0)),
            "cpu_model": cpu, "ram_gib": mem, "python": platform.python_version(),
            "numpy": np.__version__, "numba": numba.__version__, "jax": jax.__version__,
            "jaxlib": __import__("jaxlib").__version__, "gdmlc": compiler.__version__,
            "numba_threads": numba.get_num_threads(), "jax_devices": [str(d) for d in jax.devices()],
            "git_commit": git["commit"] or "unknown", "git_dirty": git.get("dirty"),
            "command": "python -m benchmarks.compiler_bench " + " ".join(sys.argv[1:])}


# --------------------------------------------------------------------------- report

def verdicts(res):
    out = {}
    blocks = res["force_blocks"]
    if blocks:
        t = TARGETS["force_block_speedup"]
        worst = {k: min(b[f"ratio_{k}"] for b in blocks)
                 for k in ("parts", "full", "parts_1thread", "full_1thread")}
        out["force_blocks"] = {"target": f">= {t:g}x jax.jit",
                               "worst_ratio": worst,
                               "met_default_threads": worst["full"] >= t,
                               "met_1thread": worst["full_1thread"] >= t}
    first = res["compile"]["first"]["compile_to_first_block_s"]
    cached = res["compile"]["cached"]["compile_to_first_block_s"]
    out["first_compile"] = {"target": f"<= {TARGETS['first_compile_s']:g} s", "median_s": first,
                            "met": first <= TARGETS["first_compile_s"]}
    out["cached_load"] = {"target": f"<= {TARGETS['cached_load_s']:g} s", "median_s": cached,
                          "with_import_s": cached + res["compile"]["import_s"],
                          "met": cached <= TARGETS["cached_load_s"]}
    return out


def print_table(res):
    c = res["compile"]
    print()
    print(f"Compile time ({DESCRIPTOR} x {KERNEL}), medians of {c['repetitions']} fresh subprocesses")
    print(f"  {'':44s} {'first compile':>14s} {'cached':>10s}")
    for key, label in [("import_s", "import compiler"), ("compile_model_s", "compile_model"),
                       ("first_force_block_s", "first force_block call"),
                       ("compile_to_first_block_s", "compile_model + first force_block"),
                       ("other_entry_points_s", "then assemble_rows/contract/predict 1st calls"),
                       ("process_wall_s", "whole subprocess (interpreter start..exit)")]:
        print(f"  {label:44s} {c['first'][key]:13.3f}s {c['cached'][key]:9.3f}s")
    print()
    print("Descriptor + Jacobian evaluations per second (per geometry; gdmlc default threads / 1 thread)")
    print(f"  {'molecule':10s} {'batch':>6s} {'gdmlc':>11s} {'gdmlc 1thr':>11s} {'jax.jit':>11s} "
          f"{'gdmlc/jax':>10s} {'1thr/jax':>9s}")
    for d in res["descriptors"]:
        print(f"  {d['molecule']:10s} {d['batch']:6d} {d['gdmlc_per_s']:11.4g} "
              f"{d['gdmlc_1thread_per_s']:11.4g} {d['jax_per_s']:11.4g} {d['ratio']:9.2f}x "
              f"{d['ratio_1thread']:8.2f}x")
    print()
    print("Force blocks per second (M geometries -> M(M+1)/2 blocks); ratio = gdmlc / jax.jit")
    for b in res["force_blocks"]:
        print(f"  {b['molecule']} N={b['n_atoms']} P={b['n_perms']}, {b['n_blocks']} blocks: "
              f"jax.jit {b['jax_per_s']:.4g}/s (cores busy {b['cores_busy']['jax']:.2f})")
        for v, label in (("parts", "assemble_rows (force_block_parts)"),
                         ("full", "descriptors + assemble_rows"),
                         ("loop", "model.force_block per pair (Python)")):
            print(f"    {label:38s} default threads {b[f'gdmlc_{v}_per_s']:10.4g}/s "
                  f"{b[f'ratio_{v}']:7.2f}x (best {b['best_ratio'][v]:6.2f}x)   1 thread "
                  f"{b[f'gdmlc_{v}_1thread_per_s']:10.4g}/s {b[f'ratio_{v}_1thread']:7.2f}x "
                  f"(best {b['best_ratio'][v + '_1thread']:6.2f}x)")
    print()
    print("Targets")
    for key, v in res["verdicts"].items():
        if key == "force_blocks":
            w = v["worst_ratio"]
            print(f"  {key:14s} {v['target']:16s} worst full ratio {w['full']:.1f}x default threads "
                  f"({'MET' if v['met_default_threads'] else 'MISSED'}), {w['full_1thread']:.1f}x "
                  f"1 thread ({'MET' if v['met_1thread'] else 'MISSED'})")
        else:
            print(f"  {key:14s} {v['target']:16s} {v['median_s']:.3f} s  {'MET' if v['met'] else 'MISSED'}")


# --------------------------------------------------------------------------- main

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, smaller batches (< 2 min)")
    ap.add_argument("--json", metavar="OUT", help="also write the results to this JSON file")
    args = ap.parse_args(argv)

    if args.quick:
        cfg = dict(compile_reps=3, reps=3, min_time=0.1, desc_batch=200, m=20)
    else:
        cfg = dict(compile_reps=5, reps=7, min_time=0.4, desc_batch=1000, m=40)

    log = lambda msg: print(msg, flush=True)  # noqa: E731
    start = time.perf_counter()
    import compiler
    from runtime.symmetry import find_permutations

    mols = {name: load_molecule(name) for name in ("ethanol", "aspirin")}
    if mols["ethanol"] is None:
        sys.exit("no ethanol data found (rMD17 or runtime/default_data)")
    for name, mol in mols.items():
        log(f"{name}: {'not found, skipped' if mol is None else mol[2]}")
    R_eth, z_eth, _ = mols["ethanol"]

    env = environment()
    res = {"environment": env, "config": cfg | {"descriptor": DESCRIPTOR, "kernel": KERNEL,
                                                "sigma": SIGMA},
           "data": {k: (None if v is None else v[2]) for k, v in mols.items()}}

    log(f"[1/3] compile time ({cfg['compile_reps']} repetitions)")
    res["compile"] = bench_compile(R_eth, z_eth, cfg["compile_reps"], log)

    model = compiler.compile_model(DESCRIPTOR, KERNEL)
    log("[2/3] descriptor + Jacobian")
    res["descriptors"] = [bench_descriptor(model, name, mol[0], mol[1], cfg["desc_batch"],
                                           cfg["reps"], cfg["min_time"], log)
                          for name, mol in mols.items() if mol is not None]

    log("[3/3] force blocks")
    perms_eth = find_permutations(R_eth[:200], z_eth, progress=False)
    res["ethanol_permutations"] = perms_eth.tolist()
    cases = [("ethanol", mols["ethanol"], perms_eth[:1]), ("ethanol", mols["ethanol"], perms_eth)]
    if mols["aspirin"] is not None:
        cases.append(("aspirin", mols["aspirin"], np.arange(mols["aspirin"][0].shape[1])[None]))
    res["force_blocks"] = [bench_blocks(model, name, mol[0], mol[1], perms, cfg["m"], cfg["reps"],
                                        cfg["min_time"], log)
                           for name, mol, perms in cases]

    res["verdicts"] = verdicts(res)
    res["total_s"] = time.perf_counter() - start
    print_table(res)
    print(f"\ntotal {res['total_s']:.0f} s")

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stem = f"compiler_{_dt.date.today().isoformat()}" + ("_quick" if args.quick else "")
    paths = [RESULTS_DIR / f"{stem}.json"] + ([Path(args.json)] if args.json else [])
    for path in paths:
        path.write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote {path}")
    return res


if __name__ == "__main__":
    main()
