"""Matrix-free preconditioned conjugate gradients for the training system (K + lam I) alpha = y.

K is never formed: its products come from the backend's ``training_product`` (runtime/matvec.py
on the CPU), prepared once per solve: ``matvec``, and ``matvec_energy`` for the energy rows of a
joint energy+force system, i.e. prediction with the training points as queries.

Rigid-body modes.  A descriptor invariant under translations and rotations has J n = 0 for the
six rigid-body motions n of each training geometry, so these 6M directions are exact null
vectors of K (force and energy rows alike).  On them (K + lam I) alpha = y is solved in closed
form (alpha = y / lam), and CG runs on the rest: with lam = 1e-10 those eigenvalues would
otherwise sit 10 orders of magnitude below the others and stall the iteration.  Each mode is
used only after checking J n = 0 for it (a user's descriptor need not be invariant).

The reported residual is the true one, |y - (K + lam I) alpha| / |y|, recomputed at the end.
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .progress import Progress
from .solver import NonFiniteMatrixError, NotPositiveDefiniteError

DEFAULT_TOL = 1e-8
DEFAULT_MAXITER = 2000
DEFAULT_CHECKPOINT_SECONDS = 300.0
NULL_MODE_TOLERANCE = 1e-10  # |J n| / |J| below this: n is a null direction of K


class CGNotConvergedError(ValueError):
    """CG stopped at its iteration limit above the tolerance: the model would not be the solution."""


class CheckpointError(ValueError):
    """A CG checkpoint that cannot be resumed: missing, unreadable, or of another problem."""


@dataclass
class CGState:
    """Everything the iteration carries: resuming from it repeats the same steps."""
    x: np.ndarray
    r: np.ndarray
    p: np.ndarray | None  # None: the next step starts a fresh direction (start, restart)
    rz: float
    iteration: int


@dataclass
class CGResult:
    x: np.ndarray
    iterations: int
    residual: float  # true relative residual |b - A x| / |b|


class TrainingOperator:
    """x -> (K + lam I) x for flat x: the force entries (3NM) first, then M energy entries."""

    def __init__(self, backend, D, JAC, fperms, hyper, n_atoms, lam, energy_rows=False):
        self.backend, self.D, self.JAC, self.fperms, self.hyper = backend, D, JAC, fperms, hyper
        self.m, self.n_atoms, self.lam, self.energy_rows = D.shape[0], n_atoms, float(lam), energy_rows
        self.n_force = 3 * n_atoms * self.m
        self.size = self.n_force + (self.m if energy_rows else 0)
        self.plan = backend.training_product(D, JAC, fperms, hyper)  # prepared once for all iterations

    def product(self, x):
        """K x (without lam)."""
        V = x[:self.n_force].reshape(self.m, self.n_atoms, 3)
        if not self.energy_rows:
            return self.plan.matvec(V).ravel()
        F, E = self.plan.matvec_energy(V, x[self.n_force:])
        return np.concatenate([F.ravel(), E])

    def __call__(self, x):
        return self.product(x) + self.lam * x


class RigidModes:
    """The verified rigid-body null directions of K: per training point an orthonormal
    (3N, k) basis Q[i] (k <= 6, unused columns zero)."""

    def __init__(self, R, JAC, contract, n_force):
        self.n_force = n_force
        m, n, _ = R.shape
        modes = np.zeros((m, 3 * n, 6))
        for i in range(m):
            modes[i] = _rigid_basis(R[i])
        scale = np.sqrt(np.einsum("mfkc,mfkc->m", JAC, JAC))  # |J| per point
        for c in range(6):  # drop a mode the descriptor is not invariant under
            B = contract(JAC, modes[:, :, c].reshape(m, n, 3))
            moved = np.linalg.norm(B, axis=1) > NULL_MODE_TOLERANCE * scale
            modes[moved, :, c] = 0.0
        self.Q = modes

    def component(self, x):
        """The force part of x projected onto the modes (flat, length n_force)."""
        m = self.Q.shape[0]
        xf = x[:self.n_force].reshape(m, -1)
        return np.einsum("mak,mk->ma", self.Q, np.einsum("mak,ma->mk", self.Q, xf)).ravel()

    def remove(self, x):
        """x without its rigid-body components (a copy)."""
        out = x.copy()
        out[:self.n_force] -= self.component(x)
        return out


def _rigid_basis(r):
    """Orthonormal basis (3N, 6) of the translations and infinitesimal rotations of geometry r
    (columns beyond the rank, e.g. a linear molecule's sixth, are zero)."""
    n = len(r)
    centred = r - r.mean(axis=0)
    vectors = []
    for axis in np.eye(3):
        vectors.append(np.tile(axis, n))
        vectors.append(np.cross(axis, centred).ravel())
    A = np.stack(vectors, axis=1)
    U, s, _ = np.linalg.svd(A, full_matrices=False)
    U[:, s <= 1e-10 * s.max()] = 0.0
    return U


def conjugate_gradients(operator, b, precondition, tol, maxiter, project=None, progress=None, norm_b=None,
                        state=None, checkpoint=None):
    """Preconditioned CG for operator(x) = b from x = 0 (or from ``state``); ``project`` keeps
    the search directions in a subspace the operator maps into itself; ``progress(iteration,
    residual)`` after each step; ``checkpoint(state)`` after each step (it decides whether to
    write).  The residual is relative to ``norm_b`` (default |b|).  At the recurrence's
    convergence the true residual is computed; CG restarts from x if it is still above tol.

    NonFiniteMatrixError on a NaN/inf residual, NotPositiveDefiniteError on a direction of
    non-positive curvature, CGNotConvergedError after ``maxiter`` iterations."""
    project = project or (lambda v: v)
    norm_b = float(np.linalg.norm(b)) if norm_b is None else norm_b
    if norm_b == 0.0:
        return CGResult(np.zeros_like(b), 0, 0.0)
    state = state or CGState(np.zeros_like(b), b.copy(), None, 0.0, 0)
    residual = float(np.linalg.norm(state.r)) / norm_b
    while residual > tol:
        if state.iteration >= maxiter:
            raise CGNotConvergedError(f"conjugate gradients did not converge in {maxiter} iterations "
                                      f"(relative residual {residual:.3g} > tolerance {tol:g})")
        _iterate(operator, state, precondition, project, tol, maxiter, norm_b, progress, checkpoint)
        true_r = b - operator(state.x)  # the recurrence drifts from the true residual
        residual = float(np.linalg.norm(true_r)) / norm_b
        _check_finite(residual, state.iteration)
        if residual > tol:
            state.r, state.p = true_r, None  # restart from x
    return CGResult(state.x, state.iteration, residual)


def _iterate(operator, state, precondition, project, tol, maxiter, norm_b, progress, checkpoint):
    """CG steps on ``state`` until the recurrence's residual is below tol or maxiter."""
    x, r = state.x, state.r
    if state.p is None:
        z = project(precondition(r))
        state.p, state.rz = z.copy(), float(r @ z)
    p = state.p
    while state.iteration < maxiter:
        Ap = operator(p)
        curvature = float(p @ Ap)
        _check_finite(curvature, state.iteration + 1)
        if curvature <= 0.0:
            raise NotPositiveDefiniteError(f"the training matrix is not positive definite (conjugate gradients "
                                           f"found a direction of curvature {curvature:.3g} at iteration "
                                           f"{state.iteration + 1})")
        step = state.rz / curvature
        x += step * p
        r -= step * Ap
        state.iteration += 1
        residual = float(np.linalg.norm(r)) / norm_b
        _check_finite(residual, state.iteration)
        if progress is not None:
            progress(state.iteration, residual)
        if residual <= tol:
            break
        z = project(precondition(r))
        rz_next = float(r @ z)
        p *= rz_next / state.rz
        p += z
        state.rz = rz_next
        if checkpoint is not None:
            checkpoint(state)


def _check_finite(value, iteration):
    if not math.isfinite(value):
        raise NonFiniteMatrixError(f"conjugate gradients produced a non-finite value ({value}) at iteration "
                                   f"{iteration}: the kernel products are not finite")


def solve(operator, y, precondition, tol=DEFAULT_TOL, maxiter=DEFAULT_MAXITER, rigid=None, progress=True,
          label="conjugate gradients", checkpoint=None):
    """(K + lam I)^-1 y by preconditioned CG: the rigid-body part in closed form, CG on the
    rest (see the module docstring).  Returns CGResult with alpha for the whole system and the
    true relative residual of the whole system.  ``checkpoint``: a Checkpoint; its restored
    state (if any) is where CG continues, and it is written as it falls due and when the
    solve stops on an error or an interrupt."""
    y = np.asarray(y, dtype=np.float64)
    norm_y = float(np.linalg.norm(y))
    b, x_rigid, project = y, 0.0, None
    if rigid is not None:
        b = rigid.remove(y)
        project = rigid.remove
        if operator.lam > 0:
            x_rigid = (y - b) / operator.lam  # (K + lam I) n = lam n on a null direction
    with Progress(100, label, enabled=progress) as bar:
        def report(iteration, residual):
            bar.label = f"{label} (iteration {iteration}, residual {residual:.2e})"
            # progress in log(residual) from 1 to tol: the ETA extrapolates its rate
            done = int(100 * min(1.0, math.log(1.0 / max(residual, 1e-300)) / math.log(1.0 / tol)))
            if done > bar.done:
                bar.update(done - bar.done)
        state = checkpoint.restored if checkpoint is not None else None
        state = state or CGState(np.zeros_like(b), b.copy(), None, 0.0, 0)
        try:
            result = conjugate_gradients(operator, b, precondition, tol, maxiter, project, report, norm_y, state,
                                         checkpoint.due if checkpoint is not None else None)
        except BaseException:
            if checkpoint is not None and state.p is not None:
                checkpoint.save(state)  # a stop (iteration limit, Ctrl-C) keeps what was done
            raise
        bar.label = f"{label} ({result.iterations} iterations, residual {result.residual:.2e})"
    result.x = result.x + x_rigid
    return result


def problem_hash(*parts) -> str:
    """sha256 of arrays and strings: what makes two solves the same problem."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            digest.update(str((part.dtype, part.shape)).encode())
            digest.update(np.ascontiguousarray(part).tobytes())
        else:
            digest.update(repr(part).encode())
    return digest.hexdigest()


class Checkpoint:
    """The CG state of one solve written atomically (compiler/atomic_io.py) to ``path`` every
    ``every`` seconds, with the preconditioner's factors and the problem's hash.

    ``solve``: (problem hash, sigma, lam).  With ``resume``, a file of the same problem is
    read: its state is ``restored`` when its (sigma, lam) is this solve's, and a file of another
    problem (data, descriptor, kernel, lambda, preconditioner) is refused."""

    def __init__(self, path, solve, every=DEFAULT_CHECKPOINT_SECONDS, resume=False):
        self.path, self.every = Path(path), float(every)
        self.problem, self.sigma, self.lam = solve
        self.precondition = None  # set by the caller: its factors are saved
        self.restored, self.factors = None, None  # the state and preconditioner (U, L) read back
        self.writable = True
        self._last = time.monotonic()
        if resume:
            self.restored = self._load()
            # the file holds a later solve of the sweep: keep it for that one
            self.writable = self.restored is not None

    def due(self, state):
        if time.monotonic() - self._last >= self.every:
            self.save(state)

    def save(self, state):
        if not self.writable:
            return
        from compiler.atomic_io import atomic_writer
        arrays = {"problem": np.array(self.problem), "sigma": np.array(self.sigma), "lam": np.array(self.lam),
                  "x": state.x, "r": state.r, "p": state.p, "rz": np.array(state.rz),
                  "iteration": np.array(state.iteration)}
        if getattr(self.precondition, "U", None) is not None:
            arrays.update(U=self.precondition.U, L=self.precondition.L)
        with atomic_writer(self.path) as fh:
            np.savez(fh, **arrays)
        self._last = time.monotonic()

    def _load(self):
        try:
            with np.load(self.path, allow_pickle=False) as stored:
                values = {key: stored[key] for key in stored.files}
        except (OSError, ValueError, KeyError) as exc:
            raise CheckpointError(f"cannot resume from {self.path}: {exc}") from None
        if str(values.get("problem")) != self.problem:
            raise CheckpointError(f"{self.path} is the checkpoint of another problem (training data, descriptor, "
                                  "kernel, lambda or preconditioner differ): refusing to resume from it")
        if float(values["sigma"]) != self.sigma or float(values["lam"]) != self.lam:
            return None  # another sigma of the same sweep: this one starts afresh
        if "U" in values:
            self.factors = (values["U"], values["L"])
        return CGState(values["x"], values["r"], values["p"], float(values["rz"]), int(values["iteration"]))


def check_resumable(path, sigma_grid):
    """Refuse to resume from ``path`` when it is missing or its sigma is not in the grid."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            sigma = float(stored["sigma"])
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"cannot resume from {path}: {exc}") from None
    if sigma not in sigma_grid:
        raise CheckpointError(f"{path} is the checkpoint of a solve with sigma {sigma:g}, which is not in the "
                              f"sigma grid {', '.join(f'{s:g}' for s in sigma_grid)}: refusing to resume from it")
