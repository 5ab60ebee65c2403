"""Front-quality indicators for minimisation problems: hypervolume, IGD, IGD+, non-dominance.

Fronts are tensors `[N, K]` of objective vectors (lower is better). Computations run in float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

from core.errors import MTLInputError


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
        raise MTLInputError(f"the reference point has {reference.numel()} objectives but the points have {points.shape[1]}")
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
    raise MTLInputError(f"exact hypervolume is implemented for up to 3 objectives, got {num_objectives}")


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
    front, reference_front = _as_front(front, "front"), _as_front(reference_front, "reference_front")
    return float(torch.cdist(reference_front, front).min(dim=1).values.mean())


def igd_plus(front: Tensor, reference_front: Tensor, /) -> float:
    """IGD+ (Ishibuchi et al. 2015): as IGD with the distance `||max(a - z, 0)||`, which counts only
    how much `a` is worse than the reference point `z` (weakly Pareto compliant)."""
    front, reference_front = _as_front(front, "front"), _as_front(reference_front, "reference_front")
    gaps = (front[None, :, :] - reference_front[:, None, :]).clamp_min(0)
    return float(gaps.norm(dim=-1).min(dim=1).values.mean())


def stationarity_residual(gramian: Tensor, /) -> Tensor:
    """`min_{alpha in simplex} ||sum_i alpha_i g_i||` from the Gramian `[..., K, K]` of the task
    gradients: 0 exactly at Pareto-stationary points (the MGDA min-norm solver, shared)."""
    from core.pareto.stationarity import min_norm_point

    return min_norm_point(gramian).residual
