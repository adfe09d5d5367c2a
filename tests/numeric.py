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


def ethanol_training_problem(R, z, symmetry_frames, sigma):
    """(gdml, D, JAC, fperms, hyper) of a default model at geometries R, with the 6 permutations of
    ethanol found on ``symmetry_frames`` (the training products tested against it sum over them)."""
    from runtime.model import GDML
    from runtime.symmetry import find_permutations
    gdml = GDML(sigma=sigma, progress=False)
    D, JAC = gdml.backend.evaluate(R, z)
    perms = find_permutations(symmetry_frames, z, progress=False)
    assert len(perms) == 6
    return gdml, D, JAC, gdml.model.feature_permutations(perms, len(z)), gdml._kernel_hyper(sigma)
