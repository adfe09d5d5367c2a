"""``gdmlc compile`` and ``gdmlc check``: the compiler's command-line face."""
from __future__ import annotations

import sys
import time
import traceback

import numpy as np

from compiler.build.compiled import compile_descriptor, compile_kernel, compile_model
from compiler.dsl import Combination
from compiler.errors import CompileError
from compiler.library import DEFAULT_DESCRIPTOR, DEFAULT_KERNEL, load_file, resolve
from compiler.build.verify import TOLERANCE, check_model

EXAMPLE_ATOMS = 9  # feature counts are printed for a 9-atom molecule (ethanol)

# What a user's input can cause: bad files, data, DSL, options, a full disk or a read-only folder,
# an unsolvable training set.  Everything else is a bug in gdmlc and keeps its traceback.
USER_ERRORS = (ValueError, SyntaxError, CompileError, OSError, MemoryError, np.linalg.LinAlgError)


def run(args):
    """Run a parsed command: a user's mistake is one line `gdmlc: error: ...` and exit code 2;
    a bug prints its traceback and exits with 1."""
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        print(f"gdmlc: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gdmlc: interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print("gdmlc: internal error: this is a bug in gdmlc; please report it with the traceback above",
              file=sys.stderr)
        return 1


def one_line(exc):
    """An exception's message on one line (its type when it has none)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def add_commands(sub):
    p = sub.add_parser("compile", help="compile every descriptor/kernel in a DSL file and report")
    p.add_argument("file", help="Python file with @descriptor / @kernel functions")
    p.set_defaults(func=cmd_compile)
    p = sub.add_parser("check", help="compare every generated entry point with JAX on random geometries")
    p.add_argument("file")
    p.add_argument("--descriptor", help="check only this descriptor (a name in FILE or a library name)")
    p.add_argument("--kernel", help="check only this kernel (a name in FILE or a library name)")
    p.add_argument("--atoms", type=int, default=6, help="atoms in the random geometries (default 6)")
    p.add_argument("--trials", type=int, default=3, help="random geometry pairs (default 3)")
    p.set_defaults(func=cmd_check)


def _entries(path):
    try:
        entries = load_file(path)
    except (ValueError, SyntaxError, OSError):
        raise
    except Exception as exc:  # the user's module failed while being imported
        raise ValueError(f"{path}: importing it raised {type(exc).__name__}: {exc}") from None
    if not entries:
        raise ValueError(f"{path} defines no @descriptor or @kernel function")
    return entries


def cmd_compile(args):
    entries = _entries(args.file)
    descs = [e for e in entries.values() if e.kind == "descriptor"]
    kerns = [e for e in entries.values() if e.kind == "kernel"]
    for dsl in descs:
        if isinstance(dsl, Combination):
            c = compile_descriptor(dsl)  # its parts are reported on their own
            print(f"descriptor {c.name} = combine({', '.join(p.name for p in c.parts)}) ({dsl.filename})")
            print(f"  features           {c.n_channels} per atom "
                  f"({' + '.join(str(p.n_channels) for p in c.parts)}), {c.n_features(EXAMPLE_ATOMS)} for "
                  f"{EXAMPLE_ATOMS} atoms")
            continue
        start = time.perf_counter()
        c = compile_descriptor(dsl)
        c.values(_demo_geometry(EXAMPLE_ATOMS), z=_demo_numbers(c, EXAMPLE_ATOMS))  # triggers Numba compilation
        before, after = c.metadata["descriptor_ops"]
        print(f"descriptor {c.name} ({dsl.filename}:{c.ir.source.first_line})")
        blocks = c.layout.n_blocks(c.over)
        print(f"  index space        {c.over}, {c.params.shape[0]} channel(s)"
              + (f" x {blocks} element block(s) of {', '.join(f'{e:g}' for e in c.layout.elements)}"
                 if c.layout.elements else "")
              + (f", cutoff {c.layout.cutoff:g} Å" if c.layout.cutoff is not None else ""))
        print(f"  features           {c.n_features(EXAMPLE_ATOMS)} for {EXAMPLE_ATOMS} atoms "
              f"({c.over.feature_formula} x {c.n_channels})")
        print(f"  Jacobian nonzeros  {3 * c.slots(EXAMPLE_ATOMS)} per row "
              f"({c.slots(EXAMPLE_ATOMS)} atoms x 3)")
        print(f"  ops (term + grad)  {before} -> {after} after simplification")
        for note in c.metadata.get("descriptor_notes", []):
            print(f"  note               {note}")
        print(f"  atom-swap symmetric {c.symmetric}")
        print(f"  generated          {c.module_path}  ({time.perf_counter() - start:.2f} s)")
    for dsl in kerns:
        start = time.perf_counter()
        c = compile_kernel(dsl)
        c.coefficients(1.0, 1.0, **{h: 1.0 for h in c.hyper_names})
        meta = c.metadata
        terms = [k for k, v in meta["present"].items() if v]
        print(f"kernel {c.name} ({dsl.filename}:{c.ir.source.first_line})")
        print(f"  hyperparameters    {', '.join(c.hyper_names)}")
        print(f"  depends on         {' and '.join(meta['uses'])}  (s = |d - dp|^2, t = d . dp)")
        print(f"  Hessian structure  identity + rank-one terms from {', '.join(terms)}")
        print(f"  ops (value)        {meta['kernel_value_ops'][0]} -> {meta['kernel_value_ops'][1]}")
        print(f"  ops (derivatives)  {meta['kernel_ops'][0]} -> {meta['kernel_ops'][1]} after simplification")
        for note in meta.get("kernel_notes", []):
            print(f"  note               {note}")
        for note in meta["guards"]:
            print(f"  at d = dp          {note}")
        print(f"  generated          {c.module_path}  ({time.perf_counter() - start:.2f} s)")
    for d in descs:
        for k in kerns:
            start = time.perf_counter()
            m = compile_model(d, k)
            print(f"model {d.name} x {k.name}: {m.module_path}  ({time.perf_counter() - start:.2f} s)")
    return 0


def _demo_geometry(n):
    from compiler.build.verify import random_geometry
    import numpy as np

    return random_geometry(np.random.default_rng(0), n)


def _demo_numbers(descriptor, n):
    """Carbon atoms, or the first of the descriptor's declared elements."""
    elements = descriptor.layout.elements if descriptor.layout else ()
    return [elements[0] if elements else 6] * n


def _pick(entries, name, kind, default):
    if name:
        if name in entries and entries[name].kind != kind:
            raise ValueError(f"--{kind} {name}: {name} is a {entries[name].kind}, not a {kind}")
        if name in entries:
            return [entries[name]]
        try:
            return [resolve(name, kind)]
        except TypeError as exc:  # a library kernel named as a descriptor, or vice versa
            raise ValueError(f"--{kind} {name}: {exc}") from None
    found = [e for e in entries.values() if e.kind == kind]
    return found or [resolve(default, kind)]


def cmd_check(args):
    if args.atoms < 2 or args.trials < 1:
        raise ValueError(f"--atoms must be at least 2 and --trials at least 1 (got {args.atoms}, {args.trials})")
    entries = _entries(args.file)
    descs = _pick(entries, args.descriptor, "descriptor", DEFAULT_DESCRIPTOR)
    kerns = _pick(entries, args.kernel, "kernel", DEFAULT_KERNEL)
    worst = 0.0
    for d in descs:
        for k in kerns:
            print(f"{d.name} x {k.name}: {args.trials} random geometries of {args.atoms} atoms vs JAX")
            notes = {}
            errors = check_model(compile_model(d, k), n_atoms=args.atoms, trials=args.trials, notes=notes)
            for name, err in errors.items():
                flag = "ok" if err <= TOLERANCE else "FAIL"
                print(f"  {name:42s} max rel. error {err:9.2e}  {flag}")
                if name in notes:
                    print(f"  {'':42s} {notes[name]}")
                worst = max(worst, err)
    verdict = "passed" if worst <= TOLERANCE else "FAILED"
    print(f"{verdict}: largest relative error {worst:.2e} (tolerance {TOLERANCE:g})")
    return 0 if worst <= TOLERANCE else 1


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(prog="gdmlc")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
