"""Math functions for generated Numba code that LLVM can vectorise.

``math.exp`` compiles to a call into libm, which LLVM cannot vectorise without a vector
math library (Numba's SVML support needs Intel's patched LLVM, absent from the pip wheels),
so every loop containing an exp runs one element at a time.  ``vexp`` is exp written in
arithmetic LLVM vectorises: range reduction x = k ln 2 + r (Cody-Waite, ln 2 in two parts),
a degree-13 Taylor polynomial for exp(r) on |r| <= ln 2 / 2 (truncation error below 5e-18
relative), and 2^k built from its IEEE bits in two factors so that subnormal results stay
right.  Overflow gives inf, underflow 0, NaN stays NaN; elsewhere it agrees with libm's exp
to a few units in the last place (tests/test_numba_math.py).
"""
import math

from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

LOG2_E = 1.4426950408889634
LN2_HI = 6.93147180369123816490e-01  # ln 2 = LN2_HI + LN2_LO; k * LN2_HI is exact for |k| < 2^11
LN2_LO = 1.90821492927058770002e-10
EXP_OVERFLOW = 709.782712893384     # exp(x) > largest double above this
EXP_UNDERFLOW = -745.1332191019412  # exp(x) rounds to 0 below this
# 1/n!: coefficients of the Taylor polynomial of exp
C2, C3, C4, C5, C6, C7 = (1.0 / math.factorial(n) for n in range(2, 8))
C8, C9, C10, C11, C12, C13 = (1.0 / math.factorial(n) for n in range(8, 14))


@intrinsic
def _double_from_bits(typingctx, bits):
    """The float64 whose IEEE 754 bit pattern is the int64 ``bits`` (an LLVM bitcast)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@njit(cache=True, error_model="numpy")
def _power_of_two(k):
    """2.0 ** k for an integer-valued float k in [-1022, 1023], from its exponent bits."""
    return _double_from_bits((int(k) + 1023) << 52)


@njit(cache=True, error_model="numpy")
def vexp(x):
    """exp(x), vectorisable (see the module docstring)."""
    xc = min(max(x, -746.0), 710.0)  # keeps k in range; the selects at the end restore inf/0/nan
    k = math.floor(xc * LOG2_E + 0.5)
    r = (xc - k * LN2_HI) - k * LN2_LO
    p = ((((((((((((C13 * r + C12) * r + C11) * r + C10) * r + C9) * r + C8) * r + C7) * r + C6) * r + C5)
               * r + C4) * r + C3) * r + C2) * r + 1.0) * r + 1.0
    half = math.floor(k * 0.5)  # 2^k = 2^half * 2^(k - half): both factors normal down to k = -1076
    y = p * _power_of_two(half) * _power_of_two(k - half)
    y = math.inf if x > EXP_OVERFLOW else y
    y = 0.0 if x < EXP_UNDERFLOW else y
    return x if x != x else y
