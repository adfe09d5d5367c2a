"""FCHL19's three-body term: radial Gaussians of the mean distance times a Fourier series in
the angle, weighted by an Axilrod–Teller–Muto factor, per unordered neighbour-element pair.

A. S. Christensen, L. A. Bratholm, F. A. Faber, O. A. von Lilienfeld, J. Chem. Phys. 152,
044107 (2020) (FCHL19), three-body term; transcribed from qmllib 1.2's ``generate_fchl19``
(representations/facsf.f90, ``fgenerate_fchl_acsf``) with its default parameters:

    G3_i[(a, b), l, o, cs] = sum_{j < k; j, k != i; {Z_j, Z_k} = {a, b}}
        exp(-eta3 ((r_ij + r_ik) / 2 - Rs_l)^2) f_c(r_ij) f_c(r_ik)
        * w (1 + 3 cos_i cos_j cos_k) / (r_ij r_ik r_jk)^decay
        * 2 exp(-(zeta o)^2 / 2) {cos(o theta_i), sin(o theta_i)},
    theta_i = angle j-i-k, cos_i/j/k the cosines of the triangle's angles at i, j, k,
    f_c(r) = (cos(pi r / acut) + 1) / 2 for r < acut, else 0,
    w = sqrt(eta3 / pi) * three_body_weight (qmllib's normalisation, generate_fchl19),
    Rs_l = l acut / nRs3 (l = 1 .. nRs3 = 20), o = 1 (nFourier = 1), eta3 = 2.7,
    zeta = pi, acut = 8 Å, decay = 0.57, three_body_weight = 13.4.

Channels: qmllib's order within an element pair's block, radial l major and the Fourier
pair (cos, sin) fastest: channel 2 (l - 1) + s, with s = 0 for cos (FOURIER_COS = 1,
FOURIER_SIN = 0) and s = 1 for sin.  Element pairs are ordered (0,0), (0,1), ..., (3,3),
as qmllib's.  The cutoff gates r_ij and r_ik only (r_jk is not cut, as in qmllib).
"""
import numpy as np

from compiler.dsl import arccos, cos, descriptor, dot, exp, norm, pi, sin, where

ELEMENTS = [1, 6, 7, 8]
N_RS3, ACUT, ETA3 = 20, 8.0, 2.7
RS3_GRID = [float(r) for r in np.linspace(0.0, ACUT, 1 + N_RS3)[1:]]  # qmllib's grid, bit for bit
RS3 = [r for r in RS3_GRID for _ in range(2)]       # each radial function twice: cos, then sin
FOURIER_COS = [1.0, 0.0] * N_RS3
FOURIER_SIN = [0.0, 1.0] * N_RS3
WEIGHT = float(np.sqrt(ETA3 / np.pi) * 13.4)         # as generate_fchl19 scales three_body_weight

# sigmas: radial_g2's grid times 0.25, as the median distance between two ethanol frames' feature
# vectors is 0.44 here (radial_g2: 1.95)


@descriptor(over="neighbour_pairs",
            params={"rs": RS3, "fourier_cos": FOURIER_COS, "fourier_sin": FOURIER_SIN, "order": 1.0,
                    "eta3": ETA3, "zeta": pi, "acut": ACUT, "decay": 0.57, "weight": WEIGHT},
            elements=ELEMENTS, cutoff=ACUT, sigmas=[0.25, 0.5, 0.75, 1, 1.5, 2, 2.5, 3.75, 5])
def fchl19_three_body(ri, rj, rk, rs, fourier_cos, fourier_sin, order, eta3, zeta, acut, decay, weight):
    rij = norm(rj - ri)
    rik = norm(rk - ri)
    rjk = norm(rk - rj)
    cos_i = dot(rj - ri, rk - ri) / (rij * rik)
    cos_j = dot(ri - rj, rk - rj) / (rij * rjk)
    cos_k = dot(ri - rk, rj - rk) / (rik * rjk)
    angle = arccos(cos_i)
    fij = where(rij < acut, 0.5 * (cos(pi * rij / acut) + 1.0), 0.0)
    fik = where(rik < acut, 0.5 * (cos(pi * rik / acut) + 1.0), 0.0)
    radial = exp(-eta3 * (0.5 * (rij + rik) - rs) ** 2) * fij * fik
    atm = (1.0 + 3.0 * cos_i * cos_j * cos_k) / (rik * rij * rjk) ** decay * weight
    angular = 2.0 * exp(-(zeta * order) ** 2 / 2.0) \
        * (fourier_cos * cos(order * angle) + fourier_sin * sin(order * angle))
    return angular * radial * atm
