"""Projections onto the dual cone of the task gradients: UPGrad and DualProj (Quinton & Rey 2024).

The dual cone of the rows `g_1..g_K` of J is `C* = {d : J d >= 0}`: the updates that conflict with
no task. Projecting a combination `J^T u` onto it is, by Proposition 1 of Quinton & Rey
("Jacobian Descent for Multi-Objective Optimization", arXiv:2406.16232), the quadratic program

    v* = argmin_v  v^T G v   subject to  v >= u,        pi_J(J^T u) = J^T v*,        (1)

on the Gramian `G = J J^T` alone. Its KKT conditions: with `mu = G v*` (the products `g_i . d`),

    v* >= u,     mu >= 0,     mu_i (v*_i - u_i) = 0.                                    (2)

(1) is a non-negative least-squares problem in `lambda = v - u >= 0`, `min ||J^T (u + lambda)||^2`
(Moreau: `J^T u = pi_{C*}(J^T u) - J^T lambda*`, the second term its projection onto the polar
cone `-cone(g_i)`). `project_to_dual_cone` solves it exactly, in float64 on the host:

* on the unit-diagonal (cosine) Gramian `U = N^-1 G N^-1`, `N = diag(||g_i||)`, with bounds
  `b = N u` (`y = N v`); the problem, its solution and its KKT conditions are unchanged by that
  scaling, which makes the solver independent of the gradients' scales (1e-12 to 1e12 alike);
* a task with a zero gradient constrains nothing (`g_i . d = 0` for every d) and its variable does
  not enter `v^T G v`: it is left at `v_i = u_i`, the other tasks are solved without it;
* K = 2 in closed form (for `u >= 0` at most one constraint is active:
  `v = u`, or `v_1 = -G_12 u_2 / G_11, v_2 = u_2` if `(G u)_1 < 0`, and symmetrically);
* K >= 3 by the active-set method of Lawson & Hanson (1974, "Solving Least Squares Problems",
  ch. 23, NNLS) on the scaled problem: a constraint enters the free set when its product
  `mu_i = (U y)_i` is negative beyond its rounding error `8 K eps sum_j |U_ij| |y_j|`, the free
  variables solve `(U y)_P = 0` (a least-squares solve, so that linearly dependent gradients are
  allowed, refined once), and a step that would make some `lambda_i` negative stops at the first
  one, which leaves; a constraint whose first solve does not make it grow (rounding) is skipped
  until the point moves. It terminates when no product is negative beyond its rounding error, or
  after `10 K + 10` linear solves.

The targets must be non-negative (they are for UPGrad and DualProj, whose preference vectors are):
then the K = 2 closed form above is exhaustive.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from core.errors import InvalidHyperparameterError, MTLInputError, NonFiniteGradientError
from core.methods.base import (
    GradientWeighting,
    HeadGradient,
    WeightsResult,
    check_number,
    weights_in_dtype,
)

_EPS = float(np.finfo(np.float64).eps)
_NOISE = 8 * _EPS
"""Times K: the relative rounding error of a product `(U y)_i` against `sum_j |U_ij| |y_j|`."""


@dataclass(frozen=True)
class DualConeProjection:
    """The weights of the projections of `J^T u` onto the dual cone, batched like the input.

    `weights` `[..., M, K]` float64: row m is `v*` of (1) for the target `u = targets[..., m, :]`;
    `kkt_residual` `[...]` the largest violation of the KKT conditions (2) over the M targets,
    measured on the scaled problem relative to the size `sum_j |v_j| ||g_j||` of the projection's
    terms (0 exactly at the solution; rounding gives ~1e-16); `iterations` the most linear solves
    any element needed (0 for K <= 2).
    """

    weights: Tensor
    kkt_residual: Tensor
    iterations: int


def project_to_dual_cone(gramian: Tensor, targets: Tensor, /) -> DualConeProjection:
    """Solve (1) for a Gramian `[..., K, K]` and non-negative targets `[..., M, K]` (broadcast
    against each other's batch dimensions; `[K]` is one target). See the module docstring."""
    gram = gramian.detach().to(torch.float64).cpu()
    gram = 0.5 * (gram + gram.transpose(-1, -2))
    goal = targets.detach().to(torch.float64).cpu()
    if goal.ndim == 1:
        goal = goal[None, :]
    num_tasks = gram.shape[-1]
    if goal.shape[-1] != num_tasks:
        raise MTLInputError(
            f"targets of shape {tuple(goal.shape)} do not match the Gramian of shape {tuple(gram.shape)}"
        )
    if bool((goal < 0).any()) or not bool(torch.isfinite(goal).all()):
        raise MTLInputError("the targets of a dual-cone projection must be finite and non-negative")
    batch = torch.broadcast_shapes(gram.shape[:-2], goal.shape[:-2])
    host_gram = gram.expand(*batch, num_tasks, num_tasks).numpy()
    host_goal = goal.expand(*batch, goal.shape[-2], num_tasks).numpy()
    weights, residual, iterations = _project(host_gram, host_goal)
    return DualConeProjection(torch.from_numpy(weights), torch.from_numpy(residual), iterations)


def _project(gram: np.ndarray, goal: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """`project_to_dual_cone` on float64 arrays `[..., K, K]` and `[..., M, K]` of one batch shape."""
    num_tasks = gram.shape[-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        norms = np.sqrt(np.diagonal(gram, axis1=-2, axis2=-1).clip(min=0))
        nonzero = norms > 0
        inverse = np.where(nonzero, 1.0 / np.where(nonzero, norms, 1.0), 0.0)
        cosine = gram * inverse[..., :, None] * inverse[..., None, :]
        cosine = (0.5 * (cosine + np.swapaxes(cosine, -1, -2))).clip(
            -1.0, 1.0
        )  # the products round asymmetrically
    eye = np.eye(num_tasks, dtype=bool)
    cosine = np.where(eye, 1.0, cosine)
    bounds = goal * norms[..., None, :]  # b = N u, zero for a zero gradient
    finite = np.isfinite(gram).all(axis=(-1, -2))
    iterations = 0
    if num_tasks == 1:
        scaled = bounds.copy()
    elif num_tasks == 2:
        scaled = _two_tasks(cosine[..., None, 0, 1], bounds)
    else:
        flat_cosine = cosine.reshape(-1, num_tasks, num_tasks)
        flat_bounds = bounds.reshape(-1, *bounds.shape[-2:])
        flat_nonzero = nonzero.reshape(-1, num_tasks)
        flat_finite = finite.reshape(-1)
        scaled = flat_bounds.copy()
        for index in range(flat_cosine.shape[0]):
            active = np.flatnonzero(flat_nonzero[index])
            if not flat_finite[index] or active.size == 0:
                continue
            sub = flat_cosine[index][np.ix_(active, active)]
            for target in range(flat_bounds.shape[1]):
                solution, solves = _active_set(sub, flat_bounds[index, target, active])
                scaled[index, target, active] = solution
                iterations = max(iterations, solves)
        scaled = scaled.reshape(bounds.shape)
    weights = np.where(nonzero[..., None, :], scaled * inverse[..., None, :], goal)
    residual = _kkt_residual(cosine, bounds, scaled, nonzero)
    weights = np.where(finite[..., None, None], weights, np.nan)
    residual = np.where(finite, residual, np.nan)
    return weights, residual, iterations


def _two_tasks(cosine: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """The scaled K = 2 problem in closed form: `cosine` `[..., 1]`, bounds `b >= 0` `[..., M, 2]`.

    `mu = U b`; if `mu_1 < 0` the first constraint binds: `y = (-c b_2, b_2)` (then
    `mu_2 = b_2 (1 - c^2) >= 0`); if `mu_2 < 0`, symmetrically; otherwise `y = b`. Both cannot be
    negative: `mu_1 + mu_2 = (1 + c)(b_1 + b_2) >= 0`.
    """
    first, second = bounds[..., 0], bounds[..., 1]
    cos = cosine  # [..., 1], broadcast over the M targets
    product_1 = first + cos * second
    product_2 = cos * first + second
    y_1 = np.where(product_1 < 0, -cos * second, first)
    y_2 = np.where((product_1 >= 0) & (product_2 < 0), -cos * first, second)
    return np.stack([y_1, y_2], axis=-1)


_SCALAR_ROWS = 64
"""Up to this many 2 x 2 Gramians `_project_two_tasks` runs on Python floats, row by row."""


def _project_two_tasks(
    entries: list[list[float]], goal: np.ndarray
) -> tuple[list[list[list[float]]], list[float]]:
    """`_project` for K = 2 on Python floats: `entries` the rows `[G_11, G_12, G_21, G_22]` of
    finite symmetric Gramians, `goal` `[M, 2]`. The same IEEE operations in the same order as the
    numpy path (the same bits) without a numpy call per operation: weights `[N][M][2]` and KKT
    residuals `[N]`."""
    targets = goal.tolist()
    weights, residuals = [], []
    for g11, g12, g21, g22 in entries:
        norm1, norm2 = math.sqrt(0.0 if g11 <= 0.0 else g11), math.sqrt(0.0 if g22 <= 0.0 else g22)
        inverse1 = 1.0 / norm1 if norm1 > 0 else 0.0
        inverse2 = 1.0 / norm2 if norm2 > 0 else 0.0
        cos = 0.5 * (g12 * inverse1 * inverse2 + g21 * inverse2 * inverse1)
        cos = -1.0 if cos < -1.0 else 1.0 if cos > 1.0 else cos
        row, residual = [], 0.0
        for u1, u2 in targets:
            first, second = u1 * norm1, u2 * norm2
            product_1 = first + cos * second
            y1 = -cos * second if product_1 < 0 else first
            y2 = -cos * first if product_1 >= 0 and cos * first + second < 0 else second
            row.append([y1 * inverse1 if norm1 > 0 else u1, y2 * inverse2 if norm2 > 0 else u2])
            residual = max(
                residual,
                _kkt_violation_pair(cos, (first, second), (y1, y2), (norm1 > 0, norm2 > 0)),
            )
        weights.append(row)
        residuals.append(residual)
    return weights, residuals


def _kkt_violation_pair(
    cos: float, bounds: tuple[float, float], scaled: tuple[float, float], nonzero: tuple[bool, bool]
) -> float:
    """`_kkt_residual` of one target of a K = 2 problem on Python floats (the same operations)."""
    p1, p2 = (scaled[0] if nonzero[0] else 0.0), (scaled[1] if nonzero[1] else 0.0)
    size = abs(p1) + abs(p2)
    divisor = size if size > 0 else 1.0
    worst = 0.0
    for index, (product, gap) in enumerate(
        ((1.0 * p1 + cos * p2, p1 - bounds[0]), (cos * p1 + 1.0 * p2, p2 - bounds[1]))
    ):
        if not nonzero[index]:
            continue
        violation = max(max(max(-product, -gap), min(product, gap)), 0.0)
        worst = max(worst, violation / divisor)
    return worst


def _active_set(cosine: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, int]:
    """Lawson-Hanson NNLS for `min y^T U y` s.t. `y >= b` on one unit-diagonal PSD `U` `[n, n]`.

    Returns `y` and the number of linear solves. `lambda = y - b` starts at 0; see the module
    docstring for the rules.
    """
    size = bounds.shape[0]
    step = np.zeros(size)
    free = np.zeros(size, dtype=bool)
    blocked = np.zeros(size, dtype=bool)  # entered at this point without effect (rounding): skip
    solves, limit = 0, 10 * size + 10
    while solves < limit:
        point = bounds + step
        products = cosine @ point
        floor = _NOISE * size * (np.abs(cosine) @ np.abs(point))
        entering = ~free & ~blocked & (products < -floor)
        if not entering.any():
            break
        entered = int(np.argmin(np.where(entering, products, np.inf)))  # the most conflicting task
        free[entered] = True
        first = True
        while solves < limit:
            solves += 1
            indices = np.flatnonzero(free)
            trial = _face(cosine, bounds, free) - bounds[indices]
            if first and trial[np.searchsorted(indices, entered)] <= 0:
                # in exact arithmetic an entering variable grows; here rounding says it cannot
                free[entered], blocked[entered] = False, True
                break
            if (trial > 0).all():
                step[indices] = trial
                blocked[:] = False
                break
            first = False
            current = step[indices]
            blocking = trial <= 0
            ratio = current[blocking] / (current[blocking] - trial[blocking])
            fraction = float(ratio.min())
            step[indices] = current + fraction * (trial - current)
            tiny = _NOISE * size * max(float(np.abs(bounds + step).max()), np.finfo(float).tiny)
            leaving = indices[step[indices] <= tiny]
            step[leaving] = 0.0
            free[leaving] = False
            if not free.any():
                break
    return _settle(cosine, bounds, free, step), solves


def _face(cosine: np.ndarray, bounds: np.ndarray, free: np.ndarray) -> np.ndarray:
    """`y_P` with `(U y)_P = 0` and `y_Z = b_Z`: the least-squares (minimum-norm) solution of
    `U_PP y_P = -U_PZ b_Z`, refined once (U_PP may be singular: dependent gradients)."""
    indices, fixed = np.flatnonzero(free), np.flatnonzero(~free)
    matrix = cosine[np.ix_(indices, indices)]
    right = -cosine[np.ix_(indices, fixed)] @ bounds[fixed]
    solution = np.linalg.lstsq(matrix, right, rcond=None)[0]
    solution = solution + np.linalg.lstsq(matrix, right - matrix @ solution, rcond=None)[0]
    return solution


def _settle(
    cosine: np.ndarray, bounds: np.ndarray, free: np.ndarray, step: np.ndarray
) -> np.ndarray:
    """The final point: the free variables re-solved on the final face (so that their products
    are 0 to rounding), kept feasible (`y >= b`)."""
    point = bounds + step.clip(min=0)
    if free.any():
        indices = np.flatnonzero(free)
        point[indices] = np.maximum(_face(cosine, bounds, free), bounds[indices])
    return point


def _kkt_residual(
    cosine: np.ndarray, bounds: np.ndarray, scaled: np.ndarray, nonzero: np.ndarray
) -> np.ndarray:
    """The largest violation of (2) on the scaled problem, relative to `sum_j |y_j|` (`[...]`)."""
    mask = nonzero[..., None, :]
    point = np.where(mask, scaled, 0.0)
    products = np.einsum("...ij,...mj->...mi", cosine, point)
    gap = point - np.where(mask, bounds, 0.0)
    violation = np.maximum.reduce([-products, -gap, np.minimum(products, gap), np.zeros_like(gap)])
    violation = np.where(mask, violation, 0.0)
    size = np.abs(point).sum(axis=-1, keepdims=True)
    relative = violation / np.where(size > 0, size, 1.0)
    return relative.max(axis=(-1, -2)) if relative.size else np.zeros(relative.shape[:-2])


# --------------------------------------------------------------------------------------------
# The two methods
# --------------------------------------------------------------------------------------------


def check_preference_vector(
    pref_vector: Sequence[float] | Tensor | None, method: str, /
) -> tuple[float, ...] | None:
    """A preference vector: None, or K >= 1 finite non-negative numbers, not all zero."""
    if pref_vector is None:
        return None
    if isinstance(pref_vector, bool) or isinstance(pref_vector, str):
        raise InvalidHyperparameterError(
            f"{method}: pref_vector must be a list of numbers or None, got {pref_vector!r}"
        )
    try:
        values = torch.as_tensor(pref_vector, dtype=torch.float64).detach()
    except (TypeError, ValueError, RuntimeError) as error:
        raise InvalidHyperparameterError(
            f"{method}: pref_vector must be a list of numbers or None, got {pref_vector!r}"
        ) from error
    if values.ndim != 1 or values.numel() == 0:
        raise InvalidHyperparameterError(
            f"{method}: pref_vector must be a non-empty list of K numbers, got {pref_vector!r}"
        )
    if (
        not bool(torch.isfinite(values).all())
        or bool((values < 0).any())
        or not bool((values > 0).any())
    ):
        raise InvalidHyperparameterError(
            f"{method}: pref_vector must be finite, non-negative and not all zero, got {values.tolist()}"
        )
    return tuple(float(value) for value in values)


def preference_weights(
    pref_vector: tuple[float, ...] | None, num_tasks: int, default: float, method: str, /
) -> Tensor:
    """The preference vector as a float64 tensor `[K]` (`default` in every entry when None)."""
    if pref_vector is None:
        return torch.full((num_tasks,), default, dtype=torch.float64)
    if len(pref_vector) != num_tasks:
        raise MTLInputError(
            f"{method} has a pref_vector of {len(pref_vector)} entries but there are {num_tasks} tasks"
        )
    return torch.tensor(pref_vector, dtype=torch.float64)


def _uniform(pref_vector: tuple[float, ...] | None) -> bool:
    return pref_vector is None or len(set(pref_vector)) == 1


class _DualConeWeighting(GradientWeighting):
    """What UPGrad and DualProj share: the preference vector, TorchJD's optional normalisation and
    regularisation of the Gramian, and the solver call."""

    claims = frozenset({"permutation_equivariant", "non_conflicting"})
    head_gradient = HeadGradient.RAW

    def __init__(
        self,
        *,
        pref_vector: Sequence[float] | None = None,
        norm_eps: float = 0.0,
        reg_eps: float = 0.0,
    ) -> None:
        label = type(self).__name__
        self.pref_vector = check_preference_vector(pref_vector, label)
        self.norm_eps = check_number(
            "norm_eps (TorchJD: 1e-4; 0 keeps the exact projection)", norm_eps, minimum=0.0
        )
        self.reg_eps = check_number(
            "reg_eps (TorchJD: 1e-4; 0 keeps the exact projection)", reg_eps, minimum=0.0
        )
        claims = set(type(self).claims)
        if not _uniform(self.pref_vector):
            claims.discard("permutation_equivariant")
        if self.norm_eps > 0 or self.reg_eps > 0:
            # a regularised or zeroed Gramian: the update is only approximately in the dual cone
            claims.discard("non_conflicting")
        self.claims = frozenset(claims)

    def _targets(self, num_tasks: int) -> Tensor:
        raise NotImplementedError

    def _prepared(self, gramian: Tensor) -> Tensor:
        """TorchJD's `regularize(normalize(G, norm_eps), reg_eps)`: G divided by its trace (0 if
        the trace is below `norm_eps`), plus `reg_eps I`; G itself when both are 0 (the
        projection does not depend on a positive scale of G)."""
        gram = gramian.detach().to(torch.float64).cpu()
        if self.norm_eps == 0 and self.reg_eps == 0:
            return gram
        trace = torch.diagonal(gram, dim1=-2, dim2=-1).sum(dim=-1)[..., None, None]
        small = ~(trace >= self.norm_eps) | (trace <= 0)
        gram = torch.where(
            small, torch.zeros_like(gram), gram / torch.where(small, torch.ones_like(trace), trace)
        )
        return gram + self.reg_eps * torch.eye(gram.shape[-1], dtype=gram.dtype)

    def _goal(self, num_tasks: int) -> np.ndarray:
        """`_targets(K)` as a read-only numpy array, built once per K."""
        cache = self.__dict__.setdefault("_goal_cache", {})
        if num_tasks not in cache:
            goal = self._targets(num_tasks).to(torch.float64).reshape(-1, num_tasks).numpy().copy()
            goal.setflags(write=False)
            cache[num_tasks] = goal
        return cache[num_tasks]

    def _weights(self, gramian: Tensor, losses: Tensor, /) -> WeightsResult:
        if self.norm_eps == 0 and self.reg_eps == 0:
            # `project_to_dual_cone(G, targets)` without its checks (targets valid by construction)
            # and its torch round trips: the per-step path on a few K x K entries
            host = gramian.detach().to(device="cpu", dtype=torch.float64).numpy()
            if not np.isfinite(host).all():
                raise NonFiniteGradientError(
                    f"{type(self).__name__}: the Gramian contains NaN or infinite entries"
                )
            gram = 0.5 * (host + np.swapaxes(host, -1, -2))
            goal = self._goal(gram.shape[-1])
            batch_shape = gram.shape[:-2]
            if gram.shape[-1] == 2 and gram.size <= 4 * _SCALAR_ROWS and np.isfinite(gram).all():
                rows, row_residuals = _project_two_tasks(gram.reshape(-1, 4).tolist(), goal)
                weights = torch.tensor(rows, dtype=torch.float64).reshape(*batch_shape, *goal.shape)
                projection = DualConeProjection(
                    weights,
                    torch.tensor(row_residuals, dtype=torch.float64).reshape(batch_shape),
                    0,
                )
            else:
                solved, residual, iterations = _project(
                    gram, np.broadcast_to(goal, (*batch_shape, *goal.shape))
                )
                projection = DualConeProjection(
                    torch.from_numpy(solved), torch.from_numpy(np.asarray(residual)), iterations
                )
        else:
            if not bool(torch.isfinite(gramian).all()):
                raise NonFiniteGradientError(
                    f"{type(self).__name__}: the Gramian contains NaN or infinite entries"
                )
            projection = project_to_dual_cone(
                self._prepared(gramian), self._targets(gramian.shape[-1])
            )
        weights = projection.weights.sum(dim=-2).to(gramian.device)
        diagnostics = {
            "kkt_residual": projection.kkt_residual,
            "iterations": torch.tensor(projection.iterations),
        }
        return WeightsResult(
            weights_in_dtype(weights, gramian.dtype, type(self).__name__), diagnostics
        )


class UPGrad(_DualConeWeighting):
    """UPGrad, the unconflicting projection of gradients (Quinton & Rey 2024, arXiv:2406.16232).

    Each task gradient, weighted by its preference `p_i`, is projected onto the dual cone
    `{d : g_j . d >= 0 for all j}` of the task gradients, and the projections are added:

        d = sum_i pi_J(p_i g_i),     pi_J(J^T u) = J^T v*(u)  with  v*(u) = argmin_{v >= u} v^T G v,

    (`pi_J` the projection onto the dual cone, the paper's eq. 3, computed by its Prop. 1), so the
    weights are `w = sum_i v*(p_i e_i)` (K projections (1), see `project_to_dual_cone`).
    The dual cone is convex, so d lies in it: `g_j . d >= 0` for every task (non-conflicting);
    with equal preferences the method is permutation equivariant. It is not invariant to a
    per-task rescaling of the losses (J = I, scales a = (2, 1): `a * w(a l) = (1, 1/2)`, not
    `w(l) = (1/2, 1/2)`).

    Defaults: `pref_vector` uniform, `p_i = 1/K` (the paper's mean of the projected gradients,
    TorchJD's `UPGradWeighting`, LibMTL; the update is at the scale of the mean gradient). `norm_eps = reg_eps = 0`:
    the exact projection. TorchJD 0.18 solves the QP with quadprog on `G / tr(G) + 1e-4 I` (and on
    `1e-4 I` when `tr(G) < 1e-4`); `norm_eps=1e-4, reg_eps=1e-4` reproduces that (to quadprog's
    accuracy), and drops the claim `non_conflicting`: the regularised projection conflicts with a
    task by up to about `reg_eps tr(G) v_i`, and below `norm_eps` the weights are the preference
    vector itself (docs/DECISIONS.md). Heads receive the plain `grad l_i` (TorchJD's
    `mtl_backward`). A task with a zero gradient keeps `v_i = u_i` (it constrains nothing).

    Diagnostics: `"kkt_residual"` (batch shape, the KKT violation of the K projections relative
    to the size of their terms) and `"iterations"` (linear solves of the active set, 0 for K <= 2).

    Args:
        pref_vector: K finite non-negative preferences, not all zero (None: 1/K each).
        norm_eps: divide G by its trace, and use 0 when the trace is below this (TorchJD: 1e-4).
        reg_eps: add `reg_eps I` to the (normalised) Gramian (TorchJD: 1e-4).
    """

    name = "upgrad"
    paper = "Quinton, Rey, Jacobian Descent for Multi-Objective Optimization (UPGrad; arXiv:2406.16232, 2024)"

    def _targets(self, num_tasks: int) -> Tensor:
        return torch.diag(
            preference_weights(self.pref_vector, num_tasks, 1.0 / num_tasks, "UPGrad")
        )


class DualProj(_DualConeWeighting):
    """DualProj, the mean gradient projected onto the dual cone (Quinton & Rey 2024, arXiv:2406.16232; TorchJD).

    The preference-weighted combination `J^T p` (by default the mean gradient) is projected onto
    the dual cone `{d : g_j . d >= 0 for all j}` (the projection of GEM, Lopez-Paz & Ranzato 2017,
    eq. 11, applied to the task gradients):

        d = pi_J(J^T p) = J^T v*,     v* = argmin_{v >= p} v^T G v,

    so the weights are `v*` (one projection (1), see `project_to_dual_cone`). The update lies in
    the dual cone (non-conflicting); with equal preferences the method is permutation
    equivariant; it is not invariant to a per-task rescaling of the losses (J = I, scales
    a = (2, 1): `a * w(a l) = (1, 1/2)`, not `w(l) = (1/2, 1/2)`).

    Defaults, TorchJD reproduction (`norm_eps=1e-4, reg_eps=1e-4`), heads, zero gradients and
    diagnostics as `UPGrad`.

    Args:
        pref_vector: K finite non-negative preferences, not all zero (None: 1/K each).
        norm_eps: divide G by its trace, and use 0 when the trace is below this (TorchJD: 1e-4).
        reg_eps: add `reg_eps I` to the (normalised) Gramian (TorchJD: 1e-4).
    """

    name = "dualproj"
    paper = "Quinton, Rey, Jacobian Descent for Multi-Objective Optimization (DualProj; arXiv:2406.16232, 2024)"

    def _targets(self, num_tasks: int) -> Tensor:
        return preference_weights(self.pref_vector, num_tasks, 1.0 / num_tasks, "DualProj")[None, :]
