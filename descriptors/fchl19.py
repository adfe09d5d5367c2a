"""FCHL19 (Christensen, Bratholm, Faber, von Lilienfeld, J. Chem. Phys. 152, 044107 (2020)): the
two-body and three-body terms as one vector per atom, in the order of qmllib's generate_fchl19
with its default parameters and elements [1, 6, 7, 8].  The terms and their formulas are
descriptors/fchl19_two_body.py and fchl19_three_body.py."""
from compiler.dsl import combine
from descriptors.fchl19_three_body import fchl19_three_body
from descriptors.fchl19_two_body import fchl19_two_body

# sigmas: for the local kernel (the default for a vector per atom), around the best sigma for rMD17 ethanol
# at M = 100 with the Gaussian kernel (4; benchmarks/RESULTS.md, local kernels).  A global kernel
# (--global) compares whole molecules and wants larger ones: 25 and above at M = 200.
fchl19 = combine(fchl19_two_body, fchl19_three_body, name="fchl19", sigmas=[1, 2, 3, 4, 6, 8, 12, 16])
