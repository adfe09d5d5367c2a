"""A valid descriptor that is not symmetric in its two atoms (zi / r_ij)."""
from compiler.dsl import descriptor, norm


@descriptor(over="pairs")
def charge_of_first(ri, rj, zi):
    return zi / norm(ri - rj)
