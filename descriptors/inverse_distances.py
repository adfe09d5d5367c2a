"""Inverse interatomic distances, the sGDML descriptor: one feature per atom pair."""
from compiler.dsl import descriptor, norm


@descriptor(over="pairs", sigmas=[10, 15, 20, 25, 30, 40, 50, 60, 70, 80, 90])
def inverse_distances(ri, rj):
    return 1.0 / norm(ri - rj)
