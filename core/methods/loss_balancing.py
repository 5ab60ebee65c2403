"""Adaptive loss weightings with state: uncertainty weighting, DWA and FAMO.

All three need only the K loss values (one backward pass), and all three keep state across
steps, so each has `reset()`; what a training loop must call besides `mtl_backward` is stated
per class.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import torch
from torch import Tensor

from core.errors import InvalidHyperparameterError, LossDomainError, MTLInputError
from core.methods.base import LossWeighting, check_reduction


def _check_num_tasks(num_tasks: int) -> int:
    if not isinstance(num_tasks, int) or num_tasks < 1:
        raise InvalidHyperparameterError(f"num_tasks must be a positive integer, got {num_tasks!r}")
    return num_tasks


def _check_task_count(method: LossWeighting, losses: Tensor, num_tasks: int) -> None:
    if losses.shape[-1] != num_tasks:
        raise MTLInputError(
            f"{type(method).__name__} was built for {num_tasks} tasks but got {losses.shape[-1]} losses; "
            "construct it with num_tasks equal to the number of losses"
        )


class _Stateful(LossWeighting):
    batch_independent = False


class UncertaintyWeighting(_Stateful):
    """Uncertainty weighting (Kendall, Gal, Cipolla, CVPR 2018), in its log-variance form.

    With learnable `s_t = log sigma_t^2` the objective is `L = 1/2 sum_t (exp(-s_t) l_t + s_t)`,
    the form of the Nash-MTL, FAMO and LibMTL code (the paper's regression term
    `l / (2 sigma^2) + log sigma`); the loss weights are `w_t = exp(-s_t) / 2` and the penalty is
    `sum_t s_t / 2`. For a fixed loss the optimal `s_t` is `log l_t`, i.e. weight `1 / (2 l_t)`.

    Args:
        num_tasks: K; the log-variances are `parameters()`, created at construction so that an
            optimiser can own them (the Nash-MTL/FAMO setups use their own Adam, lr 0.025).
        initial_log_variance: the initial `s_t` (0 in Nash-MTL/FAMO, -0.5 in LibMTL).
        dtype, device: of the log-variances (float32 on the CPU by default, like a new module;
            the engine casts them to the losses' dtype and device either way).

    `mtl_backward` differentiates the weighted loss plus the penalty with respect to the log-
    variances too, so after it `parameters()` hold their gradients; heads receive `w_t grad l_t`.
    """

    def __init__(
        self,
        num_tasks: int,
        *,
        initial_log_variance: float = 0.0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        self.num_tasks = _check_num_tasks(num_tasks)
        if not torch.isfinite(torch.tensor(float(initial_log_variance))):
            raise InvalidHyperparameterError(f"initial_log_variance must be finite, got {initial_log_variance!r}")
        self.initial_log_variance = float(initial_log_variance)
        self.log_variances = torch.nn.Parameter(torch.full((num_tasks,), self.initial_log_variance, dtype=dtype, device=device))

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return iter((self.log_variances,))

    def reset(self) -> None:
        with torch.no_grad():
            self.log_variances.fill_(self.initial_log_variance)

    def weights(self, losses: Tensor, /) -> Tensor:
        _check_task_count(self, losses, self.num_tasks)
        log_variances = self.log_variances.to(dtype=losses.dtype, device=losses.device)
        return (0.5 * torch.exp(-log_variances)).expand_as(losses)

    def penalty(self) -> Tensor:
        return 0.5 * self.log_variances.sum()


class DynamicWeightAverage(_Stateful):
    """Dynamic Weight Average (Liu, Johns, Davison, CVPR 2019), eq. 7.

    `w_k(e) = K exp(r_k(e-1) / T) / sum_j exp(r_j(e-1) / T)` with `r_k(e-1) = L_k(e-1) / L_k(e-2)`,
    `L_k(e)` the mean training loss of task k over epoch e, and `w_k = 1` for the first two
    epochs; `L = sum_k w_k l_k` (weights sum to K). Tasks whose loss fell least get more weight.

    Args:
        num_tasks: K.
        temperature: T (2 in the paper and every reference).
        window: None (default): epochs are what the loop says they are, by calling `end_epoch()`
            after each one, as the paper and LibMTL. An integer n: an "epoch" is every n calls,
            ended automatically, as Nash-MTL's `DynamicWeightAverage` (n = 25).
        reduction: "sum" (paper, LibMTL) or "mean" (Nash-MTL: `mean(w * l)`, weights / K).

    Every call of the method (one per training step, which `mtl_backward` makes) adds its losses
    to the running mean of the current epoch; weights come from completed epochs only. The epoch
    means, their ratios and the softmax are float64 (ratios capped at its largest value); the
    weights are cast to the losses' dtype.
    """

    def __init__(
        self,
        num_tasks: int,
        *,
        temperature: float = 2.0,
        window: int | None = None,
        reduction: Literal["sum", "mean"] = "sum",
    ) -> None:
        self.num_tasks = _check_num_tasks(num_tasks)
        if not temperature > 0:
            raise InvalidHyperparameterError(f"temperature must be positive, got {temperature!r}")
        if window is not None and (not isinstance(window, int) or window < 1):
            raise InvalidHyperparameterError(f"window must be None or a positive integer, got {window!r}")
        check_reduction(reduction)
        self.temperature = float(temperature)
        self.window = window
        self.reduction = reduction
        self.reset()

    def reset(self) -> None:
        self._epoch_means: list[Tensor] = []
        self._running_sum: Tensor | None = None
        self._running_count = 0

    @property
    def epoch_means(self) -> list[Tensor]:
        """The mean loss vectors of the completed epochs, oldest first."""
        return list(self._epoch_means)

    def end_epoch(self) -> None:
        """Close the current epoch: its mean losses become the newest history entry."""
        if self._running_count == 0:
            raise MTLInputError("end_epoch() was called for an epoch without any step; call the method (mtl_backward) first")
        self._epoch_means.append(self._running_sum / self._running_count)
        self._epoch_means = self._epoch_means[-2:]
        self._running_sum, self._running_count = None, 0

    def current_weights(self, *, like: Tensor | None = None) -> Tensor:
        """The weights the next step will use, from the two last completed epochs."""
        dtype = like.dtype if like is not None else torch.float64
        device = like.device if like is not None else None
        if len(self._epoch_means) < 2:
            weights = torch.ones(self.num_tasks, dtype=dtype, device=device)
        else:
            previous, before = self._epoch_means[-1:-3:-1]  # float64 on the CPU
            if not bool((before > 0).all()):
                raise LossDomainError(f"DWA divides by the epoch-mean losses, which must be positive; got {before.tolist()}")
            # in float64, capped at its largest value: a loss that rose from 1e-24 to 1e14 gives a
            # ratio of 1e38 / T, beyond float32, and the softmax of an infinity is NaN
            scores = (previous / before / self.temperature).clamp_max(torch.finfo(torch.float64).max)
            weights = (self.num_tasks * torch.softmax(scores, dim=-1)).to(dtype=dtype, device=device)
        return weights / self.num_tasks if self.reduction == "mean" else weights

    def weights(self, losses: Tensor, /) -> Tensor:
        _check_task_count(self, losses, self.num_tasks)
        weights = self.current_weights(like=losses).expand_as(losses)
        step_mean = losses.detach().reshape(-1, self.num_tasks).mean(dim=0).to(torch.float64).cpu()
        self._running_sum = step_mean if self._running_sum is None else self._running_sum + step_mean
        self._running_count += 1
        if self.window is not None and self._running_count == self.window:
            self.end_epoch()
        return weights


class FAMO(_Stateful):
    """FAMO: Fast Adaptive Multitask Optimization (Liu, Feng, Stone, Liu, NeurIPS 2023).

    Logits `xi` (init 0), `z = softmax(xi)`, loss lower bounds `l*` (default 0). The model step
    minimises `sum_t z_t log(l_t - l*_t + eps)` rescaled so that the raw-loss weights sum to 1:

        w_t = c z_t / (l_t - l*_t + eps),   c = (sum_t z_t / (l_t - l*_t + eps))^{-1}  (detached)

    After the model step, the loop must call `update(new_losses)` with the losses recomputed on
    the same batch (one extra no-grad forward): with `Delta_t = log(l_t - l*_t + eps) -
    log(l'_t - l*_t + eps)` and `delta = J_softmax(xi)^T Delta = z * Delta - z (z . Delta)`,
    the logits take one step of `optimizer` on the gradient `delta` plus weight decay `gamma xi`:
    "adam" (default) is the reference code's Adam(lr = beta, weight_decay = gamma); "sgd" is the
    paper's `xi <- xi - beta (delta + gamma xi)`. Tasks whose loss fell least gain weight.

    The reference MTL trainers never call this update (their logits stay 0, so they run
    `sum_t log l_t` normalised); we implement and expose it (docs/DECISIONS.md).

    Args:
        num_tasks: K.
        lr: beta, 0.025. weight_decay: gamma, 1e-3 (0.01 for Cityscapes in the paper).
        min_losses: l*, a number or K numbers (0; shift it, e.g. -1, if losses can reach 0).
        eps: 1e-8, inside the log, as the code.
        optimizer: "adam" or "sgd", see above.

    Heads receive `w_t grad l_t`. The update direction is invariant to positive rescaling of
    `l_t - l*_t` (not to nonaffine transforms).
    """

    def __init__(
        self,
        num_tasks: int,
        *,
        lr: float = 0.025,
        weight_decay: float = 1e-3,
        min_losses: float | list[float] | Tensor = 0.0,
        eps: float = 1e-8,
        optimizer: Literal["adam", "sgd"] = "adam",
    ) -> None:
        self.num_tasks = _check_num_tasks(num_tasks)
        if not lr > 0 or not weight_decay >= 0 or not eps >= 0:
            raise InvalidHyperparameterError(f"need lr > 0, weight_decay >= 0, eps >= 0; got {lr}, {weight_decay}, {eps}")
        if optimizer not in ("adam", "sgd"):
            raise InvalidHyperparameterError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        bounds = torch.as_tensor(min_losses, dtype=torch.float64).detach().flatten()
        if bounds.numel() not in (1, num_tasks) or not bool(torch.isfinite(bounds).all()):
            raise InvalidHyperparameterError(f"min_losses must be one finite number or {num_tasks}, got {bounds.tolist()}")
        self.lr, self.weight_decay, self.eps, self.optimizer = float(lr), float(weight_decay), float(eps), optimizer
        self.min_losses = bounds.expand(num_tasks).clone()
        self.reset()

    def reset(self) -> None:
        self.logits = torch.zeros(self.num_tasks, dtype=torch.float64, requires_grad=True)
        self._optimizer = torch.optim.Adam([self.logits], lr=self.lr, weight_decay=self.weight_decay)
        self._last_losses: Tensor | None = None

    def task_weights(self) -> Tensor:
        """`z = softmax(xi)`, the task weights of the log objective."""
        return torch.softmax(self.logits.detach(), dim=-1)

    def _shifted(self, losses: Tensor) -> Tensor:
        shifted = losses.detach().to(torch.float64).cpu() - self.min_losses + self.eps
        if not bool((shifted > 0).all()):
            raise LossDomainError(
                f"FAMO takes log(l - min_losses + eps), which needs every loss above min_losses; got losses "
                f"{losses.tolist()} and min_losses {self.min_losses.tolist()} (lower min_losses, e.g. to -1)"
            )
        return shifted

    def weights(self, losses: Tensor, /) -> Tensor:
        _check_task_count(self, losses, self.num_tasks)
        ratios = self.task_weights() / self._shifted(losses)
        weights = ratios / ratios.sum(dim=-1, keepdim=True)
        self._last_losses = losses.detach().clone() if losses.ndim == 1 else None
        return weights.to(dtype=losses.dtype, device=losses.device)

    def logit_gradient(self, previous_losses: Tensor, new_losses: Tensor) -> Tensor:
        """`delta = J_softmax(xi)^T Delta` for the losses before and after a model step."""
        change = torch.log(self._shifted(previous_losses)) - torch.log(self._shifted(new_losses))
        z = self.task_weights()
        return z * change - z * (z @ change)

    def update(self, new_losses: Tensor | list[Tensor]) -> None:
        """One logit step from the losses of the last weighted step and `new_losses`, recomputed on
        the same batch after the model step (use torch.no_grad() for that forward)."""
        if self._last_losses is None:
            raise MTLInputError("FAMO.update() needs a preceding unbatched step (mtl_backward with K losses) to compare with")
        new = torch.stack(list(new_losses)) if not isinstance(new_losses, Tensor) else new_losses
        _check_task_count(self, new.reshape(-1), self.num_tasks)
        gradient = self.logit_gradient(self._last_losses, new.detach().reshape(-1))
        if self.optimizer == "sgd":
            with torch.no_grad():
                self.logits -= self.lr * (gradient + self.weight_decay * self.logits)
        else:
            self.logits.grad = gradient
            self._optimizer.step()
            self.logits.grad = None
        self._last_losses = None
