"""Predictor-corrector expansion on the ZDT2 variant: tangent predictions land on the front."""

from __future__ import annotations

import math

import pytest
import torch

from core.errors import InvalidHyperparameterError
from core.pareto.explore import expand, mgda_correct
from tests.core.pareto.test_tangent import zdt2_variant

F64 = torch.float64


def pareto_start(seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    theta = 2 * math.pi * float(torch.rand(1, generator=generator))
    x1 = -math.pi + (float(torch.rand(1, generator=generator)) - 0.5) * math.pi
    return torch.tensor(
        [x1, math.sqrt(math.pi) * math.cos(theta), math.sqrt(math.pi) * math.sin(theta)], dtype=F64
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_tangent_expansion_stays_on_the_front_and_corrects_for_free(seed) -> None:
    tangent = expand(
        zdt2_variant, pareto_start(seed), generator=torch.Generator().manual_seed(seed)
    )
    assert (
        len(tangent.points) == 11 and tangent.parents[0] == -1
    )  # 1 start + 5 nodes x 2 directions
    front_error = (tangent.values[:, 1] - (1 - tangent.values[:, 0] ** 2)).abs()
    assert float(front_error.max()) <= 1e-10 and float(tangent.residuals.max()) <= 1e-6
    # every corrected prediction was already stationary: one Jacobian per point
    assert tangent.counts.jacobians["correct"] == 10 and tangent.counts.hvps["predict"] == 20
    baseline = expand(
        zdt2_variant,
        pareto_start(seed),
        predictor="weights",
        generator=torch.Generator().manual_seed(seed),
    )
    assert baseline.counts.jacobians["correct"] >= 5 * tangent.counts.jacobians["correct"]
    assert baseline.counts.values["correct"] >= 20 * tangent.counts.values["correct"]


def test_the_corrector_reaches_stationarity_without_raising_any_loss() -> None:
    start = pareto_start(3) + torch.tensor([0.0, 0.2, -0.1], dtype=F64)
    corrected = mgda_correct(zdt2_variant, start)
    assert bool((zdt2_variant(corrected) <= zdt2_variant(start) + 1e-15).all())
    result = expand(
        zdt2_variant,
        corrected,
        num_points=1,
        directions_per_point=1,
        generator=torch.Generator().manual_seed(0),
    )
    assert float(result.residuals[0]) <= 1e-4


def test_bad_settings_are_clear() -> None:
    with pytest.raises(InvalidHyperparameterError, match="predictor"):
        expand(zdt2_variant, pareto_start(0), predictor="random")
    with pytest.raises(InvalidHyperparameterError, match="step"):
        expand(zdt2_variant, pareto_start(0), step=0.0)
