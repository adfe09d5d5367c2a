"""Kernel structure as a small algebra: descriptor-space tensors with IR coefficients.

A kernel is k(d, dp) = g(s, t) with s = |d - dp|^2 and t = d . dp, so every
derivative of k in d and dp is a combination of a few fixed vectors,

    the basis          delta = d - dp,  d,  dp,  beta (a fixed direction: the
                       contracted coefficient vector of prediction),

with scalar coefficients built from the partials of g and the contractions
w . beta.  A :class:`Vector` is sum_b c_b b; a :class:`Matrix` is
c I + sum_k c_k u_k w_k^T (J_ij = d v_i / d x_j for jacobians).  The chain rule
over this basis (:func:`gradient`, :func:`jacobian`, :func:`contract`,
:func:`dot`) derives everything the targets emit from the one scalar variable
``g``, to any order: the gradients, the Hessian d2k/dd ddp^T, H beta, the energy
term and d(H beta)/dd (third order, for Hessian prediction).  Coefficients are
IR expressions (compiler/middle/ir.py), so a structurally zero term is ir.ZERO and
folds away, and the s = 0 guard reads each partial's power of delta from the
terms instead of a table.

Scalar IR variables: "s", "t"; the contractions "delta_beta", "d_beta",
"dp_beta"; the partials of g by multi-index, s before t: "g", "g_s", "g_t",
"g_ss", "g_st", "g_tt", "g_sss", ... (:func:`partial_name`).  The coefficient
names and the formulas of H beta live here only: the code generators receive
expressions and names from a :class:`KernelStructure` and spell them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from compiler.middle import ad, ir
from compiler.front.records import S, T

BASIS = ("delta", "d", "dp", "beta", "gamma")
WRT = ("d", "dp")
# the fixed directions a result may be contracted with: beta (a training point's coefficients) and,
# for a Hessian observation's second derivative beta^T (d2k/ddp2) gamma, gamma
DIRECTIONS = ("beta", "gamma")
# w . direction, per direction (beta . beta and gamma . gamma: never needed)
CONTRACTIONS = {"beta": {"delta": "delta_beta", "d": "d_beta", "dp": "dp_beta"},
                "gamma": {"delta": "delta_gamma", "d": "d_gamma", "dp": "dp_gamma", "beta": "beta_gamma"}}
CONTRACTION = CONTRACTIONS["beta"]
# d b / d wrt for the basis vectors that move with d or dp: a multiple of the identity
_BASIS_JACOBIAN = {("delta", "d"): 1.0, ("delta", "dp"): -1.0, ("d", "d"): 1.0, ("dp", "dp"): 1.0}
# the gradient of s and t, and of each contraction, as {basis: constant}, per wrt
_VARIABLE_GRADIENT = {
    (S, "d"): {"delta": 2.0}, (S, "dp"): {"delta": -2.0},
    (T, "d"): {"dp": 1.0}, (T, "dp"): {"d": 1.0},
    ("delta_beta", "d"): {"beta": 1.0}, ("delta_beta", "dp"): {"beta": -1.0},
    ("d_beta", "d"): {"beta": 1.0}, ("dp_beta", "dp"): {"beta": 1.0},
    ("delta_gamma", "d"): {"gamma": 1.0}, ("delta_gamma", "dp"): {"gamma": -1.0},
    ("d_gamma", "d"): {"gamma": 1.0}, ("dp_gamma", "dp"): {"gamma": 1.0},
}
# what every model's force-field entry points emit (training, energies, forces)
EMITTED = ("grad_d", "grad_dp", "hessian", "h_beta", "energy_term")
# what Hessian prediction emits on top: a predicted energy's gradient and Hessian in the query's
# descriptor d, per training point (third order: built and simplified separately, so models that
# never predict Hessians do not pay for them in their hot loops)
HESSIAN_EMITTED = ("prediction_gradient", "prediction_hessian")
# the scalar variable of a training point's energy coefficient (joint energy+force models)
ENERGY_WEIGHT = "w"
# what Hessian observations emit (training on Hessians): one observation's share of a predicted
# energy, beta^T (d2k / ddp2) gamma, and its gradient and Hessian in the query's d (fourth order)
OBSERVATION_EMITTED = ("observation_term", "observation_gradient", "observation_hessian")
# powers of delta that each scalar variable carries, for the s = 0 guard (|delta_beta| <= |delta|)
_DELTA_DEGREE = {"delta_beta": 1, "delta_gamma": 1, S: 2}


# --------------------------------------------------------------------------- partial names

def partial_name(index) -> str:
    """The IR variable of the partial of g by the multi-index ``index`` (s before t)."""
    index = sorted(index)
    return "g" + ("_" + "".join(index) if index else "")


def partial_index(name: str):
    """The multi-index of a partial's variable name, or None if ``name`` names no partial."""
    if name == "g":
        return ()
    if name.startswith("g_") and len(name) > 2 and set(name[2:]) <= {S, T}:
        return tuple(name[2:])
    return None


def _partial_order(name):
    """Sort key: by order, then s before t (g_s, g_t, g_ss, g_st, g_tt, ...)."""
    return len(partial_index(name)), name


# --------------------------------------------------------------------------- tensors

@dataclass(frozen=True)
class Vector:
    """sum_b terms[b] b over the basis; zero coefficients are never stored."""
    terms: dict = field(default_factory=dict)

    def __getitem__(self, basis):
        return self.terms.get(basis, ir.ZERO)


@dataclass(frozen=True)
class Matrix:
    """identity I + sum terms[(u, w)] u w^T."""
    identity: ir.Expr = ir.ZERO
    terms: dict = field(default_factory=dict)


def _vector(pairs) -> Vector:
    """A Vector from (basis, coefficient) pairs: like bases summed, zeros dropped, basis order."""
    terms = {}
    for b, c in pairs:
        terms[b] = _plus(terms.get(b, ir.ZERO), c)
    return Vector({b: terms[b] for b in BASIS if terms.get(b, ir.ZERO) is not ir.ZERO})


def _matrix(identity, pairs) -> Matrix:
    terms = {}
    for key, c in pairs:
        terms[key] = _plus(terms.get(key, ir.ZERO), c)
    order = sorted(terms, key=lambda uw: (BASIS.index(uw[0]), BASIS.index(uw[1])))
    return Matrix(identity, {k: terms[k] for k in order if terms[k] is not ir.ZERO})


def scale(vector: Vector, factor) -> Vector:
    return _vector((b, _times(factor, c)) for b, c in vector.terms.items())


def add(a, b):
    """a + b for two Vectors or two Matrices (like terms summed, zeros dropped)."""
    if isinstance(a, Vector):
        return _vector([*a.terms.items(), *b.terms.items()])
    return _matrix(_plus(a.identity, b.identity), [*a.terms.items(), *b.terms.items()])


# Small canonical forms, so spelled expressions read like the hand-written ones: constants
# multiply in front and fold (2 * (-2 g_ss) -> -4 g_ss), a negative term is subtracted.
# Only sign flips and constant products are rearranged: the arithmetic stays the same.

def _times(a, b) -> ir.Expr:
    a, b = ir.as_expr(a), ir.as_expr(b)
    if b.is_const and not a.is_const:
        a, b = b, a
    if not a.is_const:
        return a * b
    if a.value == 0.0 or b is ir.ZERO:
        return ir.ZERO
    if b.is_const:
        return ir.const(a.value * b.value)
    if b.op == "neg":
        return _times(-a.value, b.args[0])
    if b.op == "mul" and b.args[0].is_const:
        return _times(a.value * b.args[0].value, b.args[1])
    return a * b


def _negated(e: ir.Expr):
    """x where ``e`` is visibly -x (a negation or a negative constant factor), else None."""
    if e.op == "neg":
        return e.args[0]
    if e.is_const and e.value < 0:
        return ir.const(-e.value)
    if e.op == "mul":
        left = _negated(e.args[0])
        if left is not None:
            return left if left is ir.ONE else left * e.args[1]
    return None


def _plus(a: ir.Expr, b: ir.Expr) -> ir.Expr:
    if a is ir.ZERO or b is ir.ZERO:
        return b if a is ir.ZERO else a
    minus_b = _negated(b)
    if minus_b is not None:
        return ir.make("sub", a, minus_b)
    minus_a = _negated(a)
    if minus_a is not None:
        return ir.make("sub", b, minus_a)
    return a + b


def _sum(terms) -> ir.Expr:
    total = ir.ZERO
    for t in terms:
        total = _plus(total, t)
    return total


# --------------------------------------------------------------------------- chain rule

def _check_wrt(wrt):
    if wrt not in WRT:
        raise ValueError(f"wrt must be one of {WRT}, not {wrt!r}")


def gradient(scalar: ir.Expr, wrt: str, partial=None) -> Vector:
    """d scalar / d wrt: sum over the scalar's variables v of (d scalar / d v) grad v.

    ``partial(name)`` gives the variable of a partial of g (ir.ZERO where it is
    structurally zero); by default every partial is a variable."""
    _check_wrt(wrt)
    partial = partial or (lambda name: ir.var(name))
    names = sorted(ir.free_variables([scalar]))
    pairs = []
    for name, outer in zip(names, ad.grad(scalar, names)):
        if outer is ir.ZERO:
            continue
        for b, c in _variable_gradient(name, wrt, partial).terms.items():
            pairs.append((b, _times(outer, c)))
    return _vector(pairs)


def _variable_gradient(name, wrt, partial) -> Vector:
    """grad of one scalar variable: s, t, a contraction, or a partial g_alpha (whose gradient
    is g_{alpha s} grad s + g_{alpha t} grad t); anything else (hyperparameters) is constant."""
    index = partial_index(name)
    if index is None:
        return Vector({b: ir.const(c) for b, c in _VARIABLE_GRADIENT.get((name, wrt), {}).items()})
    pairs = []
    for v in (S, T):
        for b, c in _VARIABLE_GRADIENT[(v, wrt)].items():
            pairs.append((b, _times(c, partial(partial_name(index + (v,))))))
    return _vector(pairs)


def jacobian(vector: Vector, wrt: str, partial=None) -> Matrix:
    """d vector / d wrt: for each term c b, b (grad c)^T + c (d b / d wrt)."""
    _check_wrt(wrt)
    identity, pairs = ir.ZERO, []
    for b, c in vector.terms.items():
        for w, e in gradient(c, wrt, partial).terms.items():
            pairs.append(((b, w), e))
        identity = _plus(identity, _times(_BASIS_JACOBIAN.get((b, wrt), 0.0), c))
    return _matrix(identity, pairs)


def contract(matrix: Matrix, direction: str = "beta") -> Vector:
    """matrix . v = c v + sum c_k u_k (w_k . v) for a fixed direction v (beta or gamma), w . v as
    its contraction variable."""
    _check_direction(direction)
    pairs = [(direction, matrix.identity)]
    pairs += [(u, _times(c, _contraction(w, direction))) for (u, w), c in matrix.terms.items()]
    return _vector(pairs)


def dot(vector: Vector, direction: str = "beta") -> ir.Expr:
    """vector . v (v: beta or gamma) as a scalar expression."""
    _check_direction(direction)
    return _sum(_times(c, _contraction(b, direction)) for b, c in vector.terms.items())


def _check_direction(direction):
    if direction not in DIRECTIONS:
        raise ValueError(f"only the directions {DIRECTIONS} can be contracted, not {direction!r}")


def _contraction(basis, direction="beta") -> ir.Expr:
    if basis == "gamma" and direction == "beta":
        basis, direction = "beta", "gamma"  # beta . gamma, one variable
    if basis not in CONTRACTIONS[direction]:
        raise ValueError(f"{basis} . {direction} is not a variable of the structure "
                         "(a direction dotted with itself is never needed)")
    return ir.var(CONTRACTIONS[direction][basis])


def component(vector: Vector) -> ir.Expr:
    """sum_b c_b b as one scalar expression in the basis names (one feature of the vector), for
    a loop that spells each basis vector's entry through a names= map."""
    return _sum(_times(c, ir.var(b)) for b, c in vector.terms.items())


# --------------------------------------------------------------------------- analysis of terms

def _scalars(result):
    """(coefficient, powers of delta among its basis vectors) of every term of a result."""
    if isinstance(result, ir.Expr):
        return [(result, 0)]
    if isinstance(result, Vector):
        return [(c, int(b == "delta")) for b, c in result.terms.items()]
    return [(result.identity, 0)] + [(c, (u == "delta") + (w == "delta")) for (u, w), c in result.terms.items()]


def partials_needed(results) -> tuple:
    """The partials of g (variable names) the results use, by order, s before t."""
    names = set()
    for result in results:
        for c, _ in _scalars(result):
            names |= {v for v in ir.free_variables([c]) if partial_index(v) is not None}
    return tuple(sorted(names, key=_partial_order))


def delta_power(results, partial: str):
    """The lowest power of delta that multiplies ``partial`` in any term of the results (None if it
    appears nowhere): delta basis vectors in the term plus the lowest degree, in delta_beta (1) and
    s (2), of d coefficient / d partial.  A partial singular at s = 0 is harmless where this power
    makes the product vanish; at power 0 it must be finite."""
    powers = []
    for result in results:
        for c, vectors in _scalars(result):
            (factor,) = ad.grad(c, [partial])
            if factor is not ir.ZERO:
                powers.append(vectors + _lowest_degree(factor))
    return min(powers) if powers else None


def _lowest_degree(expr: ir.Expr) -> int:
    """The lowest total degree of a polynomial-like expression in delta_beta and s (0 where
    unsure: the safe answer, since it asks for more)."""
    degree = {}
    for node in ir.topological([expr]):
        args = [degree[id(a)] for a in node.args]
        if node.op == "var":
            degree[id(node)] = _DELTA_DEGREE.get(node.value, 0)
        elif node.op == "mul":
            degree[id(node)] = args[0] + args[1]
        elif node.op in ("add", "sub"):
            degree[id(node)] = min(args)
        elif node.op == "neg":
            degree[id(node)] = args[0]
        elif node.op == "div":
            degree[id(node)] = args[0] - args[1]
        else:
            degree[id(node)] = 0
    return degree[id(expr)]


# --------------------------------------------------------------------------- a kernel's structure

class KernelStructure:
    """The named results of the algebra for one kernel body g(s, t).

    With ``body`` (the kernel's IR), partials that are structurally zero (ad.derivative gives
    ir.ZERO) fold away, so a kernel of s alone has no g_t anywhere; without it every partial is
    a variable.  Results are derived on first use: third order costs nothing until asked for."""

    def __init__(self, body: ir.Expr | None = None):
        self.body = body
        self._partials = {}

    def partial_expr(self, name: str) -> ir.Expr:
        """The IR of a partial of the kernel body (by AD), memoised; needs ``body``."""
        if name not in self._partials:
            index = partial_index(name)
            if index is None:
                raise ValueError(f"{name!r} names no partial of g")
            self._partials[name] = ad.derivative(self.body, list(index))
        return self._partials[name]

    def partial(self, name: str) -> ir.Expr:
        """The variable of a partial in the results: ir.ZERO where it is structurally zero."""
        if self.body is not None and self.partial_expr(name) is ir.ZERO:
            return ir.ZERO
        return ir.var(name)

    @cached_property
    def grad_d(self) -> Vector:
        return gradient(self.partial("g"), "d", self.partial)

    @cached_property
    def grad_dp(self) -> Vector:
        return gradient(self.partial("g"), "dp", self.partial)

    @cached_property
    def hessian(self) -> Matrix:
        """d2k / dd ddp^T."""
        return jacobian(self.grad_d, "dp", self.partial)

    @cached_property
    def h_beta(self) -> Vector:
        return contract(self.hessian, "beta")

    @cached_property
    def energy_term(self) -> ir.Expr:
        """-grad_dp k . beta: one training point's share of a predicted energy."""
        return dot(scale(self.grad_dp, -1.0), "beta")

    @cached_property
    def d_h_beta(self) -> Matrix:
        """d (H beta) / dd (third order: what Hessian prediction needs)."""
        return jacobian(self.h_beta, "d", self.partial)

    @cached_property
    def energy_gradient(self) -> Vector:
        """d (energy_term) / dd: one training point's share of a predicted energy's gradient in
        the query's descriptor (equal to -H beta)."""
        return gradient(self.energy_term, "d", self.partial)

    @cached_property
    def prediction_gradient(self) -> Vector:
        """d E / dd of a predicted energy E = sum energy_term + w k (w: the energy coefficient of
        a joint energy+force model, 0 otherwise), per training point."""
        return add(self.energy_gradient, scale(self.grad_d, ir.var(ENERGY_WEIGHT)))

    @cached_property
    def prediction_hessian(self) -> Matrix:
        """d2 E / dd2 of the same predicted energy, per training point (third order in k)."""
        return jacobian(self.prediction_gradient, "d", self.partial)

    @cached_property
    def prediction_columns(self) -> list:
        """(name, coefficient) of each column Hessian prediction computes per training point:
        the energy gradient's coefficient of each basis vector ('gradient:delta'), then the
        Hessian's identity ('hessian:identity', unless zero) and rank-one terms u w^T
        ('hessian:delta,beta').  The runtime sums the columns against the basis vectors."""
        return _columns(self.prediction_gradient, self.prediction_hessian)

    @cached_property
    def dp_hessian(self) -> Matrix:
        """d2k / ddp2."""
        return jacobian(self.grad_dp, "dp", self.partial)

    @cached_property
    def observation_term(self) -> ir.Expr:
        """beta^T (d2k / ddp2) gamma: a Hessian observation's share of a predicted energy, for the
        observation's coefficients spread over its rank-one pieces beta gamma^T (the descriptor's
        own curvature at the observed geometry enters as an energy_term: runtime's business)."""
        return dot(contract(self.dp_hessian, "gamma"), "beta")

    @cached_property
    def observation_gradient(self) -> Vector:
        """d (observation_term) / dd (third order)."""
        return gradient(self.observation_term, "d", self.partial)

    @cached_property
    def observation_hessian(self) -> Matrix:
        """d2 (observation_term) / dd2 (fourth order)."""
        return jacobian(self.observation_gradient, "d", self.partial)

    @cached_property
    def observation_columns(self) -> list:
        """As prediction_columns, for one Hessian observation's rank-one piece: its energy share
        ('value:'), then the gradient's and the Hessian's columns."""
        return [("value:", self.observation_term),
                *_columns(self.observation_gradient, self.observation_hessian)]

    def results(self, names=EMITTED) -> list:
        return [getattr(self, n) for n in names]

    @cached_property
    def partials(self) -> tuple:
        """The partials the emitted results use, in the order the generated code returns them."""
        return partials_needed(self.results())

    @cached_property
    def hessian_partials(self) -> tuple:
        """The partials Hessian prediction uses (HESSIAN_EMITTED), in its generated code's order."""
        return partials_needed(self.results(HESSIAN_EMITTED))

    @cached_property
    def observation_partials(self) -> tuple:
        """The partials Hessian observations use (OBSERVATION_EMITTED), in their code's order."""
        return partials_needed(self.results(OBSERVATION_EMITTED))

    def delta_power(self, partial: str, names=EMITTED):
        return delta_power(self.results(names), partial)

    # ----------------------------------------------------------------- numpy evaluation
    def evaluate(self, result, scalars: dict, vectors: dict | None = None):
        """A result with numpy: ``scalars`` gives s, t, the contractions, the partials and
        hyperparameters (arrays of shape (...)); ``vectors`` the basis vectors (..., F).  A scalar
        gives an array (...), a Vector an array (..., F), a Matrix an array (..., F, F)."""
        result = getattr(self, result) if isinstance(result, str) else result
        if isinstance(result, ir.Expr):
            return np.asarray(ir.evaluate([result], scalars)[0], dtype=float)
        coefficient = lambda e: np.asarray(ir.evaluate([e], scalars)[0], dtype=float)[..., None]
        if isinstance(result, Vector):
            return sum((coefficient(c) * vectors[b] for b, c in result.terms.items()),
                       np.zeros(np.broadcast(*vectors.values()).shape))
        eye = np.eye(np.shape(next(iter(vectors.values())))[-1])
        total = coefficient(result.identity)[..., None] * eye
        for (u, w), c in result.terms.items():
            total = total + coefficient(c)[..., None] * vectors[u][..., :, None] * vectors[w][..., None, :]
        return total


def _columns(gradient_: Vector, hessian_: Matrix) -> list:
    """(name, coefficient) of a gradient's basis coefficients ('gradient:delta'), then a Hessian's
    identity ('hessian:identity', unless zero) and rank-one terms u w^T ('hessian:delta,beta')."""
    columns = [(f"gradient:{b}", c) for b, c in gradient_.terms.items()]
    if hessian_.identity is not ir.ZERO:
        columns.append(("hessian:identity", hessian_.identity))
    return columns + [(f"hessian:{u},{w}", c) for (u, w), c in hessian_.terms.items()]


def contractions(vectors: dict) -> dict:
    """The contraction variables w . beta (and w . gamma) from basis vectors (numpy, last axis
    features)."""
    return {name: np.sum(vectors[w] * vectors[direction], axis=-1)
            for direction, names in CONTRACTIONS.items() for w, name in names.items()
            if w in vectors and direction in vectors}
