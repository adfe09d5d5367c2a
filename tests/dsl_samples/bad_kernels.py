"""Kernels outside the DSL subset: each one's offending line is marked `# <- error`."""
from compiler.dsl import dot, exp, kernel, norm


@kernel
def norm_of_d(d, dp, sigma):
    return exp(-norm(d) / sigma)  # <- error


@kernel
def vector_arithmetic(d, dp, sigma):
    return dot(2.0 * d, dp) / sigma  # <- error


@kernel
def self_dot(d, dp, sigma):
    return dot(d, d) / sigma  # <- error
