"""The interface every toy problem follows (pymoo-style: `n_var`, `n_obj`, bounds, analytic sets).

A problem is a callable `problem(x [..., n_var]) -> [..., n_obj]` that treats leading dimensions
as independent batch rows, so `core.jacobian.batched_task_gradients` and
`toy_problems.runner.run_toy` run many starting points as one computation. It works in float32
and float64 (the dtype of `x`); its constants are created on `x`'s device and dtype.

`values_and_jacobian(x)` gives the values and the per-task gradients together: by autograd here,
in closed form (no autograd graph) in every problem that has one. The closed forms repeat
autograd's arithmetic, so they equal `batched_task_gradients` (bitwise where the same operations
are done in the same order, to rounding otherwise), and at the kinks they take torch's
conventions (`clamp_min` passes the gradient at the boundary, `abs` has derivative 0 at 0, ...),
each stated in the problem's docstring; tests/toy_problems/test_problem_jacobians.py checks both.
"""

from __future__ import annotations

import torch
from torch import Tensor

from core.errors import InvalidHyperparameterError
from core.jacobian import batched_task_gradients


def unit_samples(num_points: int, generator: torch.Generator | None, /) -> Tensor:
    """`num_points` numbers in [0, 1] (float64) for Pareto-set samplers: evenly spaced without a
    generator (deterministic), uniform draws with one."""
    if generator is None:
        return torch.linspace(0, 1, num_points, dtype=torch.float64)
    return torch.rand(num_points, generator=generator, dtype=torch.float64)


class Problem:
    """Base class of the toy problems.

    Subclasses set `n_var`, `n_obj`, `bounds` (a `(lower, upper)` pair of floats or of
    `[n_var]` sequences: the box the starting points are drawn from) and implement `__call__`.
    Where the Pareto set is known they override `pareto_set` (points `[num_points, n_var]`);
    `pareto_front` is then its image. Where the gradients have a closed form they override
    `values_and_jacobian`; where a bound below the losses is known they set `lower_bound`.

    Box-constrained problems (ZDT1-3) also define `project(x)`, the Euclidean projection onto
    their box, documented on the class: their Pareto sets lie on the box's faces and their facts
    (`lower_bound` included) hold on the box, so gradient methods must project the iterates after
    every step. Problems without `project` are unconstrained: `bounds` only says where starting
    points are drawn.
    """

    n_var: int
    n_obj: int
    bounds: tuple[float | tuple[float, ...], float | tuple[float, ...]]
    lower_bound: float | None = None
    """Every loss value is > lower_bound (used to shift losses for methods that need positive
    losses); None: no known bound. It holds on the problem's domain (R^n, or the box of a problem
    with a `project`). Where a subclass says the bound is attained (an infimum 0 reached at the
    minimisers, e.g. ZDT's f1 = x1 at x1 = 0), losses are only >= lower_bound there, so a shift
    by exactly lower_bound can give a zero loss."""

    def __call__(self, x: Tensor, /) -> Tensor:
        raise NotImplementedError

    def values_and_jacobian(self, x: Tensor, /) -> tuple[Tensor, Tensor]:
        """The values `[..., n_obj]` and the per-task gradients `[..., n_obj, n_var]` of a batch of
        points `x [..., n_var]`, both detached.

        Here by autograd (`core.jacobian.batched_task_gradients`, one backward pass per task);
        problems with closed-form gradients override it with a batched computation that builds no
        autograd graph and reuses the forward pass's intermediate terms. The values equal
        `self(x)`.
        """
        return batched_task_gradients(self, x)

    def lower_upper(
        self, *, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
    ) -> tuple[Tensor, Tensor]:
        """The bounds as two `[n_var]` tensors."""
        lower, upper = (
            torch.as_tensor(b, dtype=dtype, device=device).expand(self.n_var) for b in self.bounds
        )
        return lower, upper

    def starts(
        self,
        num_starts: int,
        /,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """`num_starts` points drawn uniformly from the bounds, `[num_starts, n_var]` (seeded by
        `generator`; problems with published starting points override `default_starts`)."""
        if not isinstance(num_starts, int) or num_starts < 1:
            raise InvalidHyperparameterError(
                f"num_starts must be a positive integer, got {num_starts!r}"
            )
        lower, upper = self.lower_upper(dtype=dtype, device=device)
        unit = torch.rand(num_starts, self.n_var, generator=generator, dtype=dtype).to(device)
        return lower + (upper - lower) * unit

    def default_starts(
        self, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
    ) -> Tensor:
        """The problem's default starting points `[S, n_var]`: 5 seeded uniform draws unless the
        literature fixes them."""
        return self.starts(
            5, generator=torch.Generator().manual_seed(0), dtype=dtype, device=device
        )

    def pareto_set(
        self,
        num_points: int = 1000,
        /,
        *,
        dtype: torch.dtype = torch.float64,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Points of the analytic Pareto set `[num_points, n_var]`; NotImplementedError where it is unknown."""
        raise NotImplementedError(f"{type(self).__name__} has no analytic Pareto set")

    def pareto_front(
        self,
        num_points: int = 1000,
        /,
        *,
        dtype: torch.dtype = torch.float64,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The image of `pareto_set` in objective space, `[num_points, n_obj]`."""
        return self(self.pareto_set(num_points, dtype=dtype, generator=generator))

    @property
    def has_pareto_set(self) -> bool:
        return type(self).pareto_set is not Problem.pareto_set

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_var={self.n_var}, n_obj={self.n_obj})"
