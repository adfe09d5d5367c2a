"""The descriptor and kernel library, written in the gdmlc DSL (one entry per file).

Nothing here is differentiated by hand: the compiler derives every Jacobian
and kernel derivative.
"""
