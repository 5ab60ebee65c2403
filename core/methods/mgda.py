"""MGDA (Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018)."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from core.errors import InvalidHyperparameterError
from core.methods.base import (
    GradientWeighting,
    HeadGradient,
    WeightsResult,
    check_integer,
    check_number,
    gramian_norms,
    safe_reciprocal,
    weights_in_dtype,
)
from core.methods.projection import _SCALAR_ROWS
from core.pareto.stationarity import min_norm_point

Normalization = Literal["none", "l2", "loss", "loss+"]
_NORMALIZATIONS = ("none", "l2", "loss", "loss+")


class MGDA(GradientWeighting):
    """MGDA, the min-norm point of the convex hull of the (normalised) task gradients.

    Solves `a* = argmin_{a in simplex} ||sum_i a_i g_i / s_i||^2` (Sener & Koltun 2018, eq. 3)
    with the shared solver `core.pareto.min_norm_point`: the closed form of their Alg. 1 for
    K = 2, Wolfe's exact min-norm-point active set for K >= 3 (float64 on the host, to the
    rounding floor unless `tolerance` is given; at most `max_iterations` face solves; the KKT gap
    it reached is in the diagnostics).
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
    1e30 work on float32 Gramians; the diagnostic `"min_norm"` is then float64, in the units of
    `g_i / s_i`. `apply_to="normalized"` weights `a_i / s_i` beyond the Gramian's dtype raise
    `NonFiniteGradientError` (`core.methods.base.weights_in_dtype`).

    Diagnostics: `"kkt_gap"` (the solver's KKT gap, relative to the largest diagonal entry of the
    Gramian it solved) and `"min_norm"` (`||sum_i a_i g_i / s_i||`), both batch-shaped.

    The K = 2 closed form (Sener & Koltun, Alg. 1) clips `a_1` to [0, 1]; the reference code's
    `_min_norm_element_from2` clips it to [0.001, 0.999] (it returns 0.999 or 0.001 at the
    vertices), so where one gradient dominates the other (`g_1 . g_2 >= ||g_1||^2`) the reference
    keeps 0.1% of weight on the task whose gradient is not the min-norm point; we return the exact
    vertex (docs/DECISIONS.md).

    Claims: with the default `normalization="none"` the weights lie on the simplex and the update
    is the min-norm point, so it conflicts with no task; `apply_to="normalized"` keeps the
    non-conflict (the min-norm point of `g_i / s_i` has `g_i . d >= 0`), and with `"l2"` it is
    invariant to strictly increasing loss transforms, with `"loss"` to per-task rescaling (not
    `"loss+"`: `g_i / (l_i ||g_i||)` shrinks by `1/a_i` when `l_i` is multiplied by `a_i`). The loss
    normalisations need positive losses.
    """

    name = "mgda"
    paper = "Sener, Koltun, Multi-Task Learning as Multi-Objective Optimization (NeurIPS 2018)"
    claims = frozenset({"permutation_equivariant", "non_conflicting", "simplex_weights"})
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
            raise InvalidHyperparameterError(
                f"normalization must be one of {_NORMALIZATIONS}, got {normalization!r}"
            )
        if apply_to not in ("raw", "normalized"):
            raise InvalidHyperparameterError(
                f"apply_to must be 'raw' or 'normalized', got {apply_to!r}"
            )
        self.normalization = normalization
        self.apply_to = apply_to
        self.tolerance = (
            None
            if tolerance is None
            else check_number("tolerance", tolerance, minimum=0.0, strict=True)
        )
        self.max_iterations = check_integer("max_iterations", max_iterations)
        self.claims = _mgda_claims(normalization, apply_to)
        if normalization in ("loss", "loss+"):
            self.loss_domain = "positive"

    def _weights(self, gramian: Tensor, losses: Tensor, /) -> WeightsResult:
        if (
            self.normalization == "none"
            and gramian.shape[-1] == 2
            and gramian.device.type == "cpu"
            and gramian.numel() <= 4 * _SCALAR_ROWS
        ):
            fast = _two_task_scalars(gramian)
            if fast is not None:
                return fast
        if self.normalization == "none":
            solution = min_norm_point(
                gramian, tolerance=self.tolerance, max_iterations=self.max_iterations
            )
            return WeightsResult(
                solution.weights,
                {"kkt_gap": solution.kkt_gap.detach(), "min_norm": solution.residual.detach()},
            )
        inverse_scales = self._inverse_scales(gramian, losses)
        normalized, largest_norm = _normalized_gramian(gramian, inverse_scales)
        solution = min_norm_point(
            normalized, tolerance=self.tolerance, max_iterations=self.max_iterations
        )
        min_norm = (
            solution.residual.detach().to(torch.float64) * largest_norm
        )  # in the units of g_i / s_i
        diagnostics = {"kkt_gap": solution.kkt_gap.detach(), "min_norm": min_norm}
        if self.apply_to == "normalized":
            return WeightsResult(
                weights_in_dtype(
                    solution.weights.to(torch.float64) * inverse_scales, gramian.dtype, "MGDA"
                ),
                diagnostics,
            )
        return WeightsResult(solution.weights, diagnostics)

    def _inverse_scales(self, gramian: Tensor, losses: Tensor) -> Tensor:
        """`1 / s_i` in float64 (0 where s_i = 0), so that tiny or huge scales cannot overflow."""
        norms = gramian_norms(gramian.to(torch.float64))
        values = losses.to(torch.float64)
        scales = {"l2": norms, "loss": values, "loss+": values * norms}
        return safe_reciprocal(scales[self.normalization])


def _mgda_claims(normalization: str, apply_to: str) -> frozenset[str]:
    """The claims that hold for a normalisation and an `apply_to` (see `MGDA`)."""
    claims = {"permutation_equivariant"}
    if normalization == "none" or apply_to == "raw":
        claims.add("simplex_weights")
    if normalization == "none" or apply_to == "normalized":
        claims.add("non_conflicting")
    # g_i / s_i is unchanged by a per-task rescaling of l_i for s = ||g_i|| and s = l_i (with
    # "l2" also by any strictly increasing transform), not for s = l_i ||g_i||
    if apply_to == "normalized" and normalization in ("l2", "loss"):
        claims.add("rescaling_invariant")
    if apply_to == "normalized" and normalization == "l2":
        claims.add("monotone_invariant")
    return frozenset(claims)


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
    cosines = (gram * inverse_norms[..., :, None]) * inverse_norms[
        ..., None, :
    ]  # |G_ij / n_i| <= n_j: no overflow
    normalized_norms = norms * inverse_scales
    largest = normalized_norms.amax(dim=-1)
    relative = normalized_norms * safe_reciprocal(largest)[..., None]
    return (cosines * relative[..., :, None] * relative[..., None, :]).to(gramian.dtype), largest


_EPS = 2.220446049250313e-16
"""float64's machine epsilon, as `min_norm_point`'s K = 2 degeneracy test uses it."""


def _two_task_scalars(gramian: Tensor) -> WeightsResult | None:
    """MGDA without normalisation for a few CPU 2 x 2 Gramians on Python floats: the same IEEE
    operations as `min_norm_point`'s K = 2 closed form (symmetrised float64 Gramian divided by its
    largest diagonal entry, Sener & Koltun's Alg. 1, the KKT gap and `a^T G a`), without a numpy
    call each; the residual's `sqrt` is torch's, on a tensor of the general path's shape. None (the
    general path) where an entry is not finite or a diagonal entry is negative."""
    weights, squares, gaps = [], [], []
    for g11, g12, g21, g22 in gramian.detach().to(torch.float64).reshape(-1, 4).tolist():
        g11, g22, g12, g21 = (
            0.5 * (g11 + g11),
            0.5 * (g22 + g22),
            0.5 * (g12 + g21),
            0.5 * (g21 + g12),
        )
        if not (
            math.isfinite(g11)
            and math.isfinite(g22)
            and math.isfinite(g12)
            and math.isfinite(g21)
            and g11 >= 0
            and g22 >= 0
        ):
            return None
        scale = g11 if g11 > g22 else g22
        positive = scale > 0
        if positive:
            g11, g22, g12, g21 = g11 / scale, g22 / scale, g12 / scale, g21 / scale
            denominator = g11 + g22 - 2 * g12
            if denominator <= _EPS * (g11 + g22):
                first = 0.5
            else:
                first = (g22 - g12) / denominator
                first = 0.0 if first < 0 else (1.0 if first > 1 else first)
            second = 1 - first
        else:
            first = second = 1.0 / 2
        product1, product2 = g11 * first + g12 * second, g21 * first + g22 * second
        squared = first * product1 + second * product2
        gap = squared - (product1 if product1 < product2 else product2)
        weights.append((first, second))
        squares.append(squared * (scale if positive else 0.0))
        gaps.append(gap if gap > 0 else 0.0)
    batch_shape, dtype = gramian.shape[:-2], gramian.dtype
    result = torch.tensor(weights, dtype=torch.float64).reshape(*batch_shape, 2).to(dtype)
    diagnostics_shape = batch_shape or (
        1,
    )  # an unbatched Gramian's diagnostics have shape [1] on the general path too
    squared_norm = torch.tensor(squares, dtype=torch.float64).reshape(diagnostics_shape).to(dtype)
    diagnostics = {
        "kkt_gap": torch.tensor(gaps, dtype=torch.float64).reshape(diagnostics_shape).to(dtype),
        "min_norm": squared_norm.clamp_min(0).sqrt(),
    }
    return WeightsResult(result, diagnostics)
