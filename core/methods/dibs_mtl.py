"""DiBS-MTL (Murthy, Gupta, Karabag, Fridovich-Keil, Topcu 2025, arXiv:2509.23948) and the
plain normalised-gradient sum.

DiBS-MTL runs the DiBS bargaining iteration (Gupta et al. 2025, arXiv:2505.14817) inside a trust
region of radius r around the current parameters. With unit task gradients `u_i = g_i/||g_i||`,
surrogate preferred states `p_i = -r u_i` and displacement `delta_0 = 0`, the inner loop is

    d_i^k = ||delta_k - p_i||,    delta_{k+1} = delta_k - eta sum_i d_i^k u_i,

stopped when `||delta_{k+1}|| > r`. Because `delta` stays in the span of the `u_i`, everything
is computed from the Gramian: write `delta_k = -sum_j c_j u_j` with `c = sum_{k'<k} eta d^{k'}`;
then `||delta_k - p_i||^2 = c^T U c - 2 r (U c)_i + r^2` with `U_ij = u_i . u_j`. The loop is a
linear scalarisation with detached weights `w_i = c_i / ||g_i||` (spec dibs.md §3.2 step 5).
Only the directions `u_i` enter, so the shared update `sum_i w_i g_i = sum_i c_i u_i` is invariant
to strictly increasing transforms of the losses (`g_i -> h_i'(l_i) g_i`).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from core.errors import InvalidHyperparameterError
from core.methods.base import (
    GradientWeighting,
    HeadGradient,
    Reduction,
    check_integer,
    check_number,
    check_reduction,
    gramian_norms,
    safe_reciprocal,
    unit_gramian,
)

INNER_STEP_RULES = ("radius/steps", "radius/5")
"""How `DiBSMTL` picks its inner step for `steps > 1` when `inner_step` is not given."""


class DiBSMTL(GradientWeighting):
    """DiBS-MTL, 1-step (`steps=1`, the paper's "1-Step DiBS-MTL") or T-step (`steps=T`).

    Weights `w_i = (epsilon / (eta r)) sum_{k < T'} eta d_i^k / ||g_i||` (module docstring), where
    T' counts the inner steps computed, including one rejected by the radius check (as the
    reference code does: the rejected step is accumulated, unprojected, before the check). With
    `steps=1`, `d_i^0 = r`, so `w_i = epsilon / ||g_i||` and the shared update is
    `epsilon * sum_i u_i`.

    **Overall scale `epsilon`.** The paper's epsilon; `None` (default) is the published
    `eta * r` (1e-5 with the defaults), the scale of the first inner step, and any value rescales
    the whole update (1-step and T-step) by `epsilon / (eta r)`. The published scale suits Adam,
    which cancels it except through its `eps` (spec dibs.md §3.5: with 1e-5 the step works in
    Adam's eps-dominated regime, like normalised SGD). With plain SGD the published scale makes
    the step `lr * 1e-5 * sum_i u_i`, which stalls training (100 SGD steps at lr 0.1 leave the
    losses unchanged): use `epsilon=1.0`, so that the update is the sum of unit task gradients
    and `lr` sets the step length, as in normalised gradient descent, and choose `lr` for that
    update, not LS's: `lr * epsilon` about LS's `lr` times the typical `||g_i||` gives LS's step
    (on CPU-scale QM9, `||g_i||` about 0.1 on the shared features for 11 tasks: at LS's `lr`
    3e-3, `epsilon` 0.1 trains and 0.3 or more collapse; RESULTS §6). With `steps > 1` the
    published scale is `eta r` with the smaller inner step (2e-7 for T = 5), below what Adam
    cancels: pass an explicit `epsilon` (measured on MultiMNIST in benchmarks/RESULTS.md §6:
    5-step Δm% 12.9 at the published scale, 4.0-4.4 with epsilon 1e-3 to 0.1 under Adam; on
    CPU-scale QM9 the 5-step version does not stall at 2e-7 and epsilon 1e-3 changes nothing
    detectable, and the 1-step version has a lower Δm% at its published scale than at 1e-3 on
    3 of 3 seeds).

    **Inner step.** Defaults are the reference code's (suryakmurthy/dibs-mtl, HEAD): `radius`
    r = 1e-3; `inner_step` eta = 1e-2 for `steps=1`. For `steps > 1` and `inner_step=None`,
    `inner_step_rule` picks eta: `"radius/steps"` (default, eta = r / T: the inner loop can
    cover the trust region in T steps whatever T is; the MetaWorld code's rule) or `"radius/5"`
    (eta = r / 5 whatever T is: the NYUv2, Cityscapes, QM9 and toy trainers at HEAD). The two
    agree at T = 5, the reference's T.

    `reduction="sum"` sums the unit gradients as the reference does (the step grows with K);
    `"mean"` divides the weights by K. Heads receive `w_i grad l_i`, which keeps the whole
    network's update invariant (the `1/h'` in `w_i` cancels the `h'` in the head gradient).

    Deviation: a task with a zero gradient gets weight 0 (its direction is 0, as in DiBS's
    direction oracle); the reference's 1-step code divides by zero (NaN) and its T-step code adds
    1e-10 to the norm. Gradient-norm clipping of the reference (max_norm 1, a no-op at this scale)
    is left to the user's loop.
    """

    name = "dibsmtl"
    paper = "Murthy, Gupta, Karabag, Fridovich-Keil, Topcu, DiBS-MTL (arXiv:2509.23948, 2025)"
    claims = frozenset({"monotone_invariant", "rescaling_invariant", "permutation_equivariant"})
    head_gradient = HeadGradient.WEIGHTED

    def __init__(
        self,
        *,
        steps: int = 1,
        radius: float = 1e-3,
        inner_step: float | None = None,
        inner_step_rule: Literal["radius/steps", "radius/5"] = "radius/steps",
        epsilon: float | None = None,
        reduction: Reduction = "sum",
    ) -> None:
        self.steps = check_integer("steps", steps)
        self.radius = check_number("radius", radius, minimum=0.0, strict=True)
        if inner_step_rule not in INNER_STEP_RULES:
            raise InvalidHyperparameterError(
                f"inner_step_rule must be one of {INNER_STEP_RULES}, got {inner_step_rule!r}"
            )
        if inner_step is None:
            divisor = steps if inner_step_rule == "radius/steps" else 5
            inner_step = 1e-2 if steps == 1 else radius / divisor
        self.inner_step = check_number("inner_step", inner_step, minimum=0.0, strict=True)
        self.inner_step_rule = inner_step_rule
        published = self.inner_step * self.radius
        self.epsilon = (
            published
            if epsilon is None
            else check_number("epsilon", epsilon, minimum=0.0, strict=True)
        )
        check_reduction(reduction)
        self.reduction = reduction

    def _weights(self, gramian: Tensor, losses: Tensor, /) -> Tensor:
        if self.steps == 1:  # the inner loop's one step from 0 moves by eta * r along every u_i
            weights = self.epsilon * safe_reciprocal(gramian_norms(gramian))
        elif _scalar_path(gramian):
            weights = self._two_task_weights(gramian)
        else:
            unit, norms = unit_gramian(gramian)
            scale = self.epsilon / (self.inner_step * self.radius)
            weights = scale * self.inner_coefficients(unit) * safe_reciprocal(norms)
        return weights / gramian.shape[-1] if self.reduction == "mean" else weights

    def _two_task_weights(self, gramian: Tensor, /) -> Tensor:
        """The T-step weights for K = 2 on Python floats, row by row: `unit_gramian` and
        `inner_coefficients` written out for 2 x 2 (every torch call would cost more than its
        arithmetic; the matrix products differ from torch's by rounding only)."""
        scale = self.epsilon / (self.inner_step * self.radius)
        # the norms by torch's sqrt, as `unit_gramian` takes them (math.sqrt can differ in the last bit)
        norms = gramian_norms(gramian).reshape(-1, 2).tolist()
        entries = gramian.reshape(-1, 4).tolist()
        rows = [self._two_task_row(scale, *norm, *entry) for norm, entry in zip(norms, entries)]
        return torch.tensor(rows, dtype=gramian.dtype).reshape(gramian.shape[:-1])

    def _two_task_row(
        self,
        scale: float,
        norm0: float,
        norm1: float,
        g00: float,
        g01: float,
        g10: float,
        g11: float,
    ) -> tuple[float, float]:
        """The weights `scale c_i / ||g_i||` of one 2 x 2 Gramian (see `_two_task_weights`)."""
        inverse0 = 1.0 / norm0 if norm0 > 0 else 0.0
        inverse1 = 1.0 / norm1 if norm1 > 0 else 0.0
        u00, u01 = g00 * inverse0 * inverse0, g01 * inverse0 * inverse1
        u10, u11 = g10 * inverse1 * inverse0, g11 * inverse1 * inverse1
        radius, step, radius_sq = self.radius, self.inner_step, self.radius**2
        c0 = c1 = 0.0
        for _ in range(self.steps):
            # row i of the differences is c - r e_i (see inner_coefficients)
            d0, d1 = c0 - radius, c1
            first = (d0 * u00 + d1 * u10) * d0 + (d0 * u01 + d1 * u11) * d1
            d0, d1 = c0, c1 - radius
            second = (d0 * u00 + d1 * u10) * d0 + (d0 * u01 + d1 * u11) * d1
            c0 = c0 + step * math.sqrt(max(first, 0.0))
            c1 = c1 + step * math.sqrt(max(second, 0.0))
            if not c0 * (u00 * c0 + u01 * c1) + c1 * (u10 * c0 + u11 * c1) <= radius_sq:
                break  # the rejected step stays counted
        return scale * c0 * inverse0, scale * c1 * inverse1

    def inner_coefficients(self, unit: Tensor, /) -> Tensor:
        """Coefficients `c` of the final displacement `-sum_i c_i u_i` from the unit Gramian."""
        radius_sq = self.radius**2
        coefficients = torch.zeros(unit.shape[:-1], dtype=unit.dtype, device=unit.device)
        active = torch.ones(unit.shape[:-2], dtype=torch.bool, device=unit.device)
        shift = self.radius * torch.eye(unit.shape[-1], dtype=unit.dtype, device=unit.device)
        for _ in range(self.steps):
            # delta - x*_i = -sum_j (c_j - r [j = i]) u_j: the quadratic form of the difference
            # vector, not the expanded |delta|^2 - 2 r <delta, u_i> + r^2, which cancels
            # catastrophically when delta nears a preferred state
            differences = coefficients[..., None, :] - shift  # row i: c - r e_i
            distances_sq = ((differences @ unit) * differences).sum(dim=-1)
            distances = distances_sq.clamp_min(0).sqrt()
            coefficients = torch.where(
                active[..., None], coefficients + self.inner_step * distances, coefficients
            )
            new_norm_sq = (coefficients * (unit @ coefficients[..., None])[..., 0]).sum(dim=-1)
            active = active & (new_norm_sq <= radius_sq)  # the rejected step stays counted
            if not bool(active.any()):
                break
        return coefficients


_SCALAR_ROWS = 64
"""Up to this many 2 x 2 Gramians (float64, on the CPU) the T-step loop runs on Python floats."""


def _scalar_path(gramian: Tensor) -> bool:
    """Whether `DiBSMTL._two_task_weights` serves this Gramian: K = 2, float64 on the CPU, a small
    batch, no autograd graph."""
    return (
        gramian.shape[-1] == 2
        and gramian.dtype == torch.float64
        and gramian.device.type == "cpu"
        and not gramian.requires_grad
        and gramian.numel() <= 4 * _SCALAR_ROWS
    )


class NormalizedSum(GradientWeighting):
    """Normalised sum, the plain sum of unit task gradients: `w_i = 1 / ||g_i||` (DiBS paper, eq. 2).

    The naive normalised-gradient update, which 1-step DiBS-MTL equals up to its scale epsilon.
    Its fixed points are Pareto stationary, it is symmetric and invariant to strictly increasing
    loss transforms, but it is unfair: on `x^2, (x-1)^2` every point of (0, 1) is a fixed point
    (DiBS paper, Example 2). `reduction="mean"` averages instead of summing. A zero gradient
    gets weight 0. Heads receive `w_i grad l_i` (keeps whole-network invariance).
    """

    name = "normalized_sum"
    paper = "Gupta, Murthy, Karabag, Topcu, Fridovich-Keil, DiBS, eq. 2 (NeurIPS 2025, arXiv:2505.14817)"
    claims = frozenset({"monotone_invariant", "rescaling_invariant", "permutation_equivariant"})
    head_gradient = HeadGradient.WEIGHTED

    def __init__(self, *, reduction: Reduction = "sum") -> None:
        check_reduction(reduction)
        self.reduction = reduction

    def _weights(self, gramian: Tensor, losses: Tensor, /) -> Tensor:
        weights = safe_reciprocal(gramian_norms(gramian))
        return weights / gramian.shape[-1] if self.reduction == "mean" else weights
