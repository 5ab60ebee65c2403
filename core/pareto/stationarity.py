"""The min-norm point of the convex hull of task gradients, and Pareto stationarity.

`min_norm_point(G)` solves `min_{a in simplex} a^T G a` on a (batched) Gramian: the MGDA
subproblem (Sener & Koltun 2018, eq. 3) and the measure of Pareto stationarity
(`residual = ||sum_i a_i g_i||`, zero exactly at Pareto-stationary points). It is the one
min-norm solver of the project; MGDA, CAGrad's dual, IMTL-G's face solve and every convergence
check call it or its pieces.

The K x K work runs in float64 on the host (numpy), whatever the Gramian's dtype and device:
the Gramian is tiny next to the gradients it summarises, and an exact method needs the precision.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from core.errors import InvalidHyperparameterError

_EPS = float(np.finfo(np.float64).eps)
_ROUNDING = 8 * _EPS
"""Times K: the relative rounding error allowed in `a^T G a - (G a)_j` (see `_entering_floor`)."""
_PIVOT_FLOOR = 1e-12
"""Smallest squared Cholesky pivot of a face's equilibrated reduced system (relative to its unit
diagonal) for which the face's gradients count as affinely independent; below it the face is
not entered (its minimiser would be rounding noise)."""
_NUMPY_SIZE = 32
"""Faces with reduced systems up to this size are solved with numpy, larger ones with torch
(`_positive_definite_solve`)."""
_ENUMERATION_TASKS = 4
"""Up to this K, batches are solved by checking every face at once (`_enumerate_faces`)."""
_ENUMERATION_BATCH = 4
"""From this many batch elements on (and K <= `_ENUMERATION_TASKS`), `_enumerate_faces` is used."""
_LOCKSTEP_BATCH = 16
"""From this many batch elements on (and K > `_ENUMERATION_TASKS`), `_lockstep_active_set` is used.
Both thresholds are where batched torch calls start to beat a host loop of per-element active
sets (measured on a 2-core CPU)."""


@dataclass(frozen=True)
class MinNormSolution:
    """Solution of the min-norm problem, batched like the input.

    `weights` `[..., K]` on the simplex; `squared_norm` `a^T G a`; `kkt_gap` the Frank-Wolfe gap
    `a^T G a - min_i (G a)_i` of the float64 solution, relative to `max_i G_ii` (it is >= 0,
    bounds the suboptimality of `squared_norm`, and is 0 exactly at the optimum; the returned
    weights are that solution rounded to the Gramian's dtype); `iterations` the number of face
    solves (linear solves of the active-set method), the largest over the batch (0 for K <= 2).
    """

    weights: Tensor
    squared_norm: Tensor
    kkt_gap: Tensor
    iterations: int

    @property
    def residual(self) -> Tensor:
        """The stationarity residual `min_{a in simplex} ||sum_i a_i g_i||`."""
        return self.squared_norm.clamp_min(0).sqrt()


def default_tolerance(dtype: torch.dtype) -> float:
    """The KKT gap, relative to `max_i ||g_i||^2`, that weights *stored* in `dtype` can be expected
    to show when checked in that dtype: 1e-12 in float64, 1e-6 in float32/16. (`min_norm_point`
    itself solves in float64 to the rounding floor unless given a `tolerance`.)"""
    return 1e-12 if dtype == torch.float64 else 1e-6


def min_norm_point(
    gramian: Tensor, /, *, tolerance: float | None = None, max_iterations: int = 2000
) -> MinNormSolution:
    """Minimise `a^T G a` over the probability simplex for a Gramian `[..., K, K]`.

    K = 1: a = 1. K = 2: the closed form of Sener & Koltun (2018, Alg. 1),
    `a_1 = clip((G_22 - G_12) / (G_11 + G_22 - 2 G_12), 0, 1)` (a_1 = 1/2 when g_1 = g_2).

    K >= 3: Wolfe's min-norm-point algorithm (Wolfe 1976, "Finding the nearest point in a
    polytope"), a primal active-set method, on the Gramian alone, in float64 on the host:

    * a *face* is a set S of tasks; its minimiser is `argmin a^T G a` subject to `sum a = 1`,
      `a_i = 0` off S. Writing `a = e_r + sum_{i in S, i != r} t_i (e_i - e_r)` with `r` the task
      of S with the smallest gradient, `t` solves the reduced system
      `E t = -h`, `E_ij = G_ij - G_ir - G_rj + G_rr`, `h_i = G_ir - G_rr`, which is positive
      definite exactly when the gradients of S are affinely independent. It is equilibrated
      (`E / sqrt(diag E diag E^T)`, undone exactly) and Cholesky-factorised; a face whose
      factorisation fails or has a squared pivot below 1e-12 counts as affinely dependent.
    * minor cycle: from a feasible `a` (positive on S), solve the face; if its minimiser is
      positive on S, move there; otherwise step towards it until a weight reaches 0 (ratio test),
      drop that task and repeat. On an affinely dependent face, move along the dependency
      instead (`sum_i v_i g_i ~ 0`, `sum v = 0`: Caratheodory's reduction; the combined gradient
      stays put) until a weight reaches 0, and drop that task. Every step drops a task.
    * major cycle: at a face minimiser, the task `j` with the smallest `(G a)_j` enters if
      `a^T G a - (G a)_j` exceeds `tolerance` (default 0) and its rounding floor
      `8 K eps s (s + ||g_j||)`, `s = sum_i a_i ||g_i||` (the error of computing it); this is the
      KKT test, so the method stops at a KKT point up to rounding. A major cycle is kept only if
      it strictly decreases the computed objective; otherwise `j` is set aside until the next
      successful cycle (anti-cycling: no face can recur, so the method terminates even without
      the cap).
    * start: when the gradients are affinely independent, the full face's minimiser, restricted
      to the tasks where it is positive and solved again until it is positive on its face (a
      heuristic that drops many tasks per solve; any face minimiser is a valid start); else the
      smallest gradient's vertex (Wolfe's start).

    Every face solve counts as one iteration; at most `max_iterations` are made per batch element
    (termination is guaranteed; the achieved gap is returned). The Gramian is divided by
    `max_i G_ii` first, and the tests above are relative to the gradients involved, so norms
    spanning 12 orders of magnitude are resolved (the smallest gradient's vertex is returned
    when it is the minimiser; on affinely independent gradients every slack is within its
    floor). Where the min-norm point is 0 to rounding (rank-deficient Gramians) the gap is at the
    rounding level of `max_i G_ii` (~1e-16 from float64 input); a float32 Gramian of rank < K is
    indefinite at ~1e-8 after rounding, and its gap is at that level.

    Batches: up to 3 elements (or 15 for K > 4) are solved one by one on the host. Larger
    batches use batched torch calls: for K <= 4, every face at once (`_enumerate_faces`: the
    feasible face minimiser with the smallest KKT gap); for larger K, the method above in
    lockstep over the batch (`_lockstep_active_set`). Elements these leave short of the KKT
    test are solved again one by one, so every path returns the same minimiser up to rounding.

    A zero gradient makes the min-norm point 0: the weight is split evenly between the tasks
    with zero gradients. All-zero Gramians give uniform weights. The weights are computed from
    `gramian.detach()` and returned in its dtype and on its device.
    """
    if (
        isinstance(max_iterations, bool)
        or not isinstance(max_iterations, int)
        or max_iterations < 0
    ):
        raise InvalidHyperparameterError(
            f"max_iterations must be an integer >= 0, got {max_iterations!r}"
        )
    if tolerance is not None and (
        isinstance(tolerance, bool)
        or not isinstance(tolerance, (int, float))
        or not tolerance >= 0
        or math.isinf(tolerance)
    ):
        raise InvalidHyperparameterError(
            f"tolerance must be a finite number >= 0 (or None: to the rounding floor), got {tolerance!r}"
        )
    num_tasks = gramian.shape[-1]
    host = gramian.detach().to(device="cpu", dtype=torch.float64).numpy()
    host = 0.5 * (
        host + np.swapaxes(host, -1, -2)
    )  # a fresh array: the caller's tensor is never written
    with np.errstate(invalid="ignore"):
        scale = np.diagonal(host, axis1=-2, axis2=-1).max(axis=-1).clip(min=0)
        positive = scale > 0
        scaled = host / np.where(positive, scale, 1.0)[..., None, None]
    iterations = 0
    if num_tasks == 1:
        weights = np.ones(scale.shape + (1,))
    elif num_tasks == 2:
        weights = _two_task_weights(scaled)
    else:
        weights, iterations = _solve_batch(
            scaled, 0.0 if tolerance is None else float(tolerance), max_iterations
        )
    weights = np.where(positive[..., None], weights, 1.0 / num_tasks)
    product = np.einsum("...ij,...j->...i", scaled, weights)
    squared = np.einsum("...i,...i->...", weights, product)
    gap = (squared - product.min(axis=-1)).clip(min=0)

    def back(values: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(values)).to(
            dtype=gramian.dtype, device=gramian.device
        )

    return MinNormSolution(back(weights), back(squared * scale), back(gap), iterations)


def stationarity(gramian: Tensor, /, **solver_options: Any) -> tuple[Tensor, Tensor]:
    """Pareto-stationarity weights and residual `min_{a in simplex} ||sum_i a_i g_i||` of a Gramian."""
    solution = min_norm_point(gramian, **solver_options)  # `tolerance`, `max_iterations`
    return solution.weights, solution.residual


def _two_task_weights(gramian: np.ndarray) -> np.ndarray:
    """Sener & Koltun's closed form on (unit-scaled) Gramians `[..., 2, 2]`."""
    g11, g22, g12 = gramian[..., 0, 0], gramian[..., 1, 1], gramian[..., 0, 1]
    denominator = g11 + g22 - 2 * g12
    with np.errstate(invalid="ignore"):
        degenerate = denominator <= _EPS * (g11 + g22)
        first = np.where(
            degenerate, 0.5, ((g22 - g12) / np.where(degenerate, 1.0, denominator)).clip(0, 1)
        )
    return np.stack([first, 1 - first], axis=-1)


def project_to_simplex(values: Tensor, /) -> Tensor:
    """Euclidean projection of each row `[..., K]` onto the probability simplex (sort-based)."""
    sorted_desc, _ = torch.sort(values, dim=-1, descending=True)
    cumulative = sorted_desc.cumsum(dim=-1) - 1
    index = torch.arange(1, values.shape[-1] + 1, device=values.device, dtype=values.dtype)
    support = (sorted_desc - cumulative / index > 0).sum(dim=-1, keepdim=True).clamp_min(1)
    threshold = cumulative.gather(-1, support - 1) / support.to(values.dtype)
    return (values - threshold).clamp_min(0)


# --------------------------------------------------------------------------------------------
# The active set on one Gramian (numpy, float64)
# --------------------------------------------------------------------------------------------


def _solve_batch(
    scaled: np.ndarray, tolerance: float, max_iterations: int
) -> tuple[np.ndarray, int]:
    """Weights `[..., K]` of unit-scaled float64 Gramians and the most face solves used.

    Small batches: element by element (`min_norm_active_set`). From 4 elements on for K <= 4,
    every face at once (`_enumerate_faces`); from 16 elements on for larger K, Wolfe's method in
    lockstep over the batch (`_lockstep_active_set`); elements that these fast paths leave short of the KKT test (or
    where a face could not be solved) are solved again element by element."""
    num_tasks = scaled.shape[-1]
    flat = np.ascontiguousarray(scaled.reshape(-1, num_tasks, num_tasks))
    weights = np.empty(flat.shape[:-1])
    pending: list[int] | range = range(flat.shape[0])
    iterations = 0
    if flat.shape[0] >= _ENUMERATION_BATCH and num_tasks <= _ENUMERATION_TASKS:
        enumerated, settled = _enumerate_faces(torch.from_numpy(flat), tolerance)
        weights[:] = enumerated.numpy()
        pending = np.flatnonzero(~settled.numpy()).tolist()
    elif flat.shape[0] >= _LOCKSTEP_BATCH and num_tasks > _ENUMERATION_TASKS and max_iterations > 0:
        stepped, settled, iterations = _lockstep_active_set(
            torch.from_numpy(flat), tolerance, min(max_iterations, 4 * num_tasks)
        )
        weights[:] = stepped.numpy()
        pending = np.flatnonzero(~settled.numpy()).tolist()
    for index in pending:
        weights[index], used, _ = min_norm_active_set(
            flat[index], tolerance=tolerance, max_solves=max_iterations
        )
        iterations = max(iterations, used)
    return weights.reshape(scaled.shape[:-1]), iterations


def _entering_floor(norms: np.ndarray, weights: np.ndarray, tolerance: float) -> np.ndarray:
    """Per task j, the slack `a^T G a - (G a)_j` below which j does not enter: `tolerance` or the
    rounding error of computing the slack, `8 K eps s (s + ||g_j||)` with `s = sum_i a_i ||g_i||`
    (`|(G a)_j|` is computed to `~K eps s ||g_j||` and `a^T G a` to `~K eps s^2`)."""
    spread = float(norms @ np.abs(weights))
    return np.maximum(_ROUNDING * len(norms) * spread * (spread + norms), tolerance)


def face_minimiser(
    gramian: np.ndarray, support: np.ndarray, linear: np.ndarray | None = None
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The minimiser of `a^T G a` over the affine hull of the face `support` (`sum a = 1`, `a = 0`
    off it; entries may be negative), as a length-K array, or (None, None) when the face's
    gradients are not numerically affinely independent (see `min_norm_point`).

    With `linear` (a length-K `b`), also the direction `z` (summing to 0) such that `y + mu z`
    minimises `a^T G a + 2 mu b . a` over the same affine hull for every `mu` (the min-norm
    problem of the shifted points `g_i + mu g_0` when `b_i = g_i . g_0`): one factorisation,
    two right-hand sides.
    """
    num_tasks = gramian.shape[0]
    point = np.zeros(num_tasks)
    size = len(support)
    if size == 1:
        point[support[0]] = 1.0
        return point, None if linear is None else np.zeros(num_tasks)
    position = int(np.argmin(gramian[support, support]))
    reference = support[position]
    others = np.concatenate([support[:position], support[position + 1 :]])
    column = gramian[others, reference]
    corner = gramian[reference, reference]
    if size == 2:  # the segment: a closed form
        other = others[0]
        squared_scale = gramian[other, other] - 2 * column[0] + corner
        if not squared_scale > _PIVOT_FLOOR * (gramian[other, other] + corner):
            return None, None
        step = (corner - column[0]) / squared_scale
        point[other], point[reference] = step, 1.0 - step
        if linear is None:
            return point, None
        slope = -(linear[other] - linear[reference]) / squared_scale
        direction = np.zeros(num_tasks)
        direction[other], direction[reference] = slope, -slope
        return point, direction
    reduced = gramian[others][:, others] - column[:, None] - column[None, :] + corner
    squared_scales = np.diagonal(reduced)
    if not bool((squared_scales > 0).all()):
        return None, None
    scales = np.sqrt(squared_scales)
    reduced = reduced / np.outer(scales, scales)
    right = (corner - column) / scales
    if linear is not None:
        right = np.stack([right, (linear[reference] - linear[others]) / scales], axis=1)
    steps = _positive_definite_solve(reduced, right)
    if steps is None:
        return None, None
    if linear is None:
        steps = steps / scales
        point[others] = steps
        point[reference] = 1.0 - steps.sum()
        return point, None
    steps = steps / scales[:, None]
    point[others] = steps[:, 0]
    point[reference] = 1.0 - steps[:, 0].sum()
    direction = np.zeros(num_tasks)
    direction[others] = steps[:, 1]
    direction[reference] = -steps[:, 1].sum()
    return point, direction


def _positive_definite_solve(matrix: np.ndarray, right: np.ndarray) -> np.ndarray | None:
    """`matrix^{-1} right` by Cholesky for a symmetric matrix with unit diagonal, or None if it is
    not positive definite with every squared pivot at least `_PIVOT_FLOOR`. numpy (LAPACK) for
    small matrices, where its per-call cost is lowest; torch above `_NUMPY_SIZE`, where numpy's
    OpenBLAS would start its own threads next to torch's (on a loaded machine that made a
    199 x 199 solve 40 times slower)."""
    if matrix.shape[0] <= _NUMPY_SIZE:
        try:
            lower = np.linalg.cholesky(matrix)
        except np.linalg.LinAlgError:
            return None
        if not float(np.diagonal(lower).min()) ** 2 >= _PIVOT_FLOOR:
            return None
        return np.linalg.solve(matrix, right)
    lower, info = torch.linalg.cholesky_ex(torch.from_numpy(matrix))
    if int(info) != 0 or not float(lower.diagonal().min()) ** 2 >= _PIVOT_FLOOR:
        return None
    return (
        torch.cholesky_solve(torch.from_numpy(right).reshape(matrix.shape[0], -1), lower)
        .numpy()
        .reshape(right.shape)
    )


def _minor_cycles(
    gramian: np.ndarray,
    weights: np.ndarray,
    support: np.ndarray,
    budget: int,
    linear: np.ndarray | None,
    shift: float,
) -> tuple[np.ndarray | None, np.ndarray, int]:
    """Wolfe's minor cycles from feasible `weights` (positive on `support` except possibly the
    task just entered, 0 elsewhere): the face minimiser if it is positive on the face, else a
    step towards it until a weight reaches 0, which leaves the face; repeated. Returns the face
    minimiser reached (None if a face could not be solved or `budget` ran out), its face, and
    the face solves used."""
    num_tasks = gramian.shape[0]
    solves = 0
    while solves < budget:
        target, direction = face_minimiser(gramian, support, linear)
        solves += 1
        if (
            target is None
        ):  # affinely dependent: move along the dependency (the point stays) until a task leaves
            reduced, support = _reduce_dependent_face(gramian, weights, support)
            if reduced is None:
                return None, support, solves
            weights = reduced
            continue
        if direction is not None:
            target = target + shift * direction
        if not bool(np.isfinite(target).all()):
            return None, support, solves
        on_face = target[support]
        if bool((on_face > 0).all()):
            reached = np.zeros(num_tasks)
            reached[support] = on_face
            return reached, support, solves
        current = weights[support]
        blocking = np.flatnonzero(on_face <= 0)
        ratios = current[blocking] / (current[blocking] - on_face[blocking])
        first = int(np.argmin(ratios))
        moved = current + ratios[first] * (on_face - current)
        moved[blocking[first]] = 0.0
        keep = moved > 0
        support = support[keep]
        weights = np.zeros(num_tasks)
        weights[support] = moved[keep]
        weights /= weights.sum()
    return None, support, solves


def _reduce_dependent_face(
    gramian: np.ndarray, weights: np.ndarray, support: np.ndarray
) -> tuple[np.ndarray | None, np.ndarray]:
    """Caratheodory's reduction on a face whose gradients are (numerically) affinely dependent:
    with `v` the dependency (`sum v = 0`, `sum_i v_i g_i ~ 0`: the eigenvector of the face's
    equilibrated reduced system with the smallest eigenvalue), move `weights + theta v`, in the
    direction that goes further, until a weight reaches 0 and drop that task. The combined
    gradient moves by `theta sum_i v_i g_i`, which is at the level of the dependency (the strict
    decrease test of the major cycle catches the rest). (None, support) if no progress is possible."""
    position = int(np.argmin(gramian[support, support]))
    reference = support[position]
    others = np.concatenate([support[:position], support[position + 1 :]])
    column = gramian[others, reference]
    reduced = (
        gramian[others][:, others]
        - column[:, None]
        - column[None, :]
        + gramian[reference, reference]
    )
    squared_scales = np.diagonal(reduced)
    dependency = np.zeros(gramian.shape[0])
    if len(others) == 0 or not bool(np.isfinite(reduced).all()):
        return None, support
    if not bool((squared_scales > 0).all()):  # a duplicate of the reference
        dependency[others[int(np.argmin(squared_scales))]], dependency[reference] = 1.0, -1.0
    else:
        scales = np.sqrt(squared_scales)
        equilibrated = reduced / np.outer(scales, scales)
        if len(others) <= _NUMPY_SIZE:
            vector = np.linalg.eigh(equilibrated)[1][:, 0]
        else:
            vector = torch.linalg.eigh(torch.from_numpy(equilibrated))[1][:, 0].numpy()
        steps = vector / scales
        dependency[others], dependency[reference] = steps, -steps.sum()
    current, along = weights[support], dependency[support]
    candidates = []
    for sign in (1.0, -1.0):
        decreasing = np.flatnonzero(sign * along < 0)
        ratios = current[decreasing] / (-sign * along[decreasing])
        first = int(np.argmin(ratios))
        candidates.append((float(ratios[first]), sign, int(decreasing[first])))
    theta, sign, blocking = max(
        candidates, key=lambda candidate: candidate[0]
    )  # the first of equals, as before
    if not theta > 0:
        return None, support
    moved = current + theta * sign * along
    moved[blocking] = 0.0
    keep = moved > 0
    if not bool(keep.any()):
        return None, support
    reduced_weights = np.zeros(gramian.shape[0])
    reduced_weights[support[keep]] = moved[keep]
    return reduced_weights / reduced_weights.sum(), support[keep]


def _block_start(
    gramian: np.ndarray, budget: int, linear: np.ndarray | None, shift: float
) -> tuple[np.ndarray | None, np.ndarray, int]:
    """A starting face for the active set: solve the full face, keep the tasks where its minimiser
    is positive, and repeat until the minimiser is positive on the whole face (at most K solves;
    each drops every task at once, where the minor cycles would drop one per solve). The result
    is a face minimiser with positive weights, from which Wolfe's method proceeds as from any
    other; None where a face cannot be solved (affinely dependent gradients: more tasks than
    dimensions), or after `budget` solves."""
    support = np.arange(gramian.shape[0])
    solves = 0
    while solves < budget:
        target, direction = face_minimiser(gramian, support, linear)
        solves += 1
        if target is None:
            break
        if direction is not None:
            target = target + shift * direction
        if not bool(np.isfinite(target).all()):
            break
        positive = target[support] > 0
        if bool(positive.all()):
            return target, support, solves
        support = support[positive]
    return None, support, solves


def min_norm_active_set(
    gramian: np.ndarray,
    /,
    *,
    tolerance: float = 0.0,
    max_solves: int = 2000,
    start: tuple[np.ndarray, np.ndarray] | None = None,
    linear: np.ndarray | None = None,
    shift: float = 0.0,
) -> tuple[np.ndarray, int, np.ndarray]:
    """Wolfe's min-norm-point active set on one symmetric K x K float64 Gramian (see
    `min_norm_point`, which scales it to a unit largest diagonal first). Returns the weights,
    the face solves used and the final face (the tasks with positive weight, as indices).

    With `linear` (`b`, length K) and `shift` (`mu`), it minimises `a^T G a + 2 mu b . a` over
    the simplex instead: the min-norm problem of the shifted points `g_i + mu g_0` when
    `b_i = g_i . g_0` (CAGrad's dual), with the faces solved on `G` itself (`face_minimiser`),
    so that the shift costs no precision.

    `start`: (weights, support), a feasible warm start (weights positive on support), from which
    minor cycles lead to a first face minimiser, e.g. the previous solution in a sequence of
    related problems; by default `_block_start`, or else (and if a warm start fails) the vertex
    of the smallest (shifted) point, Wolfe's own start.
    """
    num_tasks = gramian.shape[0]
    bias = np.zeros(num_tasks) if linear is None else shift * linear
    if not bool(np.isfinite(gramian).all() and np.isfinite(bias).all()):
        return np.full(num_tasks, np.nan), 0, np.arange(num_tasks)
    squared_norms = np.diagonal(gramian) + 2 * bias
    if linear is not None:
        squared_norms = squared_norms + shift * float(
            np.mean(bias)
        )  # + mu^2 ||g_0||^2, ||g_0||^2 = mean(b)
    squared_norms = squared_norms.clip(min=0)
    norms = np.sqrt(squared_norms)
    zero = squared_norms == 0
    if bool(zero.any()):
        return zero / zero.sum(), 0, np.flatnonzero(zero)

    def objective_of(weights: np.ndarray) -> float:
        return float(weights @ (gramian @ weights) + 2 * (bias @ weights))

    if start is None:
        weights, support, solves = _block_start(gramian, max_solves, linear, shift)
    else:
        weights, support, solves = _minor_cycles(
            gramian, start[0], np.asarray(start[1]), max_solves, linear, shift
        )
        if weights is not None and not objective_of(weights) <= objective_of(start[0]):
            weights = None
    if weights is None:
        vertex = int(np.argmin(squared_norms))
        weights, support = np.zeros(num_tasks), np.array([vertex])
        weights[vertex] = 1.0
    product = gramian @ weights + bias  # half the gradient of the objective
    objective = objective_of(weights)
    set_aside = np.zeros(num_tasks, dtype=bool)
    while solves < max_solves:
        candidates = float(weights @ product) - product > _entering_floor(norms, weights, tolerance)
        candidates[support] = False
        candidates &= ~set_aside
        if not bool(candidates.any()):
            break
        entering = int(np.argmin(np.where(candidates, product, np.inf)))
        reached, reached_support, used = _minor_cycles(
            gramian, weights, np.append(support, entering), max_solves - solves, linear, shift
        )
        solves += used
        if reached is not None:
            reached_objective = objective_of(reached)
        if reached is None or not reached_objective < objective:
            set_aside[entering] = True  # no strict decrease (rounding): try the others
            continue
        weights, support, objective = reached, reached_support, reached_objective
        product = gramian @ weights + bias
        set_aside[:] = False
    return weights, solves, np.sort(support)


# --------------------------------------------------------------------------------------------
# Small K, large batches: every face at once (torch, float64)
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _faces(num_tasks: int) -> Tensor:
    """Every nonempty subset of the K tasks as a float64 mask `[2^K - 1, K]`, smallest first."""
    masks = [[(code >> i) & 1 for i in range(num_tasks)] for code in range(1, 2**num_tasks)]
    masks.sort(key=lambda mask: (sum(mask), mask[::-1]))
    return torch.tensor(masks, dtype=torch.float64)


def _enumerate_faces(gramian: Tensor, tolerance: float) -> tuple[Tensor, Tensor]:
    """Min-norm weights `[B, K]` of unit-scaled Gramians `[B, K, K]` by solving every face.

    The optimum is the minimiser of the affine hull of some affinely independent face (the
    smallest face containing it, reduced by Caratheodory), so among the face minimisers that
    lie in the simplex the one with the smallest KKT gap is optimal. Each face is solved through
    `G_S + m_S 1 1^T` (same minimiser on the face's affine hull, positive definite exactly when
    the face is affinely independent; `m_S` its largest diagonal entry), symmetrically
    equilibrated, in one batched `torch.linalg.solve_ex`. Also returns, per element, whether the
    chosen weights pass the active set's KKT test (`_entering_floor`); the others are solved
    again by the active set. Zero gradients: weight split evenly between them.
    """
    batch, num_tasks = gramian.shape[0], gramian.shape[-1]
    masks = _faces(num_tasks)
    diagonal = torch.diagonal(gramian, dim1=-2, dim2=-1).clamp_min(0)
    outer = masks[:, :, None] * masks[:, None, :]
    shift = (diagonal[:, None, :] * masks).amax(dim=-1)
    system = (gramian[:, None] + shift[..., None, None]) * outer + torch.diag_embed(1 - masks)
    scales = (
        torch.diagonal(system, dim1=-2, dim2=-1).clamp_min(torch.finfo(torch.float64).tiny).sqrt()
    )
    system = system / (scales[..., :, None] * scales[..., None, :])
    solution, info = torch.linalg.solve_ex(system, (masks / scales)[..., None])
    solution = solution[..., 0] / scales * masks
    total = solution.sum(dim=-1, keepdim=True)
    candidates = solution / torch.where(total != 0, total, torch.ones_like(total))
    valid = (
        (info == 0)
        & (total[..., 0] != 0)
        & torch.isfinite(candidates).all(dim=-1)
        & (candidates >= 0).all(dim=-1)
    )
    products = (gramian[:, None] @ candidates[..., None])[..., 0]
    objectives = (candidates * products).sum(dim=-1)
    gaps = torch.where(valid, objectives - products.amin(dim=-1), torch.inf)
    best = gaps.argmin(dim=-1)
    weights = candidates[torch.arange(batch), best]
    zero = diagonal == 0
    has_zero = zero.any(dim=-1, keepdim=True)
    weights = torch.where(has_zero, zero / zero.sum(dim=-1, keepdim=True).clamp_min(1), weights)
    finite = torch.isfinite(gramian).all(dim=-1).all(dim=-1)
    settled = (
        _kkt_settled(gramian, weights, tolerance)
        & torch.isfinite(gaps.gather(-1, best[:, None])[:, 0])
    ) | has_zero[:, 0]
    return weights, settled & finite


def _kkt_settled(gramian: Tensor, weights: Tensor, tolerance: float) -> Tensor:
    """Per batch element, whether `weights` pass the active set's KKT test: on the simplex, and
    every slack `a^T G a - (G a)_j` within `_entering_floor`."""
    num_tasks = gramian.shape[-1]
    norms = torch.diagonal(gramian, dim1=-2, dim2=-1).clamp_min(0).sqrt()
    spread = (weights.abs() * norms).sum(dim=-1, keepdim=True)
    floor = (_ROUNDING * num_tasks * spread * (spread + norms)).clamp_min(tolerance)
    products = (gramian @ weights[..., None])[..., 0]
    slack = (weights * products).sum(dim=-1, keepdim=True) - products
    feasible = (
        torch.isfinite(weights).all(dim=-1)
        & (weights >= 0).all(dim=-1)
        & ((weights.sum(dim=-1) - 1).abs() <= 1e-12)
    )
    return feasible & (slack <= floor).all(dim=-1)


def _batched_face_minimisers(gramian: Tensor, support: Tensor) -> tuple[Tensor, Tensor]:
    """`face_minimiser` for a batch of faces (`support` `[B, K]` bool, each nonempty) in one
    batched solve of the equilibrated reduced systems (reference: the face's smallest gradient,
    identity rows off the face). Returns the minimisers `[B, K]` and which faces were solved
    (positive diagonal, a nonsingular system, finite result)."""
    batch, num_tasks = gramian.shape[0], gramian.shape[-1]
    rows = torch.arange(batch)
    diagonal = torch.diagonal(gramian, dim1=-2, dim2=-1)
    reference = torch.where(support, diagonal, torch.inf).argmin(dim=-1)
    column = gramian[rows, :, reference]
    corner = gramian[rows, reference, reference]
    others = support & (torch.arange(num_tasks) != reference[:, None])
    mask = others.to(torch.float64)
    reduced = (gramian - column[:, :, None] - column[:, None, :] + corner[:, None, None]) * (
        mask[:, :, None] * mask[:, None, :]
    )
    reduced = reduced + torch.diag_embed(1 - mask)
    squared_scales = torch.diagonal(reduced, dim1=-2, dim2=-1)
    scales = squared_scales.clamp_min(torch.finfo(torch.float64).tiny).sqrt()
    right = (corner[:, None] - column) / scales * mask
    steps, info = torch.linalg.solve_ex(
        reduced / (scales[:, :, None] * scales[:, None, :]), right[..., None]
    )
    steps = steps[..., 0] / scales * mask
    target = steps.clone()
    target[rows, reference] = 1.0 - steps.sum(dim=-1)
    solvable = (info == 0) & (squared_scales > 0).all(dim=-1) & torch.isfinite(target).all(dim=-1)
    return target, solvable


def _lockstep_active_set(
    gramian: Tensor, tolerance: float, max_rounds: int
) -> tuple[Tensor, Tensor, int]:
    """Wolfe's method on every element of a batch of unit-scaled Gramians `[B, K, K]` at once.

    From the smallest gradient's vertex, each round solves every element's current face in one
    batched call (`_batched_face_minimisers`) and then, per element, either steps towards the face minimiser and drops the blocking task (minor cycle),
    or, at the face minimiser, lets the most violating task enter (major cycle) or stops.
    Elements whose face cannot be solved, whose major cycle does not strictly decrease the
    objective, or that are still running after `max_rounds`, are handed back unsettled, as are
    those whose result fails the KKT test (`_kkt_settled`); the caller solves them alone.
    Returns the weights, which elements are settled, and the rounds used."""
    batch, num_tasks = gramian.shape[0], gramian.shape[-1]
    rows = torch.arange(batch)
    diagonal = torch.diagonal(gramian, dim1=-2, dim2=-1).clamp_min(0)
    norms = diagonal.sqrt()
    vertex = diagonal.argmin(dim=-1)
    support = torch.nn.functional.one_hot(vertex, num_tasks).bool()
    weights = support.to(torch.float64)
    objective = diagonal[rows, vertex]
    zero = diagonal == 0  # a zero gradient: the min-norm point is 0, the weight split between them
    has_zero = zero.any(dim=-1)
    weights = torch.where(
        has_zero[:, None], zero / zero.sum(dim=-1, keepdim=True).clamp_min(1), weights
    )
    active = ~has_zero
    failed = torch.zeros(batch, dtype=torch.bool)
    entered = torch.zeros(batch, dtype=torch.bool)
    rounds = 0
    while rounds < max_rounds and bool(active.any()):
        rounds += 1
        target, solvable = _batched_face_minimisers(gramian, support)
        broken = active & ~solvable
        failed |= broken
        active &= ~broken
        inside = (target > 0).eq(support).all(dim=-1)
        # minor cycle: step towards the face minimiser, drop the task that blocks
        stepping = active & ~inside
        shrinking = support & (target <= 0)
        ratios = torch.where(
            shrinking,
            weights / torch.where(shrinking, weights - target, torch.ones_like(weights)),
            torch.inf,
        )
        step, blocking = ratios.min(dim=-1)
        moved = (
            weights + torch.where(stepping, step, 0.0)[:, None] * (target - weights)
        ).clamp_min(0)
        moved[rows[stepping], blocking[stepping]] = 0.0
        moved = moved / moved.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
        weights = torch.where(stepping[:, None], moved, weights)
        support = torch.where(stepping[:, None], moved > 0, support)
        # major cycle at the face minimiser: strict decrease, then pricing
        reached = active & inside
        weights = torch.where(reached[:, None], target, weights)
        products = (gramian @ weights[..., None])[..., 0]
        current = (weights * products).sum(dim=-1)
        stalled = reached & entered & ~(current < objective)
        failed |= stalled
        active &= ~stalled
        reached &= ~stalled
        objective = torch.where(reached, current, objective)
        spread = (weights * norms).sum(dim=-1, keepdim=True)
        floor = (_ROUNDING * num_tasks * spread * (spread + norms)).clamp_min(tolerance)
        candidates = reached[:, None] & ((current[:, None] - products) > floor) & ~support
        entering = torch.where(candidates, products, torch.inf).argmin(dim=-1)
        enters = candidates.any(dim=-1)
        active &= ~(reached & ~enters)
        support[rows[enters], entering[enters]] = True
        entered = torch.where(reached, enters, entered)
    settled = ~failed & ~active & _kkt_settled(gramian, weights, tolerance)
    return weights, settled, rounds


# --------------------------------------------------------------------------------------------
# The affine min-norm point (IMTL-G)
# --------------------------------------------------------------------------------------------


def _decomposition_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for narrower dtypes: float32's eigh fails to converge ("ill-conditioned or too many
    repeated eigenvalues") on unit-scaled Gramians whose entries' squares underflow (e.g. 1e-29 next
    to 1), and the K x K decompositions cost nothing next to the Gramian."""
    return torch.float64 if torch.finfo(dtype).bits < 64 else dtype


def affine_min_norm_weights(
    gramian: Tensor, support: Tensor, /, *, rtol: float | None = None
) -> Tensor:
    """Minimiser of `a^T G a` subject to `sum a = 1` and `a_i = 0` off `support` (may be < 0):
    the min-norm point of the affine hull of the supported gradients. Solved through a
    pseudo-inverse of the bordered KKT system (`rtol` its cutoff, by default `pinv`'s for the
    Gramian's dtype: eps (K + 1)), so singular faces are fine. The pseudo-inverse is computed in
    float64 for narrower dtypes (see `_decomposition_dtype`)."""
    num_tasks = gramian.shape[-1]
    if rtol is None:
        rtol = torch.finfo(gramian.dtype).eps * (num_tasks + 1)
    mask = support.to(gramian.dtype)
    eye = torch.eye(num_tasks, dtype=gramian.dtype, device=gramian.device)
    restricted = gramian * mask[..., :, None] * mask[..., None, :] + eye * (1 - mask)[..., None, :]
    shape = (*gramian.shape[:-2], num_tasks + 1, num_tasks + 1)
    bordered = torch.zeros(shape, dtype=gramian.dtype, device=gramian.device)
    bordered[..., :num_tasks, :num_tasks] = restricted
    bordered[..., :num_tasks, num_tasks] = mask
    bordered[..., num_tasks, :num_tasks] = mask
    rhs = torch.zeros(*shape[:-1], 1, dtype=gramian.dtype, device=gramian.device)
    rhs[..., num_tasks, 0] = 1
    work = _decomposition_dtype(gramian.dtype)
    inverse = torch.linalg.pinv(bordered.to(work), hermitian=True, rtol=rtol)
    return (inverse @ rhs.to(work))[..., :num_tasks, 0].to(gramian.dtype) * mask
