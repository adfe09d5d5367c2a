"""The ``gdmlc`` command: train, test, predict, vibrations, info (and compile, check)."""
from __future__ import annotations

import argparse
import inspect
import json
import keyword
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from compiler import checks
from compiler import cli as compiler_cli
from compiler.atomic_io import atomic_writer
from compiler.library import LIBRARY_DESCRIPTORS, LIBRARY_KERNELS, resolve

from .data import (DEFAULT_DATA, DatasetError, check_force_energy_consistency, check_same_species,
                   hessian_unit_label, load_dataset, load_geometries, unit_labels)
from . import distributed, mixed, vibrations
from .model import GDML, error_table

MAX_SIGMA_VALUES = 1000  # a range like 1:1e9:1 is a typo, not a grid


def _version():
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("gdmlc")
    except PackageNotFoundError:  # run from a checkout that was never installed
        import compiler
        return compiler.__version__


def parse_sigma(text):
    """'20' -> [20]; '10,20,40' -> list; '10:90:10' -> 10, 20, ..., 90 (all positive and finite)."""
    if text is None:
        return None
    usage = "a positive number, a list 10,20,40 or a range START:STOP:STEP such as 10:90:10"
    try:
        if ":" in text:
            start, stop, step_ = (float(v) for v in text.split(":"))
            if not step_ > 0 or not stop >= start or (stop - start) / step_ >= MAX_SIGMA_VALUES:
                raise argparse.ArgumentTypeError(
                    f"{text!r} is not a range: it needs STOP >= START, STEP > 0 and at most "
                    f"{MAX_SIGMA_VALUES} values (expected {usage})")
            values = list(np.arange(start, stop + step_ / 2, step_))
        else:
            values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {usage}, not {text!r}") from None
    bad = [v for v in values if not (np.isfinite(v) and v > 0)]
    if bad:
        raise argparse.ArgumentTypeError(f"sigma must be positive and finite, got {bad[0]:g} in {text!r}")
    return values


def parse_hyper(text):
    """'NAME=VALUE' -> (NAME, float VALUE): a kernel hyperparameter besides sigma."""
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name.isidentifier() or keyword.iskeyword(name):
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE (e.g. alpha=0.5), not {text!r}")
    if name == "sigma":
        raise argparse.ArgumentTypeError("set sigma with --sigma, not --hyper")
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name}: expected a number, not {value!r}") from None
    if not np.isfinite(number):
        raise argparse.ArgumentTypeError(f"{name}: expected a finite number, not {value!r}")
    return name, number


def split_indices(n_frames, n_train, n_valid, n_test, seed):
    """Disjoint random (train, valid, test) frame indices of one file."""
    for option, count, least in (("--n-train", n_train, 1), ("--n-valid", n_valid, 0), ("--n-test", n_test, 0)):
        if count < least:
            raise DatasetError(f"{option} must be at least {least}, got {count}")
    needed = n_train + n_valid + n_test
    if needed > n_frames:
        raise DatasetError(f"n-train + n-valid + n-test = {n_train} + {n_valid} + {n_test} = {needed} "
                           f"is larger than the data ({n_frames} frames)")
    order = np.random.default_rng(seed).permutation(n_frames)
    return order[:n_train], order[n_train:n_train + n_valid], order[n_train + n_valid:needed]


def _units(ds):
    return unit_labels(ds.energy_unit, ds.length_unit)


def print_errors(title, errors, ds, file=None):
    file = file or sys.stdout
    e_unit, f_unit = _units(ds)
    print(f"\n{title}", file=file)
    print(f"  {'':8s} {'MAE':>10s} {'RMSE':>10s}", file=file)
    if "energy_mae" in errors:
        print(f"  {'energy':8s} {errors['energy_mae']:10.4f} {errors['energy_rmse']:10.4f}  {e_unit}", file=file)
    print(f"  {'forces':8s} {errors['force_mae']:10.4f} {errors['force_rmse']:10.4f}  {f_unit}", file=file)


class CLIError(ValueError):
    """A mistake in the command line; printed as one line, exit code 2."""


def _model_scope(model, no_sym) -> str:
    if model.local:
        return "local kernel: atoms of one element compared, no symmetry search"
    return "no symmetries" if no_sym else "symmetries: auto"


def cmd_train(args):
    start = time.perf_counter()
    data_path = Path(args.data) if args.data else DEFAULT_DATA
    descriptor = _resolve_dsl(args.descriptor, "descriptor")
    kernel = _resolve_dsl(args.kernel, "kernel")
    hyper = _hyper_option(args.hyper)
    _check_counts(args.n_train, args.n_valid, args.n_test)
    _refuse_same_files({"the training data": data_path, "--valid": args.valid, "--test": args.test})
    out = _checked_output(args.output, [data_path, args.valid, args.test,
                                        *(_dsl_file(spec) for spec in (args.descriptor, args.kernel))])
    ds = _load(data_path, args)
    print(f"dataset  {data_path}  ({ds.name}, {len(ds)} frames, {_atoms_text(ds)}, {ds.theory})")
    parts = _split(ds, args)
    train, valid, test = (parts[role][0] if role in parts else None for role in ("training", "validation", "test"))
    hessians = train.H is not None and not args.no_hessians
    if ds.H is not None and not hessians:
        why = "--no-hessians" if args.no_hessians else "none of them is a training frame"
        print(f"note: the Hessians of {len(ds.H_frames)} frames are not used in training ({why})", file=sys.stderr)
    with distributed.connected(args.scheduler) as cluster:  # closed once trained
        model = GDML(descriptor=descriptor, kernel=kernel, sigma=args.sigma, lam=args.lam,
                     symmetries=None if args.no_sym else "auto", energy_constraints=args.energy_constraints,
                     device=args.device, solver=args.solver, cg_tol=args.cg_tol, cg_maxiter=args.cg_maxiter,
                     preconditioner=args.preconditioner, checkpoint=checkpoint_path(out),
                     checkpoint_every=args.checkpoint_every, resume=args.resume, cluster=cluster,
                     local=False if args.global_kernel else None, **hyper)
        if args.energy_constraints and train.E is None:
            raise DatasetError(f"--energy-constraints needs energies, but {data_path} has none")
        if valid is None and len(model.sigma_grid) > 1:
            raise DatasetError("choosing sigma needs validation data: --n-valid > 0, --valid FILE, or one --sigma")
        print(f"model    {model.descriptor_dsl.name} x {model.kernel_dsl.name}, sigma grid "
              f"{', '.join(f'{s:g}' for s in model.sigma_grid)}, lambda {model.lam:g}, "
              f"{_model_scope(model, args.no_sym)}"
              f"{', energy constraints' if args.energy_constraints else ''}")
        print(f"split    train {len(train)}, validation {0 if valid is None else len(valid)}, "
              f"test {0 if test is None else len(test)}")
        if hessians:
            print(f"hessians {len(train.H_frames)} training frames with Hessians, observed beside the forces")
        model.fit(train.R, train.F, train.E, train.z,  # every frame passed validate_frames in _split
                  valid=None if valid is None else (valid.R, valid.F, valid.E) + ((valid.z,) if valid.padded else ()),
                  validated=True,
                  H=train.H if hessians else None, H_frames=train.H_frames if hessians else None)
    # (frames of several compositions: consecutive frames are not one trajectory)
    consistent = train.E is not None and not train.padded
    for warning in check_force_energy_consistency(train.R, train.E, train.F) if consistent else []:
        print(f"warning: {warning}", file=sys.stderr)
    from_training_file = {role: idx if part.source == ds.source else np.array([], dtype=int)
                          for role, (part, idx) in parts.items()}
    model.info.update({
        "dataset": str(data_path), "dataset_name": ds.name, "dataset_fingerprint": ds.fingerprint(),
        "theory": ds.theory, "labels": ds.labels, "energy_unit": ds.energy_unit,
        "length_unit": ds.length_unit, "train_indices": from_training_file["training"],
        "valid_indices": from_training_file.get("validation", np.array([], dtype=int)),
        "test_indices": from_training_file.get("test", np.array([], dtype=int)), "seed": args.seed,
        **{f"{role}_dataset": str(args_file) for role, args_file in (("valid", args.valid), ("test", args.test))
           if args_file},
    })
    print(f"\nsigma    {model.sigma:g} (lambda {model.lam_used:g}), {len(model.perms)} permutation(s)")
    if "cg_iterations" in model.info:
        print(f"solver   conjugate gradients: {model.info['cg_iterations']} iterations, relative residual "
              f"{model.info['cg_residual']:.2e} ({model.info['cg_preconditioner']} preconditioner, "
              f"rank {model.info['cg_rank']})")
    edge = sigma_edge_warning(model)
    if edge:
        print(f"warning: {edge}", file=sys.stderr)
    if "validation" in model.info:
        print_errors("validation errors", model.info["validation"], ds)
    if test is not None:
        errors = model.evaluate(test.R, test.F, test.E, validated=True, z=test.z if test.padded else None)
        model.info["test"] = errors
        print_errors(f"test errors ({len(test)} frames)", errors, ds)
    model.info["train_seconds"] = time.perf_counter() - start
    model.save(out)
    print(f"\nsaved    {out}  (total {model.info['train_seconds']:.1f} s)")
    return 0


def _load(path, args, require_forces=True):
    return load_dataset(path, labels=args.labels, require_forces=require_forces,
                        energy_key=args.energy_key, forces_key=args.forces_key, hessian_key=args.hessian_key)


def _split(ds, args):
    """{'training'|'validation'|'test': (Dataset, frame indices in its file)}, all frames checked.

    Parts not given as files are disjoint random draws from the training file."""
    files = {role: _load(path, args) for role, path in (("validation", args.valid), ("test", args.test)) if path}
    n_valid = 0 if "validation" in files else args.n_valid
    if "test" in files:
        n_test = 0
    elif args.n_test is not None:
        n_test = args.n_test
    else:
        n_test = min(1000, max(len(ds) - args.n_train - n_valid, 0))
    drawn = dict(zip(("training", "validation", "test"),
                     split_indices(len(ds), args.n_train, n_valid, n_test, args.seed)))
    parts = {role: (ds, idx) for role, idx in drawn.items() if len(idx)}
    wanted = {"validation": (args.n_valid, 1), "test": (args.n_test, 2)}  # (frames, seed offset)
    for role, other in files.items():
        if not (other.padded or ds.padded):  # several compositions: the local model names an unseen element
            check_same_species(other.z, ds.z, other.source, ref=f"the training data {Path(ds.source).name}")
        idx = np.arange(len(other))
        count, offset = wanted[role]
        if count is not None and 0 < count < len(other):  # --n-valid/--n-test draw from a given file too
            idx = np.sort(np.random.default_rng(args.seed + offset).permutation(len(other))[:count])
        parts[role] = (other, idx)
    for role, (source, idx) in parts.items():
        validate_frames(source.R, idx, source.source, role, source.z)
    return {role: (source.subset(idx), idx) for role, (source, idx) in parts.items()}


def validate_frames(R, frames, source, role, z=None):
    """Refuse unusable geometries before any assembly, naming the frame's index in its file (for
    frames of several compositions, z (M, N), each frame's real atoms)."""
    if z is not None and mixed.is_padded(z):
        mixed.checked_geometries(R[frames], z[frames], f"{source} ({role} data)", frame_index=frames)
        return
    checks.geometries(R[frames], f"{source} ({role} data)", frame_index=frames)


def _atoms_text(ds) -> str:
    """'9 atoms', or for frames of several compositions 'up to 12 atoms, 3 compositions'."""
    if not ds.padded:
        return f"{ds.n_atoms} atoms"
    return f"up to {ds.n_atoms} atoms, {len(mixed.compositions(ds.z))} compositions"


def _check_counts(n_train, n_valid, n_test):
    for option, count, least in (("--n-train", n_train, 1), ("--n-valid", n_valid, 0), ("--n-test", n_test, 0)):
        if count is not None and count < least:
            raise CLIError(f"{option} must be at least {least}, got {count}")


def _refuse_same_files(named):
    """Two roles given the same file would share frames (test frames must never be trained on)."""
    given = [(role, Path(path)) for role, path in named.items() if path is not None]
    for k, (role, path) in enumerate(given):
        for other_role, other in given[k + 1:]:
            if path.exists() and other.exists() and os.path.samefile(path, other):
                raise CLIError(f"{other_role} {other} is the same file as {role}: its frames would overlap; "
                               f"draw disjoint frames from one file with --n-valid/--n-test instead")


def _checked_output(path, inputs, option="-o"):
    """The output path, refused before any work if it cannot be written or would overwrite an input."""
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise CLIError(f"{option} {path}: is a folder; give a file name")
    if not folder.is_dir():
        raise CLIError(f"{option} {path}: the folder {folder} does not exist")
    try:  # a probe, not os.access: root ignores permission bits, read-only mounts do not
        tempfile.NamedTemporaryFile(dir=folder, prefix=f".{path.name}.").close()
    except OSError as exc:
        raise CLIError(f"{option} {path}: cannot write into {folder} ({exc.strerror or exc})") from None
    for other in inputs:
        if other is not None and path.exists() and Path(other).exists() and os.path.samefile(path, other):
            raise CLIError(f"{option} {path}: is the input file {other}; writing it would destroy the input")
    return path


def _dsl_file(spec):
    """The .py file of a 'FILE.py:func' spec, else None."""
    head = spec.rsplit(":", 1)[0] if ":" in spec else ""
    return Path(head) if head.endswith(".py") else None


def _resolve_dsl(spec, kind):
    """The DSL function of --descriptor/--kernel; a wrong name, kind or file is the user's mistake."""
    other = "kernel" if kind == "descriptor" else "descriptor"
    if spec in (LIBRARY_KERNELS if kind == "descriptor" else LIBRARY_DESCRIPTORS):
        raise CLIError(f"--{kind} {spec}: {spec} is a library {other}, not a {kind}; pass it as --{other}")
    try:
        return resolve(spec, kind)
    except (TypeError, ValueError, SyntaxError, OSError) as exc:  # TypeError: a kernel given as descriptor
        raise CLIError(f"--{kind} {spec}: {exc}") from None
    except Exception as exc:  # the user's own module failed while being imported
        if _dsl_file(spec) is None:
            raise
        raise CLIError(f"--{kind} {spec}: importing {_dsl_file(spec)} raised {type(exc).__name__}: {exc}") from None


def _hyper_option(pairs):
    """GDML keyword arguments for --hyper NAME=VALUE (none when the flag is not used)."""
    if not pairs:
        return {}
    if "hyper" not in inspect.signature(GDML).parameters:
        raise CLIError("--hyper: this version of the runtime does not accept extra kernel hyperparameters yet")
    names = [name for name, _ in pairs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise CLIError(f"--hyper {repeated[0]} is given more than once")
    return {"hyper": dict(pairs)}


def sigma_edge_warning(model):
    """A warning when the chosen sigma is the smallest or largest of a grid: the best may lie beyond."""
    grid = sorted(getattr(model, "sigma_grid", None) or [])
    if len(grid) < 2 or model.sigma not in (grid[0], grid[-1]):
        return None
    side, further = ("smallest", "smaller") if model.sigma == grid[0] else ("largest", "larger")
    return (f"sigma {model.sigma:g} is the {side} value of the grid {grid[0]:g}..{grid[-1]:g}: "
            f"the best sigma may be {further}; extend the grid with --sigma")


def _training_frames(model, ds):
    """Frames of ``ds`` used in training/validation, when ds is the training dataset."""
    if model.info.get("dataset_fingerprint") != ds.fingerprint():
        return np.array([], dtype=int)
    return np.concatenate([np.asarray(model.info.get(k, []), dtype=int)
                           for k in ("train_indices", "valid_indices")])


def cmd_test(args):
    plot = _checked_plot(args.plot, [args.model, args.data]) if args.plot else None
    model = GDML.load(args.model).set_device(args.device)
    ds = _load(args.data, args)
    check_same_species(ds.z, model.z, ds.source)
    keep = np.setdiff1d(np.arange(len(ds)), _training_frames(model, ds))
    if not len(keep):
        raise DatasetError(f"{args.data}: every frame was used in training or validation; nothing to test on")
    if args.n is not None:
        if args.n < 1:
            raise CLIError(f"--n must be at least 1, got {args.n}")
        if args.n < len(keep):
            keep = np.sort(np.random.default_rng(0).choice(keep, args.n, replace=False))
    validate_frames(ds.R, keep, ds.source, "test")
    ds = ds.subset(keep)
    E_pred, F_pred = model.predict(ds.R, validated=True)
    errors = error_table(E_pred if model.energy_constant is not None else None, F_pred, ds.E, ds.F)
    print_errors(f"{args.model} on {args.data} ({len(ds)} frames not used in training)", errors, ds)
    if plot:
        from .plots import parity_plot
        parity_plot(plot, E_pred, F_pred, ds, title=f"{Path(args.model).name} on {ds.name}")
        print(f"plot     {plot}")
    return 0


def _checked_plot(path, inputs):
    """The --plot path, checked (with matplotlib and the format) before any prediction."""
    from .plots import pyplot
    try:
        plt = pyplot()
    except ImportError as exc:
        raise CLIError(str(exc)) from None
    path = _checked_output(path, inputs, "--plot")
    suffix = path.suffix.lstrip(".").lower() or "png"
    if suffix not in plt.gcf().canvas.get_supported_filetypes():
        raise CLIError(f"--plot {path}: matplotlib cannot write .{suffix} files; use .png, .pdf or .svg")
    plt.close("all")
    return path


def cmd_predict(args):
    path = Path(args.geometries)
    out = _checked_output(args.output, [args.model, path]) if args.output else None
    model = GDML.load(args.model).set_device(args.device)
    R, z = load_geometries(path)
    if z is None:
        print(f"note: {path} has no atomic numbers (z): species and atom order could not be checked "
              f"against the model", file=sys.stderr)
    else:
        check_same_species(z, model.z, str(path))
    validate_frames(R, np.arange(len(R)), str(path), "input")
    E, F = model.predict(R, validated=True)  # the atom count is checked there, the rest was above
    if out:
        with atomic_writer(out) as fh:
            np.savez(fh, E=E, F=F, R=R)
        print(f"wrote {out}: E {E.shape}, F {F.shape}")
    else:
        unit, _ = unit_labels(model.info.get("energy_unit", "unknown"), model.info.get("length_unit", "unknown"))
        for k, (e, f) in enumerate(zip(np.atleast_1d(E), np.reshape(F, (-1,) + F.shape[-2:]))):
            print(f"frame {k}: E = {e:.6f} {unit}")
            print(np.array2string(f, precision=5, suppress_small=True))
    return 0


def cmd_vibrations(args):
    from ase import Atoms
    from ase.data import chemical_symbols

    from .ase_calculator import GDMLCalculator

    path = Path(args.geometry)
    out = _checked_output(args.output, [args.model, path])
    if not (args.fmax > 0 and args.steps > 0):
        raise CLIError("--fmax and --steps must be positive")
    model = GDML.load(args.model)
    model.model.require_hessians()  # before the relaxation: a kernel without a third derivative
    R, z = load_geometries(path)
    if z is not None:
        check_same_species(z, model.z, str(path))
    if not 0 <= args.frame < len(R):
        raise CLIError(f"--frame {args.frame}: {path} has {len(R)} frame(s)")
    validate_frames(R, np.array([args.frame]), str(path), "input")
    calculator = GDMLCalculator(model)
    atoms = Atoms(numbers=model.z, positions=R[args.frame] * calculator.length_factor)  # in Å for ASE
    vib, atoms = vibrations.harmonic_analysis(calculator, atoms, relax=args.relax, fmax=args.fmax,
                                              steps=args.steps, logfile="-" if args.relax else None)
    frequencies = vibrations.real_frequencies(vib)
    modes = vib.get_modes()
    names = [f"{chemical_symbols[int(n)]}{k}" for k, n in enumerate(model.z)]
    print(f"{'mode':>4} {'cm^-1':>10}  largest displacements (mass-weighted mode, atom: amplitude)")
    for k, (frequency, mode) in enumerate(zip(frequencies, modes)):
        amplitude = np.linalg.norm(mode, axis=1)
        top = np.argsort(amplitude)[::-1][:3]
        print(f"{k:>4} {frequency:>10.2f}  " + ", ".join(f"{names[a]}: {amplitude[a]:.2f}" for a in top))
    print("negative: imaginary; the six of smallest magnitude are translations and rotations")
    with atomic_writer(out) as fh:
        np.savez(fh, frequencies_cm1=frequencies, modes=modes, hessian_eV_per_A2=vib.get_hessian_2d(),
                 positions_A=atoms.get_positions(), z=np.asarray(model.z))
    print(f"wrote {out}: {len(frequencies)} frequencies and modes" + (" at the relaxed geometry" if args.relax else ""))
    return 0


def _is_model_file(path):
    """A gdmlc model (an npz holding a 'format' entry), as opposed to a dataset."""
    try:
        with zipfile.ZipFile(path) as archive:
            return "format.npy" in archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def cmd_info(args):
    path = Path(args.file)
    if not _is_model_file(path):
        ds = load_dataset(path, require_forces=False)
        e_unit, f_unit = _units(ds)
        print(f"dataset {path}: {ds.name}, {len(ds)} frames, {_atoms_text(ds)}"
              f"{'' if ds.padded else f' z={ds.z.tolist()}'}, "
              f"theory {ds.theory}, energies {'yes' if ds.E is not None else 'no'} ({e_unit}), "
              f"forces {'yes' if ds.F is not None else 'no'} ({f_unit}), "
              f"Hessians {_hessian_summary(ds)}")
        return 0
    model = GDML.load(path)  # a model that fails to load reports its own error
    info = {k: v for k, v in model.info.items() if not k.endswith("_indices")}
    print(f"model {path}: {model.descriptor_dsl.name} x {model.kernel_dsl.name}, {model.n_atoms} atoms, "
          f"{model.R_train.shape[0]} training geometries, {len(model.perms)} permutation(s), "
          f"sigma {model.sigma:g}, lambda {model.lam_used:g}")
    print(json.dumps(info, indent=2, default=str))
    return 0


def _hessian_summary(ds):
    """'no', or how many frames have a Hessian and its unit."""
    if ds.H is None:
        return "no"
    return f"for {len(ds.H_frames)} of {len(ds)} frames ({hessian_unit_label(ds.energy_unit, ds.length_unit)})"


def _device_option(p):
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="cuda: CUDA kernels on the GPU (falls back to the CPU, saying why, without one)")


def _solver_options(p):
    from . import cg
    from .model import DEFAULT_PRECONDITIONER, SOLVERS
    from .preconditioner import PRECONDITIONERS
    p.add_argument("--solver", default="auto", choices=SOLVERS,
                   help="cholesky (dense), cg (matrix-free conjugate gradients) or auto: dense while "
                        "the matrix fits in memory, CG beyond (default auto)")
    p.add_argument("--cg-tol", type=_fraction, default=cg.DEFAULT_TOL,
                   help=f"CG: relative residual to reach (default {cg.DEFAULT_TOL:g})")
    p.add_argument("--cg-maxiter", type=_positive_int, default=cg.DEFAULT_MAXITER,
                   help=f"CG: iteration limit; training fails beyond it (default {cg.DEFAULT_MAXITER})")
    p.add_argument("--preconditioner", default=DEFAULT_PRECONDITIONER, choices=PRECONDITIONERS,
                   help=f"CG preconditioner (default {DEFAULT_PRECONDITIONER})")
    p.add_argument("--checkpoint-every", type=float, default=cg.DEFAULT_CHECKPOINT_SECONDS, metavar="SECONDS",
                   help="CG: write the solver state to MODEL.cg-checkpoint.npz this often "
                        f"(default {cg.DEFAULT_CHECKPOINT_SECONDS:g} s)")
    p.add_argument("--resume", action="store_true",
                   help="CG: continue an interrupted training from MODEL.cg-checkpoint.npz")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="CG: run the training products on this Dask scheduler's workers, e.g. "
                        "tcp://node1:8786 (needs gdmlc[dask]; README: Training on a cluster)")


def checkpoint_path(out):
    """MODEL.cg-checkpoint.npz beside the output MODEL.npz."""
    out = Path(out)
    return out.with_name(f"{out.stem}.cg-checkpoint.npz")


def _fraction(text):
    """A number strictly between 0 and 1 (a CG tolerance)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, not {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, not {text!r}")
    return value


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}")
    return value


def _label_options(p):
    p.add_argument("--labels", default="new", choices=["new", "old"], help="rMD17: new (PBE) or old (MD17) labels")
    p.add_argument("--energy-key", help="extended XYZ: the info key of the energies "
                                        "(default: ASE's energy, else REF_energy)")
    p.add_argument("--forces-key", help="extended XYZ: the per-atom array of the forces "
                                        "(default: ASE's forces, else REF_forces)")
    p.add_argument("--hessian-key", help="extended XYZ: the info key of each frame's Hessian, 9N^2 numbers "
                                         "(default: hessian, else REF_hessian)")


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one line, `gdmlc: error: ...` (argparse exits 2 itself)."""

    def error(self, message):
        self.exit(2, f"gdmlc: error: {message} (see `{self.prog} --help`)\n")


def build_parser():
    parser = _Parser(prog="gdmlc", description="compiled sGDML-class force fields")
    parser.add_argument("--version", action="version", version=f"gdmlc {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a force field (default: the embedded ethanol data)")
    p.add_argument("data", nargs="?", help="dataset (sGDML/rMD17 npz or extended XYZ); "
                                           "default: embedded GFN2-xTB ethanol at 500 K")
    p.add_argument("--descriptor", default="inverse_distances", help="library name or FILE.py:func")
    p.add_argument("--kernel", default="matern52", help="library name or FILE.py:func")
    p.add_argument("--n-train", type=int, default=200)
    p.add_argument("--n-valid", type=int, default=200,
                   help="validation frames drawn from DATA (or from --valid FILE; 0: all of it)")
    p.add_argument("--n-test", type=int, default=None, help="default: up to 1000 of the remaining frames")
    p.add_argument("--valid", help="separate validation dataset file")
    p.add_argument("--test", help="separate test dataset file")
    p.add_argument("--sigma", type=parse_sigma,
                   help="one value, a list 10,20,40 or a range 10:90:10 (default: descriptor's grid)")
    p.add_argument("--hyper", type=parse_hyper, action="append", metavar="NAME=VALUE",
                   help="a kernel hyperparameter besides sigma (repeatable)")
    p.add_argument("--lam", type=float, default=1e-10, help="regulariser lambda (default 1e-10)")
    p.add_argument("--no-sym", action="store_true", help="plain GDML: no permutational symmetries")
    p.add_argument("--global", dest="global_kernel", action="store_true",
                   help="a global kernel of the whole descriptor vector even for a descriptor with one vector per "
                        "atom (acsf, fchl19, ...), which otherwise gives a local model comparing atoms")
    p.add_argument("--energy-constraints", action="store_true", help="joint energy+force training (sGDML's E_cstr)")
    p.add_argument("--no-hessians", action="store_true",
                   help="train on forces (and energies) only, even if training frames have Hessians")
    _label_options(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the random split")
    p.add_argument("-o", "--output", default="model.npz")
    _device_option(p)
    _solver_options(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("test", help="errors of a model on a dataset (frames used in training are skipped)")
    p.add_argument("model")
    p.add_argument("data")
    _label_options(p)
    p.add_argument("--n", type=int, help="test on a random subset of this many frames")
    p.add_argument("--plot", help="write a parity plot (PNG; needs matplotlib)")
    _device_option(p)
    p.set_defaults(func=cmd_test)
    p = sub.add_parser("predict", help="energies and forces for geometries (xyz or npz with R)")
    p.add_argument("model")
    p.add_argument("geometries")
    p.add_argument("-o", "--output", help="write E, F to this npz instead of printing")
    _device_option(p)
    p.set_defaults(func=cmd_predict)
    p = sub.add_parser("vibrations", help="harmonic frequencies (cm^-1) and normal modes from the model's Hessian")
    p.add_argument("model")
    p.add_argument("geometry", help="xyz or npz with R, in the model's length unit (one frame is used)")
    p.add_argument("--frame", type=int, default=0, help="which frame of GEOMETRY (default 0)")
    p.add_argument("--relax", action="store_true", help="relax the geometry with the model first (ASE BFGS)")
    p.add_argument("--fmax", type=float, default=vibrations.RELAX_FMAX,
                   help=f"relaxation threshold on the largest force, eV/Å (default {vibrations.RELAX_FMAX:g})")
    p.add_argument("--steps", type=int, default=vibrations.RELAX_STEPS, help="relaxation steps at most")
    p.add_argument("-o", "--output", default="vibrations.npz",
                   help="frequencies, modes, Hessian and geometry (default vibrations.npz)")
    p.set_defaults(func=cmd_vibrations)
    p = sub.add_parser("info", help="describe a model or dataset file")
    p.add_argument("file")
    p.set_defaults(func=cmd_info)
    compiler_cli.add_commands(sub)
    return parser


def main(argv=None):
    """The gdmlc command; returns the exit code (2: a user's mistake, 1: a bug in gdmlc)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error argparse has printed
        return exc.code if isinstance(exc.code, int) else 0
    return compiler_cli.run(args)


if __name__ == "__main__":
    sys.exit(main())
