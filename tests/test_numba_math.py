"""compiler/numba_math.vexp against libm's exp (math.exp), the reference it replaces."""
import math

import numpy as np
from numba import njit

from compiler.targets.numba_math import EXP_OVERFLOW, EXP_UNDERFLOW, vexp


@njit(error_model="numpy")
def _vexp_all(x, out):
    for i in range(x.shape[0]):  # the loop shape generated code has: vectorised by LLVM
        out[i] = vexp(x[i])


def _ulps(value, reference):
    return np.abs(value - reference) / np.spacing(np.abs(reference))


def test_vexp_within_two_ulps_of_libm_over_the_whole_range():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(EXP_UNDERFLOW, EXP_OVERFLOW, 200_000),   # all of it
                        rng.uniform(-1.0, 1.0, 100_000),                      # near 1
                        rng.uniform(-745.0, -708.0, 50_000),                  # subnormal results
                        rng.uniform(-40.0, 0.0, 100_000)])                    # kernels' exp(-r)
    out = np.empty_like(x)
    _vexp_all(x, out)
    reference = np.array([math.exp(v) for v in x])
    assert _ulps(out, reference).max() <= 2.0


def test_vexp_edges_and_special_values_match_libm():
    x = np.array([0.0, -0.0, 1e-300, -1e-300, 1.0, -1.0, EXP_OVERFLOW - 1e-9, EXP_OVERFLOW + 1e-9, 710.0, 1e308,
                  EXP_UNDERFLOW + 1e-9, EXP_UNDERFLOW - 1e-9, -746.0, -1e308, np.inf, -np.inf, np.nan])
    out = np.empty_like(x)
    _vexp_all(x, out)
    for v, got in zip(x, out):
        if math.isnan(v):
            assert math.isnan(got)
            continue
        try:
            want = math.exp(v)
        except OverflowError:
            want = math.inf
        if want in (0.0, math.inf) or got in (0.0, math.inf):
            assert got == want, (v, got, want)
        else:
            assert _ulps(np.array([got]), np.array([want]))[0] <= 2.0, (v, got, want)
