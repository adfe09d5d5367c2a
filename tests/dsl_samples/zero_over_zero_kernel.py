"""A positive definite kernel whose value is 0/0 at d = dp as written (runtime NaN-guard tests).

(1 - exp(-r^2)) / r^2 = integral_0^1 exp(-t r^2) dt is a mixture of Gaussians (positive
definite) and tends to 1 at r = 0, but evaluated as written it is 0/0 there: the energy rows
of joint energy+force training need exactly that value."""
from compiler.dsl import exp, kernel, norm


@kernel
def gaussian_mixture_0_over_0(d, dp, sigma):
    r = norm(d - dp) / sigma
    return (1.0 - exp(-r * r)) / (r * r)
