"""Many-body descriptors (issue 12, items 1-2): the three-body ``neighbour_pairs`` space, element
blocks (``elements=``) and declared cutoffs (``cutoff=``).

References: JAX of the same IR (values, Jacobians, curvature, and a whole model through
compiler.build.verify.check_model); the JAX lowering applies no cutoff, so agreeing with it shows
the skipped terms were exactly zero.  Element blocks are also checked against plain numpy loops
written here from the formulas, independent of the compiler.
"""
from itertools import combinations

import numpy as np
import pytest

import compiler
from compiler.build.verify import TOLERANCE, check_model
from compiler.dsl import combine, cos, descriptor, dot, exp, norm, pi, where
from compiler.errors import DSLError
from numeric import rel

RC = 2.6  # small, so random 6-atom geometries have neighbours on both sides of it
ELEMENTS = [1, 6, 8]


@descriptor(over="neighbour_pairs", params={"eta": [0.3, 1.0], "zeta": [1.0, 4.0], "lam": [1.0, -1.0], "rc": RC},
            elements=ELEMENTS, cutoff=RC)
def angular(ri, rj, rk, eta, zeta, lam, rc):
    """Behler's G4 with cosine cutoffs on all three distances."""
    rij = norm(rj - ri)
    rik = norm(rk - ri)
    rjk = norm(rk - rj)
    cos_t = dot(rj - ri, rk - ri) / (rij * rik)
    fij = where(rij < rc, 0.5 * (cos(pi * rij / rc) + 1.0), 0.0)
    fik = where(rik < rc, 0.5 * (cos(pi * rik / rc) + 1.0), 0.0)
    fjk = where(rjk < rc, 0.5 * (cos(pi * rjk / rc) + 1.0), 0.0)
    return 2.0 ** (1.0 - zeta) * (1.0 + lam * cos_t) ** zeta * exp(-eta * (rij ** 2 + rik ** 2 + rjk ** 2)) \
        * fij * fik * fjk


@descriptor(over="neighbours", params={"eta": [0.5, 2.0], "rc": RC}, elements=ELEMENTS, cutoff=RC)
def radial(ri, rj, eta, rc):
    """Behler's G2 with a polynomial cutoff (1 - x)^2 (1 + 2x), x = r / rc."""
    x = norm(rj - ri) / rc
    return where(x < 1.0, exp(-eta * (x * rc) ** 2) * (1.0 - x) ** 2 * (1.0 + 2.0 * x), 0.0)


# verify.check_model's random geometries are wider: a larger cutoff keeps their features nonzero
angular_wide = descriptor(over="neighbour_pairs", params={**angular.params, "rc": 5.0}, elements=ELEMENTS,
                          cutoff=5.0)(angular.fn)
radial_wide = descriptor(over="neighbours", params={**radial.params, "rc": 5.0}, elements=ELEMENTS,
                         cutoff=5.0)(radial.fn)


@descriptor(over="neighbour_pairs")
def bond_angles(ri, rj, rk, zj, zk):
    """No elements, no cutoff: the plain three-body sum, with atomic numbers in the body."""
    cos_t = dot(rj - ri, rk - ri) / (norm(rj - ri) * norm(rk - ri))
    return zj * zk * cos_t * exp(-norm(rj - ri) - norm(rk - ri))


@descriptor(over="neighbour_pairs")
def lopsided(ri, rj, rk, zj):
    """Not symmetric in j and k: summing over j < k cannot follow atom permutations."""
    return zj * exp(-norm(rj - ri)) * norm(rk - ri)


def spread_geometry(rng, n, z=None):
    """Atoms >= 0.9 apart with a triangle of atoms all within RC (a nonzero angular term) and,
    from 5 atoms on, some distances beyond RC (the terms the loops skip)."""
    while True:
        R = rng.normal(size=(n, 3)) * (1.2 if n >= 5 else 0.9)
        dist = np.linalg.norm(R[:, None] - R[None], axis=-1) + 9 * np.eye(n)
        near = dist < RC
        triangle = any(near[i, j] and near[i, k] and near[j, k] for i, j, k in combinations(range(n), 3))
        if dist.min() > 0.9 and triangle and (n < 5 or (dist[np.triu_indices(n, 1)] > RC).any()):
            return R


def random_z(rng, n):
    return rng.choice(np.array(ELEMENTS, dtype=float), size=n)


# --------------------------------------------------------------------------- against JAX

@pytest.mark.parametrize("dsl", [angular, radial, bond_angles, lopsided], ids=lambda d: d.name)
@pytest.mark.parametrize("n", [3, 5, 8])
def test_values_jacobian_and_curvature_match_jax(dsl, n):
    import jax
    import jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)
    desc = compiler.compile_descriptor(dsl)
    f = desc.jax_function()
    rng = np.random.default_rng(n)
    for _ in range(2):
        z = random_z(rng, n)
        R = spread_geometry(rng, n, z)
        D, J = desc.values(R, z), desc.jacobian(R, z)
        assert D.shape == (desc.n_features(n),) and np.abs(D).max() > 0
        assert rel(D, np.asarray(f(jnp.asarray(R), z))) <= 1e-12
        assert rel(J, np.asarray(jax.jacfwd(f)(jnp.asarray(R), z))) <= 1e-12
        W = rng.normal(size=D.shape)
        H = np.zeros((3 * n, 3 * n))
        desc.add_curvature(R, z, W, H)
        reference = jax.jacfwd(jax.jacfwd(lambda r: jnp.dot(W, f(r.reshape(n, 3), z))))(jnp.asarray(R.ravel()))
        assert rel(H, np.asarray(reference)) <= 1e-10


@pytest.mark.parametrize("dsl", [angular_wide, radial_wide], ids=lambda d: d.name)
def test_whole_model_matches_jax(dsl):
    """Every entry point of a model built on the descriptor (force blocks with permutations,
    prediction of forces and Hessians, Hessian observations) against JAX."""
    errors = check_model(compiler.compile_model(dsl, "matern52"), n_atoms=6, trials=2)
    assert {"prediction (Hessian)", "force block, symmetric (2 permutations)",
            "Hessian observations (Hessian of their energy)"} <= set(errors)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOLERANCE, f"{worst}: {errors[worst]:.3g}"


# --------------------------------------------------------------------------- against numpy loops

def cosine_cutoff(r):
    return np.where(r < RC, 0.5 * (np.cos(np.pi * r / RC) + 1.0), 0.0)


def numpy_radial(R, z):
    """(atoms, elements, channels) G2 by explicit loops."""
    n, out = len(R), np.zeros((len(R), len(ELEMENTS), 2))
    for i in range(n):
        for j in range(n):
            if j != i:
                x = np.linalg.norm(R[j] - R[i]) / RC
                if x < 1:
                    for c, eta in enumerate((0.5, 2.0)):
                        out[i, ELEMENTS.index(z[j]), c] += np.exp(-eta * (x * RC) ** 2) * (1 - x) ** 2 * (1 + 2 * x)
    return out.ravel()


def numpy_angular(R, z):
    """(atoms, element pairs (a <= b, row-major), channels) G4 by explicit loops."""
    pairs = [(a, b) for a in range(len(ELEMENTS)) for b in range(a, len(ELEMENTS))]
    n, out = len(R), np.zeros((len(R), len(pairs), 2))
    for i in range(n):
        others = [a for a in range(n) if a != i]
        for j, k in combinations(others, 2):
            u, v = R[j] - R[i], R[k] - R[i]
            rij, rik, rjk = np.linalg.norm(u), np.linalg.norm(v), np.linalg.norm(R[k] - R[j])
            block = pairs.index(tuple(sorted((ELEMENTS.index(z[j]), ELEMENTS.index(z[k])))))
            for c, (eta, zeta, lam) in enumerate(((0.3, 1.0, 1.0), (1.0, 4.0, -1.0))):
                out[i, block, c] += (2.0 ** (1 - zeta) * (1 + lam * u @ v / (rij * rik)) ** zeta
                                     * np.exp(-eta * (rij ** 2 + rik ** 2 + rjk ** 2))
                                     * cosine_cutoff(rij) * cosine_cutoff(rik) * cosine_cutoff(rjk))
    return out.ravel()


@pytest.mark.parametrize("dsl, reference", [(radial, numpy_radial), (angular, numpy_angular)],
                         ids=["radial", "angular"])
def test_element_blocks_match_plain_loops(dsl, reference):
    desc = compiler.compile_descriptor(dsl)
    rng = np.random.default_rng(11)
    for n in (4, 7):
        z = random_z(rng, n)
        R = spread_geometry(rng, n, z)
        assert rel(desc.values(R, z), reference(R, list(z))) <= 1e-13


def test_features_follow_atom_permutations():
    """D(x[perm]) == D(x)[fperm] for permutations that keep each atom's element."""
    desc = compiler.compile_descriptor(angular)
    rng = np.random.default_rng(2)
    z = np.array([6, 1, 8, 1, 6, 1.0])
    R = spread_geometry(rng, 6, z)
    perms = np.array([np.arange(6), [4, 3, 2, 5, 0, 1], [0, 5, 2, 1, 4, 3]])
    assert all((z[p] == z).all() for p in perms)
    for perm, fperm in zip(perms, desc.feature_permutations(perms, 6)):
        assert rel(desc.values(R[perm], z), desc.values(R, z)[fperm]) <= 1e-14


def test_term_not_symmetric_in_j_and_k_refuses_permutations():
    desc = compiler.compile_descriptor(lopsided)
    assert not desc.maps_atom_permutations
    with pytest.raises(ValueError, match="not symmetric in rj and rk, so atom permutations do not map"):
        desc.feature_permutations([[0, 1, 2], [0, 2, 1]], 3)


# --------------------------------------------------------------------------- declarations and their errors

def test_cutoff_the_term_does_not_honour_is_refused_at_its_line():
    @descriptor(over="neighbours", cutoff=3.0)
    def leaky(ri, rj):
        return exp(-norm(ri - rj))

    with pytest.raises(DSLError) as err:
        compiler.compile_descriptor(leaky)
    assert "cutoff=3 is declared, but the term or its gradient is not zero" in str(err.value)
    assert err.value.filename == __file__ and err.value.lineno == leaky.fn.__code__.co_firstlineno


def test_cutoff_checked_with_each_channels_parameters():
    """A parameter rc larger than the declared cutoff leaves the term nonzero beyond it."""
    @descriptor(over="neighbours", params={"rc": [2.0, 4.0]}, cutoff=3.0)
    def two_radii(ri, rj, rc):
        r = norm(rj - ri)
        return where(r < rc, 0.5 * (cos(pi * r / rc) + 1.0), 0.0)

    with pytest.raises(DSLError, match="not zero once a neighbour is 3 Å or farther"):
        compiler.compile_descriptor(two_radii)


@pytest.mark.parametrize("kwargs, message", [
    (dict(over="pairs", elements=[1, 6]), "elements= needs an atom-centred index space, not pairs"),
    (dict(over="neighbours", elements=[1, 1]), "must be distinct atomic numbers"),
    (dict(over="neighbours", elements=[1.5]), "must be distinct atomic numbers"),
    (dict(over="neighbours", elements=[]), "must be distinct atomic numbers"),
    (dict(over="neighbours", cutoff=-1.0), "must be a positive number"),
    (dict(over="neighbours", cutoff=float("nan")), "must be a positive number"),
])
def test_bad_declarations_are_named_at_the_decorator(kwargs, message):
    with pytest.raises(DSLError, match=message) as err:
        descriptor(**kwargs)(lambda ri, rj: norm(ri - rj))
    assert err.value.filename == __file__


def test_atom_of_an_undeclared_element_is_named():
    desc = compiler.compile_descriptor(radial)
    R = spread_geometry(np.random.default_rng(0), 4, None)
    with pytest.raises(ValueError, match="atom 2 has atomic number 7, which descriptor radial has no features "
                                         "for: its elements are 1, 6, 8"):
        desc.values(R, [6, 1, 7, 8])
    with pytest.raises(ValueError, match=r"uses atomic numbers \(elements 1, 6, 8\): pass z"):
        desc.values(R)


def test_trained_model_round_trips_through_a_model_file(tmp_path):
    """Elements and cutoff are stored with the source and restored (data only) on load."""
    from runtime.data import load_dataset
    from runtime.model import GDML
    ds = load_dataset(compiler_default_data())
    model = GDML(descriptor=radial, kernel="matern52", sigma=2.0)
    model.fit(ds.R[:12], ds.F[:12], ds.E[:12], z=ds.z)
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = GDML.load(path)
    assert loaded.model.descriptor.layout == model.model.descriptor.layout
    E, F = model.predict(ds.R[40:45])
    E2, F2 = loaded.predict(ds.R[40:45])
    assert np.array_equal(F, F2) and np.array_equal(E, E2)


def compiler_default_data():
    from pathlib import Path
    return Path(__file__).resolve().parents[1] / "runtime" / "default_data" / "ethanol_gfn2xtb_500K.npz"


# --------------------------------------------------------------------------- combinations of terms

both = combine(radial, angular, name="radial_angular")
both_wide = combine(radial_wide, angular_wide, name="both_wide")


def test_combination_interleaves_each_atoms_features():
    """Atom i's features are the radial part's features of atom i, then the angular part's:
    checked against each part compiled on its own, and against JAX."""
    import jax
    import jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)
    combined = compiler.compile_descriptor(both)
    parts = [compiler.compile_descriptor(d) for d in (radial, angular)]
    rng = np.random.default_rng(4)
    n = 6
    z = random_z(rng, n)
    R = spread_geometry(rng, n, z)
    D, J = combined.values(R, z), combined.jacobian(R, z)
    expected_D = np.concatenate([p.values(R, z).reshape(n, -1) for p in parts], axis=1).ravel()
    expected_J = np.concatenate([p.jacobian(R, z).reshape(n, -1, n, 3) for p in parts], axis=1).reshape(J.shape)
    assert combined.n_channels == sum(p.n_channels for p in parts)
    assert np.array_equal(D, expected_D) and np.array_equal(J, expected_J)
    f = combined.jax_function()
    assert rel(D, np.asarray(f(jnp.asarray(R), z))) <= 1e-12
    W = rng.normal(size=D.shape)
    H = np.zeros((3 * n, 3 * n))
    combined.add_curvature(R, z, W, H)
    reference = jax.jacfwd(jax.jacfwd(lambda r: jnp.dot(W, f(r.reshape(n, 3), z))))(jnp.asarray(R.ravel()))
    assert rel(H, np.asarray(reference)) <= 1e-10


def test_combined_model_matches_jax():
    errors = check_model(compiler.compile_model(both_wide, "matern52"), n_atoms=6, trials=1)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOLERANCE, f"{worst}: {errors[worst]:.3g}"


def test_combination_refuses_what_it_cannot_be():
    with pytest.raises(DSLError, match="combine\\(\\): pair_term is over pairs, which has no per-atom features"):
        @descriptor
        def pair_term(ri, rj):
            return norm(ri - rj)
        combine(radial, pair_term)
    with pytest.raises(DSLError, match="two or more @descriptor functions"):
        combine(radial)
    lopsided_too = combine(radial, lopsided)
    with pytest.raises(ValueError, match="not symmetric in rj and rk"):
        compiler.compile_descriptor(lopsided_too).feature_permutations([[0, 1, 2], [0, 2, 1]], 3)


def test_combined_model_round_trips_through_a_model_file(tmp_path):
    from runtime.data import load_dataset
    from runtime.model import GDML
    ds = load_dataset(compiler_default_data())
    model = GDML(descriptor=both, kernel="matern52", sigma=2.0)
    model.fit(ds.R[:10], ds.F[:10], z=ds.z)
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = GDML.load(path)
    assert loaded.descriptor_dsl.name == "radial_angular"
    assert [p.name for p in loaded.descriptor_dsl.parts] == ["radial", "angular"]
    assert np.array_equal(model.predict(ds.R[40:43])[1], loaded.predict(ds.R[40:43])[1])


def test_stored_combination_is_data_only():
    """A model file's combination is restored part by part through the same checks; nesting,
    missing spans and spans outside the text are refused."""
    import json
    from runtime.model_file import ModelFileError, function_arrays, restore_function
    arrays = function_arrays(both, "descriptor")
    source, meta = str(arrays["descriptor_source"]), json.loads(str(arrays["descriptor_meta"]))
    restored = restore_function("descriptor", source, meta)
    assert [p.name for p in restored.parts] == ["radial", "angular"]
    assert restored.parts[1].layout == angular.layout
    nested = {**meta, "parts": [{**meta["parts"][0], "parts": meta["parts"]}, meta["parts"][1]]}
    outside = {**meta, "parts": [{**meta["parts"][0], "source_span": [0, len(source) + 5]}, meta["parts"][1]]}
    for bad in (nested, outside, {**meta, "parts": meta["parts"][:1]}):
        with pytest.raises(ModelFileError):
            restore_function("descriptor", source, bad)
