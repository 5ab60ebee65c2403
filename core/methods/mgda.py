"""MGDA (Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from core.errors import InvalidHyperparameterError, LossDomainError
from core.methods.base import (
    GradientWeighting,
    HeadGradient,
    gramian_norms,
    safe_reciprocal,
    weights_in_dtype,
)
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

    Range: with a normalisation, the Gramian of `g_i / s_i` is formed in float64 as cosines times
    relative norms and scaled to a unit largest diagonal before the solve, so losses from 1e-30 to
    1e30 work on float32 Gramians; `last_diagnostics["min_norm"]` is then float64, in the units of
    `g_i / s_i`. `apply_to="normalized"` weights `a_i / s_i` beyond the Gramian's dtype raise
    `NonFiniteGradientError` (`core.methods.base.weights_in_dtype`).
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
        if self.normalization == "none":
            solution = min_norm_point(gramian, tolerance=self.tolerance, max_iterations=self.max_iterations)
            self.last_diagnostics = {"kkt_gap": solution.kkt_gap.detach(), "min_norm": solution.residual.detach()}
            return solution.weights
        inverse_scales = self._inverse_scales(gramian, losses)
        normalized, largest_norm = _normalized_gramian(gramian, inverse_scales)
        solution = min_norm_point(normalized, tolerance=self.tolerance, max_iterations=self.max_iterations)
        min_norm = solution.residual.detach().to(torch.float64) * largest_norm  # in the units of g_i / s_i
        self.last_diagnostics = {"kkt_gap": solution.kkt_gap.detach(), "min_norm": min_norm}
        if self.apply_to == "normalized":
            return weights_in_dtype(solution.weights.to(torch.float64) * inverse_scales, gramian.dtype, "MGDA")
        return solution.weights

    def _inverse_scales(self, gramian: Tensor, losses: Tensor) -> Tensor:
        """`1 / s_i` in float64 (0 where s_i = 0), so that tiny or huge scales cannot overflow."""
        if self.normalization in ("loss", "loss+") and not bool((losses > 0).all()):
            raise LossDomainError(
                f"MGDA normalization {self.normalization!r} divides by the losses, which must be "
                f"positive; got {losses.tolist()}. Use normalization='none' or 'l2'."
            )
        norms = gramian_norms(gramian.to(torch.float64))
        values = losses.to(torch.float64)
        scales = {"l2": norms, "loss": values, "loss+": values * norms}
        return safe_reciprocal(scales[self.normalization])


def _normalized_gramian(gramian: Tensor, inverse_scales: Tensor) -> tuple[Tensor, Tensor]:
    """The Gramian of `g_i / s_i` divided by its largest diagonal entry, and the largest `||g_i|| / s_i`.

    Formed as cosines times relative norms, `(G_ij / (n_i n_j)) (nu_i / nu_max) (nu_j / nu_max)`
    with `n_i = ||g_i||` and `nu_i = n_i / s_i`, in float64, then cast to the Gramian's dtype: no
    factor exceeds 1, so losses of 1e-30 cannot overflow a float32 Gramian (`G / (l_i l_j)` did).
    The min-norm weights do not change under a common factor, and `min_norm_point` divides by the
    largest diagonal entry anyway.
    """
    gram = gramian.to(torch.float64)
    norms = gramian_norms(gram)
    inverse_norms = safe_reciprocal(norms)
    cosines = (gram * inverse_norms[..., :, None]) * inverse_norms[..., None, :]  # |G_ij / n_i| <= n_j: no overflow
    normalized_norms = norms * inverse_scales
    largest = normalized_norms.amax(dim=-1)
    relative = normalized_norms * safe_reciprocal(largest)[..., None]
    return (cosines * relative[..., :, None] * relative[..., None, :]).to(gramian.dtype), largest
