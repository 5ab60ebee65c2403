"""Projection-based gradient weightings on the Gramian: PCGrad, CAGrad and IMTL-G.

Each method's shared update is a linear combination `d = sum_i w_i g_i` of the original task
gradients, and every quantity it needs is an inner product of such combinations, so it runs on
the K x K Gramian `G = J J^T` alone (`(a^T J) . (b^T J) = a^T G b`):

* PCGrad (Yu et al. 2020) tracks each projected gradient `g_i^PC = c_i^T J` by its coefficient
  vector `c_i`; `g_i^PC . g_j = (G c_i)_j`.
* CAGrad (Liu et al. 2021) needs `g_i . g_0 = (G 1/K)_i`, `||g_0||^2 = 1^T G 1 / K^2` and
  `||g_w||^2 = w^T G w`.
* IMTL-G (Liu et al. 2021) needs the unit-gradient inner products `u_i . u_j = G_ij / (||g_i|| ||g_j||)`.

The K x K work runs in float64 (PCGrad and IMTL-G on the Gramian's device, CAGrad's dual solver
on the host; it costs nothing next to the Gramian); weights are returned in the Gramian's dtype.
K = 2 has a closed form for each of the three.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from core.errors import InvalidHyperparameterError
from core.methods.base import (
    DrawsFromGenerator,
    GradientWeighting,
    HeadGradient,
    Reduction,
    WeightsResult,
    check_integer,
    check_number,
    check_reduction,
    gramian_norms,
    safe_reciprocal,
    unit_gramian,
    weights_in_dtype,
)
from core.pareto.stationarity import affine_min_norm_weights, face_minimiser, min_norm_active_set


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
    coefficients = (
        torch.eye(num_tasks, dtype=gramian.dtype, device=gramian.device)
        .expand(gramian.shape)
        .clone()
    )
    squared_norms = torch.diagonal(gramian, dim1=-2, dim2=-1)
    orders = orders.to(gramian.device)
    for step in range(num_tasks - 1):
        other = orders[..., step]  # [..., K]: the task each g_i^PC is projected against now
        products = (coefficients @ gramian).gather(-1, other[..., None])[..., 0]  # g_i^PC . g_j
        other_norms = squared_norms.gather(-1, other)
        conflict = (products < 0) & (other_norms > 0)
        safe_norms = torch.where(other_norms > 0, other_norms, torch.ones_like(other_norms))
        amount = torch.where(conflict, products / safe_norms, torch.zeros_like(products))
        coefficients = coefficients - amount[..., None] * torch.nn.functional.one_hot(
            other, num_tasks
        ).to(gramian.dtype)
    return coefficients


class PCGrad(DrawsFromGenerator, GradientWeighting):
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
    `RandomLossWeighting`. With K = 2 there is one order and PCGrad is deterministic: a closed
    form, `w = (1 - G_12 / G_11, 1 - G_12 / G_22)` if `G_12 < 0`, else `(1, 1)`, which draws
    nothing from the generator.
    `projection_orders` exposes the draw.

    Diagnostics: `"projections"` (batch shape) the number of projections performed.

    Deviations from the reference code (tianheyu927/PCGrad, WeiChengTseng/Pytorch-PCGrad as used
    by Nash-MTL and LibMTL): (1) those shuffle all K gradients, g_i included (projecting g_i^PC on
    g_i when they conflict); this follows the paper (j != i). (2) A zero gradient g_j is skipped
    (the reference divides 0 by 0 only if `g_i^PC . g_j < 0`, which a zero g_j never satisfies, so
    results agree). (3) The order comes from `generator`, not Python's `random.shuffle`.
    A task with a zero gradient keeps its coefficient `e_i` (contributing 0 to the update).
    """

    name = "pcgrad"
    paper = "Yu, Kumar, Gupta, Levine, Hausman, Finn, Gradient Surgery for Multi-Task Learning (NeurIPS 2020)"
    random = True
    head_gradient = HeadGradient.RAW

    def __init__(
        self, *, generator: torch.Generator | None = None, reduction: Reduction = "sum"
    ) -> None:
        self._use_generator(generator)
        check_reduction(reduction)
        self.reduction = reduction

    def projection_orders(
        self, batch_shape: tuple[int, ...], num_tasks: int, device: torch.device | None = None
    ) -> Tensor:
        """Random projection orders `[*batch_shape, K, K-1]` (int64) drawn from the generator.

        Row i is a uniformly random permutation of the tasks other than i. Consumes
        `prod(batch_shape) * K * K` float64 uniforms from the generator.
        """
        draw_device = self._generator.device if self._generator is not None else device
        keys = self._uniform((*batch_shape, num_tasks, num_tasks), device=draw_device)
        keys = keys + 2.0 * torch.eye(
            num_tasks, dtype=torch.float64, device=keys.device
        )  # j = i sorts last
        return keys.argsort(dim=-1)[..., : num_tasks - 1].to(device)

    def _weights(self, gramian: Tensor, losses: Tensor, /) -> WeightsResult:
        num_tasks = gramian.shape[-1]
        gram = _symmetric_float64(gramian)
        if num_tasks == 1:
            coefficients = torch.ones_like(gram)
            projections = torch.zeros(gram.shape[:-2], dtype=torch.int64, device=gram.device)
        elif (
            num_tasks == 2 and gramian.device.type == "cpu" and gramian.numel() <= 4 * _SCALAR_ROWS
        ):
            return self._two_task_scalars(gramian)
        elif num_tasks == 2:
            return self._two_task_weights(gram, gramian.dtype)
        else:
            orders = self.projection_orders(tuple(gram.shape[:-2]), num_tasks, gram.device)
            coefficients = pcgrad_coefficients(gram, orders)
            eye = torch.eye(num_tasks, dtype=torch.bool, device=gram.device)
            projections = ((coefficients != 0) & ~eye).sum(dim=(-1, -2))
        weights = coefficients.sum(dim=-2)
        if self.reduction == "mean":
            weights = weights / num_tasks
        return WeightsResult(
            weights_in_dtype(weights, gramian.dtype, "PCGrad"), {"projections": projections}
        )

    def _two_task_weights(self, gram: Tensor, dtype: torch.dtype) -> WeightsResult:
        """K = 2 in closed form (one order, no draw from the generator): if `G_12 < 0`,
        `g_1^PC = g_1 - (G_12 / G_22) g_2` and `g_2^PC = g_2 - (G_12 / G_11) g_1`, so
        `w = (1 - G_12 / G_11, 1 - G_12 / G_22)`; otherwise `w = (1, 1)` (a conflict implies
        both gradients are nonzero). Halved for "mean"."""
        g11, g22, g12 = gram[..., 0, 0], gram[..., 1, 1], gram[..., 0, 1]
        conflict = (g12 < 0) & (g11 > 0) & (g22 > 0)
        safe11, safe22 = (
            torch.where(conflict, value, torch.ones_like(value)) for value in (g11, g22)
        )
        zero = torch.zeros_like(g12)
        weights = torch.stack(
            [
                1 - torch.where(conflict, g12 / safe11, zero),
                1 - torch.where(conflict, g12 / safe22, zero),
            ],
            dim=-1,
        )
        if self.reduction == "mean":
            weights = weights / 2
        return WeightsResult(
            weights_in_dtype(weights, dtype, "PCGrad"),
            {"projections": 2 * conflict.to(torch.int64)},
        )

    def _two_task_scalars(self, gramian: Tensor) -> WeightsResult:
        """`_two_task_weights` on Python floats, row by row, for a few CPU Gramians: the same
        IEEE operations (symmetrised entries, the two quotients), without a torch call each."""
        weights, projections = [], []
        halve = self.reduction == "mean"
        for g11, g12, g21, g22 in gramian.detach().to(torch.float64).reshape(-1, 4).tolist():
            g11, g22, g12 = 0.5 * (g11 + g11), 0.5 * (g22 + g22), 0.5 * (g12 + g21)
            conflict = g12 < 0 and g11 > 0 and g22 > 0
            pair = (1 - g12 / g11, 1 - g12 / g22) if conflict else (1.0, 1.0)
            weights.append((pair[0] / 2, pair[1] / 2) if halve else pair)
            projections.append(2 if conflict else 0)
        batch_shape = gramian.shape[:-2]
        result = torch.tensor(weights, dtype=torch.float64).reshape(*batch_shape, 2)
        diagnostics = {
            "projections": torch.tensor(projections, dtype=torch.int64).reshape(batch_shape)
        }
        return WeightsResult(weights_in_dtype(result, gramian.dtype, "PCGrad"), diagnostics)


_SCALAR_ROWS = 64
"""Up to this many 2 x 2 Gramians (on the CPU) the K = 2 closed forms run on Python floats."""


# --------------------------------------------------------------------------------------------
# CAGrad
# --------------------------------------------------------------------------------------------

_RESCALES = (0, 1, 2)
_STALL_LIMIT = 8
"""Root steps in a row without a smaller duality gap after which the solver stops (the gap has
reached the rounding floor of the Gramian)."""
_NOISE = 4 * float(np.finfo(np.float64).eps)
"""Times K: the relative rounding error of `w^T G w` against `(sum_i |w_i| ||g_i||)^2`."""
_EPS = float(np.finfo(np.float64).eps)


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

    **Solver** (replaces the reference's SciPy SLSQP from `w = 1/K`), in float64 on the host, one
    batch element at a time, on the Gramian divided by `max_i G_ii`. `F` is convex, and
    `sqrt(phi) ||g_w|| = min_{mu > 0} (||g_w||^2 / mu + phi mu) / 2`; for fixed `mu` the
    minimisation over w is the min-norm problem of the shifted hull `conv{g_i + mu g_0}`
    (`min_w w^T G w + 2 mu b . w`, `b = G 1/K`), solved exactly by the shared active set
    (`core.pareto.stationarity.min_norm_active_set`, Wolfe's method, warm-started from the previous
    `mu`'s face). With `w(mu)` its solution, the optimal `mu*` solves
    `||g_w(mu)|| = sqrt(phi) mu` (`||g_w(mu)|| / mu` is nonincreasing), and
    `d* = g_0 + g_w(mu*) / mu*`. On a fixed face S the solution is affine in mu,
    `w(mu) = y + mu z` (one factorisation of the face, two right-hand sides:
    `core.pareto.stationarity.face_minimiser`), so `||g_w(mu)||^2 - phi mu^2` is a quadratic whose
    smallest positive root is the exact `mu*` if S is the optimal face. The iteration: solve at
    `mu`, take the root of the face found, solve there, until the face stays the same (then the
    solution is exact up to rounding); the root is bracketed in `[0, 1/(c ||g_0||)]` (in units of
    `max_i ||g_i||`), first tried at the value it has if w* is the vertex with the smallest
    `g_i . g_0`, and a step whose root leaves the bracket, or every other step while one end of
    the bracket keeps moving, bisects it. Certificate: every simplex point seen gives an upper
    bound `F(w)` on the optimum, and the feasible direction `d = g_0 + kappa g_w`,
    `kappa = min(1/mu, sqrt(phi)/||g_w||)` (so `||d - g_0|| <= c ||g_0||`, with `||g_w||` bounded
    from above by its rounding error, `~K eps (sum_i w_i ||g_i||)^2` in `w^T G w`), a lower bound
    `min_i g_i . d`; the best of each are kept and returned. The duality gap between them bounds
    the suboptimality of both; the solver stops when the face repeats, when the gap is at most
    `tolerance * ||g_w|| (1 + c) ||g_0||` (the scale of F), when it stalls (8 steps without
    decrease), when the bracket has collapsed, or after `max_iterations` root steps:
    termination is guaranteed, and the gap is reported. K = 2 has a closed form (the dual is
    one-dimensional: `_cagrad_two_tasks`), with the same certificate. Accuracy: from a float64
    Gramian, objective values are resolved to ~1e-16 of `max_i ||g_i||^2` and `||g_w||` to ~1e-8
    of `max_i ||g_i||`, so where the binding tasks have gradients 1e8 times smaller than the
    largest the gap stalls near 1e-8 `max_i ||g_i||^2`.

    Degenerate case: if the dual optimum has `g_w* = 0` (0 in the hull and the ball reaching the
    non-conflict cone), the formula for `d*` is 0/0 and every `d` in the ball with
    `g_i . d >= 0` is optimal; the solver returns `lim_{mu -> 0} (g_0 + g_w(mu) / mu) = g_0 + g_z`
    of the optimal face (`g_y = 0` there), with weights `1/K + z`, which is such a `d` (the
    reference returns whatever its `1e-8` guards give). `g_0 = 0` gives `d = 0`.

    Diagnostics: `"dual_gap"` (batch shape, relative to `max_i ||g_i||^2`),
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

    name = "cagrad"
    paper = "Liu, Liu, Jin, Stone, Liu, Conflict-Averse Gradient Descent for Multi-task Learning (NeurIPS 2021)"
    claims = frozenset({"permutation_equivariant"})
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
        if (
            isinstance(c, bool)
            or not isinstance(c, (int, float))
            or not (c >= 0 and c < float("inf"))
        ):
            raise InvalidHyperparameterError(
                f"c (the radius of the ball around the mean gradient, relative to its norm) must be a "
                f"finite number >= 0, got {c!r}; the paper uses 0.4 (convergence is proven for c < 1)"
            )
        if rescale not in _RESCALES or isinstance(rescale, bool):
            raise InvalidHyperparameterError(
                f"rescale must be 0 (none), 1 (divide by 1 + c^2) or 2 (divide by 1 + c), got {rescale!r}"
            )
        check_reduction(reduction)
        self.c = float(c)
        self.rescale = rescale
        self.reduction = reduction
        self.tolerance = check_number(
            "tolerance (a relative duality gap, e.g. 1e-10)", tolerance, minimum=0.0, strict=True
        )
        self.max_iterations = check_integer("max_iterations", max_iterations)

    @property
    def output_scale(self) -> float:
        """The factor applied to `d*`: `1 / (1 + c^2)`, `1 / (1 + c)` or 1, times K for "sum"."""
        return {0: 1.0, 1: 1.0 / (1.0 + self.c**2), 2: 1.0 / (1.0 + self.c)}[self.rescale]

    def _weights(self, gramian: Tensor, losses: Tensor, /) -> WeightsResult:
        num_tasks = gramian.shape[-1]
        if num_tasks == 2 and gramian.device.type == "cpu" and gramian.numel() <= 4 * _SCALAR_ROWS:
            fast = self._two_task_scalars(gramian)
            if fast is not None:
                return fast
        gram = _symmetric_float64(gramian)
        direction, dual_weights, gap, iterations = self.solve(gram)
        weights = direction * self.output_scale
        if self.reduction == "sum":
            weights = weights * num_tasks
        diagnostics = {
            "dual_gap": gap,
            "dual_weights": dual_weights,
            "iterations": torch.tensor(iterations),
        }
        return WeightsResult(weights_in_dtype(weights, gramian.dtype, "CAGrad"), diagnostics)

    def _two_task_scalars(self, gramian: Tensor) -> WeightsResult | None:
        """`_weights` for a few CPU 2 x 2 Gramians on Python floats: the same IEEE operations as
        `solve` and `_cagrad_two_tasks` (both symmetrisations, the unit scaling, the closed form
        and its certificate), without a numpy call each. None (the general path) where an entry
        is not finite or a diagonal entry is negative."""
        rows = []
        for entries in gramian.detach().to(torch.float64).reshape(-1, 4).tolist():
            if not all(map(math.isfinite, entries)):
                return None
            g11, g12, g21, g22 = entries
            g11, g22, g12 = 0.5 * (g11 + g11), 0.5 * (g22 + g22), 0.5 * (g12 + g21)  # as `_weights`
            g11, g22, g12 = 0.5 * (g11 + g11), 0.5 * (g22 + g22), 0.5 * (g12 + g12)  # as `solve`
            if not (g11 >= 0 and g22 >= 0 and math.isfinite(g11 + g22)):
                return None
            scale = g11 if g11 > g22 else g22
            if scale > 0:
                rows.append(_cagrad_two_task_scalars(g11 / scale, g22 / scale, g12 / scale, self.c))
            else:
                rows.append((0.5, 0.5, 0.5, 0.5, 0.0))
        factor, total = self.output_scale, self.reduction == "sum"
        weights = []
        for first, second, *_ in rows:
            first, second = first * factor, second * factor
            weights.append((first * 2, second * 2) if total else (first, second))
        batch_shape = gramian.shape[:-2]
        result = torch.tensor(weights, dtype=torch.float64).reshape(*batch_shape, 2)
        diagnostics = {
            # an unbatched Gramian's gap has shape [1] on the general path too
            "dual_gap": torch.tensor([row[4] for row in rows], dtype=torch.float64).reshape(
                batch_shape or (1,)
            ),
            "dual_weights": torch.tensor([row[2:4] for row in rows], dtype=torch.float64).reshape(
                *batch_shape, 2
            ),
            "iterations": torch.tensor(0),
        }
        return WeightsResult(weights_in_dtype(result, gramian.dtype, "CAGrad"), diagnostics)

    def solve(self, gramian: Tensor, /) -> tuple[Tensor, Tensor, Tensor, int]:
        """Weights of `d*` (before rescaling), dual weights, the relative duality gap, root steps used.

        `gramian` `[..., K, K]`; computed in float64 on the host, returned as float64 on the
        Gramian's device. The direction's weights are `1/K + kappa w` (they sum to `1 + kappa`),
        or `1/K + z` in the degenerate case (see the class docstring); the dual weights are the
        simplex point with the smallest `F` seen, which certifies the gap:
        `F(w_dual) - min_i g_i . d <= gap * max_i G_ii`. With rank-deficient Gramians the `w`
        inside the direction may differ from `w_dual` (several `w` give the same `g_w`).
        `iterations` is the most root steps over the batch (0 for K = 2: the closed form).
        """
        host = _symmetric_float64(gramian).cpu().numpy()
        num_tasks = host.shape[-1]
        with np.errstate(invalid="ignore"):
            scale = np.diagonal(host, axis1=-2, axis2=-1).max(axis=-1).clip(min=0)
            scaled = host / np.where(scale > 0, scale, 1.0)[..., None, None]
        iterations = 0
        if num_tasks == 2:
            direction, dual_weights, gap = _cagrad_two_tasks(scaled, self.c)
        else:
            flat = scaled.reshape(-1, num_tasks, num_tasks)
            direction, dual_weights, gap = (
                np.empty(flat.shape[:-1]),
                np.empty(flat.shape[:-1]),
                np.empty(flat.shape[0]),
            )
            for index, element in enumerate(flat):
                direction[index], dual_weights[index], gap[index], used = cagrad_dual(
                    element, self.c, tolerance=self.tolerance, max_iterations=self.max_iterations
                )
                iterations = max(iterations, used)
            shape = scaled.shape[:-1]
            direction, dual_weights, gap = (
                direction.reshape(shape),
                dual_weights.reshape(shape),
                gap.reshape(shape[:-1]),
            )
        uniform = np.full(direction.shape, 1.0 / num_tasks)
        zero = ~(scale > 0)[..., None]  # g_0 = 0 (all-zero Gramian): d = 0 = g_0
        direction, dual_weights = (
            np.where(zero, uniform, direction),
            np.where(zero, uniform, dual_weights),
        )
        gap = np.where(zero[..., 0], 0.0, gap)

        def back(values: np.ndarray) -> Tensor:
            return torch.from_numpy(np.ascontiguousarray(values)).to(gramian.device)

        return back(direction), back(dual_weights), back(gap), iterations


def _upper_norms(gram: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Upper bounds on `||g_w|| = sqrt(w^T G w)` (`[..., K]` weights): `w^T G w` loses about
    `K eps (sum_i |w_i| ||g_i||)^2` to cancellation, which is added, so that a direction scaled by
    `sqrt(phi) / bound` stays in CAGrad's ball and `F` stays an upper bound when `g_w` is tiny
    next to the gradients it combines."""
    return _norms_and_resolution(gram, weights)[0]


def _norms_and_resolution(gram: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`_upper_norms`, and whether `||g_w||^2` exceeds its rounding error (otherwise `g_w` is
    rounding noise, and so is the direction of `g_0 + kappa g_w`)."""
    squared = np.einsum("...i,...ij,...j->...", weights, gram, weights).clip(min=0)
    norms = np.sqrt(np.diagonal(gram, axis1=-2, axis2=-1).clip(min=0))
    spread = np.einsum("...i,...i->...", np.abs(weights), norms)
    noise = _NOISE * gram.shape[-1] * spread**2
    return np.sqrt(squared + noise), squared > noise


class _Certificates:
    """The best dual point (smallest `F(w) = g_w . g_0 + sqrt(phi) ||g_w||`, w in the simplex) and
    the best primal direction (largest `min_i g_i . d`, d in the ball) seen, on one unit-scaled
    Gramian; their difference bounds the suboptimality of both."""

    def __init__(self, gram: np.ndarray, mean_products: np.ndarray, radius: float) -> None:
        self.gram, self.mean_products, self.radius = gram, mean_products, radius
        self.norms = np.sqrt(np.diagonal(gram).clip(min=0))
        self.uniform = np.full(gram.shape[0], 1.0 / gram.shape[0])
        self.dual, self.dual_weights, self.dual_norm = np.inf, self.uniform, 0.0
        self.primal, self.direction = -np.inf, self.uniform
        self.offer_direction(self.uniform)  # d = g_0, the centre of the ball

    @property
    def gap(self) -> float:
        return max(self.dual - self.primal, 0.0)

    def offer_direction(self, weights: np.ndarray) -> None:
        """A direction `d = sum_i weights_i g_i` already known to lie in the ball; its value
        `min_i g_i . d` is taken less its rounding error `K eps ||g_i|| sum_j |weights_j| ||g_j||`
        (a lower bound), so that of two directions equal up to rounding the one with the smaller
        weights is kept."""
        value = float(
            (
                self.gram @ weights
                - _NOISE * len(weights) * self.norms * float(np.abs(weights) @ self.norms)
            ).min()
        )
        if value > self.primal:
            self.primal, self.direction = value, weights

    def offer_dual(self, weights: np.ndarray, inverse_shift: float = np.inf) -> None:
        """A simplex point: its `F`, and its direction `g_0 + kappa g_w` with
        `kappa = min(1/mu, sqrt(phi) / ||g_w||)` (both keep d in the ball)."""
        if not (bool(np.isfinite(weights).all()) and weights.min() >= 0):
            return
        weights = weights / weights.sum()
        norms, resolved = _norms_and_resolution(self.gram, weights)
        norm = float(norms)
        value = float(self.mean_products @ weights) + self.radius * norm
        if value < self.dual:
            self.dual, self.dual_weights, self.dual_norm = value, weights, norm
        if bool(resolved):  # an unresolved g_w gives a direction of rounding noise (see offer_face)
            for kappa in {self.radius / norm, min(inverse_shift, self.radius / norm)}:
                self.offer_direction(self.uniform + kappa * weights)

    def offer_face(self, support: np.ndarray) -> float | None:
        """The exact solution of the dual if `support` is the optimal face: there the min-norm
        weights of the shifted points are `y + mu z` (`face_minimiser`) and the root of
        `||g_{y + mu z}||^2 = phi mu^2` is a quadratic's. Offers it (and the degenerate limit
        direction `g_0 + g_z`, the limit of `g_0 + g_w / mu` as mu -> 0 when `g_y = 0`) and
        returns the root (None if this face has none)."""
        point, direction = face_minimiser(self.gram, support, self.mean_products)
        if point is None or direction is None:  # with `linear`, both are None or neither
            return None
        product = self.gram @ direction
        constant = float(point @ self.gram @ point)
        linear = float(point @ product)
        quadratic = float(direction @ product) - self.radius**2
        if quadratic < 0 and float(_upper_norms(self.gram, direction)) <= self.radius:
            self.offer_direction(self.uniform + direction)
        self.offer_dual(point)  # the face's min-norm point (g_y = 0 in the degenerate case)
        if constant <= 0:
            return 0.0
        discriminant = linear**2 - quadratic * constant
        denominator = -linear + np.sqrt(max(discriminant, 0.0))
        if discriminant < 0 or denominator <= 0:
            return None
        root = constant / denominator  # the smallest positive root, without cancellation
        if root > 0:
            self.offer_dual(point + root * direction, 1.0 / root)
        return root


def cagrad_dual(
    gram: np.ndarray, c: float, /, *, tolerance: float, max_iterations: int
) -> tuple[np.ndarray, np.ndarray, float, int]:
    """CAGrad's dual on one unit-scaled float64 Gramian (largest diagonal 1; see `CAGrad`).

    Returns the direction's weights, the dual weights, the duality gap and the root steps.
    """
    num_tasks = gram.shape[0]
    uniform = np.full(num_tasks, 1.0 / num_tasks)
    if not bool(np.isfinite(gram).all()):
        return np.full(num_tasks, np.nan), np.full(num_tasks, np.nan), np.nan, 0
    mean_products = gram.mean(axis=1)  # b_i = g_i . g_0
    mean_sq = max(float(mean_products.mean()), 0.0)  # ||g_0||^2
    radius = c * np.sqrt(mean_sq)  # sqrt(phi)
    if radius <= 0:
        return uniform, uniform, 0.0, 0
    certificates = _Certificates(gram, mean_products, radius)
    norms = np.sqrt(np.diagonal(gram).clip(min=0))
    lower, upper = (
        0.0,
        1.0 / radius,
    )  # ||g_w|| <= 1 = max_i ||g_i||: the residual is <= 0 at 1 / radius
    vertex = int(
        np.argmin(mean_products)
    )  # first guess: the root if w* is the vertex that large mu selects
    shift = norms[vertex] / radius if 0 < norms[vertex] < 1 else 0.5 * upper
    start, streak, stalled, previous_face, iterations = None, 0, 0, None, 0
    while iterations < max_iterations:
        iterations += 1
        weights, _, support = min_norm_active_set(
            gram, linear=mean_products, shift=shift, start=start
        )
        start = (weights, support)
        certificates.offer_dual(weights, 1.0 / shift if shift > 0 else np.inf)
        below = float(weights @ gram @ weights) - (radius * shift) ** 2 > 0
        lower, upper = (shift, upper) if below else (lower, shift)
        streak = (max(streak, 0) + 1) if below else (min(streak, 0) - 1)
        same_face = previous_face is not None and np.array_equal(support, previous_face)
        gap_before = certificates.gap
        root = certificates.offer_face(support)
        stalled = stalled + 1 if certificates.gap >= gap_before and iterations > 1 else 0
        threshold = tolerance * certificates.dual_norm * (np.sqrt(mean_sq) + radius)
        if certificates.gap <= threshold or same_face or stalled >= _STALL_LIMIT:
            break  # same_face: the root of this face was solved and it stayed optimal: exact
        if upper - lower <= 4 * np.finfo(np.float64).eps * upper:
            break
        bisect = (
            streak != 0 and abs(streak) % 2 == 0
        )  # while one end keeps moving, every other step halves the bracket
        if root is not None and lower < root < upper and not bisect:
            shift, previous_face = root, support
        else:
            shift, previous_face = 0.5 * (lower + upper), None
    return certificates.direction, certificates.dual_weights, certificates.gap, iterations


def _cagrad_two_tasks(gram: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CAGrad's dual for K = 2 in closed form, on unit-scaled Gramians `[..., 2, 2]`.

    With `w = (t, 1 - t)`, `g_w = g_2 + t (g_1 - g_2)`, `A = ||g_1 - g_2||^2`,
    `B = (g_1 - g_2) . g_2`, `delta = (g_1 - g_2) . g_0` and `u = A t + B`:
    `||g_w||^2 = u^2 / A + h`, `h = (G_11 G_22 - G_12^2) / A` (the squared distance from 0 to the
    line through g_1 and g_2), and `F'(t) = delta + sqrt(phi) u / ||g_w||`. With
    `s = -delta / sqrt(phi)`: if `s^2 < A` the stationary point is `u = s sqrt(h A / (A - s^2))`,
    clipped to t in [0, 1] (F is convex); otherwise F is monotone and `t = 0` (delta > 0) or 1.
    `g_1 = g_2` (A = 0): t = 1/2. The direction and the certificate are formed as in the general
    solver (`_Certificates`), including the degenerate limit `g_0 + g_z`, `z = (-delta, delta) / A`.
    """
    g11, g22, g12 = gram[..., 0, 0], gram[..., 1, 1], gram[..., 0, 1]
    mean_products = gram.mean(axis=-1)
    mean_sq = mean_products.mean(axis=-1).clip(min=0)
    radius = c * np.sqrt(mean_sq)
    spread = g11 + g22 - 2 * g12
    with np.errstate(divide="ignore", invalid="ignore"):
        identical = ~(spread > np.finfo(np.float64).eps * (g11 + g22))
        safe_spread = np.where(identical, 1.0, spread)
        offset = g12 - g22
        delta = mean_products[..., 0] - mean_products[..., 1]
        distance_sq = ((g11 * g22 - g12**2) / safe_spread).clip(min=0)
        slope = -delta / np.where(radius > 0, radius, 1.0)
        interior = slope**2 < spread
        stationary = slope * np.sqrt(
            distance_sq * spread / np.where(interior, spread - slope**2, 1.0)
        )
        t = np.where(
            interior,
            ((stationary - offset) / safe_spread).clip(0, 1),
            np.where(delta > 0, 0.0, 1.0),
        )
        t = np.where(identical, 0.5, t)
        dual_weights = np.stack([t, 1 - t], axis=-1)
        uniform = np.full(dual_weights.shape, 0.5)
        norm, resolved = _norms_and_resolution(gram, dual_weights)
        norms = np.sqrt(np.diagonal(gram, axis1=-2, axis2=-1).clip(min=0))

        def lower_value(weights: np.ndarray) -> np.ndarray:  # as `_Certificates.offer_direction`
            rounding = (
                _NOISE * 2 * norms * np.einsum("...i,...i->...", np.abs(weights), norms)[..., None]
            )
            return (np.einsum("...ij,...j->...i", gram, weights) - rounding).min(axis=-1)

        direction, primal = uniform, lower_value(uniform)  # d = g_0
        kappa = np.where(resolved, radius / np.where(norm > 0, norm, 1.0), 0.0)
        # d = g_0 + sqrt(phi) g_w / ||g_w||, and the degenerate limit g_0 + g_z on the edge
        z = np.stack([-delta, delta], axis=-1) / safe_spread[..., None]
        for candidate, usable in (
            (uniform + kappa[..., None] * dual_weights, resolved),
            (uniform + z, ~identical & (_upper_norms(gram, z) <= radius) & (t > 0) & (t < 1)),
        ):
            value = np.where(usable, lower_value(candidate), -np.inf)
            better = value > primal
            direction = np.where(better[..., None], candidate, direction)
            primal = np.where(better, value, primal)
        dual = np.einsum("...i,...i->...", mean_products, dual_weights) + radius * norm
        gap = (dual - primal).clip(min=0)
    trivial = ~(radius > 0)
    direction = np.where(trivial[..., None], uniform, direction)
    dual_weights = np.where(trivial[..., None], uniform, dual_weights)
    return direction, dual_weights, np.where(trivial, 0.0, gap)


def _cagrad_two_task_scalars(
    g11: float, g22: float, g12: float, c: float
) -> tuple[float, float, float, float, float]:
    """`_cagrad_two_tasks` on one unit-scaled finite Gramian as Python floats, operation for
    operation: the direction's weights, the dual weights and the gap."""
    mean_first, mean_second = (g11 + g12) / 2, (g12 + g22) / 2
    mean_sq = (mean_first + mean_second) / 2
    radius = c * math.sqrt(mean_sq if mean_sq > 0 else 0.0)
    if not radius > 0:
        return 0.5, 0.5, 0.5, 0.5, 0.0
    spread = g11 + g22 - 2 * g12
    identical = not spread > _EPS * (g11 + g22)
    safe_spread = 1.0 if identical else spread
    delta = mean_first - mean_second
    if identical:
        t = 0.5
    else:
        slope = -delta / radius
        if slope * slope < spread:  # numpy's `x**2` is `x * x`
            distance_sq = (g11 * g22 - g12 * g12) / safe_spread
            stationary = slope * math.sqrt(
                (distance_sq if distance_sq > 0 else 0.0) * spread / (spread - slope * slope)
            )
            t = (stationary - (g12 - g22)) / safe_spread
            t = 0.0 if t < 0 else (1.0 if t > 1 else t)
        else:
            t = 0.0 if delta > 0 else 1.0
    s = 1 - t
    norm_first, norm_second = math.sqrt(g11), math.sqrt(g22)

    def norm_and_resolution(a: float, b: float) -> tuple[float, bool]:  # as `_norms_and_resolution`
        squared = a * g11 * a + a * g12 * b + b * g12 * a + b * g22 * b
        squared = squared if squared > 0 else 0.0
        spread_ab = abs(a) * norm_first + abs(b) * norm_second
        noise = _NOISE * 2 * (spread_ab * spread_ab)
        return math.sqrt(squared + noise), squared > noise

    def lower_value(a: float, b: float) -> float:  # as `lower_value` in `_cagrad_two_tasks`
        spread_ab = abs(a) * norm_first + abs(b) * norm_second
        first = g11 * a + g12 * b - _NOISE * 2 * norm_first * spread_ab
        second = g12 * a + g22 * b - _NOISE * 2 * norm_second * spread_ab
        return first if first < second else second

    norm, resolved = norm_and_resolution(t, s)
    direction, primal = (0.5, 0.5), lower_value(0.5, 0.5)
    if resolved:
        kappa = radius / (norm if norm > 0 else 1.0)
        candidate = (0.5 + kappa * t, 0.5 + kappa * s)
        value = lower_value(*candidate)
        if value > primal:
            direction, primal = candidate, value
    if not identical and 0 < t < 1:
        z = (-delta / safe_spread, delta / safe_spread)
        if norm_and_resolution(*z)[0] <= radius:
            candidate = (0.5 + z[0], 0.5 + z[1])
            value = lower_value(*candidate)
            if value > primal:
                direction, primal = candidate, value
    dual = mean_first * t + mean_second * s + radius * norm
    gap = dual - primal
    return direction[0], direction[1], t, s, gap if gap > 0 else 0.0


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
    its sign, giving large but finite weights; the diagnostic `"floored"` reports it.
    K = 1: `alpha = 1`. K = 2: the closed form `alpha = (1/||g_1||, 1/||g_2||) / (1/||g_1|| + 1/||g_2||)`
    (`_imtlg_two_tasks`), whatever the angle.
    """

    name = "imtl_g"
    paper = "Liu, Li, Kuang, Xue, Chen, Yang, Liao, Zhang, Towards Impartial Multi-task Learning, IMTL-G (ICLR 2021)"
    claims = frozenset({"permutation_equivariant", "equal_projections"})
    head_gradient = HeadGradient.WEIGHTED

    def _weights(self, gramian: Tensor, losses: Tensor, /) -> WeightsResult:
        if (
            gramian.shape[-1] == 2
            and gramian.device.type == "cpu"
            and gramian.numel() <= 4 * _SCALAR_ROWS
        ):
            diagonal = torch.diagonal(gramian.detach().to(torch.float64), dim1=-2, dim2=-1)
            weights = [imtlg_two_task_scalars(*pair) for pair in two_task_norms(diagonal)]
            alpha = (
                torch.tensor(weights, dtype=torch.float64)
                .reshape(gramian.shape[:-1])
                .to(gramian.dtype)
            )
            return WeightsResult(
                alpha, {"floored": torch.zeros(gramian.shape[:-2], dtype=torch.bool)}
            )
        gram = _symmetric_float64(gramian)
        if gram.shape[-1] == 2:
            return _imtlg_two_tasks(gram, gramian.dtype)
        return _imtlg_weights(gram, gramian.dtype)


def _imtlg_weights(gram: Tensor, dtype: torch.dtype) -> WeightsResult:
    """IMTL-G's general path (any K) on a symmetric float64 Gramian (see `IMTLG`)."""
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
    return WeightsResult(alpha.to(dtype), {"floored": floored})


def _imtlg_two_tasks(gram: Tensor, dtype: torch.dtype) -> WeightsResult:
    """IMTL-G for K = 2 in closed form: `g . u_1 = g . u_2` with `g = a_1 g_1 + a_2 g_2`,
    `a_1 + a_2 = 1` gives `a_1 (||g_1|| ||g_2|| - G_12) / ||g_2|| = a_2 (||g_1|| ||g_2|| - G_12) / ||g_1||`,
    so `a = (1/||g_1||, 1/||g_2||) / (1/||g_1|| + 1/||g_2||)` whatever the angle (for parallel
    gradients every `a` works, and the general path's pseudo-inverse also splits `beta` evenly,
    giving this `a`). A zero gradient gets weight 0; both zero: 1/2 each. Never floored
    (`s = (1/||g_1|| + 1/||g_2||) / 2 > 0`)."""
    inverse = safe_reciprocal(gramian_norms(gram))
    total = inverse.sum(dim=-1, keepdim=True)
    alpha = torch.where(
        total > 0,
        inverse / torch.where(total > 0, total, torch.ones_like(total)),
        torch.full_like(inverse, 0.5),
    )
    return WeightsResult(
        alpha.to(dtype),
        {"floored": torch.zeros(gram.shape[:-2], dtype=torch.bool, device=gram.device)},
    )


def two_task_norms(diagonal: Tensor, /) -> list[list[float]]:
    """`gramian_norms` of the symmetrised float64 Gramians, as Python floats, from their diagonals
    `[..., 2]`: torch's `sqrt` (not always correctly rounded, and its result can depend on an
    entry's position in the tensor) on a tensor of the same shape as the general path's."""
    norms = (0.5 * (diagonal + diagonal)).clamp_min(0).sqrt()
    return norms.reshape(-1, 2).tolist()


def imtlg_two_task_scalars(norm_first: float, norm_second: float, /) -> tuple[float, float]:
    """`_imtlg_two_tasks` on one pair of gradient norms as Python floats, the same IEEE
    operations: `(1/||g_1||, 1/||g_2||) / (1/||g_1|| + 1/||g_2||)`, 0 for a zero gradient, 1/2
    each when both are zero."""
    first = 1.0 / norm_first if norm_first > 0 else 0.0
    second = 1.0 / norm_second if norm_second > 0 else 0.0
    total = first + second
    return (first / total, second / total) if total > 0 else (0.5, 0.5)
