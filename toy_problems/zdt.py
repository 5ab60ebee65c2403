"""ZDT1, ZDT2 and ZDT3 (Zitzler, Deb and Thiele 2000), and the ZDT2 variant of Ma, Du and
Matusik (ICML 2020) used for continuous Pareto exploration (spec pareto_exploration.md §7.1).

The textbook ZDT problems are box-constrained: their Pareto sets lie on the face
x_2 = ... = x_n = 0 of [0, 1]^n, where they are Pareto critical for the box (KKT with active
bounds), not unconstrained stationary points: every task's gradient in x_2..x_n points out of
the box. Their values on the box are exact (no smoothing); "smooth" means C-infinity on the box
minus the face x1 = 0. ZDT1 and ZDT3 contain sqrt(f1 / g), whose x1-slope is -infinity at
x1 = 0; it is evaluated as `sqrt(max(x1, 0)) sqrt(g)`, with the derivative of the square root
taken as 0 where x1 <= 0, so that autograd gives finite gradients everywhere on the box (at
x1 = 0 it reports 0 for that one-sided infinite slope; plain `sqrt` would give NaN even in
grad f1, as 0 * inf). Gradient methods must keep the iterates in the box (`ZDT.project`); the
batched runner does not. See docs/DECISIONS.md, "Toy problems".

The ZDT2 variant remaps R^3 onto the unit cube with sines and cosines, so it is unconstrained and
smooth everywhere and its Pareto set (a cylinder) consists of true stationary points.

Every problem here has a closed-form `values_and_jacobian` that repeats autograd's arithmetic on
`__call__` (bitwise equal to it; tests/toy_problems/test_problem_jacobians.py), with autograd's conventions
at the square root's kink x1 <= 0 described above.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from core.errors import InvalidHyperparameterError
from toy_problems.base import Problem, unit_samples

ZDT3_PARETO_INTERVALS = (
    (0.0, 0.083001534926911633),
    (0.182228728029399780, 0.257762363387830222),
    (0.409313674808656842, 0.453882104088830166),
    (0.618396794439265793, 0.652511703804662519),
    (0.823331798326632738, 0.851832865436413896),
)
"""The x1-ranges of the ZDT3 Pareto set (the first closed, the others open on the left).

With g = 1 the front candidate is F(t) = 1 - sqrt(t) - t sin(10 pi t), t = f1 = x1. A point t is
nondominated iff F(t) < F(s) for every s < t: the strict running minimum of F. Each range ends
at a local minimum of F (F'(t) = 0) and the next one starts where F comes back down to that
minimum's value (a point with the same f2 and a larger f1 is weakly dominated, hence the open
left ends). Computed once with mpmath at 40 digits (root finding on F' and on F - F(previous
right end)); tests/toy_problems/test_toy_problems.py recomputes them from a dense grid. They agree with the
regions tabulated by pymoo to about 5e-8 (pymoo gives 0.182228780 for the second left end).
"""


class ZDT(Problem):
    """Shared parts of ZDT1-3: `f1 = x1`, `g = 1 + 9/(n-1) sum_{i>=2} x_i`, `f2 = g h(f1, g)`,
    on the box [0, 1]^n.

    Pareto set (derivation): on the box, g >= 1 with equality iff x_2 = ... = x_n = 0, and
    `f2` increases with g at fixed f1 (`d f2 / d g` is `1 - sqrt(f1/g)/2`, `1 + (f1/g)^2`,
    `1 - sqrt(f1/g)/2` for ZDT1-3, positive because f1 <= 1 <= g). So every Pareto point has
    g = 1, the front is `f2 = h(f1, 1)` restricted to its nondominated part, and the set is
    `x1` in that part, `x_2..n = 0` (all of [0, 1] for ZDT1 and ZDT2, `ZDT3_PARETO_INTERVALS`
    for ZDT3). At these points the box-KKT conditions hold: on the free coordinate x1 the
    gradients are 1 and `dh/dx1 <= 0` (a convex combination cancels), and on the active lower
    bounds x_2..n the combined gradient `w2 * 9/(n-1) * d f2/d g` is >= 0.

    Box constraint: the problem is posed on [0, 1]^n (its `bounds`), and `project` maps points
    onto that box; gradient methods must apply it after every step (the Pareto set lies on the
    face x_2..n = 0, where the gradients point out of the box). Outside the box the formulas
    still evaluate (f1 = x1 < 0 for x1 < 0, NaN where g < 0) but the problem's facts do not hold.

    Lower bound (on the box): f1 = x1 >= 0, and f2 >= 0 for ZDT1 (`g - sqrt(f1 g)`,
    g >= 1 >= f1) and ZDT2 (`g - f1^2/g`); both bounds are attained (f1 = 0 at x1 = 0, f2 = 0 at
    x1 = 1, g = 1), so the losses are >= `lower_bound = 0.0`, not >. ZDT3's f2 is negative on
    part of its front (down to -0.7734): its `lower_bound` is -1.0 (strict).

    Jacobian (`values_and_jacobian`): grad f1 = e1, and grad f2 = (d f2 / d x1, 9/(n-1)
    d f2 / d g, ..., 9/(n-1) d f2 / d g) with the partial derivatives each subclass gives.

    Args:
        n_var: n >= 2 (30 in the original paper).
    """

    n_obj = 2
    bounds = (0.0, 1.0)
    lower_bound = 0.0

    def __init__(self, *, n_var: int = 30) -> None:
        if not isinstance(n_var, int) or n_var < 2:
            raise InvalidHyperparameterError(f"n_var must be an integer >= 2, got {n_var!r}")
        self.n_var = n_var

    def g(self, x: Tensor, /) -> Tensor:
        """`g(x) = 1 + 9/(n-1) sum_{i>=2} x_i`, `[...]`."""
        return 1 + 9.0 / (self.n_var - 1) * x[..., 1:].sum(dim=-1)

    def second_objective(self, first: Tensor, g: Tensor, /) -> Tensor:
        """`f2 = g h(f1, g)` from `f1` and `g` (each subclass's formula)."""
        raise NotImplementedError

    def second_objective_and_partials(
        self, first: Tensor, g: Tensor, /
    ) -> tuple[Tensor, Tensor, Tensor]:
        """`f2` (exactly as `second_objective` computes it) and its partial derivatives
        `d f2 / d f1` and `d f2 / d g`, rounded as autograd rounds them."""
        raise NotImplementedError

    def __call__(self, x: Tensor, /) -> Tensor:
        first = x[..., 0]
        return torch.stack([first, self.second_objective(first, self.g(x))], dim=-1)

    def values_and_jacobian(self, x: Tensor, /) -> tuple[Tensor, Tensor]:
        """Values `[..., 2]` and gradients `[..., 2, n]` in closed form, without an autograd graph,
        bitwise equal to autograd through `__call__` (the kink at x1 <= 0: see the module
        docstring). `g` is evaluated once and shared by both."""
        x = x.detach()
        first = x[..., 0]
        g = self.g(x)
        second, first_partial, g_partial = self.second_objective_and_partials(first, g)
        jacobian = x.new_zeros(*x.shape[:-1], 2, self.n_var)
        jacobian[..., 0, 0] = 1.0
        jacobian[..., 1, 0] = first_partial
        jacobian[..., 1, 1:] = (g_partial * (9.0 / (self.n_var - 1)))[..., None]
        return torch.stack([first, second], dim=-1), jacobian

    def project(self, x: Tensor, /) -> Tensor:
        """The Euclidean projection onto the box [0, 1]^n (for projected gradient methods): every
        coordinate clamped to [0, 1], row by row. Iterates of gradient methods on ZDT must be
        projected after every step; the problem's facts (Pareto set, `lower_bound`) hold on
        the box."""
        return x.clamp(0.0, 1.0)

    def pareto_x1(self, num_points: int, generator: torch.Generator | None, /) -> Tensor:
        """x1 of the Pareto set (float64): evenly spaced over [0, 1], or uniform with a generator."""
        return unit_samples(num_points, generator)

    def pareto_set(
        self,
        num_points: int = 1000,
        /,
        *,
        dtype: torch.dtype = torch.float64,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """`(x1, 0, ..., 0)` for x1 in the Pareto range, `[num_points, n_var]`."""
        x1 = self.pareto_x1(num_points, generator)
        points = torch.zeros(num_points, self.n_var, dtype=torch.float64)
        points[:, 0] = x1
        return points.to(dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_var={self.n_var})"


class ZDT1(ZDT):
    """ZDT1: `f2 = g (1 - sqrt(f1 / g)) = g - sqrt(f1) sqrt(g)` (the square root at f1 <= 0: see
    the module docstring). Convex front `f2 = 1 - sqrt(f1)`, f1 in [0, 1]; Pareto set x1 in
    [0, 1], x_2..n = 0 (see `ZDT`)."""

    def second_objective(self, first: Tensor, g: Tensor, /) -> Tensor:
        return g - _root(first) * g.sqrt()

    def second_objective_and_partials(
        self, first: Tensor, g: Tensor, /
    ) -> tuple[Tensor, Tensor, Tensor]:
        """`d f2 / d f1 = -sqrt(g) / (2 sqrt(f1))` for f1 > 0 and 0 for f1 <= 0 (the square root's
        convention), `d f2 / d g = 1 - sqrt(f1) / (2 sqrt(g))`."""
        positive, root_of_safe, root = _root_parts(first)
        root_g = g.sqrt()
        second = g - root * root_g
        return (
            second,
            torch.where(positive, -root_g / (2 * root_of_safe), 0.0),
            1 - root / (2 * root_g),
        )


class ZDT2(ZDT):
    """ZDT2: `f2 = g (1 - (f1 / g)^2) = g - f1^2 / g`. Concave front `f2 = 1 - f1^2`, f1 in
    [0, 1]; Pareto set x1 in [0, 1], x_2..n = 0 (see `ZDT`). Smooth on all of R^n with g > 0."""

    def second_objective(self, first: Tensor, g: Tensor, /) -> Tensor:
        return g - first**2 / g

    def second_objective_and_partials(
        self, first: Tensor, g: Tensor, /
    ) -> tuple[Tensor, Tensor, Tensor]:
        """`d f2 / d f1 = -2 f1 / g` (rounded as `(-1/g) (2 f1)`), `d f2 / d g = 1 + (f1^2/g)/g`;
        no kinks."""
        ratio = first**2 / g
        return g - ratio, (-1.0 / g) * (2 * first), 1 + ratio / g


class ZDT3(ZDT):
    """ZDT3: `f2 = g (1 - sqrt(f1 / g) - (f1 / g) sin(10 pi f1))`, evaluated as
    `g - sqrt(f1) sqrt(g) - f1 sin(10 pi f1)` (the square root at f1 <= 0: see the module
    docstring). Disconnected front `f2 = 1 - sqrt(f1) - f1 sin(10 pi f1)` for f1 in the five
    `ZDT3_PARETO_INTERVALS`; Pareto set x1 in those intervals, x_2..n = 0 (see `ZDT`)."""

    lower_bound = (
        -1.0
    )  # f2 >= min_t (1 - sqrt(t) - t sin(10 pi t)) = -0.7734 on the box (see `ZDT`)

    def second_objective(self, first: Tensor, g: Tensor, /) -> Tensor:
        return g - _root(first) * g.sqrt() - first * torch.sin(10 * math.pi * first)

    def second_objective_and_partials(
        self, first: Tensor, g: Tensor, /
    ) -> tuple[Tensor, Tensor, Tensor]:
        """`d f2 / d f1 = -sin(10 pi f1) - 10 pi f1 cos(10 pi f1) - sqrt(g) / (2 sqrt(f1))` (the
        last term 0 for f1 <= 0, the square root's convention; the three summed in autograd's
        order), `d f2 / d g = 1 - sqrt(f1) / (2 sqrt(g))`."""
        positive, root_of_safe, root = _root_parts(first)
        root_g = g.sqrt()
        angle = 10 * math.pi * first
        sine = torch.sin(angle)
        second = g - root * root_g - first * sine
        wave_partial = -sine + (-first * torch.cos(angle)) * (10 * math.pi)
        first_partial = wave_partial + torch.where(positive, -root_g / (2 * root_of_safe), 0.0)
        return second, first_partial, 1 - root / (2 * root_g)

    def pareto_x1(self, num_points: int, generator: torch.Generator | None, /) -> Tensor:
        """x1 spread over the intervals in proportion to their lengths (evenly spaced along their
        concatenation, or uniform with a generator); left ends other than 0 are excluded."""
        lefts = torch.tensor([left for left, _ in ZDT3_PARETO_INTERVALS], dtype=torch.float64)
        lengths = torch.tensor(
            [right - left for left, right in ZDT3_PARETO_INTERVALS], dtype=torch.float64
        )
        ends = lengths.cumsum(dim=0)
        position = unit_samples(num_points, generator) * ends[-1]
        interval = torch.searchsorted(ends, position).clamp(
            max=len(lengths) - 1
        )  # position <= ends[k]
        return lefts[interval] + position - (ends[interval] - lengths[interval])


class ZDT2Variant(Problem):
    """The ZDT2 variant of Ma, Du and Matusik (ICML 2020; spec pareto_exploration.md §7.1).

    x in R^3, s = x2^2 + x3^2, `u1 = sin(x1 + s)/2 + 1/2`, `u2 = u3 = cos(s)/2 + 1/2`, then ZDT2
    with n = 3 on u: `f1 = u1`, `g = 1 + 9/2 (u2 + u3) = 1 + 9/2 (1 + cos s)`,
    `f2 = g (1 - (u1/g)^2) = g - u1^2 / g`. Smooth and unconstrained on R^3.

    Front: `f2 = 1 - f1^2`, f1 in [0, 1] (concave, so weighted sums miss its interior).
    Pareto set: g = 1, i.e. cos s = -1: the cylinders x2^2 + x3^2 = (2k+1) pi. Derivation:
    `grad u1 = cos(x1 + s)/2 (1, 2 x2, 2 x3)` and `grad g = -9/2 sin(s) (0, 2 x2, 2 x3)`, so
    `grad f2 = -(2 u1/g) grad u1 + (1 + u1^2/g^2) grad g`; the two directions are independent when
    (x2, x3) != 0, so `w grad f1 + (1 - w) grad f2 = 0` needs sin s = 0 (or w = 1 with
    cos(x1 + s) = 0, the extremes of u1), then w = 2 u1 / (g + 2 u1). Of the solutions
    s = k pi, odd k gives g = 1 (the front; `f2` increases with g at fixed f1, so g = 1 is
    optimal) and even k gives g = 10 (dominated). On a Pareto cylinder every x1 is Pareto
    optimal; `pareto_set` uses the reference sampler's chart of the first sheet,
    x1 in [-3 pi/2, -pi/2] (where u1 sweeps [0, 1] once) and the angle theta in [-pi, pi):
    (x2, x3) = sqrt(pi) (cos theta, sin theta). tests/toy_problems/test_symbolic_pareto_sets.py derives this
    with sympy.

    Bounds (only for drawing starts; the paper gives none): x1 in [-2 pi, 0] (a period of the
    sine around the chart) and x2, x3 in [-2, 2], a box that contains the first sheet
    (radius sqrt(pi) ~ 1.77) and no other one. No `project`: the problem is unconstrained.

    Lower bound: f1 = u1 in [0, 1] and, with g in [1, 10], f2 = g - u1^2/g >= 1 - 1 = 0; both are
    attained (u1 = 0 where sin(x1 + s) = -1; f2 = 0 where g = 1 and u1 = 1), so the losses are
    >= `lower_bound = 0.0` on R^3, not >.
    """

    n_var = 3
    n_obj = 2
    bounds = ((-2 * math.pi, -2.0, -2.0), (0.0, 2.0, 2.0))
    lower_bound = 0.0

    def __call__(self, x: Tensor, /) -> Tensor:
        s = x[..., 1] ** 2 + x[..., 2] ** 2
        u1 = 0.5 * torch.sin(x[..., 0] + s) + 0.5
        u23 = 0.5 * torch.cos(s) + 0.5
        g = 1 + 4.5 * (u23 + u23)
        return torch.stack([u1, g - u1**2 / g], dim=-1)

    def values_and_jacobian(self, x: Tensor, /) -> tuple[Tensor, Tensor]:
        """Values `[..., 2]` and gradients `[..., 2, 3]` in closed form, without an autograd graph,
        bitwise equal to autograd through `__call__` (smooth: no kinks).

        With `A = x1 + s`: `grad f1 = cos(A)/2 (1, 2 x2, 2 x3)`; `grad f2 = (p, q 2 x2, q 2 x3)`
        with `p = (-1/g)(2 u1) cos(A)/2` and `q = p + 4.5 (1 + (u1^2/g)/g) (-sin s)`
        (the chain rule through u1 and through g = 1 + 9 u23, u23 counted twice as in `__call__`).
        """
        x = x.detach()
        x1, x2, x3 = x[..., 0], x[..., 1], x[..., 2]
        s = x2**2 + x3**2
        angle = x1 + s
        u1 = 0.5 * torch.sin(angle) + 0.5
        u23 = 0.5 * torch.cos(s) + 0.5
        g = 1 + 4.5 * (u23 + u23)
        ratio = u1**2 / g
        cosine = torch.cos(angle)
        half_cosine = 0.5 * cosine  # d f1 / d angle
        first_slope = (-1.0 / g) * (2 * u1) * 0.5 * cosine  # d f2 / d angle, in autograd's rounding
        s_slope = first_slope + ((1 + ratio / g) * 4.5) * -torch.sin(s)  # d f2 / d s
        twice = 2 * x[..., 1:]  # d s / d (x2, x3)
        jacobian = torch.stack(
            [
                torch.cat([half_cosine[..., None], half_cosine[..., None] * twice], dim=-1),
                torch.cat([first_slope[..., None], s_slope[..., None] * twice], dim=-1),
            ],
            dim=-2,
        )
        return torch.stack([u1, g - ratio], dim=-1), jacobian

    def pareto_set(
        self,
        num_points: int = 1000,
        /,
        *,
        dtype: torch.dtype = torch.float64,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Points of the first Pareto sheet `[num_points, 3]`.

        With a `generator`: the reference sampler, `x1 = U(-pi/2, pi/2) - pi`,
        `theta = U(-pi, pi)`, `(x2, x3) = sqrt(pi) (cos theta, sin theta)`. Without: a
        deterministic spread over the same chart, x1 evenly spaced and theta stepping by the
        golden angle (a Fibonacci lattice on the cylinder).
        """
        if generator is None:
            x1 = (
                torch.linspace(-0.5 * math.pi, 0.5 * math.pi, num_points, dtype=torch.float64)
                - math.pi
            )
            golden_angle = math.pi * (3 - math.sqrt(5))
            theta = (
                torch.remainder(
                    golden_angle * torch.arange(num_points, dtype=torch.float64), 2 * math.pi
                )
                - math.pi
            )
        else:
            draws = torch.rand(num_points, 2, generator=generator, dtype=torch.float64)
            x1 = (draws[:, 0] - 0.5) * math.pi - math.pi
            theta = (2 * draws[:, 1] - 1) * math.pi
        radius = math.sqrt(math.pi)
        return torch.stack([x1, radius * torch.cos(theta), radius * torch.sin(theta)], dim=-1).to(
            dtype
        )


def _root(values: Tensor) -> Tensor:
    """`sqrt(max(values, 0))` with derivative 0 where values <= 0 (finite, never NaN)."""
    positive = values > 0
    safe = torch.where(positive, values, torch.ones_like(values))
    return torch.where(positive, safe.sqrt(), torch.zeros_like(values))


def _root_parts(values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """`_root`'s intermediate terms: the mask `values > 0`, `sqrt` of the safe argument (values
    where positive, else 1) and `_root(values)` itself (the same arithmetic)."""
    positive = values > 0
    root_of_safe = torch.where(positive, values, torch.ones_like(values)).sqrt()
    return positive, root_of_safe, torch.where(positive, root_of_safe, torch.zeros_like(values))
