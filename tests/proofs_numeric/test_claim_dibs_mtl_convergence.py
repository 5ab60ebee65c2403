"""The DiBS-MTL nonconvex-convergence claim: quick run, a criterion that can fail, its helpers."""

from __future__ import annotations

import json
import math

import pytest
import torch

import core
from core.methods.base import safe_reciprocal
from proofs_numeric import dibs_mtl_convergence as claim
from toy_problems import RandomNonconvex
from toy_problems.families import StackedNonconvex


@pytest.fixture(scope="module")
def quick_result():
    return claim.run(quick=True)


def test_quick_run_passes_with_sane_json_data(quick_result, tmp_path) -> None:
    result = quick_result
    assert result.passed, result.measured
    assert result.name == claim.NAME and result.figure is not None
    data = json.loads(json.dumps(result.data))  # JSON-ready
    assert data["runs_per_setting"] >= 50
    assert set(data["settings"]) == {setting.label for setting in claim.SETTINGS}
    for key, check in data["checks"].items():
        assert math.isfinite(check["value"]) and check["value"] <= check["bound"], key
    for entry in data["settings"].values():
        medians = [quantiles["median"] for quantiles in entry["running_min"]]
        assert medians == sorted(medians, reverse=True)  # a running minimum never increases
        assert all(0 <= q["median"] <= q["q90"] <= q["max"] <= 1.5 for q in entry["running_min"])
    assert len(data["iterations"]) == len(
        data["running_min_quantiles"][claim.SETTINGS[0].label]["median"]
    )
    paths = result.save(tmp_path)
    assert all(path.stat().st_size > 0 for path in paths)


def test_an_impossible_threshold_fails(monkeypatch) -> None:
    monkeypatch.setattr(claim, "CONFIGS", ((2, 2),))
    monkeypatch.setattr(
        claim, "NOISY_RM_TOLERANCE", 1e-9
    )  # gradient noise keeps the residual far above this
    result = claim.run(quick=True)
    assert not result.passed
    failed = [
        key for key, check in result.data["checks"].items() if check["value"] > check["bound"]
    ]
    assert failed and all(key.endswith("robbins_monro/noisy: max final") for key in failed)


def test_robbins_monro_steps_diverge_in_sum_and_converge_in_squares() -> None:
    initial, half_life, power = 0.05, 100.0, 0.75
    steps = claim.robbins_monro_steps(1_000_000, initial=initial, half_life=half_life, power=power)
    assert steps[0] == initial and bool((steps[1:] < steps[:-1]).all())
    sums = steps.cumsum(0)
    # sum_k a_k grows like N^(1 - p): from 10^4 to 10^6 steps it grows by more than 4x
    assert sums[-1] > 4 * sums[9_999]
    squares = steps.pow(2).cumsum(0)
    tail_bound = (
        2 * initial**2 * half_life * (1 + 10_000 / half_life) ** -0.5
    )  # integral of the tail
    assert squares[-1] - squares[9_999] <= tail_bound
    assert squares[-1] <= initial**2 * (1 + 2 * half_life)
    with pytest.raises(ValueError):
        claim.robbins_monro_steps(10, power=0.5)


def test_stacked_closed_form_is_each_problem_s_own_bit_for_bit() -> None:
    problems = [RandomNonconvex(4, 3, seed=seed) for seed in range(3)]
    stacked = StackedNonconvex(problems, (2, 5))
    x = 3 * torch.randn(3, 2, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert stacked.autograd_gap(x) < 1e-12
    values, jacobian = stacked.values_and_jacobian(x)
    assert values.shape == (3, 2, 5, 3) and jacobian.shape == (3, 2, 5, 3, 4)
    assert torch.equal(stacked.jacobian(x), jacobian)
    for p, problem in enumerate(problems):
        own_values, own_jacobian = problem.values_and_jacobian(x[p])
        assert torch.equal(values[p], own_values) and torch.equal(jacobian[p], own_jacobian)


def test_every_setting_gets_its_method_s_weights_bit_for_bit() -> None:
    variants = claim.methods()
    jacobian = torch.randn(
        2,
        len(claim.SETTINGS),
        3,
        2,
        5,
        dtype=torch.float64,
        generator=torch.Generator().manual_seed(1),
    )
    jacobian[0, :, 0, 1] = 0  # a zero gradient: weight 0
    gramian = core.gramian(jacobian)
    weights = claim.weights_of_settings(variants, gramian)
    assert torch.equal(weights[0, :, 0, 1], torch.zeros_like(weights[0, :, 0, 1]))
    for name, columns in claim.method_columns().items():
        assert {setting.method for setting in claim.SETTINGS[columns]} == {name}
        expected = variants[name](
            gramian[:, columns], torch.zeros(gramian[:, columns].shape[:-1], dtype=torch.float64)
        )
        assert torch.equal(weights[:, columns], expected)
    # 1-step DiBS-MTL moves along the sum of unit gradients
    one_step = claim.method_columns()["1-step"]
    direction = (weights[:, one_step, ..., None] * jacobian[:, one_step]).sum(
        dim=-2
    ) / claim.direction_scales(variants)[one_step, None, None]
    units = jacobian[:, one_step] * safe_reciprocal(
        torch.linalg.vector_norm(jacobian[:, one_step], dim=-1, keepdim=True)
    )
    torch.testing.assert_close(direction, units.sum(dim=-2))


def test_neighbourhood_exponent_on_a_hand_case() -> None:
    large = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    # halving the median tail residual when the step is divided by 4: exponent 1/2
    assert claim.neighbourhood_exponent(large, large / 2, 0.25) == pytest.approx(0.5)
    assert claim.neighbourhood_exponent(large, large / 4, 0.25) == pytest.approx(1.0)
