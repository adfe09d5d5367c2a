"""Gaussian (squared-exponential) kernel."""
from compiler.dsl import exp, kernel, sqdist


@kernel
def gaussian(d, dp, sigma):
    return exp(-sqdist(d, dp) / (2.0 * sigma ** 2))
