"""CUDA backend on a GPU: correctness against the CPU kernels, then training and prediction times.

On a machine with an NVIDIA GPU, from the repository root (one command)::

    python -m benchmarks.gpu_bench

Smoke test without a GPU (Numba's CUDA simulator, tiny sizes, a few minutes at most)::

    python -m benchmarks.gpu_bench --simulate --tiny

What it does, for ethanol and aspirin (rMD17 split 01 training files at ../shared/data/rmd17;
the embedded GFN2-xTB ethanol stands in when they are absent), inverse distances x Matérn 5/2,
the molecule's permutation group detected from the data, sigma 20, lambda 1e-10:

1. Correctness on real sizes (``--check-m`` training geometries, 100 queries): descriptor and
   Jacobian, the assembled matrix (upper block triangle), prediction (E, F) and the matrix-free
   product of the CUDA kernels against the CPU kernels; max relative difference each
   (max |cuda - cpu| / max |cpu|), pass at <= 1e-10.
2. With M = ``--m`` (1000) training geometries: CUDA assembly of the (3NM)^2 matrix (kernel
   time, device-resident inputs), the CPU path's assembly (runtime.assembly.assemble, all CPU
   threads), the Cholesky solve (cuSOLVER through CuPy when present, else the host solver on a
   copy), GDML.predict for 10 and 1000 geometries on CUDA and on the CPU (host arrays in and
   out, descriptors included), and the same for the JAX "dense" and "contraction" approaches of
   benchmarks/jax_paper.py on the same GPU (skipped with a message when that module or JAX is
   absent).  Every time is the median of ``--repeats`` (>= 3) runs after a warm-up run.

Results go to benchmarks/results/gpu_<date>[_<tag>].json, rewritten after each molecule so a
run cut short keeps what it measured.  Targets (issue 5): prediction of 10 geometries at least
3x faster than JAX contraction; ethanol M=1000 assembly at least 10x faster than the CPU path.
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

from benchmarks.datasets import DEFAULT_DATA_DIR, FALLBACK_DATA, rmd17_file
from benchmarks.environment import cpu_model, git_info, module_versions

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
DESCRIPTOR, KERNEL = "inverse_distances", "matern52"
SIGMA, LAM = 20.0, 1e-10
TOLERANCE = 1e-10
TARGETS = {"predict_10_speedup_vs_jax_contraction": 3.0, "ethanol_assembly_speedup_vs_cpu": 10.0}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_bench",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--molecules", nargs="+", default=["ethanol", "aspirin"],
                    help="rMD17 molecule names (default: ethanol aspirin)")
    ap.add_argument("--m", type=int, default=1000, help="training geometries (default 1000)")
    ap.add_argument("--check-m", type=int, default=50, help="training geometries of the correctness check")
    ap.add_argument("--predict", type=int, nargs="+", default=[10, 1000],
                    help="query batch sizes timed (default: 10 1000)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per number, median kept (>= 3)")
    ap.add_argument("--no-jax", action="store_true", help="skip the JAX comparison")
    ap.add_argument("--no-cpu-assembly", action="store_true",
                    help="skip timing the CPU path's assembly (slow for aspirin)")
    ap.add_argument("--simulate", action="store_true",
                    help="run the CUDA kernels in Numba's simulator (no GPU needed; use with --tiny)")
    ap.add_argument("--tiny", action="store_true",
                    help="smoke-test sizes: M=4, check M=3, 2 and 4 queries, ethanol only")
    ap.add_argument("--out", help="JSON file (default: benchmarks/results/gpu_<date>[_tiny].json)")
    args = ap.parse_args(argv)
    if args.tiny:
        args.m, args.check_m, args.predict, args.molecules = 4, 3, [2, 4], ["ethanol"]
    if args.repeats < 3:
        ap.error("--repeats must be at least 3 (the medians of >= 3 runs are reported)")
    if args.m < 2 or args.check_m < 2 or min(args.predict) < 1:
        ap.error("--m and --check-m must be >= 2 and --predict sizes >= 1")
    return args


# --------------------------------------------------------------------------- data

def load_molecule(name, tiny=False):
    """(R, F, E, z, source) of a molecule's rMD17 training file (or the embedded ethanol)."""
    path = rmd17_file(name)
    if tiny or not path.is_file():
        if name != "ethanol":
            raise SystemExit(f"gpu_bench: {path} not found (rMD17 data expected at {DEFAULT_DATA_DIR})")
        path = FALLBACK_DATA
    from runtime.data import load_dataset
    ds = load_dataset(path)
    return ds.R, ds.F, ds.E, ds.z, str(path)


def spread(n_total, m, offset=0):
    """m indices spread evenly over n_total frames (shifted by offset, modulo n_total)."""
    return (np.linspace(0, n_total - 1, m).round().astype(int) + offset) % n_total


# --------------------------------------------------------------------------- timing

def timed(fn, repeats, sync=None):
    """Median and all wall times of fn() over ``repeats`` runs after one warm-up run."""
    fn()
    if sync:
        sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    return {"median_s": median(times), "times_s": times}


def rel(value, reference):
    value, reference = np.asarray(value, float), np.asarray(reference, float)
    if not (np.all(np.isfinite(value)) and np.all(np.isfinite(reference))):
        return float("inf")
    return float(np.abs(value - reference).max() / max(np.abs(reference).max(), 1e-300))


# --------------------------------------------------------------------------- parts

def check_kernels(cm, R, z, perms, m, n_query, log):
    """CUDA vs CPU kernels on m training and n_query query geometries of R."""
    from runtime.assembly import interleaved_rows

    n = R.shape[1]
    R_train, R_query = R[spread(len(R), m)], R[spread(len(R), n_query, offset=1)]
    fperms = cm.feature_permutations(perms, n)
    h = cm.kernel.hyper(sigma=SIGMA)
    out = {}
    D, JAC, _ = cm.evaluate(R_train, z)
    Dc, JACc, _ = cm.cpu.descriptor.evaluate(R_train, z)
    out["descriptor"], out["jacobian"] = rel(D, Dc), rel(JAC, JACc)
    K = cm.assemble(D, JAC, fperms, h, n).copy_to_host()
    Kc = np.zeros_like(K)
    cm.cpu.assemble_rows(Dc, JACc, fperms, h, Kc, interleaved_rows(m), n, mirror=True)
    upper = np.kron(np.triu(np.ones((m, m), bool)), np.ones((3 * n, 3 * n), bool))
    out["assembly"] = rel(K[upper], Kc[upper])
    del K
    V = np.random.default_rng(0).normal(size=(m, n, 3))
    out["matrix_free_product"] = rel(cm.matvec(D, JAC, fperms, h, V), (Kc @ V.ravel()).reshape(m, n, 3))
    del Kc
    B = cm.cpu.contract(JACc, V)
    f = Dc.shape[1]
    DT, BT = Dc[:, fperms].reshape(-1, f), B[:, fperms].reshape(-1, f)
    DQ, JQ, _ = cm.evaluate(R_query, z)
    E, F = cm.predict_parts(DQ, JQ, DT, BT, h, n)
    DQc, JQc, _ = cm.cpu.descriptor.evaluate(R_query, z)
    from runtime.prediction import predict_parts
    Ec, Fc = predict_parts(cm.cpu, DQc, JQc, DT, BT, h, n)
    out["prediction_energies"], out["prediction_forces"] = rel(E, Ec), rel(F, Fc)
    out["passed"] = all(v <= TOLERANCE for v in out.values())
    log(f"  check (M={m}, {n_query} queries): " + ", ".join(
        f"{k} {v:.1e}" for k, v in out.items() if k != "passed") + f"  -> {'PASS' if out['passed'] else 'FAIL'}")
    return out


def bench_gdmlc(name, R, F, E, z, perms, args, log):
    """Assembly, Cholesky and prediction times of the CUDA path (and the CPU path's)."""
    import runtime
    from runtime import cuda_backend
    from runtime.assembly import assemble

    res = {}
    n = R.shape[1]
    train = spread(len(R), args.m)
    R_train, F_train, E_train = R[train], F[train], E[train]
    model = runtime.GDML(DESCRIPTOR, KERNEL, sigma=SIGMA, lam=LAM, symmetries=perms, progress=False,
                         device="cuda")
    if model.device != "cuda":
        raise SystemExit("gpu_bench: the CUDA backend cannot run here (see the message above)")
    backend = model.backend
    cm = backend.model
    cuda = cm.cuda
    fperms = cm.feature_permutations(perms, n)
    h = cm.kernel.hyper(sigma=SIGMA)
    D, JAC = cm.descriptor_device(R_train, z)
    n3m = 3 * n * args.m
    K = cuda.device_array((n3m, n3m))
    res["matrix_gib"] = n3m * n3m * 8 / 2**30
    res["assembly_cuda"] = timed(lambda: cm.assemble(D, JAC, fperms, h, n, out=K), args.repeats,
                                 cuda.synchronize)
    log(f"  assembly cuda     {res['assembly_cuda']['median_s']:.4f} s ({n3m} x {n3m})")

    y = (F_train / (float(np.std(F_train)) or 1.0)).ravel()
    cupy = cuda_backend.cupy_or_none()
    res["cholesky_backend"] = "cusolver (cupy)" if cupy is not None else "host (runtime/solver.py)"
    times = []
    for _ in range(args.repeats):
        cm.assemble(D, JAC, fperms, h, n, out=K)
        cuda.synchronize()
        t0 = time.perf_counter()
        if cupy is not None:
            cuda_backend.cusolver_cholesky_solve(K, y, LAM, cupy)
            cupy.cuda.runtime.deviceSynchronize()
        else:
            from runtime.solver import cholesky_solve_inplace
            cholesky_solve_inplace(K.copy_to_host(), y, LAM, progress=False)
        times.append(time.perf_counter() - t0)
    res["cholesky"] = {"median_s": median(times), "times_s": times}
    log(f"  cholesky ({res['cholesky_backend']})  {res['cholesky']['median_s']:.4f} s")
    K = None  # frees the device matrix (the timing lambda above keeps a reference to the name)

    if not args.no_cpu_assembly:
        Dc, JACc, _ = model.model.descriptor.evaluate(R_train, z)
        from runtime.assembly import check_memory
        check_memory(n3m)
        Kc = np.empty((n3m, n3m))
        res["assembly_cpu"] = timed(lambda: assemble(model.model, Dc, JACc, fperms, h, n, out=Kc,
                                                     progress=False), args.repeats)
        del Kc
        res["assembly_speedup_vs_cpu"] = res["assembly_cpu"]["median_s"] / res["assembly_cuda"]["median_s"]
        log(f"  assembly cpu      {res['assembly_cpu']['median_s']:.4f} s "
            f"(cuda {res['assembly_speedup_vs_cpu']:.1f}x faster)")

    t0 = time.perf_counter()
    model.fit(R_train, F_train, E_train, z)
    res["fit_cuda_s"] = time.perf_counter() - t0
    log(f"  GDML.fit cuda     {res['fit_cuda_s']:.2f} s (one run, compile and descriptor included)")
    cpu_model = runtime.GDML(DESCRIPTOR, KERNEL, sigma=SIGMA, lam=LAM, symmetries=perms, progress=False)
    # the CPU model shares the trained state, so only the prediction path differs
    cpu_model.state = model.state
    res["predict"] = {}
    for q in args.predict:
        Rq = R[spread(len(R), q, offset=3)]
        entry = {"cuda": timed(lambda: model.predict(Rq), args.repeats),
                 "cpu": timed(lambda: cpu_model.predict(Rq), args.repeats)}
        Eg, Fg = model.predict(Rq)
        Ec, Fc = cpu_model.predict(Rq)
        entry["cuda_vs_cpu_rel"] = {"energies": rel(Eg, Ec), "forces": rel(Fg, Fc)}
        res["predict"][str(q)] = entry
        log(f"  predict {q:5d}     cuda {entry['cuda']['median_s']:.5f} s, cpu {entry['cpu']['median_s']:.5f} s "
            f"(agree to {max(entry['cuda_vs_cpu_rel'].values()):.1e})")
    return res, model


def bench_jax(R, F, E, z, perms, args, model, log):
    """The JAX dense and contraction approaches (benchmarks/jax_paper.py) on the same data."""
    try:
        import jax
        from benchmarks.jax_paper import JaxPaperModel
    except ImportError as exc:
        log(f"  JAX comparison skipped: {exc}")
        return {"skipped": str(exc)}
    res = {"jax_devices": [str(d) for d in jax.devices()]}
    train = spread(len(R), args.m)
    for mode in ("dense", "contraction"):
        jm = JaxPaperModel(z, perms, SIGMA, mode=mode)
        jm.warmup(R[train])
        t0 = time.perf_counter()
        jm.fit(R[train], F[train], E[train], LAM)
        entry = {"fit_s": time.perf_counter() - t0, "fit_timings": dict(jm.timings), "predict": {}}
        for q in args.predict:
            Rq = R[spread(len(R), q, offset=3)]
            jm.warmup(Rq)
            entry["predict"][str(q)] = timed(lambda: jm.predict(Rq), args.repeats)
            Ej, Fj = jm.predict(Rq)
            Eg, Fg = model.predict(Rq)
            entry["predict"][str(q)]["gdmlc_cuda_vs_jax_rel"] = {"energies": rel(Eg, Ej), "forces": rel(Fg, Fj)}
        res[mode] = entry
        log(f"  jax {mode:12s} assembly {entry['fit_timings'].get('assemble_s', float('nan')):.3f} s, "
            + ", ".join(f"predict {q} {entry['predict'][str(q)]['median_s']:.5f} s" for q in args.predict))
    return res


def environment(args):
    from numba import config, cuda
    import numba
    env = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
           "simulated": bool(config.ENABLE_CUDASIM), "nproc": os.cpu_count(),
           "command": "python -m benchmarks.gpu_bench " + " ".join(sys.argv[1:])}
    env.update(module_versions(("numba_cuda", "cupy", "jax", "jaxlib")))
    try:
        if config.ENABLE_CUDASIM:
            raise RuntimeError("Numba CUDA simulator, no GPU")
        device = cuda.get_current_device()
        env["gpu"] = device.name.decode() if isinstance(device.name, bytes) else str(device.name)
    except Exception as exc:
        env["gpu"] = f"unknown ({exc})"
    env["cpu_model"] = cpu_model() or "unknown"
    env["git_commit"] = git_info()["commit"] or "unknown"
    return env


def verdicts(results):
    out = {}
    for name, mol in results["molecules"].items():
        jax_c = mol.get("jax", {}).get("contraction")
        if jax_c and "10" in mol["gdmlc"]["predict"]:
            speedup = jax_c["predict"]["10"]["median_s"] / mol["gdmlc"]["predict"]["10"]["cuda"]["median_s"]
            out[f"{name}_predict_10_speedup_vs_jax_contraction"] = {
                "value": speedup, "target": TARGETS["predict_10_speedup_vs_jax_contraction"],
                "met": speedup >= TARGETS["predict_10_speedup_vs_jax_contraction"]}
    eth = results["molecules"].get("ethanol", {}).get("gdmlc", {})
    if "assembly_speedup_vs_cpu" in eth:
        value = eth["assembly_speedup_vs_cpu"]
        out["ethanol_assembly_speedup_vs_cpu"] = {"value": value, "target": TARGETS["ethanol_assembly_speedup_vs_cpu"],
                                                  "met": value >= TARGETS["ethanol_assembly_speedup_vs_cpu"]}
    return out


def main(argv=None):
    args = parse_args(argv)
    if args.simulate:
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"  # before numba.cuda is first imported
        sys.setswitchinterval(2e-5)  # the simulator's syncthreads() polls threads: switch often
    from runtime import cuda_backend
    reason = cuda_backend.cuda_unavailable_reason()
    if reason is not None:
        raise SystemExit(f"gpu_bench: {reason}")
    from compiler.build.cuda_compiled import compile_cuda_model
    from runtime.symmetry import find_permutations

    def log(text):
        print(text, flush=True)

    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    tag = "_tiny_simulated" if args.simulate else "_tiny" if args.tiny else ""
    out_path = Path(args.out) if args.out else RESULTS_DIR / f"gpu_{date}{tag}.json"
    results = {"environment": environment(args), "settings": {
        "descriptor": DESCRIPTOR, "kernel": KERNEL, "sigma": SIGMA, "lam": LAM, "m": args.m,
        "check_m": args.check_m, "predict": args.predict, "repeats": args.repeats}, "molecules": {}}
    log(f"gpu_bench on {results['environment']['gpu']} (simulated: {results['environment']['simulated']})")
    cm = compile_cuda_model(DESCRIPTOR, KERNEL)
    log(f"generated CUDA module: {cm.module_path}")
    for name in args.molecules:
        R, F, E, z, source = load_molecule(name, tiny=args.tiny)
        perms = find_permutations(R[spread(len(R), min(len(R), 200))], z, progress=False)
        log(f"\n{name}: {source}, {R.shape[1]} atoms, {len(perms)} permutations")
        mol = {"source": source, "n_atoms": int(R.shape[1]), "n_perms": int(len(perms))}
        mol["check"] = check_kernels(cm, R, z, perms, args.check_m, 3 if args.tiny else 100, log)
        mol["gdmlc"], model = bench_gdmlc(name, R, F, E, z, perms, args, log)
        mol["jax"] = {"skipped": "--no-jax"} if args.no_jax else bench_jax(R, F, E, z, perms, args, model, log)
        results["molecules"][name] = mol
        results["verdicts"] = verdicts(results)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(results, indent=2))
    for key, v in results.get("verdicts", {}).items():
        log(f"{key}: {v['value']:.2f} (target {v['target']:g}) {'MET' if v['met'] else 'NOT MET'}")
    log(f"\nwrote {out_path}")
    checks_ok = all(mol["check"]["passed"] for mol in results["molecules"].values())
    return 0 if checks_ok else 1


if __name__ == "__main__":
    sys.exit(main())
