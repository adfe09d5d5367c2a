"""Comparison helper shared by the tests."""
import numpy as np


def rel(value, reference):
    """max |value - reference| / max |reference| (the plain maximum where the reference is all
    zeros); shapes must match and both must be finite."""
    value, reference = np.asarray(value, float), np.asarray(reference, float)
    assert value.shape == reference.shape, (value.shape, reference.shape)
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(reference))
    scale = np.abs(reference).max()
    return float(np.abs(value - reference).max() / scale) if scale > 0 else float(np.abs(value).max())


def element_resolved(name):
    """Is library descriptor ``name`` element-resolved (``elements=``)?  Those (ACSF, FCHL19) have
    independent peers of their own: tests/test_reference_descriptors.py."""
    from compiler.library import resolve
    found = resolve(name, "descriptor")
    return any(part.layout.elements for part in getattr(found, "parts", (found,)))
