"""Run a task-balancing method on a batched toy problem: many starting points as one computation.

The update for every batch row is `sum_i w_i grad f_i(x)`, with `w` from a gradient weighting
(on the batched Gramian) or a loss weighting (on the losses), fed to a torch optimiser on `x`.
Rows never interact: Adam and SGD act element-wise.

Methods whose state is shared by all rows of a batch (`method.batch_independent` is False:
uncertainty weighting, DWA, FAMO) cannot run that way; `run_toy_sequential` runs them on one
start at a time through `core.mtl_backward`, with the same optimiser and the same records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from core.engine import mtl_backward
from core.errors import InvalidHyperparameterError
from core.jacobian import batched_task_gradients, gramian
from core.methods.base import GradientWeighting, LossWeighting
from core.methods.loss_balancing import FAMO

OPTIMIZERS = ("adam", "sgd")
"""The optimisers of the toy runs: torch's Adam with its defaults (as the DiBS-MTL toy trainer) or plain SGD."""


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


def make_optimizer(params: Iterable[Tensor], optimizer: str, lr: float) -> torch.optim.Optimizer:
    """`torch.optim.Adam` (torch defaults) or `torch.optim.SGD` on `params` with learning rate `lr`."""
    if optimizer == "adam":
        return torch.optim.Adam(list(params), lr=lr)
    if optimizer == "sgd":
        return torch.optim.SGD(list(params), lr=lr)
    raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")


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
    project: Callable[[Tensor], Tensor] | None = None,
) -> Trajectory:
    """Optimise every row of `starts` `[..., n]` for `num_steps` steps; record every few steps.

    `optimizer` is "adam" (torch defaults, as the DiBS-MTL toy trainer) or "sgd". `project`, if
    given, maps the iterates back onto the feasible set after every optimiser step (projected
    gradient descent, e.g. `ZDT.project` onto the box); it must act row by row.
    """
    x = starts.detach().clone().requires_grad_(True)
    if not method.batch_independent:
        raise InvalidHyperparameterError(
            f"{type(method).__name__} keeps per-task state shared by all rows of a batch, so it cannot run many "
            "starts as one batch; run it on one start at a time with run_toy_sequential (or core.mtl_backward)"
        )
    opt = make_optimizer([x], optimizer, lr)
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
        if project is not None:
            with torch.no_grad():
                x.copy_(project(x))
        if progress is not None:
            progress(step)
    return Trajectory(torch.tensor(steps), torch.stack(points), torch.stack(losses))


def run_toy_sequential(
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
    project: Callable[[Tensor], Tensor] | None = None,
) -> Trajectory:
    """`run_toy` for any method, stateful ones included: one row of `starts` at a time.

    Before each row the method is `reset()`, and a fresh optimiser (same kind and `lr`) owns the
    iterate and the method's own `parameters()` (uncertainty weighting's log-variances learn
    alongside `x`). Each step is a normal training step: `core.mtl_backward` on the K losses of
    that row, the optimiser step, the projection, and, for FAMO, `update(new_losses)` with the
    losses recomputed at the new point (no gradient). DWA ends an epoch when the method says so
    (its `window`; with `window=None` nothing ever ends one and its weights stay 1). Records and
    `progress` calls are as in `run_toy` (`progress` once per step of every row).
    """
    if starts.ndim < 1:
        raise InvalidHyperparameterError(f"starts must have shape [..., n], got {tuple(starts.shape)}")
    rows = starts.detach().reshape(-1, starts.shape[-1])
    per_row: list[Trajectory] = []
    for row in rows:
        method.reset()
        x = row.clone().requires_grad_(True)
        opt = make_optimizer([x, *method.parameters()], optimizer, lr)
        steps, points, losses = [], [], []
        for step in range(num_steps + 1):
            if step % record_every == 0 or step == num_steps:
                with torch.no_grad():
                    values = objectives(x)
                steps.append(step)
                points.append(x.detach().clone())
                losses.append(values.detach())
            if step == num_steps:
                break
            opt.zero_grad(set_to_none=True)
            with torch.enable_grad():
                mtl_backward(objectives(x), [x], method)
            opt.step()
            with torch.no_grad():
                if project is not None:
                    x.copy_(project(x))
                if isinstance(method, FAMO):
                    method.update(objectives(x))
            if progress is not None:
                progress(step)
        per_row.append(Trajectory(torch.tensor(steps), torch.stack(points), torch.stack(losses)))
    batch_shape = starts.shape[:-1]
    points = torch.stack([t.points for t in per_row], dim=1)
    losses = torch.stack([t.losses for t in per_row], dim=1)
    return Trajectory(
        per_row[0].steps,
        points.reshape(points.shape[0], *batch_shape, points.shape[-1]),
        losses.reshape(losses.shape[0], *batch_shape, losses.shape[-1]),
    )


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one thread for the duration (restored after). The claims run thousands of
    operations on tensors of a few dozen numbers, where thread hand-offs cost more than the
    arithmetic (and, on a loaded 2-core machine, intra-op threads contend badly)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
