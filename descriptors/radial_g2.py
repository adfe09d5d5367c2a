"""Behler's radial symmetry function G2 with a smooth cosine cutoff.

G2_i = sum_{j != i} exp(-eta (r_ij - rs)^2) f_c(r_ij),
f_c(r) = (cos(pi r / rc) + 1) / 2 for r < rc, else 0.
One feature per atom and per (eta, rs) channel.
"""
from compiler.dsl import cos, descriptor, exp, norm, pi, where

ETA = [4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0]
RS = [0.8, 1.2, 1.6, 2.0, 2.4, 2.8, 3.2, 3.6]


@descriptor(over="neighbours", params={"eta": ETA, "rs": RS, "rc": 5.0},
            sigmas=[1, 2, 3, 4, 6, 8, 10, 15, 20])
def radial_g2(ri, rj, eta, rs, rc):
    r = norm(ri - rj)
    cutoff = 0.5 * (cos(pi * r / rc) + 1.0)
    return where(r < rc, exp(-eta * (r - rs) ** 2) * cutoff, 0.0)
