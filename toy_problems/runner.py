"""Run a task-balancing method on a batched toy problem: many starting points as one computation.

The update for every batch row is `sum_i w_i grad f_i(x)`, with `w` from a gradient weighting
(on the batched Gramian) or a loss weighting (on the losses), fed to a torch optimiser on `x`.
Rows never interact: Adam and SGD act element-wise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from core.errors import InvalidHyperparameterError
from core.jacobian import batched_task_gradients, gramian
from core.methods.base import GradientWeighting, LossWeighting


@dataclass(frozen=True)
class Trajectory:
    """Iterates `[num_records, ..., n]` and losses `[num_records, ..., K]` at `steps` `[num_records]`."""

    steps: Tensor
    points: Tensor
    losses: Tensor


def combined_direction(method: GradientWeighting | LossWeighting, losses: Tensor, jacobian: Tensor) -> Tensor:
    """`sum_i w_i g_i` per batch row from losses `[..., K]` and the Jacobian `[..., K, n]`."""
    if isinstance(method, GradientWeighting):
        weights = method(gramian(jacobian), losses)
    else:
        weights = method(losses).detach()
    return (weights.to(jacobian.dtype)[..., None] * jacobian).sum(dim=-2)


def run_toy(
    objectives: Callable[[Tensor], Tensor],
    starts: Tensor,
    method: GradientWeighting | LossWeighting,
    /,
    *,
    num_steps: int,
    lr: float = 1e-3,
    optimizer: str = "adam",
    record_every: int = 1,
    progress: Callable[[int], None] | None = None,
) -> Trajectory:
    """Optimise every row of `starts` `[..., n]` for `num_steps` steps; record every few steps.

    `optimizer` is "adam" (torch defaults, as the DiBS-MTL toy trainer) or "sgd".
    """
    x = starts.detach().clone().requires_grad_(True)
    if not method.batch_independent:
        raise InvalidHyperparameterError(
            f"{type(method).__name__} keeps per-task state shared by all rows of a batch, so it cannot run many "
            "starts as one batch; run it on one start at a time with core.mtl_backward"
        )
    if optimizer == "adam":
        opt = torch.optim.Adam([x], lr=lr)
    elif optimizer == "sgd":
        opt = torch.optim.SGD([x], lr=lr)
    else:
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    steps, points, losses = [], [], []
    for step in range(num_steps + 1):
        values, jacobian = batched_task_gradients(objectives, x)
        if step % record_every == 0 or step == num_steps:
            steps.append(step)
            points.append(x.detach().clone())
            losses.append(values)
        if step == num_steps:
            break
        x.grad = combined_direction(method, values, jacobian)
        opt.step()
        if progress is not None:
            progress(step)
    return Trajectory(torch.tensor(steps), torch.stack(points), torch.stack(losses))
