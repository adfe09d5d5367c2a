"""Shared set-up for the compiler tests: JAX in float64, the DSL sample folder."""
from pathlib import Path

import jax
import pytest

jax.config.update("jax_enable_x64", True)

DSL_SAMPLES = Path(__file__).resolve().parent / "dsl_samples"


@pytest.fixture
def dsl_samples():
    """tests/dsl_samples: small DSL files (valid and deliberately broken ones)."""
    return DSL_SAMPLES
