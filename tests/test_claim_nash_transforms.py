"""`proofs_numeric.nash_transforms`: the quick run passes, a violated criterion fails, and its helpers do what they say."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import core
from proofs_numeric import nash_transforms


@pytest.fixture(scope="module")
def quick_measurements() -> nash_transforms.Measurements:
    return nash_transforms.measure(quick=True)


def _evaluate(measurements: nash_transforms.Measurements):
    import matplotlib.pyplot as plt

    result = nash_transforms.evaluate(measurements)
    plt.close(result.figure)
    return result


def test_quick_run_passes(quick_measurements) -> None:
    result = _evaluate(quick_measurements)
    assert result.passed, result.measured
    data = json.loads(json.dumps(result.data))  # JSON-ready
    assert all(
        (check["value"] <= check["bound"]) if check["sense"] == "<=" else (check["value"] >= check["bound"]) for check in data["checks"].values()
    )
    variants = data["variants"]
    # the predicted invariances sit at rounding, the predicted breaks far above it
    for name in nash_transforms.INVARIANT_VARIANTS:
        assert variants[name]["max_rounding"] <= nash_transforms.ROUNDING_CONSTANT
    for name in nash_transforms.BREAK_VARIANTS:
        assert variants[name]["max_rounding"] >= nash_transforms.BREAK_FACTOR * nash_transforms.ROUNDING_CONSTANT
    assert data["cvxpy_reference_ccp"]["run"] is False  # quick mode leaves the optional cvxpy check out


@pytest.mark.parametrize(
    ("constant", "value"),
    [("RESCALING_TOLERANCE", 1e-30), ("ROUNDING_CONSTANT", 1e-6), ("BREAK_FACTOR", 1e30)],
)
def test_a_violated_criterion_fails(quick_measurements, monkeypatch, constant, value) -> None:
    monkeypatch.setattr(nash_transforms, constant, value)
    assert not _evaluate(quick_measurements).passed


def test_rescaling_maps_alpha_to_alpha_over_c_on_a_hand_case() -> None:
    # orthogonal gradients of norms 1 and 2: alpha_i ||g_i||^2 alpha_i = 1 gives alpha = (1, 1/2)
    gramian = torch.tensor([[1.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    alpha, alpha_c = nash_transforms.rescaled_solutions(gramian, torch.tensor([2.0, 1.0], dtype=torch.float64))
    ridge = core.NashMTL().ridge
    torch.testing.assert_close(alpha, torch.tensor([1.0, 0.5], dtype=torch.float64) / (1 + ridge) ** 0.5, rtol=1e-15, atol=0)
    torch.testing.assert_close(alpha_c, torch.tensor([0.5, 0.5], dtype=torch.float64) / (1 + ridge) ** 0.5, rtol=1e-15, atol=0)


def test_rescaling_leaves_the_update_unchanged_on_random_jacobians() -> None:
    generator = torch.Generator().manual_seed(1)
    jacobian = nash_transforms.random_jacobians(4, 20, generator=generator)
    scales = 10.0 ** (6 * torch.rand(20, 4, generator=generator, dtype=torch.float64) - 3)
    alpha, alpha_c = nash_transforms.rescaled_solutions(core.gramian(jacobian), scales)
    torch.testing.assert_close(alpha_c * scales, alpha, rtol=1e-12, atol=0)
    update = (alpha[..., None] * jacobian).sum(dim=-2)
    torch.testing.assert_close((alpha_c[..., None] * scales[..., None] * jacobian).sum(dim=-2), update, rtol=1e-12, atol=1e-12)


def test_reference_style_solve_meets_its_absolute_test_and_is_not_scale_free() -> None:
    # alpha = 100 solves G alpha = 1/alpha for G = 1e-4 I; from alpha = 1 the absolute residual test
    # (1/alpha ~ 0.01) stops Newton about a thousandth of 1/alpha early. The same problem rescaled by
    # c = 100 (G' = I) is solved exactly at the start, alpha' = 1, i.e. alpha' c = 100.
    small = torch.eye(3, dtype=torch.float64) * 1e-4
    losses = torch.ones(3, dtype=torch.float64)
    alpha = nash_transforms.ReferenceStyleSolve()(small, losses)
    rescaled = nash_transforms.ReferenceStyleSolve()(small * 1e4, losses)
    residual = np.linalg.norm(small.numpy() @ alpha.numpy() - 1 / alpha.numpy())
    assert residual < 1e-3
    torch.testing.assert_close(rescaled * 100, torch.full((3,), 100.0, dtype=torch.float64))
    assert float((alpha / 100 - 1).abs().max()) > 1e-6  # not the exact solution: stopped by an absolute test
    exact = core.NashMTL(warm_start=False)(small, losses)
    torch.testing.assert_close(exact, torch.full((3,), 100.0, dtype=torch.float64), rtol=1e-9, atol=0)


def test_headed_problem_separates_heads() -> None:
    problem = nash_transforms.HeadedNonconvex(3, 2, 3, seed=0)
    x = torch.randn(5, problem.n_var, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    values, jacobian = core.batched_task_gradients(problem, x)
    assert values.shape == (5, 3) and jacobian.shape == (5, 3, 9)
    for i in range(3):
        for j in range(3):
            head = jacobian[:, i, 3 + 2 * j : 5 + 2 * j]
            assert bool((head == 0).all()) != (i == j)  # task i reaches its own head only
