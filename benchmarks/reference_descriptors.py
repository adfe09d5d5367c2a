"""The library's ACSF and FCHL19 terms on ethanol: compile time and descriptor + Jacobian time.

    python -m benchmarks.reference_descriptors [--frames 1000] [--repeats 3]

For each term (acsf_g2, acsf_g4, fchl19_two_body, fchl19_three_body):
- first compile: a fresh subprocess on an empty GDMLC_GENERATED_DIR, compile_descriptor and the
  first evaluate of one frame (parsing, AD, sympy, code generation, Numba JIT); cached: a second
  subprocess on the same directory (benchmarks/startup.py's pairs);
- evaluate: CompiledDescriptor.evaluate (values and sparse Jacobian) on M ethanol frames, warmed up.
Beside them, the peers on the same frames, one geometry per call as their APIs take them:
qmllib's generate_fchl19(gradients=True) (both terms and gradients at once) and dscribe's
ACSF.create (values only: dscribe has no analytic ACSF derivatives).
Every number is the median of ``repeats`` runs.
"""
from __future__ import annotations

import argparse
import time
from statistics import median

import numpy as np

from benchmarks.datasets import FALLBACK_DATA
from benchmarks.startup import first_and_cached

TERMS = ("acsf_g2", "acsf_g4", "fchl19_two_body", "fchl19_three_body")

COMPILE_CHILD = r"""
import json, sys, time
import numpy as np
t0 = time.perf_counter()
import compiler
d = np.load(sys.argv[1])
desc = compiler.compile_descriptor(sys.argv[2])
desc.evaluate(d["R"][:1], d["z"])
print("REFDESC " + json.dumps({"compile_s": time.perf_counter() - t0, "built_now": bool(desc.built_now)}))
"""


def timed(fn, repeats):
    """Median wall time of ``repeats`` calls of fn()."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return median(times)


def compile_times(term, R, z, repeats):
    first, cached, _ = first_and_cached(COMPILE_CHILD, {"R": R[:1], "z": z}, [term], repeats, "REFDESC",
                                        lambda *a: None, retry_invalid=False)
    return median(r["compile_s"] for r in first), median(r["compile_s"] for r in cached)


def peer_times(R, z, repeats):
    import ase
    from dscribe.descriptors import ACSF
    from qmllib.representations import generate_fchl19

    from descriptors import acsf_g2, acsf_g4
    acsf = ACSF(r_cut=acsf_g2.RC, g2_params=list(zip(acsf_g2.ETA, acsf_g2.RS)),
                g4_params=list(zip(acsf_g4.ETA, acsf_g4.ZETA, acsf_g4.LAMBDA)), species=acsf_g2.ELEMENTS)
    atoms = [ase.Atoms(numbers=z, positions=x) for x in R]
    return {"qmllib generate_fchl19(gradients=True), both terms":
            timed(lambda: [generate_fchl19(z, x, elements=[1, 6, 7, 8], gradients=True) for x in R], repeats),
            "dscribe ACSF.create (G1+G2+G4 values, no Jacobian)":
            timed(lambda: [acsf.create(a) for a in atoms], repeats)}


def main(argv=None):
    import compiler
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    data = np.load(FALLBACK_DATA)
    R, z = data["R"][:args.frames], data["z"].astype(int)
    print(f"ethanol ({FALLBACK_DATA.name}), M = {len(R)} frames, median of {args.repeats}")
    print(f"{'term':20s} {'features':>8s} {'first compile s':>16s} {'cached s':>9s} {'D + J s':>9s} {'us/frame':>9s}")
    for term in TERMS:
        first, cached = compile_times(term, R, z, args.repeats)
        desc = compiler.compile_descriptor(term)
        desc.evaluate(R[:2], z)
        seconds = timed(lambda: desc.evaluate(R, z), args.repeats)
        print(f"{term:20s} {desc.n_features(R.shape[1]):8d} {first:16.2f} {cached:9.2f} {seconds:9.3f} "
              f"{1e6 * seconds / len(R):9.1f}")
    for name, seconds in peer_times(R, z, args.repeats).items():
        print(f"peer: {name}: {seconds:.3f} s ({1e6 * seconds / len(R):.1f} us/frame)")


if __name__ == "__main__":
    main()
