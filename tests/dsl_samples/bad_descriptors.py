"""Descriptors outside the DSL subset: each one's offending line is marked `# <- error`.

tests/test_compiler_errors.py compiles every function here and checks that the
DSLError names this file, the marked line and the construct.
"""
import numpy as np

from compiler.dsl import descriptor, exp, norm, sqrt, where

COUNTER = 0.0


@descriptor(over="pairs")
def for_loop(ri, rj):
    total = 0.0
    for k in range(3):  # <- error
        total = total + k
    return total / norm(ri - rj)


@descriptor(over="pairs")
def while_loop(ri, rj):
    r = norm(ri - rj)
    while r > 1.0:  # <- error
        r = r / 2.0
    return r


@descriptor(over="pairs")
def if_statement(ri, rj):
    r = norm(ri - rj)
    if r > 5.0:  # <- error
        r = 5.0
    return 1.0 / r


@descriptor(over="pairs")
def attribute_call(ri, rj):
    r = norm(ri - rj)
    return np.sqrt(r)  # <- error


@descriptor(over="pairs")
def attribute_access(ri, rj):
    r = norm(ri - rj)
    x = r.real  # <- error
    return x


@descriptor(over="pairs")
def subscript(ri, rj):
    dx = ri[0] - rj[0]  # <- error
    return dx * dx


@descriptor(over="pairs")
def unknown_call(ri, rj):
    r = norm(ri - rj)
    return softplus(r)  # <- error  # noqa: F821


@descriptor(over="pairs")
def recursion(ri, rj):
    r = norm(ri - rj)
    return 1.0 / r + recursion(ri, rj)  # <- error


@descriptor(over="pairs")
def global_statement(ri, rj):
    global COUNTER  # <- error
    COUNTER = COUNTER + 1.0
    return norm(ri - rj)


@descriptor(over="pairs")
def missing_return(ri, rj):  # <- error
    r = norm(ri - rj)
    r = r * 2.0


@descriptor(over="pairs")
def code_after_return(ri, rj):
    r = norm(ri - rj)
    return 1.0 / r
    r = r + 1.0  # <- error


@descriptor(over="pairs")
def tuple_unpacking(ri, rj):
    a, b = norm(ri), norm(rj)  # <- error
    return a * b


@descriptor(over="pairs")
def and_or(ri, rj):
    r = norm(ri - rj)
    y = r or 1.0  # <- error
    return y


@descriptor(over="pairs")
def chained_comparison(ri, rj):
    r = norm(ri - rj)
    return where(0.5 < r < 3.0, r, 0.0)  # <- error


@descriptor(over="pairs")
def comparison_as_number(ri, rj):
    r = norm(ri - rj)
    inside = r < 3.0  # <- error
    return inside * r


@descriptor(over="pairs")
def vector_return(ri, rj):
    d = ri - rj
    return d / norm(d)  # <- error


@descriptor(over="pairs")
def lambda_expression(ri, rj):
    f = lambda x: x * x  # <- error  # noqa: E731
    return norm(ri - rj)


@descriptor(over="pairs")
def string_constant(ri, rj):
    unit = "angstrom"  # <- error
    return norm(ri - rj)


@descriptor(over="pairs")
def parameter_without_value(ri, rj, width):  # <- error
    return exp(-norm(ri - rj) / width)


@descriptor(over="pairs")
def nested_definition(ri, rj):
    def inner(x):  # <- error
        return x
    return sqrt(norm(ri - rj))
