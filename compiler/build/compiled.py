"""Compiled descriptors, kernels and models: Python faces of generated modules."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from functools import cached_property

import numpy as np

from compiler import checks
from compiler.build import pipeline
from compiler.front.records import S, T
from compiler.targets import jax_reference, numba_cpu
from compiler.middle.structure import KernelStructure
from compiler.middle.structure import contractions as structure_contractions


# --------------------------------------------------------------------------- descriptor

class CompiledDescriptor:
    """Descriptor values and sparse Jacobians from generated Numba code."""

    is_combination = False  # compiler.build.combined.CombinedDescriptor: several compiled parts

    def __init__(self, dsl, dir_, table, module, path, built, seconds):
        self.dsl, self.ir, self.params = dsl, dir_, table
        self.module, self.module_path, self.built_now, self.build_seconds = module, path, built, seconds
        self.metadata = module.METADATA

    name = property(lambda self: self.dsl.name)
    over = property(lambda self: self.ir.over)  # the IndexSpace; str() gives its name
    layout = property(lambda self: self.ir.layout)  # element blocks and cutoff, as declared
    # features per site: parameter channels in each element block
    n_channels = property(lambda self: self.params.shape[0] * self.layout.n_blocks(self.over))
    needs_z = property(lambda self: bool(self.ir.z_args) or bool(self.ir.layout.elements))
    symmetric = property(lambda self: self.metadata["symmetric"])

    @property
    def maps_atom_permutations(self):
        """Whether atom permutations map to feature permutations (pairs need a swap-symmetric term)."""
        return self.symmetric or not self.over.needs_symmetric_term

    def n_sites(self, n_atoms):
        return self.over.n_sites(n_atoms)

    def n_features(self, n_atoms):
        return self.over.n_features(n_atoms, self.n_channels)

    def slots(self, n_atoms):
        """Atoms each feature touches (nonzero 3-blocks per Jacobian row)."""
        return self.over.slots(n_atoms)

    def atom_table(self, n_atoms):
        return self.over.atom_table(n_atoms, self.n_channels)

    def _z(self, z, n_atoms):
        if z is None:
            if self.needs_z:
                uses = ", ".join(self.ir.z_args) or f"elements {self._element_list}"
                raise ValueError(f"descriptor {self.name} uses atomic numbers ({uses}): pass z")
            return np.ones(n_atoms)
        z = checks.atomic_numbers(z, n_atoms)
        if self.layout.elements:
            unknown = np.flatnonzero(~np.isin(z, self.layout.elements))
            if unknown.size:
                a = int(unknown[0])
                raise ValueError(f"atom {a} has atomic number {z[a]:g}, which descriptor {self.name} has no "
                                 f"features for: its elements are {self._element_list}")
        return z

    @property
    def _element_list(self):
        return ", ".join(f"{e:g}" for e in self.layout.elements)

    def evaluate(self, R, z=None, validated=False):
        """(D (M, F), JAC (M, F, K, 3), single) for R (N, 3) or (M, N, 3).

        ``validated``: R is already a checks.geometries() result (the runtime checks each input once)."""
        R3, single = (R, False) if validated else checks.geometries(R)
        m, n, _ = R3.shape
        zf = self._z(z, n)
        D = np.empty((m, self.n_features(n)))
        JAC = np.empty((m, self.n_features(n), self.slots(n), 3))
        with numba_threads(threads_for(m)):
            self.module.descriptor_many(R3, zf, self.params, D, JAC)
        return D, JAC, single

    def values(self, R, z=None):
        D, _, single = self.evaluate(R, z)
        return D[0] if single else D

    def sparse_jacobian(self, R, z=None):
        """(values (..., F, K, 3), atoms (F, K)): row f has nonzeros at atoms[f]."""
        _, JAC, single = self.evaluate(R, z)
        return (JAC[0] if single else JAC), self.atom_table(np.asarray(R).shape[-2])

    def jacobian(self, R, z=None):
        """Dense (..., F, N, 3) Jacobian, for inspection and tests."""
        _, JAC, single = self.evaluate(R, z)
        m, F, K, _ = JAC.shape
        n = np.asarray(R).shape[-2]
        atoms = self.atom_table(n)
        dense = np.zeros((m, F, n, 3))
        rows = np.repeat(np.arange(F), K)
        for frame in range(m):
            np.add.at(dense[frame], (rows, atoms.ravel()), JAC[frame].reshape(F * K, 3))
        return dense[0] if single else dense

    def site_jacobians(self, JAC, n_atoms) -> "SiteJacobians":
        """Dense per-atom Jacobians (M, N, F_site, 3N) from sparse ones JAC (M, N F_site, K, 3) of an
        atom-centred descriptor, with their nonzero rows: what a local kernel's blocks read."""
        return SiteJacobians(self.dense_site_jacobians(JAC, n_atoms))

    def dense_site_jacobians(self, JAC, n_atoms) -> np.ndarray:
        """The dense per-atom Jacobians (M, N, F_site, 3N) alone (Hessians need no nonzero rows)."""
        m, n_features = JAC.shape[0], JAC.shape[1]
        atoms = self.atom_table(n_atoms)
        dense = np.zeros((m, n_features, n_atoms, 3))
        if all(len(set(row)) == len(row) for row in atoms.tolist()):  # no atom twice in a row: plain assignment
            dense[:, np.arange(n_features)[:, None], atoms] = JAC
        else:
            for frame in range(m):
                np.add.at(dense[frame], (np.repeat(np.arange(n_features), atoms.shape[1]), atoms.ravel()),
                          JAC[frame].reshape(-1, 3))
        return dense.reshape(m, n_atoms, n_features // n_atoms, 3 * n_atoms)

    def add_curvature(self, R, z, W, H):
        """H (3N, 3N) += sum_f W[f] d2 D_f / dx2 at one geometry R (N, 3), term by term."""
        n = R.shape[0]
        self.module.add_descriptor_curvature(R, self._z(z, n), self.params, self.over.term_table(n),
                                             np.ascontiguousarray(W, dtype=np.float64), H)

    def feature_permutations(self, perms, n_atoms):
        """(P, F) feature index maps: D(x[perm]) == D(x)[fperm]."""
        perms = checks.permutations(perms, n_atoms)
        nontrivial = (perms != np.arange(n_atoms)).any()
        if nontrivial and not self.maps_atom_permutations:
            raise ValueError(f"descriptor {self.name} is not symmetric in {self.over.swapped_atoms}, so atom "
                             "permutations do not map to feature permutations; use it without symmetries")
        return self.over.feature_permutations(n_atoms, self.n_channels, perms)

    def jax_function(self):
        """jax.numpy D(R, z=None) -> (F,) lowered from the same IR."""
        return jax_reference.descriptor_function(self.ir, self.params)


class SiteJacobians:
    """Dense per-atom Jacobians ``dense`` (M, N, F, 3N) and, per atom, the rows that are not all
    zero: ``rows[m, i, :counts[m, i]]`` (features of absent elements have zero rows)."""

    def __init__(self, dense):
        self.dense = dense
        nonzero = (dense != 0.0).any(axis=3)
        self.counts = nonzero.sum(axis=2).astype(np.int64)
        order = np.argsort(~nonzero, axis=2, kind="stable")  # nonzero rows first, in feature order
        self.rows = np.ascontiguousarray(order.astype(np.int64))


# --------------------------------------------------------------------------- kernel

class CompiledKernel:
    """Base kernel k(d, dp) = g(s, t) and its descriptor-space derivatives."""

    def __init__(self, dsl, kir, module, path, built, seconds):
        self.dsl, self.ir = dsl, kir
        self.module, self.module_path, self.built_now, self.build_seconds = module, path, built, seconds
        self.metadata = module.METADATA

    name = property(lambda self: self.dsl.name)
    hyper_names = property(lambda self: self.ir.hyper_names)

    @property
    def sigma_name(self):
        """The length scale σ the runtime sweeps: the hyperparameter named sigma, else the
        first one; None for a kernel without hyperparameters."""
        names = self.hyper_names
        return "sigma" if "sigma" in names else (names[0] if names else None)

    def hyper(self, /, **values):
        """Hyperparameters as the float64 array the generated code takes."""
        unknown = set(values) - set(self.hyper_names)
        if unknown:
            raise ValueError(f"kernel {self.name} has no hyperparameter(s) {sorted(unknown)}; "
                             f"it takes {', '.join(self.hyper_names)}")
        out = []
        for name in self.hyper_names:
            if name in values:
                v = values[name]
            elif name in self.ir.hyper_defaults:
                v = self.ir.hyper_defaults[name]
            else:
                raise ValueError(f"kernel {self.name} needs hyperparameter {name!r}")
            v = float(v)
            if not np.isfinite(v) or v <= 0:
                raise ValueError(f"kernel {self.name}: hyperparameter {name} must be a positive "
                                 f"finite number, got {v}")
            out.append(v)
        return np.array(out, dtype=np.float64)

    def _st(self, d, dp):
        d, dp = checks.vectors(d, "d"), checks.vectors(dp, "dp")
        if d.shape[-1] != dp.shape[-1]:
            raise ValueError(f"d and dp must have the same number of features, got {d.shape} and {dp.shape}")
        return d, dp, np.sum((d - dp) ** 2, axis=-1), np.sum(d * dp, axis=-1)

    @cached_property
    def structure(self):
        """The kernel's descriptor-space derivatives as IR over the partials of g (structure.py)."""
        return KernelStructure(self.ir.body)

    def coefficients(self, s, t, /, **hyper) -> dict:
        """The partials of g the generated code computes (name -> value) at scalar s, t."""
        values = self.module.kernel_coefficients(float(s), float(t), self.hyper(**hyper))
        return dict(zip(self.structure.partials, values))

    def _map(self, fn, s, t):
        s, t = np.broadcast_arrays(np.asarray(s, float), np.asarray(t, float))
        return np.array([fn(a, b) for a, b in zip(s.ravel(), t.ravel())]).reshape(s.shape + (-1,))

    def value(self, d, dp, /, **hyper):  # /: a hyperparameter may be named d
        h = self.hyper(**hyper)
        _, _, s, t = self._st(d, dp)
        return self._map(lambda a, b: (self.module.kernel_value(a, b, h),), s, t)[..., 0]

    def _structure_result(self, result, h, d, dp, s, t, beta=None):
        """A result of the kernel's structure with numpy, its partials from the generated code
        (d, dp, s, t as _st gives them)."""
        partials = self._map(lambda a, b: self.module.kernel_coefficients(a, b, h), s, t)
        vectors = {"delta": d - dp, "d": d, "dp": dp}
        if beta is not None:
            vectors["beta"] = beta
        scalars = {S: s, T: t, **structure_contractions(vectors),
                   **{name: partials[..., k] for k, name in enumerate(self.structure.partials)}}
        return self.structure.evaluate(result, scalars, vectors)

    def gradient(self, d, dp, /, **hyper):
        """dk/dd, the structure's grad_d (a combination of d - dp and dp)."""
        h = self.hyper(**hyper)
        return self._structure_result("grad_d", h, *self._st(d, dp))

    def hessian_vector(self, d, dp, v, /, **hyper):
        """(d2k / dd ddp^T) v, the structure's H beta with beta = v: identity plus rank-one terms."""
        h = self.hyper(**hyper)
        d, dp, s, t = self._st(d, dp)
        v = checks.vectors(v, "v")
        if v.shape[-1] != d.shape[-1]:
            raise ValueError(f"v: expected {d.shape[-1]} features (like d), got shape {v.shape}")
        return self._structure_result("h_beta", h, d, dp, s, t, beta=v)

    def jax_function(self):
        return jax_reference.kernel_function(self.ir)


# --------------------------------------------------------------------------- model

class CompiledModel:
    """A descriptor and a kernel compiled together into fused force-field kernels."""

    def __init__(self, descriptor: CompiledDescriptor, kernel: CompiledKernel):
        self.descriptor, self.kernel = descriptor, kernel
        self.module = descriptor.module
        self.module_path = descriptor.module_path

    def feature_permutations(self, perms, n_atoms):
        return self.descriptor.feature_permutations(perms, n_atoms)

    def force_block(self, x, xp, perms=None, z=None, **hyper):
        """C(x, x') = sum_P grad_x grad_x'^T k(D(x), D(x'[perm])), shape (3N, 3N)."""
        h = self.kernel.hyper(**hyper)
        x, xp = _single(x, "x"), _single(xp, "xp")
        if x.shape != xp.shape:
            raise ValueError(f"x and xp must have the same atoms: got shapes {x.shape} and {xp.shape}")
        checks.geometries(x, "x")
        checks.geometries(xp, "xp")
        D, JAC, _ = self.descriptor.evaluate(np.stack([x, xp]), z)
        n = np.asarray(x).shape[0]
        fperms = self.feature_permutations(perms, n)
        out = np.empty((3 * n, 3 * n))
        work = np.empty(self.module.work_size(D.shape[1], 3 * n))
        self.module.force_block_parts(D[0], JAC[0], D[1], JAC[1], self.descriptor.atom_table(n),
                                      fperms, h, out, work)
        return out

    def jax_force_block(self, x, xp, perms=None, z=None, **hyper):
        """The same block by JAX AD of the JAX lowering (the test reference)."""
        h = dict(zip(self.kernel.hyper_names, self.kernel.hyper(**hyper)))
        n = np.asarray(x).shape[0]
        perms = checks.permutations(perms, n)
        block = jax_reference.force_block_function(self.descriptor.jax_function(), self.kernel.jax_function())
        return block(np.asarray(x, float), np.asarray(xp, float), [p.tolist() for p in perms], z, h)

    def jax_hessian_observation_blocks(self, x, xp, perms=None, z=None, **hyper):
        """(Cov(H(x), F(x')) (3N, 3N, 3N), Cov(H(x), H(x')) (3N, 3N, 3N, 3N), Cov(H(x), E(x')) (3N, 3N))
        by JAX AD (the test reference of training on Hessians)."""
        h = dict(zip(self.kernel.hyper_names, self.kernel.hyper(**hyper)))
        perms = checks.permutations(perms, np.asarray(x).shape[0])
        blocks = jax_reference.hessian_observation_blocks_function(self.descriptor.jax_function(),
                                                                   self.kernel.jax_function())
        return blocks(np.asarray(x, float), np.asarray(xp, float), [p.tolist() for p in perms], z, h)

    # Local kernels: k(x, x') = sum_ij [z_i = z'_j] k(d_i(x), d_j(x')) over atom-centred sites ----
    @property
    def can_be_local(self) -> bool:
        """Whether the descriptor gives one feature vector per atom (an atom-centred space)."""
        return bool(self.descriptor.over.atom_centred)

    def require_local(self):
        if not self.can_be_local:
            raise ValueError(f"a local kernel compares atoms, but descriptor {self.descriptor.name} is over "
                             f"{self.descriptor.over}, which has no feature vector per atom: use an atom-centred "
                             "descriptor (over neighbours or neighbour_pairs) or a global model")

    def local_force_block(self, x, xp, z, zp, **hyper):
        """C(x, x') = grad_x grad_x'^T sum_ij [z_i = z'_j] k(d_i(x), d_j(x')), shape (3N, 3N');
        x and x' may have different atoms."""
        self.require_local()
        h = self.kernel.hyper(**hyper)
        x, xp = _single(x, "x"), _single(xp, "xp")
        checks.geometries(x, "x")
        checks.geometries(xp, "xp")
        (D, JAC, _), (Dp, JACp, _) = self.descriptor.evaluate(x, z), self.descriptor.evaluate(xp, zp)
        n, n_p = x.shape[0], xp.shape[0]
        jd, jdp = self.descriptor.site_jacobians(JAC, n), self.descriptor.site_jacobians(JACp, n_p)
        out = np.empty((3 * n, 3 * n_p))
        work = np.empty(self.module.local_work_size(jd.dense.shape[2], 3 * n, 3 * n_p))
        self.module.local_force_block(D[0], jd.dense[0], jd.rows[0], jd.counts[0], self.descriptor._z(z, n),
                                      Dp[0], jdp.dense[0], jdp.rows[0], jdp.counts[0], self.descriptor._z(zp, n_p),
                                      h, out, work)
        return out

    def jax_local_force_block(self, x, xp, z, zp, **hyper):
        """The same block by JAX AD of the JAX lowering (the test reference)."""
        self.require_local()
        h = dict(zip(self.kernel.hyper_names, self.kernel.hyper(**hyper)))
        block = jax_reference.local_force_block_function(self.descriptor.jax_function(), self.kernel.jax_function())
        return block(np.asarray(x, float), np.asarray(xp, float), z, zp, h)

    def assemble_local_energy_rows(self, D, JD: SiteJacobians, zs, hyper, K, n_atoms):
        """The energy rows and columns of a local model's joint energy+force matrix (upper triangle)."""
        self.module.assemble_local_energy_rows(D, JD.dense, _frame_elements(zs, len(D)), hyper, K, n_atoms)

    def assemble_local_rows(self, D, JD: SiteJacobians, zs, hyper, K, rows, n_atoms, mirror=True):
        """Local-kernel training-matrix block rows ``rows`` (upper triangle, and mirrored) into K;
        zs: the atoms' elements, (N,) for every geometry or (M, N) per geometry (0: a padded slot,
        no atom); JD: site_jacobians of the geometries."""
        self.module.assemble_local_rows(D, JD.dense, JD.rows, JD.counts, _frame_elements(zs, len(D)), hyper, K,
                                        np.asarray(rows, np.int64), n_atoms, mirror)

    # Building blocks for the runtime -----------------------------------------
    def assemble_rows(self, D, JAC, fperms, hyper, K, rows, n_atoms, mirror=True):
        """Write training-matrix block rows ``rows`` (upper triangle, and mirrored) into K."""
        atoms = self.descriptor.atom_table(n_atoms)
        self.module.assemble_rows(D, JAC, atoms, fperms, hyper, K, np.asarray(rows, np.int64), n_atoms,
                                  mirror)

    def assemble_energy_rows(self, D, JAC, fperms, hyper, K, n_atoms):
        """Energy rows and columns of a joint energy+force matrix (upper triangle) into K."""
        self.module.assemble_energy_rows(D, JAC, self.descriptor.atom_table(n_atoms), fperms, hyper, K,
                                         n_atoms)

    # Thin wrappers of the generated prediction kernels: runtime/prediction.py schedules them
    def predict_tiles(self, dq, NQ, QC, side, hyper, bounds, tile_queries, ACC, EP):
        """Tiled sums of centred queries against ``side``'s training rows split at ``bounds``:
        per-part descriptor-space force sums ACC (parts, Q, F) and energies EP (parts, Q)."""
        self.module.predict_tiles(dq, NQ, QC, side.centre, side.DT, side.WT, side.NT, side.TC, side.TB, side.CB,
                                  hyper, bounds, tile_queries, ACC, EP)

    def predict_coefficients(self, dq, NQ, QC, TD, side, hyper, X, SD, SP, E):
        """The kernel coefficients X of every (query, training) pair from TD = dq W^T, with
        their row sums SD, SP and the energies E (see runtime/prediction.py)."""
        self.module.predict_coefficients(dq, side.DT, NQ, side.NT, TD, QC, side.TC, side.TB, side.CB, hyper,
                                         X, SD, SP, E)

    def forces_from_descriptor_gradients(self, JACQ, acc, F):
        """F (Q, N, 3) = J^T acc: forces from descriptor-space sums acc (Q, F)."""
        self.module.forces_from_descriptor_gradients(np.ascontiguousarray(JACQ),
                                                     self.descriptor.atom_table(F.shape[1]), acc, F)

    def predict_parts_direct(self, DQ, JACQ, DT, BT, hyper, n_atoms):
        """Energies and forces by one plain fused loop per query (no centring, no BLAS, no
        tiles): the independent check of the fast paths in the tests."""
        E = np.empty(DQ.shape[0])
        F = np.empty((DQ.shape[0], n_atoms, 3))
        self.module.predict(DQ, JACQ, self.descriptor.atom_table(n_atoms), DT, BT, hyper, E, F)
        return E, F

    def predict_energy_weights(self, DQ, JACQ, DT, WT, hyper, E, F, atoms=None):
        """E, F += the energy-coefficient terms of a joint energy+force model (in place).  ``atoms``:
        the atom table of JACQ's rows (default: the whole molecule's; a local model passes one atom's)."""
        atoms = self.descriptor.atom_table(F.shape[1]) if atoms is None else atoms
        self.module.predict_energy_weights(DQ, JACQ, atoms, DT, WT, hyper, E, F)

    # Hessian prediction (runtime/hessian.py sums the columns) --------------------
    @property
    def hessian_columns(self) -> list:
        """The columns hessian_coefficients writes ('gradient:delta', 'hessian:delta,beta', ...)."""
        self.require_hessians()
        return self.kernel.metadata["hessian_columns"]

    def require_hessians(self):
        """HessianUnavailableError, saying why, if the kernel is not three times differentiable."""
        if self.kernel.metadata.get("hessian_columns") is None:
            raise HessianUnavailableError(f"Hessians need the kernel's third derivative: "
                                          f"{self.kernel.metadata.get('hessian_refusal')}")

    def hessian_coefficients(self, d, DT, BT, WT, hyper, C):
        """C (MP, columns): per training point, the coefficients of the predicted energy's
        gradient and Hessian in the query descriptor d."""
        self.require_hessians()
        self.module.hessian_coefficients(d, DT, BT, WT, hyper, C)

    # Hessian observations (runtime/hessian_training.py sums the columns) ---------
    @property
    def observation_columns(self) -> list:
        """The columns observation_coefficients writes ('value:', 'gradient:gamma', ...)."""
        self.require_observations()
        return self.kernel.metadata["observation_columns"]

    def require_observations(self):
        """HessianUnavailableError, saying why, if the kernel is not four times differentiable."""
        if self.kernel.metadata.get("observation_columns") is None:
            raise HessianUnavailableError(f"training on Hessians needs the kernel's fourth derivative: "
                                          f"{self.kernel.metadata.get('observation_refusal')}")

    def observation_coefficients(self, d, DT, BT, GT, hyper, C):
        """C (MP, columns): per rank-one piece (DT[m], BT[m], GT[m]) of a Hessian observation, its
        energy share beta^T (d2k/ddp2) gamma at the query descriptor d and that share's gradient
        and Hessian coefficients."""
        self.require_observations()
        self.module.observation_coefficients(d, DT, BT, GT, hyper, C)

    def project_rows(self, B, jac, X):
        """X (M, 3N) = J^T B[m] for descriptor-space rows B (M, F) through one sparse Jacobian; fastest
        with B and X column-major (transposes of (F, M) and (3N, M) arrays: compiler/build/hessian.py)."""
        self.module.project_rows(B, jac, self.descriptor.atom_table(X.shape[1] // 3), X)

    def contract(self, JAC, V):
        n_atoms = V.shape[1]
        B = np.empty((JAC.shape[0], JAC.shape[1]))
        self.module.contract(JAC, self.descriptor.atom_table(n_atoms), np.ascontiguousarray(V, float), B)
        return B


def _frame_elements(zs, m) -> np.ndarray:
    """(M, N) float64 elements per geometry from zs (N,) shared by all or (M, N)."""
    zs = np.asarray(zs, np.float64)
    return np.ascontiguousarray(np.broadcast_to(zs, (m, zs.shape[-1])))


class HessianUnavailableError(ValueError):
    """The model's kernel has no third derivative at d = dp, so no Hessians."""


class PredictionSide:
    """Training-side arrays of prediction, centred on the training mean ``centre``:
    W = [DT; BT] (2 MP, F), WT = W^T, and the per-row scalars NT = |dt|^2, TC = dt.centre,
    TB = dt.beta, CB = centre.beta.  It is the input layout of the generated prediction
    kernels, so it stays beside them; runtime/prediction.py decides how they are called."""

    def __init__(self, DT, BT):
        self.n_rows = DT.shape[0]
        self.centre = DT.mean(axis=0)
        self.cc = float(self.centre @ self.centre)
        self.W = np.concatenate([DT - self.centre, BT])
        self.WT = np.ascontiguousarray(self.W.T)
        self.DT = self.W[:self.n_rows]
        self.NT = np.einsum("mf,mf->m", self.DT, self.DT)
        self.TC = self.DT @ self.centre
        self.TB = np.einsum("mf,mf->m", self.DT, BT)
        self.CB = BT @ self.centre

    def set_coefficients(self, BT):
        """New coefficients BT for the same training rows (a CG product): only the coefficient half
        W[n:], WT's and TB, CB change; the centring and norms stay."""
        self.W[self.n_rows:] = BT
        if self.WT is not None:
            self.WT[:, self.n_rows:] = BT.T
        self.TB = np.einsum("mf,mf->m", self.DT, BT)
        self.CB = BT @ self.centre

    def queries(self, DQ):
        """The query side, as the generated kernels take it: the centred descriptors dq, their
        squared norms NQ and QC = dq.centre + centre.centre (so that dq.dt + QC + TC = d.dt)."""
        dq = DQ - self.centre
        return dq, np.einsum("qf,qf->q", dq, dq), dq @ self.centre + self.cc


# Work on at most this many geometries runs on the calling thread alone.  A parallel region
# ends at a barrier that waits for every thread; when another process holds a core, the
# thread on that core waits for its time slice, and one ethanol geometry (M=500) took 15 ms
# with Numba's OpenMP threads instead of 0.14 ms on one thread.  A second thread at most
# halves small work; a thread that waits for its core multiplies it (benchmarks/md_bench.py).
SERIAL_GEOMETRIES = 10


def threads_for(n_geometries, available=None):
    """Numba threads for work on n_geometries: 1 for small work, else all ``available``
    (default: the calling thread's current Numba thread count)."""
    if n_geometries <= SERIAL_GEOMETRIES:
        return 1
    if available is None:
        import numba
        available = numba.get_num_threads()
    return available


_THREAD_SCRATCH = threading.local()


def thread_scratch(name, shape):
    """A scratch array of the calling thread, reused from call to call: prediction's (chunk, 2 MP)
    and the Hessian's (MP, F) matrices are megabytes, and fresh memory costs page faults every
    time (a third of a small Hessian's time)."""
    arrays = getattr(_THREAD_SCRATCH, "arrays", None)
    if arrays is None:
        arrays = _THREAD_SCRATCH.arrays = {}
    size = int(np.prod(shape))
    if name not in arrays or arrays[name].size < size:
        arrays[name] = np.empty(size)
    return arrays[name][:size].reshape(shape)


@contextmanager
def numba_threads(count):
    """Context: Numba's parallel loops of this thread run on ``count`` threads (the setting is
    per calling thread in Numba, so other threads are not affected), restored afterwards."""
    import numba
    before = numba.get_num_threads()
    if count == before:
        yield
        return
    numba.set_num_threads(count)
    try:
        yield
    finally:
        numba.set_num_threads(before)


def _single(x, what):
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"{what}: expected one geometry of shape (n_atoms, 3), got {arr.shape}")
    return arr


# --------------------------------------------------------------------------- public API

def compile_descriptor(descriptor) -> CompiledDescriptor:
    combination = _combination(descriptor)
    if combination is not None:
        from compiler.build.combined import CombinedDescriptor
        return CombinedDescriptor(combination, [compile_descriptor(part) for part in combination.parts])
    dsl, parsed = pipeline.front(descriptor, "descriptor")
    table = pipeline.params_table(dsl, parsed.ir)
    return CompiledDescriptor(dsl, parsed.ir, table, *pipeline.build(numba_cpu.TARGET, descriptor=parsed))


def _combination(descriptor):
    """The Combination ``descriptor`` resolves to (compiler.dsl.combine), or None."""
    from compiler.dsl import Combination
    from compiler.library import resolve
    found = resolve(descriptor, "descriptor")
    return found if isinstance(found, Combination) else None


def compile_kernel(kernel) -> CompiledKernel:
    dsl, parsed = pipeline.front(kernel, "kernel")
    return CompiledKernel(dsl, parsed.ir, *pipeline.build(numba_cpu.TARGET, kernel=parsed))


def compile_model(descriptor, kernel) -> CompiledModel:
    combination = _combination(descriptor)
    first = combination.parts[0] if combination is not None else descriptor
    (ddsl, dparsed), (kdsl, kparsed) = pipeline.front(first, "descriptor"), pipeline.front(kernel, "kernel")
    table = pipeline.params_table(ddsl, dparsed.ir)
    built = pipeline.build(numba_cpu.TARGET, descriptor=dparsed, kernel=kparsed)
    compiled = CompiledDescriptor(ddsl, dparsed.ir, table, *built)
    if combination is not None:  # the fused kernels come with part 0; the other parts' descriptors on their own
        from compiler.build.combined import CombinedDescriptor
        compiled = CombinedDescriptor(combination, [compiled] + [compile_descriptor(p) for p in combination.parts[1:]])
    return CompiledModel(compiled, CompiledKernel(kdsl, kparsed.ir, *built))
