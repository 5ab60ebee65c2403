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
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from core.errors import InvalidHyperparameterError, MTLInputError, NonFiniteGradientError
from core.methods.base import (
    GradientWeighting,
    HeadGradient,
    WeightsResult,
    check_integer,
    check_number,
)

_QUADRATIC_FLOOR = 1e-16
_FULL_STEP_DECREMENT = 0.25
"""Below this Newton decrement the full Newton step is taken (the quadratic-convergence region of
a self-concordant function is decrement < (3 - sqrt 5)/2 ~ 0.38); above it the damped step
1/(1 + decrement) of Nesterov & Nemirovskii."""

_BALANCING_STEPS = 3
"""Matrix-balancing steps of the cold start (`_balanced_start`)."""

_STALL_LIMIT = 2
"""Consecutive full-step iterations without halving the residual after which an element stops
(it has reached the rounding floor of float64, e.g. on ridge-dominated, Pareto-stationary input)."""


class NashMTL(GradientWeighting):
    """Nash-MTL, the weights `alpha > 0` with `G alpha = 1/alpha` (Navon et al. 2022, arXiv:2202.01017).

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
    `b_1 = b_2 = (1 + ridge + U_12)^-1/2`. Newton starts from `b = 1` (cold) or the previous
    solution (warm) after three steps of symmetric matrix balancing `b <- sqrt(b / (U b))`, which
    save about one iteration. Batches run the same iteration vectorised, finished elements
    frozen, so batched and one-by-one results agree to rounding. The K x K system is solved on
    the host in float64 numpy (G is assumed symmetric; a CUDA Gramian costs one copy each way):
    at this size the per-operation overhead, not arithmetic, is the cost. Weights are returned in
    the Gramian's dtype and device. Typical cost on one CPU core: 2-4 iterations cold, 2 warm,
    about 0.05 ms + 0.018 ms per iteration for K <= 40, 11-26x faster than the reference-style
    CCP at equal residual from a cold start (`python -m benchmarks perf --sections nash`,
    benchmarks/PERFORMANCE.md, section 3).

    Diagnostics of each call (CPU tensors): `"residual"` (batch shape) the relative residual of the
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
    (1) damped Newton (numpy, float64) instead of up to `optim_niter = 20` concave-convex steps with
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
    (6) Cold start: `b = 1` (`alpha_i = 1/||g_i||`, the reference starts from alpha = 1), balanced
    and then scaled along the ray to `b^T U_r b = K`; warm starts are balanced and rescaled the
    same way.

    Args:
        update_weights_every: solve on every `update_weights_every`-th call (the first call
            included) and reuse the last weights, applied to the new gradients, in between
            (reference `update_weights_every`, default 1). Above 1 the instance drops the claims
            `monotone_invariant` and `non_conflicting` (reused weights are not solved for the
            new gradients).
        warm_start: start Newton from the previous solution (the reference warm-starts its CCP
            from the previous alpha). `reset(batch_shape)` forgets it and the update counter.
        tolerance: stop when `max_i |b_i (U_r b)_i - 1| <= tolerance` for every batch element.
        max_iterations: hard cap on Newton iterations per call (>= 1).
        ridge: relative diagonal regularisation `ridge * G_ii` (> 0); see deviation (3).

    State (with a warm start or `update_weights_every > 1`): the last solution `[*batch_shape, K]`
    and the call counter; a batch of B Gramians solves B independent problems, each warm-started
    from its own previous solution, as B instances would (to rounding: the batched Newton freezes
    finished elements). The reference Nash-MTL (cvxpy/ECOS) can report "optimal" at a point whose
    Nash residual `max_i |alpha_i (G alpha)_i - 1|` is 118-275 (seen on a K = 5 training run of its
    CCP); this solver's residual is in the diagnostics (docs/DECISIONS.md).
    """

    name = "nashmtl"
    paper = "Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik, Fetaya, Multi-Task Learning as a Bargaining Game (ICML 2022)"
    claims = frozenset(
        {"monotone_invariant", "rescaling_invariant", "permutation_equivariant", "non_conflicting"}
    )
    stateful = True
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
        self.update_weights_every = check_integer("update_weights_every", update_weights_every)
        if not isinstance(warm_start, bool):
            raise InvalidHyperparameterError(
                f"warm_start must be True or False, got {warm_start!r}"
            )
        self.warm_start = warm_start
        self.tolerance = check_number("tolerance", tolerance, minimum=0.0, strict=True)
        self.max_iterations = check_integer("max_iterations", max_iterations)
        self.ridge = check_number("ridge", ridge, minimum=0.0, strict=True)
        if self.ridge >= 1:
            raise InvalidHyperparameterError(f"ridge must be in (0, 1), got {ridge!r}")
        self.stateful = warm_start or update_weights_every > 1
        if update_weights_every > 1:
            # reused weights meet new gradients: their update can conflict with a task, and a
            # nonaffine transform changes h'(l) between solves (a fixed rescaling does not)
            self.claims = type(self).claims - {"monotone_invariant", "non_conflicting"}
        self.reset()

    def reset(self, batch_shape: tuple[int, ...] = ()) -> None:
        """Forget the warm start and restart the `update_weights_every` counter."""
        super().reset(batch_shape)
        self._previous: np.ndarray | None = (
            None  # float64 host alpha of the last solve, [*batch_shape, K]
        )
        self._calls = 0

    def state_dict(self) -> dict[str, Any]:
        previous = None if self._previous is None else torch.from_numpy(self._previous.copy())
        return {"batch_shape": list(self.batch_shape), "calls": self._calls, "previous": previous}

    def load_state_dict(self, state: Mapping[str, Any], /) -> None:
        self.reset(tuple(state["batch_shape"]))
        previous = state["previous"]
        self._previous = (
            None
            if previous is None
            else torch.as_tensor(previous, dtype=torch.float64).numpy().copy()
        )
        self._calls = int(state["calls"])
        self._pristine = self._calls == 0

    def _weights(self, gramian: Tensor, losses: Tensor, /) -> WeightsResult:
        # the K x K system is solved on the host in float64 numpy: per-operation overhead, not
        # arithmetic, is the cost at this size (on a GPU: one copy instead of a sync per iteration)
        gram = gramian.detach().to(device="cpu", dtype=torch.float64).numpy()
        if not np.isfinite(gram).all():
            raise NonFiniteGradientError("Nash-MTL: the Gramian contains NaN or infinite entries")
        if self.stateful:
            self._match_batch_shape(tuple(gram.shape[:-2]))
            self._used()
        previous = self._previous
        if previous is not None and previous.shape != gram.shape[:-1]:
            raise MTLInputError(
                f"NashMTL holds weights of {previous.shape[-1]} tasks, got a Gramian of {gram.shape[-1]}; call reset()"
            )
        reuse = previous is not None and self._calls % self.update_weights_every != 0
        self._calls += 1
        if reuse and previous is not None:  # reuse implies a previous alpha
            alpha, iterations, residual = previous, 0, _relative_residual(gram, previous)
        else:
            alpha, iterations, residual = self._solve(gram, previous if self.warm_start else None)
            if self.stateful:
                self._previous = alpha
        diagnostics = {
            "residual": torch.as_tensor(residual, dtype=torch.float64),
            "iterations": torch.tensor(iterations),
            "reused": torch.tensor(reuse),
        }
        return WeightsResult(
            torch.from_numpy(alpha).to(device=gramian.device, dtype=gramian.dtype), diagnostics
        )

    def solve(self, gramian: Tensor, /, *, initial: Tensor | None = None) -> tuple[Tensor, int]:
        """Solve `(G + ridge diag(G)) alpha = 1/alpha` for a symmetric Gramian `[..., K, K]`.

        Returns alpha `[..., K]` in float64 on the Gramian's device (0 for tasks with `G_ii = 0`)
        and the iterations used; keeps no state. `initial` (a previous alpha, same shape) is used
        where positive.
        """
        start = (
            None
            if initial is None
            else initial.detach().to(device="cpu", dtype=torch.float64).numpy()
        )
        alpha, iterations, _ = self._solve(
            gramian.detach().to(device="cpu", dtype=torch.float64).numpy(), start
        )
        return torch.from_numpy(alpha).to(gramian.device), iterations

    def _solve(
        self, gram: np.ndarray, initial: np.ndarray | None
    ) -> tuple[np.ndarray, int, np.ndarray | float]:
        """`solve` on a float64 host Gramian, also returning the un-regularised relative residual."""
        num_tasks = gram.shape[-1]
        norms_sq = np.diagonal(gram, axis1=-2, axis2=-1)
        all_valid = bool(norms_sq.min() > 0)
        valid = norms_sq > 0
        norms = np.sqrt(norms_sq if all_valid else np.where(valid, norms_sq, 1.0))
        # U_ij = G_ij / (n_i n_j), divided one factor at a time so that n_i n_j cannot underflow
        unit = gram / norms[..., :, None] / norms[..., None, :]
        unit = np.minimum(np.maximum(unit, -1.0, out=unit), 1.0, out=unit)
        if not all_valid:  # zero-gradient tasks are decoupled: identity row and column
            unit[~(valid[..., :, None] & valid[..., None, :])] = 0.0
        diagonal = np.arange(num_tasks)
        unit[..., diagonal, diagonal] = 1.0 + self.ridge  # U + ridge I
        if num_tasks <= 2:
            # K = 1: b^2 (1 + ridge) = 1. K = 2: the solution is unique and the problem symmetric
            # under swapping the tasks, so b_1 = b_2 = b with b^2 (1 + ridge + U_12) = 1
            coupling = unit[..., 0, -1] if num_tasks == 2 else 0.0
            scaled = np.broadcast_to(
                np.asarray(1.0 + self.ridge + coupling)[..., None] ** -0.5, norms.shape
            )
            residual, iterations = np.zeros_like(norms), 0
        else:
            unit = _make_positive_definite(unit, self.ridge)
            start = _balanced_start(
                unit,
                np.ones_like(norms)
                if initial is None
                else np.where(initial > 0, initial * norms, 1.0),
            )
            newton = _damped_newton_single if unit.ndim == 2 else _damped_newton
            scaled, residual, iterations = newton(unit, start, self.tolerance, self.max_iterations)
        # r_i = b_i ((U + ridge I) b)_i - 1, so alpha_i (G alpha)_i - 1 = r_i - ridge b_i^2
        errors = np.abs(residual - self.ridge * scaled * scaled)
        if all_valid:
            return scaled / norms, iterations, errors.max(axis=-1)
        alpha = np.where(valid, scaled / norms, 0.0)
        return alpha, iterations, np.where(valid, errors, 0.0).max(axis=-1)


def nash_residual(gramian: Tensor, alpha: Tensor, /) -> Tensor:
    """Relative residual `max_i |alpha_i (G alpha)_i - 1|` of `G alpha = 1/alpha`, batch-shaped.

    Taken over tasks with positive weight (tasks given weight 0, i.e. zero gradients, are left
    out); 0 if there are none. Invariant to `g_i -> c_i g_i, alpha_i -> alpha_i / c_i`.
    """
    host_gram = gramian.detach().to(device="cpu", dtype=torch.float64).numpy()
    residual = _relative_residual(
        host_gram, alpha.detach().to(device="cpu", dtype=torch.float64).numpy()
    )
    return torch.as_tensor(residual, dtype=torch.float64).to(gramian.device)


def _relative_residual(gram: np.ndarray, alpha: np.ndarray) -> np.ndarray | float:
    errors = np.abs(alpha * np.einsum("...ij,...j->...i", gram, alpha) - 1.0)
    return np.where(alpha > 0, errors, 0.0).max(axis=-1)


def _make_positive_definite(matrix: np.ndarray, ridge: float) -> np.ndarray:
    """`matrix` where its Cholesky factorisation succeeds; else shifted by `ridge - lambda_min`.

    A Gramian computed in floating point can be slightly indefinite (or given so by a caller); the
    shift makes the Newton objective convex again. Only failing batch elements are shifted.
    """
    try:
        np.linalg.cholesky(matrix)
        return matrix
    except np.linalg.LinAlgError:
        pass
    flat = matrix.reshape(-1, *matrix.shape[-2:])
    failed = np.array([not _is_positive_definite(element) for element in flat]).reshape(
        matrix.shape[:-2]
    )
    smallest = np.linalg.eigvalsh(matrix)[..., 0]
    shift = np.where(failed, np.maximum(ridge - smallest, 0.0) + ridge, 0.0)
    return matrix + shift[..., None, None] * np.eye(matrix.shape[-1])


def _is_positive_definite(matrix: np.ndarray) -> bool:
    try:
        np.linalg.cholesky(matrix)
    except np.linalg.LinAlgError:
        return False
    return True


def _balanced_start(unit: np.ndarray, start: np.ndarray) -> np.ndarray:
    """`start` after `_BALANCING_STEPS` steps of symmetric matrix balancing, `b <- sqrt(b / (U b))`
    where `U b > 0` (its fixed point is `b * (U b) = 1`: Sinkhorn-Knopp for a symmetric matrix).
    Not convergent in general for U with negative entries, but each step costs one matrix-vector
    product and moves the start towards the solution: on random Gramians the cold start (b = 1)
    needs 3.1 instead of 4.3 Newton iterations (K = 5) and the warm start in a drifting sequence
    2 instead of 2.3-3 (K = 3..40; `benchmarks/perf/nash_solver.py`). It depends on U only, so the
    scale invariance is kept; Newton's global convergence does not depend on the start."""
    b = start
    for _ in range(_BALANCING_STEPS):
        products = unit @ b if b.ndim == 1 else (unit @ b[..., None])[..., 0]
        if products.min() > 0:  # the usual case, with a third of the operations
            b = np.sqrt(b / products)
        else:
            positive = products > 0
            b = np.where(positive, np.sqrt(b / np.where(positive, products, 1.0)), b)
    return b


def _best_on_ray(unit: np.ndarray, point: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The minimiser `t point` of `f` on the ray (`t^2 = K / point^T U point`, U positive definite)
    and its relative residual `t^2 point * (U point) - 1`, sharing one product with U."""
    products = point * np.einsum("...ij,...j->...i", unit, point)
    floor = (
        _QUADRATIC_FLOOR * np.einsum("...i,...i->...", point, point)[..., None]
    )  # see _damped_newton_single
    squared_scale = unit.shape[-1] / np.maximum(products.sum(axis=-1, keepdims=True), floor)
    return point * np.sqrt(squared_scale), products * squared_scale - 1.0


def _newton_step(hessian: np.ndarray, residual: np.ndarray) -> np.ndarray:
    """`-t = H^-1 r` for `H = B U B + I`; the diagonal `r / diag(H)` if H is numerically singular.
    Both keep `|t_i| <= decrement` (H >= I; for the diagonal, `t^T diag(H) t >= t^T t`)."""
    try:
        if residual.ndim == 1:
            return np.linalg.solve(hessian, residual)
        return np.linalg.solve(hessian, residual[..., None])[..., 0]
    except np.linalg.LinAlgError:
        return residual / np.diagonal(hessian, axis1=-2, axis2=-1)


def _damped_newton(
    unit: np.ndarray, start: np.ndarray, tolerance: float, max_iterations: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Minimise `1/2 b^T U b - sum log b` from `start > 0` for a batch `[..., K, K]` (see `NashMTL`).

    Each iteration: the Newton step `t` in relative coordinates, `(B U B + I) t = -r`; the step
    size 1 if the decrement `lambda = sqrt(-r.t) < 1/4`, else `1/(1 + lambda)`; then the exact
    minimiser of `f` on the ray through the new point (free: it shares the product with U). A full
    Newton step leaves the residual `r_new_i = -t_i^2` exactly, so `max |r_new| <= lambda^2`
    (quadratic convergence). An element stops at `max |r| <= tolerance`, after `_STALL_LIMIT`
    consecutive full steps that fail to halve `max |r|` (float64 rounding floor), or at
    `max_iterations`; finished elements are frozen, so each element follows exactly the iteration
    of `_damped_newton_single`. Returns `(b, r, iterations)`.
    """
    eye = np.eye(unit.shape[-1])
    b, residual = _best_on_ray(unit, start)
    error = np.abs(residual).max(axis=-1)
    active = error > tolerance
    stalls = np.zeros(error.shape, dtype=np.int64)
    iterations = 0
    while iterations < max_iterations and active.any():
        iterations += 1
        hessian = b[..., :, None] * unit * b[..., None, :] + eye  # B U B + I >= I
        negative_step = _newton_step(hessian, residual)
        decrement = np.sqrt(np.maximum(np.einsum("...i,...i->...", residual, negative_step), 0.0))
        full = decrement < _FULL_STEP_DECREMENT
        size = np.where(full, 1.0, 1.0 / (1.0 + decrement))
        candidate, candidate_residual = _best_on_ray(unit, b - b * negative_step * size[..., None])
        b = np.where(active[..., None], candidate, b)
        residual = np.where(active[..., None], candidate_residual, residual)
        new_error = np.abs(residual).max(axis=-1)
        stalls = np.where(full & (new_error > 0.5 * error), stalls + 1, 0)
        error = np.where(active, new_error, error)
        active = active & (error > tolerance) & (stalls < _STALL_LIMIT)
    return b, residual, iterations


def _damped_newton_single(
    unit: np.ndarray, start: np.ndarray, tolerance: float, max_iterations: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """`_damped_newton` for one problem (`unit` [K, K]), with the step control on Python floats."""
    num_tasks = unit.shape[-1]
    eye = np.eye(num_tasks)

    def on_ray(point: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        products = point * (unit @ point)
        # U is positive definite, so the sum is positive in exact arithmetic; rounding can make it
        # tiny or negative for a point nearly in U's null space (no Nash solution): bound it below
        # relative to |point|^2 (U has a unit diagonal), which keeps |b| below about 1e8 sqrt(K)
        squared_scale = num_tasks / max(
            float(products.sum()), _QUADRATIC_FLOOR * float(point @ point)
        )
        residual = products * squared_scale - 1.0
        return point * math.sqrt(squared_scale), residual, float(np.abs(residual).max())

    b, residual, error = on_ray(start)
    stalls, iterations = 0, 0
    while error > tolerance and stalls < _STALL_LIMIT and iterations < max_iterations:
        iterations += 1
        hessian = np.add(unit * np.outer(b, b), eye)  # B U B + I >= I
        negative_step = _newton_step(hessian, residual)
        decrement = math.sqrt(max(float(residual @ negative_step), 0.0))
        full = decrement < _FULL_STEP_DECREMENT
        b, residual, new_error = on_ray(
            b - b * negative_step * (1.0 if full else 1.0 / (1.0 + decrement))
        )
        stalls = stalls + 1 if full and new_error > 0.5 * error else 0
        error = new_error
    return b, residual, iterations
