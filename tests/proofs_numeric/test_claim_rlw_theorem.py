"""The RLW Theorem 1 claim: quick run, a criterion that can fail, the bound and theta* helpers."""

from __future__ import annotations

import json
import math

import pytest
import torch

import core
from proofs_numeric import rlw_theorem as claim
from toy_problems import ConvexQuadratic


@pytest.fixture(scope="module")
def quick_result():
    return claim.run(quick=True)


def test_quick_run_passes_with_sane_json_data(quick_result, tmp_path) -> None:
    result = quick_result
    assert result.passed, result.measured
    data = json.loads(json.dumps(result.data))  # JSON-ready
    assert len(data["curves"]) == len(claim.PROBLEMS) * len(claim.SETTINGS)
    for curve in data["curves"]:
        assert curve["max_upper_over_bound"] <= claim.BOUND_SLACK
        assert 0 < curve["eta"] <= 1 / (2 * curve["c"])
        assert curve["kappa_tight"] <= curve["kappa"]
        series = curve["series"]
        assert series["k"][0] == 0 and series["mean"][0] == pytest.approx(
            curve["initial_sq_distance"]
        )
        assert all(
            low <= mean <= high <= bound
            for low, mean, high, bound in zip(
                series["low"], series["mean"], series["high"], series["bound"]
            )
        )
    for check in data["weight_mean_checks"]:
        assert check["contains_1_over_K"] and check["on_simplex"]
        assert check["max_abs_error"] < 0.01 and check["mean_sum_of_squares"] <= 1
    paths = result.save(tmp_path)
    assert all(path.stat().st_size > 0 for path in paths)


def test_an_impossible_slack_fails(monkeypatch) -> None:
    monkeypatch.setattr(claim, "PROBLEMS", ((2, 2, 0, 5.0),))
    monkeypatch.setattr(
        claim, "BOUND_SLACK", 1e-3
    )  # at k = 0 the estimate is ||theta_0 - theta*||^2, most of the bound
    result = claim.run(quick=True)
    assert not result.passed
    assert result.data["checks"]["upper CI / bound, max over k and settings"]["value"] > 1e-3


def test_bound_formula_on_a_hand_case() -> None:
    bound = claim.rlw_bound(torch.arange(3), eta=0.25, c=1.0, kappa=2.0, initial_sq_distance=4.0)
    # (1 - 2 * 0.25)^k * 4 + 0.25 * 2 / 2
    torch.testing.assert_close(bound, torch.tensor([4.25, 2.25, 1.25], dtype=torch.float64))
    with pytest.raises(ValueError):
        claim.rlw_bound(torch.arange(3), eta=0.6, c=1.0, kappa=2.0, initial_sq_distance=4.0)


def test_theta_star_minimises_the_mean_loss() -> None:
    problem = ConvexQuadratic.random(4, 3, seed=7, condition=8.0)
    target = claim.mean_loss_minimiser(problem)
    _, jacobian = core.batched_task_gradients(problem, target)
    assert float(jacobian.mean(dim=0).abs().max()) < 1e-12
    torch.testing.assert_close(
        target, problem.pareto_point(torch.full((3,), 1 / 3, dtype=torch.float64))
    )
    assert claim.gradient_gap(problem, torch.randn(5, 4, dtype=torch.float64)) < 1e-12


def test_simulate_matches_the_direct_loop() -> None:
    """The buffered, coordinate-major, prefetching `simulate` against the direct batched loop, fed
    the same draws in the same order: equal up to rounding."""
    problem = ConvexQuadratic.random(3, 2, seed=4, condition=5.0)
    num_runs, num_steps, seed = 8, 6, 4
    result = claim.simulate(problem, num_runs=num_runs, num_steps=num_steps, seed=seed)

    etas = torch.tensor(result.etas, dtype=torch.float64)[:, None, None]
    noise = torch.tensor([s.noise for s in claim.SETTINGS], dtype=torch.float64)
    target = claim.mean_loss_minimiser(problem)
    start = problem.starts(1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)[0]
    method = core.RandomLossWeighting(generator=torch.Generator().manual_seed(seed + 1))
    noise_generator = torch.Generator().manual_seed(seed + 2)
    theta = start.expand(len(claim.SETTINGS), num_runs, -1).clone()  # [settings, runs, n]
    squared = [(theta - target).pow(2).sum(dim=-1)]
    for _ in range(num_steps):
        _, jacobian = core.batched_task_gradients(problem, theta)  # [settings, runs, K, n]
        weights = method(torch.zeros(theta.shape[:-1] + (problem.n_obj,), dtype=torch.float64))
        direction = (weights[..., None] * jacobian).sum(dim=-2)
        xi = torch.randn(
            int((noise > 0).sum()),
            num_runs,
            problem.n_var,
            generator=noise_generator,
            dtype=torch.float64,
        )
        direction[noise > 0] += (
            noise[noise > 0, None, None] * weights[noise > 0].norm(dim=-1, keepdim=True) * xi
        )
        theta = theta - etas * direction
        squared.append((theta - target).pow(2).sum(dim=-1))
    torch.testing.assert_close(
        result.squared_distances, torch.stack(squared), rtol=1e-12, atol=1e-14
    )


def test_interval_helpers() -> None:
    assert claim.normal_quantile(0.05, 1) == pytest.approx(1.959964, abs=1e-5)
    assert claim.normal_quantile(0.05, 10) > claim.normal_quantile(0.05, 1)  # Bonferroni widens
    samples = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    mean, low, high = claim.mean_interval(samples, 2.0)
    half = 2.0 * float(samples.std()) / math.sqrt(4)
    torch.testing.assert_close(
        torch.stack([mean, low, high]),
        torch.tensor([[2.5], [2.5 - half], [2.5 + half]], dtype=torch.float64),
    )
    check = claim.weight_mean_check(4, num_draws=20_000, seed=0, z=claim.normal_quantile(0.01, 4))
    assert check["contains_1_over_K"] and check["on_simplex"]
