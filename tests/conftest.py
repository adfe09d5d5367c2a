"""Shared test set-up: JAX in float64, the DSL sample folder, the rMD17 data folder."""
from pathlib import Path

import jax
import pytest

jax.config.update("jax_enable_x64", True)

DSL_SAMPLES = Path(__file__).resolve().parent / "dsl_samples"
# rMD17 reference data beside the checkout (absent on a user's fresh clone: tests skip)
RMD17_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "rmd17"


@pytest.fixture
def dsl_samples():
    """tests/dsl_samples: small DSL files (valid and deliberately broken ones)."""
    return DSL_SAMPLES
