"""The DiBS bargaining iteration on explicit functions (Gupta, Murthy et al. 2025)."""

from __future__ import annotations

import pytest
import torch

from core import constant_step, dibs, preferred_states_by_normalized_descent, robbins_monro_step
from core.errors import InvalidHyperparameterError


def quadratic_pair(x: torch.Tensor) -> torch.Tensor:
    """The DiBS paper's Example 2: l1 = x^2, l2 = (x - 1)^2 on [0, 1]."""
    return torch.cat([x**2, (x - 1) ** 2], dim=-1)


def quartic_pair(x: torch.Tensor) -> torch.Tensor:
    """Example 1's transformed game [x^4, (x - 1)^2]: the same directions as quadratic_pair."""
    return torch.cat([x**4, (x - 1) ** 2], dim=-1)


STARTS = torch.tensor([[0.05], [0.3], [0.7], [0.95]], dtype=torch.float64)
PREFERRED = torch.tensor([[0.0], [1.0]], dtype=torch.float64)


def test_dibs_reaches_the_fair_point_where_the_normalized_sum_stalls() -> None:
    trajectory = dibs(
        quadratic_pair,
        STARTS,
        PREFERRED,
        num_steps=3000,
        step_size=robbins_monro_step(0.5, power=0.75),
        bounds=(0.0, 1.0),
    )
    torch.testing.assert_close(trajectory[-1], torch.full_like(STARTS, 0.5), atol=1e-3, rtol=0)
    stalled = dibs(
        quadratic_pair,
        STARTS,
        PREFERRED,
        num_steps=200,
        step_size=0.01,
        distance_weighted=False,
        bounds=(0.0, 1.0),
    )
    torch.testing.assert_close(
        stalled[-1], STARTS, atol=1e-12, rtol=0
    )  # opposite unit gradients cancel


def test_iterates_are_invariant_to_monotone_transforms() -> None:
    nominal = dibs(
        quadratic_pair, STARTS, PREFERRED, num_steps=300, step_size=robbins_monro_step(0.3)
    )
    transformed = dibs(
        lambda x: torch.stack(
            [torch.exp(quadratic_pair(x)[..., 0]), quadratic_pair(x)[..., 1] ** 3 + 2], dim=-1
        ),
        STARTS,
        PREFERRED,
        num_steps=300,
        step_size=robbins_monro_step(0.3),
    )
    torch.testing.assert_close(transformed, nominal, rtol=1e-12, atol=1e-14)
    quartic = dibs(
        quartic_pair, STARTS, PREFERRED, num_steps=300, step_size=robbins_monro_step(0.3)
    )
    torch.testing.assert_close(quartic, nominal, rtol=1e-12, atol=1e-14)


def test_preferred_states_from_direction_oracles() -> None:
    found = preferred_states_by_normalized_descent(
        quadratic_pair, STARTS, num_steps=4000, bounds=(0.0, 1.0)
    )
    assert found.shape == (4, 2, 1)
    torch.testing.assert_close(found, PREFERRED.expand(4, 2, 1), atol=2e-3, rtol=0)


def test_fixed_point_is_pareto_stationary_in_two_dimensions() -> None:
    centres = torch.tensor([[1.0, 0.0], [-1.0, 0.5], [0.0, -2.0]], dtype=torch.float64)

    def bowls(x: torch.Tensor) -> torch.Tensor:
        return ((x[..., None, :] - centres) ** 2).sum(dim=-1)

    start = torch.tensor([[3.0, 3.0], [-4.0, 1.0]], dtype=torch.float64)
    end = dibs(bowls, start, centres, num_steps=4000, step_size=robbins_monro_step(0.2, power=0.7))[
        -1
    ]
    # Pareto stationary for convex bowls: the point lies in the convex hull of the centres,
    # and the unit gradients weighted by distance sum to ~0 there.
    gradients = 2 * (end[:, None, :] - centres)
    units = gradients / gradients.norm(dim=-1, keepdim=True)
    distances = (end[:, None, :] - centres).norm(dim=-1, keepdim=True)
    assert (distances * units).sum(dim=1).norm(dim=-1).max().item() < 1e-2


def test_step_schedules() -> None:
    assert constant_step(0.1)(50) == 0.1
    schedule = robbins_monro_step(1.0, power=1.0, offset=1.0)
    assert schedule(0) == 1.0 and schedule(3) == pytest.approx(0.25)
    with pytest.raises(InvalidHyperparameterError):
        robbins_monro_step(1.0, power=0.4)
    with pytest.raises(InvalidHyperparameterError):
        constant_step(0.0)


def test_a_row_mask_runs_dibs_and_the_naive_sum_in_one_batch() -> None:
    def pair(x):
        return torch.cat([x**2, (x - 1) ** 2], dim=-1)

    starts = torch.tensor([[0.2], [0.7], [0.2], [0.7]], dtype=torch.float64)
    preferred = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    mask = torch.tensor([True, True, False, False])
    both = dibs(pair, starts, preferred, num_steps=40, step_size=0.05, distance_weighted=mask)
    assert torch.equal(both[:, :2], dibs(pair, starts[:2], preferred, num_steps=40, step_size=0.05))
    assert torch.equal(
        both[:, 2:],
        dibs(pair, starts[2:], preferred, num_steps=40, step_size=0.05, distance_weighted=False),
    )
    assert not torch.equal(both[-1, :2], both[-1, 2:])  # the naive sum stops elsewhere
