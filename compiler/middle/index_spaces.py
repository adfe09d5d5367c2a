"""Index spaces: which atoms each descriptor feature involves, one class per space.

A descriptor's body is one *term* over the positions of ``arity`` atoms (``ri``, ``rj``,
``rk``, ...) and their atomic numbers (``zi``, ``zj``, ...).  An index space says which
atoms the terms of each feature are taken over, and everything that follows from it:

- the IR variables the parser binds (``ri_0 .. rj_2``, ``zi``, ``zj``),
- the sites for ``n`` atoms, the atom table (F, K) of the sparse Jacobian, ``slots(n)``,
- how an atom permutation maps to a feature permutation, and whether that needs the term
  to be unchanged when its atoms are swapped (checked numerically on the IR),
- the loops each target writes around the common ``site_term`` call (Numba CPU, Numba
  CUDA) and the gather the JAX reference uses,
- its feature-count formula for ``gdmlc info``.

Nothing outside this module and the DSL compares a space's name: code asks the space.
A new space (three-body, local cutoff) is one subclass registered in ``INDEX_SPACES``.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from compiler.middle import ir

ATOM_LETTERS = "ijklmn"   # atom a of a term is r{letter}: ri, rj, rk, ...
GRADIENT_LETTERS = "abcdef"  # site_term's gradient outputs for atom a: a0 a1 a2, b0 b1 b2, ...
_NUMBER_WORDS = {2: "two", 3: "three", 4: "four"}


class IndexSpace:
    """Which atoms a feature involves.  Subclasses set the class attributes and the
    per-space methods; instances are singletons, looked up by name in ``INDEX_SPACES``."""

    name = ""
    arity = 2                      # atoms in one term: ri, rj, ...
    feature_formula = ""           # sites per channel, for `gdmlc info`
    needs_symmetric_term = True    # atom permutations map to features only if the term is swap-symmetric
    term_swaps = (("i", "j"),)     # the atom swaps that symmetry check tries

    # ---------------------------------------------------------------- the DSL's variables

    @property
    def atoms(self) -> tuple:
        """The term's atom letters: ('i', 'j') for two atoms."""
        return tuple(ATOM_LETTERS[:self.arity])

    @property
    def position_args(self) -> tuple:
        """The DSL's position arguments: ('ri', 'rj')."""
        return tuple(f"r{a}" for a in self.atoms)

    @staticmethod
    def position_names(atom) -> tuple:
        """IR names of one atom's coordinates: ri_0, ri_1, ri_2."""
        return tuple(f"r{atom}_{k}" for k in range(3))

    @property
    def position_vars(self) -> tuple:
        """Every position variable of the term, in site_term's argument order."""
        return tuple(name for a in self.atoms for name in self.position_names(a))

    @property
    def z_vars(self) -> tuple:
        """The atomic-number variables: ('zi', 'zj')."""
        return tuple(f"z{a}" for a in self.atoms)

    @property
    def atom_count(self) -> str:
        """'two atoms', for messages."""
        return f"{_NUMBER_WORDS.get(self.arity, self.arity)} atoms"

    # ---------------------------------------------------------------- sites and features

    def n_sites(self, n: int) -> int:
        raise NotImplementedError

    def slots(self, n: int) -> int:
        """Atoms each feature touches (nonzero 3-blocks per Jacobian row)."""
        raise NotImplementedError

    def site_atoms(self, n: int) -> np.ndarray:
        """(n_sites, slots) atoms each site touches, in the Jacobian's slot order."""
        raise NotImplementedError

    def term_atoms(self, n: int) -> np.ndarray:
        """(n_sites, terms per site, arity): the atoms of every term summed into a site."""
        raise NotImplementedError

    def site_permutation(self, n: int, perm: np.ndarray) -> np.ndarray:
        """(n_sites,) the site of x that each site of x[perm] equals."""
        raise NotImplementedError

    def n_features(self, n: int, channels: int) -> int:
        return self.n_sites(n) * channels

    def atom_table(self, n: int, channels: int) -> np.ndarray:
        """(F, K) read-only: the atoms of feature f = site * channels + channel."""
        return _atom_table(self, n, channels)

    def term_table(self, n: int) -> np.ndarray:
        """term_atoms(n) as the generated curvature loop reads it: int64, read-only, cached."""
        return _term_table(self, n)

    def feature_permutations(self, n: int, channels: int, perms) -> np.ndarray:
        """(P, F) feature index maps with D(x[perm]) == D(x)[fperm], for (P, n) perms."""
        out = np.empty((len(perms), self.n_features(n, channels)), dtype=np.int64)
        for p, perm in enumerate(perms):
            site = self.site_permutation(n, np.asarray(perm))
            out[p] = (site[:, None] * channels + np.arange(channels)).ravel()
        return out

    # ---------------------------------------------------------------- symmetry of the term

    def term_is_symmetric(self, body: ir.Expr, parameter_vars, trials=8) -> bool:
        """Numerically: is the term unchanged by each swap of its atoms in ``term_swaps``?"""
        rng = np.random.default_rng(0)
        env = {name: rng.uniform(0.5, 2.0, trials) for name in self.position_vars + self.z_vars}
        env.update({name: rng.uniform(0.5, 2.0, trials) for name in parameter_vars})
        a, = ir.evaluate([body], env)
        for swap in self.term_swaps:
            rename = self._swap_names(*swap)
            b, = ir.evaluate([body], {k: env[rename.get(k, k)] for k in env})
            a, b = np.broadcast_to(a, (trials,)), np.broadcast_to(b, (trials,))
            if not np.allclose(a, b, rtol=1e-12, atol=0.0, equal_nan=True):
                return False
        return True

    def _swap_names(self, x, y) -> dict:
        """IR variable renaming that exchanges atoms x and y."""
        rename = dict(zip(self.position_names(x), self.position_names(y)))
        rename[f"z{x}"] = f"z{y}"
        rename.update({v: k for k, v in rename.items()})
        return rename

    # ---------------------------------------------------------------- code generation

    def site_call(self, position: str) -> str:
        """``site_term(...)`` for the loop variables i, j, ... and channel c; ``position``
        spells one coordinate from {atom} and {k}, e.g. 'R[{atom}, {k}]'."""
        coords = ", ".join(position.format(atom=a, k=k) for a in self.atoms for k in range(3))
        return f"site_term({coords}, {', '.join(f'z[{a}]' for a in self.atoms)}, params[c])"

    def gradient_names(self, index: int) -> tuple:
        """site_term's outputs for atom ``index``'s gradient: a0, a1, a2."""
        return tuple(f"{GRADIENT_LETTERS[index]}{k}" for k in range(3))

    @property
    def term_outputs(self) -> str:
        """'v, a0, a1, a2, b0, b1, b2': what a site_term call is unpacked into."""
        return ", ".join(["v", *(g for a in range(self.arity) for g in self.gradient_names(a))])

    def numba_docstring(self) -> list:
        """descriptor_one's docstring lines (CPU)."""
        raise NotImplementedError

    def numba_loop(self, call: str) -> list:
        """descriptor_one's loop (CPU), given n, f = 0, R, z, params, d (F,), jac (F, K, 3)."""
        raise NotImplementedError

    def cuda_site(self, call: str) -> list:
        """descriptor_many's body for thread (m, f) (CUDA), given c and i = atoms[f, 0]."""
        raise NotImplementedError

    def jax_sites(self, n: int):
        """(index arrays per atom, each (sites, terms per site, 1)) for the JAX gather."""
        table = self.term_atoms(n)
        return tuple(table[:, :, a, None] for a in range(self.arity))

    @staticmethod
    def jax_reduce(values):
        """(sites, terms per site, channels) term values -> (sites, channels) features."""
        return values.sum(axis=1)

    # ---------------------------------------------------------------- identity

    def __repr__(self):
        return self.name

    def __reduce__(self):  # a pickled space comes back as the registered instance
        return index_space, (self.name,)


def _jac_stores(target: str, slot, values, indent: str) -> list:
    """`target, slot, k] = values[k]` for k = 0, 1, 2: one 3-block of a sparse Jacobian row."""
    return [f"{indent}{target}, {slot}, {k}] = {v}" for k, v in enumerate(values)]


class Pairs(IndexSpace):
    """``pairs``: one feature per atom pair i < j (per parameter channel); the term must be
    symmetric in its two atoms for atom permutations to map to features."""

    name = "pairs"
    feature_formula = "N(N-1)/2"

    def n_sites(self, n):
        return n * (n - 1) // 2

    def slots(self, n):
        return 2

    def site_atoms(self, n):
        i, j = np.triu_indices(n, 1)
        return np.stack([i, j], axis=1)

    def term_atoms(self, n):
        return self.site_atoms(n)[:, None, :]

    def site_permutation(self, n, perm):
        index = np.full((n, n), -1)
        i, j = np.triu_indices(n, 1)
        index[i, j] = index[j, i] = np.arange(len(i))
        return index[perm[i], perm[j]]

    def numba_docstring(self):
        return ['    """Features d (F,) and sparse Jacobian jac (F, 2, 3) of one geometry R (N, 3);',
                '    feature (pair i<j, channel c) touches atoms i (slot 0) and j (slot 1)."""']

    def numba_loop(self, call):
        indent = " " * 16
        return ["    for i in range(n):",
                "        for j in range(i + 1, n):",
                "            for c in range(params.shape[0]):",
                f"{indent}{self.term_outputs} = {call}",
                f"{indent}d[f] = v",
                *_jac_stores("jac[f", 0, self.gradient_names(0), indent),
                *_jac_stores("jac[f", 1, self.gradient_names(1), indent),
                f"{indent}f += 1"]

    def cuda_site(self, call):
        indent = " " * 4
        return ["    j = atoms[f, 1]",
                f"{indent}{self.term_outputs} = {call}",
                f"{indent}D[m, f] = v",
                *_jac_stores("JAC[m, f", 0, self.gradient_names(0), indent),
                *_jac_stores("JAC[m, f", 1, self.gradient_names(1), indent)]


class Neighbours(IndexSpace):
    """``neighbours``: one feature per atom i (per channel), the term summed over every other
    atom j (atom-centred descriptors such as Behler's G2); any term maps permutations."""

    name = "neighbours"
    feature_formula = "N"
    needs_symmetric_term = False  # the sum over j is the same whatever order the atoms come in

    def n_sites(self, n):
        return n

    def slots(self, n):
        return n

    def site_atoms(self, n):
        return np.array([[i] + [j for j in range(n) if j != i] for i in range(n)]).reshape(n, n)

    def term_atoms(self, n):
        table = self.site_atoms(n)
        return np.stack([np.repeat(table[:, :1], n - 1, axis=1), table[:, 1:]], axis=2)

    def site_permutation(self, n, perm):
        return perm

    def numba_docstring(self):
        return ['    """Features d (F,) and sparse Jacobian jac (F, N, 3) of one geometry R (N, 3);',
                '    feature (atom i, channel c) sums the term over neighbours j != i and touches',
                '    atom i (slot 0) and every neighbour j (slots 1.., in atom order)."""']

    def numba_loop(self, call):
        inner = " " * 16
        return ["    for i in range(n):",
                "        for c in range(params.shape[0]):",
                "            total = 0.0",
                "            gi0 = 0.0", "            gi1 = 0.0", "            gi2 = 0.0",
                "            slot = 1",
                "            for j in range(n):",
                "                if j == i:",
                "                    continue",
                f"{inner}{self.term_outputs} = {call}",
                f"{inner}total += v",
                "                gi0 += a0", "                gi1 += a1", "                gi2 += a2",
                *_jac_stores("jac[f", "slot", self.gradient_names(1), inner),
                f"{inner}slot += 1",
                "            d[f] = total",
                *_jac_stores("jac[f", 0, ("gi0", "gi1", "gi2"), " " * 12),
                "            f += 1"]

    def cuda_site(self, call):
        inner = " " * 8
        return ["    # the term summed over neighbours j (slots 1.. of the atom table)",
                "    total = 0.0",
                "    gi0 = 0.0", "    gi1 = 0.0", "    gi2 = 0.0",
                "    for slot in range(1, atoms.shape[1]):",
                "        j = atoms[f, slot]",
                f"{inner}{self.term_outputs} = {call}",
                f"{inner}total += v",
                "        gi0 += a0", "        gi1 += a1", "        gi2 += a2",
                *_jac_stores("JAC[m, f", "slot", self.gradient_names(1), inner),
                "    D[m, f] = total",
                *_jac_stores("JAC[m, f", 0, ("gi0", "gi1", "gi2"), " " * 4)]


@lru_cache(maxsize=64)
def _atom_table(space: IndexSpace, n: int, channels: int) -> np.ndarray:
    table = np.repeat(space.site_atoms(n), channels, axis=0).astype(np.int64)
    table.setflags(write=False)
    return table


@lru_cache(maxsize=64)
def _term_table(space: IndexSpace, n: int) -> np.ndarray:
    table = np.ascontiguousarray(space.term_atoms(n), dtype=np.int64)
    table.setflags(write=False)
    return table


pairs, neighbours = Pairs(), Neighbours()
INDEX_SPACES = {space.name: space for space in (pairs, neighbours)}  # name -> space: DSL and model files
DEFAULT_INDEX_SPACE = pairs  # @descriptor's default `over`


def index_space(name: str) -> IndexSpace:
    """The registered space called ``name`` (KeyError if there is none)."""
    return INDEX_SPACES[name]
