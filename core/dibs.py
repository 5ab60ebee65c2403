"""DiBS: the direction-based bargaining solution (Gupta, Murthy et al., NeurIPS 2025, arXiv:2505.14817).

The mediator knows only each agent's direction oracle `u_i(x) = grad l_i(x) / ||grad l_i(x)||`
(0 where the gradient is 0) and a preferred state `x*_i in argmin l_i`, and iterates

    x_{k+1} = x_k - alpha_k sum_i ||x_k - x*_i|| u_i(x_k)

(minimisation form of the paper's update). Agents further from their preferred state weigh more.
With the distance weights replaced by 1 this is the naive normalised-gradient sum (the paper's
eq. 2), which is unfair: on `x^2, (x-1)^2` every point of (0, 1) is one of its fixed points.

Everything is batched: `x` of shape `[..., n]` runs many starting points (or problems) at once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from core.errors import InvalidHyperparameterError
from core.jacobian import values_and_jacobian
from core.methods.base import safe_reciprocal

Objectives = Callable[[Tensor], Tensor]
StepSchedule = Callable[[int], float]


def constant_step(alpha: float, /) -> StepSchedule:
    """The constant schedule `alpha_k = alpha`."""
    if not alpha > 0:
        raise InvalidHyperparameterError(f"the step size must be positive, got {alpha!r}")
    return lambda k: alpha


def robbins_monro_step(alpha: float, /, *, power: float = 1.0, offset: float = 1.0) -> StepSchedule:
    """`alpha_k = alpha / (k + offset)^power`; with 1/2 < power <= 1, `sum alpha_k = inf` and
    `sum alpha_k^2 < inf` (the conditions of the DiBS paper's Theorem 1.4)."""
    if not alpha > 0 or not 0.5 < power <= 1 or not offset > 0:
        raise InvalidHyperparameterError(
            f"need alpha > 0, 1/2 < power <= 1 and offset > 0 (Robbins-Monro); got {alpha}, {power}, {offset}"
        )
    return lambda k: alpha / (k + offset) ** power


def unit_directions(objectives: Objectives, x: Tensor, /) -> tuple[Tensor, Tensor]:
    """Loss values `[..., K]` and unit gradients `[..., K, n]` (zero rows where a gradient is 0);
    the objective's own `values_and_jacobian` where it has one, autograd otherwise."""
    values, gradients = values_and_jacobian(objectives, x)
    norms = torch.linalg.vector_norm(gradients, dim=-1, keepdim=True)
    return values, gradients * safe_reciprocal(norms)


def dibs_direction(
    objectives: Objectives,
    x: Tensor,
    preferred_states: Tensor,
    /,
    *,
    distance_weighted: bool | Tensor = True,
) -> Tensor:
    """The DiBS descent direction `sum_i ||x - x*_i|| u_i(x)` (or `sum_i u_i(x)` unweighted).

    `distance_weighted` may be a boolean tensor over the rows `x.shape[:-1]`: its False rows take
    the unweighted sum (weights exactly 1), so DiBS and the naive sum can run as one batch."""
    _, units = unit_directions(objectives, x)
    if isinstance(distance_weighted, bool) and not distance_weighted:
        return units.sum(dim=-2)
    distances = torch.linalg.vector_norm(x.detach()[..., None, :] - preferred_states, dim=-1)
    if isinstance(distance_weighted, Tensor):
        distances = torch.where(distance_weighted.to(x.device)[..., None], distances, 1.0)
    return (distances[..., None] * units).sum(dim=-2)


def dibs(
    objectives: Objectives,
    start: Tensor,
    preferred_states: Tensor,
    /,
    *,
    num_steps: int,
    step_size: float | StepSchedule,
    distance_weighted: bool | Tensor = True,
    bounds: tuple[float, float] | None = None,
) -> Tensor:
    """Run DiBS from `start` `[..., n]`; returns the trajectory `[num_steps + 1, ..., n]`.

    `objectives(x)` maps `[..., n]` to the K losses `[..., K]`, treating batch rows independently.
    `preferred_states` is `[K, n]` (shared) or `[..., K, n]` (per batch row). `step_size` is a
    constant or a schedule `k -> alpha_k`. `bounds=(low, high)` projects every iterate onto that
    box (the feasible set S of the paper's bargaining examples). `distance_weighted=False` runs
    the naive normalised-gradient sum instead, for comparison (a boolean tensor over the rows of
    `start`: on its False rows only). The per-task gradients are the objective's own
    `values_and_jacobian` where it has one (`core.values_and_jacobian`), autograd otherwise.
    """
    if num_steps < 0:
        raise InvalidHyperparameterError(f"num_steps must be >= 0, got {num_steps}")
    schedule = step_size if callable(step_size) else constant_step(step_size)
    x = start.detach().clone()
    trajectory = [x]
    for k in range(num_steps):
        direction = dibs_direction(
            objectives, x, preferred_states, distance_weighted=distance_weighted
        )
        x = x - schedule(k) * direction
        if bounds is not None:
            x = x.clamp(*bounds)
        trajectory.append(x)
    return torch.stack(trajectory)


def preferred_states_by_normalized_descent(
    objectives: Objectives,
    start: Tensor,
    /,
    *,
    num_steps: int = 2000,
    step_size: float | StepSchedule | None = None,
    bounds: tuple[float, float] | None = None,
) -> Tensor:
    """Approximate each agent's preferred state from its direction oracle alone (DiBS App. E):
    `x <- x - alpha_k u_i(x)` separately for every task i. Returns `[..., K, n]`.

    `step_size` defaults to the Robbins-Monro schedule `0.5 / (k + 1)`."""
    if step_size is None:
        step_size = robbins_monro_step(0.5, power=1.0)
    schedule = step_size if callable(step_size) else constant_step(step_size)
    values = objectives(start.detach())
    num_tasks = values.shape[-1]
    x = start.detach()[..., None, :].expand(*start.shape[:-1], num_tasks, start.shape[-1]).clone()
    task_index = torch.arange(num_tasks, device=start.device)
    for k in range(num_steps):
        _, units = unit_directions(objectives, x)  # [..., K(copy), K(task), n]
        own = units[..., task_index, task_index, :]
        x = x - schedule(k) * own
        if bounds is not None:
            x = x.clamp(*bounds)
    return x
