"""MGDA (Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from core.errors import InvalidHyperparameterError, LossDomainError
from core.methods.base import GradientWeighting, HeadGradient, gramian_norms, safe_reciprocal
from core.pareto.stationarity import min_norm_point

Normalization = Literal["none", "l2", "loss", "loss+"]
_NORMALIZATIONS = ("none", "l2", "loss", "loss+")


class MGDA(GradientWeighting):
    """The min-norm point of the convex hull of the (normalised) task gradients.

    Solves `a* = argmin_{a in simplex} ||sum_i a_i g_i / s_i||^2` (Sener & Koltun 2018, eq. 3)
    with the shared solver `core.pareto.min_norm_point`: the closed form of their Alg. 1 for
    K = 2, an accelerated projected gradient with active-set polishing for K >= 3 (terminates
    after `max_iterations` at the latest; the KKT gap it reached is in `last_diagnostics`).
    Either the combination is 0 (Pareto stationary) or its negative decreases every task.

    `normalization` picks the scales s_i of the reference code's `gradient_normalizers`:
    "none" (s = 1, the default of the Nash-MTL and LibMTL benchmarks), "l2" (s = ||g_i||),
    "loss" (s = l_i) and "loss+" (s = l_i ||g_i||). As in the reference code the solved `a` is
    applied to the raw losses, `w = a` (`apply_to="raw"`); `apply_to="normalized"` returns
    `w_i = a_i / s_i`, so that the update is the min-norm point of the normalised gradients
    (with "l2" this direction is invariant to strictly increasing loss transforms).

    Scale convention: weights sum to 1 (Nash-MTL's code multiplies them by K). Heads receive
    `w_i grad l_i`, as in the Nash-MTL reference. A zero task gradient makes the min-norm point
    0: all weight goes to the zero-gradient tasks (split evenly between identical ones).
    """

    head_gradient = HeadGradient.WEIGHTED

    def __init__(
        self,
        *,
        normalization: Normalization = "none",
        apply_to: Literal["raw", "normalized"] = "raw",
        tolerance: float | None = None,
        max_iterations: int = 2000,
    ) -> None:
        if normalization not in _NORMALIZATIONS:
            raise InvalidHyperparameterError(f"normalization must be one of {_NORMALIZATIONS}, got {normalization!r}")
        if apply_to not in ("raw", "normalized"):
            raise InvalidHyperparameterError(f"apply_to must be 'raw' or 'normalized', got {apply_to!r}")
        if max_iterations < 1:
            raise InvalidHyperparameterError(f"max_iterations must be >= 1, got {max_iterations!r}")
        self.normalization = normalization
        self.apply_to = apply_to
        self.tolerance = tolerance
        self.max_iterations = max_iterations
        self.last_diagnostics: dict[str, Tensor] = {}

    def weights(self, gramian: Tensor, losses: Tensor, /) -> Tensor:
        inverse_scales = self._inverse_scales(gramian, losses)
        normalized = gramian * inverse_scales[..., :, None] * inverse_scales[..., None, :]
        solution = min_norm_point(normalized, tolerance=self.tolerance, max_iterations=self.max_iterations)
        self.last_diagnostics = {"kkt_gap": solution.kkt_gap.detach(), "min_norm": solution.residual.detach()}
        if self.apply_to == "normalized":
            return solution.weights * inverse_scales
        return solution.weights

    def _inverse_scales(self, gramian: Tensor, losses: Tensor) -> Tensor:
        if self.normalization == "none":
            return torch.ones_like(losses, dtype=gramian.dtype)
        if self.normalization in ("loss", "loss+") and not bool((losses > 0).all()):
            raise LossDomainError(
                f"MGDA normalization {self.normalization!r} divides by the losses, which must be "
                f"positive; got {losses.tolist()}. Use normalization='none' or 'l2'."
            )
        norms = gramian_norms(gramian)
        scales = {"l2": norms, "loss": losses.to(gramian.dtype), "loss+": losses.to(gramian.dtype) * norms}
        return safe_reciprocal(scales[self.normalization])
