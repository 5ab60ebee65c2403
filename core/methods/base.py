"""The two method contracts: gradient weightings (on the Gramian) and loss weightings (on losses).

Both are pure callables on tensors; neither ever calls `.backward()`. The engine
(`core.engine.mtl_backward`) computes what a method needs, calls it, and writes `.grad`.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Literal

import torch
from torch import Tensor

from core.errors import InvalidHyperparameterError, MTLInputError, NonFiniteGradientError


class HeadGradient(enum.Enum):
    """What a task's own (head) parameters receive from the engine.

    WEIGHTED: `w_i * grad l_i` (the weighted loss is backpropagated into the heads, as the
    DiBS-MTL, Nash-MTL and MGDA reference code do, and as every loss weighting does).
    RAW: the plain `grad l_i` (RGW, PCGrad, CAGrad in their papers).
    """

    WEIGHTED = "weighted"
    RAW = "raw"


class Method(ABC):
    """Common base: the head-gradient declaration, state reset and learnable parameters."""

    head_gradient: HeadGradient = HeadGradient.WEIGHTED
    batch_independent: bool = True
    """Whether the rows of a batched call are independent problems. False for methods whose
    per-task state (learned log-variances, loss histories, logits) is shared by all rows."""

    def reset(self) -> None:
        """Forget any state kept across steps (warm starts, histories). Stateless: no-op."""

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        """Learnable parameters of the method itself (none for most methods)."""
        return iter(())

    def __repr__(self) -> str:
        # hyperparameters only: private state and the diagnostics of the last call are left out
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_") and k != "last_diagnostics")
        return f"{type(self).__name__}({fields})"


class GradientWeighting(Method):
    """A method that maps the K x K Gramian `G = J J^T` (and the K losses) to K weights.

    The shared update is `sum_i w_i g_i`. Inputs may be batched: `gramian` of shape
    `[..., K, K]` and `losses` of shape `[..., K]` give weights of shape `[..., K]`, each batch
    element computed independently, so many problems or starting points run as one call.
    """

    def __call__(self, gramian: Tensor, losses: Tensor, /) -> Tensor:
        _check_gramian(gramian, losses)
        return self.weights(gramian, losses)

    @abstractmethod
    def weights(self, gramian: Tensor, losses: Tensor, /) -> Tensor:
        """Weights `[..., K]` from the Gramian `[..., K, K]` and the losses `[..., K]`."""


class LossWeighting(Method):
    """A method that maps the K loss values (and its own state) to K loss weights.

    The engine backpropagates `sum_i w_i l_i (+ penalty())` once; heads therefore always receive
    `w_i * grad l_i`. Weights may carry a graph to the method's own `parameters()` (learnable
    weightings); otherwise they are detached. Batched losses `[..., K]` give weights `[..., K]`.
    """

    head_gradient = HeadGradient.WEIGHTED

    def __call__(self, losses: Tensor, /) -> Tensor:
        if losses.ndim < 1 or losses.shape[-1] == 0:
            raise MTLInputError(f"losses must have shape [..., K] with K >= 1, got {tuple(losses.shape)}")
        return self.weights(losses)

    @abstractmethod
    def weights(self, losses: Tensor, /) -> Tensor:
        """Weights `[..., K]` from the (detached) losses `[..., K]`."""

    def penalty(self) -> Tensor | None:
        """A term added to the weighted loss (e.g. uncertainty weighting's log-variances), or None."""
        return None


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
