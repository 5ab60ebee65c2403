"""Tangent directions of the local Pareto set at a Pareto-stationary point (Ma, Du & Matusik 2020).

At a Pareto-stationary `x*` with weights `alpha` (`sum_i alpha_i g_i = 0`, `alpha` in the simplex),
differentiating `sum_i alpha_i(t) grad f_i(x(t)) = 0` along a curve of stationary points gives
(Hillermeier 2001; spec pareto_exploration.md §3.1)

    H v = G^T beta,    H = sum_i alpha_i grad^2 f_i(x*),  G the Jacobian (rows g_i),

for the velocity `v = x'(0)` and `beta = -alpha'(0)`. The constraint `1^T beta = 0` can be
dropped at an exact stationary point because `G^T alpha = 0`. `H` is symmetric but indefinite or
singular in general, so the system is solved with MINRES on Hessian-vector products, never
forming H; the first-order change of the losses along `v` is `G v`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from core.errors import MTLInputError
from core.jacobian import gramian
from core.pareto.hvp import HessianVectorProduct
from core.pareto.minres import MinresResult, minres
from core.pareto.stationarity import min_norm_point


@dataclass(frozen=True)
class TangentDirections:
    """`directions` `[D, n]` (unit norm; 0 where the solve gave 0), `raw` the MINRES solutions
    `[D, n]`, `betas` `[D, K]`, the stationarity `weights` alpha `[K]`, the `jacobian` `[K, n]`
    (corrected if asked), the stationarity `residual` `||alpha^T G||` before correction, and each
    direction's `MinresResult`."""

    directions: Tensor
    raw: Tensor
    betas: Tensor
    weights: Tensor
    jacobian: Tensor
    residual: float
    solves: list[MinresResult]


def loss_jacobian(losses: Tensor | Sequence[Tensor], params: Sequence[Tensor], /) -> Tensor:
    """The Jacobian `[K, n]` of K scalar losses over the concatenated `params` (0 where unreached);
    the graph of `losses` is kept."""
    losses = torch.stack(list(losses)) if not isinstance(losses, Tensor) else losses.reshape(-1)
    rows = []
    for loss in losses:
        grads = torch.autograd.grad(loss, list(params), retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    torch.zeros(p.numel(), dtype=loss.dtype, device=loss.device)
                    if g is None
                    else g.reshape(-1)
                    for p, g in zip(params, grads)
                ]
            )
        )
    return torch.stack(rows)


def tangent_directions(
    losses: Tensor | Sequence[Tensor],
    params: Sequence[Tensor],
    betas: Tensor,
    /,
    *,
    weights: Tensor | None = None,
    correct_gradients: bool = False,
    damping: float = 0.0,
    maxiter: int = 50,
    rtol: float = 1e-5,
) -> TangentDirections:
    """Solve `(H + damping I) v = G^T beta` for each row of `betas` `[D, K]` at the current `params`.

    Args:
        losses: K scalar losses built from `params` (with autograd).
        params: the parameters x (all of them, heads included, as in the reference).
        betas: directions in objective space, `[D, K]` (random normal, unit vectors, binary
            patterns; spec §3.2).
        weights: the stationarity weights alpha; None solves the min-norm problem on `G G^T`.
        correct_gradients: replace each g_i by `g_i - alpha^T G` so that `alpha^T G = 0` holds
            exactly at an approximately stationary point (the reference's `grad_correction`).
        damping: lambda in `H + lambda I` (0 on the toy problems, 0.1 on networks in the reference).
        maxiter, rtol: MINRES settings (reference: 50 and 1e-5; 2 on the ZDT2 toy, spec §4.4).
    """
    losses = torch.stack(list(losses)) if not isinstance(losses, Tensor) else losses.reshape(-1)
    betas = torch.as_tensor(betas)
    if betas.ndim != 2 or betas.shape[1] != losses.numel():
        raise MTLInputError(
            f"betas must have shape [D, {losses.numel()}], got {tuple(betas.shape)}"
        )
    jacobian = loss_jacobian(losses, params).detach()
    if weights is None:
        weights = min_norm_point(gramian(jacobian)).weights
    weights = weights.detach().to(jacobian)
    combination = weights @ jacobian
    residual = float(combination.norm())
    if correct_gradients:
        jacobian = jacobian - combination
    operator = HessianVectorProduct(losses, params, weights=weights, damping=damping)
    solves = [
        minres(operator, beta.to(jacobian) @ jacobian, rtol=rtol, maxiter=maxiter) for beta in betas
    ]
    raw = torch.stack([solve.solution for solve in solves])
    norms = raw.norm(dim=1, keepdim=True)
    directions = torch.where(
        norms > 0,
        raw / torch.where(norms > 0, norms, torch.ones_like(norms)),
        torch.zeros_like(raw),
    )
    return TangentDirections(directions, raw, betas, weights, jacobian, residual, solves)
