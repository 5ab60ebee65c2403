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
        assert series["k"][0] == 0 and series["mean"][0] == pytest.approx(curve["initial_sq_distance"])
        assert all(low <= mean <= high <= bound for low, mean, high, bound in
                   zip(series["low"], series["mean"], series["high"], series["bound"]))
    for check in data["weight_mean_checks"]:
        assert check["contains_1_over_K"] and check["on_simplex"]
        assert check["max_abs_error"] < 0.01 and check["mean_sum_of_squares"] <= 1
    paths = result.save(tmp_path)
    assert all(path.stat().st_size > 0 for path in paths)


def test_an_impossible_slack_fails(monkeypatch) -> None:
    monkeypatch.setattr(claim, "PROBLEMS", ((2, 2, 0, 5.0),))
    monkeypatch.setattr(claim, "BOUND_SLACK", 1e-3)  # at k = 0 the estimate is ||theta_0 - theta*||^2, most of the bound
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
    torch.testing.assert_close(target, problem.pareto_point(torch.full((3,), 1 / 3, dtype=torch.float64)))
    assert claim.gradient_gap(problem, torch.randn(5, 4, dtype=torch.float64)) < 1e-12


def test_interval_helpers() -> None:
    assert claim.normal_quantile(0.05, 1) == pytest.approx(1.959964, abs=1e-5)
    assert claim.normal_quantile(0.05, 10) > claim.normal_quantile(0.05, 1)  # Bonferroni widens
    samples = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    mean, low, high = claim.mean_interval(samples, 2.0)
    half = 2.0 * float(samples.std()) / math.sqrt(4)
    torch.testing.assert_close(torch.stack([mean, low, high]), torch.tensor([[2.5], [2.5 - half], [2.5 + half]], dtype=torch.float64))
    check = claim.weight_mean_check(4, num_draws=20_000, seed=0, z=claim.normal_quantile(0.01, 4))
    assert check["contains_1_over_K"] and check["on_simplex"]
