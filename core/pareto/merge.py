"""Stitch Pareto fronts explored from several starting points into one front.

The reference code has no merge step (spec pareto_exploration.md §5.5); this one does what the
notebooks' filters do, plus duplicate removal: keep the points no other point dominates, then
drop collisions (points closer than a tolerance in objective space to one already kept, in input
order, so the result is deterministic).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from core.errors import InvalidHyperparameterError, MTLInputError
from core.metrics import non_dominated_mask


@dataclass(frozen=True)
class MergedFront:
    """`values` `[M, K]` of the merged front, `points` `[M, n]` (None if not given), `sources` and
    `indices` `[M]` (which input front, which row of it), and how many rows were removed as
    `dominated` and as `collisions`."""

    values: Tensor
    points: Tensor | None
    sources: Tensor
    indices: Tensor
    dominated: int
    collisions: int


def merge_fronts(
    fronts: Sequence[Tensor],
    /,
    points: Sequence[Tensor] | None = None,
    *,
    collision_tolerance: float = 1e-6,
) -> MergedFront:
    """Merge objective vectors `fronts[j]` `[N_j, K]` (and, optionally, their parameters
    `points[j]` `[N_j, n]`): non-dominated filtering over the union, then collision removal with
    the Euclidean `collision_tolerance` in objective space (0 keeps exact duplicates apart only if
    they differ)."""
    if not fronts:
        raise MTLInputError("merge_fronts needs at least one front")
    if not collision_tolerance >= 0:
        raise InvalidHyperparameterError(
            f"collision_tolerance must be >= 0, got {collision_tolerance!r}"
        )
    values = [torch.as_tensor(front).detach().to(torch.float64) for front in fronts]
    if any(v.ndim != 2 or v.shape[1] != values[0].shape[1] for v in values):
        raise MTLInputError(
            f"every front must have shape [N_j, K] with the same K, got {[tuple(v.shape) for v in values]}"
        )
    if points is not None and (
        len(points) != len(fronts) or any(len(p) != len(v) for p, v in zip(points, values))
    ):
        raise MTLInputError("points must give one parameter row per objective row of every front")
    union = torch.cat(values)
    sources = torch.cat([torch.full((len(v),), j, dtype=torch.long) for j, v in enumerate(values)])
    indices = torch.cat([torch.arange(len(v)) for v in values])
    keep = non_dominated_mask(union) if len(union) else torch.zeros(0, dtype=torch.bool)
    dominated = int((~keep).sum())
    kept: list[int] = []
    for row in keep.nonzero().flatten().tolist():
        if kept and float((union[kept] - union[row]).norm(dim=1).min()) <= collision_tolerance:
            continue
        kept.append(row)
    collisions = int(keep.sum()) - len(kept)
    chosen = torch.tensor(kept, dtype=torch.long)
    merged_points = None
    if points is not None:
        merged_points = torch.cat([torch.as_tensor(p).detach() for p in points])[chosen]
    return MergedFront(
        union[chosen], merged_points, sources[chosen], indices[chosen], dominated, collisions
    )
