"""Index spaces as objects (compiler.middle.index_spaces): sites, atom tables and permutation maps
against brute-force enumerations written here, and with real compiled descriptors.

The JAX lowering against the Numba kernels for the library descriptors (both spaces) is in
test_compiler_library.py; here only the neighbours descriptor with a swap-asymmetric term,
which the library does not have, is checked against JAX.
"""
import pickle
from itertools import combinations

import numpy as np
import pytest

import compiler
from compiler.middle import index_spaces
from compiler.dsl import descriptor, exp, neighbour_pairs, neighbours, norm, pairs
from compiler.middle.index_spaces import INDEX_SPACES
from compiler.library import resolve
from compiler.front.parser import parse_descriptor
from numeric import rel

ATOM_COUNTS = range(2, 7)


def brute_force_sites(space, n):
    """Per site: (atoms in Jacobian slot order, the terms (atom tuples) summed into it)."""
    if space is pairs:
        return [((i, j), [(i, j)]) for i, j in combinations(range(n), 2)]
    if space is neighbours:
        return [((i, *[j for j in range(n) if j != i]), [(i, j) for j in range(n) if j != i])
                for i in range(n)]
    if space is neighbour_pairs:
        return [((i, *[j for j in range(n) if j != i]),
                 [(i, j, k) for j, k in combinations([a for a in range(n) if a != i], 2)]) for i in range(n)]
    raise AssertionError(f"no brute-force enumeration for {space}")


def random_geometry(rng, n):
    while True:
        R = rng.normal(size=(n, 3)) * 1.5
        if (np.linalg.norm(R[:, None] - R[None], axis=-1) + 9 * np.eye(n)).min() > 0.8:
            return R


# --------------------------------------------------------------------------- sites and tables

@pytest.mark.parametrize("space", INDEX_SPACES.values(), ids=str)
@pytest.mark.parametrize("n", ATOM_COUNTS)
@pytest.mark.parametrize("channels", [1, 3])
def test_atom_table_and_sizes_match_brute_force(space, n, channels):
    sites = brute_force_sites(space, n)
    expected = [atoms for atoms, _ in sites for _ in range(channels)]  # feature = site * channels + c
    table = space.atom_table(n, channels)
    assert table.tolist() == [list(a) for a in expected]
    assert table.dtype == np.int64 and not table.flags.writeable
    assert space.n_sites(n) == len(sites)
    assert space.n_features(n, channels) == len(expected)
    assert space.slots(n) == len(sites[0][0])
    assert space.term_atoms(n).tolist() == [[list(t) for t in terms] for _, terms in sites]
    gathered = space.jax_sites(n)
    assert len(gathered) == space.arity
    for a, index in enumerate(gathered):
        assert index[..., 0].tolist() == [[t[a] for t in terms] for _, terms in sites]


@pytest.mark.parametrize("space", INDEX_SPACES.values(), ids=str)
@pytest.mark.parametrize("n", ATOM_COUNTS)
def test_feature_permutations_match_brute_force(space, n):
    """Site s of x[perm] involves atoms perm[a] of x: fperm names the site of x with those atoms."""
    rng = np.random.default_rng(n)
    channels = 2
    sites = brute_force_sites(space, n)
    perms = np.stack([np.arange(n)] + [rng.permutation(n) for _ in range(4)])
    fperms = space.feature_permutations(n, channels, perms)
    assert fperms.shape == (len(perms), len(sites) * channels)
    for perm, fperm in zip(perms, fperms):
        for s, (_, terms) in enumerate(sites):
            # a term is its centre and its unordered neighbours (pairs: wholly unordered)
            moved = sorted((t[0], *sorted(t[1:])) for t in (tuple(int(perm[a]) for a in t) for t in terms))
            for c in range(channels):
                target, channel = divmod(int(fperm[s * channels + c]), channels)
                assert channel == c
                if space is pairs:  # a pair site is unordered
                    assert {frozenset(t) for t in sites[target][1]} == {frozenset(t) for t in moved}
                else:
                    assert sorted((t[0], *sorted(t[1:])) for t in sites[target][1]) == moved


def test_spaces_name_their_dsl_variables():
    for space in (pairs, neighbours):
        assert space.atoms == ("i", "j") and space.position_args == ("ri", "rj")
        assert space.position_vars == ("ri_0", "ri_1", "ri_2", "rj_0", "rj_1", "rj_2")
        assert space.z_vars == ("zi", "zj")
        assert space.site_call("R[{atom}, {k}]") == (
            "site_term(R[i, 0], R[i, 1], R[i, 2], R[j, 0], R[j, 1], R[j, 2], z[i], z[j], params[c])")
    assert neighbour_pairs.position_args == ("ri", "rj", "rk") and neighbour_pairs.z_vars == ("zi", "zj", "zk")
    assert neighbour_pairs.position_vars[-3:] == ("rk_0", "rk_1", "rk_2")
    assert (pairs.feature_formula, neighbours.feature_formula, neighbour_pairs.feature_formula) == ("N(N-1)/2", "N", "N")


# --------------------------------------------------------------------------- registry

@pytest.mark.parametrize("name", INDEX_SPACES)
def test_registry_round_trip(name):
    space = INDEX_SPACES[name]
    assert space.name == name == str(space) == f"{space}"
    assert index_spaces.index_space(name) is space
    assert pickle.loads(pickle.dumps(space)) is space
    for over in (name, space):  # the decorator takes a name or the space itself
        assert descriptor(over=over)(lambda ri, rj, rk: norm(ri - rj)).over is space
    from runtime.model_file import _index_space  # what a model file's "over" is read through
    assert _index_space("descriptor", name) is space


def test_default_space_is_pairs():
    assert descriptor(lambda ri, rj: norm(ri - rj)).over is pairs


# --------------------------------------------------------------------------- with compiled descriptors

@descriptor(over="neighbours", params={"eta": [0.5, 2.0]})
def weighted_density(ri, rj, zj, eta):
    """Not symmetric in i and j (it weights by the neighbour's zj): neighbour sums need no symmetry."""
    return zj * exp(-eta * norm(ri - rj))


@descriptor(over="pairs")
def weighted_pair(ri, rj, zj):
    """The same asymmetry over pairs: atom permutations cannot map to features."""
    return zj * exp(-norm(ri - rj))


def test_swap_symmetry_is_checked_through_the_space():
    assert pairs.term_is_symmetric(parse_descriptor(resolve("inverse_distances", "descriptor")).body, [])
    assert not pairs.term_is_symmetric(parse_descriptor(weighted_pair).body, [])
    assert not neighbours.term_is_symmetric(parse_descriptor(weighted_density).body, ["u_eta"])


@pytest.mark.parametrize("dsl, z", [("inverse_distances", None), ("radial_g2", None),
                                    (weighted_density, np.array([6, 1, 8, 1, 7, 1]))],
                         ids=["pairs", "neighbours", "neighbours-asymmetric"])
def test_compiled_features_follow_atom_permutations(dsl, z):
    """D(x[perm]) == D(x)[fperm] with the Numba kernels, atomic numbers permuted along."""
    desc = compiler.compile_descriptor(dsl)
    rng = np.random.default_rng(3)
    n = 6
    x = random_geometry(rng, n)
    perms = np.stack([np.arange(n)] + [rng.permutation(n) for _ in range(5)])
    fperms = desc.feature_permutations(perms, n)
    base = desc.values(x, z)
    for perm, fperm in zip(perms, fperms):
        assert rel(desc.values(x[perm], None if z is None else z[perm]), base[fperm]) <= 1e-14


def test_asymmetric_neighbour_term_matches_jax_and_asymmetric_pair_term_refuses():
    density = compiler.compile_descriptor(weighted_density)
    assert density.symmetric is False and density.maps_atom_permutations
    rng = np.random.default_rng(5)
    x, z = random_geometry(rng, 5), np.array([6, 1, 8, 1, 7])
    assert rel(density.values(x, z), np.asarray(density.jax_function()(x, z))) <= 1e-12
    pair = compiler.compile_descriptor(weighted_pair)
    assert pair.symmetric is False and not pair.maps_atom_permutations
    assert pair.feature_permutations(None, 3).tolist() == [[0, 1, 2]]
    with pytest.raises(ValueError, match="not symmetric in its two atoms, so atom permutations do not map"):
        pair.feature_permutations([[0, 1, 2], [1, 0, 2]], 3)
