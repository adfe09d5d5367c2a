"""The JAX approach of Schmitz, Müller & Chmiela (JPCL 2022) as a comparison system.

"Algorithmic Differentiation for Automated Modeling of Machine Learned Force Fields",
J. Phys. Chem. Lett. 13, 10183 (2022).  Written from the paper's description (scalar kernel
written once, all force-field derivatives by JAX AD, jit-compiled and vmapped); no code of
their ``ad-kernels`` repository is used.

The model is gdmlc's (and sGDML's), with the conventions of ``runtime/model.py`` and of the
independent reference ``tests/jax_reference_model.py``:

* descriptor D(x): inverse distances 1/|x_i - x_j|, pairs i < j in ``np.triu_indices`` order;
* base kernel: Matérn 5/2 of r = |d - d'|, kappa = (1 + a r + a^2 r^2/3) exp(-a r), a = sqrt(5)/sigma;
* symmetric kernel k(x, x') = sum_P kappa(D(x), D(x'[P])) over the given atom permutations
  (``x'[P]``: atom a of the permuted geometry is atom P[a]); a sum, not a mean;
* training: (K + lam I) alpha = F / scale, K the (3NM)^2 matrix of force blocks
  C(x_i, x_j) = grad_x grad_x'^T k(x_i, x_j), scale = std of all training force components,
  solved by Cholesky (scipy ``cho_factor`` / ``cho_solve``);
* prediction: F(x) = scale sum_j C(x, x_j) alpha_j,
  E(x) = -scale sum_j grad_x' k(x, x_j) . alpha_j + c, c = mean over the training set of
  (E_ref - E_pred without c); no energies at fit: c = 0 and ``energy_constant`` is None.

Two modes, as compared in the paper:

``mode="dense"``
    Force blocks by AD on geometries: ``jax.jacfwd(jax.grad(k, argnums=0), argnums=1)``,
    materialised as 3N x 3N blocks for every pair (training matrix: all M^2 blocks, the
    paper's vmap(vmap(...)) over both sets, no use of the symmetry of K), then contracted
    with the coefficients at prediction (einsum of blocks with alpha).  Energies by the
    paper's "integration" product: jvp of x' -> k(x, x') along alpha_j.
``mode="contraction"``
    The paper's preaccumulated-Jacobian path.  Descriptors and dense descriptor Jacobians
    of the (permuted) training geometries are computed once; kernel-vector products are
    forward-over-reverse in descriptor space: ``jax.jvp`` of ``jax.grad`` of kappa.
    Training matrix: [d2 kappa/dd dd'^T] J(x'_P) by one kvp per column (3N of them), then
    J(x)^T (.).  Prediction: beta_jP = J(x_j[P]) alpha_j precomputed after training (by a jvp
    of x -> D(x[P]) along alpha_j); for a query, one jvp of value_and_grad(kappa) per
    (training geometry, permutation) gives both H beta (forces) and grad_d' kappa . beta
    (energies); forces are J(x)^T (sum H beta) by a vjp of the descriptor.  No 3N x 3N
    block is formed at prediction.

Matérn 5/2 at d = d' (every diagonal block, and the energy constant fitted at training
geometries): AD through sqrt(|d - d'|^2) gives 0 * inf = NaN at r = 0 although kappa is
smooth in s = r^2.  Here kappa = g(s) with s = |d - d'|^2, and g, g' and g'' carry
``jax.custom_jvp`` rules with their closed forms in s,
    g'(s) = -(a^2/6)(1 + a sqrt(s)) exp(-a sqrt(s)),   g''(s) = (a^4/12) exp(-a sqrt(s)),
so first and second derivatives are exact and finite everywhere, r = 0 included, and no
0/0 is ever formed (g''' = -(a^5/24) exp(-a sqrt(s))/sqrt(s) is singular at s = 0, as it
is mathematically; force blocks and energies never need it).  This changes only the rules
of one scalar function; everything else is AD of the composed kernel, as in the paper.

Numerics: float64 (``jax_enable_x64``).  Memory: every jitted function works on chunks of
rows/queries sized so that its largest intermediate stays near ``chunk_bytes`` (contraction
prediction: at most 16 MiB, which measured ~4x faster than 128 MiB chunks); the last chunk
is padded (with copies of its first geometry) so that each function is compiled once per
(chunk, M, N, P) shape.  A batch smaller than a chunk is one chunk of its own size (and one
compilation for that size: use ``warmup``).

Compile time: jitted functions are compiled ahead of time (``jit(...).lower(...).compile()``)
on their first use for a given shape and kept per model; the seconds spent compiling are
recorded in ``model.compile_times`` (name -> list of seconds).  ``warmup(R_example)`` compiles
without computing: before ``fit`` it compiles the assembly for a training set of
``len(R_example)`` geometries; after ``fit`` the prediction for batches of
``len(R_example)`` geometries.  Time the first call separately by calling ``warmup`` first.
``model.timings`` holds assemble_s, solve_s and fit_s of the last ``fit``.

Interface::

    model = JaxPaperModel(z, perms, sigma, mode="dense" | "contraction")
    model.warmup(R_train)                  # optional: compile the assembly, returns seconds
    K = model.assemble(R_train)            # (3NM, 3NM) float64, no lam
    model.fit(R_train, F_train, E_train=None, lam=1e-10)
    model.warmup(R_test[:10])              # optional: compile predict for batches of 10
    E, F = model.predict(R)                # (M,), (M, N, 3)
"""
from __future__ import annotations

import math
import time

import numpy as np
import scipy.linalg

import jax
import jax.numpy as jnp

jax.config.update("jax_enable_x64", True)

__all__ = ["JaxPaperModel", "MODES", "matern52_of_s", "inverse_distances"]

MODES = ("dense", "contraction")
DEFAULT_CHUNK_BYTES = 1 << 27  # 128 MiB per chunk for the largest intermediate
# contraction prediction is memory-bound: chunks whose (queries x M P x F) intermediates stay
# near the cache are ~4x faster than 128 MiB ones (measured on ethanol, M = 100, P = 6:
# 97 queries per chunk 1000 geometries/s, 3-12 per chunk 4300-4500 geometries/s)
PREDICT_CONTRACTION_BYTES = 1 << 24


# --------------------------------------------------------------------------- the scalar pieces

def matern52_of_s(sigma):
    """g(s) = Matérn 5/2 as a function of s = |d - d'|^2, with exact custom derivatives.

    Returns g; g'(s) and g''(s) are its custom_jvp rules (closed forms, finite at s = 0).
    """
    a = math.sqrt(5.0) / float(sigma)

    def r_of(s):
        return a * jnp.sqrt(jnp.maximum(s, 0.0))

    @jax.custom_jvp
    def g0(s):
        r = r_of(s)
        return (1.0 + r + r * r / 3.0) * jnp.exp(-r)

    @jax.custom_jvp
    def g1(s):
        r = r_of(s)
        return -(a * a / 6.0) * (1.0 + r) * jnp.exp(-r)

    @jax.custom_jvp
    def g2(s):
        return (a ** 4 / 12.0) * jnp.exp(-r_of(s))

    def g3(s):  # singular at s = 0 (only a third derivative would use it)
        return -(a ** 5 / 24.0) * jnp.exp(-r_of(s)) / jnp.sqrt(s)

    @g0.defjvp
    def _g0_jvp(primals, tangents):
        (s,), (ds,) = primals, tangents
        return g0(s), g1(s) * ds

    @g1.defjvp
    def _g1_jvp(primals, tangents):
        (s,), (ds,) = primals, tangents
        return g1(s), g2(s) * ds

    @g2.defjvp
    def _g2_jvp(primals, tangents):
        (s,), (ds,) = primals, tangents
        return g2(s), g3(s) * ds

    return g0


def inverse_distances(x):
    """D(x) (F,) for x (N, 3): 1/|x_i - x_j|, i < j in np.triu_indices order."""
    i, j = np.triu_indices(x.shape[-2], 1)
    diff = x[..., i, :] - x[..., j, :]
    return 1.0 / jnp.sqrt(jnp.sum(diff * diff, axis=-1))


# --------------------------------------------------------------------------- input checks

def _as_geometries(R, n_atoms, what):
    R = np.asarray(R)
    if R.dtype.kind not in "fiu":
        raise ValueError(f"{what}: expected a numeric array, got dtype {R.dtype}")
    R = np.asarray(R, dtype=np.float64)
    if R.ndim == 2:
        R = R[None]
    if R.ndim != 3 or R.shape[1:] != (n_atoms, 3):
        raise ValueError(f"{what}: expected shape (M, {n_atoms}, 3) or ({n_atoms}, 3), got {R.shape}")
    if len(R) == 0:
        raise ValueError(f"{what}: no geometries (shape {R.shape})")
    bad = np.argwhere(~np.isfinite(R))
    if bad.size:
        raise ValueError(f"{what}: non-finite coordinate in frame {bad[0][0]}, atom {bad[0][1]}")
    i, j = np.triu_indices(n_atoms, 1)
    dist = np.sqrt(np.sum((R[:, i] - R[:, j]) ** 2, axis=-1))
    if dist.size and dist.min() < 1e-8:
        frame, pair = np.unravel_index(np.argmin(dist), dist.shape)
        raise ValueError(f"{what}: atoms {i[pair]} and {j[pair]} of frame {frame} overlap "
                         f"(distance {dist[frame, pair]:.3g})")
    return np.ascontiguousarray(R)


def _as_perms(perms, z):
    n = len(z)
    if perms is None:
        return np.arange(n, dtype=np.int64)[None]
    P = np.asarray(perms)
    if P.ndim == 1:
        P = P[None]
    if P.ndim != 2 or P.shape[1] != n or P.shape[0] == 0:
        raise ValueError(f"perms: expected shape (P, {n}) for {n} atoms, got {np.shape(perms)}")
    if P.dtype.kind not in "iu":
        if P.dtype.kind == "f" and np.all(P == np.round(P)):
            P = P.astype(np.int64)
        else:
            raise ValueError(f"perms: expected integer atom indices, got dtype {P.dtype}")
    P = P.astype(np.int64)
    for k, p in enumerate(P):
        if not np.array_equal(np.sort(p), np.arange(n)):
            raise ValueError(f"perms: row {k} is not a permutation of range({n}): {p.tolist()}")
        wrong = np.flatnonzero(z[p] != z)
        if wrong.size:
            a = int(wrong[0])
            raise ValueError(f"perms: row {k} maps atom {int(p[a])} (Z={z[p[a]]}) onto atom {a} "
                             f"(Z={z[a]}): permutations must preserve species")
    return P


# --------------------------------------------------------------------------- compiled functions

class _Compiled:
    """A jitted function compiled ahead of time once per argument shape; compile seconds logged."""

    def __init__(self, name, fn, log):
        self.name, self.jitted, self.log, self.cache = name, jax.jit(fn), log, {}

    def executable(self, *args):
        key = tuple((np.shape(a), str(a.dtype)) for a in args)  # args: NumPy or JAX arrays
        exe = self.cache.get(key)
        if exe is None:
            t0 = time.perf_counter()
            exe = self.jitted.lower(*args).compile()
            self.log.setdefault(self.name, []).append(time.perf_counter() - t0)
            self.cache[key] = exe
        return exe

    def __call__(self, *args):
        return self.executable(*args)(*args)


def _chunks(n, size):
    """(start, stop, pad) covering range(n) with chunks of exactly ``size`` (last one padded)."""
    for start in range(0, n, size):
        stop = min(start + size, n)
        yield start, stop, size - (stop - start)


def _pad(a, pad):
    return np.concatenate([a, np.repeat(a[:1], pad, axis=0)]) if pad else a


# --------------------------------------------------------------------------- the model

class JaxPaperModel:
    """sGDML (inverse distances, Matérn 5/2, symmetric kernel) the paper's way, in JAX.

    z: atomic numbers (N,); perms: (P, N) atom permutations used exactly as given (None:
    identity only); sigma: length scale; mode: "dense" or "contraction" (see module doc);
    chunk_bytes: target size of the largest intermediate of one jitted chunk.
    """

    def __init__(self, z, perms, sigma, mode="dense", chunk_bytes=DEFAULT_CHUNK_BYTES):
        z = np.asarray(z)
        if z.ndim != 1 or len(z) < 2 or z.dtype.kind not in "iu":
            raise ValueError(f"z: expected integer atomic numbers of shape (N,), N >= 2, got "
                             f"shape {z.shape} dtype {z.dtype}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        sigma = float(sigma)
        if not (np.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma must be a positive finite number, got {sigma}")
        if not (int(chunk_bytes) > 0):
            raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
        self.z = z.astype(np.int64)
        self.n_atoms = len(z)
        self.n_features = self.n_atoms * (self.n_atoms - 1) // 2
        self.perms = _as_perms(perms, self.z)
        self.sigma = sigma
        self.mode = mode
        self.chunk_bytes = int(chunk_bytes)
        self.compile_times: dict[str, list[float]] = {}
        self.timings: dict[str, float] = {}
        self._trained = False
        self._build()

    # ------------------------------------------------------------------ jitted pieces
    def _build(self):
        g = matern52_of_s(self.sigma)
        perms = jnp.asarray(self.perms)
        n3 = 3 * self.n_atoms

        def kappa(d, dp):
            delta = d - dp
            return g(jnp.sum(delta * delta))

        def k(x, xp):  # symmetric kernel on geometries
            d = inverse_distances(x)
            return jnp.sum(jax.vmap(lambda p: kappa(d, inverse_distances(xp[p])))(perms))

        def block(x, xp):  # dense force block by AD: jacfwd over x' of grad over x
            return jax.jacfwd(jax.grad(k, argnums=0), argnums=1)(x, xp).reshape(n3, n3)

        log = self.compile_times
        if self.mode == "dense":
            def assemble_rows(X, XT):  # (b, N, 3), (M, N, 3) -> (b, M, 3N, 3N)
                return jax.vmap(lambda x: jax.vmap(lambda xp: block(x, xp))(XT))(X)

            def predict_chunk(X, XT, A):  # forces by blocks @ alpha, energies by jvp of k
                def one(x):
                    blocks = jax.vmap(lambda xp: block(x, xp))(XT)  # (M, 3N, 3N)
                    f = jnp.einsum("mab,mb->a", blocks, A.reshape(len(XT), n3))
                    e = jnp.sum(jax.vmap(lambda xp, a: jax.jvp(lambda y: k(x, y), (xp,), (a,))[1])(XT, A))
                    return e, f
                return jax.vmap(one)(X)

            self._assemble_rows = _Compiled("assemble_rows_dense", assemble_rows, log)
            self._predict_chunk = _Compiled("predict_dense", predict_chunk, log)
        else:
            def permuted_descriptors(X):  # (M, N, 3) -> D (M, P, F), J (M, P, F, 3N)
                def one(x):
                    def dp(p):
                        f = lambda y: inverse_distances(y[p])
                        return f(x), jax.jacfwd(f)(x).reshape(-1, n3)
                    return jax.vmap(dp)(perms)
                return jax.vmap(one)(X)

            def query_descriptors(X):  # (b, N, 3) -> D (b, F), J (b, F, 3N)
                return (jax.vmap(inverse_distances)(X),
                        jax.vmap(lambda x: jax.jacfwd(inverse_distances)(x).reshape(-1, n3))(X))

            def kvp(d, dp, v):  # forward-over-reverse: [d2 kappa / dd dd'^T] v
                return jax.jvp(lambda y: jax.grad(kappa, argnums=0)(d, y), (dp,), (v,))[1]

            def assemble_rows(D, J, DT, JT):  # (b,F), (b,F,3N), (M,P,F), (M,P,F,3N) -> (b,M,3N,3N)
                def row(d, jac):
                    # H J'_P column by column (3N kvps per pair and permutation)
                    hj = jax.vmap(jax.vmap(jax.vmap(kvp, (None, None, 1), 1), (None, 0, 0)),
                                  (None, 0, 0))(d, DT, JT)  # (M, P, F, 3N)
                    return jnp.einsum("fa,mfb->mab", jac, jnp.sum(hj, axis=1))
                return jax.vmap(row)(D, J)

            def betas(X, A):  # beta_jP = J(x_j[P]) alpha_j by jvp: (M, P, F)
                def one(x, a):
                    return jax.vmap(lambda p: jax.jvp(lambda y: inverse_distances(y[p]), (x,), (a,))[1])(perms)
                return jax.vmap(one)(X, A)

            def predict_chunk(X, DT, BT):  # (b, N, 3), (MP, F), (MP, F)
                def one(x):
                    d, pullback = jax.vjp(inverse_distances, x)

                    def term(dp, beta):
                        tangents = jax.jvp(lambda y: jax.value_and_grad(kappa, argnums=0)(d, y),
                                           (dp,), (beta,))[1]
                        return tangents  # (grad_d' kappa . beta, H beta)

                    de, hb = jax.vmap(term)(DT, BT)
                    return jnp.sum(de), pullback(jnp.sum(hb, axis=0))[0].reshape(n3)
                return jax.vmap(one)(X)

            self._permuted_descriptors = _Compiled("descriptors_contraction", permuted_descriptors, log)
            self._query_descriptors = _Compiled("query_descriptors_contraction", query_descriptors, log)
            self._assemble_rows = _Compiled("assemble_rows_contraction", assemble_rows, log)
            self._betas = _Compiled("betas_contraction", betas, log)
            self._predict_chunk = _Compiled("predict_contraction", predict_chunk, log)

    # ------------------------------------------------------------------ chunk sizes
    def _per_pair_bytes(self, kind):
        n3, f, p = 3 * self.n_atoms, self.n_features, len(self.perms)
        if kind == "assemble" and self.mode == "dense":
            return 8 * p * (3 * n3 * n3 + 6 * n3 * f)
        if kind == "assemble":
            return 8 * (3 * p * f * n3 + 2 * n3 * n3)
        if self.mode == "dense":  # predict
            return 8 * (p * (3 * n3 * n3 + 6 * n3 * f) + n3 * n3)
        return 8 * 8 * f  # contraction predict: per (query, training geometry x permutation)

    def _chunk(self, kind, n_rows, n_cols):
        budget = self.chunk_bytes
        if kind == "predict" and self.mode == "contraction":
            budget = min(budget, PREDICT_CONTRACTION_BYTES)
        size = max(1, budget // max(1, self._per_pair_bytes(kind) * n_cols))
        return int(min(n_rows, size))

    # ------------------------------------------------------------------ training
    def _check_training(self, R):
        return _as_geometries(R, self.n_atoms, "R_train")

    def _assemble_args(self, R):
        """Per-mode inputs of the row chunks: (row-side arrays, column-side arrays)."""
        if self.mode == "dense":
            return (R,), (jnp.asarray(R),)
        DT, JT = [], []
        for start, stop, pad in _chunks(len(R), self._descriptor_chunk(len(R))):
            d, j = self._permuted_descriptors(jnp.asarray(_pad(R[start:stop], pad)))
            DT.append(np.asarray(d)[:stop - start])
            JT.append(np.asarray(j)[:stop - start])
        DT, JT = jnp.asarray(np.concatenate(DT)), jnp.asarray(np.concatenate(JT))
        if np.array_equal(self.perms[0], np.arange(self.n_atoms)):  # row side = identity term
            return (np.asarray(DT[:, 0]), np.asarray(JT[:, 0])), (DT, JT)
        m = len(R)
        return self._query_rows(R, self._chunk("assemble", m, m)), (DT, JT)

    def _descriptor_chunk(self, m):
        """Geometries per call of the permuted descriptors + Jacobians (M, P, F, 3N)."""
        per_geometry = 8 * 4 * len(self.perms) * self.n_features * 3 * self.n_atoms
        return int(max(1, min(m, self.chunk_bytes // per_geometry)))

    def _query_rows(self, R, size):
        D, J = [], []
        for start, stop, pad in _chunks(len(R), size):
            d, j = self._query_descriptors(jnp.asarray(_pad(R[start:stop], pad)))
            D.append(np.asarray(d)[:stop - start])
            J.append(np.asarray(j)[:stop - start])
        return np.concatenate(D), np.concatenate(J)

    def warmup(self, R_example):
        """Compile without computing; returns the compile seconds (see module doc)."""
        R = _as_geometries(R_example, self.n_atoms, "R_example")
        t0 = time.perf_counter()
        m = len(R)
        if not self._trained:
            rows = self._chunk("assemble", m, m)
            if self.mode == "dense":
                self._assemble_rows.executable(jnp.asarray(R[:1].repeat(rows, 0)), jnp.asarray(R))
            else:
                X = jnp.asarray(R[:1].repeat(self._descriptor_chunk(m), 0))
                self._permuted_descriptors.executable(X)
                shapes = jax.eval_shape(self._permuted_descriptors.jitted, jnp.asarray(R))
                DT = jnp.zeros(shapes[0].shape)
                JT = jnp.zeros(shapes[1].shape)
                self._assemble_rows.executable(DT[:rows, 0], JT[:rows, 0], DT, JT)
                if not np.array_equal(self.perms[0], np.arange(self.n_atoms)):
                    self._query_descriptors.executable(jnp.asarray(R[:1].repeat(rows, 0)))
        else:
            args = self._predict_columns()
            size = self._chunk("predict", m, len(args[0]))
            self._predict_chunk.executable(jnp.asarray(R[:1].repeat(size, 0)), *args)
        return time.perf_counter() - t0

    def assemble(self, R_train):
        """The (3NM, 3NM) training matrix K (no lam), float64 NumPy."""
        R = self._check_training(R_train)
        m, n3 = len(R), 3 * self.n_atoms
        rows_in, cols_in = self._assemble_args(R)
        size = self._chunk("assemble", m, m)
        K = np.empty((m * n3, m * n3))
        for start, stop, pad in _chunks(m, size):
            args = [jnp.asarray(_pad(a[start:stop], pad)) for a in rows_in]
            blocks = np.asarray(self._assemble_rows(*args, *cols_in))[:stop - start]  # (b, M, 3N, 3N)
            K[start * n3:stop * n3] = blocks.transpose(0, 2, 1, 3).reshape((stop - start) * n3, m * n3)
        return K

    def fit(self, R_train, F_train, E_train=None, lam=1e-10):
        """Train on R (M, N, 3), forces F (M, N, 3) and optional energies E (M,)."""
        t_fit = time.perf_counter()
        R = self._check_training(R_train)
        F = np.asarray(F_train, dtype=np.float64)
        if F.shape != R.shape:
            raise ValueError(f"F_train: expected shape {R.shape} (as R_train), got {F.shape}")
        if not np.all(np.isfinite(F)):
            raise ValueError("F_train: non-finite force components")
        if E_train is not None:
            E = np.asarray(E_train, dtype=np.float64)
            if E.shape not in ((len(R),), (len(R), 1)):
                raise ValueError(f"E_train: expected shape ({len(R)},), got {np.shape(E_train)}")
            E = E.reshape(-1)
            if not np.all(np.isfinite(E)):
                raise ValueError("E_train: non-finite energies")
        lam = float(lam)
        if not (np.isfinite(lam) and lam >= 0):
            raise ValueError(f"lam must be a finite non-negative number, got {lam}")
        self._trained = False
        self.scale = float(np.std(F)) or 1.0
        t0 = time.perf_counter()
        K = self.assemble(R)
        t1 = time.perf_counter()
        K[np.diag_indices_from(K)] += lam
        try:
            factor = scipy.linalg.cho_factor(K, lower=True, overwrite_a=True, check_finite=False)
        except np.linalg.LinAlgError as exc:
            raise np.linalg.LinAlgError(f"training matrix + {lam:g} I is not positive definite ({exc}); "
                                        "check for duplicate geometries or raise lam") from None
        alpha = scipy.linalg.cho_solve(factor, F.reshape(-1) / self.scale, check_finite=False)
        del K, factor
        t2 = time.perf_counter()
        self.R_train, self.alpha, self.lam = R, alpha.reshape(R.shape), lam
        self._prepare()
        self._trained = True
        self.energy_constant = 0.0
        if E_train is None:
            self.energy_constant = None
        else:
            E_pred, _ = self.predict(R)
            self.energy_constant = float(np.mean(E - E_pred))
        self.timings = {"assemble_s": t1 - t0, "solve_s": t2 - t1, "fit_s": time.perf_counter() - t_fit}
        return self

    def _prepare(self):
        if self.mode == "dense":
            self._cols = (jnp.asarray(self.R_train), jnp.asarray(self.alpha))
            return
        m, f = len(self.R_train), self.n_features
        DT, BT = [], []
        for start, stop, pad in _chunks(m, self._descriptor_chunk(m)):
            X = jnp.asarray(_pad(self.R_train[start:stop], pad))
            A = jnp.asarray(_pad(self.alpha[start:stop], pad))
            d, _ = self._permuted_descriptors(X)
            DT.append(np.asarray(d)[:stop - start])
            BT.append(np.asarray(self._betas(X, A))[:stop - start])
        self._cols = (jnp.asarray(np.concatenate(DT).reshape(-1, f)),
                      jnp.asarray(np.concatenate(BT).reshape(-1, f)))

    def _predict_columns(self):
        if not self._trained:
            raise RuntimeError("the model is not trained: call fit() first")
        return self._cols

    # ------------------------------------------------------------------ prediction
    def predict(self, R):
        """Energies (M,) and forces (M, N, 3) for R (M, N, 3) (or one geometry (N, 3): M = 1)."""
        cols = self._predict_columns()
        R = _as_geometries(R, self.n_atoms, "R")
        q = len(R)
        size = self._chunk("predict", q, len(cols[0]))
        E = np.empty(q)
        F = np.empty((q, 3 * self.n_atoms))
        for start, stop, pad in _chunks(q, size):
            e, f = self._predict_chunk(jnp.asarray(_pad(R[start:stop], pad)), *cols)
            E[start:stop] = np.asarray(e)[:stop - start]
            F[start:stop] = np.asarray(f)[:stop - start]
        E *= -self.scale
        F *= self.scale
        if self.energy_constant:
            E += self.energy_constant
        return E, F.reshape(q, self.n_atoms, 3)
