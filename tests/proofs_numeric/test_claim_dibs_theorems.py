"""`proofs_numeric.dibs_theorems`: the DiBS theorems pass in quick mode, a violated criterion fails,
and the helpers do what they say."""

from __future__ import annotations

import json

import pytest
import torch

import core
from proofs_numeric import dibs_fairness, dibs_theorems
from toy_problems import ConvexQuadratic
from toy_problems.base import Problem


@pytest.fixture(scope="module")
def quick_result():
    return dibs_theorems.run(quick=True)


def test_quick_run_passes_with_json_ready_data(quick_result) -> None:
    assert quick_result.passed, quick_result.measured
    checks = quick_result.data["checks"]
    assert all(check["passed"] for check in checks.values())
    assert {key[0] for key in checks} == {"a", "b", "c"}  # every part of the claim is judged
    assert checks["b_final_residual"]["value"] <= dibs_theorems.CONVERGENCE_RESIDUAL_TOLERANCE
    json.dumps(quick_result.data)  # JSON-ready
    assert quick_result.figure is not None


def test_a_violated_criterion_fails(monkeypatch) -> None:
    # a smaller quick run (one size per part) keeps this fast; only the patched criterion may fail
    small = {
        **dibs_theorems.QUICK,
        "configs": [(2, 2), (3, 3)],
        "problems": 3,
        "symmetric_configs": [(2, 2)],
    }
    monkeypatch.setattr(dibs_theorems, "QUICK", small)
    monkeypatch.setattr(
        dibs_theorems, "PARETO_DISTANCE_TOLERANCE", 1e-30
    )  # no float64 run gets this close
    result = dibs_theorems.run(quick=True)
    assert not result.passed
    failed = [key for key, check in result.data["checks"].items() if not check["passed"]]
    assert failed == ["b_distance_to_pareto_point"]


class _Pair(Problem):
    """`x^2, (x - 1)^2`, gradients by autograd (the base class's `values_and_jacobian`)."""

    n_var, n_obj, bounds = 1, 2, (0.0, 1.0)

    def __call__(self, x: torch.Tensor, /) -> torch.Tensor:
        return torch.cat([x**2, (x - 1) ** 2], dim=-1)


def test_newton_finds_the_fair_fixed_point_and_the_certificate_bounds_the_residual() -> None:
    preferred = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    starts = torch.tensor([[0.2], [0.9], [0.5]], dtype=torch.float64)
    fixed = dibs_theorems.newton_fixed_points(_Pair(), starts, preferred)
    torch.testing.assert_close(fixed, torch.full_like(starts, 0.5), atol=1e-14, rtol=0)
    parts = dibs_theorems.field_parts(
        _Pair(), torch.tensor([[0.2]], dtype=torch.float64), preferred
    )
    torch.testing.assert_close(
        parts["field"], torch.tensor([[-0.6]], dtype=torch.float64)
    )  # D = 2x - 1
    torch.testing.assert_close(
        parts["beta"], torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    )  # d_i/||g_i|| = 1/2 each
    # ||sum beta_i g_i|| = ||D|| / sum_j d_j/||g_j|| = 0.6 / 1
    torch.testing.assert_close(parts["certificate"], torch.tensor([0.6], dtype=torch.float64))


@pytest.mark.parametrize("n_var, n_obj", [(2, 2), (3, 3), (5, 2)])
def test_reflection_symmetric_problem_swaps_the_tasks(n_var: int, n_obj: int) -> None:
    problem, normal = dibs_theorems.reflection_symmetric_problem(n_var, n_obj, seed=3)
    reflection = torch.eye(n_var, dtype=torch.float64) - 2 * torch.outer(normal, normal)
    x = torch.randn(7, n_var, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    swap = [1, 0, 2][:n_obj]
    torch.testing.assert_close(
        problem(x @ reflection.T), problem(x)[:, swap], rtol=1e-12, atol=1e-12
    )
    assert float(normal @ problem.centers[0]) == pytest.approx(
        0.5
    )  # the task preferred states are off the axis


def test_stacked_quadratics_match_the_problems_and_distinct_points_counts() -> None:
    problems = [ConvexQuadratic.random(3, 2, seed=s) for s in range(3)]
    objectives = dibs_theorems.StackedQuadratics(problems)
    x = torch.randn(3, 4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = torch.stack([problem(x[p]) for p, problem in enumerate(problems)])
    torch.testing.assert_close(objectives(x), expected)
    torch.testing.assert_close(objectives.centers[1], problems[1].centers)
    points = torch.tensor([[0.0, 0.0], [1e-9, 0.0], [1.0, 0.0]], dtype=torch.float64)
    assert dibs_theorems.distinct_points(points) == 2


@pytest.mark.parametrize(
    "n_var, n_obj", sorted({*dibs_theorems.QUICK["configs"], *dibs_theorems.FULL["configs"]})
)
def test_stacked_quadratics_closed_form_is_autograd_bit_for_bit(n_var: int, n_obj: int) -> None:
    objectives = dibs_theorems.StackedQuadratics(
        [ConvexQuadratic.random(n_var, n_obj, seed=s) for s in range(4)]
    )
    x = 10 * torch.randn(
        2, 4, 5, n_var, generator=torch.Generator().manual_seed(n_var), dtype=torch.float64
    )
    values, gradients = objectives.values_and_jacobian(x)
    expected_values, expected_gradients = core.batched_task_gradients(objectives, x)
    assert torch.equal(values, expected_values) and torch.equal(gradients, expected_gradients)


def test_dibs_and_the_naive_sum_in_one_batch_repeat_separate_runs_bit_for_bit() -> None:
    problem = ConvexQuadratic.random(3, 3, seed=0)
    starts = 3 * torch.randn(6, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    step = dibs_theorems.robbins_monro(0.1)
    dibs, naive = dibs_theorems.dibs_and_naive(
        problem, starts, starts[:4], problem.centers, num_steps=50, step_size=step
    )
    assert torch.equal(
        dibs, core.dibs(problem, starts, problem.centers, num_steps=50, step_size=step)
    )
    expected = core.dibs(
        problem, starts[:4], problem.centers, num_steps=50, step_size=step, distance_weighted=False
    )
    assert torch.equal(naive, expected)


def test_the_fairness_games_run_as_one_batch_repeat_core_dibs_bit_for_bit() -> None:
    starts = torch.linspace(0.01, 0.99, 8, dtype=torch.float64)[:, None]
    preferred = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    schedule = core.robbins_monro_step(0.2, power=0.75)
    dibs, naive, quartic = dibs_fairness.trajectories(starts, preferred, schedule, 100)
    quadratic_pair, quartic_pair = _Pair(), lambda x: torch.cat([x**4, (x - 1) ** 2], dim=-1)
    assert torch.equal(
        dibs, core.dibs(quadratic_pair, starts, preferred, num_steps=100, step_size=schedule)
    )
    assert torch.equal(
        naive,
        core.dibs(
            quadratic_pair,
            starts,
            preferred,
            num_steps=100,
            step_size=schedule,
            distance_weighted=False,
        ),
    )
    assert torch.equal(
        quartic, core.dibs(quartic_pair, starts, preferred, num_steps=100, step_size=schedule)
    )
    games = dibs_fairness.LossPairs((2, 4))
    values, gradients = games.values_and_jacobian(starts.expand(2, -1, -1))
    for game, pair in enumerate((quadratic_pair, quartic_pair)):
        expected_values, expected_gradients = core.batched_task_gradients(pair, starts)
        assert torch.equal(values[game], expected_values) and torch.equal(
            gradients[game], expected_gradients
        )
