"""Polynomial dot-product kernel (c + d.dp / sigma^2)^degree."""
from compiler.dsl import dot, kernel


@kernel
def polynomial(d, dp, sigma, c=1.0, degree=2.0):
    return (c + dot(d, dp) / sigma ** 2) ** degree
