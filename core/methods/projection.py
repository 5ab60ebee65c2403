"""Projection-based gradient weightings on the Gramian: PCGrad, CAGrad and IMTL-G.

Each method's shared update is a linear combination `d = sum_i w_i g_i` of the original task
gradients, and every quantity it needs is an inner product of such combinations, so it runs on
the K x K Gramian `G = J J^T` alone (`(a^T J) . (b^T J) = a^T G b`):

* PCGrad (Yu et al. 2020) tracks each projected gradient `g_i^PC = c_i^T J` by its coefficient
  vector `c_i`; `g_i^PC . g_j = (G c_i)_j`.
* CAGrad (Liu et al. 2021) needs `g_i . g_0 = (G 1/K)_i`, `||g_0||^2 = 1^T G 1 / K^2` and
  `||g_w||^2 = w^T G w`.
* IMTL-G (Liu et al. 2021) needs the unit-gradient inner products `u_i . u_j = G_ij / (||g_i|| ||g_j||)`.

The K x K work runs in float64 on the Gramian's device (it costs nothing next to the Gramian);
weights are returned in the Gramian's dtype.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from core.errors import InvalidHyperparameterError
from core.methods.base import (
    GradientWeighting,
    HeadGradient,
    Reduction,
    check_generator,
    check_reduction,
    safe_reciprocal,
    unit_gramian,
    weights_in_dtype,
)
from core.pareto.stationarity import affine_min_norm_weights, min_norm_point


def _symmetric_float64(gramian: Tensor) -> Tensor:
    gram = gramian.detach().to(torch.float64)
    return 0.5 * (gram + gram.transpose(-1, -2))


# --------------------------------------------------------------------------------------------
# PCGrad
# --------------------------------------------------------------------------------------------


def pcgrad_coefficients(gramian: Tensor, orders: Tensor, /) -> Tensor:
    """Coefficients `C [..., K, K]` of the projected gradients, `g_i^PC = sum_m C_im g_m`.

    `orders [..., K, K-1]` (integer) lists, for each task i, the other tasks j in the order in
    which g_i^PC is projected. Starting from `C_i = e_i`, for each j in turn: if
    `g_i^PC . g_j = (C_i G)_j < 0` and `||g_j||^2 = G_jj > 0`, then
    `C_i <- C_i - ((C_i G)_j / G_jj) e_j` (Yu et al. 2020, Alg. 1, with g_j the original gradient).
    Computed in the Gramian's dtype; batched over the leading dimensions.
    """
    num_tasks = gramian.shape[-1]
    coefficients = torch.eye(num_tasks, dtype=gramian.dtype, device=gramian.device).expand(gramian.shape).clone()
    squared_norms = torch.diagonal(gramian, dim1=-2, dim2=-1)
    orders = orders.to(gramian.device)
    for step in range(num_tasks - 1):
        other = orders[..., step]  # [..., K]: the task each g_i^PC is projected against now
        products = (coefficients @ gramian).gather(-1, other[..., None])[..., 0]  # g_i^PC . g_j
        other_norms = squared_norms.gather(-1, other)
        conflict = (products < 0) & (other_norms > 0)
        safe_norms = torch.where(other_norms > 0, other_norms, torch.ones_like(other_norms))
        amount = torch.where(conflict, products / safe_norms, torch.zeros_like(products))
        coefficients = coefficients - amount[..., None] * torch.nn.functional.one_hot(other, num_tasks).to(gramian.dtype)
    return coefficients


class PCGrad(GradientWeighting):
    """PCGrad, "gradient surgery" (Yu, Kumar, Gupta, Levine, Hausman, Finn, NeurIPS 2020, Alg. 1).

    For each task i, `g_i^PC <- g_i`; then for each other task j in a uniformly random order, if
    `g_i^PC . g_j < 0`, project onto the normal plane of the original g_j:
    `g_i^PC <- g_i^PC - (g_i^PC . g_j / ||g_j||^2) g_j`. The shared update is `sum_i g_i^PC`
    (`reduction="sum"`, the reference default) or their mean (`"mean"`). Writing
    `g_i^PC = sum_m C_im g_m` (see `pcgrad_coefficients`), the weights are `w = sum_i C_i`
    (divided by K for "mean"). No hyperparameters. Heads receive the plain `grad l_i`.

    Randomness: one independent uniformly random order of the other K-1 tasks per task i (and per
    batch element), drawn as the argsort of K x K float64 uniforms from `generator` (the diagonal
    forced last), so a seeded generator reproduces a run and the global RNG is untouched;
    `generator=None` draws from the global RNG (as `torch.randperm` would), like
    `RandomLossWeighting`. With K = 2 there is one order and PCGrad is deterministic.
    `projection_orders` exposes the draw.

    `last_diagnostics`: `"projections"` (batch shape) the number of projections performed.

    Deviations from the reference code (tianheyu927/PCGrad, WeiChengTseng/Pytorch-PCGrad as used
    by Nash-MTL and LibMTL): (1) those shuffle all K gradients, g_i included (projecting g_i^PC on
    g_i when they conflict); this follows the paper (j != i). (2) A zero gradient g_j is skipped
    (the reference divides 0 by 0 only if `g_i^PC . g_j < 0`, which a zero g_j never satisfies, so
    results agree). (3) The order comes from `generator`, not Python's `random.shuffle`.
    A task with a zero gradient keeps its coefficient `e_i` (contributing 0 to the update).
    """

    head_gradient = HeadGradient.RAW

    def __init__(self, *, generator: torch.Generator | None = None, reduction: Reduction = "sum") -> None:
        check_generator(generator)
        check_reduction(reduction)
        self._generator = generator
        self.reduction = reduction
        self.last_diagnostics: dict[str, Tensor] = {}

    @property
    def generator(self) -> torch.Generator | None:
        return self._generator

    def projection_orders(self, batch_shape: tuple[int, ...], num_tasks: int, device: torch.device | None = None) -> Tensor:
        """Random projection orders `[*batch_shape, K, K-1]` (int64) drawn from the generator.

        Row i is a uniformly random permutation of the tasks other than i. Consumes
        `prod(batch_shape) * K * K` float64 uniforms from the generator.
        """
        draw_device = self._generator.device if self._generator is not None else device
        keys = torch.rand((*batch_shape, num_tasks, num_tasks), generator=self._generator, dtype=torch.float64, device=draw_device)
        keys = keys + 2.0 * torch.eye(num_tasks, dtype=torch.float64, device=keys.device)  # j = i sorts last
        return keys.argsort(dim=-1)[..., : num_tasks - 1].to(device)

    def weights(self, gramian: Tensor, losses: Tensor, /) -> Tensor:
        num_tasks = gramian.shape[-1]
        gram = _symmetric_float64(gramian)
        if num_tasks == 1:
            coefficients = torch.ones_like(gram)
            projections = torch.zeros(gram.shape[:-2], dtype=torch.int64, device=gram.device)
        else:
            orders = self.projection_orders(tuple(gram.shape[:-2]), num_tasks, gram.device)
            coefficients = pcgrad_coefficients(gram, orders)
            eye = torch.eye(num_tasks, dtype=torch.bool, device=gram.device)
            projections = ((coefficients != 0) & ~eye).sum(dim=(-1, -2))
        weights = coefficients.sum(dim=-2)
        if self.reduction == "mean":
            weights = weights / num_tasks
        self.last_diagnostics = {"projections": projections}
        return weights_in_dtype(weights, gramian.dtype, "PCGrad")


# --------------------------------------------------------------------------------------------
# CAGrad
# --------------------------------------------------------------------------------------------

_RESCALES = (0, 1, 2)
_INNER_TOLERANCE = 1e-15
"""KKT tolerance of each min-norm solve, relative to the shifted Gramian's largest diagonal entry:
near the rounding floor, far below `min_norm_point`'s default (1e-12 on squared norms would leave
gradients 1e-6 times smaller than the largest unresolved)."""
_INNER_ITERATIONS = 20
"""Cap on the projected-gradient iterations of each min-norm solve (its active-set rounds usually
finish it exactly; the duality gap accounts for any inexactness)."""
_STALL_LIMIT = 8
"""Root steps in a row without a smaller duality gap after which a batch element stops (the gap
has reached the rounding floor of the Gramian)."""


class CAGrad(GradientWeighting):
    """CAGrad, conflict-averse gradient descent (Liu, Liu, Jin, Stone, Liu, NeurIPS 2021, arXiv:2110.14048).

    Primal: `max_d min_i g_i . d` subject to `||d - g_0|| <= c ||g_0||`, with `g_0` the mean
    gradient. Dual over the simplex, with `g_w = sum_i w_i g_i` and `phi = c^2 ||g_0||^2`:

        w* = argmin_{w in simplex} F(w) = g_w . g_0 + sqrt(phi) ||g_w||,
        d* = g_0 + (sqrt(phi) / ||g_w*||) g_w*,

    so the weights are `1/K + (sqrt(phi) / ||g_w*||) w*`, then divided by the output rescaling
    (`rescale` 0: none, 1 (default): `1 + c^2`, 2: `1 + c`, as the reference's `rescale` flag) and
    multiplied by K if `reduction="sum"`. `c = 0` (or `g_0 = 0`) gives exactly `w = 1/K`.

    Defaults: `c = 0.4` (the paper's NYUv2/Cityscapes value, also Nash-MTL's and FAMO's; LibMTL
    uses 0.5), `rescale = 1`, `reduction = "mean"`: the update is at the scale of the mean
    gradient, as in the paper and LibMTL. Nash-MTL's and FAMO's code multiply it by K "to match
    the sum loss": `reduction="sum"`. Heads receive the plain `grad l_i` (as in the reference).

    **Solver** (replaces the reference's SciPy SLSQP from `w = 1/K`). `F` is convex, and
    `sqrt(phi) ||g_w|| = min_{mu > 0} (||g_w||^2 / mu + phi mu) / 2`; for fixed `mu` the
    minimisation over w is the min-norm problem of the shifted hull `conv{g_i + mu g_0}` (Gramian
    `G + mu (b 1^T + 1 b^T) + mu^2 ||g_0||^2 1 1^T`, `b = G 1/K`), solved by the shared
    `core.pareto.min_norm_point` (active set, tolerance near the rounding floor). With `p(mu)` its
    min-norm point and `g_w(mu) = p(mu) - mu g_0`, the optimal `mu*` solves
    `||g_w(mu)|| = sqrt(phi) mu` (`||g_w(mu)|| / mu` is nonincreasing), and
    `d* = g_0 + g_w(mu*) / mu* = p(mu*) / mu*`. The root is bracketed in `[0, 1/(c ||g_0||)]` (in
    units of `max_i ||g_i||`), first tried at the value it has if w* is the vertex with the
    smallest `g_i . g_0`, then found by exact root steps of the quadratic that
    `||g_w(mu)||^2 - phi mu^2` is on each face of the hull, every other step a bisection while one
    end of the bracket keeps moving. Every evaluated w yields the feasible direction
    `d = g_0 + kappa g_w`, `kappa = min(1/mu, sqrt(phi)/||g_w||)` (so `||d - g_0|| <= c ||g_0||`,
    with `||g_w||` bounded from above by its rounding error, `~eps (sum_i w_i ||g_i||)^2` in
    `w^T G w`); the one with the largest `min_i g_i . d` is returned. The duality gap
    `min_w F(w) - min_i g_i . d` bounds the suboptimality of both; the solver stops when it is at
    most `tolerance * ||g_w|| (1 + c) ||g_0||` (the scale of F), when it stalls (8 steps without
    decrease), or after `max_iterations` root steps: termination is guaranteed, and the gap is
    reported. Accuracy: from a float64 Gramian, objective values are resolved to ~1e-16 of
    `max_i ||g_i||^2` and `||g_w||` to ~1e-8 of `max_i ||g_i||`, so where the binding tasks have
    gradients 1e8 times smaller than the largest the gap stalls near 1e-8 `max_i ||g_i||^2`.

    Degenerate case: if the dual optimum has `g_w* = 0` (0 in the hull and the ball reaching the
    non-conflict cone), the formula for `d*` is 0/0 and every `d` in the ball with
    `g_i . d >= 0` is optimal; the iteration then tends to `lim_{mu -> 0} p(mu) / mu`, which is
    such a `d` (the reference returns whatever its `1e-8` guards give). `g_0 = 0` gives `d = 0`.

    `last_diagnostics`: `"dual_gap"` (batch shape, relative to `max_i ||g_i||^2`),
    `"dual_weights"` (the simplex point certifying it, see `solve`) and `"iterations"` (root steps).

    Deviations from the reference (Cranial-XIX/CAGrad; `CAGrad.cagrad` in nash-mtl and FAMO): the
    solver above instead of SLSQP (which stops at `ftol = 1e-6`), no `1e-8` added to `||g_0||`,
    `c ||g_0||`, `w^T G w` or `||g_w||`, and the output scale set by `reduction` (mean by default;
    Nash-MTL/FAMO multiply by K).

    Args:
        c: radius of the ball around `g_0`, relative to `||g_0||` (>= 0; the paper proves
            convergence for `c < 1`).
        rescale: 0 (none), 1 (divide by `1 + c^2`, default) or 2 (divide by `1 + c`).
        reduction: "mean" (default, paper/LibMTL scale) or "sum" (times K, Nash-MTL/FAMO).
        tolerance: relative duality gap at which the solver stops (> 0).
        max_iterations: hard cap on root steps per call (>= 1).
    """

    head_gradient = HeadGradient.RAW

    def __init__(
        self,
        *,
        c: float = 0.4,
        rescale: Literal[0, 1, 2] = 1,
        reduction: Reduction = "mean",
        tolerance: float = 1e-10,
        max_iterations: int = 100,
    ) -> None:
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not (c >= 0 and c < float("inf")):
            raise InvalidHyperparameterError(
                f"c (the radius of the ball around the mean gradient, relative to its norm) must be a "
                f"finite number >= 0, got {c!r}; the paper uses 0.4 (convergence is proven for c < 1)"
            )
        if rescale not in _RESCALES or isinstance(rescale, bool):
            raise InvalidHyperparameterError(
                f"rescale must be 0 (none), 1 (divide by 1 + c^2) or 2 (divide by 1 + c), got {rescale!r}"
            )
        check_reduction(reduction)
        if not (tolerance > 0):
            raise InvalidHyperparameterError(f"tolerance must be positive (a relative duality gap, e.g. 1e-10), got {tolerance!r}")
        if isinstance(max_iterations, bool) or not isinstance(max_iterations, int) or max_iterations < 1:
            raise InvalidHyperparameterError(f"max_iterations must be a positive integer, got {max_iterations!r}")
        self.c = float(c)
        self.rescale = rescale
        self.reduction = reduction
        self.tolerance = float(tolerance)
        self.max_iterations = max_iterations
        self.last_diagnostics: dict[str, Tensor] = {}

    @property
    def output_scale(self) -> float:
        """The factor applied to `d*`: `1 / (1 + c^2)`, `1 / (1 + c)` or 1, times K for "sum"."""
        return {0: 1.0, 1: 1.0 / (1.0 + self.c**2), 2: 1.0 / (1.0 + self.c)}[self.rescale]

    def weights(self, gramian: Tensor, losses: Tensor, /) -> Tensor:
        num_tasks = gramian.shape[-1]
        gram = _symmetric_float64(gramian)
        direction, dual_weights, gap, iterations = self.solve(gram)
        weights = direction * self.output_scale
        if self.reduction == "sum":
            weights = weights * num_tasks
        self.last_diagnostics = {"dual_gap": gap, "dual_weights": dual_weights, "iterations": torch.tensor(iterations)}
        return weights_in_dtype(weights, gramian.dtype, "CAGrad")

    def solve(self, gramian: Tensor, /) -> tuple[Tensor, Tensor, Tensor, int]:
        """Weights of `d*` (before rescaling), dual weights, the relative duality gap, root steps used.

        `gramian` `[..., K, K]`; computed in float64. The direction's weights are
        `1/K + kappa w` (they sum to `1 + kappa`); the dual weights are the simplex point with the
        smallest `F` seen, which certifies the gap: `F(w_dual) - min_i g_i . d <= gap * max_i G_ii`.
        With rank-deficient Gramians the `w` inside the direction may differ from `w_dual`
        (several `w` give the same `g_w`).
        """
        gram = _symmetric_float64(gramian)
        num_tasks = gram.shape[-1]
        scale = torch.diagonal(gram, dim1=-2, dim2=-1).amax(dim=-1).clamp_min(0)
        gram = gram / torch.where(scale > 0, scale, torch.ones_like(scale))[..., None, None]
        mean_products = gram.mean(dim=-1)  # b_i = g_i . g_0
        mean_sq = mean_products.mean(dim=-1).clamp_min(0)  # ||g_0||^2
        radius = self.c * mean_sq.sqrt()  # sqrt(phi)
        uniform = torch.full(gram.shape[:-1], 1.0 / num_tasks, dtype=gram.dtype, device=gram.device)
        trivial = radius <= 0
        if bool(trivial.all()):
            return uniform, uniform, torch.zeros_like(radius), 0
        safe_radius = torch.where(trivial, torch.ones_like(radius), radius)

        diagonal_sqrt = torch.diagonal(gram, dim1=-2, dim2=-1).clamp_min(0).sqrt()
        noise_factor = 4 * num_tasks * torch.finfo(gram.dtype).eps

        def evaluate(mu: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
            """Everything at `mu`; the min-norm solve runs only where `mask` (the rest is unused)."""
            shift = mu[..., None, None] * (mean_products[..., :, None] + mean_products[..., None, :])
            shifted = gram + shift + (mu**2 * mean_sq)[..., None, None]
            if mask is None or bool(mask.all()):
                weights = min_norm_point(shifted, tolerance=_INNER_TOLERANCE, max_iterations=_INNER_ITERATIONS).weights
            else:
                weights = uniform.clone()
                weights[mask] = min_norm_point(shifted[mask], tolerance=_INNER_TOLERANCE, max_iterations=_INNER_ITERATIONS).weights
            product = (gram @ weights[..., None])[..., 0]  # g_i . g_w
            norm_sq = (weights * product).sum(dim=-1).clamp_min(0)
            # w^T G w loses ~eps (sum_i w_i ||g_i||)^2 to cancellation; bounding ||g_w|| from above
            # keeps d feasible and F an upper bound when g_w is tiny next to the g_i it combines
            spread = (weights.abs() * diagonal_sqrt).sum(dim=-1)
            norm = (norm_sq + noise_factor * spread**2).sqrt()
            inverse_mu = torch.where(mu > 0, 1.0 / torch.where(mu > 0, mu, torch.ones_like(mu)), torch.inf)
            ratio = torch.where(norm > 0, safe_radius / torch.where(norm > 0, norm, torch.ones_like(norm)), torch.inf)
            kappa = torch.minimum(inverse_mu, ratio)
            kappa = torch.where(torch.isinf(kappa), torch.zeros_like(kappa), kappa)
            return {
                "mu": mu,
                "weights": weights,
                "residual": norm_sq - (safe_radius * mu) ** 2,  # > 0 below the root
                "dual": (weights * mean_products).sum(dim=-1) + safe_radius * norm,  # F(w)
                "primal": (mean_products + kappa[..., None] * product).amin(dim=-1),  # min_i g_i . d
                "kappa": kappa,
                "norm": norm,
            }

        low = evaluate(torch.zeros_like(radius))
        high = evaluate(1.0 / safe_radius)  # ||g_w|| <= 1 = max_i ||g_i||, so the residual is <= 0
        best = _keep_better({key: high[key] for key in ("weights", "kappa", "primal")}, low)
        dual = torch.minimum(low["dual"], high["dual"])
        dual_weights = torch.where((low["dual"] <= high["dual"])[..., None], low["weights"], high["weights"])
        dual_norm = torch.where(low["dual"] <= high["dual"], low["norm"], high["norm"])
        mean_norm = mean_sq.sqrt()
        streak = torch.zeros_like(radius, dtype=torch.int64)  # +n: low end moved n times in a row; -n: high
        stalled = torch.zeros_like(radius, dtype=torch.int64)  # steps without a smaller gap
        gap = (dual - best["primal"]).clamp_min(0)
        # first guess: the root if w* is the vertex that large mu selects (smallest g_i . g_0)
        vertex = mean_products.argmin(dim=-1, keepdim=True)
        guess = torch.diagonal(gram, dim1=-2, dim2=-1).gather(-1, vertex)[..., 0].clamp_min(0).sqrt() / safe_radius
        guess = torch.where(guess > 0, guess, 0.5 / safe_radius)
        iterations = 0
        while True:
            # F = g_w . g_0 + c ||g_0|| ||g_w|| is of the order ||g_w|| (1 + c) ||g_0||: the gap is
            # measured against that, so that tasks with small gradients are still resolved
            active = ~trivial & (gap > self.tolerance * dual_norm * (mean_norm + radius)) & (stalled < _STALL_LIMIT)
            active = active & (high["mu"] - low["mu"] > 4 * torch.finfo(gram.dtype).eps * high["mu"])
            if iterations >= self.max_iterations or not bool(active.any()):
                break
            if iterations == 0:
                point_mu = guess
            else:
                fraction = _root_fraction(gram, low, high, safe_radius).clamp(1e-3, 1 - 1e-3)
                # safeguard: while one end keeps moving, every other step bisects (the bracket halves)
                bisect = (streak != 0) & (streak.abs() % 2 == 0)
                fraction = torch.where(bisect, torch.full_like(fraction, 0.5), fraction)
                point_mu = low["mu"] + fraction * (high["mu"] - low["mu"])
            iterations += 1
            point = evaluate(point_mu, active)
            best = _keep_better(best, point, active)
            lower_dual = active & (point["dual"] < dual)
            dual = torch.where(lower_dual, point["dual"], dual)
            dual_weights = torch.where(lower_dual[..., None], point["weights"], dual_weights)
            dual_norm = torch.where(lower_dual, point["norm"], dual_norm)
            new_gap = (dual - best["primal"]).clamp_min(0)
            stalled = torch.where(active & (new_gap >= gap), stalled + 1, torch.zeros_like(stalled))
            gap = new_gap
            below = point["residual"] > 0
            moved_low, moved_high = active & below, active & ~below
            low = _replace(low, point, moved_low)
            high = _replace(high, point, moved_high)
            streak = torch.where(moved_low, streak.clamp_min(0) + 1, torch.where(moved_high, streak.clamp_max(0) - 1, streak))
        direction = uniform + best["kappa"][..., None] * best["weights"]
        direction = torch.where(trivial[..., None], uniform, direction)
        gap = torch.where(trivial, torch.zeros_like(gap), gap)
        dual_weights = torch.where(trivial[..., None], uniform, dual_weights)
        return direction, dual_weights, gap, iterations


def _keep_better(best: dict[str, Tensor], point: dict[str, Tensor], mask: Tensor | None = None) -> dict[str, Tensor]:
    better = point["primal"] > best["primal"]
    if mask is not None:
        better = better & mask
    return {
        "weights": torch.where(better[..., None], point["weights"], best["weights"]),
        "kappa": torch.where(better, point["kappa"], best["kappa"]),
        "primal": torch.where(better, point["primal"], best["primal"]),
    }


def _replace(end: dict[str, Tensor], point: dict[str, Tensor], mask: Tensor) -> dict[str, Tensor]:
    return {key: torch.where(mask[..., None] if value.ndim > mask.ndim else mask, point[key], value) for key, value in end.items()}


def _root_fraction(gram: Tensor, low: dict[str, Tensor], high: dict[str, Tensor], radius: Tensor) -> Tensor:
    """Root in [0, 1] of `q(t) = ||g_w(t)||^2 - phi mu(t)^2` with w and mu interpolated linearly.

    On one face of the shifted hull `g_w(mu)` is affine in mu, so this root is exact there.
    `q(0) >= 0 >= q(1)`; returns 0.5 where the root cannot be computed.
    """
    w_low, w_high = low["weights"], high["weights"]
    a = (w_low * (gram @ w_low[..., None])[..., 0]).sum(dim=-1)
    b = (w_high * (gram @ w_high[..., None])[..., 0]).sum(dim=-1)
    cross = (w_low * (gram @ w_high[..., None])[..., 0]).sum(dim=-1)
    start, width, phi = low["mu"], high["mu"] - low["mu"], radius**2
    quadratic = a - 2 * cross + b - phi * width**2
    linear = 2 * cross - 2 * a - 2 * phi * start * width
    constant = a - phi * start**2
    root_sq = (linear**2 - 4 * quadratic * constant).clamp_min(0).sqrt()
    stable = -0.5 * (linear + torch.where(linear >= 0, root_sq, -root_sq))
    nonzero_stable = stable != 0
    first = torch.where(quadratic != 0, stable / torch.where(quadratic != 0, quadratic, torch.ones_like(quadratic)), torch.nan)
    second = torch.where(nonzero_stable, constant / torch.where(nonzero_stable, stable, torch.ones_like(stable)), torch.nan)
    inside_first = (first >= 0) & (first <= 1)
    inside_second = (second >= 0) & (second <= 1)
    return torch.where(inside_second, second, torch.where(inside_first, first, torch.full_like(first, 0.5)))


# --------------------------------------------------------------------------------------------
# IMTL-G
# --------------------------------------------------------------------------------------------

_PSEUDO_INVERSE_RTOL = 1e-10
"""Singular values of the bordered unit-Gramian system below this fraction of the largest are
treated as zero (directions that agree to ~1e-10 are treated as duplicates)."""

_NORMALIZER_FLOOR = 1e-8
"""Relative floor on `|sum_i beta_i / ||g_i|| |` (the Nash-MTL code adds `1e-8 I` to `D U^T`)."""


class IMTLG(GradientWeighting):
    """IMTL-G, impartial gradient balancing (Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021).

    Finds `alpha` with `sum_i alpha_i = 1` such that `g = sum_i alpha_i g_i` has equal projections
    onto every unit gradient `u_i = g_i / ||g_i||`. The paper's closed form for IMTL-G, with
    `D = [g_1 - g_2; ...; g_1 - g_K]` and `U = [u_1 - u_2; ...; u_1 - u_K]`, is
    `alpha_{2:K} = g_1 U^T (D U^T)^{-1}`, `alpha_1 = 1 - sum_{i>=2} alpha_i`.

    Gramian form (equivalent whenever `D U^T` is invertible): `g . u_i = lambda` for all i means
    `g` is proportional to the min-norm point `sum_i beta_i u_i` of the *affine* hull of the unit
    gradients, i.e. `beta` solves the bordered system `[[U, 1], [1^T, 0]] [beta; nu] = [0; 1]` with
    `U_ij = u_i . u_j = G_ij / (||g_i|| ||g_j||)`; then `alpha_i = (beta_i / ||g_i||) / s` with
    `s = sum_j beta_j / ||g_j||`. The system is solved with a pseudo-inverse (relative cutoff
    1e-10), which covers rank-deficient Gramians: duplicate directions share their weight equally,
    opposite ones (`g_2 = -a g_1`) give `alpha = (a, 1)/(1 + a)` and the zero update, and the
    result is permutation equivariant. The line of the update depends only on the unit gradients
    (per-task positive scaling `g_i -> s_i g_i` leaves it unchanged); its length, and its sign
    when `beta` has mixed signs (the sign of `s`; a negative common projection means `-g` ascends
    every task), depend on the norms.

    Weights sum to 1 (the paper and both reference codes); `alpha` is not constrained to be
    non-negative. Heads receive `alpha_i grad l_i` (Nash-MTL's `IMTLG` backpropagates
    `sum_i alpha_i l_i`). The losses are not used. The paper applies IMTL-G to gradients with
    respect to the shared representation: pass `representation=` to the engine for that.

    Degenerate input (deviations from the reference, which returns NaN or adds `1e-8 I` to
    `D U^T` only when the inverse fails): a task with a zero gradient has no direction; the
    condition is imposed on the others and it gets weight 0 (all zero: `1/K` each). If
    `|s|` falls below `1e-8 sum_j |beta_j| / ||g_j||` (IMTL-G has no solution: `D U^T` is singular
    with the other tasks' directions affinely independent), `s` is replaced by that floor with
    its sign, giving large but finite weights; `last_diagnostics["floored"]` reports it.
    K = 1: `alpha = 1`.
    """

    head_gradient = HeadGradient.WEIGHTED

    def __init__(self) -> None:
        self.last_diagnostics: dict[str, Tensor] = {}

    def weights(self, gramian: Tensor, losses: Tensor, /) -> Tensor:
        gram = _symmetric_float64(gramian)
        num_tasks = gram.shape[-1]
        unit, norms = unit_gramian(gram)
        nonzero = norms > 0
        inverse = safe_reciprocal(norms)
        eye = torch.eye(num_tasks, dtype=gram.dtype, device=gram.device)
        unit = unit.clamp(-1.0, 1.0) * (1 - eye) + eye  # exact unit diagonal
        beta = affine_min_norm_weights(unit, nonzero, rtol=_PSEUDO_INVERSE_RTOL)
        scaled = beta * inverse
        normalizer = scaled.sum(dim=-1)
        floor = _NORMALIZER_FLOOR * scaled.abs().sum(dim=-1)
        floored = (normalizer.abs() < floor) & (floor > 0)
        sign = torch.where(normalizer < 0, -1.0, 1.0).to(gram.dtype)
        normalizer = torch.where(floored, sign * floor, normalizer)
        any_direction = nonzero.any(dim=-1)
        safe_normalizer = torch.where(any_direction, normalizer, torch.ones_like(normalizer))
        alpha = scaled / safe_normalizer[..., None]
        alpha = torch.where(any_direction[..., None], alpha, torch.full_like(alpha, 1.0 / num_tasks))
        self.last_diagnostics = {"floored": floored}
        return alpha.to(gramian.dtype)
