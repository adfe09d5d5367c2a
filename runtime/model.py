"""GDML: train and use a gradient-domain kernel force field from compiled kernels.

Training solves (K + lam I) alpha = F / scale, K the (3NM)^2 matrix of force
blocks summed over the molecule's permutation group (sGDML's symmetric
kernel).  After training only descriptor-space vectors are kept for
prediction: beta_j = J(x_j) alpha_j, permuted by every symmetry, so a
prediction never forms a 3N x 3N block.
"""
from __future__ import annotations

import numpy as np

from compiler import checks, compile_model
from compiler.library import resolve

from . import data, symmetry
from .assembly import assemble, check_memory
from .progress import Progress
from .solver import NotPositiveDefiniteError, cholesky_solve_inplace

MAX_JITTER_STEPS = 3  # lam grows 10x per retry before training gives up


def error_table(E_pred, F_pred, E_ref, F_ref) -> dict:
    """MAE and RMSE of energies (if any) and force components."""
    out = {}
    dF = np.asarray(F_pred) - np.asarray(F_ref)
    out["force_mae"] = float(np.mean(np.abs(dF)))
    out["force_rmse"] = float(np.sqrt(np.mean(dF ** 2)))
    if E_ref is not None and E_pred is not None:
        dE = np.asarray(E_pred) - np.asarray(E_ref)
        out["energy_mae"] = float(np.mean(np.abs(dE)))
        out["energy_rmse"] = float(np.sqrt(np.mean(dE ** 2)))
    return out


class GDML:
    """sGDML-class force field with any DSL descriptor and kernel.

    ``sigma``: one length scale, a list (chosen on the validation set), or
    None for the descriptor's default grid.  ``symmetries``: "auto" (detect
    from the training geometries), None (plain GDML) or an (P, N) array.
    ``energy_constraints``: train on energies and forces jointly (sGDML's
    E_cstr): the system gains one row per training geometry whose label is
    its energy; otherwise energies only fix the integration constant.
    """

    def __init__(self, descriptor="inverse_distances", kernel="matern52", sigma=None, lam=1e-10,
                 symmetries="auto", progress=True, energy_constraints=False, device="cpu"):
        self.descriptor_dsl = resolve(descriptor, "descriptor")
        self.kernel_dsl = resolve(kernel, "kernel")
        self.sigma_grid = self._grid(sigma)
        self.lam = float(lam)
        if not (self.lam >= 0 and np.isfinite(self.lam)):
            raise ValueError(f"lam must be a finite non-negative number, got {lam}")
        self.symmetries = symmetries
        self.progress = progress
        self.energy_constraints = bool(energy_constraints)
        self.energy_weights = None  # per training geometry, joint energy+force models only
        self.model = compile_model(self.descriptor_dsl, self.kernel_dsl)
        self.info: dict = {}
        self._trained = False
        self.set_device(device)

    def set_device(self, device):
        """Train and predict on 'cpu' or 'cuda' (runtime/cuda_backend.py); a 'cuda' request
        that cannot be met prints why and keeps the CPU."""
        from . import cuda_backend
        self.device = cuda_backend.resolve_device(device, energy_constraints=self.energy_constraints)
        self._cuda = (cuda_backend.CudaBackend(self.descriptor_dsl, self.kernel_dsl)
                      if self.device == "cuda" else None)
        return self

    def _grid(self, sigma):
        if sigma is None:
            grid = self.descriptor_dsl.default_sigmas or (10, 20, 40, 80)
        else:
            grid = np.atleast_1d(np.asarray(sigma, dtype=np.float64)).tolist()
        if not grid or not all(np.isfinite(s) and s > 0 for s in grid):
            raise ValueError(f"sigma must be positive finite number(s), got {sigma}")
        return [float(s) for s in grid]

    # ------------------------------------------------------------------ training
    def fit(self, R, F, E=None, z=None, valid=None):
        """Train on geometries R (M, N, 3), forces F, optional energies E.

        ``valid``: (R, F, E) used to choose sigma when several are given.
        Returns the model itself.
        """
        if z is None:
            raise ValueError("z (atomic numbers, shape (n_atoms,)) is required for training")
        R, F, E, z = data.checked_arrays(R, F, E, z, "training data")
        checks.geometries(R, "training geometries")
        m, n, _ = R.shape
        if self.energy_constraints and E is None:
            raise ValueError("energy_constraints=True needs training energies E")
        if len(self.sigma_grid) > 1 and valid is None:
            raise ValueError(f"choosing sigma from {len(self.sigma_grid)} values needs a validation set "
                             "(valid=(R, F, E)); or pass one sigma")
        self.z, self.R_train, self.n_atoms = z, R, n
        self.perms = self._permutations(R, z)
        fperms = self.model.feature_permutations(self.perms, n)
        D, JAC, _ = self.model.descriptor.evaluate(R, z)
        self.label_scale = float(np.std(F)) or 1.0
        y = F.ravel()
        if self.energy_constraints:
            # energy labels centred on their mean, which becomes the model's constant
            y = np.concatenate([y, E - np.mean(E)])
        y = y / self.label_scale

        check_memory(len(y))
        K = np.empty((len(y), len(y)))  # reused for every sigma: one matrix in memory
        sweep, best = [], None
        for sigma in self.sigma_grid:
            alpha, lam = self._solve(K, D, JAC, fperms, sigma, y)
            self._set_coefficients(D, JAC, fperms, alpha, sigma, lam)
            self._fit_energy_constant(R, E)
            result = {"sigma": sigma, "lam": lam}
            if valid is not None:
                result.update(self.evaluate(*valid[:2], valid[2] if len(valid) > 2 else None))
                self._report(f"sigma {sigma:g}: validation force MAE {result['force_mae']:.4g}")
            sweep.append(result)
            if best is None or (valid is not None and result["force_mae"] < best[0]["force_mae"]):
                best = (result, alpha)
            if valid is not None and _rising(sweep):
                break  # as sGDML: stop once validation error rises
        del K
        if self._cuda is not None:
            self._cuda.release()  # the device training matrix
        result, alpha = best
        self._set_coefficients(D, JAC, fperms, alpha, result["sigma"], result["lam"])
        self._fit_energy_constant(R, E)
        self.info.update({"sigma_sweep": sweep, "sigma": result["sigma"], "lam": result["lam"],
                          "n_train": m, "n_perms": len(self.perms),
                          "energy_constraints": self.energy_constraints})
        if valid is not None:
            self.info["validation"] = {k: v for k, v in result.items() if k not in ("sigma", "lam")}
        return self

    def _report(self, text):
        if self.progress:
            import sys
            print(text, file=sys.stderr)

    def _permutations(self, R, z):
        n = R.shape[1]
        if self.symmetries is None or self.symmetries is False:
            return np.arange(n, dtype=np.int64)[None]
        if isinstance(self.symmetries, str):
            if self.symmetries != "auto":
                raise ValueError(f"symmetries must be 'auto', None or an array, got {self.symmetries!r}")
            return symmetry.find_permutations(R, z, progress=self.progress)
        return symmetry.validate_permutations(self.symmetries, z)

    def _solve(self, K, D, JAC, fperms, sigma, y):
        hyper = self.model.kernel.hyper(sigma=sigma)
        lam = self.lam
        for attempt in range(MAX_JITTER_STEPS + 1):
            if self._cuda is None:  # the CUDA backend assembles on the device inside solve()
                assemble(self.model, D, JAC, fperms, hyper, self.n_atoms, out=K, progress=self.progress,
                         energy_rows=self.energy_constraints)
            try:
                if self._cuda is not None:
                    return self._cuda.solve(D, JAC, fperms, hyper, self.n_atoms, y, lam, K, self.progress), lam
                return cholesky_solve_inplace(K, y, lam, progress=self.progress), lam
            except NotPositiveDefiniteError as exc:
                if attempt == MAX_JITTER_STEPS:
                    raise NotPositiveDefiniteError(
                        f"{exc}; gave up after raising lambda to {lam:g}: check the data for duplicate "
                        "geometries or try a larger sigma") from None
                lam = max(lam * 10, 1e-10)
                self._report(f"matrix not positive definite: retrying with lambda = {lam:g}")

    def _set_coefficients(self, D, JAC, fperms, alpha, sigma, lam):
        m, n = D.shape[0], self.n_atoms
        self.energy_weights = alpha[3 * n * m:] if self.energy_constraints else None
        alpha = alpha[:3 * n * m].reshape(m, n, 3)
        self.alpha, self.sigma, self.lam_used = alpha, float(sigma), float(lam)
        self.D_train = D
        self.B_train = self.model.contract(JAC, alpha)
        self._prepare(fperms)

    def _prepare(self, fperms):
        """Permuted training descriptors and coefficients, (M * P, F) each."""
        f = self.D_train.shape[1]
        self._DT = np.ascontiguousarray(self.D_train[:, fperms].reshape(-1, f))
        self._BT = np.ascontiguousarray(self.B_train[:, fperms].reshape(-1, f))
        self._side = self.model.prediction_side(self._DT, self._BT)
        # the symmetric kernel sums over permuted copies: each copy carries its geometry's weight
        self._WT = (None if self.energy_weights is None
                    else np.repeat(np.asarray(self.energy_weights, np.float64), len(fperms)))
        self._hyper = self.model.kernel.hyper(sigma=self.sigma)
        self._trained = True

    def _fit_energy_constant(self, R, E):
        self.energy_constant = 0.0
        if E is None:
            self.energy_constant = None
            return
        if self.energy_constraints:
            self.energy_constant = float(np.mean(E))  # the energy labels were centred on it
            return
        E_pred, _ = self.predict(R, progress=False)
        self.energy_constant = float(np.mean(E - E_pred))

    # ------------------------------------------------------------------ prediction
    def predict(self, R, batch=2000, progress=None):
        """Energies (M,) and forces (M, N, 3) for R (N, 3) or (M, N, 3).

        Energies are relative (no constant) when the model was trained without energies."""
        if not self._trained:
            raise RuntimeError("the model is not trained: call fit() or GDML.load()")
        R3, single = checks.geometries(R, "R", n_atoms=self.n_atoms)
        E = np.empty(len(R3))
        F = np.empty(R3.shape)
        show = (self.progress if progress is None else progress) and len(R3) > batch
        with Progress(len(R3), "prediction", enabled=show) as bar:
            for start in range(0, len(R3), batch):
                chunk = slice(start, start + batch)
                if self._cuda is not None and self._WT is None:
                    e, f = self._cuda.predict(R3[chunk], self.z, self._DT, self._BT, self._hyper, self.n_atoms)
                    E[chunk], F[chunk] = e, f
                    bar.update(len(e))
                    continue
                D, JAC, _ = self.model.descriptor.evaluate(R3[chunk], self.z)
                e, f = self.model.predict_parts(D, JAC, self._DT, self._BT, self._hyper, self.n_atoms,
                                                side=self._side)
                if self._WT is not None:
                    self.model.add_energy_weight_terms(D, JAC, self._DT, self._WT, self._hyper, e, f)
                E[chunk], F[chunk] = e, f
                bar.update(len(D))
        E *= self.label_scale
        F *= self.label_scale
        if self.energy_constant is not None:
            E += self.energy_constant
        return (E[0], F[0]) if single else (E, F)

    def evaluate(self, R, F, E=None):
        """Error table against reference forces (and energies)."""
        E_pred, F_pred = self.predict(R, progress=False)
        if self.energy_constant is None:
            E = None
        return error_table(E_pred, F_pred, E, F)

    # ------------------------------------------------------------------ files
    def save(self, path):
        from .model_file import save_model
        save_model(self, path)

    @classmethod
    def load(cls, path):
        from .model_file import load_model
        return load_model(cls, path)


def _rising(sweep, patience=2):
    """True once the validation error has risen ``patience`` times in a row."""
    errors = [r["force_mae"] for r in sweep]
    return len(errors) > patience and all(errors[-k] > errors[-k - 1] for k in range(1, patience + 1))
