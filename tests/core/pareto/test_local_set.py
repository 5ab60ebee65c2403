"""`LocalParetoSet`: first-order accuracy of the parameterisation (errors O(s^2), slope about 2)."""

from __future__ import annotations

import pytest
import torch

from core.errors import MTLInputError
from core.jacobian import batched_task_gradients, gramian
from core.pareto import stationarity
from core.pareto.local_set import LocalParetoSet, simplex_tangent_basis
from toy_problems import ConvexQuadratic

F64 = torch.float64


def build(problem, x_star: torch.Tensor) -> LocalParetoSet:
    x = x_star.clone().requires_grad_(True)
    return LocalParetoSet(problem(x), [x])


def fitted_slope(steps: torch.Tensor, errors: torch.Tensor) -> float:
    """Least-squares slope of log(error) against log(step)."""
    design = torch.stack([torch.log(steps), torch.ones_like(steps)], dim=1)
    return float(torch.linalg.lstsq(design, torch.log(errors)[:, None]).solution[0, 0])


def test_basis_is_orthonormal_and_sums_to_zero() -> None:
    for num_tasks in (2, 3, 5):
        basis = simplex_tangent_basis(num_tasks)
        torch.testing.assert_close(basis.T @ basis, torch.eye(num_tasks - 1, dtype=F64))
        torch.testing.assert_close(basis.sum(dim=0), torch.zeros(num_tasks - 1, dtype=F64))
    with pytest.raises(MTLInputError):
        simplex_tangent_basis(1)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_parameterisation_and_front_are_first_order_accurate(seed) -> None:
    problem = ConvexQuadratic.random(6, 3, seed=seed, condition=4.0)
    local = build(problem, problem.pareto_point(torch.tensor([0.3, 0.3, 0.4], dtype=F64)))
    assert local.dimension == 2 and local.stationarity_residual <= 1e-8 and local.regular
    direction = torch.randn(2, generator=torch.Generator().manual_seed(seed), dtype=F64)
    steps = torch.logspace(-1, -3, 5, dtype=F64)
    points = local.point(steps[:, None] * direction / direction.norm())
    _, jacobian = batched_task_gradients(problem, points)
    residuals = stationarity(gramian(jacobian))[1]
    value_errors = (
        problem(points) - local.predicted_values(steps[:, None] * direction / direction.norm())
    ).norm(dim=1)
    assert 1.8 <= fitted_slope(steps, residuals) <= 2.3
    assert 1.8 <= fitted_slope(steps, value_errors) <= 2.3


def test_queries_by_objective_change_reach_the_requested_trade_off() -> None:
    problem = ConvexQuadratic.random(5, 2, seed=7)
    local = build(problem, problem.pareto_point(torch.tensor([0.5, 0.5], dtype=F64)))
    along_front = local.front_directions[:, 0] * 1e-3  # a reachable change (tangent to the front)
    coordinates = local.coordinates_for(along_front)
    torch.testing.assert_close(
        local.predicted_values(coordinates) - local.center_values,
        along_front,
        rtol=1e-10,
        atol=1e-14,
    )
    reached = problem(local.point(coordinates)) - local.center_values
    assert float((reached - along_front).norm()) <= 1e-2 * float(along_front.norm())  # O(s^2) off
    assert bool(reached[0] * reached[1] < 0)  # a trade-off: one task gains what the other loses
    with pytest.raises(MTLInputError, match="shape"):
        local.point(torch.zeros(3, dtype=F64))


def test_an_end_of_the_front_is_flagged_as_not_regular() -> None:
    """At a task's own minimiser (a vertex of the front) alpha = e_1 lies on the simplex boundary."""
    problem = ConvexQuadratic.random(4, 3, seed=2)
    assert not build(problem, problem.centers[0].clone()).regular
    assert build(problem, problem.pareto_point(torch.full((3,), 1 / 3, dtype=F64))).regular
