"""The method contract: gradient weightings (on the Gramian), loss weightings (on losses) and
Jacobian aggregations (on the per-task gradient vectors themselves).

All three are pure callables on tensors; none ever calls `.backward()`. The engine
(`core.engine.mtl_backward`) computes what a method needs, calls it, and writes `.grad`.

Facts about a method live on its class (`name`, `paper`, `claims`, `loss_domain`, `stateful`,
`random`, `head_gradient`, `engine_modes`, `requires_num_tasks`); callers read them instead of
probing with isinstance, getattr or signatures. An instance may narrow `claims`, `loss_domain`
and `stateful` where a hyperparameter changes them (MGDA's normalisation, Nash-MTL without warm
start); the class values describe the defaults.

One lifecycle for every method:
- `weights(...)` returns a `WeightsResult`: the weights and the method's diagnostics of that call
  (calling the method, `method(...)`, returns the weights alone); a Jacobian aggregation has
  `aggregate(jacobian, losses)` instead, returning an `AggregationResult` (the update, the heads'
  weights, the diagnostics; calling it returns the update), and may train its own parameters with
  `auxiliary_loss(jacobian, losses)` (RotoGrad's rotations);
- `after_step(new_losses)` after the optimiser step (FAMO's logit update; the losses recomputed on
  the same batch), and `end_epoch()` after each epoch (DWA), are no-ops by default, so a training
  loop may call them for every method;
- `reset(batch_shape=())` forgets all state; stateful methods keep their state with shape
  `[*batch_shape, K]` (Jacobian aggregations that keep vectors: `[*batch_shape, K, n]`), so B
  independent runs are one call on losses `[B, K]` (or Gramians `[B, K, K]`, Jacobians
  `[B, K, n]`) and give what B separate instances give;
- `state_dict()` / `load_state_dict()` hold tensors and plain values only (checkpoints load with
  `torch.load(..., weights_only=True)`); learnable methods expose `parameters()`.
"""

from __future__ import annotations

import enum
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, Literal, NamedTuple

import torch
from torch import Tensor

from core.errors import InvalidHyperparameterError, MTLInputError, NonFiniteGradientError

CLAIMS: dict[str, str] = {
    "monotone_invariant": (
        "the shared update is unchanged when each task loss l_i is replaced by h_i(l_i), h_i strictly "
        "increasing and differentiable (per step: g_i -> h_i'(l_i) g_i, l_i -> h_i(l_i)), so the iterates are too"
    ),
    "rescaling_invariant": "the shared update is unchanged when each task loss is multiplied by its own positive constant",
    "permutation_equivariant": "relabelling the tasks relabels the weights: w(P G P^T, P l) = P w(G, l)",
    "non_conflicting": "the shared update d = sum_i w_i g_i never conflicts with a task: g_i . d >= 0 for every i",
    "simplex_weights": "the weights are non-negative and sum to 1",
    "equal_projections": "the shared update has the same projection onto every unit task gradient (IMTL-G's condition)",
}
"""The one vocabulary of claims a method can declare; each has one reusable check in the tests
(`tests/claims.py`) that the registry-wide test runs for every method declaring it."""

LossDomain = Literal["any", "nonnegative", "positive"]
EngineMode = Literal["full", "representation"]
ENGINE_MODES: frozenset[str] = frozenset({"full", "representation"})


class HeadGradient(enum.Enum):
    """What a task's own (head) parameters receive from the engine.

    WEIGHTED: `w_i * grad l_i` (the weighted loss is backpropagated into the heads, as the
    DiBS-MTL, Nash-MTL and MGDA reference code do, and as every loss weighting does).
    RAW: the plain `grad l_i` (RGW, PCGrad, CAGrad in their papers).
    """

    WEIGHTED = "weighted"
    RAW = "raw"


class WeightsResult(NamedTuple):
    """What one call of a method gives: the weights `[..., K]` and its diagnostics (detached
    tensors, batch-shaped where they are per problem, e.g. MGDA's KKT gap)."""

    weights: Tensor
    diagnostics: dict[str, Tensor]


class AggregationResult(NamedTuple):
    """What one call of a Jacobian aggregation gives (`JacobianAggregation.aggregate`).

    `update` `[..., n]`: the shared update d (the engine writes it, in the parameters' layout, into
    the shared parameters' `.grad`); `head_weights` `[..., K]`: the `c_i` of the heads' gradient
    `c_i grad l_i` where the method's `head_gradient` is WEIGHTED (reported either way; it is
    `StepInfo.weights`); `diagnostics`: detached tensors, batch-shaped where per problem. By
    convention a method whose update is a sum of one term per task reports the terms' norms as
    `"contribution_norms"` `[..., K]` (the tests size their rounding tolerances with it)."""

    update: Tensor
    head_weights: Tensor
    diagnostics: dict[str, Tensor]


class Method(ABC):
    """Common base: the class-level facts, the lifecycle hooks and the batched-state bookkeeping."""

    name: ClassVar[str] = ""
    """The method's one canonical registry key (`core.make_method(name)`)."""
    paper: ClassVar[str] = ""
    """The paper that defines the method (authors, title, venue)."""
    claims: frozenset[str] = frozenset()
    """Claims from `CLAIMS` that hold for this method (at its default hyperparameters on the class;
    an instance narrows them where its hyperparameters change them)."""
    loss_domain: LossDomain = "any"
    """The losses the method accepts: any real, non-negative (>= 0) or positive (> 0) values."""
    loss_domain_advice: ClassVar[str] = (
        "shift the losses (e.g. add a constant) or choose a method whose loss_domain is 'any'"
    )
    """What the error for losses outside `loss_domain` advises."""
    stateful: bool = False
    """Whether the weights depend on earlier calls (kept with shape `[*batch_shape, K]`)."""
    random: bool = False
    """Whether the weights are drawn at random (from the method's `generator`)."""
    head_gradient: HeadGradient = HeadGradient.WEIGHTED
    engine_modes: frozenset[str] = ENGINE_MODES
    """The engine modes it supports: "full" (per-task gradients on the shared parameters) and
    "representation" (on the shared features, `mtl_backward(..., representation=z)`)."""
    requires_num_tasks: ClassVar[bool] = False
    """Whether the constructor needs `num_tasks` (per-task state created up front)."""
    needs_post_step_losses: ClassVar[bool] = False
    """Whether `after_step` needs the losses recomputed on the same batch after the optimiser step
    (an extra forward pass: FAMO); a loop may skip that forward pass for the other methods."""

    _batch_shape: tuple[int, ...] = ()
    _pristine: bool = True

    # -- lifecycle -----------------------------------------------------------------------------

    def reset(self, batch_shape: tuple[int, ...] = ()) -> None:
        """Forget all state kept across calls and hold it for `batch_shape` independent problems."""
        self._batch_shape = _as_batch_shape(batch_shape)
        self._pristine = True

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """The batch shape the state is held for (`()`: one problem)."""
        return self._batch_shape

    def after_step(self, new_losses: Tensor | list[Tensor], /) -> None:
        """Called after the optimiser step with the losses recomputed on the same batch. No-op."""

    def end_epoch(self) -> None:
        """Called after each training epoch. No-op."""

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        """Learnable parameters of the method itself (none for most methods)."""
        return iter(())

    def to(
        self, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Method:
        """Move the method's learnable parameters (as `nn.Module.to`); returns the method. No-op
        for methods without `parameters()` (their state lives on the host in float64)."""
        for param in self.parameters():
            param.data = param.data.to(device=device, dtype=dtype)
        return self

    def state_dict(self) -> dict[str, Any]:
        """The method's state (tensors and plain values only); empty for stateless methods."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any], /) -> None:
        """Restore what `state_dict()` returned."""
        if state:
            raise MTLInputError(
                f"{type(self).__name__} keeps no state, got a state with keys {sorted(state)}"
            )

    # -- batched state -------------------------------------------------------------------------

    def _match_batch_shape(self, batch_shape: tuple[int, ...]) -> None:
        """Stateful methods: a fresh state adopts the call's batch shape; a used one must match it."""
        batch_shape = tuple(batch_shape)
        if batch_shape == self._batch_shape:
            return
        if self._pristine:
            self.reset(batch_shape)
            return
        raise MTLInputError(
            f"{type(self).__name__} holds state for batch shape {self._batch_shape}, got a call for batch shape "
            f"{batch_shape}; call reset(batch_shape={batch_shape}) to start new runs of that shape"
        )

    def _used(self) -> None:
        self._pristine = False

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{k}={v!r}"
            for k, v in vars(self).items()
            if not k.startswith("_") and k not in _INSTANCE_FACTS
        )
        return f"{type(self).__name__}({fields})"


_INSTANCE_FACTS = frozenset({"claims", "loss_domain", "stateful"})


def _as_batch_shape(batch_shape: Any) -> tuple[int, ...]:
    if isinstance(batch_shape, int):
        batch_shape = (batch_shape,)
    shape = tuple(batch_shape)
    if not all(isinstance(size, int) and size >= 0 for size in shape):
        raise MTLInputError(
            f"batch_shape must be a tuple of non-negative integers, got {batch_shape!r}"
        )
    return shape


class GradientWeighting(Method):
    """A method that maps the K x K Gramian `G = J J^T` (and the K losses) to K weights.

    The shared update is `sum_i w_i g_i`. Inputs may be batched: `gramian` of shape
    `[..., K, K]` and `losses` of shape `[..., K]` give weights of shape `[..., K]`, each batch
    element computed independently, so many problems or starting points run as one call.
    Subclasses implement `_weights`.
    """

    def __call__(self, gramian: Tensor, losses: Tensor, /) -> Tensor:
        return self.weights(gramian, losses).weights

    def weights(self, gramian: Tensor, losses: Tensor, /) -> WeightsResult:
        """Weights `[..., K]` from the Gramian `[..., K, K]` and the losses `[..., K]`, with diagnostics."""
        _check_gramian(gramian, losses)
        _check_loss_domain(self, losses)
        return _as_result(self._weights(gramian, losses))

    @abstractmethod
    def _weights(self, gramian: Tensor, losses: Tensor, /) -> Tensor | WeightsResult:
        """The method itself, on checked inputs: weights, or weights with diagnostics."""


class LossWeighting(Method):
    """A method that maps the K loss values (and its own state) to K loss weights.

    The engine backpropagates `sum_i w_i l_i (+ penalty())` once; heads therefore always receive
    `w_i * grad l_i`. Weights may carry a graph to the method's own `parameters()` (learnable
    weightings); otherwise they are detached. Batched losses `[..., K]` give weights `[..., K]`.
    Subclasses implement `_weights`.
    """

    head_gradient = HeadGradient.WEIGHTED

    def __call__(self, losses: Tensor, /) -> Tensor:
        return self.weights(losses).weights

    def weights(self, losses: Tensor, /) -> WeightsResult:
        """Weights `[..., K]` from the (detached) losses `[..., K]`, with diagnostics."""
        if losses.ndim < 1 or losses.shape[-1] == 0:
            raise MTLInputError(
                f"losses must have shape [..., K] with K >= 1, got {tuple(losses.shape)}"
            )
        _check_loss_domain(self, losses)
        return _as_result(self._weights(losses))

    @abstractmethod
    def _weights(self, losses: Tensor, /) -> Tensor | WeightsResult:
        """The method itself, on checked losses: weights, or weights with diagnostics."""

    def penalty(self) -> Tensor | None:
        """A term added to the weighted loss (e.g. uncertainty weighting's log-variances), or None."""
        return None


class JacobianAggregation(Method):
    """A method that maps the per-task gradient vectors themselves, `J [..., K, n]` (rows `g_i`),
    and the losses `[..., K]` to the shared update `d [..., n]`.

    For methods that cannot be written as K weights on the Gramian: elementwise operations on the
    gradients (GradDrop's sign masks), or state kept per coordinate (MoCo's and DB-MTL's tracked
    gradients, ExcessMTL's accumulated squared gradients). The price is the model size: such a
    method costs at least O(K n) per step, and the engine forms `J` as one `[K, n]` tensor (see
    `core.engine.mtl_backward`), where a gradient weighting needs only the K x K Gramian after the
    per-task gradients.

    `aggregate(jacobian, losses)` returns an `AggregationResult`: the update, the heads' weights
    (heads receive `head_weights_i * grad l_i` or the plain `grad l_i`, as `head_gradient`
    declares) and the diagnostics; calling the method returns the update alone. There is no
    `weights(...)`: the update need not lie in the span of the current gradients.

    Facts are as for the other kinds (`claims` are about the update d, and `simplex_weights` about
    `head_weights`). Batched: `J [..., K, n]` and losses `[..., K]` give updates `[..., n]`, each
    batch element computed independently. State kept per task is `[*batch_shape, K]`; state kept
    per coordinate is `[*batch_shape, K, n]`, and once used it holds for that n (the number of
    shared parameters, or the representation's size): a call with another n raises, as one with
    another batch shape does (`reset()` starts anew). Per-coordinate state is why such methods
    usually declare only the "full" engine mode: in representation mode a coordinate is one
    sample's feature, another sample at every step, and n changes with the batch size.
    Subclasses implement `_aggregate`.
    """

    _width: int | None = None

    def __call__(self, jacobian: Tensor, losses: Tensor, /) -> Tensor:
        return self.aggregate(jacobian, losses).update

    def aggregate(self, jacobian: Tensor, losses: Tensor, /) -> AggregationResult:
        """The update `[..., n]`, the heads' weights `[..., K]` and the diagnostics, from the
        per-task gradients `[..., K, n]` and the losses `[..., K]`."""
        _check_jacobian(jacobian, losses)
        _check_loss_domain(self, losses)
        result = self._aggregate(jacobian, losses)
        expected = (*jacobian.shape[:-2], jacobian.shape[-1])
        if tuple(result.update.shape) != expected or result.head_weights.shape != losses.shape:
            raise MTLInputError(  # a defect of the method, named as such
                f"{type(self).__name__} returned an update of shape {tuple(result.update.shape)} and head weights of "
                f"shape {tuple(result.head_weights.shape)}, expected {expected} and {tuple(losses.shape)}"
            )
        return result

    @abstractmethod
    def _aggregate(self, jacobian: Tensor, losses: Tensor, /) -> AggregationResult:
        """The method itself, on checked inputs."""

    def auxiliary_loss(self, jacobian: Tensor, losses: Tensor, /) -> Tensor | None:
        """An extra scalar loss that trains the method's own `parameters()` (RotoGrad's alignment of
        its rotations), or None (the default: nothing to train).

        The engine calls it after `aggregate`, on the same unscaled per-task gradients in the layout
        they were taken in (`[K, *representation.shape]` in representation mode, `[K, n]` in full
        mode) and the same losses, and writes the loss's gradient into `parameters()` only (times
        the loss scale, as a loss weighting's `penalty()`), with the step's other gradients. Its
        graph must reach nothing but the method's own parameters: the model's parameters get nothing
        from it, and the update d does not depend on it."""
        return None

    def reset(self, batch_shape: tuple[int, ...] = ()) -> None:
        super().reset(batch_shape)
        self._width = None

    @property
    def width(self) -> int | None:
        """The n the per-coordinate state is held for (None while it is unused)."""
        return self._width

    def _match_jacobian(self, jacobian: Tensor, /) -> None:
        """Stateful methods: a fresh state adopts the call's batch shape and width n; a used one
        must match both."""
        self._match_batch_shape(tuple(jacobian.shape[:-2]))
        width = jacobian.shape[-1]
        if self._width is None or self._pristine:
            self._width = width
        elif width != self._width:
            raise MTLInputError(
                f"{type(self).__name__} holds per-coordinate state for n = {self._width} gradient entries, got a "
                f"Jacobian with n = {width}; the shared parameters (or, in representation mode, the features) must "
                "have the same size at every step; call reset() to start a new run"
            )


def _as_result(output: Tensor | WeightsResult) -> WeightsResult:
    return output if isinstance(output, WeightsResult) else WeightsResult(output, {})


def _check_loss_domain(method: Method, losses: Tensor) -> None:
    """Losses outside the method's declared domain raise `LossDomainError`, naming the way out."""
    from core.errors import LossDomainError

    if method.loss_domain == "any" or losses.numel() == 0:
        return
    detached = losses.detach()
    inside = detached > 0 if method.loss_domain == "positive" else detached >= 0
    if bool(inside.all()):
        return
    kind = "positive" if method.loss_domain == "positive" else "non-negative"
    raise LossDomainError(
        f"{type(method).__name__} needs {kind} losses, got {detached.tolist() if detached.numel() <= 16 else 'some outside'}; "
        f"{method.loss_domain_advice}"
    )


def _check_gramian(gramian: Tensor, losses: Tensor) -> None:
    if gramian.ndim < 2 or gramian.shape[-1] != gramian.shape[-2]:
        raise MTLInputError(f"the Gramian must have shape [..., K, K], got {tuple(gramian.shape)}")
    if gramian.shape[-1] == 0:
        raise MTLInputError("the Gramian is empty: K must be at least 1")
    if losses.shape != gramian.shape[:-1]:
        raise MTLInputError(
            f"losses of shape {tuple(losses.shape)} do not match the Gramian of shape "
            f"{tuple(gramian.shape)}: expected losses of shape {tuple(gramian.shape[:-1])}"
        )


def _check_jacobian(jacobian: Tensor, losses: Tensor) -> None:
    if jacobian.ndim < 2:
        raise MTLInputError(
            f"the Jacobian must have shape [..., K, n], got {tuple(jacobian.shape)}"
        )
    if jacobian.shape[-2] == 0:
        raise MTLInputError("the Jacobian is empty: K must be at least 1")
    if losses.shape != jacobian.shape[:-1]:
        raise MTLInputError(
            f"losses of shape {tuple(losses.shape)} do not match the Jacobian of shape "
            f"{tuple(jacobian.shape)}: expected losses of shape {tuple(jacobian.shape[:-1])}"
        )


def gramian_norms(gramian: Tensor) -> Tensor:
    """Task-gradient norms `||g_i|| = sqrt(G_ii)` from a (batched) Gramian, clamped at 0."""
    return torch.diagonal(gramian, dim1=-2, dim2=-1).clamp_min(0).sqrt()


def safe_reciprocal(values: Tensor) -> Tensor:
    """`1 / v` where `v > 0` and exactly 0 where `v == 0` (a zero gradient gets zero weight)."""
    positive = values > 0
    return torch.where(positive, 1.0 / torch.where(positive, values, torch.ones_like(values)), 0.0)


def weights_in_dtype(weights: Tensor, dtype: torch.dtype, method: str) -> Tensor:
    """`weights`, computed in a wider dtype (float64), in the Gramian's `dtype`.

    A weight can be finite in float64 and beyond the range of float32: PCGrad's and CAGrad's
    weights are of order `||g_i|| / ||g_j||`, which exceeds 3.4e38 when two float32 task gradients
    differ that much in norm. Such a weight raises `NonFiniteGradientError` (use float64 or rescale
    the losses) rather than coming back infinite; the update `sum_i w_i g_i` may be representable,
    but the weights the engine multiplies the float32 gradients with are not. Weights that are
    already non-finite where they were computed are returned as they are (that is a defect of the
    method, which the engine reports as one).
    """
    cast = weights.to(dtype)
    if torch.finfo(dtype).max >= torch.finfo(weights.dtype).max or bool(torch.isfinite(cast).all()):
        return cast
    if bool(torch.isfinite(weights).all()):
        raise NonFiniteGradientError(
            f"{method} weights reach {float(weights.abs().max()):.3g}, beyond the range of {dtype}: the task "
            f"gradients differ too much in norm for {dtype} weights; use float64 or rescale the losses"
        )
    return cast


Reduction = Literal["sum", "mean"]


def check_reduction(reduction: str) -> None:
    """The one check of the `reduction` hyperparameter every method with one shares."""
    if reduction not in ("sum", "mean"):
        raise InvalidHyperparameterError(
            f"reduction must be 'sum' (add the task terms) or 'mean' (average them over the K tasks), got {reduction!r}"
        )


def check_generator(generator: object) -> None:
    """Random methods take an explicit `torch.Generator` (or None for the global RNG)."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise InvalidHyperparameterError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}; "
            "pass torch.Generator().manual_seed(seed) for a reproducible run"
        )


def unit_gramian(gramian: Tensor) -> tuple[Tensor, Tensor]:
    """The Gramian of the unit gradients `U_ij = u_i . u_j` and the norms `||g_i||`.

    A zero gradient has the zero direction (the DiBS direction oracle's convention), so its row
    and column of U are zero.
    """
    norms = gramian_norms(gramian)
    inverse = safe_reciprocal(norms)
    return gramian * inverse[..., :, None] * inverse[..., None, :], norms


def check_number(
    name: str,
    value: Any,
    /,
    *,
    minimum: float | None = None,
    strict: bool = False,
    maximum: float | None = None,
) -> float:
    """A finite real hyperparameter, bounded below by `minimum` (excluded if `strict`) and above by
    `maximum`; anything else raises `InvalidHyperparameterError` naming the bound."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidHyperparameterError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise InvalidHyperparameterError(
            f"{name} must be {'>' if strict else '>='} {minimum:g}, got {value!r}"
        )
    if maximum is not None and value > maximum:
        raise InvalidHyperparameterError(f"{name} must be <= {maximum:g}, got {value!r}")
    return float(value)


def check_integer(name: str, value: Any, /, *, minimum: int = 1) -> int:
    """An integer hyperparameter (not a bool) of at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidHyperparameterError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_num_tasks(num_tasks: Any, method: str, /) -> int:
    """The `num_tasks` of a method whose per-task state is created at construction."""
    if num_tasks is None:
        raise InvalidHyperparameterError(
            f"{method} keeps per-task state: pass num_tasks=K (the number of losses), e.g. make_method(spec, num_tasks=K)"
        )
    return check_integer("num_tasks", num_tasks)


def check_task_count(method: Method, losses: Tensor, num_tasks: int, /) -> None:
    """The losses' last dimension must be the K the method was built for."""
    if losses.shape[-1] != num_tasks:
        raise MTLInputError(
            f"{type(method).__name__} was built for {num_tasks} tasks but got {losses.shape[-1]} losses; "
            "construct it with num_tasks equal to the number of losses"
        )


def state_tensor(
    state: Mapping[str, Any], key: str, shape: tuple[int, ...], method: str, /
) -> Tensor:
    """`state[key]` as a tensor of `shape`, or a clear error (a checkpoint of another run shape)."""
    if key not in state:
        raise MTLInputError(
            f"{method} state has no {key!r}; pass what {method}.state_dict() returned"
        )
    value = torch.as_tensor(state[key])
    if tuple(value.shape) != shape:
        raise MTLInputError(
            f"{method} state {key!r} has shape {tuple(value.shape)}, expected {shape}"
        )
    return value


class DrawsFromGenerator:
    """What every random method shares: its `generator` (checked, None for the global RNG), kept
    as its whole state (`state_dict` / `load_state_dict`), and uniform draws on the generator's
    device (a CPU generator draws on the CPU and the numbers move to `device`)."""

    random = True
    _generator: torch.Generator | None = None

    def _use_generator(self, generator: torch.Generator | None, /) -> None:
        check_generator(generator)
        self._generator = generator

    @property
    def generator(self) -> torch.Generator | None:
        return self._generator

    def _uniform(
        self,
        shape: tuple[int, ...],
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> Tensor:
        draw_device = self._generator.device if self._generator is not None else device
        return torch.rand(shape, generator=self._generator, dtype=dtype, device=draw_device).to(
            device
        )

    def state_dict(self) -> dict[str, Any]:
        return generator_state(self._generator)

    def load_state_dict(self, state: Mapping[str, Any], /) -> None:
        load_generator_state(self._generator, state, type(self).__name__)


def generator_state(generator: torch.Generator | None, /) -> dict[str, Any]:
    """A random method's state: its generator's state (nothing when it draws from the global RNG)."""
    return {} if generator is None else {"generator": generator.get_state()}


def load_generator_state(
    generator: torch.Generator | None, state: Mapping[str, Any], method: str, /
) -> None:
    """Restore what `generator_state` saved into the method's own generator."""
    if generator is None:
        if state:
            raise MTLInputError(
                f"{method} draws from the global RNG (generator=None) and keeps no state; got keys {sorted(state)}"
            )
        return
    if "generator" not in state:
        raise MTLInputError(
            f"{method} state has no 'generator'; pass what {method}.state_dict() returned"
        )
    generator.set_state(torch.as_tensor(state["generator"], dtype=torch.uint8))
