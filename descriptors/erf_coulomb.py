"""erf-screened inverse distances erf(r_ij / a) / r_ij: the long-range (smooth) part of 1/r in
an Ewald split, finite (2 / (a sqrt(pi))) as r_ij -> 0.  It demonstrates adding a primitive:
erf is one row of the rule table (compiler/middle/primitives.py) plus its DSL name, nothing else."""
from compiler.dsl import descriptor, erf, norm


@descriptor(over="pairs", params={"a": 1.0}, sigmas=[10, 15, 20, 25, 30, 40, 50, 60, 70, 80, 90])
def erf_coulomb(ri, rj, a):
    r = norm(ri - rj)
    return erf(r / a) / r
