"""Nash-MTL (Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik, Fetaya, "Multi-Task Learning as
a Bargaining Game", ICML 2022, arXiv:2202.01017).

The Nash bargaining solution over update directions in a ball, `argmax_{d in B_eps} sum_i log(d . g_i)`,
is `d = sum_i alpha_i g_i` with `alpha > 0` solving

    G alpha = 1 / alpha        (elementwise: alpha_i (G alpha)_i = 1 for every task i),

with `G = J J^T` the Gramian of the task gradients (the paper writes G^T G with gradients as
columns). Consequences: `d . g_i = 1/alpha_i > 0` (every task descends), `||d||^2 = K`, and
rescaling `g_i -> c_i g_i` (c_i > 0) maps `alpha_i -> alpha_i / c_i` with `d` unchanged.

The equation is the optimality condition of the strictly convex problem

    min_{a > 0}  f(a) = 1/2 a^T G a - sum_i log a_i,

which this module solves with a damped Newton method (instead of the reference code's
concave-convex procedure with cvxpy/ECOS); see `NashMTL` for the details.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from core.errors import InvalidHyperparameterError, NonFiniteGradientError
from core.methods.base import GradientWeighting, HeadGradient

_QUADRATIC_FLOOR = 1e-16
_FULL_STEP_DECREMENT = 0.25
"""Below this Newton decrement the full Newton step is taken (the quadratic-convergence region of
a self-concordant function is decrement < (3 - sqrt 5)/2 ~ 0.38); above it the damped step
1/(1 + decrement) of Nesterov & Nemirovskii."""

_STALL_LIMIT = 2
"""Consecutive full-step iterations without halving the residual after which an element stops
(it has reached the rounding floor of float64, e.g. on ridge-dominated, Pareto-stationary input)."""


class NashMTL(GradientWeighting):
    """Nash-MTL weights: the `alpha > 0` with `G alpha = 1/alpha` (Navon et al. 2022, arXiv:2202.01017).

    The shared update is `d = sum_i alpha_i g_i`; heads receive `alpha_i grad l_i` (the reference
    backpropagates the weighted loss `sum_i alpha_i l_i` through the whole network). The losses are
    not used.

    **Solver.** With `n_i = ||g_i|| = sqrt(G_ii)` and the unit-diagonal (cosine) Gramian
    `U = N^-1 G N^-1`, `N = diag(n)`, substitute `alpha = N^-1 b`: `G alpha = 1/alpha` becomes
    `U b = 1/b`, the optimality condition of `min_{b>0} 1/2 b^T U_r b - sum_i log b_i` with
    `U_r = U + ridge I` (see below). This function is self-concordant, so damped Newton
    (Nesterov & Nemirovskii) converges globally, quadratically near the solution, and never leaves
    `b > 0`: in relative coordinates `b_new = b * (1 + s t)`, where `t` solves
    `(B U_r B + I) t = -r`, `B = diag(b)`, `r = b * (U_r b) - 1` is the relative residual, and
    `s = 1/(1 + lambda)` with the Newton decrement `lambda^2 = -r.t` (full step `s = 1` once
    `lambda < 1/4`). As `B U_r B + I >= I`, `|t_i| <= lambda`, so `s |t_i| < 1`: positivity
    needs no line search. After each step `b` is moved to the exact minimiser of `f` on its ray,
    `b^T U_r b = K` (one shared product with U). A full step leaves `r_new_i = -t_i^2` exactly, so
    convergence is quadratic. It stops when `max_i |r_i| <= tolerance` (relative, dimensionless) for
    every batch element, when the residual stalls at the float64 rounding floor (two full steps
    that do not halve it), or after `max_iterations` (termination is guaranteed). To first order
    the relative error of each `alpha_i` is at most `||r||_2 <= sqrt(K) tolerance`, because the
    scaled Jacobian `B U_r B + I` has all eigenvalues >= 1. K <= 2 has a closed form: by symmetry
    `b_1 = b_2 = (1 + ridge + U_12)^-1/2`. Batches run the same iteration vectorised, finished
    elements frozen, so batched and one-by-one results agree to rounding. Computation runs in
    float64 on the Gramian's device (the system is K x K; G is assumed symmetric); weights are
    returned in the Gramian's dtype. Typical cost on one CPU thread: 3-6 iterations from a cold
    start, 1-2 warm, about 0.1 ms + 0.05 ms per iteration for K <= 40
    (`benchmarks/perf/nash_solver.py` compares it with the reference-style solver).

    `last_diagnostics` after each call: `"residual"` (batch shape) the relative residual of the
    un-regularised system, `max_i |alpha_i (G alpha)_i - 1| = max_i |(G alpha)_i - 1/alpha_i| / (1/alpha_i)`
    over tasks with nonzero gradient (0 when there are none), obtained from the solver's residual
    as `r_i - ridge b_i^2` (recomputed from G for reused weights); `"iterations"` the Newton iterations
    of this call (0 when the previous weights were reused); `"reused"` whether they were.

    **Scale and transform invariance.** `U`, the cold start, the ridge `ridge * G_ii`, the Newton
    iteration (affine invariant) and the stopping test are all unchanged by `g_i -> c_i g_i`, so
    the solver maps `alpha_i -> alpha_i / c_i` and leaves the update unchanged, exactly in exact
    arithmetic and in floating point up to the rounding of `G` (tested for c in [1e-3, 1e3] on
    drawn Jacobians with row scales 1e-12..1e12: measured relative error <= 3e-13 on well-posed
    draws; near Pareto-stationary input, where `b` grows to `ridge^-1/2 = 1e5`, the rounding of
    `G` is amplified to at most about `4e-16 * max_i b_i^2`, i.e. up to ~5e-6). Strictly increasing loss
    transforms act per step as such rescalings, so the per-step update is invariant to them, up to
    the solver tolerance and warm start (the warm start is the previous step's weights, which map
    the same way if every step is transformed alike).

    **Deviations from the reference code** (AvivNavon/nash-mtl, `methods/weight_methods.py`):
    (1) damped Newton in torch instead of up to `optim_niter = 20` concave-convex steps with
    cvxpy/ECOS; it solves the same system to a far tighter residual (reference: stop at
    `||G alpha - 1/alpha|| < 1e-3` or a change in alpha below 1e-6). (2) The reference divides `G` by
    its Frobenius norm `Z` and writes the constraint so that alpha solves the *un-normalised*
    system; this solver uses the unit-diagonal scaling instead (`alpha_i = b_i / ||g_i||`), which
    also returns the solution of the un-normalised `G alpha = 1/alpha`. Newton's method is affine
    invariant, so any diagonal rescaling of `G` (Frobenius: a scalar one) changes only rounding;
    the unit-diagonal one is the best conditioned and makes the per-task invariance exact, hence no
    option for it. (3) A tiny ridge `ridge * G_ii` on the diagonal (equivalently `U + ridge I`):
    where 0 lies in the convex hull of the gradients (Pareto stationarity: opposite or collinear
    conflicting gradients, `K > rank` with a non-negative null vector) `G alpha = 1/alpha` has no
    solution and `f` is unbounded below; the ridge makes the problem strictly convex and coercive,
    so weights stay finite (of order `ridge^-1/2 / ||g_i||`) and the update `d` tends to 0, with a
    large `"residual"` reporting it. Where a solution exists the ridge changes each
    `alpha_i (G alpha)_i` by `ridge * b_i^2` (1e-10 for `b ~ 1`). The reference instead keeps the
    previous alpha when its solver raises. (4) A task with an exactly zero gradient (`G_ii = 0`)
    has no finite Nash weight (its utility `log(d . g_i)` is `-inf`); it gets weight 0 and the
    system is solved on the other tasks (the reference would fail in cvxpy and keep the previous
    alpha). (5) Gradient-norm clipping of the shared update (`max_norm = 1.0` in the reference,
    always active since `||d|| = sqrt(K)`) is not a weighting: scaling the weights would also scale
    the heads, which the reference does not clip. Call
    `torch.nn.utils.clip_grad_norm_(shared_params, 1.0)` in the training loop to match it.
    (6) Cold start: `b` proportional to 1 (`alpha_i` proportional to `1/||g_i||`) scaled along the ray
    to `b^T U_r b = K` (the reference starts from alpha = 1); warm starts are rescaled the same way.

    Args:
        update_weights_every: solve on every `update_weights_every`-th call (the first call
            included) and reuse the last weights, applied to the new gradients, in between
            (reference `update_weights_every`, default 1). A call whose shape differs from the
            stored weights solves afresh.
        warm_start: start Newton from the previous solution (the reference warm-starts its CCP
            from the previous alpha). `reset()` forgets it and the update counter.
        tolerance: stop when `max_i |b_i (U_r b)_i - 1| <= tolerance` for every batch element.
        max_iterations: hard cap on Newton iterations per call (>= 1).
        ridge: relative diagonal regularisation `ridge * G_ii` (> 0); see deviation (3).
    """

    head_gradient = HeadGradient.WEIGHTED

    def __init__(
        self,
        *,
        update_weights_every: int = 1,
        warm_start: bool = True,
        tolerance: float = 1e-10,
        max_iterations: int = 100,
        ridge: float = 1e-10,
    ) -> None:
        if not isinstance(update_weights_every, int) or update_weights_every < 1:
            raise InvalidHyperparameterError(f"update_weights_every must be a positive integer, got {update_weights_every!r}")
        if not tolerance > 0:
            raise InvalidHyperparameterError(f"tolerance must be positive, got {tolerance!r}")
        if not isinstance(max_iterations, int) or max_iterations < 1:
            raise InvalidHyperparameterError(f"max_iterations must be a positive integer, got {max_iterations!r}")
        if not (ridge > 0 and ridge < 1):
            raise InvalidHyperparameterError(f"ridge must be in (0, 1), got {ridge!r}")
        self.update_weights_every = update_weights_every
        self.warm_start = warm_start
        self.tolerance = float(tolerance)
        self.max_iterations = max_iterations
        self.ridge = float(ridge)
        self.last_diagnostics: dict[str, Tensor] = {}
        self._previous: Tensor | None = None  # float64 alpha of the last solve, shape [..., K]
        self._calls = 0

    def reset(self) -> None:
        """Forget the warm start and restart the `update_weights_every` counter."""
        self._previous = None
        self._calls = 0

    def weights(self, gramian: Tensor, losses: Tensor, /) -> Tensor:
        gram = gramian.detach().to(torch.float64)
        if not bool(torch.isfinite(gram).all()):
            raise NonFiniteGradientError("Nash-MTL: the Gramian contains NaN or infinite entries")
        previous = self._previous
        if previous is not None and (previous.shape != gram.shape[:-1] or previous.device != gram.device):
            previous = None
        reuse = previous is not None and self._calls % self.update_weights_every != 0
        self._calls += 1
        if reuse:
            alpha, iterations, residual = previous, 0, nash_residual(gram, previous)
        else:
            alpha, iterations, residual = self._solve(gram, previous if self.warm_start else None)
            self._previous = alpha
        self.last_diagnostics = {"residual": residual, "iterations": torch.tensor(iterations), "reused": torch.tensor(reuse)}
        return alpha.to(gramian.dtype)

    def solve(self, gramian: Tensor, /, *, initial: Tensor | None = None) -> tuple[Tensor, int]:
        """Solve `(G + ridge diag(G)) alpha = 1/alpha` for a symmetric Gramian `[..., K, K]`.

        Returns alpha `[..., K]` in float64 (0 for tasks with `G_ii = 0`) and the iterations
        used; keeps no state. `initial` (a previous alpha, same shape) is used where positive.
        """
        alpha, iterations, _ = self._solve(gramian.detach().to(torch.float64), initial)
        return alpha, iterations

    def _solve(self, gramian: Tensor, initial: Tensor | None) -> tuple[Tensor, int, Tensor]:
        """`solve` on a float64 Gramian, also returning the un-regularised relative residual."""
        num_tasks = gramian.shape[-1]
        norms_sq = torch.diagonal(gramian, dim1=-2, dim2=-1)
        valid = norms_sq > 0
        all_valid = bool(valid.all())
        norms = norms_sq.sqrt() if all_valid else torch.where(valid, norms_sq, torch.ones_like(norms_sq)).sqrt()
        # U_ij = G_ij / (n_i n_j), divided one factor at a time so that n_i n_j cannot underflow
        unit = ((gramian / norms[..., :, None]) / norms[..., None, :]).clamp_(-1.0, 1.0)
        if not all_valid:  # zero-gradient tasks are decoupled: identity row and column
            unit = unit.masked_fill_(~(valid[..., :, None] & valid[..., None, :]), 0.0)
        torch.diagonal(unit, dim1=-2, dim2=-1).fill_(1.0 + self.ridge)  # U + ridge I
        if num_tasks <= 2:
            # K = 1: b^2 (1 + ridge) = 1. K = 2: the solution is unique and the problem symmetric
            # under swapping the tasks, so b_1 = b_2 = b with b^2 (1 + ridge + U_12) = 1
            coupling = unit[..., 0, -1] if num_tasks == 2 else torch.zeros_like(norms[..., 0])
            scaled = (1.0 + self.ridge + coupling).rsqrt()[..., None].expand_as(norms)
            residual, iterations = torch.zeros_like(norms), 0
        else:
            unit = _make_positive_definite(unit, self.ridge)
            start = torch.ones_like(norms) if initial is None else (initial * norms).masked_fill_(~(initial > 0), 1.0)
            scaled, residual, iterations = _damped_newton(unit, start, self.tolerance, self.max_iterations)
        # r_i = b_i ((U + ridge I) b)_i - 1, so alpha_i (G alpha)_i - 1 = r_i - ridge b_i^2
        errors = (residual - self.ridge * scaled * scaled).abs_()
        if all_valid:
            return scaled / norms, iterations, errors.amax(dim=-1)
        alpha = torch.where(valid, scaled / norms, torch.zeros_like(scaled))
        return alpha, iterations, errors.masked_fill_(~valid, 0.0).amax(dim=-1)


def nash_residual(gramian: Tensor, alpha: Tensor, /) -> Tensor:
    """Relative residual `max_i |alpha_i (G alpha)_i - 1|` of `G alpha = 1/alpha`, batch-shaped.

    Taken over tasks with positive weight (tasks given weight 0, i.e. zero gradients, are left
    out); 0 if there are none. Invariant to `g_i -> c_i g_i, alpha_i -> alpha_i / c_i`.
    """
    gram = gramian.to(torch.float64)
    alpha = alpha.to(torch.float64)
    errors = (alpha * (gram @ alpha[..., None])[..., 0]).sub_(1).abs_().masked_fill_(alpha <= 0, 0.0)
    return errors.amax(dim=-1)


def _make_positive_definite(matrix: Tensor, ridge: float) -> Tensor:
    """`matrix` where its Cholesky factorisation succeeds; else shifted by `ridge - lambda_min`.

    A Gramian computed in floating point can be slightly indefinite (or given so by a caller); the
    shift makes the Newton objective convex again. Only failing batch elements are shifted.
    """
    _, info = torch.linalg.cholesky_ex(matrix)
    failed = info != 0
    if not bool(failed.any()):
        return matrix
    smallest = torch.linalg.eigvalsh(matrix)[..., 0]
    shift = torch.where(failed, (ridge - smallest).clamp_min(0) + ridge, torch.zeros_like(smallest))
    eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
    return matrix + shift[..., None, None] * eye


def _best_on_ray(unit: Tensor, point: Tensor) -> tuple[Tensor, Tensor]:
    """The minimiser `t point` of `f` on the ray (`t^2 = K / point^T U point`, U positive definite)
    and its relative residual `t^2 point * (U point) - 1`, sharing one product with U."""
    products = point * (unit @ point[..., None])[..., 0]
    floor = _QUADRATIC_FLOOR * (point * point).sum(dim=-1, keepdim=True)  # see _damped_newton_single
    squared_scale = unit.shape[-1] / torch.maximum(products.sum(dim=-1, keepdim=True), floor)
    return point * squared_scale.sqrt(), products * squared_scale - 1


def _damped_newton(unit: Tensor, start: Tensor, tolerance: float, max_iterations: int) -> tuple[Tensor, Tensor, int]:
    """Minimise `1/2 b^T U b - sum log b` from `start > 0` (see `NashMTL`); returns `(b, iterations)`.

    Each iteration: the Newton step `t` in relative coordinates, `(B U B + I) t = -r`; the step
    size 1 if the decrement `lambda = sqrt(-r.t) < 1/4`, else `1/(1 + lambda)`; then the exact
    minimiser of `f` on the ray through the new point (free: it shares the product with U). A full
    Newton step leaves the residual `r_new_i = -t_i^2` exactly, so `max |r_new| <= lambda^2`
    (quadratic convergence). An element stops at `max |r| <= tolerance`, after `_STALL_LIMIT`
    consecutive full steps that fail to halve `max |r|` (float64 rounding floor), or at
    `max_iterations`. Returns `(b, r, iterations)`. One problem (`unit` of shape [K, K]) runs a scalar-control loop with fewer
    tensor operations; a batch runs the same iteration vectorised, freezing finished elements, so
    both give the same numbers.
    """
    if unit.ndim == 2:
        return _damped_newton_single(unit, start, tolerance, max_iterations)
    eye = torch.eye(unit.shape[-1], dtype=unit.dtype, device=unit.device)
    b, residual = _best_on_ray(unit, start)
    error = residual.abs().amax(dim=-1)
    active = error > tolerance
    stalls = torch.zeros_like(error)
    iterations = 0
    while iterations < max_iterations and bool(active.any()):
        iterations += 1
        hessian = b[..., :, None] * unit * b[..., None, :] + eye  # B U B + I >= I
        factor, info = torch.linalg.cholesky_ex(hessian)
        if bool(info.any()):  # only when B U B overwhelms float64: fall back to the diagonal
            diagonal = torch.diag_embed(torch.diagonal(hessian, dim1=-2, dim2=-1).sqrt())
            factor = torch.where((info != 0)[..., None, None], diagonal, factor)
        step = torch.cholesky_solve(-residual[..., None], factor)[..., 0]
        # decrement^2 = -r.t = t^T H t; with the diagonal fallback it bounds t^T t from above, so
        # |t_i| <= decrement holds in both cases and the step keeps b > 0
        decrement = (residual * step).sum(dim=-1).neg_().clamp_min_(0).sqrt_()
        full = decrement < _FULL_STEP_DECREMENT
        size = torch.where(full, torch.zeros_like(decrement), decrement).add_(1).reciprocal_()
        candidate, candidate_residual = _best_on_ray(unit, torch.addcmul(b, b, step * size[..., None]))
        b = torch.where(active[..., None], candidate, b)
        residual = torch.where(active[..., None], candidate_residual, residual)
        new_error = residual.abs().amax(dim=-1)
        stalls = torch.where(full & (new_error > 0.5 * error), stalls + 1, torch.zeros_like(stalls))
        error = torch.where(active, new_error, error)
        active = active & (error > tolerance) & (stalls < _STALL_LIMIT)
    return b, residual, iterations


def _damped_newton_single(unit: Tensor, start: Tensor, tolerance: float, max_iterations: int) -> tuple[Tensor, Tensor, int]:
    """`_damped_newton` for one problem, with the step control on Python floats."""
    num_tasks = unit.shape[-1]
    eye = torch.eye(num_tasks, dtype=unit.dtype, device=unit.device)

    def on_ray(point: Tensor) -> tuple[Tensor, Tensor, float]:
        products = point * (unit @ point)
        # U is positive definite, so the sum is positive in exact arithmetic; rounding can make it
        # tiny or negative for a point nearly in U's null space (no Nash solution): bound it below
        # relative to |point|^2 (U has a unit diagonal), which keeps |b| below about 1e8 sqrt(K)
        squared_scale = num_tasks / max(float(products.sum()), _QUADRATIC_FLOOR * float(point @ point))
        low, high = torch.aminmax(products)
        error = max(squared_scale * float(high) - 1, 1 - squared_scale * float(low))
        return point.mul_(math.sqrt(squared_scale)), products.mul_(squared_scale).sub_(1), error

    b, residual, error = on_ray(start.clone())
    stalls, iterations = 0, 0
    while error > tolerance and stalls < _STALL_LIMIT and iterations < max_iterations:
        iterations += 1
        hessian = torch.addcmul(eye, unit, torch.outer(b, b))
        factor, info = torch.linalg.cholesky_ex(hessian)
        if int(info):
            factor = torch.diag(hessian.diagonal().sqrt())
        negative_step = torch.cholesky_solve(residual.unsqueeze(-1), factor).squeeze(-1)  # -t
        decrement = math.sqrt(max(float(torch.dot(residual, negative_step)), 0.0))
        full = decrement < _FULL_STEP_DECREMENT
        b, residual, new_error = on_ray(torch.addcmul(b, b, negative_step, value=-1.0 if full else -1.0 / (1.0 + decrement)))
        stalls = stalls + 1 if full and new_error > 0.5 * error else 0
        error = new_error
    return b, residual, iterations
