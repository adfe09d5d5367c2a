"""FCHL19's two-body term: log-normal radial functions per neighbour element.

A. S. Christensen, L. A. Bratholm, F. A. Faber, O. A. von Lilienfeld, J. Chem. Phys. 152,
044107 (2020) (FCHL19), two-body term; transcribed from qmllib 1.2's ``generate_fchl19``
(representations/facsf.f90, ``fgenerate_fchl_acsf``) with its default parameters:

    G2_i[e, n] = sum_{j != i, Z_j = e} 1 / (sigma_ij sqrt(2 pi) Rs_n)
                 exp(-(ln Rs_n - mu_ij)^2 / (2 sigma_ij^2)) f_c(r_ij) / r_ij^decay,
    mu_ij = ln(r_ij / sqrt(1 + eta2 / r_ij^2)),   sigma_ij^2 = ln(1 + eta2 / r_ij^2),
    f_c(r) = (cos(pi r / rcut) + 1) / 2 for r < rcut, else 0,
    Rs_n = n rcut / nRs2 (n = 1 .. nRs2 = 24), eta2 = 0.32, rcut = 8 Å, decay = 1.8.

qmllib adds each pair i < j to both atoms' rows: the same as the sum over j != i here.
Features: (atom i, element of j in ELEMENTS, radial channel n) = qmllib's columns
[e * 24 + n] of a row.
"""
import numpy as np

from compiler.dsl import cos, descriptor, exp, log, norm, pi, sqrt, where

ELEMENTS = [1, 6, 7, 8]
N_RS2, RCUT = 24, 8.0
RS2 = [float(r) for r in np.linspace(0.0, RCUT, 1 + N_RS2)[1:]]  # qmllib's grid, bit for bit

# sigmas: radial_g2's grid times 0.4, as the median distance between two ethanol frames' feature
# vectors is 0.78 here (radial_g2: 1.95)


@descriptor(over="neighbours", params={"rs": RS2, "eta2": 0.32, "rcut": RCUT, "decay": 1.8},
            elements=ELEMENTS, cutoff=RCUT, sigmas=[0.4, 0.8, 1.2, 1.6, 2.4, 3.2, 4, 6, 8])
def fchl19_two_body(ri, rj, rs, eta2, rcut, decay):
    r = norm(rj - ri)
    mu = log(r / sqrt(1.0 + eta2 / r ** 2))
    sigma = sqrt(log(1.0 + eta2 / r ** 2))
    cutoff = where(r < rcut, 0.5 * (cos(pi * r / rcut) + 1.0), 0.0)
    return 1.0 / (sigma * sqrt(2.0 * pi) * rs) * cutoff * exp(-(log(rs) - mu) ** 2 / (2.0 * sigma ** 2)) \
        / r ** decay
