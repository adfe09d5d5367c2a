"""What training produces, as one value: everything a model file stores and prediction reads."""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np


@dataclass(frozen=True, eq=False)
class TrainedState:
    """A trained GDML model's state.  ``alpha`` (M, N, 3): force coefficients; ``B_train``
    (M, F): them contracted into descriptor space; ``energy_weights`` (M,): the energy
    coefficients of a joint energy+force model (None for a forces-only one);
    ``energy_constant``: None when trained without energies (relative energies).
    ``R_hessian`` (K, N, 3) and ``hessian_weights`` (K, 3N(3N+1)/2): the geometries of a model's
    Hessian observations and their coefficients, entries r <= s (None without Hessian training).
    ``element_energies`` (119,): per atomic number, the energy each atom adds (a model of several
    compositions trained with energies, runtime/mixed.py; its energy_constant is then 0)."""
    z: np.ndarray
    R_train: np.ndarray
    perms: np.ndarray
    alpha: np.ndarray
    D_train: np.ndarray
    B_train: np.ndarray
    energy_weights: np.ndarray | None
    sigma: float
    lam_used: float
    label_scale: float
    energy_constant: float | None
    R_hessian: np.ndarray | None = None
    hessian_weights: np.ndarray | None = None
    element_energies: np.ndarray | None = None

    @property
    def n_atoms(self) -> int:
        """Atoms per geometry (slots, for geometries of several compositions: z (M, N))."""
        return np.shape(self.z)[-1]

    @property
    def hessian_observations(self) -> bool:
        return self.R_hessian is not None

    @property
    def energy_constraints(self) -> bool:
        return self.energy_weights is not None

    def __eq__(self, other):
        """Equal values in every field (arrays compared element by element, shapes included)."""
        if not isinstance(other, TrainedState):
            return NotImplemented
        return all(_same(getattr(self, f.name), getattr(other, f.name)) for f in fields(self))

    __hash__ = None  # holds arrays


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return np.array_equal(np.asarray(a), np.asarray(b))


@dataclass(frozen=True, eq=False)
class PermutedTraining:
    """What prediction reads: the training descriptors DT and coefficients BT permuted by
    every symmetry (M * P, F each), the energy weights WT of each permuted copy (None for a
    forces-only model), the kernel's hyperparameter array and the training atoms' elements z
    (a local model pairs atoms of one element).  ``observations``: the HessianSide of a model's
    Hessian-observation pieces (runtime/hessian_training.py; their force pieces are rows of DT, BT)."""
    DT: np.ndarray
    BT: np.ndarray
    WT: np.ndarray | None
    hyper: np.ndarray
    z: np.ndarray | None = None
    observations: object = None

    @classmethod
    def of(cls, state: TrainedState, fperms, hyper):
        f = state.D_train.shape[1]
        DT = np.ascontiguousarray(state.D_train[:, fperms].reshape(-1, f))
        BT = np.ascontiguousarray(state.B_train[:, fperms].reshape(-1, f))
        # the symmetric kernel sums over permuted copies: each copy carries its geometry's weight
        WT = (None if state.energy_weights is None
              else np.repeat(np.asarray(state.energy_weights, np.float64), len(fperms)))
        return cls(DT, BT, WT, hyper, np.asarray(state.z, dtype=np.float64))
