"""The ``gdmlc`` command: train, test, predict, info (and compile, check)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from compiler import cli as compiler_cli
from compiler.errors import CompileError, DSLError

from .data import DatasetError, check_force_energy_consistency, load_dataset
from .model import GDML, error_table
from .model_file import ModelFileError

DEFAULT_DATA = Path(__file__).resolve().parent / "default_data" / "ethanol_gfn2xtb_500K.npz"


def parse_sigma(text):
    """'20' -> [20]; '10,20,40' -> list; '10:90:10' -> 10, 20, ..., 90."""
    if text is None:
        return None
    try:
        if ":" in text:
            start, stop, step_ = (float(v) for v in text.split(":"))
            return list(np.arange(start, stop + step_ / 2, step_))
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sigma takes a number, a list 10,20,40 or a range 10:90:10, "
                                         f"not {text!r}") from None


def split_indices(n_frames, n_train, n_valid, n_test, seed):
    needed = n_train + n_valid + n_test
    if n_train < 1:
        raise DatasetError("--n-train must be at least 1")
    if needed > n_frames:
        raise DatasetError(f"n-train + n-valid + n-test = {n_train} + {n_valid} + {n_test} = {needed} "
                           f"is larger than the data ({n_frames} frames)")
    order = np.random.default_rng(seed).permutation(n_frames)
    return order[:n_train], order[n_train:n_train + n_valid], order[n_train + n_valid:needed]


def _units(ds):
    return ds.energy_unit, f"{ds.energy_unit}/{ds.length_unit}"


def print_errors(title, errors, ds, file=None):
    file = file or sys.stdout
    e_unit, f_unit = _units(ds)
    print(f"\n{title}", file=file)
    print(f"  {'':8s} {'MAE':>10s} {'RMSE':>10s}", file=file)
    if "energy_mae" in errors:
        print(f"  {'energy':8s} {errors['energy_mae']:10.4f} {errors['energy_rmse']:10.4f}  {e_unit}", file=file)
    print(f"  {'forces':8s} {errors['force_mae']:10.4f} {errors['force_rmse']:10.4f}  {f_unit}", file=file)


def cmd_train(args):
    start = time.perf_counter()
    data_path = Path(args.data) if args.data else DEFAULT_DATA
    ds = load_dataset(data_path, labels=args.labels)
    print(f"dataset  {data_path}  ({ds.name}, {len(ds)} frames, {ds.n_atoms} atoms, {ds.theory})")
    if args.valid or args.test:
        valid = load_dataset(args.valid, labels=args.labels) if args.valid else None
        test = load_dataset(args.test, labels=args.labels) if args.test else None
        train_idx, _, _ = split_indices(len(ds), args.n_train, 0, 0, args.seed)
        valid_idx = test_idx = np.array([], dtype=int)
        train = ds.subset(train_idx)
        if valid is not None and args.n_valid and args.n_valid < len(valid):
            valid_idx = np.random.default_rng(args.seed + 1).permutation(len(valid))[:args.n_valid]
            valid = valid.subset(valid_idx)
    else:
        n_test = args.n_test if args.n_test is not None else min(1000, len(ds) - args.n_train - args.n_valid)
        train_idx, valid_idx, test_idx = split_indices(len(ds), args.n_train, args.n_valid, max(n_test, 0),
                                                       args.seed)
        train, valid, test = ds.subset(train_idx), ds.subset(valid_idx) if len(valid_idx) else None, \
            ds.subset(test_idx) if len(test_idx) else None
    for other, what in ((valid, "validation"), (test, "test")):
        if other is not None and not np.array_equal(other.z, ds.z):
            raise DatasetError(f"{what} data has species {other.z.tolist()} but training data has {ds.z.tolist()}")
    sigma = parse_sigma(args.sigma)
    model = GDML(descriptor=args.descriptor, kernel=args.kernel, sigma=sigma, lam=args.lam,
                 symmetries=None if args.no_sym else "auto", energy_constraints=args.energy_constraints,
                 device=args.device)
    if args.energy_constraints and train.E is None:
        raise DatasetError(f"--energy-constraints needs energies, but {data_path} has none")
    if valid is None and len(model.sigma_grid) > 1:
        raise DatasetError("choosing sigma needs validation data: --n-valid > 0, --valid FILE, or one --sigma")
    print(f"model    {model.descriptor_dsl.name} x {model.kernel_dsl.name}, sigma grid "
          f"{', '.join(f'{s:g}' for s in model.sigma_grid)}, lambda {model.lam:g}, "
          f"{'no symmetries' if args.no_sym else 'symmetries: auto'}"
          f"{', energy constraints' if args.energy_constraints else ''}")
    print(f"split    train {len(train)}, validation {0 if valid is None else len(valid)}, "
          f"test {0 if test is None else len(test)}")
    model.fit(train.R, train.F, train.E, train.z,
              valid=None if valid is None else (valid.R, valid.F, valid.E))
    for warning in check_force_energy_consistency(train.R, train.E, train.F) if train.E is not None else []:
        print(f"warning: {warning}", file=sys.stderr)
    model.info.update({
        "dataset": str(data_path), "dataset_name": ds.name, "dataset_fingerprint": ds.fingerprint(),
        "theory": ds.theory, "labels": ds.labels, "energy_unit": ds.energy_unit,
        "length_unit": ds.length_unit, "train_indices": train_idx, "valid_indices": valid_idx,
        "test_indices": test_idx, "seed": args.seed,
    })
    print(f"\nsigma    {model.sigma:g} (lambda {model.lam_used:g}), {len(model.perms)} permutation(s)")
    if "validation" in model.info:
        print_errors("validation errors", model.info["validation"], ds)
    if test is not None:
        errors = model.evaluate(test.R, test.F, test.E)
        model.info["test"] = errors
        print_errors(f"test errors ({len(test)} frames)", errors, ds)
    model.info["train_seconds"] = time.perf_counter() - start
    out = Path(args.output)
    model.save(out)
    print(f"\nsaved    {out}  (total {model.info['train_seconds']:.1f} s)")
    return 0


def _training_frames(model, ds):
    """Frames of ``ds`` used in training/validation, when ds is the training dataset."""
    if model.info.get("dataset_fingerprint") != ds.fingerprint():
        return np.array([], dtype=int)
    return np.concatenate([np.asarray(model.info.get(k, []), dtype=int)
                           for k in ("train_indices", "valid_indices")])


def cmd_test(args):
    model = GDML.load(args.model).set_device(args.device)
    ds = load_dataset(args.data, labels=args.labels)
    keep = np.setdiff1d(np.arange(len(ds)), _training_frames(model, ds))
    if args.n and args.n < len(keep):
        keep = np.sort(np.random.default_rng(0).choice(keep, args.n, replace=False))
    ds = ds.subset(keep)
    E_pred, F_pred = model.predict(ds.R)
    errors = error_table(E_pred if model.energy_constant is not None else None, F_pred, ds.E, ds.F)
    print_errors(f"{args.model} on {args.data} ({len(ds)} frames not used in training)", errors, ds)
    if args.plot:
        from .plots import parity_plot
        parity_plot(args.plot, E_pred, F_pred, ds, title=f"{Path(args.model).name} on {ds.name}")
        print(f"plot     {args.plot}")
    return 0


def cmd_predict(args):
    model = GDML.load(args.model).set_device(args.device)
    path = Path(args.geometries)
    if path.suffix == ".npz":
        with np.load(path) as f:
            R = f["R"] if "R" in f.files else f["coords"]
    else:
        import ase.io
        R = np.array([a.get_positions() for a in ase.io.read(path, index=":")])
    E, F = model.predict(R)
    if args.output:
        np.savez(args.output, E=E, F=F, R=R)
        print(f"wrote {args.output}: E {E.shape}, F {F.shape}")
    else:
        unit = model.info.get("energy_unit", "energy units")
        for k, (e, f) in enumerate(zip(np.atleast_1d(E), np.reshape(F, (-1,) + F.shape[-2:]))):
            print(f"frame {k}: E = {e:.6f} {unit}")
            print(np.array2string(f, precision=5, suppress_small=True))
    return 0


def cmd_info(args):
    path = Path(args.file)
    try:
        model = GDML.load(path)
    except ModelFileError:
        ds = load_dataset(path)
        print(f"dataset {path}: {ds.name}, {len(ds)} frames, {ds.n_atoms} atoms z={ds.z.tolist()}, "
              f"theory {ds.theory}, units {ds.energy_unit} / {ds.length_unit}, "
              f"energies {'yes' if ds.E is not None else 'no'}")
        return 0
    info = {k: v for k, v in model.info.items() if not k.endswith("_indices")}
    print(f"model {path}: {model.descriptor_dsl.name} x {model.kernel_dsl.name}, {model.n_atoms} atoms, "
          f"{model.R_train.shape[0]} training geometries, {len(model.perms)} permutation(s), "
          f"sigma {model.sigma:g}, lambda {model.lam_used:g}")
    print(json.dumps(info, indent=2, default=str))
    return 0


def _device_option(p):
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="cuda: CUDA kernels on the GPU (falls back to the CPU, saying why, without one)")


def build_parser():
    parser = argparse.ArgumentParser(prog="gdmlc", description="compiled sGDML-class force fields")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a force field (default: the embedded ethanol data)")
    p.add_argument("data", nargs="?", help="dataset (sGDML/rMD17 npz or extended XYZ); "
                                           "default: embedded GFN2-xTB ethanol at 500 K")
    p.add_argument("--descriptor", default="inverse_distances", help="library name or FILE.py:func")
    p.add_argument("--kernel", default="matern52", help="library name or FILE.py:func")
    p.add_argument("--n-train", type=int, default=200)
    p.add_argument("--n-valid", type=int, default=200)
    p.add_argument("--n-test", type=int, default=None, help="default: up to 1000 of the remaining frames")
    p.add_argument("--valid", help="separate validation dataset file")
    p.add_argument("--test", help="separate test dataset file")
    p.add_argument("--sigma", help="one value, a list 10,20,40 or a range 10:90:10 (default: descriptor's grid)")
    p.add_argument("--lam", type=float, default=1e-10, help="regulariser lambda (default 1e-10)")
    p.add_argument("--no-sym", action="store_true", help="plain GDML: no permutational symmetries")
    p.add_argument("--energy-constraints", action="store_true", help="joint energy+force training (sGDML's E_cstr)")
    p.add_argument("--labels", default="new", choices=["new", "old"], help="rMD17: new (PBE) or old (MD17) labels")
    p.add_argument("--seed", type=int, default=0, help="seed of the random split")
    p.add_argument("-o", "--output", default="model.npz")
    _device_option(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("test", help="errors of a model on a dataset (frames used in training are skipped)")
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("--labels", default="new", choices=["new", "old"])
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
    p = sub.add_parser("info", help="describe a model or dataset file")
    p.add_argument("file")
    p.set_defaults(func=cmd_info)
    compiler_cli.add_commands(sub)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DatasetError, ModelFileError, DSLError, CompileError, ValueError, MemoryError) as exc:
        print(f"gdmlc: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
