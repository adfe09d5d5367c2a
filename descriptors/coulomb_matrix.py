"""Off-diagonal Coulomb-matrix entries z_i z_j / r_ij (Rupp et al. 2012)."""
from compiler.dsl import descriptor, norm


@descriptor(over="pairs", sigmas=[100, 200, 400, 600, 800, 1000, 1500, 2000])
def coulomb_matrix(ri, rj, zi, zj):
    return zi * zj / norm(ri - rj)
