"""The two-task toy of CAGrad (Liu et al. 2021), reused by Nash-MTL, FAMO and DiBS-MTL.

Formulas and constants from the DiBS-MTL reference code (spec dibs.md §5), x = (x1, x2) in R^2:

    c1 = max(tanh(x2/2), 0),  c2 = max(tanh(-x2/2), 0)
    a1 = log(max(|(-x1 - 7)/2 - tanh(-x2)|, 5e-6)) + 6
    a2 = log(max(|(-x1 + 3)/2 + tanh(-x2) + 2|, 5e-6)) + 6
    s1 = ((-x1 + 7)^2 + 0.1 (-x2 - 8)^2)/10 - 20,  s2 = ((-x1 - 7)^2 + 0.1 (-x2 - 8)^2)/10 - 20
    f1 = scale (a1 c1 + s1 c2),  f2 = a2 c1 + s2 c2

The Pareto set drawn by the reference code is the segment x2 = -8.3552, x1 in [-7, 7].
"""

from __future__ import annotations

import torch
from torch import Tensor

LOWER = 5e-6
PARETO_X2 = -8.3552


class TwoTaskToy:
    """The CAGrad / Nash-MTL / DiBS-MTL illustrative problem: `problem(x [..., 2]) -> [..., 2]`."""

    n_var = 2
    n_obj = 2
    bounds = (-10.0, 10.0)
    # The five starting points of the DiBS-MTL toy trainer.
    default_starts = ((-8.5, 7.5), (0.1, 0.1), (9.0, 9.0), (-7.5, -0.5), (9.0, -1.0))

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

    def starts(self, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
        """The default starting points, `[5, 2]`."""
        return torch.tensor(self.default_starts, dtype=dtype, device=device)

    def pareto_set(self, num_points: int = 1000, *, dtype: torch.dtype = torch.float64) -> Tensor:
        """Points of the Pareto set as drawn by the reference code, `[num_points, 2]`."""
        x1 = torch.linspace(-7, 7, num_points, dtype=dtype)
        return torch.stack([x1, torch.full_like(x1, PARETO_X2)], dim=-1)

    def pareto_front(self, num_points: int = 1000, *, dtype: torch.dtype = torch.float64) -> Tensor:
        """The image of `pareto_set` in loss space, `[num_points, 2]`."""
        return self(self.pareto_set(num_points, dtype=dtype))
