"""A combination of descriptors (``compiler.dsl.combine``) as one descriptor.

Each part is compiled on its own (its own generated module, its own loops, parameters and
element blocks); the combination interleaves their features per atom: the features of atom i
are part 0's features of atom i, then part 1's, ...  Every part is over an atom-centred space,
so all share one site per atom and one atom table (atom i, then the others in order), and the
combined Jacobian is the parts' rows interleaved the same way.  A model compiles its fused
kernels with part 0 (the model's kernels read only D, JAC and the atom table).
"""
from __future__ import annotations

import numpy as np

from compiler import checks
from compiler.build.compiled import CompiledDescriptor
from compiler.targets import jax_reference


class CombinedDescriptor(CompiledDescriptor):
    """The CompiledDescriptor interface over several compiled atom-centred parts."""

    is_combination = True

    def __init__(self, dsl, parts: list):
        self.dsl, self.parts = dsl, list(parts)
        first = self.parts[0]
        self.module, self.module_path = first.module, first.module_path  # the model's module when built with one
        self.built_now = any(p.built_now for p in self.parts)
        self.build_seconds = sum(p.build_seconds for p in self.parts)
        self.metadata = {"symmetric": all(p.symmetric for p in self.parts), "over": first.over.name,
                         "parts": [p.metadata for p in self.parts]}
        # what identifies the parameters (a CG checkpoint's problem hash reads it)
        self.params = np.concatenate([p.params.ravel() for p in self.parts])
        widths = [p.n_channels for p in self.parts]
        bounds = np.cumsum([0] + widths)
        self._columns = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]  # of each atom's features

    over = property(lambda self: self.parts[0].over)  # the sites every part shares: one per atom
    layout = property(lambda self: None)               # per part: self.parts[k].layout
    n_channels = property(lambda self: sum(p.n_channels for p in self.parts))
    needs_z = property(lambda self: any(p.needs_z for p in self.parts))

    @property
    def maps_atom_permutations(self):
        return all(p.maps_atom_permutations for p in self.parts)

    def _z(self, z, n_atoms):
        """Atomic numbers checked by every part (each names what it needs)."""
        checked = [p._z(z, n_atoms) for p in self.parts]
        return checked[0] if z is None else checks.atomic_numbers(z, n_atoms)

    def evaluate(self, R, z=None, validated=False):
        R3, single = (R, False) if validated else checks.geometries(R)
        m, n, _ = R3.shape
        zf = self._z(z, n)
        D = np.empty((m, n, self.n_channels))
        JAC = np.empty((m, n, self.n_channels, self.slots(n), 3))
        for part, columns in zip(self.parts, self._columns):
            Dp, Jp, _ = part.evaluate(R3, zf, validated=True)
            D[:, :, columns] = Dp.reshape(m, n, -1)
            JAC[:, :, columns] = Jp.reshape(m, n, -1, *Jp.shape[2:])
        return D.reshape(m, -1), JAC.reshape(m, n * self.n_channels, *JAC.shape[3:]), single

    def add_curvature(self, R, z, W, H):
        n = R.shape[0]
        W = np.asarray(W, dtype=np.float64).reshape(n, self.n_channels)
        for part, columns in zip(self.parts, self._columns):
            part.add_curvature(R, z, W[:, columns].ravel(), H)

    def feature_permutations(self, perms, n_atoms):
        perms = checks.permutations(perms, n_atoms)
        for part in self.parts:  # a part that cannot map atom permutations refuses, saying why
            part.feature_permutations(perms, n_atoms)
        return self.over.feature_permutations(n_atoms, self.n_channels, perms)

    def jax_function(self):
        return jax_reference.combined_descriptor_function([p.jax_function() for p in self.parts])
