"""Behler–Parrinello radial symmetry function G2, element-resolved, with a cosine cutoff.

J. Behler, J. Chem. Phys. 134, 074106 (2011), the radial function G2 with the cosine cutoff:

    G2_i[e, c] = sum_{j != i, Z_j = e} exp(-eta_c (r_ij - rs_c)^2) f_c(r_ij),
    f_c(r) = (cos(pi r / rc) + 1) / 2 for r < rc, else 0,          rc = 6 Å.

The same function as dscribe's ``ACSF(r_cut=6.0, g2_params=[[eta, rs], ...])`` (ext/acsf.cpp,
``compute_g2``), less dscribe's G1 (the plain cutoff sum) which is not modelled here.
Features: (atom i, element of j in ELEMENTS, channel c).

Parameters (Å^-2, Å), Behler 2011's two kinds of radial function: four centred
(rs = 0, eta from nearly flat to the first shell) and four shifted (eta = 1, rs over the
bonded and next-nearest shells).
"""
from compiler.dsl import cos, descriptor, exp, norm, pi, where

RC = 6.0
ELEMENTS = [1, 6, 7, 8]
ETA = [0.01, 0.03, 0.1, 0.3, 1.0, 1.0, 1.0, 1.0]
RS = [0.0, 0.0, 0.0, 0.0, 1.0, 1.5, 2.0, 3.0]

# sigmas: radial_g2's grid times 1, as the median distance between two ethanol frames' feature
# vectors is 1.63 here (radial_g2: 1.95)


@descriptor(over="neighbours", params={"eta": ETA, "rs": RS, "rc": RC}, elements=ELEMENTS, cutoff=RC,
            sigmas=[1, 2, 3, 4, 6, 8, 10, 15, 20])
def acsf_g2(ri, rj, eta, rs, rc):
    r = norm(rj - ri)
    cutoff = where(r < rc, 0.5 * (cos(pi * r / rc) + 1.0), 0.0)
    return exp(-eta * (r - rs) ** 2) * cutoff
