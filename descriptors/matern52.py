"""Matérn 5/2 kernel, sGDML's base kernel."""
from compiler.dsl import exp, kernel, norm, sqrt


@kernel
def matern52(d, dp, sigma):
    r = sqrt(5.0) * norm(d - dp) / sigma
    return (1.0 + r + r * r / 3.0) * exp(-r)
