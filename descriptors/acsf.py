"""Atom-centred symmetry functions: Behler–Parrinello G2 (radial, per neighbour element) and G4
(angular, per neighbour-element pair) as one vector per atom, in dscribe's ACSF order (without its
G1).  The terms and their formulas are descriptors/acsf_g2.py and acsf_g4.py."""
from compiler.dsl import combine
from descriptors.acsf_g2 import acsf_g2
from descriptors.acsf_g4 import acsf_g4

# sigmas: around and above the best sigma for rMD17 ethanol at M = 200, global kernel (80, the top of the
# grids tried: benchmarks/RESULTS.md, global models with many-body descriptors)
acsf = combine(acsf_g2, acsf_g4, name="acsf", sigmas=[10, 20, 28, 40, 56, 80, 112, 160, 224])
