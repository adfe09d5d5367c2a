"""Targets: spelling the middle's programs as source text.

Numba CPU and Numba CUDA modules (the product), and the jax.numpy lowering that tests
use as the independent reference; each spells expressions from its column of the
primitive table."""
