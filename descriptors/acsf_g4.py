"""Behler–Parrinello angular symmetry function G4, per unordered neighbour-element pair.

J. Behler, J. Chem. Phys. 134, 074106 (2011), the angular function G4 with the cosine cutoff, rc = 6 Å:

    G4_i[(a, b), c] = 2^(1 - zeta_c) sum_{j < k; j, k != i; {Z_j, Z_k} = {a, b}}
                      (1 + lambda_c cos theta_ijk)^zeta_c exp(-eta_c (r_ij^2 + r_ik^2 + r_jk^2))
                      f_c(r_ij) f_c(r_ik) f_c(r_jk),
    cos theta_ijk = (r_ij^2 + r_ik^2 - r_jk^2) / (2 r_ij r_ik).

Behler's G4 sums over all j != k (each unordered pair twice); dscribe, whose
``ACSF(r_cut=6.0, g4_params=[[eta, zeta, lambda], ...])`` this matches (ext/acsf.cpp,
``compute_g4``: k < j, written 2 (0.5 (1 + lambda cos))^zeta), sums each pair once, as here.
Features: (atom i, element pair (a <= b in ELEMENTS, order (0,0), (0,1), ..., (3,3)), channel c).

Parameters: Behler 2011's kind of angular grid, zeta in {1, 4} with lambda = +1 and -1
(maxima at 0° and 180°), at two widths eta (Å^-2).
"""
from compiler.dsl import cos, descriptor, exp, norm, pi, where

RC = 6.0
ELEMENTS = [1, 6, 7, 8]
ETA = [0.01, 0.01, 0.01, 0.01, 0.1, 0.1, 0.1, 0.1]
ZETA = [1.0, 1.0, 4.0, 4.0, 1.0, 1.0, 4.0, 4.0]
LAMBDA = [1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0]

# sigmas: radial_g2's grid times 1.5, as the median distance between two ethanol frames' feature
# vectors is 2.19 here (radial_g2: 1.95)


@descriptor(over="neighbour_pairs", params={"eta": ETA, "zeta": ZETA, "lam": LAMBDA, "rc": RC},
            elements=ELEMENTS, cutoff=RC, sigmas=[1.5, 3, 4.5, 6, 9, 12, 15, 22.5, 30])
def acsf_g4(ri, rj, rk, eta, zeta, lam, rc):
    rij = norm(rj - ri)
    rik = norm(rk - ri)
    rjk = norm(rk - rj)
    cos_theta = (rij ** 2 + rik ** 2 - rjk ** 2) / (2.0 * rij * rik)
    fij = where(rij < rc, 0.5 * (cos(pi * rij / rc) + 1.0), 0.0)
    fik = where(rik < rc, 0.5 * (cos(pi * rik / rc) + 1.0), 0.0)
    fjk = where(rjk < rc, 0.5 * (cos(pi * rjk / rc) + 1.0), 0.0)
    return 2.0 ** (1.0 - zeta) * (1.0 + lam * cos_theta) ** zeta \
        * exp(-eta * (rij ** 2 + rik ** 2 + rjk ** 2)) * fij * fik * fjk
