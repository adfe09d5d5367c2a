"""DSL functions for tests/test_compiler_numerics.py: cutoffs, 0/0 kernels, descriptors
that ignore positions, and parameters named like the compiler's own names."""
from compiler.dsl import descriptor, dot, exp, kernel, log, norm, sin, sqdist, where

RC = 2.0


@descriptor(over="pairs", params={"rc": RC})
def cutoff(ri, rj, rc):
    x = norm(ri - rj) / rc
    return where(x < 1, (1 - x) ** 1.5, 0)


@descriptor(over="pairs")
def log_shifted(ri, rj):
    return log(norm(ri - rj) - 1.5)  # NaN for atoms closer than 1.5


@descriptor(over="pairs")
def same_atom(ri, rj):
    return norm(ri - ri)


@descriptor(over="pairs")
def constant(ri, rj):
    return 1.0


@descriptor(over="pairs")
def charges_only(ri, rj, zi, zj):
    return zi * zj


@kernel
def gaussian(d, dp, sigma):
    return exp(-sqdist(d, dp) / (2 * sigma * sigma))


@kernel
def sinc_gauss(d, dp, sigma):
    r = norm(d - dp) / sigma
    return sin(r) / r * exp(-r * r)  # 0/0 at d = dp, limit 1


@kernel
def divergent(d, dp, sigma):
    r = norm(d - dp) / sigma
    return exp(-r) / r


@kernel
def no_hyper(d, dp):
    return exp(-sqdist(d, dp) / 200.0)


@kernel
def two_scales(d, dp, ell, w):
    return exp(-sqdist(d, dp) / (2 * ell * w))


# The same descriptor and kernel twice: parameters with plain names, and named like
# what the generated code uses internally.
@descriptor(over="pairs", params={"a": 1.7, "b": 0.8, "c": 0.3, "e": 1.1, "f": 0.5, "h": 0.05})
def plain_names(ri, rj, a, b, c, e, f, h):
    r = norm(ri - rj)
    return exp(-r / a) * b / r + c * r + e / (r + f) + h * r * r


@descriptor(over="pairs", params={"ri_0": 1.7, "rj_2": 0.8, "math": 0.3, "params": 1.1, "t0": 0.5,
                                  "value": 0.05})
def internal_names(ri, rj, ri_0, rj_2, math, params, t0, value):
    r = norm(ri - rj)
    return exp(-r / ri_0) * rj_2 / r + math * r + params / (r + t0) + value * r * r


@kernel
def plain_hyper(x, y, sigma, a=1.3, b=0.7, c=0.9, e=1.1, f=0.6, h=1.2, k=0.8, m=0.5, n=1.4, p=0.3, u=0.2):
    q = sqdist(x, y) / (2 * sigma * sigma)
    return a * exp(-q * c) + b * exp(-q * e) * f + h * dot(x, y) / (k + 1) + m * n * exp(-q) + p * u * q


@kernel
def internal_hyper(x, y, sigma, g_s=1.3, g_t=0.7, t0=0.9, c0=1.1, v0=0.6, math=1.2, hyper=0.8, np=0.5, d=1.4, s=0.3, t=0.2):
    q = sqdist(x, y) / (2 * sigma * sigma)
    return g_s * exp(-q * t0) + g_t * exp(-q * c0) * v0 + math * dot(x, y) / (hyper + 1) + np * d * exp(-q) + s * t * q
