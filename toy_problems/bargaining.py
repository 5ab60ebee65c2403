"""The one-dimensional bargaining examples of the DiBS paper (spec dibs.md §2).

Two agents on S = [0, 1]: `l1 = x^p` (p = 2, or p = 4 in the variant of Example 1) and
`l2 = (x - 1)^2`. Their preferred states are x*_1 = 0 and x*_2 = 1. Example 2 uses p = 2 to show
that the naive normalised-gradient sum is unfair (its unit gradients +1 and -1 cancel everywhere
in (0, 1), so every point is a fixed point) while DiBS reaches the fair point 1/2. Example 1
compares p = 2 with p = 4: `x^4 = (x^2)^2` is a strictly increasing transform of `x^2` on [0, 1],
so every transformation-invariant solution (DiBS included) is the same for both games, while the
Nash bargaining solution, invariant only to affine transforms, moves.
"""

from __future__ import annotations

import torch
from torch import Tensor

from core.errors import InvalidHyperparameterError
from toy_problems.base import Problem, unit_samples


class Bargaining1D(Problem):
    """`f(x) = (x^p, (x - 1)^2)` for `x [..., 1]` on [0, 1], with an even power p >= 2.

    Pareto set: [0, 1]. Derivation: the derivatives are `p x^(p-1)` and `2 (x - 1)`. Inside
    (0, 1) they have opposite signs, so `w p x^(p-1) + (1 - w) 2 (x - 1) = 0` has a solution
    w in (0, 1) and every point is Pareto stationary; at x = 0 (x = 1) the first (second)
    derivative is 0. Both losses are strictly convex, so stationary points are Pareto optimal.
    Outside [0, 1] both derivatives have the same sign: x < 0 is dominated by 0 and x > 1 by 1.
    Front: `f2 = (1 - f1^(1/p))^2`, f1 in [0, 1].

    Unconstrained (no `project`: `bounds` only says where starts are drawn). Lower bound: both
    losses are even powers, >= 0 on R with 0 attained at x = 0 and x = 1, so they are
    >= `lower_bound = 0.0`, not >.

    Args:
        first_power: p, 2 for Example 2 of the DiBS paper, 4 for the variant of Example 1.
    """

    n_var = 1
    n_obj = 2
    bounds = (0.0, 1.0)
    lower_bound = 0.0

    def __init__(self, *, first_power: int = 2) -> None:
        if not isinstance(first_power, int) or first_power < 2 or first_power % 2:
            raise InvalidHyperparameterError(
                f"first_power must be an even integer >= 2, got {first_power!r}"
            )
        self.first_power = first_power

    def __call__(self, x: Tensor, /) -> Tensor:
        x = x[..., 0]
        return torch.stack([x**self.first_power, (x - 1) ** 2], dim=-1)

    def values_and_jacobian(self, x: Tensor, /) -> tuple[Tensor, Tensor]:
        """Values `[..., 2]` and derivatives `[..., 2, 1]` in closed form, without an autograd
        graph, bitwise equal to autograd through `__call__` (polynomials: no kinks):
        `p x^(p-1)` and `2 (x - 1)`, with autograd's `p * x.pow(p - 1)`."""
        x = x.detach()[..., 0]
        below = x - 1
        values = torch.stack([x**self.first_power, below**2], dim=-1)
        derivatives = torch.stack(
            [self.first_power * x.pow(float(self.first_power - 1)), 2 * below], dim=-1
        )
        return values, derivatives[..., None]

    def preferred_states(
        self, *, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
    ) -> Tensor:
        """Each agent's minimiser on [0, 1], `[2, 1]`: x*_1 = 0 and x*_2 = 1 (the DiBS anchors)."""
        return torch.tensor([[0.0], [1.0]], dtype=dtype, device=device)

    def pareto_set(
        self,
        num_points: int = 1000,
        /,
        *,
        dtype: torch.dtype = torch.float64,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Points of [0, 1], `[num_points, 1]`: evenly spaced, or uniform with a `generator`."""
        return unit_samples(num_points, generator)[:, None].to(dtype)

    def __repr__(self) -> str:
        return f"Bargaining1D(first_power={self.first_power})"
