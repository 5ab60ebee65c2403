"""The min-norm point of the convex hull of task gradients, and Pareto stationarity.

`min_norm_point(G)` solves `min_{a in simplex} a^T G a` on a (batched) Gramian: the MGDA
subproblem (Sener & Koltun 2018, eq. 3) and the measure of Pareto stationarity
(`residual = ||sum_i a_i g_i||`, zero exactly at Pareto-stationary points). It is the one
min-norm solver of the project; MGDA and every convergence check call it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from core.errors import InvalidHyperparameterError


@dataclass(frozen=True)
class MinNormSolution:
    """Solution of the min-norm problem, batched like the input.

    `weights` `[..., K]` on the simplex; `squared_norm` `a^T G a`; `kkt_gap` the Frank-Wolfe gap
    `a^T G a - min_i (G a)_i`, which is >= 0, bounds the suboptimality of `squared_norm`, and is
    0 exactly at the optimum (relative to `max_i G_ii`); `iterations` used (0 for K <= 2).
    """

    weights: Tensor
    squared_norm: Tensor
    kkt_gap: Tensor
    iterations: int

    @property
    def residual(self) -> Tensor:
        """The stationarity residual `min_{a in simplex} ||sum_i a_i g_i||`."""
        return self.squared_norm.clamp_min(0).sqrt()


def default_tolerance(dtype: torch.dtype) -> float:
    """KKT tolerance relative to `max_i ||g_i||^2`: 1e-12 in float64, 1e-6 in float32/16."""
    return 1e-12 if dtype == torch.float64 else 1e-6


def min_norm_point(
    gramian: Tensor, /, *, tolerance: float | None = None, max_iterations: int = 2000, check_every: int = 10
) -> MinNormSolution:
    """Minimise `a^T G a` over the probability simplex for a Gramian `[..., K, K]`.

    K = 1: a = 1. K = 2: the closed form of Sener & Koltun (2018, Alg. 1),
    `a_1 = clip((G_22 - G_12) / (G_11 + G_22 - 2 G_12), 0, 1)` (a_1 = 1/2 when g_1 = g_2).
    K >= 3: accelerated projected gradient (FISTA) on the Gramian scaled by `max_i G_ii`,
    interleaved every `check_every` iterations with primal active-set rounds (Wolfe's scheme:
    minimise on the current face via a pseudo-inverse of the bordered KKT system, drop the
    coordinates that block, add the one that violates the KKT conditions most), whose result is
    kept only if it is no worse. The active set usually finishes the job in a few rounds even
    where FISTA alone would crawl (ill-conditioned Gramians). It stops when every batch element has
    a KKT gap below `tolerance` or after `max_iterations` (termination is guaranteed; the
    achieved gap is returned). All-zero Gramians give uniform weights.
    """
    if not isinstance(check_every, int) or check_every < 1 or not isinstance(max_iterations, int) or max_iterations < 0:
        raise InvalidHyperparameterError(
            f"need an integer check_every >= 1 and max_iterations >= 0, got {check_every!r} and {max_iterations!r}"
        )
    num_tasks = gramian.shape[-1]
    if tolerance is None:
        tolerance = default_tolerance(gramian.dtype)
    scale = torch.diagonal(gramian, dim1=-2, dim2=-1).amax(dim=-1).clamp_min(0)
    safe_scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    scaled = gramian / safe_scale[..., None, None]
    scaled = 0.5 * (scaled + scaled.transpose(-1, -2))
    if num_tasks == 1:
        weights = torch.ones_like(scale)[..., None]
        iterations = 0
    elif num_tasks == 2:
        weights = _two_task_weights(scaled)
        iterations = 0
    else:
        weights, iterations = _solve_simplex_qp(scaled, tolerance, max_iterations, check_every)
    weights = torch.where((scale > 0)[..., None], weights, torch.full_like(weights, 1.0 / num_tasks))
    squared, gap = _objective_and_gap(scaled, weights)
    return MinNormSolution(weights, squared * scale, gap, iterations)


def stationarity(gramian: Tensor, /, **solver_options) -> tuple[Tensor, Tensor]:
    """Pareto-stationarity weights and residual `min_{a in simplex} ||sum_i a_i g_i||` of a Gramian."""
    solution = min_norm_point(gramian, **solver_options)
    return solution.weights, solution.residual


def _two_task_weights(gramian: Tensor) -> Tensor:
    g11, g22, g12 = gramian[..., 0, 0], gramian[..., 1, 1], gramian[..., 0, 1]
    denominator = g11 + g22 - 2 * g12
    degenerate = denominator <= torch.finfo(gramian.dtype).eps * (g11 + g22)
    safe = torch.where(degenerate, torch.ones_like(denominator), denominator)
    first = torch.where(degenerate, torch.full_like(denominator, 0.5), ((g22 - g12) / safe).clamp(0, 1))
    return torch.stack([first, 1 - first], dim=-1)


def project_to_simplex(values: Tensor, /) -> Tensor:
    """Euclidean projection of each row `[..., K]` onto the probability simplex (sort-based)."""
    sorted_desc, _ = torch.sort(values, dim=-1, descending=True)
    cumulative = sorted_desc.cumsum(dim=-1) - 1
    index = torch.arange(1, values.shape[-1] + 1, device=values.device, dtype=values.dtype)
    support = (sorted_desc - cumulative / index > 0).sum(dim=-1, keepdim=True).clamp_min(1)
    threshold = cumulative.gather(-1, support - 1) / support.to(values.dtype)
    return (values - threshold).clamp_min(0)


def _objective_and_gap(gramian: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    product = (gramian @ weights[..., None])[..., 0]
    objective = (weights * product).sum(dim=-1)
    return objective, (objective - product.amin(dim=-1)).clamp_min(0)


def _decomposition_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for narrower dtypes: float32's eigh fails to converge ("ill-conditioned or too many
    repeated eigenvalues") on unit-scaled Gramians whose entries' squares underflow (e.g. 1e-29 next
    to 1), and the K x K decompositions cost nothing next to the Gramian."""
    return torch.float64 if torch.finfo(dtype).bits < 64 else dtype


def _solve_simplex_qp(gramian: Tensor, tolerance: float, max_iterations: int, check_every: int) -> tuple[Tensor, int]:
    num_tasks = gramian.shape[-1]
    largest = torch.linalg.eigvalsh(gramian.to(_decomposition_dtype(gramian.dtype)))[..., -1].to(gramian.dtype)
    lipschitz = 2 * largest.clamp_min(torch.finfo(gramian.dtype).tiny)
    step = (1.0 / lipschitz)[..., None]
    weights = torch.full(gramian.shape[:-1], 1.0 / num_tasks, dtype=gramian.dtype, device=gramian.device)
    iterations = 0
    while True:
        weights = _better(gramian, weights, _refine_on_support(gramian, weights, tolerance))
        _, gap = _objective_and_gap(gramian, weights)
        if bool((gap <= tolerance).all()) or iterations >= max_iterations:
            return weights, iterations
        weights = _fista(gramian, weights, step, check_every)  # restarts momentum at the polished point
        iterations += check_every


def _fista(gramian: Tensor, start: Tensor, step: Tensor, num_steps: int) -> Tensor:
    weights, momentum_point, momentum = start, start, 1.0
    for _ in range(num_steps):
        gradient = 2 * (gramian @ momentum_point[..., None])[..., 0]
        updated = project_to_simplex(momentum_point - step * gradient)
        next_momentum = 0.5 * (1 + (1 + 4 * momentum**2) ** 0.5)
        momentum_point = updated + ((momentum - 1) / next_momentum) * (updated - weights)
        weights, momentum = updated, next_momentum
    return weights


def _better(gramian: Tensor, current: Tensor, candidate: Tensor) -> Tensor:
    """Per batch element, the candidate if it is feasible and no worse in objective and KKT gap."""
    current_objective, current_gap = _objective_and_gap(gramian, current)
    objective, gap = _objective_and_gap(gramian, candidate)
    feasible = torch.isfinite(candidate).all(dim=-1)
    slack = 4 * torch.finfo(gramian.dtype).eps
    improves = (gap <= current_gap) & (objective <= current_objective + slack)
    return torch.where((feasible & improves)[..., None], candidate, current)


def _refine_on_support(gramian: Tensor, weights: Tensor, tolerance: float) -> Tensor:
    """Primal active-set steps (Wolfe's min-norm-point scheme, on the Gramian).

    Each round solves `min a^T G a` s.t. `sum a = 1` on the support (a pseudo-inverse of the
    bordered KKT system, so singular faces are fine) and steps from the feasible point towards
    that minimiser as far as feasibility allows (ratio test), dropping a coordinate that reaches
    zero. Once at the minimiser of its face, the coordinate that violates the KKT conditions most
    (`(G a)_j < a^T G a - tolerance`) joins the support. The objective never increases; at most
    4K rounds, after which the caller's FISTA steps take over.
    """
    num_tasks = gramian.shape[-1]
    support = weights > 0
    for _ in range(4 * num_tasks):
        target = affine_min_norm_weights(gramian, support)
        direction = target - weights
        shrinking = direction < 0
        ratios = torch.where(shrinking, weights / torch.where(shrinking, -direction, 1.0), torch.inf)
        length = ratios.amin(dim=-1, keepdim=True).clamp(max=1.0)
        weights = (weights + length * direction).clamp_min(0)
        blocking = shrinking & (ratios <= length) & (length < 1)
        weights = torch.where(blocking, 0.0, weights)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        support = support & ~blocking
        product = (gramian @ weights[..., None])[..., 0]
        violation = torch.where(support, torch.inf, product - (weights * product).sum(dim=-1, keepdim=True))
        most, entering = violation.min(dim=-1, keepdim=True)
        at_face_minimum = ~blocking.any(dim=-1, keepdim=True)
        enters = at_face_minimum & (most < -tolerance)
        support = support | (enters & (torch.arange(num_tasks, device=weights.device) == entering))
        if not bool((blocking.any(dim=-1, keepdim=True) | enters).any()):
            break
    return weights


def affine_min_norm_weights(gramian: Tensor, support: Tensor, /, *, rtol: float | None = None) -> Tensor:
    """Minimiser of `a^T G a` subject to `sum a = 1` and `a_i = 0` off `support` (may be < 0):
    the min-norm point of the affine hull of the supported gradients. Solved through a
    pseudo-inverse of the bordered KKT system (`rtol` its cutoff, by default `pinv`'s for the
    Gramian's dtype: eps (K + 1)), so singular faces are fine. The pseudo-inverse is computed in
    float64 for narrower dtypes (see `_decomposition_dtype`)."""
    num_tasks = gramian.shape[-1]
    if rtol is None:
        rtol = torch.finfo(gramian.dtype).eps * (num_tasks + 1)
    mask = support.to(gramian.dtype)
    eye = torch.eye(num_tasks, dtype=gramian.dtype, device=gramian.device)
    restricted = gramian * mask[..., :, None] * mask[..., None, :] + eye * (1 - mask)[..., None, :]
    shape = (*gramian.shape[:-2], num_tasks + 1, num_tasks + 1)
    bordered = torch.zeros(shape, dtype=gramian.dtype, device=gramian.device)
    bordered[..., :num_tasks, :num_tasks] = restricted
    bordered[..., :num_tasks, num_tasks] = mask
    bordered[..., num_tasks, :num_tasks] = mask
    rhs = torch.zeros(*shape[:-1], 1, dtype=gramian.dtype, device=gramian.device)
    rhs[..., num_tasks, 0] = 1
    work = _decomposition_dtype(gramian.dtype)
    inverse = torch.linalg.pinv(bordered.to(work), hermitian=True, rtol=rtol)
    return (inverse @ rhs.to(work))[..., :num_tasks, 0].to(gramian.dtype) * mask
