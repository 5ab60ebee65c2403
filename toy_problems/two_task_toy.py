"""The two-task toy of CAGrad (Liu et al. 2021), reused by Nash-MTL, FAMO and DiBS-MTL.

Formulas and constants from the DiBS-MTL reference code (spec dibs.md §5), x = (x1, x2) in R^2:

    c1 = max(tanh(x2/2), 0),  c2 = max(tanh(-x2/2), 0)
    a1 = log(max(|(-x1 - 7)/2 - tanh(-x2)|, 5e-6)) + 6
    a2 = log(max(|(-x1 + 3)/2 + tanh(-x2) + 2|, 5e-6)) + 6
    s1 = ((-x1 + 7)^2 + 0.1 (-x2 - 8)^2)/10 - 20,  s2 = ((-x1 - 7)^2 + 0.1 (-x2 - 8)^2)/10 - 20
    f1 = scale (a1 c1 + s1 c2),  f2 = a2 c1 + s2 c2

The Pareto set drawn by the reference code is the segment x2 = -8.3552, x1 in [-7, 7]; that is
what `pareto_set` returns (the benchmarks measure distances to its image). It is an
approximation: the exact Pareto-stationary curve (`stationary_set`) bends from x2 = -8.3551 at
x1 = 0 to x2 = -8.4345 at x1 = +-7 (derivation in `stationary_set`). In loss space the two fronts
differ by less than 1e-3, but the drawn segment's ends are far from stationary in gradient terms.
"""

from __future__ import annotations

import torch
from torch import Tensor

from toy_problems.base import Problem

LOWER = 5e-6
PARETO_X2 = -8.3552
DIBS_MTL_STARTS = ((-8.5, 7.5), (0.1, 0.1), (9.0, 9.0), (-7.5, -0.5), (9.0, -1.0))
"""The five starting points of the DiBS-MTL toy trainer (spec dibs.md §5)."""


class TwoTaskToy(Problem):
    """The CAGrad / Nash-MTL / DiBS-MTL illustrative problem: `problem(x [..., 2]) -> [..., 2]`.

    Args:
        scale: multiplies f1 (the reference's `scale`, applied before any transform). A positive
            scale changes neither the Pareto set nor the stationary curve.
    """

    n_var = 2
    n_obj = 2
    bounds = (-10.0, 10.0)

    def __init__(self, *, scale: float = 1.0) -> None:
        self.scale = scale

    def __call__(self, x: Tensor, /) -> Tensor:
        x1, x2 = x[..., 0], x[..., 1]
        c1 = torch.tanh(0.5 * x2).clamp_min(0)
        c2 = torch.tanh(-0.5 * x2).clamp_min(0)
        a1 = torch.log((0.5 * (-x1 - 7) - torch.tanh(-x2)).abs().clamp_min(LOWER)) + 6
        a2 = torch.log((0.5 * (-x1 + 3) + torch.tanh(-x2) + 2).abs().clamp_min(LOWER)) + 6
        s1 = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
        s2 = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
        f1 = self.scale * (a1 * c1 + s1 * c2)
        f2 = a2 * c1 + s2 * c2
        return torch.stack([f1, f2], dim=-1)

    def default_starts(self, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
        """The five starting points of the DiBS-MTL toy trainer, `[5, 2]`."""
        return torch.tensor(DIBS_MTL_STARTS, dtype=dtype, device=device)

    def pareto_set(self, num_points: int = 1000, /, *, dtype: torch.dtype = torch.float64, generator: torch.Generator | None = None) -> Tensor:
        """The Pareto set as drawn by the reference code, `[num_points, 2]`: x2 = -8.3552 and x1
        evenly spaced in [-7, 7] (uniform draws when a `generator` is given). Approximate; see
        `stationary_set` for the exact curve."""
        x1 = _segment(num_points, generator) * 14 - 7
        return torch.stack([x1, torch.full_like(x1, PARETO_X2)], dim=-1).to(dtype)

    def stationary_set(self, num_points: int = 1000, /, *, dtype: torch.dtype = torch.float64, generator: torch.Generator | None = None) -> Tensor:
        """The exact Pareto-stationary curve `(x1, x2*(x1))`, x1 in [-7, 7], `[num_points, 2]`.

        Derivation: for x2 < 0, c1 = 0 and c2 = tanh(-x2/2), so f_i = s_i c2 (up to the positive
        scale, which does not move the set). The x1-components of the gradients are
        c2 (x1 - 7)/5 and c2 (x1 + 7)/5; they cancel in `a grad f1 + (1 - a) grad f2` exactly
        for a = (x1 + 7)/14, which lies in [0, 1] iff x1 in [-7, 7]. With that a, the weighted
        s is S = (49 - x1^2)/10 + (x2 + 8)^2/100 - 20, and the x2-component vanishes where

            (x2 + 8)/50 tanh(-x2/2) - S/2 sech^2(x2/2) = 0,

        solved here for x2 in [-9, -8] by bisection in float64 (the left side is negative at -9
        and positive at -8 for every x1 in [-7, 7]). x1 is evenly spaced, or uniform with a
        `generator`.
        """
        x1 = _segment(num_points, generator) * 14 - 7
        low, high = torch.full_like(x1, -9.0), torch.full_like(x1, -8.0)
        for _ in range(60):
            middle = 0.5 * (low + high)
            negative = _stationarity_x2_component(x1, middle) < 0
            low, high = torch.where(negative, middle, low), torch.where(negative, high, middle)
        return torch.stack([x1, 0.5 * (low + high)], dim=-1).to(dtype)


def _stationarity_x2_component(x1: Tensor, x2: Tensor) -> Tensor:
    weighted_s = (49 - x1**2) / 10 + (x2 + 8) ** 2 / 100 - 20
    return (x2 + 8) / 50 * torch.tanh(-0.5 * x2) - 0.5 * weighted_s / torch.cosh(0.5 * x2) ** 2


def _segment(num_points: int, generator: torch.Generator | None) -> Tensor:
    """`num_points` parameters in [0, 1] (float64): evenly spaced, or uniform with a generator."""
    if generator is None:
        return torch.linspace(0, 1, num_points, dtype=torch.float64)
    return torch.rand(num_points, generator=generator, dtype=torch.float64)
