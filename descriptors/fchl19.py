"""FCHL19 (Christensen, Bratholm, Faber, von Lilienfeld, J. Chem. Phys. 152, 044107 (2020)): the
two-body and three-body terms as one vector per atom, in the order of qmllib's generate_fchl19
with its default parameters and elements [1, 6, 7, 8].  The terms and their formulas are
descriptors/fchl19_two_body.py and fchl19_three_body.py."""
from compiler.dsl import combine
from descriptors.fchl19_three_body import fchl19_three_body
from descriptors.fchl19_two_body import fchl19_two_body

# sigmas: radial_g2's grid scaled by the median distance between ethanol frames' vectors (0.91 here, 1.9 there)
fchl19 = combine(fchl19_two_body, fchl19_three_body, name="fchl19", sigmas=[0.5, 1, 1.5, 2, 2.5, 3.5, 4.5, 7, 9])
