"""Atom-centred symmetry functions: Behler–Parrinello G2 (radial, per neighbour element) and G4
(angular, per neighbour-element pair) as one vector per atom, in dscribe's ACSF order (without its
G1).  The terms and their formulas are descriptors/acsf_g2.py and acsf_g4.py."""
from compiler.dsl import combine
from descriptors.acsf_g2 import acsf_g2
from descriptors.acsf_g4 import acsf_g4

# sigmas: radial_g2's grid scaled by the median distance between ethanol frames' vectors (2.7 here, 1.9 there)
acsf = combine(acsf_g2, acsf_g4, name="acsf", sigmas=[1.5, 3, 4.5, 6, 8, 11, 14, 20, 28])
