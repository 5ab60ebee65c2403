"""Tangent directions of the local Pareto set: `H v = G^T beta` solved by MINRES on HVPs."""

from __future__ import annotations

import math

import pytest
import torch

from core.errors import MTLInputError
from core.jacobian import batched_task_gradients, gramian
from core.pareto import stationarity
from core.pareto.tangent import loss_jacobian, tangent_directions
from toy_problems import ConvexQuadratic
from toy_problems.zdt import ZDT2Variant

F64 = torch.float64


zdt2_variant = ZDT2Variant()


def at(problem, point: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    x = point.clone().requires_grad_(True)
    return problem(x), [x]


def residual(problem, points: torch.Tensor) -> torch.Tensor:
    _, jacobian = batched_task_gradients(problem, points)
    return stationarity(gramian(jacobian))[1]


def test_quadratic_with_identity_curvature_moves_in_the_affine_hull_of_the_centres() -> None:
    """f_i = 1/2 ||x - c_i||^2: H = I, so v = G^T beta = sum_i beta_i (x - c_i), which lies in the
    span of the c_i - c_j once sum beta = 0 (spec §7.3); one MINRES iteration solves it."""
    centers = torch.tensor(
        [[0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0]], dtype=F64
    )
    problem = ConvexQuadratic(centers)
    x_star = problem.pareto_point(torch.tensor([0.2, 0.3, 0.5], dtype=F64))
    losses, params = at(problem, x_star)
    betas = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    result = tangent_directions(losses, params, betas, maxiter=1, rtol=1e-12)
    assert result.residual <= 1e-10
    expected = betas @ (x_star - centers)
    torch.testing.assert_close(result.raw, expected, rtol=1e-10, atol=1e-12)
    assert bool(
        (result.directions[:, 2:].abs() <= 1e-12).all()
    )  # the hull spans the first two axes
    torch.testing.assert_close(result.directions.norm(dim=1), torch.ones(4, dtype=F64))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tangent_steps_stay_stationary_to_second_order(seed) -> None:
    """On a random convex quadratic family (K = 3, n = 5) the residual at x* + s v/||v|| is O(s^2)
    for tangents, but O(s) for a step along a task gradient."""
    problem = ConvexQuadratic.random(5, 3, seed=seed, condition=5.0)
    x_star = problem.pareto_point(torch.tensor([0.3, 0.3, 0.4], dtype=F64))
    losses, params = at(problem, x_star)
    betas = torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=F64)
    tangents = tangent_directions(losses, params, betas, rtol=1e-12).directions
    gradient = loss_jacobian(*at(problem, x_star))[0]
    gradient = gradient / gradient.norm()
    steps = torch.tensor([1e-1, 1e-2, 1e-3], dtype=F64)
    tangent_residuals = residual(
        problem, x_star + steps[:, None, None] * tangents
    )  # [3 steps, 3 directions]
    slopes = torch.log10(tangent_residuals[:-1] / tangent_residuals[1:])
    assert bool((slopes > 1.8).all()), slopes
    gradient_residuals = residual(problem, x_star + steps[:, None] * gradient)
    assert bool((torch.log10(gradient_residuals[:-1] / gradient_residuals[1:]) < 1.2).all())


def test_gradient_correction_and_given_weights() -> None:
    problem = ConvexQuadratic.random(4, 2, seed=5)
    x_near = problem.pareto_point(torch.tensor([0.4, 0.6], dtype=F64)) + 1e-3
    losses, params = at(problem, x_near)
    betas = torch.eye(2, dtype=F64)
    corrected = tangent_directions(losses, params, betas, correct_gradients=True, rtol=1e-12)
    assert corrected.residual > 1e-6
    torch.testing.assert_close(
        corrected.weights @ corrected.jacobian, torch.zeros(4, dtype=F64), rtol=0, atol=1e-12
    )
    given = tangent_directions(losses, params, betas, weights=corrected.weights, rtol=1e-12)
    torch.testing.assert_close(given.weights, corrected.weights)
    with pytest.raises(MTLInputError, match="betas"):
        tangent_directions(losses, params, torch.ones(2, 3, dtype=F64))


def test_zdt2_variant_two_iterations_give_the_cylinder_axis() -> None:
    """Spec §4.3/§7.1: at a Pareto point of the ZDT2 variant (the cylinder x2^2 + x3^2 = pi), MINRES
    with maxiter 2 returns (+-1, 0, 0) and f(x* + s v) stays on the front f2 = 1 - f1^2; maxiter 1
    returns a gradient combination that leaves it."""

    theta = 0.7
    x_star = torch.tensor(
        [
            -math.pi + 0.3,
            math.sqrt(math.pi) * math.cos(theta),
            math.sqrt(math.pi) * math.sin(theta),
        ],
        dtype=F64,
    )
    losses, params = at(zdt2_variant, x_star)
    betas = torch.randn(3, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    two = tangent_directions(losses, params, betas, maxiter=2).directions
    torch.testing.assert_close(
        two.abs(), torch.tensor([[1.0, 0.0, 0.0]] * 3, dtype=F64), rtol=0, atol=1e-8
    )
    front = zdt2_variant(x_star + 0.3 * two)
    torch.testing.assert_close(front[:, 1], 1 - front[:, 0] ** 2, rtol=0, atol=1e-10)
    one = tangent_directions(losses, params, betas[:1], maxiter=1).directions
    off = zdt2_variant(x_star + 0.3 * one)
    assert float((off[:, 1] - (1 - off[:, 0] ** 2)).abs().max()) > 1e-2
