"""GDML: train and use a gradient-domain kernel force field from compiled kernels.

Training solves (K + lam I) alpha = F / scale, K the (3NM)^2 matrix of force
blocks summed over the molecule's permutation group (sGDML's symmetric
kernel).  After training only descriptor-space vectors are kept for
prediction: beta_j = J(x_j) alpha_j, permuted by every symmetry, so a
prediction never forms a 3N x 3N block.
"""
from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from compiler import checks, compile_model
from compiler.library import resolve

from . import cg, data, distributed, hessian_training, mixed, symmetry
from .assembly import allocate_training_matrix, check_memory, dense_fits
from .backends import make_backend
from .preconditioner import PRECONDITIONERS, LowRankPreconditioner, TrainingColumns, make_preconditioner
from .progress import Progress
from .solver import NonFiniteMatrixError, NotPositiveDefiniteError, check_finite_solution
from .trained import PermutedTraining, TrainedState

MAX_JITTER_STEPS = 3  # lam grows 10x per retry before training gives up
SOLVERS = ("auto", "cholesky", "cg")
DEFAULT_PRECONDITIONER = "rpcholesky"  # fewer iterations than uniform Nystrom on ethanol (see README)


class TrainingError(ValueError):
    """Training cannot give a finite model; the message says for which sigma/lambda and why."""


class NonFiniteResultError(ValueError):
    """A prediction or an error table came out NaN or inf."""


def rms(x) -> float:
    """Root mean square without overflow: forces of 1e154 would overflow their squares."""
    x = np.asarray(x, dtype=np.float64)
    scale = float(np.max(np.abs(x))) if x.size else 0.0
    if scale == 0.0 or not np.isfinite(scale):
        return scale
    return scale * float(np.sqrt(np.mean((x / scale) ** 2)))


def error_table(E_pred, F_pred, E_ref, F_ref) -> dict:
    """MAE and RMSE of energies (if any) and force components."""
    out = {}
    dF = np.asarray(F_pred) - np.asarray(F_ref)
    out["force_mae"] = float(np.mean(np.abs(dF)))
    out["force_rmse"] = rms(dF)
    if E_ref is not None and E_pred is not None:
        dE = np.asarray(E_pred) - np.asarray(E_ref)
        out["energy_mae"] = float(np.mean(np.abs(dE)))
        out["energy_rmse"] = rms(dE)
    return out


class GDML:
    """sGDML-class force field with any DSL descriptor and kernel.

    ``sigma``: one length scale, a list (chosen on the validation set), or
    None for the descriptor's default grid.  ``symmetries``: "auto" (detect
    from the training geometries), None (plain GDML) or an (P, N) array.
    ``energy_constraints``: train on energies and forces jointly (sGDML's
    E_cstr): the system gains one row per training geometry whose label is
    its energy; otherwise energies only fix the integration constant.
    ``on_stage``: called as on_stage(name, seconds) after each stage of fit() ("symmetries",
    "descriptors", "assembly", "solve", "coefficients", "energy_constant", "validation"; a stage
    repeated for several sigmas or lambdas is reported each time); the totals of the last fit
    are in ``info["timings"]``.
    ``solver``: "cholesky" (dense, in place), "cg" (matrix-free preconditioned conjugate gradients,
    runtime/cg.py: no training matrix is allocated) or "auto" (dense while the matrix fits in
    memory, CG beyond).  ``cg_tol``: relative residual |y - (K + lam I) alpha| / |y| to reach;
    ``cg_maxiter``: iteration limit (CGNotConvergedError beyond it: never a half-solved model);
    ``preconditioner``: "rpcholesky", "nystrom" or "none", on ``preconditioner_points`` inducing
    training points (default: min(3NM, 2000) columns as whole points, runtime/preconditioner.py).
    ``checkpoint``: a file the CG state is written to every ``checkpoint_every`` seconds (and
    when CG stops on an error or Ctrl-C; removed after a successful fit); ``resume``: continue
    from it (a checkpoint of another problem is refused; earlier sigmas of a sweep are redone).
    ``cluster``: a dask.distributed scheduler address or Client: CG's products run on its workers
    (runtime/distributed.py; solver "auto" or "cg"), everything else in this process.
    ``local``: the local kernel k(x, x') = sum_ij [z_i = z'_j] k(d_i(x), d_j(x')) that compares atoms
    (runtime/local.py); None (default): local exactly when the descriptor gives one feature vector
    per atom (an atom-centred space: acsf, fchl19, ...); False: a global model of the whole
    descriptor vector.  Local models need no symmetry search (``symmetries`` is not used).

    What training produces is one value, ``state`` (runtime/trained.py); its fields read as
    attributes (``model.sigma``, ``model.alpha``, ``model.z``, ...).
    """

    def __init__(self, descriptor="inverse_distances", kernel="matern52", sigma=None, lam=1e-10,
                 symmetries="auto", progress=True, energy_constraints=False, device="cpu", hyper=None,
                 on_stage=None, solver="auto", cg_tol=cg.DEFAULT_TOL, cg_maxiter=cg.DEFAULT_MAXITER,
                 preconditioner=DEFAULT_PRECONDITIONER, preconditioner_points=None, checkpoint=None,
                 checkpoint_every=cg.DEFAULT_CHECKPOINT_SECONDS, resume=False, cluster=None, local=None):
        self.descriptor_dsl = resolve(descriptor, "descriptor")
        self.kernel_dsl = resolve(kernel, "kernel")
        self.lam = float(lam)
        if not (self.lam >= 0 and np.isfinite(self.lam)):
            raise ValueError(f"lam must be a finite non-negative number, got {lam}")
        self.symmetries = symmetries
        self.progress = progress
        self.energy_constraints = bool(energy_constraints)
        self.on_stage = on_stage
        self._set_solver(solver, cg_tol, cg_maxiter, preconditioner, preconditioner_points)
        self.checkpoint, self.checkpoint_every, self.resume = checkpoint, float(checkpoint_every), bool(resume)
        self.model = compile_model(self.descriptor_dsl, self.kernel_dsl)
        self.local = self._locality(local, cluster)
        self.client = None if cluster is None else distributed.client_for(cluster, self.solver)
        self.sigma_grid = self._grid(sigma)
        if self.resume:
            if checkpoint is None:
                raise ValueError("resume=True needs checkpoint=FILE")
            cg.check_resumable(checkpoint, self.sigma_grid)
        self.hyper_values = self._checked_hyper(hyper)
        self.info: dict = {}
        self._state, self._training = None, None
        self._observed = None  # during a fit on Hessians: the observed geometries (hessian_training)
        self._timings: dict = {}
        self.set_device(device)

    def set_device(self, device, hessians=False):
        """Train and predict on 'cpu' or 'cuda' (runtime/cuda_backend.py); a 'cuda' request
        that cannot be met prints why and keeps the CPU.  ``hessians``: about to train on Hessian
        observations (a model that has them is known from its state)."""
        from . import cuda_backend
        hessians = hessians or (self._state is not None and self._state.hessian_observations)
        self.device = cuda_backend.resolve_device(device, energy_constraints=self.energy_constraints, local=self.local,
                                                  hessians=hessians)
        self.backend = make_backend(self.device, self.model, self.descriptor_dsl, self.kernel_dsl, local=self.local)
        return self

    def _locality(self, local, cluster) -> bool:
        """Whether this is a local model (see the class docstring), refused where it cannot be."""
        if local is None:
            local = self.model.can_be_local
        if not local:
            return False
        self.model.require_local()
        if cluster is not None:
            raise ValueError("CG on a cluster is not available for local models yet: train without cluster=")
        return True

    def _row_writer(self, z):
        """What writes the training matrix's block rows (runtime/assembly.py): the compiled model, or
        for a local model its local blocks for atoms z."""
        if not self.local:
            return self.model
        from .local import LocalRows
        return LocalRows(self.model, z)

    def _set_solver(self, solver, cg_tol, cg_maxiter, preconditioner, preconditioner_points):
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
        if not (isinstance(cg_tol, (int, float)) and 0 < cg_tol < 1):
            raise ValueError(f"cg_tol must be a number between 0 and 1, got {cg_tol!r}")
        if not (isinstance(cg_maxiter, (int, np.integer)) and cg_maxiter >= 1):
            raise ValueError(f"cg_maxiter must be a positive integer, got {cg_maxiter!r}")
        if preconditioner not in PRECONDITIONERS:
            raise ValueError(f"preconditioner must be one of {', '.join(PRECONDITIONERS)}, got {preconditioner!r}")
        if preconditioner_points is not None and not (isinstance(preconditioner_points, (int, np.integer))
                                                      and preconditioner_points >= 1):
            raise ValueError(f"preconditioner_points must be a positive integer, got {preconditioner_points!r}")
        self.solver, self.cg_tol, self.cg_maxiter = solver, float(cg_tol), int(cg_maxiter)
        self.preconditioner, self.preconditioner_points = preconditioner, preconditioner_points

    # ------------------------------------------------------------------ trained state
    @property
    def state(self) -> TrainedState | None:
        """The trained state (None before training or after a failed fit)."""
        return self._state

    @state.setter
    def state(self, state):
        self._state = state
        if state is None:
            self._training = None
            return
        if not isinstance(state, TrainedState):
            raise TypeError(f"state must be a TrainedState, got {type(state).__name__}")
        self._install(state, self.model.feature_permutations(state.perms, state.n_atoms))

    @property
    def _trained(self) -> bool:
        return self._state is not None

    @property
    def kernel_hyper(self) -> np.ndarray:
        """The trained kernel's hyperparameter array (sigma and hyper=), as the kernels take it."""
        self._required_state()
        return self._training.hyper

    def _required_state(self) -> TrainedState:
        if self._state is None:
            raise AttributeError("the model is not trained: call fit() or GDML.load()")
        return self._state

    def _replace_state(self, **values):
        """The state with some values changed; values prediction only scales by (label_scale,
        energy_constant, lam_used) keep the prepared training arrays."""
        state = dataclasses.replace(self._required_state(), **values)
        if set(values) <= {"label_scale", "energy_constant", "element_energies", "lam_used"}:
            self._state = state
        else:
            self.state = state

    def _grid(self, sigma):
        if self.model.kernel.sigma_name is None:  # a kernel without hyperparameters: no sweep
            if np.size(sigma) > 1:
                raise ValueError(f"kernel {self.kernel_dsl.name} has no hyperparameters: there is no sigma to choose")
            return [1.0]  # a placeholder the kernel never reads
        if sigma is None:
            grid = self.descriptor_dsl.default_sigmas or (10, 20, 40, 80)
        else:
            grid = np.atleast_1d(np.asarray(sigma, dtype=np.float64)).tolist()
        if not grid or not all(np.isfinite(s) and s > 0 for s in grid):
            raise ValueError(f"sigma must be positive finite number(s), got {sigma}")
        return [float(s) for s in grid]

    def _checked_hyper(self, hyper):
        """hyper= values for the kernel's hyperparameters besides sigma, checked by name and value."""
        values = dict(hyper or {})
        if self.model.kernel.sigma_name in values:
            raise ValueError(f"hyperparameter {self.model.kernel.sigma_name!r} is the kernel's length scale: "
                             "set it with sigma=, not hyper=")
        self.model.kernel.hyper(**values, **self._sigma_value(self.sigma_grid[0]))
        return values

    def _sigma_value(self, sigma):
        name = self.model.kernel.sigma_name
        return {} if name is None else {name: sigma}

    def _kernel_hyper(self, sigma):
        """The compiled kernel's hyperparameter array: sigma and the values of hyper=."""
        return self.model.kernel.hyper(**self.hyper_values, **self._sigma_value(sigma))

    # ------------------------------------------------------------------ training
    def fit(self, R, F, E=None, z=None, valid=None, validated=False, H=None, H_frames=None):
        """Train on geometries R (M, N, 3) of atoms z (N,), forces F, optional energies E, and optional
        Hessians H (K, 3N, 3N) of the frames H_frames (K,; default: every frame) as observations beside
        the forces (runtime/hessian_training.py: the dense solver, on the CPU).  A local model
        also takes geometries of several compositions: z (M, N) per frame, 0 for an empty slot
        (runtime/mixed.py), and then valid=(R, F, E, z).

        ``valid``: (R, F, E) used to choose sigma when several are given.
        Every array is validated before any work starts (``validated``: the geometries R and
        valid's R already passed checks.geometries, as the command line's do).  A sigma whose matrix, solution or
        validation error is not finite is skipped (noted in ``info["sigma_sweep"]``);
        TrainingError if none is finite.  A failed fit leaves the model untrained.
        Returns the model itself.
        """
        R, F, E, z, valid = self._checked_inputs(R, F, E, z, valid, validated)
        hessians = self._checked_hessians(H, H_frames, R, z)
        self._timings = {}
        self._resume_pending = self.resume
        try:
            self._fit(R, F, E, z, valid, hessians)
        except BaseException:
            self.state = None  # nothing half-trained can be saved or used
            raise
        finally:
            self._observed = None
        self.info["timings"] = dict(self._timings)
        return self

    @contextmanager
    def _stage(self, name):
        """Time one stage of fit(): its total in info["timings"], and on_stage(name, seconds)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            self._timings[name] = self._timings.get(name, 0.0) + seconds
            if self.on_stage is not None:
                self.on_stage(name, seconds)

    def _checked_inputs(self, R, F, E, z, valid, validated=False):
        """Training and validation arrays, each validated once, before any assembly."""
        if z is None:
            raise ValueError("z (atomic numbers, shape (n_atoms,)) is required for training")
        if mixed.is_padded(z):
            R, F, E, z = self._checked_padded(R, F, E, z, "training")
        else:
            R, F, E, z = data.checked_arrays(R, F, E, z, "training data")
            if not validated:
                checks.geometries(R, "training geometries")
        if self.energy_constraints and E is None:
            raise ValueError("energy_constraints=True needs training energies E")
        if len(self.sigma_grid) > 1 and valid is None:
            raise ValueError(f"choosing sigma from {len(self.sigma_grid)} values needs a validation set "
                             "(valid=(R, F, E)); or pass one sigma")
        if valid is None:
            return R, F, E, z, None
        if not isinstance(valid, (tuple, list)) or len(valid) not in (2, 3, 4):
            raise ValueError("valid must be a tuple (R, F), (R, F, E) or, for several compositions, (R, F, E, z)")
        Rv, Fv, Ev, zv = (*valid, None, None)[:4]
        if zv is not None:
            return R, F, E, z, self._checked_padded(Rv, Fv, Ev, zv, "validation")
        if mixed.is_padded(z):
            raise ValueError("validation geometries for a model of several compositions need their elements: "
                             "valid=(R, F, E, z)")
        Rv, Fv, Ev, _ = data.checked_arrays(Rv, Fv, Ev, None, "validation data")
        if not validated or Rv.shape[1] != R.shape[1]:
            checks.geometries(Rv, "validation geometries", n_atoms=R.shape[1])
        return R, F, E, z, (Rv, Fv, Ev, z)

    def _checked_padded(self, R, F, E, Z, role):
        """Padded geometries of several compositions (runtime/mixed.py), for a local model only; the
        forces of padded slots are set to 0 (they are not labels)."""
        if not self.local:
            raise ValueError(f"{role} geometries of several compositions (z of shape (M, N)) need a local model: "
                             "a global kernel compares whole molecules of one composition")
        if self.energy_constraints:
            raise ValueError("energy constraints are not available for geometries of several compositions yet "
                             "(their energies differ by per-element constants): train without them")
        R, F, E, _ = data.checked_arrays(R, F, E, None, f"{role} data")
        Z = mixed.checked_elements(Z, *R.shape[:2], what=f"{role} z")
        R = mixed.checked_geometries(R, Z, f"{role} geometries")
        F = np.where((Z > 0)[..., None], F, 0.0)
        return R, F, E, Z

    def _checked_hessians(self, H, H_frames, R, z):
        """(H, H_frames) validated, or None; refused, saying why, where training on Hessians is not
        available (before any work)."""
        H, H_frames = data.checked_hessians(H, H_frames, R.shape[0], R.shape[1], "training data")
        if H is None:
            return None
        why = ("a cluster" if self.client is not None else "the CG solver" if self.solver == "cg"
               else "geometries of several compositions" if mixed.is_padded(z) else None)
        if why is not None:
            raise ValueError(f"training on Hessians is not available with {why} yet: train on forces only "
                             "(drop the Hessians), or use the dense solver on one composition without a cluster")
        self.model.require_observations()
        self.set_device(self.device, hessians=True)  # the CUDA kernels have no Hessian observations: the CPU
        return H, H_frames

    def _fit(self, R, F, E, z, valid, hessians=None):
        m, n, _ = R.shape
        with self._stage("symmetries"):
            perms = self._permutations(R, z)
        fperms = self.model.feature_permutations(perms, n)
        with self._stage("descriptors"):
            D, JAC = self.backend.evaluate(R, z)
        if self.local:
            self.backend.elements = z  # the local blocks and products pair atoms of one element
        labelled = F[z > 0] if mixed.is_padded(z) else F  # padded slots carry no labels
        label_scale = rms(labelled - np.mean(labelled)) or 1.0  # np.std(F), without overflow
        # what every candidate shares; each sets alpha, B_train, sigma, lam and the energy constant
        base = TrainedState(z=z, R_train=R, perms=perms, alpha=None, D_train=D, B_train=None,
                            energy_weights=None, sigma=None, lam_used=None, label_scale=label_scale,
                            energy_constant=None)
        y = F.ravel()
        if self.energy_constraints:
            # energy labels centred on their mean, which becomes the model's constant
            y = np.concatenate([y, E - np.mean(E)])
        if hessians is not None:
            base = dataclasses.replace(base, R_hessian=R[hessians[1]])
            y = np.concatenate([y, hessian_training.hessian_labels(hessians[0])])
            self._observed = hessian_training.observed_geometries(self.model, base.R_hessian, z, D[hessians[1]],
                                                                  JAC[hessians[1]])
        y = y / label_scale

        solver = "cholesky" if hessians is not None else self._solver_for(len(y))
        if solver == "cg" and mixed.is_padded(z):
            raise ValueError("CG is not available for geometries of several compositions yet: use the dense "
                             "solver (solver='cholesky'; its matrix must fit in memory)")
        if self.resume and solver != "cg":
            raise ValueError(f"resuming continues a CG solve, but this training uses the {solver} solver: "
                             "pass solver='cg' (--solver cg)")
        # dense: one triangle, reused for every sigma; CG: no training matrix at all
        if hessians is not None:
            check_memory(len(y), packed=False)
            K = np.empty((len(y), len(y)))  # full: the Hessian rows follow the force rows
        else:
            K = allocate_training_matrix(m, n, self.energy_constraints) if solver == "cholesky" else None
        sweep, best = [], None
        for sigma in self.sigma_grid:
            try:
                result, alpha = self._candidate(base, K, JAC, fperms, sigma, y, E, valid)
            except (NonFiniteMatrixError, NonFiniteResultError) as exc:
                self._report(f"sigma {sigma:g} skipped: {exc}")
                sweep.append({"sigma": sigma, "skipped": f"sigma {sigma:g}: {exc}"})
                continue
            sweep.append(result)
            if best is None or (valid is not None and result["force_mae"] < best[0]["force_mae"]):
                best = (result, alpha)
            if valid is not None and _rising(sweep):
                break  # as sGDML: stop once validation error rises
        del K
        self.backend.release()  # a device training matrix
        if best is None:
            tried = ", ".join(f"{r['sigma']:g}" for r in sweep)
            raise TrainingError(f"no sigma gives a finite model (tried {tried}): " +
                                "; ".join(r["skipped"] for r in sweep))
        result, alpha = best
        if solver == "cg" and self.checkpoint is not None:
            Path(self.checkpoint).unlink(missing_ok=True)  # the solves are done: nothing to resume
        self._set_coefficients(base, JAC, fperms, alpha, result["sigma"], result["lam"])
        self._fit_energy_constant(E)
        self.info.update({"sigma_sweep": sweep, "sigma": result["sigma"], "lam": result["lam"],
                          "n_train": m, "n_perms": len(perms),
                          "n_hessians": 0 if hessians is None else len(hessians[1]),
                          "energy_constraints": self.energy_constraints, "solver": solver})
        self.info.update({k: v for k, v in result.items() if k.startswith("cg_")})
        if valid is not None:
            self.info["validation"] = {k: v for k, v in result.items()
                                       if k not in ("sigma", "lam") and not k.startswith("cg_")}

    def _solver_for(self, n_rows):
        """'cholesky' or 'cg' for a system of n_rows: auto is dense while the matrix fits in memory."""
        if self.client is not None:
            return "cg"  # the dense solver was refused with a cluster
        if self.solver != "auto":
            return self.solver
        return "cholesky" if dense_fits(n_rows) else "cg"

    def _candidate(self, base, K, JAC, fperms, sigma, y, E, valid):
        """Train with one sigma: ({sigma, lam, validation errors}, alpha); NonFinite*Error if the
        matrix, the solution, a prediction or the validation error is not finite."""
        if K is None:
            alpha, lam, result = self._solve_cg(base, JAC, fperms, sigma, y)
        else:
            alpha, lam = self._solve(K, base.D_train, JAC, fperms, sigma, y, base.n_atoms)
            result = {}
        self._set_coefficients(base, JAC, fperms, alpha, sigma, lam)
        self._fit_energy_constant(E)
        result = {"sigma": sigma, "lam": lam, **result}
        if valid is not None:
            with self._stage("validation"):
                result.update(self._evaluate_checked(*valid))
            self._report(f"sigma {sigma:g}: validation force MAE {result['force_mae']:.4g}")
        return result, alpha

    def _report(self, text):
        if self.progress:
            import sys
            print(text, file=sys.stderr)

    def _permutations(self, R, z):
        n = R.shape[1]
        identity = np.arange(n, dtype=np.int64)[None]
        if self.local:  # invariant under permutations of like atoms by construction
            if not isinstance(self.symmetries, (str, type(None), bool)) and \
                    not np.array_equal(np.asarray(self.symmetries), identity):
                raise ValueError("a local model compares atoms and is invariant under atom permutations by "
                                 "construction: it takes no symmetries (pass symmetries='auto' or None)")
            return identity
        if self.symmetries is None or self.symmetries is False:
            return identity
        if isinstance(self.symmetries, str):
            if self.symmetries != "auto":
                raise ValueError(f"symmetries must be 'auto', None or an array, got {self.symmetries!r}")
            return symmetry.find_permutations(R, z, progress=self.progress)
        return symmetry.validate_permutations(self.symmetries, z)

    def _solve(self, K, D, JAC, fperms, sigma, y, n_atoms):
        hyper = self._kernel_hyper(sigma)
        lam = self.lam
        for attempt in range(MAX_JITTER_STEPS + 1):
            with self._stage("assembly"):
                self._assemble(K, D, JAC, fperms, hyper, n_atoms)
            try:
                with self._stage("solve"):
                    alpha = self.backend.solve(K, y, lam, progress=self.progress)
                    check_finite_solution(alpha)  # the CUDA solver does not check
                return alpha, lam
            except NonFiniteMatrixError as exc:
                # no retry: a larger lambda cannot make NaN finite
                raise NonFiniteMatrixError(
                    f"{exc}{self._matrix_entry(exc.row, exc.column, D.shape[0], n_atoms, self.energy_constraints)} "
                    f"with lambda {lam:g}; "
                    "the kernel may be 0/0 or overflow at this sigma (e.g. at d = d')") from None
            except NotPositiveDefiniteError as exc:
                if attempt == MAX_JITTER_STEPS:
                    raise NotPositiveDefiniteError(
                        f"{exc}; gave up after raising lambda to {lam:g}: check the data for duplicate "
                        "geometries or try a larger sigma") from None
                lam = max(lam * 10, 1e-10)
                self._report(f"matrix not positive definite: retrying with lambda = {lam:g}")

    def _assemble(self, K, D, JAC, fperms, hyper, n_atoms):
        """The training matrix into K: the backend's force (and energy) blocks, then the rows of
        Hessian observations, if any (K then is a full matrix, the force blocks its corner)."""
        if self._observed is None:
            self.backend.assemble(D, JAC, fperms, hyper, n_atoms, K, progress=self.progress,
                                  energy_rows=self.energy_constraints)
            return
        n_force = 3 * n_atoms * D.shape[0]
        n_corner = n_force + (D.shape[0] if self.energy_constraints else 0)
        corner = np.empty((n_corner, n_corner))  # the generated assembly writes C-ordered square matrices
        self.backend.assemble(D, JAC, fperms, hyper, n_atoms, corner, progress=self.progress,
                              energy_rows=self.energy_constraints)
        K[:n_corner, :n_corner] = corner
        options = dict(progress=self.progress, energy_rows=self.energy_constraints)
        if self.local:
            hessian_training.assemble_local_hessian_rows(self.model, D, JAC, self.backend.elements, hyper,
                                                         self._observed, K, n_force, **options)
        else:
            hessian_training.assemble_hessian_rows(self.model, D, JAC, fperms, hyper, self._observed, K, n_force,
                                                   **options)

    def _solve_cg(self, base, JAC, fperms, sigma, y):
        """(alpha, lam, {cg_iterations, cg_residual, cg_preconditioner, cg_rank}) by matrix-free
        preconditioned CG (runtime/cg.py); lam escalates as in _solve on negative curvature."""
        D, n_atoms = base.D_train, base.n_atoms
        hyper = self._kernel_hyper(sigma)
        columns = TrainingColumns(self._row_writer(base.z), D, JAC, fperms, hyper, n_atoms, self.energy_constraints)
        rigid = cg.RigidModes(base.R_train, JAC, self.backend.contract, 3 * n_atoms * D.shape[0])
        lam = self.lam
        for attempt in range(MAX_JITTER_STEPS + 1):
            checkpoint = self._cg_checkpoint(base, y, sigma, lam)
            with self._stage("preconditioner"):
                if checkpoint is not None and checkpoint.factors is not None:
                    precondition = LowRankPreconditioner(*checkpoint.factors, lam, kind=self.preconditioner)
                else:
                    precondition = make_preconditioner(self.preconditioner, columns, lam, self.preconditioner_points)
            if checkpoint is not None:
                checkpoint.precondition = precondition
            operator = distributed.training_operator(self, D, JAC, fperms, hyper, n_atoms, lam)
            try:
                with self._stage("solve"):
                    result = cg.solve(operator, y, precondition, self.cg_tol, self.cg_maxiter, rigid,
                                      progress=self.progress, label=f"cg sigma {sigma:g}", checkpoint=checkpoint)
                    check_finite_solution(result.x)
                return result.x, lam, {"cg_iterations": result.iterations, "cg_residual": result.residual,
                                       "cg_preconditioner": precondition.kind, "cg_rank": precondition.rank}
            except NonFiniteMatrixError as exc:
                raise NonFiniteMatrixError(f"{exc} with sigma {sigma:g}, lambda {lam:g}; the kernel may be 0/0 "
                                           "or overflow at this sigma") from None
            except cg.CGNotConvergedError as exc:
                raise cg.CGNotConvergedError(f"{exc} with sigma {sigma:g}, lambda {lam:g}: raise cg_maxiter "
                                             "(--cg-maxiter), loosen cg_tol (--cg-tol) or increase lambda") from None
            except NotPositiveDefiniteError as exc:
                if attempt == MAX_JITTER_STEPS:
                    raise NotPositiveDefiniteError(f"{exc}; gave up after raising lambda to {lam:g}") from None
                lam = max(lam * 10, 1e-10)
                self._report(f"matrix not positive definite: retrying with lambda = {lam:g}")

    def _cg_checkpoint(self, base, y, sigma, lam):
        """The Checkpoint of the CG solve at (sigma, lam), or None without a checkpoint file."""
        if self.checkpoint is None:
            return None
        problem = cg.problem_hash(base.R_train, base.z, base.perms, y, self.model.module_path.name,
                                  self.model.descriptor.params, sorted(self.hyper_values.items()), self.lam,
                                  self.energy_constraints, self.preconditioner, self.preconditioner_points)
        checkpoint = cg.Checkpoint(self.checkpoint, (problem, float(sigma), float(lam)), self.checkpoint_every,
                                   resume=self._resume_pending)
        if checkpoint.restored is not None:
            self._resume_pending = False  # from here on the file is this run's
        return checkpoint

    @staticmethod
    def _matrix_entry(row, column, m, n_atoms, energy_rows=False):
        """' (training frame 3, atom 1 y with training frame 3, energy)' for a matrix entry, '' if None;
        rows after the force (and energy) rows are Hessian observations'."""
        if row is None:
            return ""
        n3 = 3 * n_atoms
        first = n3 * m + (m if energy_rows else 0)  # the first Hessian row
        entries = n3 * (n3 + 1) // 2

        def describe(index):
            if index >= first:
                observed, entry = divmod(index - first, entries)
                return f"Hessian observation {observed}, entry {entry}"
            if index >= n3 * m:
                return f"training frame {index - n3 * m}, energy"
            frame, rest = divmod(index, n3)
            return f"training frame {frame}, atom {rest // 3} {'xyz'[rest % 3]}"
        return f" ({describe(row)} with {describe(column)})"

    def _set_coefficients(self, base, JAC, fperms, alpha, sigma, lam):
        """Install the state of one solution alpha (its energy constant comes next)."""
        with self._stage("coefficients"):
            m, n = base.D_train.shape[0], base.n_atoms
            energy_weights = alpha[3 * n * m:3 * n * m + m] if self.energy_constraints else None
            first = 3 * n * m + (m if self.energy_constraints else 0)  # the Hessian rows follow
            hessian_weights = None if base.R_hessian is None else alpha[first:].reshape(len(base.R_hessian), -1)
            alpha = alpha[:3 * n * m].reshape(m, n, 3)
            state = dataclasses.replace(base, alpha=alpha, B_train=self.backend.contract(JAC, alpha),
                                        energy_weights=energy_weights, sigma=float(sigma), lam_used=float(lam),
                                        energy_constant=0.0, hessian_weights=hessian_weights)
            self._install(state, fperms)

    def _install(self, state, fperms):
        """Make ``state`` the model's, with its permuted training arrays prepared for prediction."""
        self._state = state
        training = PermutedTraining.of(state, fperms, self._kernel_hyper(state.sigma))
        if state.hessian_observations:
            training = hessian_training.with_observations(self.model, self.backend, state, fperms, training,
                                                          self._observed, local=self.local)
        self._training = training
        self.backend.prepare(self._training)

    def _fit_energy_constant(self, E):
        """The energy constant: the mean residual of the training energies; for geometries of several
        compositions one energy per element instead (least squares over the element counts, minimum
        norm where compositions do not determine them), since their energies differ by atoms."""
        with self._stage("energy_constant"):
            element_energies = None
            if E is None:
                constant = None
            elif self.energy_constraints:
                constant = float(np.mean(E))  # the energy labels were centred on it
            else:
                E_pred, _ = self._predict_checked(self._state.R_train)  # with the constant 0
                constant = float(np.mean(E - E_pred))
                if mixed.is_padded(self._state.z):
                    counts = mixed.element_counts(self._state.z)
                    element_energies = np.linalg.lstsq(counts, E - E_pred, rcond=None)[0]
                    constant = 0.0
            self._replace_state(energy_constant=constant, element_energies=element_energies)

    # ------------------------------------------------------------------ prediction
    def predict(self, R, batch=2000, progress=None, validated=False, hessian=False, z=None):
        """Energies (M,) and forces (M, N, 3) for R (N, 3) or (M, N, 3); with ``hessian``
        also the Hessians d2E/dx2 (M, 3N, 3N), in energy units per length squared (the
        coordinates of atom a are rows 3a, 3a + 1, 3a + 2).

        ``z``: the atoms' elements, by default the training molecule's.  A local model predicts any
        geometry whose elements it has seen: z (N,) for R of N atoms, or z (M, N) per geometry
        (several compositions, padded with 0: runtime/mixed.py; padded slots get zero forces).
        Energies are relative (no constant) when the model was trained without energies.
        ``validated``: R (M, N, 3) already passed checks.geometries (with this model's atoms)."""
        if not self._trained:
            raise RuntimeError("the model is not trained: call fit() or GDML.load()")
        z = self._query_elements(z)
        if mixed.is_padded(z):
            single = np.ndim(R) == 2
            R3 = mixed.checked_geometries(np.asarray(R)[None] if single else R, np.reshape(z, (-1, np.shape(z)[-1])))
            z = np.reshape(z, (len(R3), -1))
        elif validated and np.ndim(R) == 3 and np.shape(R)[1] == len(z):
            R3, single = np.ascontiguousarray(R, dtype=np.float64), False
        else:
            R3, single = checks.geometries(R, "R", n_atoms=len(z))
        if hessian:
            self.model.require_hessians()  # before any work: says why a kernel has none
        E, F = self._predict_checked(R3, batch, progress, z)
        if not hessian:
            return (E[0], F[0]) if single else (E, F)
        H = self._hessians_checked(R3, z)
        return (E[0], F[0], H[0]) if single else (E, F, H)

    def _query_elements(self, z):
        """The elements of query geometries: the training molecule's by default; others only for a
        local model (checked: 1..118, or padded per geometry)."""
        if z is None:
            if mixed.is_padded(self.z):
                raise ValueError("this model was trained on several compositions: pass the query atoms' "
                                 "elements, z=(N,) or z=(M, N)")
            return self.z
        if not self.local:
            if np.array_equal(np.asarray(z), self.z):
                return self.z
            raise ValueError("a global model predicts the molecule it was trained on; z differs from its "
                             f"training atoms {self.z.tolist()}")
        if np.ndim(z) == 2:
            return mixed.checked_elements(z, *np.shape(z))
        return data.checked_arrays(np.zeros((1, np.size(z), 3)), None, None, z, "query", require_forces=False)[3]

    def _hessians_checked(self, R3, z=None):
        """d2E/dx2 (M, 3N, 3N) for validated geometries; NonFiniteResultError naming a frame."""
        state = self._state
        H = self.backend.hessian(R3, state.z if z is None else z, self._training)
        H *= state.label_scale
        _check_finite_frames("Hessian", H)
        return H

    def _predict_checked(self, R3, batch=2000, progress=False, z=None):
        """predict() for (M, N, 3) geometries already validated (training, validation data), whose
        atoms' elements are z (default: the training molecule's; (M, N): per geometry)."""
        state = self._state
        z = state.z if z is None else z
        E = np.empty(len(R3))
        F = np.empty(R3.shape)
        show = (self.progress if progress is None else progress) and len(R3) > batch
        with Progress(len(R3), "prediction", enabled=show) as bar:
            for start in range(0, len(R3), batch):
                chunk = slice(start, start + batch)
                E[chunk], F[chunk] = self.backend.predict(R3[chunk], z[chunk] if mixed.is_padded(z) else z,
                                                          self._training)
                bar.update(len(R3[chunk]))
        E *= state.label_scale
        F *= state.label_scale
        if state.energy_constant is not None:
            E += state.energy_constant
        if state.element_energies is not None:
            E += mixed.element_counts(z if mixed.is_padded(z) else np.broadcast_to(z, (len(E), len(z)))) \
                @ state.element_energies
        _check_finite_frames("prediction", E, F)
        return E, F

    def evaluate(self, R, F, E=None, validated=False, z=None):
        """Error table against reference forces (and energies).  ``validated``: R already passed
        checks.geometries (with this model's atoms).  ``z``: as in predict()."""
        if not self._trained:
            raise RuntimeError("the model is not trained: call fit() or GDML.load()")
        z = self._query_elements(z)
        if mixed.is_padded(z):
            R, F, E, z = self._checked_padded(R, F, E, z, "reference")
            return self._evaluate_checked(R, F, E, z)
        R, F, E, _ = data.checked_arrays(R, F, E, None, "reference data")
        if not validated or R.shape[1] != len(z):
            checks.geometries(R, "reference geometries", n_atoms=len(z))
        return self._evaluate_checked(R, F, E, z)

    def _evaluate_checked(self, R, F, E, z=None):
        """The error table; for padded geometries (z (M, N)) over their real atoms only."""
        E_pred, F_pred = self._predict_checked(R, z=z)
        if self.energy_constant is None:
            E = None
        if z is not None and mixed.is_padded(z):
            F_pred, F = F_pred[z > 0], F[z > 0]
        errors = error_table(E_pred, F_pred, E, F)
        bad = [name for name, value in errors.items() if not np.isfinite(value)]
        if bad:
            raise NonFiniteResultError(f"the error ({', '.join(bad)}) is not finite")
        return errors

    # ------------------------------------------------------------------ files
    def save(self, path):
        from .model_file import save_model
        if self._trained:
            self._check_finite_coefficients()
        save_model(self, path)

    def _check_finite_coefficients(self):
        """Refuse to write a model that could only predict NaN or inf."""
        values = {"alpha": self.alpha, "coefficients": self.B_train, "training descriptors": self.D_train,
                  "energy weights": self.energy_weights, "Hessian weights": self.hessian_weights,
                  "label scale": self.label_scale,
                  "energy constant": self.energy_constant, "element energies": self.element_energies,
                  "sigma": self.sigma}
        bad = [name for name, v in values.items() if v is not None and not np.all(np.isfinite(v))]
        if bad:
            raise TrainingError(f"refusing to save a model whose {', '.join(bad)} are not finite")

    @classmethod
    def load(cls, path):
        from .model_file import load_model
        return load_model(cls, path)


def _state_attribute(name):
    """A TrainedState field read (and replaced) as a GDML attribute: model.sigma, model.alpha, ..."""
    def get(self):
        return getattr(self._required_state(), name)

    def set_(self, value):
        self._replace_state(**{name: value})
    return property(get, set_, doc=f"the trained state's {name}")


for _name in ("z", "R_train", "perms", "alpha", "D_train", "B_train", "energy_weights", "sigma", "lam_used",
              "label_scale", "energy_constant", "element_energies", "R_hessian", "hessian_weights"):
    setattr(GDML, _name, _state_attribute(_name))
GDML.n_atoms = property(lambda self: self._required_state().n_atoms, doc="atoms of the trained molecule")


def _check_finite_frames(what, *arrays):
    """NonFiniteResultError naming the first frame where any of ``arrays`` (frames first) has a
    NaN or inf."""
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(sum(a.sum() for a in arrays)):
            return  # the common case, in one cheap pass (one geometry's prediction is ~0.1 ms)
    bad = np.zeros(len(arrays[0]), dtype=bool)
    for a in arrays:
        bad |= ~np.isfinite(a.reshape(len(a), -1)).all(axis=1)
    if bad.any():
        raise NonFiniteResultError(f"the {what} is not finite for frame {int(np.argmax(bad))} "
                                   f"({int(bad.sum())} of {len(bad)} frames)")


def _rising(sweep, patience=2):
    """True once the validation error has risen ``patience`` times in a row (skipped sigmas aside)."""
    errors = [r["force_mae"] for r in sweep if "force_mae" in r]
    return len(errors) > patience and all(errors[-k] > errors[-k - 1] for k in range(1, patience + 1))
