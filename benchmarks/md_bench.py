"""MD through the ASE calculator, with and without one busy core (issue 10, item 7).

    python -m benchmarks.md_bench [--quick] [--n-train 1000] [--sigma 10] [--steps 400]
                                  [--repeats 9] [--calls 300] [--no-sgdml] [--no-all-threads]
                                  [--json OUT.json]

Trains ethanol (rMD17 split 01 from ../shared/data/rmd17 when it is there, else the embedded
GFN2-xTB data) with gdmlc, then runs ASE Velocity Verlet (0.5 fs, 300 K start) through
``runtime.ase_calculator.GDMLCalculator`` and times single-geometry predictions.  Every
repeat measures both conditions, one after the other: "idle" (nothing of ours besides the
benchmark) and "busy" (a subprocess spinning on core 0, pinned with os.sched_setaffinity).
Reported: median MD steps/s and median ms per single-geometry prediction per condition, for
gdmlc as it is and (unless --no-all-threads) with every call on all Numba threads, the
schedule before issue 10, in the same repeats (one right after the other).

When sGDML's environment (benchmarks/.sgdml-venv, see sgdml_runner.py) exists, the same
training frames, sigma and lambda train an sGDML model there and the same MD and timings
run through sGDML's own ASE calculator (its NumPy predictor, as ``SGDMLCalculator`` sets it
up; and, for predictions, its NumPy predictor in one process) in a subprocess of that
environment: this file runs there as a script, so everything
above the gdmlc section uses only the standard library, numpy and ASE.  ASE is installed
into that environment on demand.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

TIMESTEP_FS = 0.5
TEMPERATURE_K = 300.0
LAM = 1e-10
CONDITIONS = ("idle", "busy")

# A busy loop on core 0 (when this process may use core 0): "ready" once it spins.
SPIN = ("import os, sys\n"
        "if hasattr(os, 'sched_setaffinity') and 0 in os.sched_getaffinity(0):\n"
        "    os.sched_setaffinity(0, {0})\n"
        "print('ready', flush=True)\n"
        "while True:\n"
        "    pass\n")


# --------------------------------------------------------------------------- shared (both venvs)

@contextmanager
def busy_core():
    """Context (gives the process): another process holds (about) one core while it lasts."""
    proc = subprocess.Popen([sys.executable, "-c", SPIN], stdout=subprocess.PIPE, text=True)
    try:
        proc.stdout.readline()  # it is spinning from here on
        yield proc
    finally:
        proc.kill()
        proc.wait()


def md_steps_per_second(atoms, positions, momenta, steps):
    """(steps/s, |total energy change| in eV) of Velocity Verlet from the given start."""
    from ase import units
    from ase.md.verlet import VelocityVerlet

    atoms.set_positions(positions)
    atoms.set_momenta(momenta)
    energy0 = atoms.get_total_energy()
    dynamics = VelocityVerlet(atoms, timestep=TIMESTEP_FS * units.fs)
    start = time.perf_counter()
    dynamics.run(steps)
    seconds = time.perf_counter() - start
    return steps / seconds, float(np.squeeze(np.abs(atoms.get_total_energy() - energy0)))


def predict_ms(predict_one, geometries, calls):
    """Median ms of predict_one(geometry) over `calls` calls, cycling through geometries."""
    predict_one(geometries[0])  # warm-up
    times = np.empty(calls)
    for i in range(calls):
        start = time.perf_counter()
        predict_one(geometries[i % len(geometries)])
        times[i] = time.perf_counter() - start
    return float(np.median(times)) * 1e3


def md_and_predictions(atoms, predict_one, start, geometries, steps, calls):
    """One sample of each: MD steps/s and energy drift from `start`, ms per prediction."""
    rate, drift = md_steps_per_second(atoms, *start, steps)
    return {"steps_per_s": rate, "energy_drift_eV": drift, "predict_ms": predict_ms(predict_one, geometries, calls)}


def measure(sample_once, repeats, log):
    """Samples per condition ('idle', 'busy') of sample_once() -> {name: value}; both
    conditions in every repeat, so slow drifts of the machine's load hit both alike."""
    samples = {c: {} for c in CONDITIONS}
    for repeat in range(repeats):
        for condition in CONDITIONS:
            with busy_core() if condition == "busy" else _nothing():
                got = sample_once()
            for name, value in got.items():
                samples[condition].setdefault(name, []).append(value)
            log(f"  repeat {repeat + 1}/{repeats} {condition}: "
                + ", ".join(f"{name} {value:.4g}" for name, value in got.items()))
    return samples


@contextmanager
def _nothing():
    yield


def medians(samples):
    """Median of every sample list per condition (the largest, for the energy drift)."""
    return {c: {("max_" + name if name == "energy_drift_eV" else name):
                float(np.max(values) if name == "energy_drift_eV" else np.median(values))
                for name, values in s.items()}
            for c, s in samples.items()}


def _log(text):
    print(text, file=sys.stderr, flush=True)


def thermal_momenta(atoms, seed):
    """Maxwell-Boltzmann momenta at TEMPERATURE_K (ASE units), reproducible from `seed`."""
    from ase import units

    scale = np.sqrt(atoms.get_masses() * units.kB * TEMPERATURE_K)
    return np.random.default_rng(seed).normal(size=(len(atoms), 3)) * scale[:, None]


# --------------------------------------------------------------------------- sGDML side (its venv)

def sgdml_worker(config_path):
    """Runs in benchmarks/.sgdml-venv: train sGDML, then the same MD and timings."""
    import sgdml
    from ase import Atoms
    from sgdml.intf.ase_calc import SGDMLCalculator
    from sgdml.predict import GDMLPredict
    from sgdml.train import GDMLTrain

    cfg = json.loads(Path(config_path).read_text())
    data = np.load(cfg["arrays"])
    train = {"type": "d", "name": np.array("ethanol"), "theory": np.array("benchmark"),
             "R": data["R"], "z": data["z"], "F": data["F"], "E": data["E"]}
    n_train = len(data["R"])
    t0 = time.perf_counter()
    # its NumPy training path: the torch one held 23 GB at M=1000 (this one about 11 GB)
    trainer = GDMLTrain(use_torch=False)
    task = trainer.create_task(train, n_train, train, 0, sig=cfg["sigma"], lam=cfg["lam"], use_sym=True,
                               use_E=True, use_E_cstr=False)
    model = trainer.train(task)
    train_s = time.perf_counter() - t0
    model_path = Path(cfg["workdir"]) / "sgdml_model.npz"
    np.savez_compressed(model_path, **model)

    calc = SGDMLCalculator(str(model_path))  # NumPy predictor, prepare_parallel(n_bulk=1)
    atoms = Atoms(numbers=data["z"], positions=data["start_positions"])
    atoms.calc = calc
    atoms.set_momenta(data["start_momenta"])
    forces = atoms.get_forces()  # at the start geometry, to compare with gdmlc's
    start, geometries = (data["start_positions"], data["start_momenta"]), data["geometries"]
    samples = measure(lambda: md_and_predictions(atoms, lambda x: calc.gdml_predict.predict(x.ravel()), start,
                                                 geometries, cfg["steps"], cfg["calls"]), cfg["repeats"], _log)
    # its NumPy predictor in this process only (no worker pool), the faster choice for one geometry
    _log("sGDML's NumPy predictor with max_processes=1:")
    serial = GDMLPredict(model, max_processes=1, use_torch=False)
    serial_samples = measure(lambda: {"predict_ms": predict_ms(lambda x: serial.predict(x.ravel()), geometries,
                                                               cfg["calls"])}, cfg["repeats"], _log)
    import torch
    result = {"train_s": train_s, "n_perms": int(model["perms"].shape[0]), "samples": samples,
              "medians": medians(samples), "start_forces_eV_per_A": forces.tolist(),
              "serial_predictor": {"samples": serial_samples, "medians": medians(serial_samples)},
              "predictor": {"num_workers": int(calc.gdml_predict.num_workers or 0),
                            "chunk_size": int(calc.gdml_predict.chunk_size or 0),
                            "bulk_mp": bool(calc.gdml_predict.bulk_mp)},
              "versions": {"sgdml": sgdml.__version__, "numpy": np.__version__, "torch": torch.__version__,
                           "ase": __import__("ase").__version__}}
    Path(cfg["output"]).write_text(json.dumps(result))


# --------------------------------------------------------------------------- gdmlc side

REPO = Path(__file__).resolve().parent.parent
RMD17_ETHANOL = REPO.parent / "shared" / "data" / "rmd17" / "rmd17_ethanol_train_01.npz"


def training_data(n_train):
    """(dataset, its description): rMD17 ethanol if ../shared has it, else the embedded data."""
    import runtime
    from runtime.data import DEFAULT_DATA

    path = RMD17_ETHANOL if RMD17_ETHANOL.exists() else DEFAULT_DATA
    ds = runtime.load_dataset(str(path))
    if n_train > len(ds):
        raise SystemExit(f"--n-train {n_train}: {path} has only {len(ds)} frames")
    return ds, f"{path.name} (first {n_train} frames, {ds.energy_unit}, {ds.length_unit})"


def gdmlc_side(ds, n_train, sigma, start, geometries, args):
    """(result dict, model) of gdmlc through its ASE calculator."""
    from ase import Atoms

    import runtime
    from runtime.ase_calculator import GDMLCalculator

    t0 = time.perf_counter()
    model = runtime.GDML(sigma=sigma, lam=LAM, progress=False)
    model.fit(ds.R[:n_train], ds.F[:n_train], ds.E[:n_train], ds.z)
    train_s = time.perf_counter() - t0
    calc = GDMLCalculator(model, energy_unit=ds.energy_unit, length_unit=ds.length_unit)
    atoms = Atoms(numbers=ds.z, positions=start[0])
    atoms.calc = calc
    atoms.set_momenta(start[1])
    forces = atoms.get_forces()
    def sample_once():
        return md_and_predictions(atoms, lambda x: model.predict(x, progress=False), start, geometries,
                                  args.steps, args.calls)

    def sample_both_schedules():  # one right after the other, so that both see the same load
        now = sample_once()
        with _every_call_on_all_threads():
            before = sample_once()
        return {**now, **{BEFORE + name: value for name, value in before.items()}}

    _log("gdmlc" + ("" if args.no_all_threads else f" (and, {BEFORE}*: every call on all Numba threads, "
                                                    "the schedule before issue 10)") + ":")
    samples = measure(sample_once if args.no_all_threads else sample_both_schedules, args.repeats, _log)
    now, before = _split(samples, BEFORE)
    result = {"train_s": train_s, "samples": now, "medians": medians(now),
              "start_forces_eV_per_A": forces.tolist()}
    if not args.no_all_threads:
        result["all_threads"] = {"samples": before, "medians": medians(before)}
    return result


BEFORE = "before_"


def _split(samples, prefix):
    """(samples without, samples with the prefix (removed)) per condition."""
    plain = {c: {k: v for k, v in s.items() if not k.startswith(prefix)} for c, s in samples.items()}
    marked = {c: {k[len(prefix):]: v for k, v in s.items() if k.startswith(prefix)} for c, s in samples.items()}
    return plain, marked


@contextmanager
def _every_call_on_all_threads():
    """Context: gdmlc's prediction scheduled as before issue 10 (no single-threaded small work)."""
    from compiler.build import compiled

    saved = compiled.SERIAL_GEOMETRIES
    compiled.SERIAL_GEOMETRIES = 0
    try:
        yield
    finally:
        compiled.SERIAL_GEOMETRIES = saved


def sgdml_side(ds, n_train, sigma, start, geometries, args, workdir):
    """sGDML's result dict from its venv, or {'skipped': why}."""
    from .sgdml_runner import VENV_DIR, _installed, _subprocess_env, venv_python

    if not _installed(VENV_DIR):
        return {"skipped": f"no sGDML environment at {VENV_DIR} (python -m benchmarks run creates it, "
                           "or sgdml_runner.ensure_sgdml_env())"}
    python = str(venv_python())
    if subprocess.run([python, "-c", "import ase"], capture_output=True).returncode != 0:
        _log("installing ASE into the sGDML environment (for its calculator)")
        import ase
        subprocess.run([python, "-m", "pip", "install", "-q", f"ase=={ase.__version__}"], check=True)
    arrays = Path(workdir) / "arrays.npz"
    np.savez(arrays, R=ds.R[:n_train], F=ds.F[:n_train], E=ds.E[:n_train], z=ds.z,
             start_positions=start[0], start_momenta=start[1], geometries=geometries)
    config = {"arrays": str(arrays), "sigma": sigma, "lam": LAM, "steps": args.steps, "repeats": args.repeats,
              "calls": args.calls, "workdir": str(workdir), "output": str(Path(workdir) / "sgdml.json")}
    config_path = Path(workdir) / "config.json"
    config_path.write_text(json.dumps(config))
    _log("sGDML (training in its environment, then the same measurements):")
    proc = subprocess.run([python, str(Path(__file__).resolve()), "sgdml-worker", str(config_path)],
                          env=_subprocess_env(), cwd=workdir)
    if proc.returncode != 0:
        return {"failed": f"the sGDML side exited {proc.returncode}; its output is above"}
    return json.loads(Path(config["output"]).read_text())


def ratios(gdmlc, sgdml):
    """Per condition, > 1 = gdmlc faster: steps/s gdmlc / sGDML's calculator, and ms per
    prediction sGDML / gdmlc for its calculator's predictor and its one-process predictor."""
    out = {}
    for c in CONDITIONS:
        g, s, one = gdmlc["medians"][c], sgdml["medians"][c], sgdml["serial_predictor"]["medians"][c]
        out[c] = {"steps_per_s": g["steps_per_s"] / s["steps_per_s"], "predict": s["predict_ms"] / g["predict_ms"],
                  "predict_vs_one_process": one["predict_ms"] / g["predict_ms"]}
    return out


def table(run):
    """Markdown table of the medians (and same-run ratios when sGDML ran)."""
    lines = ["| system | condition | MD steps/s | ms per single-geometry prediction | max energy drift (eV) |",
             "|---|---|---:|---:|---:|"]
    for system in ("gdmlc", "sgdml"):
        side = run.get(system, {})
        for c in CONDITIONS:
            if "medians" in side:
                m = side["medians"][c]
                lines.append(f"| {system} | {c} | {m['steps_per_s']:.0f} | {m['predict_ms']:.3f} | "
                             f"{m['max_energy_drift_eV']:.2e} |")
    for c in CONDITIONS:
        if "all_threads" in run["gdmlc"]:
            m = run["gdmlc"]["all_threads"]["medians"][c]
            lines.append(f"| gdmlc, every call on all threads (before) | {c} | {m['steps_per_s']:.0f} | "
                         f"{m['predict_ms']:.3f} | {m['max_energy_drift_eV']:.2e} |")
    for c in CONDITIONS:
        if "serial_predictor" in run.get("sgdml", {}):
            m = run["sgdml"]["serial_predictor"]["medians"][c]
            lines.append(f"| sgdml NumPy predictor, max_processes=1 | {c} | | {m['predict_ms']:.3f} | |")
    g = run["gdmlc"]["medians"]
    lines.append(f"\ngdmlc busy / idle: prediction {g['busy']['predict_ms'] / g['idle']['predict_ms']:.2f}x the "
                 f"time, MD {g['idle']['steps_per_s'] / g['busy']['steps_per_s']:.2f}x fewer steps/s")
    if "all_threads" in run["gdmlc"]:
        a = run["gdmlc"]["all_threads"]["medians"]
        lines.append(f"before (all threads) busy / idle: prediction "
                     f"{a['busy']['predict_ms'] / a['idle']['predict_ms']:.2f}x the time; busy, now vs before: MD {g['busy']['steps_per_s'] / a['busy']['steps_per_s']:.2f}x "
                     f"the steps/s, prediction {a['busy']['predict_ms'] / g['busy']['predict_ms']:.2f}x faster")
    if "ratios" in run:
        for c, r in run["ratios"].items():
            lines.append(f"gdmlc vs sGDML ({c}): MD {r['steps_per_s']:.2f}x the steps/s, prediction "
                         f"{r['predict']:.2f}x faster ({r['predict_vs_one_process']:.2f}x its one-process predictor)")
    return "\n".join(lines)


def build_parser():
    p = argparse.ArgumentParser(prog="python -m benchmarks.md_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny run (seconds): M=50, few steps, no sGDML")
    p.add_argument("--n-train", type=int, default=1000)
    p.add_argument("--sigma", type=float, default=10.0)
    p.add_argument("--steps", type=int, default=400, help="MD steps per repeat and condition")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--calls", type=int, default=300, help="single-geometry predictions per repeat and condition")
    p.add_argument("--no-sgdml", action="store_true", help="gdmlc only")
    p.add_argument("--no-all-threads", action="store_true",
                   help="skip gdmlc with every call on all threads (the schedule before issue 10)")
    p.add_argument("--json", help="write the whole run (every sample) here")
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.quick:
        args.n_train, args.steps, args.repeats, args.calls, args.no_sgdml = 50, 20, 2, 20, True
    from .environment import git_info, machine, versions

    ds, described = training_data(args.n_train)
    frames = np.arange(len(ds))[args.n_train:] if len(ds) > args.n_train else np.arange(len(ds))
    geometries = ds.R[frames[:200]]
    from ase import Atoms

    start = (ds.R[0], thermal_momenta(Atoms(numbers=ds.z, positions=ds.R[0]), seed=1))
    run = {"command": "python -m benchmarks.md_bench " + " ".join(argv), "date": time.strftime("%Y-%m-%d %H:%M %Z"),
           "data": described, "n_train": args.n_train, "sigma": args.sigma, "lam": LAM, "steps": args.steps,
           "repeats": args.repeats, "calls": args.calls, "timestep_fs": TIMESTEP_FS,
           "machine": machine(), "versions": versions(), "git": git_info()}
    run["gdmlc"] = gdmlc_side(ds, args.n_train, args.sigma, start, geometries, args)
    if args.json:  # kept if the sGDML side fails or is stopped
        Path(args.json).write_text(json.dumps(run, indent=1))
    if args.no_sgdml:
        run["sgdml"] = {"skipped": "--no-sgdml" + (" (--quick)" if args.quick else "")}
    else:
        with tempfile.TemporaryDirectory(prefix="gdmlc-md-bench-") as workdir:
            run["sgdml"] = sgdml_side(ds, args.n_train, args.sigma, start, geometries, args, workdir)
        if "medians" in run["sgdml"]:
            run["ratios"] = ratios(run["gdmlc"], run["sgdml"])
            run["start_forces_max_abs_diff_eV_per_A"] = float(np.max(np.abs(
                np.subtract(run["gdmlc"]["start_forces_eV_per_A"], run["sgdml"]["start_forces_eV_per_A"]))))
    run["machine"]["load_average_end"] = list(os.getloadavg())
    print(table(run))
    for status in ("skipped", "failed"):
        if status in run["sgdml"]:
            print(f"sGDML: {status} ({run['sgdml'][status]})")
    if args.json:
        Path(args.json).write_text(json.dumps(run, indent=1))
    return 1 if "failed" in run["sgdml"] else 0


if __name__ == "__main__":
    if __package__ in (None, ""):  # run as a script in the sGDML venv: only its worker
        sys.exit(sgdml_worker(sys.argv[2]) if sys.argv[1:2] == ["sgdml-worker"] else 2)
    sys.exit(main())
