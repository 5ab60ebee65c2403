"""Front-quality indicators and multi-task summary scores.

- Fronts are tensors `[N, K]` of objective vectors (lower is better): hypervolume, IGD, IGD+,
  non-dominance. Computations run in float64.
- Benchmark scores against a base (spec random_weighting_baselines_metrics.md §4): `delta_m`
  (flat over metrics, lower is better), `delta_p` (task-balanced, higher is better) and
  `mean_rank` (recomputed on the compared methods).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
from torch import Tensor

from core.errors import MTLInputError

_Numbers = Sequence[float] | Tensor  # one value per metric
_Flags = Sequence[bool] | Tensor  # per metric: whether higher is better


def _as_front(points: Tensor, name: str) -> Tensor:
    points = torch.as_tensor(points).detach().to(torch.float64)
    if points.ndim != 2:
        raise MTLInputError(f"{name} must have shape [N, K], got {tuple(points.shape)}")
    if not bool(torch.isfinite(points).all()):
        raise MTLInputError(f"{name} contains NaN or infinite objective values")
    return points


def dominates(a: Tensor, b: Tensor, /) -> Tensor:
    """`a` Pareto-dominates `b` (no worse in every objective, better in one), broadcast over rows."""
    return (a <= b).all(dim=-1) & (a < b).any(dim=-1)


def non_dominated_mask(points: Tensor, /) -> Tensor:
    """Rows of `points` `[N, K]` that no other row dominates (duplicates are all kept)."""
    points = _as_front(points, "points")
    return ~dominates(points[None, :, :], points[:, None, :]).any(dim=1)


def hypervolume(points: Tensor, reference: Tensor, /) -> float:
    """Lebesgue measure of the region dominated by `points` `[N, K]` and bounded by `reference`
    `[K]` (points not strictly better than the reference in every objective contribute nothing).

    Exact for K = 1, 2 (sweep, O(N log N)) and K = 3 (a sweep over the third objective of 2-D
    hypervolumes, O(N^2 log N)); K > 3 raises (use a dedicated library, e.g. moocore).
    """
    points = _as_front(points, "points")
    reference = torch.as_tensor(reference, dtype=torch.float64).reshape(-1)
    if reference.numel() != points.shape[1]:
        raise MTLInputError(
            f"the reference point has {reference.numel()} objectives but the points have {points.shape[1]}"
        )
    points = points[(points < reference).all(dim=1)]
    if points.shape[0] == 0:
        return 0.0
    num_objectives = points.shape[1]
    if num_objectives == 1:
        return float(reference[0] - points[:, 0].min())
    if num_objectives == 2:
        return _hypervolume_2d(points, reference)
    if num_objectives == 3:
        return _hypervolume_3d(points, reference)
    raise MTLInputError(
        f"exact hypervolume is implemented for up to 3 objectives, got {num_objectives}"
    )


def _hypervolume_2d(points: Tensor, reference: Tensor) -> float:
    order = torch.argsort(points[:, 0], stable=True)
    total, best_second = 0.0, float(reference[1])
    for first, second in points[order].tolist():
        if second < best_second:  # a new step of the staircase
            total += (float(reference[0]) - first) * (best_second - second)
            best_second = second
    return total


def _hypervolume_3d(points: Tensor, reference: Tensor) -> float:
    order = torch.argsort(points[:, 2], stable=True)
    ordered = points[order]
    levels = ordered[:, 2].tolist() + [float(reference[2])]
    total = 0.0
    for index in range(ordered.shape[0]):
        height = levels[index + 1] - levels[index]
        if height > 0:
            total += height * _hypervolume_2d(ordered[: index + 1, :2], reference[:2])
    return total


def igd(front: Tensor, reference_front: Tensor, /) -> float:
    """Inverted generational distance: the mean over reference points of the Euclidean distance
    to the nearest point of `front`."""
    front, reference_front = (
        _as_front(front, "front"),
        _as_front(reference_front, "reference_front"),
    )
    return float(torch.cdist(reference_front, front).min(dim=1).values.mean())


def igd_plus(front: Tensor, reference_front: Tensor, /) -> float:
    """IGD+ (Ishibuchi et al. 2015): as IGD with the distance `||max(a - z, 0)||`, which counts only
    how much `a` is worse than the reference point `z` (weakly Pareto compliant)."""
    front, reference_front = (
        _as_front(front, "front"),
        _as_front(reference_front, "reference_front"),
    )
    gaps = (front[None, :, :] - reference_front[:, None, :]).clamp_min(0)
    return float(gaps.norm(dim=-1).min(dim=1).values.mean())


def stationarity_residual(gramian: Tensor, /) -> Tensor:
    """`min_{alpha in simplex} ||sum_i alpha_i g_i||` from the Gramian `[..., K, K]` of the task
    gradients: 0 exactly at Pareto-stationary points (the MGDA min-norm solver, shared)."""
    from core.pareto.stationarity import min_norm_point

    return min_norm_point(gramian).residual


def _relative_changes(values: _Numbers, base: _Numbers, higher_is_better: _Flags) -> Tensor:
    """`(-1)^{delta_k} (M_k - B_k) / B_k` per metric: positive means worse than the base."""
    values_t = torch.as_tensor(values, dtype=torch.float64)
    base_t = torch.as_tensor(base, dtype=torch.float64)
    higher = torch.as_tensor(higher_is_better, dtype=torch.bool)
    if values_t.ndim != 1 or values_t.shape != base_t.shape or higher.shape != values_t.shape:
        raise MTLInputError(
            f"values, base and higher_is_better must be 1-D of one length, got shapes {tuple(values_t.shape)}, "
            f"{tuple(base_t.shape)}, {tuple(higher.shape)}"
        )
    if values_t.numel() == 0:
        raise MTLInputError("at least one metric is needed")
    if not bool(torch.isfinite(values_t).all()) or not bool(torch.isfinite(base_t).all()):
        raise MTLInputError(
            f"metrics must be finite, got values {values_t.tolist()} and base {base_t.tolist()}"
        )
    if bool((base_t == 0).any()):
        raise MTLInputError(f"base values must be non-zero (they divide), got {base_t.tolist()}")
    sign = torch.where(higher, -1.0, 1.0).to(torch.float64)
    return sign * (values_t - base_t) / base_t


def delta_m(values: _Numbers, base: _Numbers, higher_is_better: _Flags, /) -> float:
    """Delta_m% = (100 / K) sum_k (-1)^{delta_k} (M_k - B_k) / B_k over all K metrics, with
    delta_k = 1 where higher is better (Nash-MTL §6, FAMO §5.2). Lower is better; 0 = the base."""
    return float(100.0 * _relative_changes(values, base, higher_is_better).mean())


def delta_p(
    values: _Numbers, base: _Numbers, higher_is_better: _Flags, tasks: Sequence[Hashable], /
) -> float:
    """Delta_p = 100 (1/T) sum_t (1/M_t) sum_m (-1)^{w_tm} (B_tm - N_tm) / B_tm: the metrics are
    averaged within each task first, then over the T tasks (LibMTL `count_improvement`, with the
    sign of LibMTL and DB-MTL, not the Random Weighting paper's typo). Higher is better.

    `tasks[k]` names the task of metric k.
    """
    changes = -_relative_changes(values, base, higher_is_better)
    if len(tasks) != changes.numel():
        raise MTLInputError(
            f"tasks must name the task of each of the {changes.numel()} metrics, got {len(tasks)}"
        )
    per_task: dict[Hashable, list[float]] = {}
    for change, task in zip(changes.tolist(), tasks):
        per_task.setdefault(task, []).append(change)
    return 100.0 * sum(sum(v) / len(v) for v in per_task.values()) / len(per_task)


def mean_rank(table: Sequence[Sequence[float]] | Tensor, higher_is_better: _Flags, /) -> Tensor:
    """The mean over metrics of each method's rank among the compared methods: `table [M, K]`
    holds method m's value of metric k; rank 1 is the best; ties share their mean rank. Lower is
    better; 1 means first on every metric. Depends on the set of methods compared."""
    values = torch.as_tensor(table, dtype=torch.float64)
    higher = torch.as_tensor(higher_is_better, dtype=torch.bool)
    if values.ndim != 2 or values.shape[1] != higher.numel() or values.shape[0] == 0:
        raise MTLInputError(
            f"table must be [methods, metrics] with {higher.numel()} metrics, got shape {tuple(values.shape)}"
        )
    if not bool(torch.isfinite(values).all()):
        raise MTLInputError("mean_rank needs finite metric values")
    oriented = torch.where(higher, -values, values)  # smaller is better in every column
    better = (oriented.unsqueeze(0) < oriented.unsqueeze(1)).sum(
        dim=1
    )  # [M, K]: methods strictly better
    ties = (oriented.unsqueeze(1) == oriented.unsqueeze(0)).sum(dim=1)  # including itself
    ranks = better.to(torch.float64) + (ties.to(torch.float64) + 1) / 2.0
    return ranks.mean(dim=1)
