"""Fixed loss weightings: linear scalarisation and the scale-invariant log-loss sum."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from core.errors import InvalidHyperparameterError, MTLInputError
from core.methods.base import LossWeighting, check_reduction


class LinearScalarization(LossWeighting):
    """Linear scalarisation `L = sum_i w_i l_i` with fixed weights (equal weighting by default).

    Convention: `weights=None` and `reduction="sum"` give `w_i = 1`, the plain sum used by the
    LibMTL, Nash-MTL, FAMO and RLW code; `reduction="mean"` divides the weights by K, the 1/K of
    the RLW paper (which matches E[lambda] of random loss weighting). Explicit `weights` must be
    K finite non-negative numbers, not all zero; "mean" divides them by K as well.

    Claims: with equal weights it is permutation equivariant, and with `reduction="mean"` its
    weights lie on the simplex (explicit weights keep neither in general).
    """

    name = "ls"
    paper = "linear scalarisation (equal weighting), the baseline of every MTL paper"
    claims = frozenset({"permutation_equivariant"})

    def __init__(
        self,
        *,
        weights: Sequence[float] | Tensor | None = None,
        reduction: Literal["sum", "mean"] = "sum",
    ) -> None:
        check_reduction(reduction)
        if weights is not None:
            fixed = torch.as_tensor(weights, dtype=torch.float64).detach()
            if fixed.ndim != 1 or fixed.numel() == 0:
                raise InvalidHyperparameterError(
                    f"weights must be a non-empty vector, got shape {tuple(fixed.shape)}"
                )
            if (
                not bool(torch.isfinite(fixed).all())
                or bool((fixed < 0).any())
                or not bool((fixed > 0).any())
            ):
                raise InvalidHyperparameterError(
                    f"weights must be finite, non-negative and not all zero, got {fixed.tolist()}"
                )
            weights = fixed
        self.fixed_weights = weights
        self.reduction = reduction
        if weights is not None:
            on_simplex = (
                reduction == "mean"
                and abs(float(fixed.sum()) - float(fixed.numel())) <= 1e-12 * fixed.numel()
            )
            self.claims = frozenset({"simplex_weights"}) if on_simplex else frozenset()
        elif reduction == "mean":
            self.claims = frozenset({"permutation_equivariant", "simplex_weights"})

    def _weights(self, losses: Tensor, /) -> Tensor:
        num_tasks = losses.shape[-1]
        if self.fixed_weights is None:
            weights = torch.ones_like(losses)
        elif self.fixed_weights.numel() != num_tasks:
            raise MTLInputError(
                f"LinearScalarization has {self.fixed_weights.numel()} weights but there are {num_tasks} losses"
            )
        else:
            weights = self.fixed_weights.to(dtype=losses.dtype, device=losses.device).expand_as(
                losses
            )
        return weights / num_tasks if self.reduction == "mean" else weights


class ScaleInvariantLS(LossWeighting):
    """Scale-invariant LS, the log-loss sum `L = sum_i log l_i` (Navon et al. 2022, §6, "SI").

    Its gradient is `sum_i grad l_i / l_i`, i.e. detached loss weights `w_i = 1 / l_i`, invariant
    to positive rescaling `l_i -> a_i l_i` (not to shifts or nonaffine transforms). Losses must
    be positive: a zero or negative loss raises `LossDomainError`.
    """

    name = "scaleinvls"
    paper = "Navon et al., Multi-Task Learning as a Bargaining Game, §6 (ICML 2022)"
    claims = frozenset({"rescaling_invariant", "permutation_equivariant"})
    loss_domain = "positive"

    def _weights(self, losses: Tensor, /) -> Tensor:
        return 1.0 / losses
