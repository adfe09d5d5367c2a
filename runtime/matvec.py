"""The matrix-free training product, prepared once per (training data, permutations, hyperparameters).

C V is prediction with the training points as queries and coefficients B = J V (backends.py):
CG asks for it once per iteration with a new V and everything else fixed.  TrainingProduct
computes what does not depend on V once: the permuted training descriptors, centred, with their
norms; the query side of the same points; and T = dq DT^T, the vector-free half of batched
prediction's first matrix product (kept while it fits in PRECOMPUTED_BYTES).  A product then
costs B = J V, its permuted copy written into W's coefficient half, dq BT^T, the generated
elementwise kernel and X W, on the chunk pool of runtime/prediction.py (all cores).

``rows``: a plan for a block of K's rows only (the query side of those training points; the
coefficient side is still all M points), as a worker of runtime/distributed.py holds it.
"""
from __future__ import annotations

import numpy as np

from compiler.build.compiled import PredictionSide, numba_threads

from . import prediction

# T = dq DT^T is M x MP doubles (ethanol M = 1000, P = 6: 48 MB; M = 4000: 768 MB); beyond this
# it is recomputed in every product, which then costs a third more flops
PRECOMPUTED_BYTES = 1 << 30


class TrainingProduct:
    """x -> K x for the training matrix of (D, JAC, fperms, hyper), with K never formed.

    The arrays are copied: the plan answers for the values it was built from (prepared_for),
    whatever happens to the caller's arrays afterwards.  ``rows`` (a slice of the M training
    points, default all): the products give only these points' rows (forces, energies)."""

    def __init__(self, model, D, JAC, fperms, hyper, precomputed_bytes=PRECOMPUTED_BYTES, rows=None):
        self.model = model
        self.D = np.array(D, dtype=np.float64)
        self.JAC = np.array(JAC, dtype=np.float64)
        self.fperms = np.array(fperms, dtype=np.int64)
        self.hyper = np.array(hyper, dtype=np.float64)
        self.m = self.D.shape[0]
        self.rows = slice(0, self.m) if rows is None else slice(*rows.indices(self.m))
        self.DQ, self.JACQ = self.D[self.rows], self.JAC[self.rows]  # the query side: this plan's rows
        self.n_query = self.DQ.shape[0]
        self.DT = prediction.permuted_rows(self.D, self.fperms)  # uncentred: the energy-weight terms read it
        # one side for all products: its coefficient half W[n:] (and TB, CB) is rewritten per product
        self.side = PredictionSide(self.DT, np.zeros_like(self.DT))
        self.side.WT = None  # batched prediction does not read it, and it would go stale
        self.dq, self.NQ, self.QC = self.side.queries(self.DQ)
        n = self.side.n_rows
        self.T = self.dq @ self.side.W[:n].T if 8 * self.n_query * n <= precomputed_bytes else None

    def prepared_for(self, D, JAC, fperms, hyper):
        """Whether this plan is the product of exactly these arrays (values, not identity)."""
        return all(np.shape(a) == b.shape and np.array_equal(a, b)
                   for a, b in ((D, self.D), (fperms, self.fperms), (hyper, self.hyper), (JAC, self.JAC)))

    def matvec(self, V):
        """C V for V (M, N, 3) or its flat form: shaped like V (the plan's rows only: (rows, N, 3))."""
        _, F = self.prediction(V)
        return F

    def matvec_energy(self, V, w):
        """(C V + K_fe w, K_ef V + K_ee w) of the joint energy+force matrix, as backends.Backend."""
        E, F = self.prediction(V)
        w = np.asarray(w, dtype=np.float64)
        if w.shape != (self.m,):
            raise ValueError(f"w: expected {self.m} energy weights, got shape {w.shape}")
        prediction.add_energy_weight_terms(self.model, self.DQ, self.JACQ, self.DT, np.repeat(w, len(self.fperms)),
                                           self.hyper, E, F.reshape(self.n_query, -1, 3))
        return F, E

    def prediction(self, V):
        """(E (rows,), F shaped like V, or (rows, N, 3) for a block of rows): prediction at the
        plan's training points with coefficients V."""
        V = np.asarray(V, dtype=np.float64)
        n_atoms = V.size // (3 * self.m) if self.m else 0
        if V.size != 3 * n_atoms * self.m or n_atoms < 2:
            raise ValueError(f"V: expected {self.m} x n_atoms x 3 entries, got shape {V.shape}")
        with numba_threads(1):  # microseconds of work: a parallel region's barrier cost 8-12 ms on a loaded 2-core machine
            B = self.model.contract(self.JAC, V.reshape(self.m, n_atoms, 3))
        self._set_coefficients(B)
        T = self.T
        acc, E = prediction.descriptor_sums_chunked(
            self.n_query, self.D.shape[1], lambda rows: prediction.chunk_sums(
                self.model, self.dq[rows], self.NQ[rows], self.QC[rows], self.side, self.hyper,
                None if T is None else T[rows]))
        F = np.empty((self.n_query, n_atoms, 3))
        self.model.forces_from_descriptor_gradients(self.JACQ, acc, F)
        return E, (F.reshape(V.shape) if self.n_query == self.m else F)

    def _set_coefficients(self, B):
        """The side's coefficient half: W[n:] = B under every permutation, TB, CB (PredictionSide)."""
        side, n = self.side, self.side.n_rows
        BT = side.W[n:]
        BT.reshape(self.m, len(self.fperms), -1)[:] = B[:, self.fperms]
        np.einsum("mf,mf->m", side.DT, BT, out=side.TB)
        np.matmul(BT, side.centre, out=side.CB)
