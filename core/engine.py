"""The engine: per-task gradients -> method -> `.grad` on the parameters.

`mtl_backward` is a drop-in replacement for `loss.backward()` in a normal PyTorch loop: it fills
`.grad` (accumulating, like `backward`) and never steps the optimiser. `core.accumulation` builds
gradient accumulation over micro-batches on the same pieces.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn

import torch
from torch import Tensor
from torch.autograd.graph import Node

from core.distributed import Reduction, reduction_for
from core.errors import (
    DeviceMismatchError,
    DtypeMismatchError,
    LossShapeError,
    MetaDeviceError,
    MTLInputError,
    NonFiniteGradientError,
    NonFiniteLossError,
    NoSharedParametersError,
    NoTasksError,
    UnreachedParameterError,
    UnreachedTaskError,
    UnsupportedEngineModeError,
)
from core.jacobian import (
    JacobianStrategy,
    task_jacobians,
    task_roots,
    tasks_reaching,
    unreached_inputs,
)
from core.methods.base import (
    GradientWeighting,
    HeadGradient,
    JacobianAggregation,
    LossWeighting,
    WeightsResult,
)

logger = logging.getLogger(__name__)

OnNonfinite = Literal["raise", "skip"]
"""What a non-finite loss or gradient does: raise `NonFiniteLossError` / `NonFiniteGradientError`,
or skip the step (no `.grad` written, `StepInfo.skipped`)."""


@dataclass(frozen=True)
class StepInfo:
    """What one `mtl_backward` call computed, detached, for logging.

    `gramian` and `grad_norms` are None for loss weightings, which never form per-task
    gradients (that is what makes them cost one backward pass). For Jacobian aggregations
    `weights` holds the heads' weights (`AggregationResult.head_weights`) and `gramian` is None
    (they never need it, and it would cost K times their own O(K n) work); `grad_norms` is set.
    `diagnostics` holds what the method reports about its own solve (e.g. MGDA's KKT residual).

    `skipped` is True when `on_nonfinite="skip"` dropped the step because a loss or a gradient was
    not finite: then no `.grad` was written, `losses` holds the (whole batch's) loss values that
    were seen (possibly non-finite), `weights` is K NaNs (no weights were applied), `gramian` and
    `grad_norms` are None and `diagnostics` is empty.
    """

    weights: Tensor
    losses: Tensor
    gramian: Tensor | None = None
    grad_norms: Tensor | None = None
    diagnostics: dict[str, Tensor] = field(default_factory=dict)
    skipped: bool = False


def mtl_backward(
    losses: Sequence[Tensor] | Tensor,
    shared_params: Iterable[Tensor],
    method: GradientWeighting | LossWeighting | JacobianAggregation,
    /,
    *,
    task_params: Sequence[Iterable[Tensor]] | None = None,
    representation: Tensor | None = None,
    jacobian_strategy: JacobianStrategy = "auto",
    process_group: Any | None = None,
    on_nonfinite: OnNonfinite = "raise",
    loss_scale: float | None = None,
    retain_graph: bool = False,
) -> StepInfo:
    """Combine K task losses with `method` and accumulate the result into `.grad`.

    - Gradient weightings: the per-task gradients `J` (K x D) on the shared parameters (or on
      `representation`, the "MTL-R" mode) give the Gramian `G = J J^T`; the method returns `w`;
      the shared parameters receive `sum_i w_i g_i` (in representation mode `sum_i w_i dl_i/dz` is
      backpropagated once through the encoder). The heads get one vector-Jacobian product of
      `sum_i c_i l_i` after the weights are known, `c_i = w_i` or `c_i = 1` as
      `method.head_gradient` declares (WEIGHTED or RAW); in representation mode with WEIGHTED
      heads one backward pass of `sum_i w_i l_i` serves the encoder and the heads together.
      Per-task gradients are taken on the shared parameters (or the representation) only.
    - Loss weightings: one backward pass of `sum_i w_i l_i (+ method.penalty())` into the shared
      parameters, the task parameters and the method's own `parameters()`. `representation` changes
      nothing for them (the gradient is the same).
    - Jacobian aggregations (`JacobianAggregation`: GradDrop, MoCo, DB-MTL, ExcessMTL): in full
      mode the per-task gradient blocks on the shared parameters are concatenated once into
      `J [K, n]` (n the number of shared parameter entries), the method maps `J` and the losses to
      the update `d [n]`, which is split back into the shared parameters' `.grad`. Memory: K n
      numbers for `J`, and for a moment twice that while the `[K, n_j]` blocks are concatenated,
      plus what the method keeps (MoCo, DB-MTL and ExcessMTL keep another K n); a gradient
      weighting never concatenates (it sums the blocks' Gramians). In representation mode `J` is
      the `[K, numel]` gradient on the features and `d`, reshaped like them, is backpropagated once
      through the encoder. The heads get one vector-Jacobian product of `sum_i c_i l_i`, `c_i` the
      method's `head_weights` (WEIGHTED) or 1 (RAW). `StepInfo.weights` is the `head_weights`.
      A method with learnable parameters of its own may return an `auxiliary_loss(J, losses)`
      (RotoGrad's alignment of its rotations, a graph to those parameters only): the engine
      backpropagates it into `method.parameters()` alone, times `loss_scale`, as it does a loss
      weighting's `penalty()`, and reports its value as `StepInfo.diagnostics["auxiliary_loss"]`.

    `task_params[i]` (task i's own head parameters) must be reached by task i's loss only: the
    heads receive the gradient of `sum_i c_i l_i`, so another task j whose loss also reaches them
    would add its term `c_j grad l_j` to theirs. Parameters in neither set receive nothing. As
    with `backward`, the call's last backward pass frees the saved activations it goes through:
    the whole graph for loss weightings and in representation mode, for gradient weightings in
    full mode without heads; in full mode with heads, the per-task pass must keep the graph for
    the heads' pass, which frees the heads' part only, and the encoder's activations go when the
    losses do (a loop's next assignment). `retain_graph=True` keeps everything, so the losses can
    still be differentiated after the call.

    Every task's loss must reach at least one shared parameter (in representation mode: the
    representation), else `UnreachedTaskError` names the task (a detached loss, or features of
    another forward pass, would otherwise silently get a zero gradient). Bad input raises a
    `core.errors` exception before any `.grad` is written: also an empty `shared_params` (e.g. a
    `model.parameters()` generator that was already consumed), losses on the meta device, and a
    method whose `engine_modes` lacks the mode used ("full", or "representation" when
    `representation` is given).

    `on_nonfinite`: "raise" (default) raises `NonFiniteLossError` or `NonFiniteGradientError` for a
    non-finite loss, per-task gradient, Gramian or written gradient (Jacobian aggregations: the
    rows of `J` are checked, before the method runs); "skip" then leaves every
    `.grad` untouched and returns a `StepInfo` with `skipped=True` instead. A step skipped for a
    non-finite written gradient (found after the solve: the heads' gradients, or a loss weighting's
    weighted gradient) has already advanced a stateful method's state; the other checks run before
    the method. A method returning non-finite weights (or a non-finite update) for finite input is
    a defect and always raises.

    `loss_scale`: the factor `s` by which the given losses were multiplied (mixed precision's loss
    scaling). The method then sees the unscaled losses `l / s` and Gramian `G / s^2` (a Jacobian
    aggregation: `J / s`), so its weights (its update) are those of the unscaled problem, while
    `.grad` receives `s` times the update, which the scaler divides by `s` again; `StepInfo`
    holds unscaled values. Without it, a method whose update does not grow with a common factor
    on every loss (DiBS-MTL, Nash-MTL, the normalised sum) would have its update divided by `s`.
    With `torch.amp.GradScaler`, whose scaled losses overflow now and then:

        scaled = [scaler.scale(loss) for loss in losses]
        info = core.mtl_backward(scaled, shared, method, task_params=heads,
                                 on_nonfinite="skip", loss_scale=scaler.get_scale())
        if info.skipped:  # the scaler saw no gradient: back its scale off by hand, skip the step
            scaler.update(scaler.get_scale() * scaler.get_backoff_factor())
        else:
            scaler.step(optimizer)
            scaler.update()

    `process_group` (a `torch.distributed` group, e.g. `torch.distributed.group.WORLD`): data
    parallelism. Each rank passes the losses of its own equal shard of the batch; the engine
    all-reduces the losses and the per-task gradients (or, in representation mode, the Gramian)
    before the method runs, so every rank computes the same weights and writes the same `.grad`
    as one process would on the whole batch (`core.distributed` explains what travels). Every
    value check runs on reduced numbers, so all ranks raise, or skip, together. Jacobian
    aggregations: in full mode `J` is reduced as for gradient weightings and every rank runs the
    method on the whole batch's `J` (a random method, GradDrop, must then be given a generator
    seeded alike on every rank, so that every rank draws the same masks); in representation mode
    with a process group they are refused (`MTLInputError`): each rank holds only its own samples'
    columns of `J`, and a nonlinear map of the whole batch's `J` cannot be formed from the local
    ones without gathering every rank's columns.

    Speed: the K x K weight solves are tiny and latency-bound. On a shared or busy machine, call
    `torch.set_num_threads(1)` for small models: a small Nash-MTL engine call measured 40 ms with
    2 threads on a busy 2-core machine and 1.3 ms with 1 thread (thread hand-offs, not arithmetic).
    """
    call = _validated_call(
        losses, shared_params, method, task_params, representation, jacobian_strategy, on_nonfinite
    )
    if (
        isinstance(method, JacobianAggregation)
        and representation is not None
        and process_group is not None
    ):
        raise MTLInputError(
            f"{type(method).__name__} aggregates the per-task gradients themselves, and in representation mode each "
            "rank holds only its own samples' columns of them, which do not combine into the whole batch's "
            "aggregation; use full mode (representation=None: the per-task gradients on the shared parameters are "
            "all-reduced) or process_group=None"
        )
    if not isinstance(retain_graph, bool):
        raise MTLInputError(f"retain_graph must be True or False, got {retain_graph!r}")
    context = StepContext(
        reduction_for(process_group), on_nonfinite, check_loss_scale(loss_scale), retain_graph
    )
    scaled = context.reduction.losses(
        call.losses.detach().clone()
    )  # the whole batch's losses, every rank alike
    try:
        check_finite_losses(scaled, on_nonfinite)
        detached = context.unscaled(scaled)
        if isinstance(method, LossWeighting):
            grads, info = _loss_weighting_step(call, detached, method, context)
        elif call.representation is None:
            grads, info = _full_mode_step(call, detached, method, context)
        elif isinstance(method, JacobianAggregation):
            grads, info = _representation_aggregation_step(call, detached, method, context)
        else:
            grads, info = _representation_mode_step(call, detached, method, context)
    except SkipStep as skip:
        logger.debug("mtl_backward skipped a step: %s", skip)
        return skipped_info(context.unscaled(scaled))
    write_grads(grads)  # every check passed: only now touch .grad
    return info


@dataclass(frozen=True)
class StepContext:
    """How one step treats its numbers: the reduction strategy (local or over a process group),
    what a non-finite value does, and the loss scale to divide out before the method runs."""

    reduction: Reduction
    on_nonfinite: OnNonfinite = "raise"
    loss_scale: float = 1.0
    retain_graph: bool = True
    """Whether the step's last backward pass keeps the graph (the earlier ones always do)."""

    def unscaled(self, values: Tensor, /, power: int = 1) -> Tensor:
        """`values / loss_scale**power` (one division at a time: `s^2` may underflow the dtype)."""
        for _ in range(power if self.loss_scale != 1.0 else 0):
            values = values / self.loss_scale
        return values


def check_loss_scale(loss_scale: Any) -> float:
    """A loss scale: None (no scaling) or a positive finite number."""
    if loss_scale is None:
        return 1.0
    if isinstance(loss_scale, Tensor) and loss_scale.numel() == 1:
        loss_scale = float(loss_scale)
    if (
        isinstance(loss_scale, bool)
        or not isinstance(loss_scale, (int, float))
        or not 0 < loss_scale < float("inf")
    ):
        raise MTLInputError(
            f"loss_scale must be a positive finite number (e.g. scaler.get_scale()) or None, got {loss_scale!r}"
        )
    return float(loss_scale)


# ---- validation: every structural check, before anything is computed ----------------------


@dataclass(frozen=True)
class Call:
    """A validated engine call: the losses [K] (with their graph), the parameter sets, the mode."""

    losses: Tensor
    shared: list[Tensor]
    heads: list[list[Tensor]]
    representation: Tensor | None
    strategy: JacobianStrategy

    @property
    def num_tasks(self) -> int:
        return self.losses.shape[0]

    @property
    def head_params(self) -> list[Tensor]:
        return [p for group in self.heads for p in group]


def _validated_call(
    losses: Sequence[Tensor] | Tensor,
    shared_params: Iterable[Tensor],
    method: Any,
    task_params: Sequence[Iterable[Tensor]] | None,
    representation: Tensor | None,
    jacobian_strategy: Any,
    on_nonfinite: Any,
) -> Call:
    loss_vector, roots = stack_losses(losses)
    shared = shared_param_list(shared_params)
    heads = task_param_lists(task_params, loss_vector.shape[0])
    check_disjoint(shared, heads)
    if representation is not None and (
        not isinstance(representation, Tensor) or not representation.requires_grad
    ):
        raise MTLInputError(
            "representation must be the shared features the task losses were computed from (a tensor that "
            "requires grad); pass representation=None to differentiate with respect to shared_params"
        )
    check_strategy(jacobian_strategy)
    check_on_nonfinite(on_nonfinite)
    tensors = (
        shared
        + [p for group in heads for p in group]
        + ([representation] if representation is not None else [])
    )
    check_devices_and_dtypes(loss_vector, tensors)
    check_method(method, "full" if representation is None else "representation")
    call = Call(loss_vector, shared, heads, representation, jacobian_strategy)
    per_task = isinstance(
        method, (GradientWeighting, JacobianAggregation)
    )  # differentiated per task
    check_reachability(call, roots, representation_mode=representation is not None and per_task)
    return call


def stack_losses(losses: Sequence[Tensor] | Tensor) -> tuple[Tensor, list[Node | None]]:
    """The losses as one vector [K] with its graph, and each task's autograd root (`task_roots`)."""
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
    if items[0].device.type == "meta":
        raise MetaDeviceError(
            "the task losses are on the meta device, which holds shapes but no values; run the model on a real "
            "device (materialise it with model.to_empty(device=...) and initialise its parameters)"
        )
    stacked = losses if isinstance(losses, Tensor) else torch.stack(items)
    if not stacked.requires_grad:
        raise UnreachedTaskError(
            "no task loss has a computation graph (each is detached or computed without grad): nothing can be differentiated"
        )
    return stacked, task_roots(losses if isinstance(losses, Tensor) else items)


def _check_uniform(values: Sequence[object], error: type[MTLInputError], what: str) -> None:
    distinct = sorted({str(v) for v in values})
    if len(distinct) > 1:
        raise error(f"{what} mix {', '.join(distinct)}; move everything to one device and dtype")


def as_param_list(params: Iterable[Tensor], name: str) -> list[Tensor]:
    """`params` as a list of distinct tensors that require grad (one tensor counts as a list of one)."""
    if isinstance(params, Tensor):
        params = [params]
    listed = list(params)
    for i, p in enumerate(listed):
        if not isinstance(p, Tensor) or not p.requires_grad:
            raise MTLInputError(f"{name}[{i}] must be a tensor that requires grad")
    if len({id(p) for p in listed}) != len(listed):
        raise MTLInputError(f"{name} lists the same parameter twice")
    return listed


def shared_param_list(params: Iterable[Tensor]) -> list[Tensor]:
    """The shared parameters as a non-empty list."""
    shared = as_param_list(params, "shared_params")
    if not shared:
        raise NoSharedParametersError(
            "shared_params is empty: pass the parameters the tasks share (as a list: a generator such as "
            "model.parameters() can be iterated once, so a second call would see none)"
        )
    return shared


def task_param_lists(
    task_params: Sequence[Iterable[Tensor]] | None, num_tasks: int
) -> list[list[Tensor]]:
    """The K groups of task (head) parameters (K empty groups for None)."""
    if task_params is None:
        return [[] for _ in range(num_tasks)]
    groups = [as_param_list(group, f"task_params[{i}]") for i, group in enumerate(task_params)]
    if len(groups) != num_tasks:
        raise MTLInputError(
            f"task_params has {len(groups)} groups but there are {num_tasks} losses"
        )
    return groups


def check_disjoint(shared: list[Tensor], heads: list[list[Tensor]]) -> None:
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


def check_strategy(strategy: Any) -> None:
    if strategy not in ("auto", "loop", "batched"):
        raise MTLInputError(
            f"jacobian_strategy must be 'auto', 'loop' or 'batched', got {strategy!r}"
        )


def check_on_nonfinite(on_nonfinite: Any) -> None:
    if on_nonfinite not in ("raise", "skip"):
        raise MTLInputError(f"on_nonfinite must be 'raise' or 'skip', got {on_nonfinite!r}")


def check_devices_and_dtypes(losses: Tensor, tensors: list[Tensor]) -> None:
    _check_uniform(
        [losses.device] + [t.device for t in tensors], DeviceMismatchError, "losses and parameters"
    )
    _check_uniform(
        [losses.dtype] + [t.dtype for t in tensors], DtypeMismatchError, "losses and parameters"
    )


def check_method(method: Any, mode: str) -> None:
    """A core method that supports the engine mode `mode`."""
    if not isinstance(method, (LossWeighting, GradientWeighting, JacobianAggregation)):
        raise MTLInputError(
            "method must be a core method instance: a GradientWeighting or LossWeighting (weights from the Gramian "
            f"or the losses) or a JacobianAggregation (an update from the per-task gradients), got {type(method).__name__}"
        )
    if mode not in method.engine_modes:
        other = (
            "pass representation=None"
            if mode == "representation"
            else "pass representation=features"
        )
        raise UnsupportedEngineModeError(
            f"{type(method).__name__} supports the engine modes {sorted(method.engine_modes)}, not {mode!r}; {other} "
            "or choose another method"
        )


def check_reachability(
    call: Call, roots: Sequence[Node | None], *, representation_mode: bool
) -> None:
    """Refuse, from the graph's structure, a task that reaches no shared parameter (or not the
    representation), a shared parameter the representation does not reach, and a head parameter
    that no loss reaches: all before any method runs (a method may keep state)."""
    features = (
        call.representation if representation_mode else None
    )  # set whenever representation_mode is
    targets = call.shared if features is None else [features]
    what = "any of shared_params" if features is None else "the representation"
    reached = tasks_reaching(roots, targets)
    if not all(reached):
        tasks = ", ".join(str(i) for i, ok in enumerate(reached) if not ok)
        raise UnreachedTaskError(
            f"the loss of task {tasks} does not reach {what}, so its gradient would be zero and it would silently "
            "drop out of the step; check that it is computed from this forward pass's shared features (and is not detached)"
        )
    if features is not None:
        representation_root = task_roots([features])
        raise_unreached_indices(
            unreached_inputs(representation_root, call.shared),
            "shared_params",
            "is not reached from the representation (in representation mode the shared parameters receive their "
            "gradient through it)",
        )
    heads = call.head_params
    if heads:
        missing = set(unreached_inputs(roots, heads))
        position = 0
        for i, group in enumerate(call.heads):
            raise_unreached_indices(
                [j for j in range(len(group)) if position + j in missing], f"task_params[{i}]"
            )
            position += len(group)


def raise_unreached_indices(
    indices: Sequence[int], name: str, what: str = "is reached by no task loss"
) -> None:
    if indices:
        raise UnreachedParameterError(
            f"{name}[{indices[0]}] {what}; remove it from {name} or check the model's forward"
        )


def raise_unreached(grads: Sequence[Tensor | None], name: str) -> None:
    raise_unreached_indices([j for j, grad in enumerate(grads) if grad is None], name)


def require_reached(grads: Sequence[Tensor | None], name: str) -> list[Tensor]:
    """`grads` once `raise_unreached` has refused a None among them (typed without None)."""
    raise_unreached(grads, name)
    return [grad for grad in grads if grad is not None]


# ---- value checks: raise, or skip the step -------------------------------------------------


class SkipStep(Exception):
    """Internal to the engine (never escapes `mtl_backward`): a value check failed under
    `on_nonfinite="skip"`; the message says which."""


def refuse(error: MTLInputError, on_nonfinite: OnNonfinite) -> NoReturn:
    """Raise `error`, or, under `on_nonfinite="skip"`, end the step without writing anything."""
    if on_nonfinite == "skip":
        raise SkipStep(str(error))
    raise error


def skipped_info(losses: Tensor) -> StepInfo:
    """The `StepInfo` of a skipped step (see `StepInfo`)."""
    nan = torch.full_like(losses, float("nan"))
    return StepInfo(weights=nan, losses=losses, skipped=True)


def check_finite_losses(values: Tensor, on_nonfinite: OnNonfinite) -> None:
    finite = torch.isfinite(values)
    if not bool(finite.all()):
        task = int((~finite).nonzero()[0, 0])
        refuse(
            NonFiniteLossError(
                f"the loss of task {task} is {float(values[task]):g}; every task loss must be finite "
                "(check the data, the learning rate, or a log of a non-positive value; with a process_group: on some rank)"
            ),
            on_nonfinite,
        )


def check_gramian(
    gramian: Tensor, jacobian: Sequence[Tensor], reduction: Reduction, on_nonfinite: OnNonfinite
) -> None:
    """A finite Gramian means finite per-task gradients (a NaN or infinity in row i makes G_ii
    non-finite), so one check of K^2 numbers replaces one of K x D; only on failure are the rows of
    the `[K, n_j]` blocks inspected, with the flags agreed over ranks (the Gramian is the same on
    every rank, so every rank comes here or none does)."""
    if bool(torch.isfinite(gramian).all()):
        return
    nonfinite_rows, infinite_rows = _nonfinite_rows(jacobian, reduction)
    if not bool(nonfinite_rows.any()):
        norms = torch.stack(
            [torch.linalg.vector_norm(block.double(), dim=1) for block in jacobian]
        ).norm(dim=0)
        refuse(
            NonFiniteGradientError(
                f"the per-task gradients are finite but their inner products overflow {gramian.dtype} "
                f"(gradient norms {norms.tolist()}); use float64 or rescale the losses"
            ),
            on_nonfinite,
        )
    _refuse_nonfinite_rows(nonfinite_rows, infinite_rows, on_nonfinite)


def check_finite_jacobian(
    jacobian: Sequence[Tensor], reduction: Reduction, on_nonfinite: OnNonfinite
) -> None:
    """Jacobian aggregations form no Gramian, so the `[K, n_j]` blocks themselves are checked
    (one synchronisation); on failure the tasks are named as `check_gramian` names them."""
    if bool(torch.stack([torch.isfinite(block).all() for block in jacobian]).all()):
        return
    _refuse_nonfinite_rows(*_nonfinite_rows(jacobian, reduction), on_nonfinite)


def _nonfinite_rows(jacobian: Sequence[Tensor], reduction: Reduction) -> tuple[Tensor, Tensor]:
    """Per task: whether its row of `J` has a non-finite entry, and whether it has an infinity
    (flags agreed over ranks)."""
    finite_rows = torch.stack([torch.isfinite(block).all(dim=1) for block in jacobian]).all(dim=0)
    infinite_rows = torch.stack([torch.isinf(block).any(dim=1) for block in jacobian]).any(dim=0)
    flags = reduction.flags(torch.stack([~finite_rows, infinite_rows]).to(jacobian[0].dtype))
    return flags[0] > 0, flags[1] > 0


def _refuse_nonfinite_rows(
    nonfinite_rows: Tensor, infinite_rows: Tensor, on_nonfinite: OnNonfinite
) -> None:
    # An infinite derivative in task i's graph turns into 0 * inf = NaN in the other rows (autograd
    # sends them zero gradients through the same nodes), so rows with an infinity name the culprit.
    culprits = infinite_rows if bool(infinite_rows.any()) else nonfinite_rows
    tasks = ", ".join(str(int(i)) for i in culprits.nonzero()[:, 0])
    kind = "infinity" if bool(infinite_rows.any()) else "NaN"
    refuse(
        NonFiniteGradientError(
            f"the gradient of task {tasks} contains {kind} although the losses are finite; check for "
            "overflow or a non-differentiable point (e.g. sqrt or log at 0) in that task's loss"
        ),
        on_nonfinite,
    )


def check_finite_grads(
    pairs: list[tuple[Tensor, Tensor]], message: str, on_nonfinite: OnNonfinite
) -> None:
    """One synchronisation for all gradients (their sums are finite iff every entry is, unless the
    sum of finite entries overflows: then the entries are checked); the parameter is named only on
    the error path."""
    if not pairs or bool(torch.isfinite(torch.stack([g.sum() for _, g in pairs])).all()):
        return
    bad = [tuple(p.shape) for p, g in pairs if not bool(torch.isfinite(g).all())]
    if bad:
        refuse(NonFiniteGradientError(f"{message} (a parameter of shape {bad[0]})"), on_nonfinite)


def check_weights(weights: Tensor, gramian: Tensor, method: Any) -> None:
    """Non-finite weights for a finite Gramian are a defect of the method: always raised."""
    if not bool(torch.isfinite(weights).all()):
        raise NonFiniteGradientError(
            f"{type(method).__name__} returned non-finite weights {weights.tolist()} for the Gramian "
            f"{gramian.tolist()}; this is a defect of the method on this input, please report it"
        )


_HEADS_NONFINITE = (
    "a parameter would receive a non-finite gradient although the shared per-task gradients are finite; "
    "check the heads (or the encoder) for overflow or a non-differentiable point"
)


# ---- the gradient path: no branch on whether it runs distributed ---------------------------


def _full_mode_step(
    call: Call,
    losses: Tensor,
    method: GradientWeighting | JacobianAggregation,
    context: StepContext,
) -> tuple[list[tuple[Tensor, Tensor]], StepInfo]:
    last = not call.head_params  # the per-task pass is the step's last one without heads
    per_param = require_reached(
        task_jacobians(
            call.losses,
            call.shared,
            strategy=call.strategy,
            retain_graph=context.retain_graph or not last,
        ),
        "shared_params",
    )
    jacobian = context.reduction.jacobian(
        [jac.reshape(call.num_tasks, -1) for jac in per_param]
    )  # the whole batch's

    def heads(weights: Tensor) -> list[tuple[Tensor, Tensor]]:
        params = call.head_params
        if not params:
            return []
        grads = vjp(
            call.losses,
            params,
            head_coefficients(weights, method, call.losses.dtype),
            retain_graph=context.retain_graph,
        )
        return list(zip(params, context.reduction.gradients(grads)))

    return combine_full(method, jacobian, losses, call.shared, heads, context)


def combine_full(
    method: GradientWeighting | JacobianAggregation,
    jacobian: list[Tensor],
    losses: Tensor,
    shared: list[Tensor],
    heads: Callable[[Tensor], list[tuple[Tensor, Tensor]]],
    context: StepContext,
) -> tuple[list[tuple[Tensor, Tensor]], StepInfo]:
    """From the whole batch's per-task gradients on the shared parameters (`jacobian[j]`: the
    `[K, n_j]` block of parameter j, so `J` is never concatenated, which would double its memory)
    and its (unscaled) losses: the Gramian `sum_j J_j J_j^T`, the weights, `sum_i w_i g_i` on the
    shared parameters and `heads(weights)`'s gradients. A Jacobian aggregation goes to
    `combine_aggregation` (so `core.accumulation` serves it too)."""
    if isinstance(method, JacobianAggregation):
        return combine_aggregation(method, jacobian, losses, shared, heads, context)
    gramian = sum_gramians(jacobian)
    check_gramian(gramian, jacobian, context.reduction, context.on_nonfinite)
    unscaled = context.unscaled(gramian, power=2)
    weights, diagnostics = solve_weights(method, unscaled, losses)
    check_weights(weights, unscaled, method)
    coefficients = weights.to(gramian.dtype)
    pairs = [
        (param, (coefficients @ block).view_as(param)) for param, block in zip(shared, jacobian)
    ] + heads(weights)
    check_finite_grads(pairs, _HEADS_NONFINITE, context.on_nonfinite)
    norms = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(block, dim=1) for block in jacobian]), dim=0
    )
    info = StepInfo(
        weights=weights.detach(),
        losses=losses,
        gramian=unscaled.detach(),
        grad_norms=context.unscaled(norms).detach(),
        diagnostics=diagnostics,
    )
    return pairs, info


def sum_gramians(blocks: Sequence[Tensor]) -> Tensor:
    """`J J^T` for `J` the column-wise concatenation of the `[K, n_j]` blocks."""
    gramian = blocks[0] @ blocks[0].T
    for block in blocks[1:]:
        gramian.addmm_(block, block.T)
    return gramian


def _representation_mode_step(
    call: Call, losses: Tensor, method: GradientWeighting, context: StepContext
) -> tuple[list[tuple[Tensor, Tensor]], StepInfo]:
    features = call.representation
    assert features is not None
    (per_task,) = require_reached(
        task_jacobians(call.losses, [features], strategy=call.strategy), "representation"
    )
    jacobian = per_task.reshape(call.num_tasks, -1)
    gramian, norms = context.reduction.representation_gramian(jacobian)  # the whole batch's
    check_gramian(gramian, [jacobian], context.reduction, context.on_nonfinite)
    unscaled = context.unscaled(gramian, power=2)
    weights, diagnostics = solve_weights(method, unscaled, losses)
    check_weights(weights, unscaled, method)
    coefficients = weights.to(jacobian.dtype)
    heads = call.head_params
    retain = context.retain_graph
    if (
        heads and method.head_gradient is HeadGradient.WEIGHTED
    ):  # one backward of sum_i w_i l_i serves both
        grads = vjp(call.losses, call.shared + heads, coefficients, retain_graph=retain)
    else:
        # the heads first (through the decoder, keeping it), the encoder last: its activations,
        # usually the larger part, are then freed by this call
        head_grads = (
            vjp(call.losses, heads, torch.ones_like(coefficients), retain_graph=True)
            if heads
            else []
        )
        combined = (coefficients @ jacobian).view_as(features)
        grads = vjp(features, call.shared, combined, retain_graph=retain) + head_grads
    pairs = list(
        zip(call.shared + heads, context.reduction.gradients(grads))
    )  # the whole batch's: mean over ranks
    check_finite_grads(pairs, _HEADS_NONFINITE, context.on_nonfinite)
    info = StepInfo(
        weights=weights.detach(),
        losses=losses,
        gramian=unscaled.detach(),
        grad_norms=context.unscaled(norms).detach(),
        diagnostics=diagnostics,
    )
    return pairs, info


def combine_aggregation(
    method: JacobianAggregation,
    jacobian: list[Tensor],
    losses: Tensor,
    shared: list[Tensor],
    heads: Callable[[Tensor], list[tuple[Tensor, Tensor]]],
    context: StepContext,
) -> tuple[list[tuple[Tensor, Tensor]], StepInfo]:
    """`combine_full` for a Jacobian aggregation: the whole batch's `[K, n_j]` blocks are checked,
    concatenated once into `J [K, n]` (the method needs the vectors; see `mtl_backward` for the
    memory), unscaled, aggregated; the update is split back into the shared parameters' layout and
    `heads(head_weights)` gives the heads' gradients."""
    check_finite_jacobian(jacobian, context.reduction, context.on_nonfinite)
    matrix = torch.cat(jacobian, dim=1) if len(jacobian) > 1 else jacobian[0].clone()
    update, head_weights, diagnostics, norms = aggregate(method, matrix, losses, context)
    pieces = update.split([block.shape[1] for block in jacobian])
    pairs = [(param, piece.view_as(param)) for param, piece in zip(shared, pieces)] + heads(
        head_weights
    )
    pairs += auxiliary_gradients(method, matrix, losses, context, diagnostics)
    check_finite_grads(pairs, _HEADS_NONFINITE, context.on_nonfinite)
    info = StepInfo(
        weights=head_weights.detach(), losses=losses, grad_norms=norms, diagnostics=diagnostics
    )
    return pairs, info


def aggregate(
    method: JacobianAggregation, matrix: Tensor, losses: Tensor, context: StepContext
) -> tuple[Tensor, Tensor, dict[str, Tensor], Tensor]:
    """The method on the unscaled `J` (`matrix`, `[K, n]`, which this divides in place) and
    losses: the update to write (times the loss scale), the heads' weights, the diagnostics and
    the unscaled per-task gradient norms. A non-finite update or head weight from finite input
    is a defect of the method and always raises."""
    if context.loss_scale != 1.0:
        matrix.div_(context.loss_scale)
    result = method.aggregate(matrix, losses)
    update, head_weights = result.update.detach(), result.head_weights.detach()
    if not bool(torch.isfinite(update).all() and torch.isfinite(head_weights).all()):
        raise NonFiniteGradientError(
            f"{type(method).__name__} returned a non-finite update or head weights {head_weights.tolist()} for finite "
            "per-task gradients; this is a defect of the method on this input, please report it"
        )
    update = update.to(matrix.dtype)
    if context.loss_scale != 1.0:
        update = update * context.loss_scale
    norms = torch.linalg.vector_norm(matrix.detach(), dim=1, dtype=torch.float64).to(
        matrix.dtype
    )  # no overflow of the squares
    return update, head_weights.to(losses.dtype), result.diagnostics, norms


def auxiliary_gradients(
    method: JacobianAggregation,
    jacobian: Tensor,
    losses: Tensor,
    context: StepContext,
    diagnostics: dict[str, Tensor],
) -> list[tuple[Tensor, Tensor]]:
    """The gradient of the method's `auxiliary_loss` (on the unscaled `J`, in the layout it was
    taken in) on its own `parameters()`, times the loss scale as a loss weighting's `penalty()` is,
    so that every gradient of the step carries the scale; none for a method without one. Its value
    goes into the diagnostics as `"auxiliary_loss"`. Data parallelism needs no reduction: every
    rank forms it from the same whole-batch `J`."""
    own = list(method.parameters())
    if not own:
        return []
    auxiliary = method.auxiliary_loss(jacobian, losses)
    if auxiliary is None:
        return []
    if not isinstance(auxiliary, Tensor) or auxiliary.ndim != 0 or not auxiliary.requires_grad:
        raise MTLInputError(  # a defect of the method, named as such
            f"{type(method).__name__}.auxiliary_loss must return None or a scalar tensor with a graph to the method's "
            f"parameters, got {auxiliary!r}"
        )
    grads = torch.autograd.grad(context.loss_scale * auxiliary, own, allow_unused=True)
    diagnostics["auxiliary_loss"] = auxiliary.detach()
    return [(param, grad) for param, grad in zip(own, grads) if grad is not None]


def _representation_aggregation_step(
    call: Call, losses: Tensor, method: JacobianAggregation, context: StepContext
) -> tuple[list[tuple[Tensor, Tensor]], StepInfo]:
    """Representation mode for a Jacobian aggregation (one process: see `mtl_backward`): `J` on
    the features `[K, numel]`, the update reshaped like them and backpropagated once through the
    encoder, the heads first (keeping the decoder's graph), the encoder last."""
    features = call.representation
    assert features is not None
    (per_task,) = require_reached(
        task_jacobians(call.losses, [features], strategy=call.strategy), "representation"
    )
    matrix = per_task.reshape(call.num_tasks, -1)
    check_finite_jacobian([matrix], context.reduction, context.on_nonfinite)
    update, head_weights, diagnostics, norms = aggregate(method, matrix, losses, context)
    heads = call.head_params
    coefficients = head_coefficients(head_weights, method, call.losses.dtype)
    head_grads = vjp(call.losses, heads, coefficients, retain_graph=True) if heads else []
    grads = (
        vjp(features, call.shared, update.view_as(features), retain_graph=context.retain_graph)
        + head_grads
    )
    pairs = list(zip(call.shared + heads, context.reduction.gradients(grads)))
    pairs += auxiliary_gradients(method, matrix.view(per_task.shape), losses, context, diagnostics)
    check_finite_grads(pairs, _HEADS_NONFINITE, context.on_nonfinite)
    info = StepInfo(
        weights=head_weights.detach(), losses=losses, grad_norms=norms, diagnostics=diagnostics
    )
    return pairs, info


def _loss_weighting_step(
    call: Call, losses: Tensor, method: LossWeighting, context: StepContext
) -> tuple[list[tuple[Tensor, Tensor]], StepInfo]:
    weights, diagnostics = method.weights(losses)
    objective = (weights.to(call.losses.dtype) * call.losses).sum()
    penalty = method.penalty()
    if penalty is not None:  # scaled like the losses, so that every gradient carries the loss scale
        objective = objective + context.loss_scale * penalty
    own = list(method.parameters())
    targets = call.shared + call.head_params + own
    grads = torch.autograd.grad(
        objective, targets, retain_graph=context.retain_graph, allow_unused=True
    )
    raise_unreached(grads[: len(call.shared)], "shared_params")
    pairs = [(p, g) for p, g in zip(targets, grads) if g is not None]
    pairs = list(
        zip([p for p, _ in pairs], context.reduction.gradients([g for _, g in pairs]))
    )  # the whole batch's gradient
    check_finite_grads(pairs, "the weighted loss has a non-finite gradient", context.on_nonfinite)
    info = StepInfo(weights=weights.detach(), losses=losses, diagnostics=diagnostics)
    return pairs, info


def head_coefficients(
    weights: Tensor,
    method: GradientWeighting | LossWeighting | JacobianAggregation,
    dtype: torch.dtype,
) -> Tensor:
    """`c_i` of the heads' gradient `sum_i c_i grad l_i`: `w_i` (WEIGHTED) or 1 (RAW); for a
    Jacobian aggregation `w` is its `head_weights`."""
    coefficients = weights.detach().to(dtype)
    return (
        coefficients
        if method.head_gradient is HeadGradient.WEIGHTED
        else torch.ones_like(coefficients)
    )


def vjp(
    outputs: Tensor, inputs: list[Tensor], grad_outputs: Tensor, *, retain_graph: bool = True
) -> list[Tensor]:
    """`grad_outputs . d outputs / d inputs`; zeros for an input it does not reach."""
    grads = torch.autograd.grad(
        outputs, inputs, grad_outputs=grad_outputs, retain_graph=retain_graph, allow_unused=True
    )
    return [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, grads)]


def write_grads(pairs: Iterable[tuple[Tensor, Tensor]]) -> None:
    """Accumulate each gradient into its parameter's `.grad`, like `backward`."""
    for param, grad in pairs:
        if param.grad is None:
            param.grad = grad.detach().clone()
        else:
            param.grad.add_(grad.detach())


def solve_weights(method: GradientWeighting, gramian: Tensor, losses: Tensor) -> WeightsResult:
    """The method's weights and diagnostics, computed on the CPU copy of the K x K Gramian when it
    lives elsewhere (the weights are returned on the Gramian's device).

    On a GPU, the solvers' many tiny kernels and convergence checks (each a synchronisation) cost
    more than copying K^2 numbers once (`python -m benchmarks perf --device cuda` measures both).
    """
    if gramian.device.type == "cpu":
        return method.weights(gramian, losses)
    result = method.weights(gramian.cpu(), losses.cpu())
    return WeightsResult(result.weights.to(gramian.device), result.diagnostics)
