"""Valid DSL kernels used by tests/test_compiler_ad.py (mixed s/t derivatives)."""
from compiler.dsl import dot, exp, kernel, norm, sin, sqdist


@kernel
def mixed_st(d, dp, sigma, c=0.5):
    return exp(-sqdist(d, dp) / (2.0 * sigma ** 2)) * (c + dot(d, dp) / sigma ** 2) ** 3 \
        + sin(norm(d - dp) * dot(d, dp) / sigma)
