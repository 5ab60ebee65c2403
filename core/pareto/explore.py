"""Predictor-corrector expansion of the Pareto set from a stationary point (Ma, Du & Matusik 2020,
the breadth-first variant of their toy notebooks; spec pareto_exploration.md §5.2).

From a Pareto-stationary `x*`: predict `x* + s v/||v||` along tangent directions (`H v = G^T beta`,
`beta ~ N(0, I)`, MINRES), correct each prediction back to stationarity with the MGDA corrector,
queue the corrected points, and repeat until the front holds enough points. The baseline of the
same notebook predicts instead with one normalised descent step along perturbed weights
(`alpha * U(0.9, 1.1)`); both use the same corrector, and the evaluation counts show the cost.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from core.errors import InvalidHyperparameterError
from core.jacobian import gramian
from core.pareto.stationarity import min_norm_point
from core.pareto.tangent import tangent_directions


@dataclass
class EvaluationCounts:
    """Calls of the objectives (`values`), of their Jacobian (`jacobians`, each K gradients) and
    Hessian-vector products (`hvps`), split by phase: "predict" and "correct"."""

    values: dict[str, int] = field(default_factory=lambda: {"predict": 0, "correct": 0})
    jacobians: dict[str, int] = field(default_factory=lambda: {"predict": 0, "correct": 0})
    hvps: dict[str, int] = field(default_factory=lambda: {"predict": 0, "correct": 0})

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {
            "values": dict(self.values),
            "jacobians": dict(self.jacobians),
            "hvps": dict(self.hvps),
        }


@dataclass(frozen=True)
class Expansion:
    """Explored stationary `points` `[N, n]`, their `values` `[N, K]`, each point's `parent` index
    (-1 for the start), the stationarity residual of each point, and the evaluation counts."""

    points: Tensor
    values: Tensor
    parents: list[int]
    residuals: Tensor
    counts: EvaluationCounts


def _values_and_jacobian(
    objectives: Callable[[Tensor], Tensor], x: Tensor
) -> tuple[Tensor, Tensor]:
    point = x.detach().requires_grad_(True)
    with torch.enable_grad():
        values = objectives(point)
        rows = [
            torch.autograd.grad(values[i], point, retain_graph=i < values.numel() - 1)[0]
            for i in range(values.numel())
        ]
    return values.detach(), torch.stack(rows)


def mgda_correct(
    objectives: Callable[[Tensor], Tensor],
    x: Tensor,
    /,
    *,
    tolerance: float = 1e-5,
    shrink: float = 0.9,
    max_steps: int = 1000,
    max_backtracks: int = 200,
    counts: EvaluationCounts | None = None,
) -> Tensor:
    """Drive `x` to Pareto stationarity: `d = -alpha^T G` (min-norm alpha), stop when `||d|| <
    tolerance`; backtracking from `eta = 1` by `shrink` until no loss increases (`c_1 = 0`, every
    task); stop when `eta ||d|| < tolerance` (spec §5.2), or after `max_steps`."""
    counts = counts if counts is not None else EvaluationCounts()
    for _ in range(max_steps):
        values, jacobian = _values_and_jacobian(objectives, x)
        counts.values["correct"] += 1
        counts.jacobians["correct"] += 1
        direction = -(min_norm_point(gramian(jacobian)).weights @ jacobian)
        norm = float(direction.norm())
        if norm < tolerance:
            break
        eta = 1.0
        for _ in range(max_backtracks):
            with torch.no_grad():
                trial = objectives(x + eta * direction)
            counts.values["correct"] += 1
            if bool((trial <= values).all()):
                break
            eta *= shrink
        else:
            break  # no step decreases every loss: stationary to the precision of the line search
        x = (x + eta * direction).detach()
        if eta * norm < tolerance:
            break
    return x.detach()


def expand(
    objectives: Callable[[Tensor], Tensor],
    start: Tensor,
    /,
    *,
    num_points: int = 10,
    directions_per_point: int = 2,
    step: float = 0.1,
    predictor: Literal["tangent", "weights"] = "tangent",
    maxiter: int = 2,
    generator: torch.Generator | None = None,
    corrector_tolerance: float = 1e-5,
) -> Expansion:
    """Breadth-first expansion from a Pareto-stationary `start` `[n]` until more than `num_points`
    points are found (spec §5.2: K = 2 directions per node, N = 10, s = 0.1, MINRES maxiter 2).

    predictor "tangent": `x* + step v/||v||` with `H v = G^T beta`, `beta ~ N(0, I)`.
    predictor "weights" (the baseline): `x* - step d/||d||` with `d = alpha_p^T G`,
    `alpha_p = alpha * U(0.9, 1.1)` renormalised. Each prediction is corrected by `mgda_correct`.
    """
    if predictor not in ("tangent", "weights"):
        raise InvalidHyperparameterError(
            f"predictor must be 'tangent' or 'weights', got {predictor!r}"
        )
    if num_points < 1 or directions_per_point < 1 or not step > 0:
        raise InvalidHyperparameterError(
            "need num_points >= 1, directions_per_point >= 1 and step > 0"
        )
    counts = EvaluationCounts()
    points, parents = [start.detach().clone()], [-1]
    queue = deque([0])
    while queue and len(points) <= num_points:
        index = queue.popleft()
        for prediction in _predict(
            objectives,
            points[index],
            predictor,
            directions_per_point,
            step,
            maxiter,
            generator,
            counts,
        ):
            points.append(
                mgda_correct(objectives, prediction, tolerance=corrector_tolerance, counts=counts)
            )
            parents.append(index)
            queue.append(len(points) - 1)
    stacked = torch.stack(points)
    values, residuals = [], []
    for point in points:
        value, jacobian = _values_and_jacobian(objectives, point)
        values.append(value)
        residuals.append(min_norm_point(gramian(jacobian)).residual)
    return Expansion(stacked, torch.stack(values), parents, torch.stack(residuals), counts)


def _predict(
    objectives: Callable[[Tensor], Tensor],
    x: Tensor,
    predictor: str,
    count: int,
    step: float,
    maxiter: int,
    generator: torch.Generator | None,
    counts: EvaluationCounts,
) -> list[Tensor]:
    if predictor == "tangent":
        point = x.detach().requires_grad_(True)
        with torch.enable_grad():
            values = objectives(point)
            num_tasks = values.numel()
            betas = torch.randn(count, num_tasks, generator=generator, dtype=x.dtype).to(x.device)
            result = tangent_directions(values, [point], betas, maxiter=maxiter)
        counts.values["predict"] += 1
        counts.jacobians["predict"] += 1
        counts.hvps["predict"] += sum(solve.iterations for solve in result.solves)
        return [(x + step * direction).detach() for direction in result.directions]
    values, jacobian = _values_and_jacobian(objectives, x)
    counts.values["predict"] += 1
    counts.jacobians["predict"] += 1
    alpha = min_norm_point(gramian(jacobian)).weights
    predictions = []
    for _ in range(count):
        factors = 0.9 + 0.2 * torch.rand(alpha.shape, generator=generator, dtype=alpha.dtype).to(
            alpha.device
        )
        perturbed = alpha * factors
        direction = (perturbed / perturbed.sum()) @ jacobian
        norm = direction.norm()
        predictions.append(
            (x - step * direction / norm).detach() if float(norm) > 0 else x.detach().clone()
        )
    return predictions
