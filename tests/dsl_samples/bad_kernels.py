"""Kernels outside the DSL subset: each one's offending line is marked `# <- error`."""
from compiler.dsl import dot, exp, kernel, norm, sqdist


@kernel
def norm_of_d(d, dp, sigma):
    return exp(-norm(d) / sigma)  # <- error


@kernel
def hyper_named_s(d, dp, s):  # <- error
    return exp(-sqdist(d, dp) / s)


@kernel
def hyper_named_t(d, dp, t):  # <- error
    return exp(-sqdist(d, dp) / t)


@kernel
def vector_arithmetic(d, dp, sigma):
    return dot(2.0 * d, dp) / sigma  # <- error


@kernel
def self_dot(d, dp, sigma):
    return dot(d, d) / sigma  # <- error
