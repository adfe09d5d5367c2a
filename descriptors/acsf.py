"""Atom-centred symmetry functions: Behler–Parrinello G2 (radial, per neighbour element) and G4
(angular, per neighbour-element pair) as one vector per atom, in dscribe's ACSF order (without its
G1).  The terms and their formulas are descriptors/acsf_g2.py and acsf_g4.py."""
from compiler.dsl import combine
from descriptors.acsf_g2 import acsf_g2
from descriptors.acsf_g4 import acsf_g4

# sigmas: for the local kernel (the default for a vector per atom), around the best sigma for rMD17 ethanol
# at M = 100 with the Gaussian kernel (8 to 16; benchmarks/RESULTS.md, local kernels).  A global kernel
# (--global) compares whole molecules and wants larger ones: 80 and above at M = 200.
acsf = combine(acsf_g2, acsf_g4, name="acsf", sigmas=[2, 4, 6, 8, 12, 16, 24, 32])
