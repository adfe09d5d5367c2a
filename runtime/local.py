"""Local kernel models: k(x, x') = sum_ij [z_i = z'_j] k(d_i(x), d_j(x')) over the atoms' feature vectors.

A local model compares atoms, not molecules.  Its descriptor is atom-centred: D(x) holds one
feature vector d_i per atom (features ordered by atom), and J_i, the rows of the sparse Jacobian
that belong to atom i, is that vector's Jacobian.  With beta_j = J_j(x_m) alpha_m for every
training atom j, the predicted energy is a sum over query atoms i of what a global model would
predict for the "molecule" d_i against the training "molecules" d_j of the same element:

    E(x) = sum_i sum_j [z_i = z_j] (-grad_dp k(d_i, d_j) . beta_j),   F(x) = sum_i J_i^T g_i,

g_i the descriptor-space force sum of that prediction.  So prediction (and the matrix-free
training product, which is prediction at the training points with coefficients V) runs the
same generated prediction kernels as a global model (runtime/prediction.py), once per element,
over atoms instead of geometries; the training matrix's blocks come from the generated
local_force_block (compiler/targets/numba_cpu.py).  Local models are permutation-invariant by
construction: there is no symmetry search.
"""
from __future__ import annotations

import numpy as np

from compiler.build.compiled import PredictionSide, SiteJacobians, numba_threads, threads_for
from compiler.build.hessian import HessianSide, observation_terms, site_hessian

from . import mixed, prediction
from .hessian_training import add_observation_terms
from .backends import CpuBackend
from .assembly import assemble


def site_rows(X, n_atoms):
    """(M N, F_site): the per-atom feature vectors of descriptor-space rows X (M, N F_site)."""
    return X.reshape(X.shape[0] * n_atoms, -1)


def site_elements(z, m) -> np.ndarray:
    """The element of every site of M geometries, geometry after geometry (M N,): z (N,) shared by
    all or (M, N) per geometry (0: a padded slot, runtime/mixed.py)."""
    z = np.asarray(z, dtype=np.float64)
    return z.ravel() if z.ndim == 2 else np.tile(z, m)


class SiteSides:
    """The training atoms of a local model, one PredictionSide per element: the atoms' feature
    vectors DT and coefficients BT (rows of site_rows), for the generated prediction kernels, and
    the energy weights of a joint energy+force model (each atom carries its geometry's)."""

    def __init__(self, D, B, z, W=None):
        self.z = np.asarray(z, dtype=np.float64)
        self.n_atoms = self.z.shape[-1]
        elements = site_elements(self.z, D.shape[0])  # of every training atom, geometry after geometry
        DS, BS = site_rows(D, self.n_atoms), site_rows(B, self.n_atoms)
        WS = None if W is None else np.repeat(np.asarray(W, dtype=np.float64), self.n_atoms)
        # per element: the training atoms' vectors, coefficients and energy weights, and their prediction side
        self._masks = {e: elements == e for e in np.unique(elements) if e > 0}
        self.rows = {e: (np.ascontiguousarray(DS[same]), np.ascontiguousarray(BS[same]),
                         None if WS is None else WS[same]) for e, same in self._masks.items()}
        self.sides = {e: PredictionSide(DT, BT) for e, (DT, BT, _) in self.rows.items()}

    def set_coefficients(self, B):
        """New coefficients B (M, N F_site) for the same training atoms (a CG product): each element's
        side keeps its centring and norms (PredictionSide.set_coefficients)."""
        BS = site_rows(B, self.n_atoms)
        for e, same in self._masks.items():
            self.sides[e].set_coefficients(BS[same])

    def check_elements(self, zq):
        """ValueError naming the first query atom whose element has no training atom (its
        energy would silently be zero)."""
        unseen = np.flatnonzero(~np.isin(zq, list(self.sides)))
        if unseen.size:
            a = int(unseen[0])
            seen = ", ".join(f"{e:g}" for e in self.sides)
            raise ValueError(f"atom {a} has atomic number {zq[a]:g}, which this local model has no training "
                             f"atoms of (it was trained on elements {seen})")

    def descriptor_sums(self, model, DQ, zq, hyper):
        """(acc (Q, N F_site), site energies summed per geometry (Q,)) of query geometries DQ
        whose atoms have the elements zq: each element's query atoms against its training atoms."""
        q_count, n_atoms = DQ.shape[0], len(zq)
        SQ = site_rows(DQ, n_atoms)
        elements = np.tile(zq, q_count)
        acc = np.empty_like(SQ)
        energies = np.empty(SQ.shape[0])
        for e, side in self.sides.items():
            rows = np.flatnonzero(elements == e)
            if rows.size == 0:
                continue
            queries = SQ[rows]
            acc[rows], energies[rows] = prediction.descriptor_sums_chunked(
                *queries.shape, lambda chunk: prediction.chunk_sums(model, *side.queries(queries[chunk]), side, hyper))
        return acc.reshape(DQ.shape), energies.reshape(q_count, n_atoms).sum(axis=1)


def predict_local(model, DQ, JACQ, zq, sides: SiteSides, hyper):
    """Energies (Q,) and forces (Q, N, 3) of a local model (raw: unscaled, no constant)."""
    n_atoms = len(zq)
    with numba_threads(threads_for(DQ.shape[0])):
        acc, E = sides.descriptor_sums(model, DQ, zq, hyper)
    F = np.empty((DQ.shape[0], n_atoms, 3))
    model.forces_from_descriptor_gradients(JACQ, acc, F)
    return E, F


def add_energy_weight_terms_local(model, DQ, JACQ, zq, DT, WT, zt, hyper, E, F):
    """E, F += sum_t WT[t] k(x, x_t) and its -gradient, for the local kernel: the energy-weight terms
    of a joint energy+force model (and the energy columns of its training matrix), with training
    geometries DT (T, N_t F_site) of elements zt.  The generated predict_energy_weights runs once per
    query atom i, with that atom's rows of the Jacobian, against the training atoms of its element."""
    n_atoms, n_site, n_training = len(zq), DQ.shape[1] // len(zq), np.shape(zt)[-1]
    atoms = model.descriptor.atom_table(n_atoms)
    ST, WS, elements = site_rows(DT, n_training), np.repeat(WT, n_training), site_elements(zt, len(DT))
    with numba_threads(threads_for(DQ.shape[0])):
        for i in range(n_atoms):
            rows, same = slice(i * n_site, (i + 1) * n_site), elements == zq[i]
            model.predict_energy_weights(np.ascontiguousarray(DQ[:, rows]), np.ascontiguousarray(JACQ[:, rows]),
                                         np.ascontiguousarray(ST[same]), np.ascontiguousarray(WS[same]), hyper, E, F,
                                         atoms=np.ascontiguousarray(atoms[rows]))


def hessians_local(model, R, zq, D, JAC, hessian_sides, hyper, observation_sides=None):
    """d2E/dx2 (Q, 3N, 3N) of a local model (raw): per atom i the Hessian of its energy in its own
    vector d_i, through its Jacobian J_i (compiler/build/hessian.py, as for a global model's one
    vector), summed over atoms; then the descriptor's curvature weighted by every atom's gradient.
    ``observation_sides``: element -> HessianSide of a model's Hessian-observation pieces."""
    q_count, n_atoms = D.shape[0], len(zq)
    JD = model.descriptor.dense_site_jacobians(JAC, n_atoms)
    n_site = JD.shape[2]
    H = np.zeros((q_count, 3 * n_atoms, 3 * n_atoms))
    for q in range(q_count):
        weights = np.empty(D.shape[1])
        for i in range(n_atoms):
            rows = slice(i * n_site, (i + 1) * n_site)
            J = JD[q, i]
            project = lambda columns, name=None, J=J: J.T @ columns  # noqa: E731
            part, weights[rows] = site_hessian(model, D[q, rows], J, project, hessian_sides[zq[i]], hyper)
            H[q] += part
            if observation_sides is not None and zq[i] in observation_sides:
                part, gradient = observation_terms(model, D[q, rows], J, project, observation_sides[zq[i]], hyper)
                H[q] += part
                weights[rows] += gradient
        model.descriptor.add_curvature(R[q], zq, weights, H[q])
    return H


class LocalRows:
    """The row writer runtime/assembly.py calls (assemble_rows), for a local kernel's blocks:
    every training geometry has the atoms' elements ``z`` ((N,), or (M, N) for padded geometries of
    several compositions, runtime/mixed.py); there are no permutations.  The dense site Jacobians
    of the last JAC seen are kept: assembly calls once per chunk of rows.  Padded geometries come
    with their SiteJacobians in place of JAC."""

    def __init__(self, model, z):
        self.model, self.z = model, np.asarray(z, dtype=np.float64)
        self._dense = (None, None)  # (JAC, its site Jacobians)

    def _site_jacobians(self, JAC, n_atoms):
        if isinstance(JAC, SiteJacobians):
            return JAC
        if self._dense[0] is not JAC:
            self._dense = (JAC, self.model.descriptor.site_jacobians(JAC, n_atoms))
        return self._dense[1]

    def assemble_rows(self, D, JAC, fperms, hyper, K, rows, n_atoms, mirror=True):
        self.model.assemble_local_rows(D, self._site_jacobians(JAC, n_atoms), self.z, hyper, K, rows, n_atoms, mirror)

    def assemble_energy_rows(self, D, JAC, fperms, hyper, K, n_atoms):
        self.model.assemble_local_energy_rows(D, self._site_jacobians(JAC, n_atoms), self.z, hyper, K, n_atoms)

    def predict_energy_weights(self, DQ, JACQ, DT, WT, hyper, E, F):
        """The energy-weight terms against training geometries DT with weights WT (TrainingColumns'
        energy columns), as CompiledModel.predict_energy_weights for a global model."""
        add_energy_weight_terms_local(self.model, DQ, JACQ, self.z, DT, WT, self.z, hyper, E, F)


class LocalTrainingProduct:
    """x -> K x for a local model's training matrix, K never formed: prediction at the training
    points with coefficients V (runtime/matvec.py's TrainingProduct does the same for global models)."""

    def __init__(self, model, D, JAC, z, hyper):
        self.model, self.z = model, np.asarray(z, dtype=np.float64)
        self.D, self.JAC, self.hyper = np.array(D, dtype=np.float64), np.array(JAC, dtype=np.float64), np.array(hyper)
        self.m = self.D.shape[0]
        self.sides = SiteSides(self.D, np.zeros_like(self.D), self.z)  # the coefficients change per product

    def prepared_for(self, D, JAC, fperms, hyper):
        return all(np.shape(a) == b.shape and np.array_equal(a, b)
                   for a, b in ((D, self.D), (hyper, self.hyper), (JAC, self.JAC)))

    def prediction(self, V):
        V = np.asarray(V, dtype=np.float64)
        n_atoms = len(self.z)
        if V.size != 3 * n_atoms * self.m:
            raise ValueError(f"V: expected {self.m} x {n_atoms} x 3 entries, got shape {V.shape}")
        with numba_threads(1):
            B = self.model.contract(self.JAC, V.reshape(self.m, n_atoms, 3))
        self.sides.set_coefficients(B)
        E, F = predict_local(self.model, self.D, self.JAC, self.z, self.sides, self.hyper)
        return E, F.reshape(V.shape)

    def matvec(self, V):
        return self.prediction(V)[1]

    def matvec_energy(self, V, w):
        """(C V + K_fe w, K_ef V + K_ee w) of the joint energy+force matrix, as backends.Backend."""
        E, F = self.prediction(V)
        w = np.asarray(w, dtype=np.float64)
        if w.shape != (self.m,):
            raise ValueError(f"w: expected {self.m} energy weights, got shape {w.shape}")
        add_energy_weight_terms_local(self.model, self.D, self.JAC, self.z, self.D, w, self.z, self.hyper, E,
                                      F.reshape(self.m, -1, 3))
        return F, E


class LocalCpuBackend(CpuBackend):
    """The CPU backend of a local model (backends.Backend): its own assembly, prediction and
    training product; descriptors, the solver and the contraction B = J V as a global model's.
    ``elements``: the training geometries' atomic numbers, set by GDML before assembly."""

    def __init__(self, model):
        super().__init__(model)
        self.elements = None

    def assemble(self, D, JAC, fperms, hyper, n_atoms, K, progress=True, energy_rows=False):
        assemble(LocalRows(self.model, self.elements), D, JAC, fperms, hyper, n_atoms, out=K, progress=progress,
                 energy_rows=energy_rows)

    def prepare(self, training):
        if self._prepared[0] is not training:
            self._prepared = (training, SiteSides(training.DT, training.BT, training.z, training.WT))
        return self._prepared[1]

    def evaluate(self, R, z):
        """(D, JAC) of geometries of one composition z (N,); of padded geometries (z (M, N)), D and
        their SiteJacobians (runtime/mixed.py)."""
        if not mixed.is_padded(z):
            return super().evaluate(R, z)

        def one_composition(r, elements):
            D, JAC = super(LocalCpuBackend, self).evaluate(r, elements)
            return D, self.model.descriptor.dense_site_jacobians(JAC, len(elements))
        return mixed.padded_descriptors(one_composition, R, z, R.shape[1])

    def contract(self, JAC, V):
        return mixed.contract_sites(JAC, V) if isinstance(JAC, SiteJacobians) else super().contract(JAC, V)

    def predict(self, R, z, training):
        if mixed.is_padded(z):
            return mixed.scattered(R, z, lambda r, elements: self.predict(r, elements, training), "EF")
        sides = self.prepare(training)
        zq = np.asarray(z, dtype=np.float64)
        sides.check_elements(zq)
        D, JAC = self.evaluate(R, z)
        E, F = predict_local(self.model, D, JAC, zq, sides, training.hyper)
        if training.WT is not None:
            add_energy_weight_terms_local(self.model, D, JAC, zq, training.DT, training.WT, training.z, training.hyper,
                                          E, F)
        if training.observations is not None:
            add_observation_terms(self.model, D, JAC, training.observations, training.hyper, E, F, z=zq)
        return E, F

    def hessian(self, R, z, training):
        if mixed.is_padded(z):
            return mixed.scattered(R, z, lambda r, elements: (self.hessian(r, elements, training),), "H")[0]
        if self._hessian_prepared[0] is not training:
            sides = self.prepare(training)
            self._hessian_prepared = (training, {e: HessianSide(*rows) for e, rows in sides.rows.items()})
        zq = np.asarray(z, dtype=np.float64)
        D, JAC = self.evaluate(R, z)
        return hessians_local(self.model, R, zq, D, JAC, self._hessian_prepared[1], training.hyper,
                              training.observations)

    def training_product(self, D, JAC, fperms, hyper):
        return LocalTrainingProduct(self.model, D, JAC, self.elements, hyper)
