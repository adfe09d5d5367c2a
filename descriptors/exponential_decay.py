"""Exponentially decaying distances exp(-r_ij / r0): bounded, smooth features."""
from compiler.dsl import descriptor, exp, norm


@descriptor(over="pairs", params={"r0": 1.0}, sigmas=[0.5, 1, 1.5, 2, 3, 4, 6, 8, 10])
def exponential_decay(ri, rj, r0):
    return exp(-norm(ri - rj) / r0)
