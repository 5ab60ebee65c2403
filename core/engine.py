"""The engine: per-task gradients -> method -> `.grad` on the parameters.

`mtl_backward` is a drop-in replacement for `loss.backward()` in a normal PyTorch loop: it fills
`.grad` (accumulating, like `backward`) and never steps the optimiser.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from core.distributed import Reducer
from core.errors import (
    DeviceMismatchError,
    DtypeMismatchError,
    LossShapeError,
    MTLInputError,
    NonFiniteGradientError,
    NonFiniteLossError,
    NoTasksError,
    UnreachedParameterError,
)
from core.jacobian import JacobianStrategy, task_jacobians
from core.methods.base import GradientWeighting, HeadGradient, LossWeighting


@dataclass(frozen=True)
class StepInfo:
    """What one `mtl_backward` call computed, detached, for logging.

    `gramian` and `grad_norms` are None for loss weightings, which never form per-task
    gradients (that is what makes them cost one backward pass). `diagnostics` holds what the
    method reports about its own solve (e.g. MGDA's KKT residual).
    """

    weights: Tensor
    losses: Tensor
    gramian: Tensor | None = None
    grad_norms: Tensor | None = None
    diagnostics: dict[str, Tensor] = field(default_factory=dict)


def mtl_backward(
    losses: Sequence[Tensor] | Tensor,
    shared_params: Iterable[Tensor],
    method: GradientWeighting | LossWeighting,
    /,
    *,
    task_params: Sequence[Iterable[Tensor]] | None = None,
    representation: Tensor | None = None,
    jacobian_strategy: JacobianStrategy = "auto",
    process_group: Any | None = None,
) -> StepInfo:
    """Combine K task losses with `method` and accumulate the result into `.grad`.

    - Gradient weightings: the per-task gradients `J` (K x D) on the shared parameters (or on
      `representation`, the "MTL-R" mode) give the Gramian `G = J J^T`; the method returns `w`;
      the shared parameters receive `sum_i w_i g_i` (in representation mode `sum_i w_i dl_i/dz` is
      backpropagated once through the encoder). Task i's parameters receive `w_i grad l_i` or
      `grad l_i`, as `method.head_gradient` declares.
    - Loss weightings: one backward pass of `sum_i w_i l_i (+ method.penalty())` into the shared
      parameters, the task parameters and the method's own `parameters()`. `representation` changes
      nothing for them (the gradient is the same).

    Parameters in neither set receive nothing. Bad input raises a `core.errors` exception before
    any `.grad` is written.

    `process_group` (a `torch.distributed` group, e.g. `torch.distributed.group.WORLD`): data
    parallelism. Each rank passes the losses of its own equal shard of the batch; the engine
    all-reduces the losses and the per-task gradients (or, in representation mode, the Gramian)
    before the method runs, so every rank computes the same weights and writes the same `.grad`
    as one process would on the whole batch (`core.distributed` explains what travels).
    """
    loss_vector = _stack_losses(losses)
    reducer = None if process_group is None else Reducer(process_group)
    shared = _as_param_list(shared_params, "shared_params")
    heads = _task_param_lists(task_params, loss_vector.shape[0])
    _check_disjoint(shared, heads)
    if representation is not None and (not isinstance(representation, Tensor) or not representation.requires_grad):
        raise MTLInputError(
            "representation must be the shared features the task losses were computed from (a tensor that "
            "requires grad); pass representation=None to differentiate with respect to shared_params"
        )
    if jacobian_strategy not in ("auto", "loop", "batched"):
        raise MTLInputError(f"jacobian_strategy must be 'auto', 'loop' or 'batched', got {jacobian_strategy!r}")
    tensors = shared + [p for group in heads for p in group] + ([representation] if representation is not None else [])
    _check_devices_and_dtypes(loss_vector, tensors)
    if not isinstance(method, (LossWeighting, GradientWeighting)):
        raise MTLInputError(
            f"method must be a core GradientWeighting or LossWeighting instance, got {type(method).__name__}"
        )
    detached = loss_vector.detach().clone()
    if reducer is not None:  # the whole batch's losses; checked after the reduction, so every rank agrees
        reducer.mean_(detached)
    _check_finite_losses(detached)

    if isinstance(method, LossWeighting):
        grads, weights = _loss_weighting_grads(loss_vector, detached, shared, heads, method, reducer)
        info = StepInfo(weights=weights.detach(), losses=detached)
    else:
        grads, info = _gradient_weighting_grads(
            loss_vector, detached, shared, heads, method, representation, jacobian_strategy, reducer
        )
    for param, grad in grads:  # every check passed: only now touch .grad
        if param.grad is None:
            param.grad = grad.detach().clone()
        else:
            param.grad.add_(grad.detach())
    return info


def _stack_losses(losses: Sequence[Tensor] | Tensor) -> Tensor:
    if isinstance(losses, Tensor):
        if losses.ndim != 1:
            raise LossShapeError(
                f"losses given as one tensor must have shape [K], got {tuple(losses.shape)}; "
                "pass a list of K scalar losses (e.g. [loss] for a single task)"
            )
        items = list(losses.unbind())
    else:
        items = list(losses)
        for i, loss in enumerate(items):
            if not isinstance(loss, Tensor) or loss.ndim != 0:
                shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
                raise LossShapeError(
                    f"the loss of task {i} must be a scalar tensor, got {shape}; reduce it "
                    "(e.g. .mean()) before calling mtl_backward"
                )
    if not items:
        raise NoTasksError("no task losses were given (K = 0); pass at least one scalar loss")
    _check_uniform([loss.device for loss in items], DeviceMismatchError, "task losses")
    _check_uniform([loss.dtype for loss in items], DtypeMismatchError, "task losses")
    if not items[0].is_floating_point():
        raise DtypeMismatchError(f"task losses must be floating point, got {items[0].dtype}")
    stacked = torch.stack(items) if not isinstance(losses, Tensor) else losses
    if not stacked.requires_grad:
        raise UnreachedParameterError("no task loss has a computation graph: nothing can be differentiated")
    return stacked


def _check_finite_losses(values: Tensor) -> None:
    finite = torch.isfinite(values)
    if not bool(finite.all()):
        task = int((~finite).nonzero()[0, 0])
        raise NonFiniteLossError(
            f"the loss of task {task} is {float(values[task]):g}; every task loss must be finite "
            "(check the data, the learning rate, or a log of a non-positive value; with a process_group: on some rank)"
        )


def _check_uniform(values: list, error: type[MTLInputError], what: str) -> None:
    distinct = sorted({str(v) for v in values})
    if len(distinct) > 1:
        raise error(f"{what} mix {', '.join(distinct)}; move everything to one device and dtype")


def _as_param_list(params: Iterable[Tensor], name: str) -> list[Tensor]:
    if isinstance(params, Tensor):
        params = [params]
    listed = list(params)
    for i, p in enumerate(listed):
        if not isinstance(p, Tensor) or not p.requires_grad:
            raise MTLInputError(f"{name}[{i}] must be a tensor that requires grad")
    if len({id(p) for p in listed}) != len(listed):
        raise MTLInputError(f"{name} lists the same parameter twice")
    return listed


def _task_param_lists(task_params: Sequence[Iterable[Tensor]] | None, num_tasks: int) -> list[list[Tensor]]:
    if task_params is None:
        return [[] for _ in range(num_tasks)]
    groups = [_as_param_list(group, f"task_params[{i}]") for i, group in enumerate(task_params)]
    if len(groups) != num_tasks:
        raise MTLInputError(f"task_params has {len(groups)} groups but there are {num_tasks} losses")
    return groups


def _check_disjoint(shared: list[Tensor], heads: list[list[Tensor]]) -> None:
    """A parameter in two sets would receive its gradient twice."""
    owner = {id(p): "shared_params" for p in shared}
    for i, group in enumerate(heads):
        for j, param in enumerate(group):
            if id(param) in owner:
                raise MTLInputError(
                    f"task_params[{i}][{j}] is also in {owner[id(param)]}; every parameter must be in at most one set "
                    "(shared encoder parameters in shared_params, each head's own in its task_params group)"
                )
            owner[id(param)] = f"task_params[{i}]"


def _check_devices_and_dtypes(losses: Tensor, tensors: list[Tensor]) -> None:
    _check_uniform([losses.device] + [t.device for t in tensors], DeviceMismatchError, "losses and parameters")
    _check_uniform([losses.dtype] + [t.dtype for t in tensors], DtypeMismatchError, "losses and parameters")


def _loss_weighting_grads(
    losses: Tensor, detached: Tensor, shared: list[Tensor], heads: list[list[Tensor]], method: LossWeighting,
    reducer: Reducer | None,
) -> tuple[list[tuple[Tensor, Tensor]], Tensor]:
    weights = method(detached)
    objective = (weights.to(losses.dtype) * losses).sum()
    penalty = method.penalty()
    if penalty is not None:
        objective = objective + penalty
    own = list(method.parameters())
    targets = shared + [p for group in heads for p in group] + own
    grads = torch.autograd.grad(objective, targets, allow_unused=True)
    _raise_unreached(grads[: len(shared)], "shared_params")
    for i, group in enumerate(heads):
        start = len(shared) + sum(len(g) for g in heads[:i])
        _raise_unreached(grads[start : start + len(group)], f"task_params[{i}]")
    pairs = [(p, g) for p, g in zip(targets, grads) if g is not None]
    if reducer is not None:  # the whole batch's gradient: the mean of the shards'
        pairs = list(zip([p for p, _ in pairs], reducer.mean_list([g for _, g in pairs])))
    _raise_nonfinite_grads(pairs, "the weighted loss has a non-finite gradient")
    return pairs, weights


def _raise_nonfinite_grads(pairs: list[tuple[Tensor, Tensor]], message: str) -> None:
    """One synchronisation for all gradients; the parameter is named only on the error path."""
    if not pairs or bool(torch.stack([torch.isfinite(g).all() for _, g in pairs]).all()):
        return
    shape = next(tuple(p.shape) for p, g in pairs if not bool(torch.isfinite(g).all()))
    raise NonFiniteGradientError(f"{message} (a parameter of shape {shape})")


def _raise_unreached(grads: Sequence[Tensor | None], name: str) -> None:
    for j, grad in enumerate(grads):
        if grad is None:
            raise UnreachedParameterError(
                f"{name}[{j}] is reached by no task loss; remove it from {name} or check the model's forward"
            )


def _gradient_weighting_grads(
    losses: Tensor,
    detached: Tensor,
    shared: list[Tensor],
    heads: list[list[Tensor]],
    method: GradientWeighting,
    representation: Tensor | None,
    strategy: JacobianStrategy,
    reducer: Reducer | None,
) -> tuple[list[tuple[Tensor, Tensor]], StepInfo]:
    num_tasks = losses.shape[0]
    head_flat = [p for group in heads for p in group]
    wrt = [representation] if representation is not None else shared
    jacobians = task_jacobians(losses, wrt + head_flat, strategy=strategy)
    _raise_unreached(jacobians[: len(wrt)], "representation" if representation is not None else "shared_params")
    head_jacobians = jacobians[len(wrt) :]
    position = 0
    for i, group in enumerate(heads):  # every structural check before the method runs (it may keep state)
        _raise_unreached(head_jacobians[position : position + len(group)], f"task_params[{i}]")
        position += len(group)
    jacobian = torch.cat([jac.reshape(num_tasks, -1) for jac in jacobians[: len(wrt)]], dim=1)
    if reducer is not None and representation is None:  # the whole batch's per-task gradients, one collective
        reduced = reducer.mean_list([jacobian, *head_jacobians])
        jacobian, head_jacobians = reduced[0], reduced[1:]
    elif reducer is not None:
        head_jacobians = reducer.mean_list(list(head_jacobians))
    _raise_nonfinite_rows(jacobian, reducer if representation is not None else None)
    gramian = jacobian @ jacobian.T
    if reducer is not None and representation is not None:  # rows of other ranks' samples: sum, over W^2
        gramian = reducer.sum_(gramian).div_(reducer.size**2)
    if not bool(torch.isfinite(gramian).all()):
        raise NonFiniteGradientError(
            f"the per-task gradients are finite but their inner products overflow {jacobian.dtype} "
            f"(gradient norms {torch.linalg.vector_norm(jacobian.double(), dim=1).tolist()}); use float64 or rescale the losses"
        )
    weights = solve_weights(method, gramian, detached)
    if not bool(torch.isfinite(weights).all()):
        raise NonFiniteGradientError(
            f"{type(method).__name__} returned non-finite weights {weights.tolist()} for the Gramian "
            f"{gramian.tolist()}; this is a defect of the method on this input, please report it"
        )
    combined = weights.to(jacobian.dtype) @ jacobian

    grads: list[tuple[Tensor, Tensor]] = []
    if representation is None:
        offset = 0
        for param in shared:
            grads.append((param, combined[offset : offset + param.numel()].view_as(param)))
            offset += param.numel()
    else:
        encoder = torch.autograd.grad(representation, shared, grad_outputs=combined.view_as(representation), allow_unused=True)
        _raise_unreached(encoder, "shared_params")
        grads.extend(zip(shared, encoder if reducer is None else reducer.mean_list(list(encoder))))

    position = 0
    for i, group in enumerate(heads):
        for param in group:
            row = head_jacobians[position][i]
            grads.append((param, weights[i] * row if method.head_gradient is HeadGradient.WEIGHTED else row))
            position += 1
    _raise_nonfinite_grads(
        grads,
        "a parameter would receive a non-finite gradient although the shared per-task gradients are finite; "
        "check the heads (or the encoder) for overflow or a non-differentiable point",
    )
    info = StepInfo(
        weights=weights.detach(),
        losses=detached,
        gramian=gramian.detach(),
        grad_norms=gramian.diagonal().clamp_min(0).sqrt().detach() if reducer is not None else torch.linalg.vector_norm(jacobian, dim=1).detach(),
        diagnostics=dict(getattr(method, "last_diagnostics", {}) or {}),
    )
    return grads, info


def solve_weights(method: GradientWeighting, gramian: Tensor, losses: Tensor) -> Tensor:
    """The method's weights, computed on the CPU copy of the K x K Gramian when it lives elsewhere.

    On a GPU, the solvers' many tiny kernels and convergence checks (each a synchronisation) cost
    more than copying K^2 numbers once (`python -m benchmarks perf --device cuda` measures both).
    """
    if gramian.device.type == "cpu":
        return method(gramian, losses)
    return method(gramian.cpu(), losses.cpu()).to(gramian.device)


def _raise_nonfinite_rows(jacobian: Tensor, reducer: Reducer | None = None) -> None:
    """Raise if a task's gradient has a NaN or an infinity; with `reducer`, on every rank if on any."""
    finite_rows = torch.isfinite(jacobian).all(dim=1)
    if reducer is None and bool(finite_rows.all()):
        return
    infinite_rows = torch.isinf(jacobian).any(dim=1)
    if reducer is not None:  # agree on the flags, so that every rank raises or none does
        flags = reducer.max_(torch.stack([~finite_rows, infinite_rows]).to(jacobian.dtype))
        finite_rows, infinite_rows = flags[0] == 0, flags[1] > 0
    if bool(finite_rows.all()):
        return
    # An infinite derivative in task i's graph turns into 0 * inf = NaN in the other rows (autograd
    # sends them zero gradients through the same nodes), so rows with an infinity name the culprit.
    culprits = infinite_rows if bool(infinite_rows.any()) else ~finite_rows
    tasks = ", ".join(str(int(i)) for i in culprits.nonzero()[:, 0])
    kind = "infinity" if bool(infinite_rows.any()) else "NaN"
    raise NonFiniteGradientError(
        f"the gradient of task {tasks} contains {kind} although the losses are finite; check for "
        "overflow or a non-differentiable point (e.g. sqrt or log at 0) in that task's loss"
    )
