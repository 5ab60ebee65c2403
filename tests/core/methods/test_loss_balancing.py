"""Uncertainty weighting, DWA and FAMO: hand-computed weights, their updates, and the engine."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import core
from core.errors import InvalidHyperparameterError, LossDomainError, MTLInputError
from tests.models import TwoLayerMultiTask

LOSSES = torch.tensor([1.0, 2.0], dtype=torch.float64)


# ---------------------------------------------------------------------------- uncertainty weighting


def test_uw_weights_and_penalty_by_hand() -> None:
    uw = core.UncertaintyWeighting(2)
    with torch.no_grad():
        uw.log_variances.copy_(torch.tensor([0.0, math.log(4.0)]))
    torch.testing.assert_close(uw(LOSSES), torch.tensor([0.5, 0.125], dtype=torch.float64))
    torch.testing.assert_close(uw.penalty(), torch.tensor(0.5 * math.log(4.0)))


def test_uw_through_the_engine_trains_its_log_variances_to_log_loss() -> None:
    model = TwoLayerMultiTask(2)
    uw = core.UncertaintyWeighting(2, initial_log_variance=-0.5)
    losses = model.losses()
    core.mtl_backward(losses, model.shared_params(), uw, task_params=model.task_params())
    values = torch.stack(losses).detach()
    # d/ds [ (exp(-s) l + s) / 2 ] = (1 - exp(-s) l) / 2
    expected = 0.5 * (1 - torch.exp(torch.tensor(0.5, dtype=torch.float64)) * values)
    torch.testing.assert_close(uw.log_variances.grad.double(), expected, rtol=1e-6, atol=1e-7)
    with torch.no_grad():  # at s = log l the log-variance gradient vanishes (weight 1 / (2 l))
        uw.log_variances.copy_(torch.log(values))
    uw.log_variances.grad = None
    core.mtl_backward(model.losses(), model.shared_params(), uw, task_params=model.task_params())
    torch.testing.assert_close(uw.log_variances.grad, torch.zeros(2), atol=1e-6, rtol=0)
    uw.reset()
    assert torch.equal(uw.log_variances.detach(), torch.full((2,), -0.5))


# ---------------------------------------------------------------------------- DWA


def test_dwa_weights_follow_the_epoch_ratios() -> None:
    dwa = core.DynamicWeightAverage(2)
    for epoch_losses in ([[4.0, 2.0], [2.0, 2.0]], [[2.0, 1.0]]):  # epoch means [3, 2], then [2, 1]
        for step in epoch_losses:
            torch.testing.assert_close(
                dwa(torch.tensor(step, dtype=torch.float64)), torch.ones(2, dtype=torch.float64)
            )
        dwa.end_epoch()
    ratios = torch.tensor([2 / 3, 1 / 2], dtype=torch.float64)
    expected = 2 * torch.softmax(ratios / 2.0, dim=0)
    torch.testing.assert_close(dwa(LOSSES), expected)
    assert float(expected[0]) > 1 > float(expected[1])  # the task that improved less gains weight
    mean = core.DynamicWeightAverage(2, reduction="mean")
    for epoch_losses in ([[4.0, 2.0], [2.0, 2.0]], [[2.0, 1.0]]):
        for step in epoch_losses:
            mean(torch.tensor(step, dtype=torch.float64))
        mean.end_epoch()
    torch.testing.assert_close(mean(LOSSES), expected / 2)
    dwa.reset()
    assert dwa.epoch_means == []
    with pytest.raises(MTLInputError, match="end_epoch"):
        dwa.end_epoch()


def reference_window_dwa(
    losses: list[list[float]], window: int, temperature: float = 2.0
) -> list[list[float]]:
    """The Nash-MTL reference's DWA (`iteration_window`), transcribed from its description: a FIFO of
    the last 2 * window loss vectors, initially ones; each call appends its losses first, then, once
    more than `window` calls came before it, sets w = K softmax((mean newest window / mean older
    window) / T); the weights are kept between updates."""
    num_tasks = len(losses[0])
    costs = [[1.0] * num_tasks for _ in range(2 * window)]
    weights, out = [1.0] * num_tasks, []
    for calls, loss in enumerate(losses):
        costs = costs[1:] + [list(loss)]
        if calls > window:
            newest = [sum(row[k] for row in costs[window:]) / window for k in range(num_tasks)]
            older = [sum(row[k] for row in costs[:window]) / window for k in range(num_tasks)]
            scores = [math.exp(n / o / temperature) for n, o in zip(newest, older)]
            weights = [num_tasks * s / sum(scores) for s in scores]
        out.append(weights)
    return out


@pytest.mark.parametrize("window", [1, 3, 25])
def test_dwa_window_is_the_reference_sliding_window(window) -> None:
    """`window=n` recomputes the weights every call from the last 2n losses (ones while the buffer
    fills), the current call's included, from the (n+2)-th call on; `end_epoch` changes nothing."""
    generator = torch.Generator().manual_seed(window)
    sequence = (
        0.2 + torch.rand(3 * window + 6, 3, generator=generator, dtype=torch.float64)
    ).tolist()
    dwa = core.DynamicWeightAverage(3, window=window)
    got = []
    for loss in sequence:
        got.append(dwa(torch.tensor(loss, dtype=torch.float64)))
        dwa.end_epoch()
    expected = torch.tensor(reference_window_dwa(sequence, window), dtype=torch.float64)
    torch.testing.assert_close(torch.stack(got), expected, rtol=1e-12, atol=0)
    assert torch.equal(
        got[window], torch.ones(3, dtype=torch.float64)
    )  # the (n+1)-th call: still ones
    assert not torch.equal(got[window + 1], torch.ones(3, dtype=torch.float64))


# ---------------------------------------------------------------------------- FAMO


def test_famo_initial_weights_normalise_inverse_losses() -> None:
    famo = core.FAMO(2)
    torch.testing.assert_close(
        famo(LOSSES), torch.tensor([2 / 3, 1 / 3], dtype=torch.float64), rtol=1e-7, atol=0
    )


@given(
    losses=st.lists(st.floats(1e-3, 1e3), min_size=2, max_size=6),
    logits=st.lists(st.floats(-3, 3), min_size=6, max_size=6),
)
def test_famo_weights_sum_to_one_and_are_the_log_objective_gradient(losses, logits) -> None:
    num_tasks = len(losses)
    famo = core.FAMO(num_tasks, eps=0.0)
    with torch.no_grad():
        famo.logits.copy_(torch.tensor(logits[:num_tasks], dtype=torch.float64))
    values = torch.tensor(losses, dtype=torch.float64, requires_grad=True)
    weights = famo(values.detach())
    assert float(weights.sum()) == pytest.approx(1.0, rel=1e-12)
    (gradient,) = torch.autograd.grad((famo.task_weights() * torch.log(values)).sum(), values)
    torch.testing.assert_close(weights, gradient / gradient.sum(), rtol=1e-12, atol=0)


def test_famo_sgd_update_is_the_paper_equation() -> None:
    famo = core.FAMO(2, optimizer="sgd", lr=0.5, weight_decay=0.1, eps=0.0)
    famo(torch.tensor([1.0, 2.0]))
    famo.after_step(torch.tensor([0.5, 1.8]))  # task 0 improved by log 2, task 1 by log(2 / 1.8)
    change = torch.tensor([math.log(2.0), math.log(2 / 1.8)], dtype=torch.float64)
    z = torch.full((2,), 0.5, dtype=torch.float64)
    delta = z * change - z * (z @ change)
    torch.testing.assert_close(famo.logits.detach(), -0.5 * delta)
    assert float(famo.task_weights()[1]) > 0.5  # the task that improved less gains weight


def test_famo_adam_update_matches_torch_adam() -> None:
    famo = core.FAMO(3)
    reference = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    adam = torch.optim.Adam([reference], lr=0.025, weight_decay=1e-3)
    before = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    for after in ([0.9, 1.5, 2.9], [0.8, 1.4, 2.0]):
        after = torch.tensor(after, dtype=torch.float64)
        famo(before)
        expected_gradient = famo.logit_gradient(before, after)
        famo.after_step(after)
        reference.grad = expected_gradient
        adam.step()
        before = after
    torch.testing.assert_close(famo.logits.detach(), reference.detach())


def test_famo_direction_ignores_positive_loss_scaling() -> None:
    famo = core.FAMO(3, eps=0.0)
    with torch.no_grad():
        famo.logits.copy_(torch.tensor([0.3, -1.0, 0.5], dtype=torch.float64))
    losses = torch.tensor([0.5, 2.0, 7.0], dtype=torch.float64)
    scales = torch.tensor([3.0, 0.01, 50.0], dtype=torch.float64)
    # the scaled task's gradient is scales_t * grad l_t: the per-task factor w_t * scales_t is
    # proportional to w_t
    ratio = famo(scales * losses) * scales / famo(losses)
    torch.testing.assert_close(ratio, ratio[0].expand(3))


def test_famo_rejects_losses_below_the_bound_and_update_without_step() -> None:
    famo = core.FAMO(2)
    with pytest.raises(LossDomainError, match="min_losses"):
        famo(torch.tensor([0.5, -1.0]))
    with pytest.raises(MTLInputError, match="preceding"):
        famo.after_step(torch.tensor([1.0, 1.0]))
    with pytest.raises(InvalidHyperparameterError):
        core.FAMO(2, optimizer="lbfgs")  # type: ignore[arg-type]


def test_famo_state_of_either_optimizer_counts_as_used_after_loading() -> None:
    """A loaded state with logit updates is not fresh: another batch shape raises, for SGD too."""
    for optimizer in ("adam", "sgd"):
        famo = core.FAMO(2, optimizer=optimizer)
        famo(torch.tensor([1.0, 2.0]))
        famo.after_step(torch.tensor([0.5, 1.9]))
        loaded = core.FAMO(2, optimizer=optimizer)
        loaded.load_state_dict(famo.state_dict())
        with pytest.raises(MTLInputError, match="reset"):
            loaded(torch.ones(3, 2))


def test_famo_min_losses_must_fit_the_batch_shape() -> None:
    famo = core.FAMO(2, min_losses=torch.zeros(3, 2))
    assert famo.batch_shape == (3,)
    with pytest.raises(MTLInputError, match="min_losses"):
        famo.reset()
    famo.reset((3,))
    assert famo(torch.ones(3, 2)).shape == (3, 2)


# ---------------------------------------------------------------------------- shared


@pytest.mark.parametrize(
    "method",
    [core.UncertaintyWeighting(3), core.DynamicWeightAverage(3), core.FAMO(3)],
    ids=lambda m: type(m).__name__,
)
def test_engine_writes_the_weighted_loss_gradient(method) -> None:
    model = TwoLayerMultiTask(3)
    info = core.mtl_backward(
        model.losses(), model.shared_params(), method, task_params=model.task_params()
    )
    losses = model.losses()
    weighted = sum(w * loss for w, loss in zip(info.weights, losses))
    expected = torch.autograd.grad(weighted, model.shared_params())
    for param, want in zip(model.shared_params(), expected):
        torch.testing.assert_close(param.grad, want, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("cls", [core.UncertaintyWeighting, core.DynamicWeightAverage, core.FAMO])
def test_task_count_mismatch_and_bad_construction_are_clear(cls) -> None:
    with pytest.raises(MTLInputError, match="built for 2 tasks"):
        cls(2)(torch.ones(3))
    with pytest.raises(InvalidHyperparameterError, match="num_tasks"):
        cls(0)
