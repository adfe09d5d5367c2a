"""Matérn 3/2 kernel: twice differentiable, rougher than Matérn 5/2."""
from compiler.dsl import exp, kernel, norm, sqrt


@kernel
def matern32(d, dp, sigma):
    r = sqrt(3.0) * norm(d - dp) / sigma
    return (1.0 + r) * exp(-r)
