"""The network tangent walk: trades one task for another and stays near the Pareto set."""

from __future__ import annotations

import pytest
import torch

from core.errors import InvalidHyperparameterError
from core.pareto.walk import tangent_walk

F64 = torch.float64


def regression_problem(seed: int = 0):
    """Shared linear model, two regression targets: the Pareto set is the segment between the two
    least-squares solutions (the weighted-sum minimisers)."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(64, 4, generator=generator, dtype=F64)
    targets = torch.randn(64, 2, generator=generator, dtype=F64)
    weights = torch.zeros(4, dtype=F64, requires_grad=True)
    batches = [(inputs[i : i + 16], targets[i : i + 16]) for i in range(0, 64, 16)]

    def task_losses(batch) -> torch.Tensor:
        x, y = batch
        prediction = x @ weights
        return torch.stack(
            [(prediction - y[:, 0]).pow(2).mean(), (prediction - y[:, 1]).pow(2).mean()]
        )

    # start at the equal-weight minimiser: least squares on the mean target
    with torch.no_grad():
        weights.copy_(torch.linalg.lstsq(inputs, targets.mean(dim=1, keepdim=True)).solution[:, 0])
    return weights, task_losses, batches, (inputs, targets)


def test_walk_trades_task_two_for_task_one_along_the_pareto_segment() -> None:
    weights, task_losses, batches, full = regression_problem()
    before = task_losses(full).detach()
    steps = tangent_walk(
        task_losses,
        [weights],
        torch.tensor([1.0, 0.0], dtype=F64),
        jacobian_batches=lambda: batches,
        hvp_batch=lambda: full,
        num_steps=5,
        lr=0.05,
        damping=0.0,
        momentum=None,
        maxiter=10,
        rtol=1e-10,
    )
    inputs, targets = full
    solutions = torch.linalg.lstsq(inputs, targets).solution  # [4, 2]: the two ends of the segment
    assert len(steps) == 5 and all(step.minres_iterations <= 10 for step in steps)
    after = task_losses(full).detach()
    assert float(after[0]) < float(before[0]) and float(after[1]) > float(before[1])
    # every iterate stays on the segment (quadratic losses: the tangent is exact)
    for step in steps:
        offset = step.parameters - solutions[:, 1]
        segment = solutions[:, 0] - solutions[:, 1]
        along = float(offset @ segment / (segment @ segment))
        assert float((offset - along * segment).norm()) <= 1e-8 * float(segment.norm())


def make_network(seed: int):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(128, 3, generator=generator, dtype=F64)
    targets = torch.stack(
        [torch.sin(inputs.sum(dim=1)), torch.cos(inputs[:, 0] - inputs[:, 1])], dim=1
    )
    hidden = (0.5 * torch.randn(8, 3, generator=generator, dtype=F64)).requires_grad_(True)
    output = (0.5 * torch.randn(2, 8, generator=generator, dtype=F64)).requires_grad_(True)
    params = [hidden, output]

    def task_losses(batch) -> torch.Tensor:
        x, y = batch
        prediction = torch.tanh(x @ hidden.T) @ output.T  # both tasks share the same readout rows
        return torch.stack(
            [
                (prediction.sum(dim=1) - y[:, 0]).pow(2).mean(),
                (prediction[:, 0] - y[:, 1]).pow(2).mean(),
            ]
        )

    full = (inputs, targets)
    optimizer = torch.optim.Adam(
        params, lr=0.02
    )  # weighted-sum training to a near-stationary start
    for _ in range(800):
        optimizer.zero_grad()
        task_losses(full).sum().backward()
        optimizer.step()
    return params, task_losses, full


def test_a_corrector_keeps_the_walk_closer_to_stationarity() -> None:
    residuals = {}
    for corrector in (0, 3):
        params, task_losses, full = make_network(1)
        steps = tangent_walk(
            task_losses,
            params,
            torch.tensor([0.0, 1.0], dtype=F64),
            jacobian_batches=lambda full=full: [full],
            hvp_batch=lambda full=full: full,
            num_steps=6,
            lr=0.05,
            maxiter=30,
            corrector_steps=corrector,
            corrector_lr=0.05,
        )
        residuals[corrector] = max(step.residual for step in steps[1:])
    assert residuals[3] < residuals[0]


def test_bad_settings_are_clear() -> None:
    weights, task_losses, batches, full = regression_problem()
    with pytest.raises(InvalidHyperparameterError, match="momentum"):
        tangent_walk(
            task_losses,
            [weights],
            torch.ones(2, dtype=F64),
            jacobian_batches=lambda: batches,
            hvp_batch=lambda: full,
            momentum=1.0,
        )
    with pytest.raises(InvalidHyperparameterError, match="no batch"):
        tangent_walk(
            task_losses,
            [weights],
            torch.ones(2, dtype=F64),
            jacobian_batches=lambda: [],
            hvp_batch=lambda: full,
        )
