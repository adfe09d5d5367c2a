"""The library's ACSF and FCHL19 terms against independent implementations (issue 12, item 4).

Peers (test-only dependencies, pyproject's `test` extra):
- dscribe 2.1 ``ACSF`` (C++, ext/acsf.cpp) for acsf_g2 and acsf_g4: values; it has no analytic
  derivatives, so Jacobians are checked against JAX AD of our lowering (<= 1e-10) and against
  central finite differences of dscribe's values (<= 1e-6: step 1e-4 Å, truncation error ~1e-9).
- qmllib 1.2 ``generate_fchl19`` (Fortran, representations/facsf.f90), called with its default
  parameters and elements=[1, 6, 7, 8], for fchl19_two_body and fchl19_three_body: values and
  its analytic gradients (gradients=True), <= 1e-10.
Geometries: ethanol frames (runtime/default_data) and random H/C/N/O geometries whose atoms lie
on both sides of every cutoff (6 Å ACSF, 8 Å FCHL19).

Feature layouts.  Ours: one row per atom i, then (element block, channel), channels fastest.
- dscribe ACSF row: for each neighbour element e (species order [1, 6, 7, 8]): [G1, G2 channels];
  then for each element pair [G4 channels], the pair of element indices a <= b at block
  its = b (b + 1) / 2 + a (order (0,0), (0,1), (1,1), (0,2), ...; ours: (0,0), (0,1), (0,2), ...).  We do not model G1 (the
  plain cutoff sum): its column is dropped by index, and checked separately against its formula
  so the slicing is known to read the right columns.
- qmllib FCHL19 row: two-body [e * 24 + n] for element e, radial n; then three-body blocks for
  element pairs (0,0), (0,1), ..., (3,3) (our order), each [radial l, (cos, sin)] with
  (cos, sin) fastest: our channels 2 l + s.  Nothing of qmllib's is left out.
"""
from functools import lru_cache
from itertools import combinations

import ase
import dscribe.descriptors as dscribe_descriptors  # the `test` extra: a missing peer fails, never skips
import numpy as np
import pytest
import qmllib.representations as qmllib_representations

import compiler
from compiler.build.verify import TOLERANCE, check_model
from compiler.library import LIBRARY_DESCRIPTORS
from numeric import element_resolved, rel

ELEMENTS = [1, 6, 7, 8]
E = len(ELEMENTS)
VALUE_TOL = 1e-10
FINITE_DIFFERENCE_STEP, FINITE_DIFFERENCE_TOL = 1e-4, 1e-6


@lru_cache(maxsize=None)
def descriptor(name):
    return compiler.compile_descriptor(name)


# --------------------------------------------------------------------------- the peers, in our layout

def dscribe_acsf(R, z):
    """dscribe's ACSF with our G2 and G4 parameters: (atoms, 1 + G2 per element ... G4 per pair)."""
    from descriptors import acsf_g2, acsf_g4
    assert acsf_g2.RC == acsf_g4.RC and acsf_g2.ELEMENTS == acsf_g4.ELEMENTS == ELEMENTS
    acsf = dscribe_descriptors.ACSF(r_cut=acsf_g2.RC, g2_params=list(zip(acsf_g2.ETA, acsf_g2.RS)),
                                    g4_params=list(zip(acsf_g4.ETA, acsf_g4.ZETA, acsf_g4.LAMBDA)),
                                    species=ELEMENTS)
    return acsf.create(ase.Atoms(numbers=np.asarray(z, int), positions=R))


def n_g2():
    from descriptors import acsf_g2
    return len(acsf_g2.ETA)


def dscribe_radial_blocks(out):
    """(atoms, element, 1 + G2 channels): dscribe's radial part."""
    return out[:, :E * (1 + n_g2())].reshape(len(out), E, 1 + n_g2())


def dscribe_g2(out):
    """Our acsf_g2 layout: dscribe's radial part without its G1 column (index 0 of each block)."""
    return dscribe_radial_blocks(out)[:, :, 1:].reshape(-1)


def dscribe_g4(out):
    """Our acsf_g4 layout: dscribe's pair blocks (its = b (b + 1) / 2 + a) in our order a <= b."""
    its = [b * (b + 1) // 2 + a for a in range(E) for b in range(a, E)]
    angular = out[:, E * (1 + n_g2()):]
    return angular.reshape(len(out), len(its), -1)[:, its].reshape(-1)


TWO_BODY_COLUMNS = slice(0, E * 24)       # qmllib's defaults: nRs2 = 24
THREE_BODY_COLUMNS = slice(E * 24, None)  # (E (E + 1) / 2 pairs) * nRs3 (20) * 2 (cos, sin)


def qmllib_fchl19(R, z, gradients=False):
    """generate_fchl19 with its defaults: rep (atoms, 496), and grad (atoms, 496, atoms, 3)."""
    return qmllib_representations.generate_fchl19(np.asarray(z, int), R, elements=ELEMENTS, gradients=gradients)


def qmllib_term(name, R, z):
    """qmllib's values and gradients for one of our FCHL19 terms, in our layout:
    (features,), (features, atoms, 3)."""
    rep, grad = qmllib_fchl19(R, z, gradients=True)
    columns = {"fchl19_two_body": TWO_BODY_COLUMNS, "fchl19_three_body": THREE_BODY_COLUMNS}.get(name, slice(None))
    return rep[:, columns].reshape(-1), grad[:, columns].reshape(-1, *R.shape)


def dscribe_acsf_combined(out):
    """Our acsf (combine(acsf_g2, acsf_g4)): per atom dscribe's G2 part then its G4 part, as above."""
    n = len(out)
    return np.concatenate([dscribe_g2(out).reshape(n, -1), dscribe_g4(out).reshape(n, -1)], axis=1).reshape(-1)


PEER_VALUES = {"acsf_g2": lambda R, z: dscribe_g2(dscribe_acsf(R, z)),
               "acsf_g4": lambda R, z: dscribe_g4(dscribe_acsf(R, z)),
               "fchl19_two_body": lambda R, z: qmllib_term("fchl19_two_body", R, z)[0],
               "fchl19_three_body": lambda R, z: qmllib_term("fchl19_three_body", R, z)[0],
               # the combinations: qmllib's whole FCHL19 vector per atom, as generate_fchl19 returns it
               "acsf": lambda R, z: dscribe_acsf_combined(dscribe_acsf(R, z)),
               "fchl19": lambda R, z: qmllib_fchl19(R, z).reshape(-1)}
CUTOFF = {"acsf_g2": 6.0, "acsf_g4": 6.0, "fchl19_two_body": 8.0, "fchl19_three_body": 8.0, "acsf": 6.0,
          "fchl19": 8.0}


# --------------------------------------------------------------------------- geometries

def ethanol_frames():
    from runtime.data import load_dataset
    from pathlib import Path
    ds = load_dataset(Path(__file__).resolve().parents[1] / "runtime" / "default_data"
                      / "ethanol_gfn2xtb_500K.npz")
    return [(ds.R[m], ds.z) for m in (0, 1234, 2999)]


def spread_geometry(rng, n):
    """n H/C/N/O atoms (each element present), >= 0.9 Å apart, in a 10 Å box: pairs on both sides of
    6 and 8 Å, and triangles with all sides under 6 Å (nonzero angular terms of every kind)."""
    z = np.concatenate([ELEMENTS, rng.choice(ELEMENTS, n - E)]).astype(float)
    while True:
        R = rng.uniform(0.0, 10.0, (n, 3))
        dist = np.linalg.norm(R[:, None] - R[None], axis=-1) + 99 * np.eye(n)
        pair = dist[np.triu_indices(n, 1)]
        near = dist < 6.0
        triangles = sum(near[i, j] and near[i, k] and near[j, k] for i, j, k in combinations(range(n), 3))
        if dist.min() > 0.9 and (pair > 8.0).sum() >= 3 and ((pair > 6.0) & (pair < 8.0)).any() and triangles >= 3:
            return R, z


def random_geometries():
    rng = np.random.default_rng(12)
    return [spread_geometry(rng, n) for n in (7, 11)]


GEOMETRIES = ethanol_frames() + random_geometries()
GEOMETRY_IDS = ["ethanol-0", "ethanol-1234", "ethanol-2999", "random-7", "random-11"]


def test_every_element_resolved_library_term_has_a_peer():
    assert {name for name in LIBRARY_DESCRIPTORS if element_resolved(name)} == set(PEER_VALUES)


def test_random_geometries_reach_beyond_the_cutoffs():
    """The skipped terms are exercised: atoms on both sides of both cutoffs."""
    for R, _ in random_geometries():
        dist = np.linalg.norm(R[:, None] - R[None], axis=-1)[np.triu_indices(len(R), 1)]
        assert (dist > 8.0).any() and (dist < 6.0).any() and ((dist > 6.0) & (dist < 8.0)).any()


# --------------------------------------------------------------------------- values

@pytest.mark.parametrize("name", list(PEER_VALUES))
@pytest.mark.parametrize("geometry", range(len(GEOMETRIES)), ids=GEOMETRY_IDS)
def test_values_match_peer(name, geometry):
    R, z = GEOMETRIES[geometry]
    desc = descriptor(name)
    values, reference = desc.values(R, z), PEER_VALUES[name](R, z)
    assert values.shape == reference.shape == (desc.n_features(len(R)),)
    assert np.abs(reference).max() > 0
    assert rel(values, reference) <= VALUE_TOL


def test_dscribe_g1_column_is_the_cutoff_sum():
    """The column dropped from dscribe's output is G1_i[e] = sum_{j: Z_j = e} f_c(r_ij): proof that
    the slicing reads G1 there and the G2 columns beside it."""
    R, z = GEOMETRIES[-1]
    dist = np.linalg.norm(R[:, None] - R[None], axis=-1) + 99 * np.eye(len(R))
    fc = np.where(dist < 6.0, 0.5 * (np.cos(np.pi * dist / 6.0) + 1.0), 0.0)
    g1 = np.stack([fc[:, z == e].sum(axis=1) for e in ELEMENTS], axis=1)
    assert rel(dscribe_radial_blocks(dscribe_acsf(R, z))[:, :, 0], g1) <= 1e-13


def test_fchl19_parameters_are_qmllibs_defaults():
    """The grids bit for bit as generate_fchl19 builds them (its values agreeing shows the rest)."""
    from descriptors import fchl19_three_body, fchl19_two_body
    assert np.array_equal(fchl19_two_body.RS2, np.linspace(0, 8.0, 1 + 24)[1:])
    assert np.array_equal(fchl19_three_body.RS3_GRID, np.linspace(0, 8.0, 1 + 20)[1:])
    assert fchl19_three_body.WEIGHT == np.sqrt(2.7 / np.pi) * 13.4


# --------------------------------------------------------------------------- Jacobians

@pytest.mark.parametrize("name", ["fchl19_two_body", "fchl19_three_body", "fchl19"])
@pytest.mark.parametrize("geometry", range(len(GEOMETRIES)), ids=GEOMETRY_IDS)
def test_fchl19_jacobian_matches_qmllib_gradients(name, geometry):
    R, z = GEOMETRIES[geometry]
    jacobian = descriptor(name).jacobian(R, z)
    assert rel(jacobian, qmllib_term(name, R, z)[1]) <= VALUE_TOL


def central_differences(f, R):
    """d f / d R by central differences: (features, atoms, 3)."""
    columns = []
    for a in range(R.shape[0]):
        for k in range(3):
            step = np.zeros_like(R)
            step[a, k] = FINITE_DIFFERENCE_STEP
            columns.append((f(R + step) - f(R - step)) / (2 * FINITE_DIFFERENCE_STEP))
    return np.stack(columns, axis=-1).reshape(-1, *R.shape)


@pytest.mark.parametrize("name", ["acsf_g2", "acsf_g4", "acsf"])
@pytest.mark.parametrize("geometry", [0, 3, 4], ids=[GEOMETRY_IDS[g] for g in (0, 3, 4)])
def test_acsf_jacobian_matches_jax_and_dscribe_finite_differences(name, geometry):
    import jax
    import jax.numpy as jnp
    R, z = GEOMETRIES[geometry]
    desc = descriptor(name)
    jacobian = desc.jacobian(R, z)
    jax_jacobian = jax.jit(jax.jacfwd(desc.jax_function()))  # one XLA program, not one per operation
    assert rel(jacobian, np.asarray(jax_jacobian(jnp.asarray(R), jnp.asarray(z)))) <= VALUE_TOL
    peer = central_differences(lambda X: PEER_VALUES[name](X, z), R)
    assert rel(jacobian, peer) <= FINITE_DIFFERENCE_TOL


# --------------------------------------------------------------------------- gdmlc check

@pytest.mark.parametrize("name", list(PEER_VALUES))
def test_gdmlc_check_passes(name):
    """compiler.build.verify.check_model (what `gdmlc check` runs) on a Gaussian-kernel model: values,
    Jacobians, curvature, force blocks with permutations, predicted forces and Hessians vs JAX."""
    errors = check_model(compiler.compile_model(name, "gaussian"), n_atoms=6, trials=1)
    assert {"descriptor curvature", "force block, symmetric (2 permutations)", "prediction (Hessian)"} <= set(errors)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOLERANCE, f"{worst}: {errors[worst]:.3g}"
