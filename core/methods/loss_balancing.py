"""Adaptive loss weightings with state: uncertainty weighting, DWA and FAMO.

All three need only the K loss values (one backward pass), and all three keep state across
steps with shape `[*batch_shape, K]` (`reset(batch_shape)`; a fresh state adopts the batch shape
of its first call), so B independent runs are one call on losses `[B, K]` and give what B
separate instances give. What a training loop must call besides `mtl_backward` is the lifecycle
of `core.methods.base` (`after_step` for FAMO, `end_epoch` for DWA), stated per class.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import torch
from torch import Tensor

from core.errors import InvalidHyperparameterError, LossDomainError, MTLInputError
from core.methods.base import (
    LossDomain,
    LossWeighting,
    check_integer,
    check_num_tasks,
    check_number,
    check_reduction,
    check_task_count,
    state_tensor,
)


class UncertaintyWeighting(LossWeighting):
    """Uncertainty weighting (Kendall, Gal, Cipolla, CVPR 2018), in its log-variance form.

    With learnable `s_t = log sigma_t^2` the objective is `L = 1/2 sum_t (exp(-s_t) l_t + s_t)`,
    the form of the Nash-MTL, FAMO and LibMTL code (the paper's regression term
    `l / (2 sigma^2) + log sigma`); the loss weights are `w_t = exp(-s_t) / 2` and the penalty is
    `sum_t s_t / 2`. For a fixed loss the optimal `s_t` is `log l_t`, i.e. weight `1 / (2 l_t)`.

    Args:
        num_tasks: K; the log-variances are `parameters()`, created at construction so that an
            optimiser can own them (the Nash-MTL/FAMO setups use their own Adam, lr 0.025).
        initial_log_variance: the initial `s_t` (0 in Nash-MTL/FAMO, -0.5 in LibMTL).

    The log-variances are float32 on the CPU, like a new module's parameters; `to(device=...,
    dtype=...)` moves them (the engine casts them to the losses' dtype and device either way).

    `mtl_backward` differentiates the weighted loss plus the penalty with respect to the log-
    variances too, so after it `parameters()` hold their gradients; heads receive `w_t grad l_t`.
    Batched: the log-variances have shape `[*batch_shape, K]`, one set per run (`reset` changes
    the shape of the same `Parameter` object, so build the optimiser after the first `reset` or
    call; its state of another shape would not fit).
    """

    name = "uw"
    paper = (
        "Kendall, Gal, Cipolla, Multi-Task Learning Using Uncertainty to Weigh Losses (CVPR 2018)"
    )
    claims = frozenset({"permutation_equivariant"})
    stateful = True
    requires_num_tasks = True

    def __init__(
        self,
        num_tasks: int | None = None,
        *,
        initial_log_variance: float = 0.0,
    ) -> None:
        self.num_tasks = check_num_tasks(num_tasks, "UncertaintyWeighting")
        self.initial_log_variance = check_number("initial_log_variance", initial_log_variance)
        self._log_variances = torch.nn.Parameter(
            torch.full((self.num_tasks,), self.initial_log_variance)
        )
        self.reset()

    @property
    def log_variances(self) -> torch.nn.Parameter:
        """The learnable `s = log sigma^2`, `[*batch_shape, K]`."""
        return self._log_variances

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return iter((self._log_variances,))

    def reset(self, batch_shape: tuple[int, ...] = ()) -> None:
        super().reset(batch_shape)
        like = self._log_variances
        self._log_variances.data = torch.full(
            (*self.batch_shape, self.num_tasks),
            self.initial_log_variance,
            dtype=like.dtype,
            device=like.device,
        )
        self._log_variances.grad = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "batch_shape": list(self.batch_shape),
            "log_variances": self._log_variances.detach().clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any], /) -> None:
        self.reset(tuple(state["batch_shape"]))
        values = state_tensor(
            state, "log_variances", (*self.batch_shape, self.num_tasks), "UncertaintyWeighting"
        )
        with torch.no_grad():
            self._log_variances.copy_(values)
        self._used()

    def _weights(self, losses: Tensor, /) -> Tensor:
        check_task_count(self, losses, self.num_tasks)
        self._match_batch_shape(tuple(losses.shape[:-1]))
        self._used()
        log_variances = self._log_variances.to(dtype=losses.dtype, device=losses.device)
        return 0.5 * torch.exp(-log_variances)

    def penalty(self) -> Tensor:
        return 0.5 * self._log_variances.sum()


class DynamicWeightAverage(LossWeighting):
    """Dynamic Weight Average (Liu, Johns, Davison, CVPR 2019), eq. 7.

    `w_k = K exp(r_k / T) / sum_j exp(r_j / T)`: tasks whose loss fell least get more weight.
    Two forms, picked by `window`:

    - `window=None` (default): the paper's epochs, as LibMTL. `r_k(e-1) = L_k(e-1) / L_k(e-2)`
      with `L_k(e)` the mean training loss of task k over epoch e, and `w_k = 1` for the first two
      epochs. The loop calls `end_epoch()` after each epoch (the lifecycle hook); every call of the
      method (one per training step, which `mtl_backward` makes) adds its losses to the running
      mean of the current epoch; weights come from completed epochs only.
    - `window=n`: the Nash-MTL reference's form (`DynamicWeightAverage(iteration_window=25)`). A
      first-in-first-out buffer of the last `2n` loss vectors, initially all ones; each call first
      appends its losses, then, from the (n+2)-th call on, recomputes `r_k` as the mean of the
      newest n entries over the mean of the n before them (ones included while the buffer
      fills), so the weights change every step and include the current losses. `end_epoch()`
      changes nothing.

    Args:
        num_tasks: K.
        temperature: T (2 in the paper and every reference).
        window: None or the reference's `iteration_window` (25 there).
        reduction: "sum" (paper, LibMTL) or "mean" (Nash-MTL: `mean(w * l)`, weights / K).

    The loss means, their ratios and the softmax are float64 on the host (ratios capped at its
    largest value); the weights are cast to the losses' dtype. Losses must be positive. Batched:
    the history has shape `[*batch_shape, K]` per entry, one per run.
    """

    name = "dwa"
    paper = "Liu, Johns, Davison, End-to-End Multi-Task Learning with Attention (CVPR 2019)"
    claims = frozenset({"permutation_equivariant"})
    loss_domain = "positive"
    stateful = True
    requires_num_tasks = True

    def __init__(
        self,
        num_tasks: int | None = None,
        *,
        temperature: float = 2.0,
        window: int | None = None,
        reduction: Literal["sum", "mean"] = "sum",
    ) -> None:
        self.num_tasks = check_num_tasks(num_tasks, "DynamicWeightAverage")
        self.temperature = check_number("temperature", temperature, minimum=0.0, strict=True)
        self.window = None if window is None else check_integer("window", window)
        check_reduction(reduction)
        self.reduction = reduction
        self.reset()

    def reset(self, batch_shape: tuple[int, ...] = ()) -> None:
        super().reset(batch_shape)
        shape = (*self.batch_shape, self.num_tasks)
        self._epoch_means: list[Tensor] = []
        self._running_sum: Tensor | None = None
        self._running_count = 0
        self._calls = 0
        self._current = torch.ones(shape, dtype=torch.float64)
        self._buffer = (
            None
            if self.window is None
            else torch.ones((2 * self.window, *shape), dtype=torch.float64)
        )

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "batch_shape": list(self.batch_shape),
            "calls": self._calls,
            "current": self._current.clone(),
        }
        if self.window is None:
            state["epoch_means"] = [mean.clone() for mean in self._epoch_means]
            state["running_sum"] = None if self._running_sum is None else self._running_sum.clone()
            state["running_count"] = self._running_count
        else:
            assert self._buffer is not None  # the window form keeps one
            state["buffer"] = self._buffer.clone()
        return state

    def load_state_dict(self, state: Mapping[str, Any], /) -> None:
        self.reset(tuple(state["batch_shape"]))
        shape = (*self.batch_shape, self.num_tasks)
        self._calls = int(state["calls"])
        self._current = (
            state_tensor(state, "current", shape, "DynamicWeightAverage").to(torch.float64).clone()
        )
        if self.window is None:
            self._epoch_means = [
                torch.as_tensor(mean, dtype=torch.float64).reshape(shape).clone()
                for mean in state["epoch_means"]
            ]
            running = state["running_sum"]
            self._running_sum = (
                None
                if running is None
                else torch.as_tensor(running, dtype=torch.float64).reshape(shape).clone()
            )
            self._running_count = int(state["running_count"])
        else:
            self._buffer = (
                state_tensor(state, "buffer", (2 * self.window, *shape), "DynamicWeightAverage")
                .to(torch.float64)
                .clone()
            )
        self._pristine = self._calls == 0

    @property
    def epoch_means(self) -> list[Tensor]:
        """The mean loss vectors of the completed epochs, oldest first (epoch form)."""
        return list(self._epoch_means)

    def end_epoch(self) -> None:
        """Close the current epoch: its mean losses become the newest history entry (epoch form)."""
        if self.window is not None:
            return
        if self._running_count == 0:
            raise MTLInputError(
                "end_epoch() was called for an epoch without any step; call the method (mtl_backward) first"
            )
        assert self._running_sum is not None  # every step of the epoch added to it
        self._epoch_means.append(self._running_sum / self._running_count)
        self._epoch_means = self._epoch_means[-2:]
        self._running_sum, self._running_count = None, 0
        if len(self._epoch_means) == 2:
            previous, before = self._epoch_means[1], self._epoch_means[0]
            self._current = self._softmax_weights(previous, before)

    def current_weights(self, *, like: Tensor | None = None) -> Tensor:
        """The weights the next step will use (epoch form; the window form's last ones)."""
        weights = self._current
        if self.reduction == "mean":
            weights = weights / self.num_tasks
        return weights if like is None else weights.to(dtype=like.dtype, device=like.device)

    def _softmax_weights(self, previous: Tensor, before: Tensor) -> Tensor:
        if not bool((before > 0).all()):
            raise LossDomainError(
                f"DWA divides by mean losses, which must be positive; got {before.tolist()}"
            )
        # in float64, capped at its largest value: a loss that rose from 1e-24 to 1e14 gives a
        # ratio of 1e38 / T, beyond float32, and the softmax of an infinity is NaN
        scores = (previous / before / self.temperature).clamp_max(torch.finfo(torch.float64).max)
        return self.num_tasks * torch.softmax(scores, dim=-1)

    def _weights(self, losses: Tensor, /) -> Tensor:
        check_task_count(self, losses, self.num_tasks)
        self._match_batch_shape(tuple(losses.shape[:-1]))
        self._used()
        step_losses = losses.detach().to(device="cpu", dtype=torch.float64)
        if self.window is None:
            weights = self.current_weights(like=losses)
            self._running_sum = (
                step_losses.clone()
                if self._running_sum is None
                else self._running_sum + step_losses
            )
            self._running_count += 1
        else:
            assert self._buffer is not None  # the window form keeps one
            self._buffer = torch.cat([self._buffer[1:], step_losses[None]])
            if self._calls > self.window:
                newest, older = (
                    self._buffer[self.window :].mean(dim=0),
                    self._buffer[: self.window].mean(dim=0),
                )
                self._current = self._softmax_weights(newest, older)
            weights = self.current_weights(like=losses)
        self._calls += 1
        return weights


class FAMO(LossWeighting):
    """FAMO: Fast Adaptive Multitask Optimization (Liu, Feng, Stone, Liu, NeurIPS 2023).

    Logits `xi` (init 0), `z = softmax(xi)`, loss lower bounds `l*` (default 0). The model step
    minimises `sum_t z_t log(l_t - l*_t + eps)` rescaled so that the raw-loss weights sum to 1:

        w_t = c z_t / (l_t - l*_t + eps),   c = (sum_t z_t / (l_t - l*_t + eps))^{-1}  (detached)

    After the model step, the loop calls `after_step(new_losses)` with the losses recomputed on
    the same batch (one extra no-grad forward): with `Delta_t = log(l_t - l*_t + eps) -
    log(l'_t - l*_t + eps)` and `delta = J_softmax(xi)^T Delta = z * Delta - z (z . Delta)`,
    the logits take one step of `optimizer` on the gradient `delta` plus weight decay `gamma xi`:
    "adam" (default) is the reference code's Adam(lr = beta, weight_decay = gamma), computed here
    with torch's Adam formula on the batched logits; "sgd" is the paper's
    `xi <- xi - beta (delta + gamma xi)`. Tasks whose loss fell least gain weight.

    The reference MTL trainers never call this update (their logits stay 0, so they run
    `sum_t log l_t` normalised); we implement and expose it (docs/DECISIONS.md).

    Args:
        num_tasks: K.
        lr: beta, 0.025. weight_decay: gamma, 1e-3 (0.01 for Cityscapes in the paper).
        min_losses: l*, a number, K numbers or a tensor broadcastable to `[*batch_shape, K]`
            (one set of bounds per run; 0 by default; shift it, e.g. -1, if losses can reach 0).
        eps: 1e-8, inside the log, as the code.
        optimizer: "adam" or "sgd", see above.

    State: the logits, Adam's moments (`[*batch_shape, K]`, float64), the number of logit updates
    and the losses of the last weighted call. Heads receive `w_t grad l_t`. The update direction is
    invariant to positive rescaling of `l_t - l*_t` (not to nonaffine transforms).
    """

    name = "famo"
    paper = "Liu, Feng, Stone, Liu, FAMO: Fast Adaptive Multitask Optimization (NeurIPS 2023)"
    claims = frozenset({"permutation_equivariant"})
    loss_domain: LossDomain = "nonnegative"  # an instance may widen it to "any"
    loss_domain_advice = (
        "FAMO takes log(l - min_losses + eps): lower min_losses (e.g. to -1) or shift the losses"
    )
    stateful = True
    requires_num_tasks = True
    needs_post_step_losses = True

    def __init__(
        self,
        num_tasks: int | None = None,
        *,
        lr: float = 0.025,
        weight_decay: float = 1e-3,
        min_losses: float | list[float] | Tensor = 0.0,
        eps: float = 1e-8,
        optimizer: Literal["adam", "sgd"] = "adam",
    ) -> None:
        self.num_tasks = check_num_tasks(num_tasks, "FAMO")
        self.lr = check_number("lr", lr, minimum=0.0, strict=True)
        self.weight_decay = check_number("weight_decay", weight_decay, minimum=0.0)
        self.eps = check_number("eps", eps, minimum=0.0)
        if optimizer not in ("adam", "sgd"):
            raise InvalidHyperparameterError(
                f"optimizer must be 'adam' or 'sgd', got {optimizer!r}"
            )
        self.optimizer = optimizer
        bounds = torch.as_tensor(min_losses, dtype=torch.float64).detach().clone()
        if bounds.ndim == 0:
            bounds = bounds.reshape(1)
        if bounds.shape[-1] not in (1, self.num_tasks) or not bool(torch.isfinite(bounds).all()):
            raise InvalidHyperparameterError(
                f"min_losses must be finite: one number, {self.num_tasks} numbers or a tensor [..., {self.num_tasks}]; "
                f"got shape {tuple(bounds.shape)}"
            )
        self.min_losses = bounds.expand(*bounds.shape[:-1], self.num_tasks).clone()
        if bool((self.min_losses != 0).any()):
            self.loss_domain = "any"  # the bound is the domain: FAMO checks l > l* - eps itself
        self.reset(tuple(self.min_losses.shape[:-1]))

    def reset(self, batch_shape: tuple[int, ...] = ()) -> None:
        super().reset(batch_shape)
        shape = (*self.batch_shape, self.num_tasks)
        try:
            fits = torch.broadcast_shapes(self.min_losses.shape, shape) == shape
        except RuntimeError:
            fits = False
        if not fits:
            raise MTLInputError(
                f"FAMO's min_losses of shape {tuple(self.min_losses.shape)} hold bounds for other runs than "
                f"batch_shape {self.batch_shape}; build it with min_losses that broadcast to {shape}"
            )
        self._logits = torch.zeros(shape, dtype=torch.float64)
        self._exp_avg = torch.zeros(shape, dtype=torch.float64)
        self._exp_avg_sq = torch.zeros(shape, dtype=torch.float64)
        self._step = 0
        self._last_losses: Tensor | None = None

    def state_dict(self) -> dict[str, Any]:
        last = None if self._last_losses is None else self._last_losses.clone()
        return {
            "batch_shape": list(self.batch_shape),
            "logits": self._logits.clone(),
            "exp_avg": self._exp_avg.clone(),
            "exp_avg_sq": self._exp_avg_sq.clone(),
            "step": self._step,
            "last_losses": last,
        }

    def load_state_dict(self, state: Mapping[str, Any], /) -> None:
        self.reset(tuple(state["batch_shape"]))
        shape = (*self.batch_shape, self.num_tasks)
        self._logits = state_tensor(state, "logits", shape, "FAMO").to(torch.float64).clone()
        self._exp_avg = state_tensor(state, "exp_avg", shape, "FAMO").to(torch.float64).clone()
        self._exp_avg_sq = (
            state_tensor(state, "exp_avg_sq", shape, "FAMO").to(torch.float64).clone()
        )
        self._step = int(state["step"])
        last = state.get("last_losses")
        self._last_losses = (
            None
            if last is None
            else torch.as_tensor(last, dtype=torch.float64).reshape(shape).clone()
        )
        self._pristine = self._step == 0 and self._last_losses is None

    @property
    def logits(self) -> Tensor:
        """The logits `xi`, `[*batch_shape, K]` (float64)."""
        return self._logits

    def task_weights(self) -> Tensor:
        """`z = softmax(xi)`, the task weights of the log objective, `[*batch_shape, K]`."""
        return torch.softmax(self._logits, dim=-1)

    def _shifted(self, losses: Tensor) -> Tensor:
        shifted = losses.detach().to(device="cpu", dtype=torch.float64) - self.min_losses + self.eps
        if not bool((shifted > 0).all()):
            raise LossDomainError(
                f"FAMO takes log(l - min_losses + eps), which needs every loss above min_losses; got losses "
                f"{losses.tolist()} and min_losses {self.min_losses.tolist()} (lower min_losses, e.g. to -1)"
            )
        return shifted

    def _weights(self, losses: Tensor, /) -> Tensor:
        check_task_count(self, losses, self.num_tasks)
        self._match_batch_shape(tuple(losses.shape[:-1]))
        self._used()
        ratios = self.task_weights() / self._shifted(losses)
        weights = ratios / ratios.sum(dim=-1, keepdim=True)
        self._last_losses = losses.detach().to(device="cpu", dtype=torch.float64).clone()
        return weights.to(dtype=losses.dtype, device=losses.device)

    def logit_gradient(self, previous_losses: Tensor, new_losses: Tensor) -> Tensor:
        """`delta = J_softmax(xi)^T Delta` for the losses before and after a model step."""
        change = torch.log(self._shifted(previous_losses)) - torch.log(self._shifted(new_losses))
        z = self.task_weights()
        return z * change - z * (z * change).sum(dim=-1, keepdim=True)

    def after_step(self, new_losses: Tensor | list[Tensor], /) -> None:
        """One logit step from the losses of the last weighted call and `new_losses` (the same
        batch after the model step; compute them under torch.no_grad())."""
        if self._last_losses is None:
            raise MTLInputError(
                "FAMO.after_step() needs a preceding weighted step (mtl_backward) to compare with"
            )
        new = torch.stack(list(new_losses)) if not isinstance(new_losses, Tensor) else new_losses
        new = new.detach().to(device="cpu", dtype=torch.float64)
        if tuple(new.shape) != tuple(self._last_losses.shape):
            raise MTLInputError(
                f"FAMO.after_step() got losses of shape {tuple(new.shape)}, expected {tuple(self._last_losses.shape)}"
            )
        gradient = self.logit_gradient(self._last_losses, new)
        self._step += 1  # logit updates so far (Adam's bias correction counts them)
        if self.optimizer == "sgd":
            self._logits = self._logits - self.lr * (gradient + self.weight_decay * self._logits)
        else:
            self._adam_step(gradient)
        self._last_losses = None

    def _adam_step(self, gradient: Tensor) -> None:
        """torch.optim.Adam's step (betas 0.9, 0.999, eps 1e-8, coupled weight decay) on the logits,
        operation for operation, so the batched logits equal those of torch's optimiser."""
        beta1, beta2, eps = 0.9, 0.999, 1e-8
        if self.weight_decay != 0:
            gradient = gradient.add(self._logits, alpha=self.weight_decay)
        self._exp_avg.lerp_(gradient, 1 - beta1)
        self._exp_avg_sq.mul_(beta2).addcmul_(gradient, gradient, value=1 - beta2)
        bias_correction1 = 1 - beta1**self._step
        bias_correction2_sqrt = math.sqrt(1 - beta2**self._step)
        denominator = (self._exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        self._logits = self._logits.addcdiv(
            self._exp_avg, denominator, value=-self.lr / bias_correction1
        )
