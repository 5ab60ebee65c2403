"""The Fonseca-Fleming problem (Fonseca and Fleming 1995; spec pareto_exploration.md §7.3).

    f1(x) = 1 - exp(-||x - p||^2),  f2(x) = 1 - exp(-||x + p||^2),  p = (1/sqrt(n), ..., 1/sqrt(n))

for x in R^n (any n >= 1, default 2), conventionally drawn from [-4, 4]^n.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from core.errors import InvalidHyperparameterError
from toy_problems.base import Problem, unit_samples


class FonsecaFleming(Problem):
    """`f_{1,2}(x) = 1 - exp(-||x -+ p||^2)` with `p_i = 1/sqrt(n)`, `x [..., n] -> [..., 2]`.

    Pareto set: the segment x = t (1, ..., 1), t in [-1/sqrt(n), 1/sqrt(n)], i.e. between -p and
    p. Derivation: `grad f1 = 2 (x - p) exp(-||x - p||^2)` and `grad f2 = 2 (x + p)
    exp(-||x + p||^2)`. A convex combination with positive weights vanishes iff x - p and x + p
    are antiparallel, i.e. x lies on the line through -p and p strictly between them
    (||p|| = 1); at the ends one gradient is 0. Off that segment no combination vanishes.
    Every stationary point is Pareto optimal: along the segment f1 decreases and f2 increases with
    t, and moving off the segment (in the orthogonal complement of p) increases both distances.
    Front, with sigma = sqrt(n) t in [-1, 1]: `f1 = 1 - exp(-(1 - sigma)^2)`,
    `f2 = 1 - exp(-(1 + sigma)^2)`, i.e. `f2 = 1 - exp(-(2 - sqrt(-log(1 - f1)))^2)`,
    f1 in [0, 1 - exp(-4)] (concave).

    Unconstrained (no `project`; `bounds` is where starts are drawn). Lower bound: both losses
    lie in [0, 1), and 0 is attained at x = p (f1) and x = -p (f2), so they are
    >= `lower_bound = 0.0`, not >.

    Args:
        n_var: the dimension n (2 in the third-party re-implementations the spec cites).
    """

    n_obj = 2
    bounds = (-4.0, 4.0)
    lower_bound = 0.0

    def __init__(self, *, n_var: int = 2) -> None:
        if not isinstance(n_var, int) or n_var < 1:
            raise InvalidHyperparameterError(f"n_var must be a positive integer, got {n_var!r}")
        self.n_var = n_var

    def __call__(self, x: Tensor, /) -> Tensor:
        offset = 1.0 / math.sqrt(self.n_var)
        first = 1 - torch.exp(-(x - offset).pow(2).sum(dim=-1))
        second = 1 - torch.exp(-(x + offset).pow(2).sum(dim=-1))
        return torch.stack([first, second], dim=-1)

    def values_and_jacobian(self, x: Tensor, /) -> tuple[Tensor, Tensor]:
        """Values `[..., 2]` and gradients `[..., 2, n]` in closed form, without an autograd graph,
        bitwise equal to autograd through `__call__` (smooth: no kinks):
        `grad f_{1,2} = exp(-||x -+ p||^2) 2 (x -+ p)`, both tasks in one batched computation
        (the exponentials are shared with the values)."""
        x = x.detach()
        offset = 1.0 / math.sqrt(self.n_var)
        shifted = (
            x[..., None, :]
            + torch.tensor((-offset, offset), dtype=x.dtype, device=x.device)[:, None]
        )  # x -+ p
        exponentials = torch.exp(-shifted.pow(2).sum(dim=-1))  # [..., 2]
        return 1 - exponentials, exponentials[..., None] * (2 * shifted)

    def pareto_set(
        self,
        num_points: int = 1000,
        /,
        *,
        dtype: torch.dtype = torch.float64,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """`t (1, ..., 1)` for t in [-1/sqrt(n), 1/sqrt(n)], `[num_points, n]`: evenly spaced, or
        uniform with a `generator`."""
        unit = unit_samples(num_points, generator)
        t = (2 * unit - 1) / math.sqrt(self.n_var)
        return t[:, None].repeat(1, self.n_var).to(dtype)

    def __repr__(self) -> str:
        return f"FonsecaFleming(n_var={self.n_var})"
