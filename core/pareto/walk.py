"""The network tangent walk of Ma, Du & Matusik (2020): explore the Pareto set of a trained network
from a (near) stationary point by repeated tangent steps (spec pareto_exploration.md §5.3).

Each step: the Jacobian G averaged over a few batches and blended into an exponential moving
average; min-norm weights alpha from the fresh G, also averaged; one HVP operator on one batch,
reused by every MINRES iteration; `(H + lambda I) d = G_ema^T beta` by MINRES; a plain step
`x <- x - lr d/||d||`. The reference has no corrector on networks; `corrector_steps > 0` adds
MGDA steps `x <- x - corrector_lr alpha^T G` after each tangent step (our option; both measured).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from core.errors import InvalidHyperparameterError
from core.jacobian import gramian
from core.pareto.hvp import HessianVectorProduct
from core.pareto.minres import minres
from core.pareto.stationarity import min_norm_point
from core.pareto.tangent import loss_jacobian


@dataclass(frozen=True)
class WalkStep:
    """One step: the parameters after it (flat, detached), the weights alpha used, the MINRES
    iterations, and the stationarity residual `||alpha^T G||` of the fresh Jacobian before it."""

    parameters: Tensor
    weights: Tensor
    minres_iterations: int
    residual: float


def _mean_jacobian(
    task_losses: Callable[[object], Tensor], params: Sequence[Tensor], batches: Iterable[object]
) -> Tensor:
    total, count = None, 0
    for batch in batches:
        jacobian = loss_jacobian(task_losses(batch), params).detach()
        total = jacobian if total is None else total + jacobian
        count += 1
    if total is None:
        raise InvalidHyperparameterError("jacobian_batches() yielded no batch")
    return total / count


def _set_flat(params: Sequence[Tensor], flat: Tensor) -> None:
    with torch.no_grad():
        offset = 0
        for p in params:
            p.copy_(flat[offset : offset + p.numel()].reshape(p.shape))
            offset += p.numel()


def tangent_walk(
    task_losses: Callable[[object], Tensor],
    params: Sequence[Tensor],
    beta: Tensor,
    /,
    *,
    jacobian_batches: Callable[[], Iterable[object]],
    hvp_batch: Callable[[], object],
    num_steps: int = 10,
    lr: float = 0.1,
    damping: float = 0.1,
    momentum: float | None = 0.9,
    maxiter: int = 50,
    rtol: float = 1e-5,
    corrector_steps: int = 0,
    corrector_lr: float = 0.01,
) -> list[WalkStep]:
    """Walk `num_steps` tangent steps from the current `params` (changed in place) along `beta` `[K]`.

    Args:
        task_losses: `batch -> [K]` task losses of the model on a batch (with autograd).
        params: all parameters explored (heads included, as the reference).
        beta: the direction in objective space; `e_i` walks towards lower loss on task i (spec §3.2).
        jacobian_batches: a fresh iterable of batches for each Jacobian average (reference: a
            quarter of the training set per step, the full set at the start).
        hvp_batch: returns the batch of each step's HVP operator (reference: 2048 samples).
        lr: the length of each step in parameter space (0.1 MultiMNIST, 0.01 UCI). damping: 0.1.
        momentum: EMA factor of G and alpha (0.9 in the reference notebooks; None: no EMA).
        maxiter, rtol: MINRES (50 MultiMNIST, 100 UCI; 1e-5). MINRES starts from 0 (the reference
            varies: + or - the mean Jacobian row; docs/DECISIONS.md).
        corrector_steps, corrector_lr: optional MGDA steps after each tangent step (0: none).
    """
    if num_steps < 0 or not lr > 0 or not damping >= 0 or corrector_steps < 0:
        raise InvalidHyperparameterError(
            "need num_steps >= 0, lr > 0, damping >= 0 and corrector_steps >= 0"
        )
    if momentum is not None and not 0 <= momentum < 1:
        raise InvalidHyperparameterError(f"momentum must be in [0, 1) or None, got {momentum!r}")
    params = list(params)
    smoothed_jacobian = _mean_jacobian(task_losses, params, jacobian_batches())
    smoothed_weights = min_norm_point(gramian(smoothed_jacobian)).weights
    steps = []
    for _ in range(num_steps):
        fresh = _mean_jacobian(task_losses, params, jacobian_batches())
        fresh_weights = min_norm_point(gramian(fresh)).weights
        if momentum is None:
            smoothed_jacobian, smoothed_weights = fresh, fresh_weights
        else:
            smoothed_jacobian = momentum * smoothed_jacobian + (1 - momentum) * fresh
            smoothed_weights = momentum * smoothed_weights + (1 - momentum) * fresh_weights
        residual = float((fresh_weights @ fresh).norm())
        operator = HessianVectorProduct(
            task_losses(hvp_batch()), params, weights=smoothed_weights, damping=damping
        )
        solved = minres(
            operator, beta.to(smoothed_jacobian) @ smoothed_jacobian, rtol=rtol, maxiter=maxiter
        )
        direction = solved.solution
        flat = torch.cat([p.detach().reshape(-1) for p in params])
        norm = float(direction.norm())
        if norm > 0:
            flat = flat - lr * direction / norm
        _set_flat(params, flat)
        for _ in range(corrector_steps):
            jacobian = _mean_jacobian(task_losses, params, jacobian_batches())
            correction = min_norm_point(gramian(jacobian)).weights @ jacobian
            _set_flat(
                params,
                torch.cat([p.detach().reshape(-1) for p in params]) - corrector_lr * correction,
            )
        steps.append(
            WalkStep(
                torch.cat([p.detach().reshape(-1) for p in params]),
                smoothed_weights.clone(),
                solved.iterations,
                residual,
            )
        )
    return steps
