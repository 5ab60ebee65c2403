"""Gradient accumulation for the engine: one step over a batch that is processed in micro-batches.

A method's weights depend on the whole batch's losses and per-task gradients, so accumulating
`.grad` over micro-batches with one `mtl_backward` call each would solve for other weights on
every micro-batch and sum updates that no single solve would give. `TaskGradientAccumulator`
instead accumulates what the weights are computed from, and solves once:

    accumulator = core.TaskGradientAccumulator(encoder_params, task_params=head_params)
    for inputs, targets in micro_batches:                     # the whole batch, in pieces
        losses = task_losses(model(inputs), targets)           # this micro-batch's mean losses
        accumulator.add(losses, weight=len(inputs) / batch_size)
    info = accumulator.backward(method)                        # writes .grad, like one mtl_backward
    optimizer.step()

How micro-batch losses combine: the whole batch's loss vector is `L = sum_m weight_m l_m`, the
micro-batches' losses `l_m` (each a vector of K task losses) times their `weight` (default 1).
Pass each micro-batch's mean losses with `weight=micro_batch_size / batch_size` (or already scaled
that way, with the default weight 1) and `L` is the whole batch's mean loss; pass sums with weight 1
and it is the sum. The method sees `L` (detached) and the Gramian of the whole batch's per-task
gradients `J = sum_m weight_m J_m`, so the result equals one `mtl_backward` call on the whole batch
(exactly, up to rounding) for every gradient and loss weighting. A nonlinear transform of a task's
loss must be applied to `L`, not to each `l_m`; transform the losses after accumulating, or not at all.

Cost and memory: each `add` computes the K per-task gradients on the shared parameters (as the
engine's full mode does) and the heads' gradient of `sum_i l_i^(m)` (one vector-Jacobian product),
and keeps their running sums: K x D numbers for the D shared parameters, plus the heads'. The
representation ("MTL-R") mode is not offered: its encoder gradient needs every micro-batch's graph
until the weights are known, which is the memory accumulation exists to save.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from core.distributed import Reduction, reduction_for
from core.engine import (
    Call,
    OnNonfinite,
    SkipStep,
    StepContext,
    StepInfo,
    as_param_list,
    check_devices_and_dtypes,
    check_disjoint,
    check_finite_grads,
    check_finite_losses,
    check_loss_scale,
    check_method,
    check_on_nonfinite,
    check_reachability,
    check_strategy,
    combine_full,
    head_coefficients,
    require_reached,
    shared_param_list,
    skipped_info,
    stack_losses,
    task_param_lists,
    vjp,
    write_grads,
)
from core.errors import MTLInputError
from core.jacobian import JacobianStrategy, task_jacobians
from core.methods.base import GradientWeighting, LossWeighting, check_number


class TaskGradientAccumulator:
    """Accumulates per-task gradients over micro-batches, then writes one step's `.grad`.

    `shared_params` and `task_params` are as in `core.mtl_backward` (task i's head parameters must
    be reached by task i's loss only). `add(losses, weight=...)` once per micro-batch; then
    `backward(method)` computes the weights once from the accumulated losses and per-task
    gradients and accumulates into `.grad` what `mtl_backward` on the whole batch would (see the
    module docstring for how the micro-batches' losses combine). `backward` clears the
    accumulated state when it writes or skips a step; if it raises, the state is kept (`reset()`
    drops it).
    """

    def __init__(
        self,
        shared_params: Iterable[Tensor],
        /,
        *,
        task_params: Sequence[Iterable[Tensor]] | None = None,
        jacobian_strategy: JacobianStrategy = "auto",
    ) -> None:
        self._shared = shared_param_list(shared_params)
        self._task_params = (
            None
            if task_params is None
            else [as_param_list(g, f"task_params[{i}]") for i, g in enumerate(task_params)]
        )
        check_disjoint(self._shared, self._task_params or [])
        check_strategy(jacobian_strategy)
        self._strategy: JacobianStrategy = jacobian_strategy
        self.reset()

    def reset(self) -> None:
        """Drop everything accumulated since the last `backward`."""
        self._losses: Tensor | None = None
        self._jacobian: list[Tensor] = []
        self._heads: list[Tensor] = []
        self._micro_batches = 0

    @property
    def micro_batches(self) -> int:
        """How many micro-batches were added since the last `backward` (or `reset`)."""
        return self._micro_batches

    def add(self, losses: Sequence[Tensor] | Tensor, /, *, weight: float = 1.0) -> None:
        """Accumulate one micro-batch: its K task losses (scalars with their graph, as for
        `mtl_backward`) count `weight` times towards the whole batch's losses. Checked like the
        engine's input (an error leaves the accumulated state as it was); non-finite values are
        caught by `backward`, on the whole batch."""
        weight = check_number("weight", weight, minimum=0.0, strict=True)
        loss_vector, roots = stack_losses(losses)
        num_tasks = loss_vector.shape[0]
        if self._losses is not None and self._losses.shape[0] != num_tasks:
            raise MTLInputError(
                f"this micro-batch has {num_tasks} losses, the earlier ones {self._losses.shape[0]}"
            )
        heads = task_param_lists(self._task_params, num_tasks)
        check_devices_and_dtypes(loss_vector, self._shared + [p for group in heads for p in group])
        call = Call(loss_vector, self._shared, heads, None, self._strategy)
        check_reachability(call, roots, representation_mode=False)
        per_param = require_reached(
            task_jacobians(loss_vector, self._shared, strategy=self._strategy), "shared_params"
        )
        blocks = [jac.reshape(num_tasks, -1) for jac in per_param]
        head_params = call.head_params
        # under the heads' contract, the gradient of sum_i l_i on task i's head is grad l_i
        head_grads = (
            vjp(loss_vector, head_params, torch.ones_like(loss_vector)) if head_params else []
        )
        values = loss_vector.detach()
        if self._losses is None:  # everything computed: only now change the state
            self._losses = values * weight
            self._jacobian = [block * weight for block in blocks]
            self._heads = [grad * weight for grad in head_grads]
        else:
            self._losses.add_(values, alpha=weight)
            for total, block in zip(self._jacobian + self._heads, blocks + head_grads):
                total.add_(block, alpha=weight)
        self._micro_batches += 1

    def backward(
        self,
        method: GradientWeighting | LossWeighting,
        /,
        *,
        process_group: Any | None = None,
        on_nonfinite: OnNonfinite = "raise",
        loss_scale: float | None = None,
    ) -> StepInfo:
        """Solve once for the whole batch's weights and accumulate the step into `.grad`.

        Gradient weightings: `sum_i w_i g_i` on the shared parameters, `c_i grad l_i` on task i's
        head (`c_i = w_i` or 1, as `method.head_gradient` declares). Loss weightings: the gradient
        of `sum_i w_i L_i (+ penalty)`: `sum_i w_i g_i`, `w_i grad l_i` on the heads and the method's
        own `parameters()`' gradient. `process_group`, `on_nonfinite` and `loss_scale` are as in
        `mtl_backward` (each rank accumulates its own equal shard's micro-batches; every micro-batch's
        losses scaled by the same `loss_scale`). Returns the `StepInfo` of the
        whole batch (for a loss weighting without `gramian` and `grad_norms`, as the engine's).
        """
        if self._losses is None:
            raise MTLInputError(
                "nothing was accumulated: call add(losses) for each micro-batch before backward(method)"
            )
        check_method(method, "full")
        check_on_nonfinite(on_nonfinite)
        context = StepContext(
            reduction_for(process_group), on_nonfinite, check_loss_scale(loss_scale)
        )
        scaled = context.reduction.losses(self._losses)
        try:
            check_finite_losses(scaled, on_nonfinite)
            losses = context.unscaled(scaled)
            if isinstance(method, LossWeighting):
                pairs, info = self._loss_weighting(method, losses, context)
            else:
                heads = self._head_pairs(context.reduction)
                pairs, info = combine_full(
                    method,
                    context.reduction.jacobian(self._jacobian),
                    losses,
                    self._shared,
                    lambda weights: [
                        (p, c * g) for c, (p, g) in zip(self._head_scale(weights, method), heads)
                    ],
                    context,
                )
        except SkipStep:
            self.reset()
            return skipped_info(context.unscaled(scaled))
        write_grads(pairs)
        self.reset()
        return info

    def _head_pairs(self, reduction: Reduction) -> list[tuple[Tensor, Tensor]]:
        params = [p for group in self._groups() for p in group]
        return list(zip(params, reduction.gradients(self._heads)))

    def _groups(self) -> list[list[Tensor]]:
        assert self._losses is not None
        return task_param_lists(self._task_params, self._losses.shape[0])

    def _head_scale(
        self, weights: Tensor, method: GradientWeighting | LossWeighting
    ) -> list[Tensor]:
        """Task i's coefficient `c_i`, once per head parameter."""
        assert self._losses is not None
        coefficients = head_coefficients(weights, method, self._losses.dtype)
        return [coefficients[i] for i, group in enumerate(self._groups()) for _ in group]

    def _loss_weighting(
        self, method: LossWeighting, losses: Tensor, context: StepContext
    ) -> tuple[list[tuple[Tensor, Tensor]], StepInfo]:
        weights, diagnostics = method.weights(losses)
        coefficients = weights.detach().to(losses.dtype)
        jacobian = context.reduction.jacobian(self._jacobian)
        pairs = [
            (param, (coefficients @ block).view_as(param))
            for param, block in zip(self._shared, jacobian)
        ]
        pairs += [
            (p, c * g)
            for c, (p, g) in zip(
                self._head_scale(weights, method), self._head_pairs(context.reduction)
            )
        ]
        # the method's own parameters, as in the engine: d/dtheta of s (w . L + penalty)
        objective = context.loss_scale * (weights.to(losses.dtype) * losses).sum()
        penalty = method.penalty()
        if penalty is not None:
            objective = objective + context.loss_scale * penalty
        own = list(method.parameters())
        if own and objective.requires_grad:
            grads = torch.autograd.grad(objective, own, allow_unused=True)
            pairs += [(p, g) for p, g in zip(own, grads) if g is not None]
        check_finite_grads(
            pairs, "the weighted loss has a non-finite gradient", context.on_nonfinite
        )
        return pairs, StepInfo(weights=weights.detach(), losses=losses, diagnostics=diagnostics)
