"""The measures every toy front end reports, once: Pareto-stationarity residuals and distances to
a sampled front."""

from __future__ import annotations

import torch
from torch import Tensor

from core.jacobian import gramian
from core.pareto.stationarity import stationarity
from toy_problems.base import Problem


def stationarity_residuals(
    problem: Problem, points: Tensor, *, chunk: int = 4096
) -> tuple[Tensor, Tensor]:
    """Untransformed losses `[..., K]` and stationarity residuals `min_{a in simplex} ||sum_i a_i
    grad f_i(x)||` `[...]` at points `[..., n]` (float64 on the CPU is what the callers pass).

    On problems with a `project` (box constraints), coordinates at a bound where every task's
    gradient points out of the box are dropped from the Jacobian before the residual: there the
    projected iteration cannot move, and the point is stationary for the constrained problem.
    """
    flat = points.reshape(-1, points.shape[-1])
    box = (
        problem.lower_upper(dtype=flat.dtype, device=flat.device)
        if hasattr(problem, "project")
        else None
    )
    losses, residuals = [], []
    for part in flat.split(chunk):
        values, jacobian = problem.values_and_jacobian(part)
        if box is not None:
            lower, upper = box
            blocked = ((part <= lower) & (jacobian >= 0).all(dim=-2)) | (
                (part >= upper) & (jacobian <= 0).all(dim=-2)
            )
            jacobian = jacobian.masked_fill(blocked[..., None, :], 0.0)
        losses.append(values)
        residuals.append(stationarity(gramian(jacobian))[1])
    shape = points.shape[:-1]
    return torch.cat(losses).reshape(*shape, -1), torch.cat(residuals).reshape(shape)


def distance_to_front(losses: Tensor, front: Tensor, *, budget: int = 4_000_000) -> Tensor:
    """Euclidean distance in objective space from each point `[..., K]` to a front sample `[m, K]`
    (float64; computed in chunks of at most `budget` pairwise distances)."""
    flat = losses.reshape(-1, losses.shape[-1]).to(torch.float64)
    front = front.to(device=flat.device, dtype=torch.float64)
    chunk = max(1, budget // max(1, front.shape[0]))
    parts = [torch.cdist(part, front).amin(dim=-1) for part in flat.split(chunk)]
    return torch.cat(parts).reshape(losses.shape[:-1])
