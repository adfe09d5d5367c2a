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

from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations

import numpy as np

from compiler.middle import ad, ir

ATOM_LETTERS = "ijklmn"   # atom a of a term is r{letter}: ri, rj, rk, ...
GRADIENT_LETTERS = "abcdef"  # site_term's gradient outputs for atom a: a0 a1 a2, b0 b1 b2, ...
_NUMBER_WORDS = {2: "two", 3: "three", 4: "four"}


@dataclass(frozen=True)
class Layout:
    """What a descriptor declares beyond its index space (``@descriptor(elements=..., cutoff=...)``)."""
    elements: tuple = ()          # atomic numbers as floats; (): no element blocks
    cutoff: float | None = None   # terms with a gated distance (IndexSpace.cutoff_pairs) >= cutoff are skipped

    def n_blocks(self, space) -> int:
        """Feature blocks per site: one per element (pair) of the term's neighbours, or 1."""
        return space.n_blocks(len(self.elements))


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
    def swapped_atoms(self) -> str:
        """'its two atoms', 'rj and rk': what the term must be symmetric in, for messages."""
        if self.term_swaps == (("i", "j"),) and self.arity == 2:
            return f"its {self.atom_count}"
        return "; ".join(f"r{a} and r{b}" for a, b in self.term_swaps)

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

    # ---------------------------------------------------------------- element blocks and cutoff

    atom_centred = False           # one site per atom, touching every atom (AtomCentred)
    allows_elements = False        # element blocks need an atom-centred space
    cutoff_pairs = (("i", "j"),)   # atom pairs whose distance the declared cutoff gates

    def n_blocks(self, n_elements: int) -> int:
        """Feature blocks per site for ``n_elements`` declared elements (1: no element blocks)."""
        return 1

    def block_code(self, layout) -> str:
        """Generated expression: the element block of the term over the loop's atoms."""
        return "0"

    def jax_block_weights(self, z_atoms, layout):
        """(sites, terms, blocks) 0/1 weights of each term's block, from each term atom's
        atomic numbers (sites, terms): the JAX reference's element blocks."""
        raise NotImplementedError

    def beyond_cutoff_code(self, layout, position: str, atoms=None) -> str:
        """Generated condition: a term over the loop's atoms lies beyond the cutoff ('' if none)."""
        if layout.cutoff is None:
            return ""

        def squared_distance(a, b):
            return " + ".join(f"({position.format(atom=a, k=k)} - {position.format(atom=b, k=k)}) ** 2"
                              for k in range(3))
        return " or ".join(f"{squared_distance(a, b)} >= CUTOFF_SQ" for a, b in (atoms or self.cutoff_pairs))

    def term_vanishes_beyond(self, body: ir.Expr, cutoff: float, parameter_env: dict, trials=64) -> bool:
        """Numerically: are the term and its gradient exactly zero whenever a distance in
        ``cutoff_pairs`` is at least ``cutoff`` (what lets the loops skip those terms)?"""
        grads = ad.grad(body, self.position_vars)
        rng = np.random.default_rng(1)
        for a, b in self.cutoff_pairs:
            env = {name: rng.uniform(-0.4, 0.4, trials) * cutoff for name in self.position_vars}
            direction = rng.normal(size=(3, trials))
            direction /= np.linalg.norm(direction, axis=0)
            distance = cutoff * rng.uniform(1.0, 2.0, trials)
            distance[:4] = cutoff  # at the cutoff too
            pairs = list(zip(self.position_names(a), self.position_names(b)))
            for k, (pa, pb) in enumerate(pairs):
                env[pb] = env[pa] + distance * direction[k]
            # the loops skip a term when the squared distance they compute is >= CUTOFF_SQ; one placed at
            # the cutoff may round to just inside it, where the loops evaluate it: only skipped ones must vanish
            skipped = sum((env[pb] - env[pa]) ** 2 for pa, pb in pairs) >= cutoff ** 2
            env.update({name: rng.choice([1.0, 6.0, 8.0], trials) for name in self.z_vars})
            for channel in parameter_env:
                values = ir.evaluate([body, *grads], {**env, **channel})
                if any(np.any(np.broadcast_to(v, (trials,))[skipped] != 0.0) for v in values):
                    return False
        return True

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

    def numba_loop(self, call: str, layout) -> list:
        """descriptor_one's loop (CPU), given n, R, z, params and d (F,), jac (F, K, 3) zeroed."""
        raise NotImplementedError

    def cuda_site(self, call: str, layout) -> list:
        """descriptor_many's body for thread (m, f) (CUDA), given c, its block b, i = atoms[f, 0]
        and the feature's row of D and JAC zeroed."""
        raise NotImplementedError

    def jax_sites(self, n: int):
        """(index arrays per atom, each (sites, terms per site, 1)) for the JAX gather."""
        table = self.term_atoms(n)
        return tuple(table[:, :, a, None] for a in range(self.arity))

    # ---------------------------------------------------------------- identity

    def __repr__(self):
        return self.name

    def __reduce__(self):  # a pickled space comes back as the registered instance
        return index_space, (self.name,)


def _jac_stores(target: str, slot, values, indent: str, op: str = "=") -> list:
    """`target, slot, k] = values[k]` for k = 0, 1, 2: one 3-block of a sparse Jacobian row."""
    return [f"{indent}{target}, {slot}, {k}] {op} {v}" for k, v in enumerate(values)]


def _skipped_if(condition: str, indent: str, skip=("continue",)) -> list:
    """`if condition: skip` when there is a condition (cutoff, element block), else nothing."""
    return [f"{indent}if {condition}:", *(f"{indent}    {line}" for line in skip)] if condition else []


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

    def numba_loop(self, call, layout):
        indent = " " * 16
        # beyond the cutoff a pair's features and Jacobian rows stay zero
        return ["    f = 0",
                "    for i in range(n):",
                "        for j in range(i + 1, n):",
                *_skipped_if(self.beyond_cutoff_code(layout, "R[{atom}, {k}]"), " " * 12,
                          ("f += params.shape[0]", "continue")),
                "            for c in range(params.shape[0]):",
                f"{indent}{self.term_outputs} = {call}",
                f"{indent}d[f] = v",
                *_jac_stores("jac[f", 0, self.gradient_names(0), indent),
                *_jac_stores("jac[f", 1, self.gradient_names(1), indent),
                f"{indent}f += 1"]

    def cuda_site(self, call, layout):
        indent = " " * 4
        return ["    j = atoms[f, 1]",
                *_skipped_if(self.beyond_cutoff_code(layout, "R[m, {atom}, {k}]"), indent, ("return",)),
                f"{indent}{self.term_outputs} = {call}",
                f"{indent}D[m, f] = v",
                *_jac_stores("JAC[m, f", 0, self.gradient_names(0), indent),
                *_jac_stores("JAC[m, f", 1, self.gradient_names(1), indent)]


class AtomCentred(IndexSpace):
    """One feature per atom i (per element block and channel), the term summed over the other
    atoms of each term (neighbours j, or neighbour pairs j < k).  Feature f of atom i touches
    i (slot 0) and every other atom (slots 1.., in atom order: atom j sits in slot j + 1 if
    j < i, else j); with ``elements`` declared, a term adds to the block of its neighbours'
    elements only."""

    feature_formula = "N"
    atom_centred = True
    allows_elements = True

    @property
    def neighbour_atoms(self) -> tuple:
        return self.atoms[1:]

    def n_sites(self, n):
        return n

    def slots(self, n):
        return n

    def site_atoms(self, n):
        return np.array([[i] + [j for j in range(n) if j != i] for i in range(n)]).reshape(n, n)

    def term_atoms(self, n):
        table = self.site_atoms(n)
        others = [np.array(list(combinations(row[1:], self.arity - 1))).reshape(-1, self.arity - 1)
                  for row in table]
        return np.stack([np.concatenate([np.full((len(o), 1), row[0]), o], axis=1)
                         for row, o in zip(table, others)])

    def site_permutation(self, n, perm):
        return perm

    def numba_loop(self, call, layout):
        lines = ["    channels = params.shape[0]",
                 "    for i in range(n):",
                 "        site = i * N_BLOCKS * channels" if layout.elements else "        site = i * channels"]
        indent, previous = " " * 8, None
        for a in self.neighbour_atoms:  # one loop per neighbour atom, increasing: j < k
            start = "" if previous is None else f"{previous} + 1, "
            lines += [f"{indent}for {a} in range({start}n):",
                      f"{indent}    if {a} == i:",
                      f"{indent}        continue",
                      *_skipped_if(self.beyond_cutoff_code(layout, "R[{atom}, {k}]", [("i", a)]), indent + "    "),
                      f"{indent}    s{a} = {a} + 1 if {a} < i else {a}  # its Jacobian slot"]
            indent, previous = indent + "    ", a
        block = f" + ({self.block_code(layout)}) * channels" if layout.elements else ""
        lines += [f"{indent}first = site{block}",
                  f"{indent}for c in range(channels):",
                  f"{indent}    f = first + c",
                  f"{indent}    {self.term_outputs} = {call}",
                  f"{indent}    d[f] += v",
                  *_jac_stores("jac[f", 0, self.gradient_names(0), indent + "    ", "+=")]
        for n, a in enumerate(self.neighbour_atoms, start=1):
            lines += _jac_stores("jac[f", f"s{a}", self.gradient_names(n), indent + "    ", "+=")
        return lines

    def cuda_site(self, call, layout):
        lines = ["    # the term summed over the feature's neighbour atoms (slots 1.. of the atom table)",
                 "    total = 0.0"]
        indent, previous = " " * 4, None
        for a in self.neighbour_atoms:
            start = "1" if previous is None else f"s{previous} + 1"
            lines += [f"{indent}for s{a} in range({start}, atoms.shape[1]):",
                      f"{indent}    {a} = atoms[f, s{a}]",
                      *_skipped_if(self.beyond_cutoff_code(layout, "R[m, {atom}, {k}]", [("i", a)]), indent + "    ")]
            indent, previous = indent + "    ", a
        if layout.elements:
            lines += _skipped_if(f"{self.block_code(layout)} != b", indent)
        lines += [f"{indent}{self.term_outputs} = {call}",
                  f"{indent}total += v",
                  *_jac_stores("JAC[m, f", 0, self.gradient_names(0), indent, "+=")]
        for n, a in enumerate(self.neighbour_atoms, start=1):
            lines += _jac_stores("JAC[m, f", f"s{a}", self.gradient_names(n), indent, "+=")
        return lines + ["    D[m, f] = total"]


class Neighbours(AtomCentred):
    """``neighbours``: one feature per atom i (per channel), the term summed over every other
    atom j (atom-centred radial descriptors such as Behler's G2); any term maps permutations.
    With ``elements``, one block per element of j."""

    name = "neighbours"
    needs_symmetric_term = False  # the sum over j is the same whatever order the atoms come in

    def n_blocks(self, n_elements):
        return max(n_elements, 1)

    def block_code(self, layout):
        return "element_block(z[j])" if layout.elements else "0"

    def jax_block_weights(self, z_atoms, layout):
        _, zj = z_atoms
        return zj[..., None] == np.asarray(layout.elements, dtype=np.float64)

    def numba_docstring(self):
        return ['    """Features d (F,) and sparse Jacobian jac (F, N, 3) of one geometry R (N, 3);',
                '    feature (atom i, block, channel c) sums the term over neighbours j != i and touches',
                '    atom i (slot 0) and every neighbour j (slots 1.., in atom order)."""']


class NeighbourPairs(AtomCentred):
    """``neighbour_pairs``: one feature per atom i (per channel), the term summed over every
    pair of other atoms j < k (angular, three-body terms such as Behler's G4 or FCHL19's).
    The term must be symmetric in j and k for atom permutations to map to features.  With
    ``elements``, one block per unordered pair of the neighbours' elements."""

    name = "neighbour_pairs"
    arity = 3
    term_swaps = (("j", "k"),)
    cutoff_pairs = (("i", "j"), ("i", "k"))

    def n_blocks(self, n_elements):
        return max(n_elements * (n_elements + 1) // 2, 1)

    def block_code(self, layout):
        return "pair_block(element_block(z[j]), element_block(z[k]))" if layout.elements else "0"

    def jax_block_weights(self, z_atoms, layout):
        _, zj, zk = z_atoms
        e = np.asarray(layout.elements, dtype=np.float64)
        first, second = np.triu_indices(len(e))  # pair_block's order: (0, 0), (0, 1), ..., (E-1, E-1)
        a, b = e[first], e[second]
        zj, zk = zj[..., None], zk[..., None]
        return ((zj == a) & (zk == b)) | ((zj == b) & (zk == a))

    def numba_docstring(self):
        return ['    """Features d (F,) and sparse Jacobian jac (F, N, 3) of one geometry R (N, 3);',
                '    feature (atom i, block, channel c) sums the term over neighbour pairs j < k (both',
                '    != i) and touches atom i (slot 0) and every other atom (slots 1.., in atom order)."""']


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


pairs, neighbours, neighbour_pairs = Pairs(), Neighbours(), NeighbourPairs()
INDEX_SPACES = {space.name: space for space in (pairs, neighbours, neighbour_pairs)}  # name -> space: DSL and model files
DEFAULT_INDEX_SPACE = pairs  # @descriptor's default `over`


def index_space(name: str) -> IndexSpace:
    """The registered space called ``name`` (KeyError if there is none)."""
    return INDEX_SPACES[name]
