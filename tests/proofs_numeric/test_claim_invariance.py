"""`proofs_numeric.invariance`: the quick run passes, a violated criterion fails, and its helpers do what they say."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

import core
from core.transforms import Log
from proofs_numeric import invariance
from toy_problems import RandomNonconvex, TwoTaskToy


@pytest.fixture(scope="module")
def quick_measurements() -> invariance.Measurements:
    return invariance.measure(quick=True)


def _evaluate(measurements: invariance.Measurements):
    import matplotlib.pyplot as plt

    result = invariance.evaluate(measurements)
    plt.close(result.figure)
    return result


def test_quick_run_passes(quick_measurements) -> None:
    result = _evaluate(quick_measurements)
    assert result.passed, result.measured
    data = json.loads(json.dumps(result.data))  # JSON-ready
    for name in invariance.EXACT:
        assert data["invariant"][name]["median_ratio"] <= invariance.INVARIANCE_TOLERANCE
    for name in invariance.NON_INVARIANT:
        assert data["non_invariant"][name]["median_ratio"] >= invariance.DIVERGENCE_MIN
    # the reference toy transform f1 -> f1^3|f1| changes nothing for DiBS-MTL and much for LS
    toy = data["toy_reference_transform"]
    dibs_gap = torch.tensor(toy["dibsmtl"]["endpoints_nominal_run"]) - torch.tensor(
        toy["dibsmtl"]["endpoints_transformed_run"]
    )
    ls_gap = torch.tensor(toy["ls"]["endpoints_nominal_run"]) - torch.tensor(
        toy["ls"]["endpoints_transformed_run"]
    )
    assert float(dibs_gap.abs().max()) <= 1e-9 and float(ls_gap.abs().max()) >= 1.0
    assert result.measured and result.bound


@pytest.mark.parametrize(
    ("constant", "value"),
    [("DIVERGENCE_MIN", 1e9), ("INVARIANCE_TOLERANCE", 1e-30), ("ROUNDING_FACTOR", 1e-12)],
)
def test_a_violated_criterion_fails(quick_measurements, monkeypatch, constant, value) -> None:
    monkeypatch.setattr(invariance, constant, value)
    assert not _evaluate(quick_measurements).passed


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize(
    ("loss_range", "lower_bound"),
    [((-19.9, 16.3), -math.inf), ((-19.9, 16.3), -20.0), ((0.7, 27.0), 0.0)],
)
def test_random_transforms_are_strictly_increasing_nonaffine_with_correct_derivatives(
    seed, loss_range, lower_bound
) -> None:
    generator = torch.Generator().manual_seed(seed)
    transform = invariance.random_transform(generator, loss_range, lower_bound=lower_bound)
    low = lower_bound if math.isfinite(lower_bound) else loss_range[0] - 5.0
    grid = torch.linspace(low, 2 * loss_range[1], 2001, dtype=torch.float64)[1:].requires_grad_(
        True
    )  # beyond the range too
    values = transform(grid)
    (autograd,) = torch.autograd.grad(values.sum(), grid)
    derivative = transform.derivative(grid.detach())
    assert bool(torch.isfinite(values).all()) and bool((values.diff() > 0).all())
    assert bool((derivative > 0).all()) and bool(torch.isfinite(derivative).all())
    torch.testing.assert_close(derivative, autograd, rtol=1e-9, atol=0.0)
    assert invariance.nonlinearity(transform, loss_range) >= invariance.MIN_NONLINEARITY
    if math.isfinite(lower_bound):  # defined at the lower bound itself, whatever layers were drawn
        assert math.isfinite(float(transform(torch.tensor(lower_bound, dtype=torch.float64))))
    else:
        assert not any(isinstance(layer, Log) for layer in transform.transforms)


def test_the_generator_is_deterministic_and_draws_logs_only_with_a_lower_bound() -> None:
    draws = [
        invariance.random_transform(torch.Generator().manual_seed(s), (0.5, 20.0), lower_bound=0.0)
        for s in range(40)
    ]
    again = [
        invariance.random_transform(torch.Generator().manual_seed(s), (0.5, 20.0), lower_bound=0.0)
        for s in range(40)
    ]
    assert draws == again
    assert any(isinstance(layer, Log) for draw in draws for layer in draw.transforms)


def test_a_family_s_chain_rule_jacobian_matches_autograd_and_versions_apply_their_transforms() -> (
    None
):
    generator = torch.Generator().manual_seed(3)
    problems = [RandomNonconvex(4, 3, seed=s) for s in (1, 2)]
    ranges = invariance.loss_ranges(problems, *invariance.box(problems[0]), generator=generator)
    transforms = invariance.draw_versions(
        generator, ranges, torch.zeros(2, 3, dtype=torch.float64), 1
    )
    family = invariance.TransformedFamily(problems, transforms)
    x = invariance.random_starts(problems, 3, 4, generator)
    values, jacobian = family.values_and_jacobian(x)
    expected_values, expected_jacobian = core.batched_task_gradients(family, x)
    torch.testing.assert_close(values, expected_values, rtol=0, atol=0)
    torch.testing.assert_close(jacobian, expected_jacobian, rtol=1e-14, atol=1e-14)
    nominal = family.nominal(x)
    torch.testing.assert_close(values[:, 0], nominal[:, 0])
    torch.testing.assert_close(
        values[1, 2, :, 1], transforms[1][2][1](nominal[1, 2, :, 1])
    )  # problem 1, version 2, task 1
    # the transformed gradient is h'(l) times the nominal one
    _, nominal_jacobian = core.batched_task_gradients(
        lambda y: torch.stack([p(y[i]) for i, p in enumerate(problems)]), x
    )
    scale = family.derivatives(nominal)
    torch.testing.assert_close(
        jacobian, scale[..., None] * nominal_jacobian, rtol=1e-12, atol=1e-14
    )


def test_every_version_of_a_random_method_draws_the_same_weights() -> None:
    """`version_tracks` gives every version one track from one seed: RLW's runner instances (one
    per track, seeded alike) draw the same weights in every version, as runs from one seed do."""
    case = invariance.nonconvex_case(quick=True, seed=0)
    case = dataclasses.replace(case, num_steps=3)
    result = invariance.run_case(case, seed=3)
    shares = result["rlw"]["shares"]  # from the last step's weights, [P, V, S, K]
    weights = shares / invariance.TransformedFamily.derivatives(
        case.family, case.family.nominal(result["rlw"]["points"][-1])
    )
    weights = weights / weights.sum(dim=-1, keepdim=True)
    torch.testing.assert_close(weights, weights[:, :1].expand_as(weights), rtol=1e-12, atol=0)
    tracks = invariance.version_tracks(case, 0, "famo", seed=0)
    assert (
        len(tracks) == case.starts.shape[1]
        and tracks[0].transforms == ()
        and all(t.seed == 0 for t in tracks)
    )


def test_deviations_are_relative_to_the_nominal_step_scale() -> None:
    steps = torch.arange(4, dtype=torch.float64)[:, None, None, None, None] * torch.tensor(
        [0.5, 0.0], dtype=torch.float64
    )
    points = steps.expand(4, 1, 3, 1, 2).clone()  # nominal moves 0.5 per step
    points[2, 0, 1, 0, 1] += 1e-3  # the control is off by 1e-3 once
    points[:, 0, 2, 0, 0] *= 2  # the transformed version twice as fast: off by 1.5 at the end
    result = invariance.deviations(points)
    assert float(result["control"]) == pytest.approx(1e-3 / 0.5)
    assert float(result["transform"]) == pytest.approx(1.5 / 0.5)
    assert float(result["endpoint"]) == pytest.approx(1.5)


def test_toy_lower_bound_holds() -> None:
    grid = torch.cartesian_prod(*(torch.linspace(-30, 30, 301, dtype=torch.float64),) * 2)
    assert float(TwoTaskToy()(grid).min()) > invariance.TOY_LOWER_BOUND
