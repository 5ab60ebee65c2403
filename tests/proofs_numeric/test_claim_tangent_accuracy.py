"""The tangent-accuracy claim: passes in quick mode, and a violated criterion fails."""

from __future__ import annotations

import torch

from proofs_numeric import tangent_accuracy


def test_quick_run_passes_with_second_order_slopes() -> None:
    result = tangent_accuracy.run(quick=True)
    assert result.passed, result.measured
    for slopes in result.data["slopes"]:
        assert 1.8 <= slopes["tangent"] <= 2.3 and slopes["gradient"] <= 1.3
    assert result.data["corrector_saving_median"] >= 5


def test_an_impossible_saving_fails(monkeypatch) -> None:
    monkeypatch.setattr(tangent_accuracy, "MIN_CORRECTOR_SAVING", 1e9)
    assert not tangent_accuracy.run(quick=True).passed


def test_slope_helper_recovers_a_power_law() -> None:
    steps = torch.logspace(-1, -3, 5, dtype=torch.float64)
    assert abs(tangent_accuracy._slope(steps, 3 * steps**2) - 2) < 1e-12
