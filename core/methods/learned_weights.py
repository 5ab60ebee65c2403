"""Weightings with learned per-task weights or scales: GradNorm, IMTL-L and the full IMTL.

* GradNorm (Chen et al. 2018) learns loss weights `w` (summing to K) by a subgradient step on an
  L1 loss between the weighted gradient norms and targets set by the tasks' training rates.
* IMTL-L (Liu et al. 2021) learns log-scales `s` of the losses, trained on `e^s l - s`.
* IMTL (Liu et al. 2021), the hybrid: IMTL-L's scales, and IMTL-G's equal-projection weights on
  the scaled gradients for the shared parameters.

IMTL-L is a loss weighting whose scales are `parameters()` that the loop's optimiser trains (as
uncertainty weighting's). GradNorm and IMTL need the task-gradient norms or inner products, so
they are gradient weightings on the Gramian; the engine never backpropagates into a gradient
weighting, so they keep their learned quantities as batched state `[*batch_shape, K]` (float64,
host) and update them themselves, with their own step sizes (docs/DECISIONS.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

from core.errors import MTLInputError, NonFiniteGradientError, NonFiniteLossError
from core.methods.base import (
    GradientWeighting,
    HeadGradient,
    LossWeighting,
    WeightsResult,
    check_num_tasks,
    check_number,
    check_task_count,
    gramian_norms,
    state_tensor,
    weights_in_dtype,
)
from core.methods.projection import _SCALAR_ROWS, IMTLG, imtlg_two_task_scalars, two_task_norms
from core.methods.stochastic_weights import ordered_sum


def _host_inputs(gramian: Tensor, losses: Tensor, method: str) -> tuple[Tensor, Tensor]:
    """The symmetric float64 host Gramian and losses, refusing non-finite values before any state moves."""
    gram = gramian.detach().to(device="cpu", dtype=torch.float64)
    values = losses.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(values).all()):
        raise NonFiniteLossError(
            f"{method}: the losses must be finite, got {values.tolist() if values.numel() <= 16 else 'some not'}"
        )
    if not bool(torch.isfinite(gram).all()):
        raise NonFiniteGradientError(f"{method}: the Gramian contains NaN or infinite entries")
    return 0.5 * (gram + gram.transpose(-1, -2)), values


def _few_two_task_rows(gramian: Tensor) -> bool:
    """Whether the K = 2 Python-float paths apply: at most `_SCALAR_ROWS` CPU Gramians 2 x 2."""
    return (
        gramian.shape[-1] == 2
        and gramian.device.type == "cpu"
        and gramian.numel() <= 4 * _SCALAR_ROWS
    )


def _finite_rows(
    gramian: Tensor, losses: Tensor
) -> tuple[Tensor, list[list[float]], list[list[float]]] | None:
    """For the Python-float paths: the float64 Gramian, its entries `[g11, g12, g21, g22]` and the
    losses per row, or None where any is not finite (the general path raises the error)."""
    gram = gramian.detach().to(torch.float64)
    entries = gram.reshape(-1, 4).tolist()
    values = losses.detach().to(torch.float64).reshape(-1, 2).tolist()
    if all(map(math.isfinite, (x for row in entries for x in row))) and all(
        map(math.isfinite, (x for row in values for x in row))
    ):
        return gram, entries, values
    return None


def _check_tasks(method: GradientWeighting, state: Tensor | None, num_tasks: int) -> None:
    if state is not None and state.shape[-1] != num_tasks:
        raise MTLInputError(
            f"{type(method).__name__} holds state for {state.shape[-1]} tasks, got {num_tasks}; call reset() "
            "to start runs with another number of tasks"
        )


def _optional(
    state: Mapping[str, Any], key: str, batch_shape: tuple[int, ...], method: str
) -> Tensor | None:
    """`state[key]` as a float64 tensor `[*batch_shape, K]`, or None where it was not created yet."""
    value = state.get(key)
    if value is None:
        return None
    value = torch.as_tensor(value)
    num_tasks = value.shape[-1] if value.ndim else 0
    return state_tensor(state, key, (*batch_shape, num_tasks), method).to(torch.float64).clone()


# --------------------------------------------------------------------------------------------
# GradNorm
# --------------------------------------------------------------------------------------------


def gradnorm_targets(weights: Tensor, norms: Tensor, ratios: Tensor, alpha: float, /) -> Tensor:
    """GradNorm's targets `mean_j(w_j ||g_j||) r_i^alpha`, with `r_i = ratio_i / mean_j ratio_j`
    the relative inverse training rate (`ratio_i = l_i / l_i(0)`); `[..., K]`."""
    num_tasks = weights.shape[-1]
    relative = ratios / (ordered_sum(ratios) / num_tasks)[..., None]
    mean_norm = ordered_sum(weights * norms) / num_tasks
    return mean_norm[..., None] * relative**alpha


def gradnorm_loss(weights: Tensor, norms: Tensor, targets: Tensor, /) -> Tensor:
    """GradNorm's loss `L_grad = sum_i |w_i ||g_i|| - T_i|` (eq. 2), `[...]`."""
    return ordered_sum((weights * norms - targets).abs())


def gradnorm_subgradient(weights: Tensor, norms: Tensor, targets: Tensor, /) -> Tensor:
    """`dL_grad / dw_i = sign(w_i ||g_i|| - T_i) ||g_i||` with the targets held constant (the
    paper's Algorithm 1); 0 at a kink (torch's subgradient of |x| at 0)."""
    return torch.sign(weights * norms - targets) * norms


def renormalize(weights: Tensor, /) -> Tensor:
    """`K w / sum_i w` (GradNorm's renormalisation); all ones where the weights sum to 0."""
    num_tasks = weights.shape[-1]
    total = ordered_sum(weights)[..., None]
    safe = torch.where(total > 0, total, torch.ones_like(total))
    return torch.where(total > 0, num_tasks * weights / safe, torch.ones_like(weights))


class GradNorm(GradientWeighting):
    """GradNorm (Chen, Badrinarayanan, Lee, Rabinovich, "GradNorm: Gradient Normalization for
    Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018, Algorithm 1).

    Loss weights `w` (initially 1) with `sum_i w_i = K`. At step t, with `G_i = w_i ||g_i||`
    the weighted gradient norms, `l_i(0)` the losses of the first call and
    `r_i = (l_i / l_i(0)) / mean_j (l_j / l_j(0))` the relative inverse training rates,

        L_grad = sum_i | w_i ||g_i|| - mean_j(w_j ||g_j||) r_i^alpha |          (eq. 2)

    with the targets `mean_j(w_j ||g_j||) r_i^alpha` held constant. The step uses `w(t)` (the
    paper's network step is on `sum_i w_i(t) l_i`); then `w` takes one step on the subgradient
    of `L_grad`, `w_i <- w_i - lr sign(w_i ||g_i|| - T_i) ||g_i||`, is clipped at 0 and renormalised
    to sum K (all ones if every weight reached 0), giving `w(t+1)` for the next call. Tasks
    training slower (larger `r_i`) get larger targets, hence more weight.

    `||g_i|| = sqrt(G_ii)` is the norm of whatever gradients the engine differentiates: the
    paper uses the last shared layer's weights W; here the shared parameters ("full" mode, as
    LibMTL without `rep_grad`) or the shared representation ("representation" mode, LibMTL's
    `rep_grad`). For the paper's choice, pass that layer's parameters as the shared ones.

    Deviations (docs/DECISIONS.md): the paper steps `w` with the network's optimiser on
    `grad_w L_grad` (LibMTL too, with `w = K softmax(logits)`; the DiBS-MTL repository with its
    own Adam, lr 1e-3). Here `w` takes a plain (sub)gradient step with its own `lr`, so the step
    on `w_i` is `lr ||g_i||` and depends on the gradient scale; a step that would make a weight
    negative clips it at 0. A subgradient step on the piecewise-linear `L_grad` never settles:
    at balance the weights oscillate by about `lr ||g_i||`. The step itself decreases `L_grad`
    (by `lr sum_i ||g_i||^2` when no term crosses its kink), but the renormalisation can raise it
    again (it rescales every weighted norm against targets held fixed).

    Args:
        alpha: the asymmetry, 1.5 (the paper's NYUv2 value, LibMTL's default; the DiBS-MTL
            repository uses 0); >= 0. `alpha = 0` pulls every weighted norm to their mean.
        lr: the step size of `w`, 1e-3 (the DiBS-MTL repository's rate for its GradNorm
            weights, there with Adam); > 0.

    Losses must be positive (`l_i / l_i(0)` and its power). Heads receive `w_i grad l_i`.
    Diagnostics: `"gradnorm_loss"` (batch shape), `L_grad` at `w(t)`.
    """

    name = "gradnorm"
    paper = (
        "Chen, Badrinarayanan, Lee, Rabinovich, GradNorm: Gradient Normalization for Adaptive Loss "
        "Balancing in Deep Multitask Networks (ICML 2018)"
    )
    claims = frozenset({"permutation_equivariant"})
    loss_domain = "positive"
    loss_domain_advice = "GradNorm divides by the first losses and raises loss ratios to alpha: shift the losses to be positive"
    stateful = True
    head_gradient = HeadGradient.WEIGHTED

    def __init__(self, *, alpha: float = 1.5, lr: float = 1e-3) -> None:
        self.alpha = check_number("alpha", alpha, minimum=0.0)
        self.lr = check_number("lr", lr, minimum=0.0, strict=True)
        self.reset()

    def reset(self, batch_shape: tuple[int, ...] = ()) -> None:
        super().reset(batch_shape)
        self._task_weights: Tensor | None = None
        self._initial_losses: Tensor | None = None
        self._calls = 0

    @property
    def task_weights(self) -> Tensor | None:
        """The weights the next call returns, `[*batch_shape, K]` (None before the first call)."""
        return self._task_weights

    @property
    def initial_losses(self) -> Tensor | None:
        """`l(0)`, the losses of the first call, `[*batch_shape, K]`."""
        return self._initial_losses

    def state_dict(self) -> dict[str, Any]:
        def copy(value: Tensor | None) -> Tensor | None:
            return None if value is None else value.clone()

        return {
            "batch_shape": list(self.batch_shape),
            "calls": self._calls,
            "task_weights": copy(self._task_weights),
            "initial_losses": copy(self._initial_losses),
        }

    def load_state_dict(self, state: Mapping[str, Any], /) -> None:
        self.reset(tuple(state["batch_shape"]))
        self._task_weights = _optional(state, "task_weights", self.batch_shape, "GradNorm")
        self._initial_losses = _optional(state, "initial_losses", self.batch_shape, "GradNorm")
        self._calls = int(state["calls"])
        self._pristine = self._calls == 0

    def _weights(self, gramian: Tensor, losses: Tensor, /) -> WeightsResult:
        rows = _finite_rows(gramian, losses) if _few_two_task_rows(gramian) else None
        if rows is not None:
            return self._two_task_scalars(gramian, losses, *rows)
        gram, values = _host_inputs(gramian, losses, "GradNorm")
        self._match_batch_shape(tuple(gram.shape[:-2]))
        _check_tasks(self, self._task_weights, gram.shape[-1])
        self._used()
        if self._task_weights is None:
            self._task_weights = torch.ones_like(values)
            self._initial_losses = values.clone()
        weights, initial = self._task_weights, self._initial_losses
        assert initial is not None  # set with the task weights
        norms = gramian_norms(gram)
        targets = gradnorm_targets(weights, norms, values / initial, self.alpha)
        loss = gradnorm_loss(weights, norms, targets)
        stepped = (weights - self.lr * gradnorm_subgradient(weights, norms, targets)).clamp_min(0)
        self._task_weights = renormalize(stepped)
        self._calls += 1
        output = weights_in_dtype(weights, gramian.dtype, "GradNorm").to(gramian.device)
        return WeightsResult(output, {"gradnorm_loss": loss})

    def _two_task_scalars(
        self,
        gramian: Tensor,
        losses: Tensor,
        gram: Tensor,
        entries: list[list[float]],
        values: list[list[float]],
    ) -> WeightsResult:
        """`_weights` for a few CPU 2 x 2 Gramians on Python floats: the same IEEE operations, with
        torch's `sqrt` and `pow` on tensors of the general path's shapes (see `two_task_norms`)."""
        batch_shape = tuple(gramian.shape[:-2])
        self._match_batch_shape(batch_shape)
        _check_tasks(self, self._task_weights, 2)
        self._used()
        if self._task_weights is None:
            self._task_weights = torch.ones(losses.shape, dtype=torch.float64)
            self._initial_losses = losses.detach().to(torch.float64).clone()
        weights, initial = self._task_weights, self._initial_losses
        assert initial is not None  # set with the task weights
        norms = two_task_norms(torch.diagonal(gram, dim1=-2, dim2=-1))
        relative = []
        for (first, second), (initial_first, initial_second) in zip(
            values, initial.reshape(-1, 2).tolist()
        ):
            first, second = first / initial_first, second / initial_second
            mean = (first + second) / 2
            relative.append((first / mean, second / mean))
        powers = (
            (torch.tensor(relative, dtype=torch.float64).reshape(losses.shape) ** self.alpha)
            .reshape(-1, 2)
            .tolist()
        )
        stepped, loss, lr = [], [], self.lr
        for (w1, w2), (n1, n2), (p1, p2) in zip(weights.reshape(-1, 2).tolist(), norms, powers):
            mean_norm = (w1 * n1 + w2 * n2) / 2
            excess1, excess2 = w1 * n1 - mean_norm * p1, w2 * n2 - mean_norm * p2
            loss.append(abs(excess1) + abs(excess2))
            w1 = w1 - lr * (_sign(excess1) * n1)
            w2 = w2 - lr * (_sign(excess2) * n2)
            w1, w2 = (w1 if w1 > 0 else 0.0), (w2 if w2 > 0 else 0.0)
            total = w1 + w2
            stepped.append((2 * w1 / total, 2 * w2 / total) if total > 0 else (1.0, 1.0))
        self._task_weights = torch.tensor(stepped, dtype=torch.float64).reshape(losses.shape)
        self._calls += 1
        output = weights_in_dtype(weights, gramian.dtype, "GradNorm")
        return WeightsResult(
            output, {"gradnorm_loss": torch.tensor(loss, dtype=torch.float64).reshape(batch_shape)}
        )


def _sign(value: float) -> float:
    """`torch.sign` of a finite float."""
    return 1.0 if value > 0 else (-1.0 if value < 0 else 0.0)


# --------------------------------------------------------------------------------------------
# IMTL-L and IMTL
# --------------------------------------------------------------------------------------------


class IMTLL(LossWeighting):
    """IMTL-L, impartial loss balancing (Liu, Li, Kuang, Xue, Chen, Yang, Liao, Zhang, "Towards
    Impartial Multi-task Learning", ICLR 2021, section 3.2).

    Learnable log-scales `s` (initially 0): the objective is `sum_i (e^{s_i} l_i - s_i)`, so the
    loss weights are `w_i = e^{s_i}` and the penalty is `-sum_i s_i`. For a fixed loss the optimal
    scale is `s_i = -log l_i` (`d/ds (e^s l - s) = e^s l - 1 = 0`), where every scaled loss is 1
    and the loss weights are `1 / l_i`: the scale-invariant log sum's gradient. Losses must be
    non-negative: at `l = 0` the objective decreases without bound as s grows (its gradient in
    s is -1, so s rises by the optimiser's step, a finite drift towards `-log 0`); at `l < 0` it
    falls exponentially and the scales, hence the weights, blow up.

    Args:
        num_tasks: K; the log-scales are `parameters()`, created at construction so that an
            optimiser can own them (the loop's optimiser trains them, as the paper trains them
            with the network; the Nash-MTL/FAMO/DiBS-MTL trainers give method parameters their
            own lr 0.025).
        initial_scale: the initial `s` (0 in the paper and LibMTL).

    The log-scales are float32 on the CPU like a new module's parameters; `to(device=...,
    dtype=...)` moves them. `mtl_backward` differentiates `sum_i e^{s_i} l_i - sum_i s_i` with
    respect to them too. Batched: the log-scales have shape `[*batch_shape, K]` (`reset` changes
    the shape of the same `Parameter`, so build the optimiser after the first `reset` or call).
    Heads receive `e^{s_i} grad l_i`.
    """

    name = "imtl_l"
    paper = "Liu, Li, Kuang, Xue, Chen, Yang, Liao, Zhang, Towards Impartial Multi-task Learning, IMTL-L (ICLR 2021)"
    claims = frozenset({"permutation_equivariant"})
    loss_domain = "nonnegative"
    loss_domain_advice = "IMTL-L's objective e^s l - s falls without bound in s for l < 0: shift the losses to be non-negative"
    stateful = True
    requires_num_tasks = True

    def __init__(self, num_tasks: int | None = None, *, initial_scale: float = 0.0) -> None:
        self.num_tasks = check_num_tasks(num_tasks, "IMTLL")
        self.initial_scale = check_number("initial_scale", initial_scale)
        self._log_scales = torch.nn.Parameter(torch.full((self.num_tasks,), self.initial_scale))
        self.reset()

    @property
    def log_scales(self) -> torch.nn.Parameter:
        """The learnable `s`, `[*batch_shape, K]`; the loss weights are `e^s`."""
        return self._log_scales

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return iter((self._log_scales,))

    def reset(self, batch_shape: tuple[int, ...] = ()) -> None:
        super().reset(batch_shape)
        like = self._log_scales
        self._log_scales.data = torch.full(
            (*self.batch_shape, self.num_tasks),
            self.initial_scale,
            dtype=like.dtype,
            device=like.device,
        )
        self._log_scales.grad = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "batch_shape": list(self.batch_shape),
            "log_scales": self._log_scales.detach().clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any], /) -> None:
        self.reset(tuple(state["batch_shape"]))
        values = state_tensor(state, "log_scales", (*self.batch_shape, self.num_tasks), "IMTLL")
        with torch.no_grad():
            self._log_scales.copy_(values)
        self._used()

    def _weights(self, losses: Tensor, /) -> Tensor:
        check_task_count(self, losses, self.num_tasks)
        self._match_batch_shape(tuple(losses.shape[:-1]))
        self._used()
        return torch.exp(self._log_scales.to(dtype=losses.dtype, device=losses.device))

    def penalty(self) -> Tensor:
        return -self._log_scales.sum()


class IMTL(GradientWeighting):
    """IMTL, the hybrid of IMTL-L and IMTL-G (Liu, Li, Kuang, Xue, Chen, Yang, Liao, Zhang,
    "Towards Impartial Multi-task Learning", ICLR 2021, section 3.3; LibMTL's `IMTL`).

    The losses are scaled by `e^{s_i}` (IMTL-L's log-scales, initially 0), so the scaled task
    gradients are `e^{s_i} g_i`, with Gramian `D G D`, `D = diag(e^s)`. IMTL-G (`IMTLG`, reused
    as it is) on `D G D` gives `alpha` (summing to 1) such that `sum_i alpha_i e^{s_i} g_i` has
    equal projections onto every unit scaled gradient, which is every unit gradient `u_i`
    (`equal_projections`, whatever s is). The weight on `g_i` is `w_i = alpha_i e^{s_i}`.

    Then `s` takes one gradient step on IMTL-L's objective `sum_i (e^{s_i} l_i - s_i)`:
    `s_i <- s_i - lr (e^{s_i} l_i - 1)`. The weights returned are those of the current `s` (the
    paper trains s with the network: both steps use the gradients at s(t)). At `s = -log l`
    (IMTL-L's optimum for fixed losses) every scaled loss is 1.

    IMTL-G's `alpha` does not change when all scaled gradients are multiplied by one number, so
    it is computed with `D = diag(e^{s - max_j s_j})` (no overflow or underflow of `e^s` itself).
    Engine modes: both; the paper computes IMTL-G on the shared representation
    ("representation" mode), LibMTL on either.

    Deviations (docs/DECISIONS.md): (1) in the paper (and LibMTL) `s` is a parameter trained
    by the network's optimiser on `e^s l - s`; the engine does not backpropagate into a
    gradient weighting, so `s` is state that this method steps itself with the closed-form
    gradient `e^s l - 1` and its own `lr` (plain gradient descent). (2) Heads receive
    `w_i grad l_i = alpha_i e^{s_i} grad l_i` (`HeadGradient.WEIGHTED`); in the paper and LibMTL
    the heads receive the IMTL-L-scaled gradients `e^{s_i} grad l_i` without `alpha`, which the
    contract cannot express (neither WEIGHTED nor RAW). (3) IMTL-G's own degenerate-case
    handling (`IMTLG`: pseudo-inverse, zero gradients get weight 0, floored normaliser) instead of
    LibMTL's plain inverse.

    Args:
        lr: the step size of `s`, 0.025 (the learning rate that the Nash-MTL, FAMO and DiBS-MTL
            trainers give method parameters, `--method-params-lr`); > 0.
        initial_scale: the initial `s`, 0 (paper, LibMTL).

    Losses must be non-negative, as for IMTL-L (at `l = 0` the scale rises by `lr` per step).
    Diagnostics: `"floored"` (IMTL-G's, batch shape) and
    `"log_scales"` (the `s` of this call, `[..., K]`).
    """

    name = "imtl"
    paper = "Liu, Li, Kuang, Xue, Chen, Yang, Liao, Zhang, Towards Impartial Multi-task Learning, IMTL (ICLR 2021)"
    claims = frozenset({"permutation_equivariant", "equal_projections"})
    loss_domain = "nonnegative"
    loss_domain_advice = "IMTL's scales follow e^s l - s, which falls without bound in s for l < 0: shift the losses to be non-negative"
    stateful = True
    head_gradient = HeadGradient.WEIGHTED

    def __init__(self, *, lr: float = 0.025, initial_scale: float = 0.0) -> None:
        self.lr = check_number("lr", lr, minimum=0.0, strict=True)
        self.initial_scale = check_number("initial_scale", initial_scale)
        self._gradient_balance = IMTLG()
        self.reset()

    def reset(self, batch_shape: tuple[int, ...] = ()) -> None:
        super().reset(batch_shape)
        self._log_scales: Tensor | None = None
        self._calls = 0

    @property
    def log_scales(self) -> Tensor | None:
        """The log-scales `s` the next call uses, `[*batch_shape, K]` (None before the first call)."""
        return self._log_scales

    def state_dict(self) -> dict[str, Any]:
        scales = None if self._log_scales is None else self._log_scales.clone()
        return {"batch_shape": list(self.batch_shape), "calls": self._calls, "log_scales": scales}

    def load_state_dict(self, state: Mapping[str, Any], /) -> None:
        self.reset(tuple(state["batch_shape"]))
        self._log_scales = _optional(state, "log_scales", self.batch_shape, "IMTL")
        self._calls = int(state["calls"])
        self._pristine = self._calls == 0

    def scaled_gramian(self, gramian: Tensor, log_scales: Tensor, /) -> Tensor:
        """`D G D` with `D = diag(e^{s - max_j s_j})`: the scaled gradients' Gramian up to one
        positive factor per batch row (which IMTL-G's `alpha` does not see)."""
        scales = torch.exp(log_scales - log_scales.amax(dim=-1, keepdim=True))
        return gramian * scales[..., :, None] * scales[..., None, :]

    def _weights(self, gramian: Tensor, losses: Tensor, /) -> WeightsResult:
        rows = _finite_rows(gramian, losses) if _few_two_task_rows(gramian) else None
        if rows is not None:
            return self._two_task_scalars(gramian, losses, rows[1], rows[2])
        gram, values = _host_inputs(gramian, losses, "IMTL")
        self._match_batch_shape(tuple(gram.shape[:-2]))
        _check_tasks(self, self._log_scales, gram.shape[-1])
        self._used()
        if self._log_scales is None:
            self._log_scales = torch.full_like(values, self.initial_scale)
        scales = self._log_scales
        balance = self._gradient_balance.weights(
            self.scaled_gramian(gram, scales), torch.exp(scales) * values
        )
        weights = balance.weights * torch.exp(scales)
        self._log_scales = scales - self.lr * (torch.exp(scales) * values - 1)
        self._calls += 1
        diagnostics = {"floored": balance.diagnostics["floored"], "log_scales": scales.clone()}
        return WeightsResult(
            weights_in_dtype(weights, gramian.dtype, "IMTL").to(gramian.device), diagnostics
        )

    def _two_task_scalars(
        self, gramian: Tensor, losses: Tensor, entries: list[list[float]], values: list[list[float]]
    ) -> WeightsResult:
        """`_weights` for a few CPU 2 x 2 Gramians on Python floats: the same IEEE operations
        (including IMTL-G's K = 2 closed form on the scaled Gramian), with torch's `exp` and
        `sqrt` on tensors of the general path's shapes (see `two_task_norms`)."""
        batch_shape = tuple(gramian.shape[:-2])
        self._match_batch_shape(batch_shape)
        _check_tasks(self, self._log_scales, 2)
        self._used()
        if self._log_scales is None:
            self._log_scales = torch.full(losses.shape, self.initial_scale, dtype=torch.float64)
        scales = self._log_scales
        listed = scales.reshape(-1, 2).tolist()
        shifted = [
            (s1 - (s1 if s1 > s2 else s2), s2 - (s1 if s1 > s2 else s2)) for s1, s2 in listed
        ]
        relative = (
            torch.exp(torch.tensor(shifted, dtype=torch.float64).reshape(losses.shape))
            .reshape(-1, 2)
            .tolist()
        )
        exponentials = torch.exp(scales).reshape(-1, 2).tolist()
        diagonal = []
        for (g11, _, _, g22), (e1, e2) in zip(entries, relative):
            g11, g22 = 0.5 * (g11 + g11), 0.5 * (g22 + g22)  # `_host_inputs`
            diagonal.append((g11 * e1 * e1, g22 * e2 * e2))  # `scaled_gramian`
        norms = two_task_norms(torch.tensor(diagonal, dtype=torch.float64).reshape(losses.shape))
        weights, stepped, lr = [], [], self.lr
        for (n1, n2), (e1, e2), (s1, s2), (v1, v2) in zip(norms, exponentials, listed, values):
            alpha1, alpha2 = imtlg_two_task_scalars(n1, n2)
            weights.append((alpha1 * e1, alpha2 * e2))
            stepped.append((s1 - lr * (e1 * v1 - 1), s2 - lr * (e2 * v2 - 1)))
        self._log_scales = torch.tensor(stepped, dtype=torch.float64).reshape(losses.shape)
        self._calls += 1
        diagnostics = {"floored": torch.zeros(batch_shape, dtype=torch.bool), "log_scales": scales}
        result = torch.tensor(weights, dtype=torch.float64).reshape(losses.shape)
        return WeightsResult(weights_in_dtype(result, gramian.dtype, "IMTL"), diagnostics)
