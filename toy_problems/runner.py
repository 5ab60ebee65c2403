"""Run a task-balancing method on a batched toy problem: many starting points as one computation.

The update for every batch row is `sum_i w_i grad f_i(x)`, with `w` from a gradient weighting
(on the batched Gramian) or a loss weighting (on the losses), fed to a torch optimiser on `x`.
Rows never interact: Adam and SGD act element-wise, and every method keeps its state per row
(`reset(batch_shape)`), so stateful methods (uncertainty weighting, DWA, FAMO, Nash-MTL's warm
start) run batched too, exactly as one run per start would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from core.jacobian import batched_task_gradients, gramian
from core.methods.base import GradientWeighting, LossWeighting

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

    `optimizer` is "adam" (torch defaults, as the DiBS-MTL toy trainer) or "sgd"; it owns the
    iterates and the method's own `parameters()` (uncertainty weighting's log-variances learn
    alongside `x`, from the gradient of `sum_i w_i f_i + penalty`, as `core.mtl_backward` gives
    them). `project`, if given, maps the iterates back onto the feasible set after every optimiser
    step (projected gradient descent, e.g. `ZDT.project` onto the box); it must act row by row.

    The method is `reset` for the rows first (its learnable parameters moved to the iterates'
    dtype and device) and follows the lifecycle of `core.methods.base`:
    after each step `after_step` gets the losses at the new iterates (FAMO's logit update), and,
    since each step of a deterministic full-batch problem is a pass over all its data, `end_epoch`
    is called after every step (DWA's ratio is then that of consecutive steps).
    """
    x = starts.detach().clone().requires_grad_(True)
    method.reset(tuple(starts.shape[:-1]))
    own = list(method.to(device=x.device, dtype=x.dtype).parameters())
    opt = make_optimizer([x, *own], optimizer, lr)
    steps, points, losses = [], [], []
    for step in range(num_steps + 1):
        values, jacobian = batched_task_gradients(objectives, x)
        if step % record_every == 0 or step == num_steps:
            steps.append(step)
            points.append(x.detach().clone())
            losses.append(values)
        if step == num_steps:
            break
        opt.zero_grad(set_to_none=True)
        x.grad = _step_direction(method, values, jacobian, own)
        opt.step()
        with torch.no_grad():
            if project is not None:
                x.copy_(project(x))
            if method.needs_post_step_losses:
                method.after_step(objectives(x))
        method.end_epoch()
        if progress is not None:
            progress(step)
    return Trajectory(torch.tensor(steps), torch.stack(points), torch.stack(losses))


def _step_direction(method: GradientWeighting | LossWeighting, values: Tensor, jacobian: Tensor, own: list[Tensor]) -> Tensor:
    """`sum_i w_i g_i` per row; a learnable loss weighting's parameters get the gradient of the
    weighted loss plus its penalty, as the engine gives them."""
    if isinstance(method, GradientWeighting) or not own:
        return combined_direction(method, values, jacobian)
    with torch.enable_grad():
        weights = method(values)
        objective = (weights * values).sum()
        penalty = method.penalty()
        if penalty is not None:
            objective = objective + penalty
        for param, grad in zip(own, torch.autograd.grad(objective, own)):
            param.grad = grad
    return (weights.detach().to(jacobian.dtype)[..., None] * jacobian).sum(dim=-2)


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
