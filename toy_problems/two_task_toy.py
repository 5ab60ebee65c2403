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

`TwoTaskToy.values_and_jacobian` computes the values and both gradients in closed form, in one
pass, repeating the arithmetic autograd does on `__call__` (bitwise equal to it, kinks included;
tests/toy_problems/test_problem_jacobians.py). It is what the batched runner calls every step.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import torch
from torch import Tensor

from toy_problems.base import Problem

_tanh_backward = torch.ops.aten.tanh_backward.default
"""`grad * (1 - y^2)` for `y = tanh(z)`, the kernel autograd uses (fused on some CPUs: writing
the product out in torch ops differs from it by up to 1e-9 relative where tanh saturates)."""

LOWER = 5e-6
PARETO_X2 = -8.3552
DIBS_MTL_STARTS = ((-8.5, 7.5), (0.1, 0.1), (9.0, 9.0), (-7.5, -0.5), (9.0, -1.0))
"""The five starting points of the DiBS-MTL toy trainer (spec dibs.md §5)."""


class TwoTaskToy(Problem):
    """The CAGrad / Nash-MTL / DiBS-MTL illustrative problem: `problem(x [..., 2]) -> [..., 2]`.

    Lower bound: on x2 < 0 (c1 = 0) the losses are `s_i c2` with `s_i >= -20` and
    `0 < c2 < 1`, so > -20 (c2 -> 1 only as x2 -> -inf, where s_i grows: the least value is
    -19.9894, at x1 = +-7, x2 = -8.4345); on x2 > 0 they are `a_i c1` with
    `a_i >= log(5e-6) + 6 = -6.206` and `0 < c1 <= 1`, so >= -6.206; at x2 = 0 both are 0. So
    `lower_bound = -20.0`, strict, for scale in [0, 1]; a scale > 1 makes it `-20 scale`, a
    negative scale None (f1 is then unbounded below).

    Args:
        scale: multiplies f1 (the reference's `scale`, applied before any transform). A positive
            scale changes neither the Pareto set nor the stationary curve.
    """

    n_var = 2
    n_obj = 2
    bounds = (-10.0, 10.0)
    lower_bound = -20.0

    def __init__(self, *, scale: float = 1.0) -> None:
        self.scale = scale
        if scale > 1:
            self.lower_bound = -20.0 * scale
        elif scale < 0:
            self.lower_bound = None

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

    def values_and_jacobian(self, x: Tensor, /) -> tuple[Tensor, Tensor]:
        """Values `[..., 2]` and gradients `[..., 2, 2]` in closed form, in one pass and without an
        autograd graph; bitwise equal to autograd through `__call__`, in float32 and float64.

        With `d_i` the arguments of the absolute values, `L_i = max(|d_i|, 5e-6)`,
        `T = tanh(-x2)`, `sigma = (-1, +1)` and `k_i = (scale, 1)`, task i's gradient is

            d f_i / d x1 = -k_i (c1 G_i / 2 + c2 2 (-x1 + (7, -7)_i) / 10)
            d f_i / d x2 = k_i (a_i c1' / 2 - s_i c2' / 2 - sigma_i c1 G_i (1 - T^2)
                                - c2 (0.1 / 10) 2 (-x2 - 8))

        with `G_i = [|d_i| >= 5e-6] sgn(d_i) / L_i` (the derivative of log max(|d|, 5e-6)),
        `c1' = [tanh(x2/2) >= 0] (1 - tanh(x2/2)^2)` and `c2' = [tanh(-x2/2) >= 0] (1 - tanh(-x2/2)^2)`.
        Every product is rounded as autograd rounds it (`k_i` first, then the chain rule from the
        loss down to x; `1 - t^2` is autograd's own `tanh_backward` kernel); of the terms of a
        component at most two are nonzero at any x (x2 > 0: the log terms, x2 < 0: the
        quadratic ones, x2 = 0: the two gate terms), so their sum does not depend on the order.

        Conventions at the kinks (torch's): `clamp_min(tanh(+-x2/2), 0)` passes the gradient
        where its input is >= 0, so at x2 = 0 (either sign of zero) both gates contribute: the
        one-sided derivatives from both sides are added; `|d|` has derivative `sgn(0) = 0` at
        d = 0; `max(|d|, 5e-6)` passes the gradient where `|d| >= 5e-6` (the boundary included)
        and gives 0 where the clamp is active; where tanh rounds to +-1 its derivative is 0.
        A zero may carry the other sign than autograd's (`torch.equal` treats them alike).
        """
        x = x.detach()
        k = _toy_constants(x.dtype, x.device, self.scale)
        minus_x = -x
        minus_x1, minus_x2 = minus_x[..., :1], minus_x[..., 1:]  # [..., 1]
        tanhs = torch.tanh(minus_x2 * k.tanh_scales)  # [..., 3]: tanh(x2/2), tanh(-x2/2), tanh(-x2)
        gate_tanhs, shared_tanh = tanhs[..., :2], tanhs[..., 2:]
        gates = gate_tanhs.clamp_min(0)
        c1, c2 = gates[..., :1], gates[..., 1:]
        inner = (
            k.half * (minus_x1 + k.log_shifts) + shared_tanh * k.signs
        ) + k.log_offsets  # (d1, d2)
        absolute = inner.abs()
        clamped = absolute.clamp_min(LOWER)
        logs = torch.log(clamped) + k.six  # (a1, a2)
        square_base, x2_base = (
            minus_x1 + k.square_shifts,
            minus_x2 - k.eight,
        )  # (-x1 + 7, -x1 - 7), -x2 - 8
        quadratics = (
            square_base * square_base + k.tenth * (x2_base * x2_base)
        ) / k.ten - k.twenty  # (s1, s2)
        if self.scale != 1.0:  # k_i multiplies first in autograd's chain rule
            values = (logs * c1 + quadratics * c2) * k.task_scales
            logs, quadratics = logs * k.task_scales, quadratics * k.task_scales
            c1, c2 = c1 * k.task_scales, c2 * k.task_scales
        else:
            values = logs * c1 + quadratics * c2
        # [t >= 0] (1 - t^2) (1/2, -1/2) for the gates; heaviside(t, 1) is the mask [t >= 0], -0 included
        gate_slopes = _tanh_backward(torch.heaviside(gate_tanhs, k.one), gate_tanhs) * k.gate_scales
        passes = torch.heaviside(
            absolute - k.lower, k.one
        )  # [|d| >= 5e-6]: |d| - 5e-6 is exact in sign
        log_grads = (c1 / clamped) * (torch.sign(inner) * passes)  # k_i c1 G_i
        quadratic_grads = c2 / k.ten
        d_x1 = -(log_grads * k.half) - quadratic_grads * (k.two * square_base)
        d_x2 = logs * gate_slopes[..., :1] + quadratics * gate_slopes[..., 1:]
        d_x2 = d_x2 + _tanh_backward(log_grads, shared_tanh) * k.minus_signs
        d_x2 = d_x2 - (quadratic_grads * k.tenth) * (k.two * x2_base)
        return values, torch.stack([d_x1, d_x2], dim=-1)

    def default_starts(
        self, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
    ) -> Tensor:
        """The five starting points of the DiBS-MTL toy trainer, `[5, 2]`."""
        return torch.tensor(DIBS_MTL_STARTS, dtype=dtype, device=device)

    def pareto_set(
        self,
        num_points: int = 1000,
        /,
        *,
        dtype: torch.dtype = torch.float64,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The Pareto set as drawn by the reference code, `[num_points, 2]`: x2 = -8.3552 and x1
        evenly spaced in [-7, 7] (uniform draws when a `generator` is given). Approximate; see
        `stationary_set` for the exact curve."""
        x1 = _segment(num_points, generator) * 14 - 7
        return torch.stack([x1, torch.full_like(x1, PARETO_X2)], dim=-1).to(dtype)

    def stationary_set(
        self,
        num_points: int = 1000,
        /,
        *,
        dtype: torch.dtype = torch.float64,
        generator: torch.Generator | None = None,
    ) -> Tensor:
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


class _ToyConstants(NamedTuple):
    """The constants of `TwoTaskToy.values_and_jacobian` as tensors of one dtype and device
    (Python numbers would be wrapped into tensors again on every call; the arithmetic is the
    same: the dtype's rounding of each number)."""

    tanh_scales: Tensor  # (-1/2, 1/2, 1), times -x2
    log_shifts: Tensor  # (-7, 3)
    signs: Tensor  # sigma = (-1, 1)
    minus_signs: Tensor
    log_offsets: Tensor  # (0, 2)
    square_shifts: Tensor  # (7, -7)
    task_scales: Tensor  # (scale, 1)
    gate_scales: Tensor  # (1/2, -1/2)
    half: Tensor
    one: Tensor
    two: Tensor
    six: Tensor
    eight: Tensor
    ten: Tensor
    twenty: Tensor
    tenth: Tensor
    lower: Tensor  # LOWER


@lru_cache(maxsize=64)
def _toy_constants(dtype: torch.dtype, device: torch.device, scale: float) -> _ToyConstants:
    def make(value: float | tuple[float, ...]) -> Tensor:
        return torch.tensor(value, dtype=dtype, device=device)

    return _ToyConstants(
        make((-0.5, 0.5, 1.0)),
        make((-7.0, 3.0)),
        make((-1.0, 1.0)),
        make((1.0, -1.0)),
        make((0.0, 2.0)),
        make((7.0, -7.0)),
        make((float(scale), 1.0)),
        make((0.5, -0.5)),
        *(make(value) for value in (0.5, 1.0, 2.0, 6.0, 8.0, 10.0, 20.0, 0.1, LOWER)),
    )


def _segment(num_points: int, generator: torch.Generator | None) -> Tensor:
    """`num_points` parameters in [0, 1] (float64): evenly spaced, or uniform with a generator."""
    if generator is None:
        return torch.linspace(0, 1, num_points, dtype=torch.float64)
    return torch.rand(num_points, generator=generator, dtype=torch.float64)
