"""Front indicators: hypervolume against a brute-force grid computation, IGD/IGD+ by hand."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from core.errors import MTLInputError
from core.metrics import (
    dominates,
    hypervolume,
    igd,
    igd_plus,
    non_dominated_mask,
    stationarity_residual,
)

F64 = torch.float64


def brute_force_hypervolume(points: torch.Tensor, reference: torch.Tensor) -> float:
    """Compress the coordinates into a grid and add up every cell dominated by some point."""
    num_objectives = points.shape[1]
    axes = [sorted(set(points[:, k].tolist()) | {float(reference[k])}) for k in range(num_objectives)]
    total = 0.0
    for cell in itertools.product(*[range(len(axis) - 1) for axis in axes]):
        low = torch.tensor([axes[k][i] for k, i in enumerate(cell)], dtype=F64)
        high = torch.tensor([axes[k][i + 1] for k, i in enumerate(cell)], dtype=F64)
        if bool((points <= low).all(dim=1).any()):
            total += float((high - low).prod())
    return total


@given(num_objectives=st.integers(1, 3), count=st.integers(1, 8), seed=st.integers(0, 2**31 - 1), ties=st.booleans())
def test_hypervolume_matches_brute_force(num_objectives, count, seed, ties) -> None:
    points = torch.rand(count, num_objectives, generator=torch.Generator().manual_seed(seed), dtype=F64)
    if ties:  # repeated coordinates and duplicate points
        points = (points * 4).round() / 4
    reference = torch.full((num_objectives,), 1.1, dtype=F64)
    assert hypervolume(points, reference) == pytest.approx(brute_force_hypervolume(points[(points < reference).all(dim=1)], reference), rel=1e-12, abs=1e-15)


def test_hypervolume_by_hand_and_edge_cases() -> None:
    staircase = torch.tensor([[0.0, 2.0], [1.0, 1.0], [2.0, 0.0], [1.5, 1.5]], dtype=F64)
    assert hypervolume(staircase, torch.tensor([3.0, 3.0], dtype=F64)) == pytest.approx(3 + 2 + 1)
    assert hypervolume(torch.tensor([[0.5, 0.5, 0.5]], dtype=F64), torch.ones(3, dtype=F64)) == pytest.approx(0.125)
    assert hypervolume(torch.tensor([[2.0, 0.0]], dtype=F64), torch.ones(2, dtype=F64)) == 0.0  # beyond the reference
    with pytest.raises(MTLInputError, match="up to 3"):
        hypervolume(torch.zeros(2, 4, dtype=F64), torch.ones(4, dtype=F64))
    with pytest.raises(MTLInputError, match="reference"):
        hypervolume(torch.zeros(2, 2, dtype=F64), torch.ones(3, dtype=F64))
    with pytest.raises(MTLInputError, match="NaN"):
        hypervolume(torch.tensor([[float("nan"), 0.0]]), torch.ones(2))


def test_igd_and_igd_plus_by_hand() -> None:
    reference_front = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=F64)
    front = torch.tensor([[0.0, 2.0], [1.0, -1.0]], dtype=F64)
    # IGD: each reference point is at distance 1 from its nearest front point
    assert igd(front, reference_front) == pytest.approx(1.0)
    # IGD+: (1, -1) is better than (1, 0), so it counts 0 there; (0, 1) is 1 away from (0, 2)
    assert igd_plus(front, reference_front) == pytest.approx(0.5)
    assert igd(reference_front, reference_front) == 0.0 and igd_plus(reference_front, reference_front) == 0.0


def test_dominance_helpers_and_stationarity_residual() -> None:
    a, b = torch.tensor([0.0, 1.0]), torch.tensor([0.0, 2.0])
    assert bool(dominates(a, b)) and not bool(dominates(b, a)) and not bool(dominates(a, a))
    mask = non_dominated_mask(torch.tensor([[0.0, 1.0], [0.0, 2.0], [1.0, 0.0], [1.0, 0.0]]))
    assert mask.tolist() == [True, False, True, True]
    opposite = torch.tensor([[1.0, 0.0], [-2.0, 0.0]], dtype=F64)
    assert float(stationarity_residual(opposite @ opposite.T)) <= 1e-12
    aligned = torch.tensor([[1.0, 0.0], [2.0, 0.0]], dtype=F64)
    assert float(stationarity_residual(aligned @ aligned.T)) == pytest.approx(1.0)


def test_merge_fronts_filters_dominated_points_and_collisions() -> None:
    from core.pareto.merge import merge_fronts

    first = torch.tensor([[0.0, 1.0], [0.5, 0.5], [0.6, 0.6]], dtype=F64)  # (0.6, 0.6) is dominated
    second = torch.tensor([[0.5 + 1e-9, 0.5 - 1e-9], [1.0, 0.0]], dtype=F64)  # a near-duplicate of (0.5, 0.5)
    params = [torch.arange(6, dtype=F64).reshape(3, 2), torch.arange(4, dtype=F64).reshape(2, 2) + 10]
    merged = merge_fronts([first, second], params, collision_tolerance=1e-6)
    torch.testing.assert_close(merged.values, torch.tensor([[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]], dtype=F64))
    assert merged.sources.tolist() == [0, 0, 1] and merged.indices.tolist() == [0, 1, 1]
    assert merged.dominated == 1 and merged.collisions == 1
    torch.testing.assert_close(merged.points, torch.tensor([[0.0, 1.0], [2.0, 3.0], [12.0, 13.0]], dtype=F64))
    assert bool(non_dominated_mask(merged.values).all())
    assert merge_fronts([first, second], collision_tolerance=0.0).collisions == 0
    with pytest.raises(MTLInputError, match="same K"):
        merge_fronts([first, torch.zeros(2, 3)])
