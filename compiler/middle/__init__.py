"""Middle: what the derivatives are, independent of any target.

The scalar IR and its primitive table, gdmlc's AD, sympy simplification, index spaces,
the kernel's structure algebra and the analysis that turns parsed IR into the programs
the targets spell."""
