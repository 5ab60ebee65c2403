"""`core.TaskGradientAccumulator`: micro-batches whose losses are scaled by their share of the batch
give what one `mtl_backward` call on the whole batch gives (float64, to 1e-10), for a gradient
weighting with WEIGHTED heads, one with RAW heads and loss weightings; bad input is refused
before anything is accumulated or written."""

from __future__ import annotations

import pytest
import torch

import core
from core import errors
from tests.models import TwoLayerMultiTask

SIZES = (3, 1, 4)  # micro-batch sizes: TwoLayerMultiTask has 8 samples


def losses_of(model: TwoLayerMultiTask, rows: slice) -> list[torch.Tensor]:
    """Task i's mean squared error on the samples `rows` (the model's losses on all 8)."""
    features = torch.tanh(model.encoder(model.inputs[rows]))
    return [
        ((head(features)[:, 0] - model.targets[rows, i]) ** 2).mean()
        for i, head in enumerate(model.heads)
    ]


def micro_batches() -> list[slice]:
    bounds = torch.tensor((0, *SIZES)).cumsum(0).tolist()
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def grads(model: TwoLayerMultiTask, method) -> list[torch.Tensor]:
    own = list(method.parameters()) if isinstance(method, core.LossWeighting) else []
    return [p.grad.clone() for p in [*model.parameters(), *own]]


def make(name: str):
    if name == "pcgrad":
        return core.PCGrad(generator=torch.Generator().manual_seed(4))
    if name == "uw":
        return core.UncertaintyWeighting(3, initial_log_variance=0.3).to(dtype=torch.float64)
    return core.make_method(name, num_tasks=3)


@pytest.mark.parametrize("explicit_weight", [False, True])
@pytest.mark.parametrize("name", ["dibsmtl", "pcgrad", "uw", "dwa"])
def test_micro_batches_equal_one_call_on_the_whole_batch(name, explicit_weight) -> None:
    whole = TwoLayerMultiTask(3)
    method = make(name)
    expected_info = core.mtl_backward(
        whole.losses(), whole.shared_params(), method, task_params=whole.task_params()
    )
    expected = grads(whole, method)

    pieces = TwoLayerMultiTask(3)
    method = make(name)
    accumulator = core.TaskGradientAccumulator(
        pieces.shared_params(), task_params=pieces.task_params()
    )
    for rows in micro_batches():
        share = (rows.stop - rows.start) / 8
        losses = losses_of(pieces, rows)
        if explicit_weight:
            accumulator.add(losses, weight=share)
        else:
            accumulator.add([share * loss for loss in losses])
    assert accumulator.micro_batches == len(SIZES)
    info = accumulator.backward(method)
    assert accumulator.micro_batches == 0  # cleared for the next batch
    assert not info.skipped
    for got, want in zip(grads(pieces, method), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(info.losses, expected_info.losses, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(info.weights, expected_info.weights, rtol=1e-10, atol=1e-12)
    if expected_info.gramian is not None:
        torch.testing.assert_close(info.gramian, expected_info.gramian, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(
            info.grad_norms, expected_info.grad_norms, rtol=1e-10, atol=1e-12
        )


def test_the_head_rule_of_each_method_kind_is_exercised() -> None:
    assert make("dibsmtl").head_gradient is core.HeadGradient.WEIGHTED
    assert make("pcgrad").head_gradient is core.HeadGradient.RAW
    assert isinstance(make("uw"), core.LossWeighting)


def test_backward_accumulates_into_grad_and_the_accumulator_is_reusable() -> None:
    model = TwoLayerMultiTask(2)
    accumulator = core.TaskGradientAccumulator(
        model.shared_params(), task_params=model.task_params()
    )
    accumulator.add(model.losses())
    accumulator.backward(core.MGDA())
    once = [p.grad.clone() for p in model.parameters()]
    accumulator.add(model.losses())
    accumulator.backward(core.MGDA())
    for param, first in zip(model.parameters(), once):
        torch.testing.assert_close(param.grad, 2 * first)


def test_refusals_leave_grad_and_the_accumulated_state_alone() -> None:
    model = TwoLayerMultiTask(2)
    for param in model.parameters():
        param.grad = torch.full_like(param, 7.0)
    accumulator = core.TaskGradientAccumulator(
        model.shared_params(), task_params=model.task_params()
    )
    with pytest.raises(errors.MTLInputError, match="nothing was accumulated"):
        accumulator.backward(core.MGDA())
    accumulator.add(model.losses(), weight=0.5)
    with pytest.raises(errors.UnreachedTaskError, match="task 1"):
        accumulator.add([model.losses()[0], model.losses()[1].detach()])
    with pytest.raises(errors.MTLInputError, match="3 losses"):
        accumulator.add(model.losses() + [model.losses()[0]])
    with pytest.raises(errors.InvalidHyperparameterError, match="weight"):
        accumulator.add(model.losses(), weight=0.0)

    class FullModeOnly(core.MGDA):
        engine_modes = frozenset({"representation"})

    with pytest.raises(errors.UnsupportedEngineModeError, match="'full'"):
        accumulator.backward(FullModeOnly())
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters())
    assert accumulator.micro_batches == 1
    accumulator.add(model.losses(), weight=0.5)  # the two halves: the whole batch once
    info = accumulator.backward(core.MGDA())
    reference = TwoLayerMultiTask(2)
    expected = core.mtl_backward(
        reference.losses(),
        reference.shared_params(),
        core.MGDA(),
        task_params=reference.task_params(),
    )
    torch.testing.assert_close(info.weights, expected.weights)
    for param, want in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(param.grad, 7.0 + want.grad)


def test_empty_shared_params_are_refused() -> None:
    model = TwoLayerMultiTask(2)
    consumed = model.encoder.parameters()
    list(consumed)
    with pytest.raises(errors.NoSharedParametersError, match="generator"):
        core.TaskGradientAccumulator(consumed)


@pytest.mark.parametrize("on_nonfinite", ["raise", "skip"])
def test_a_nonfinite_micro_batch_raises_or_skips_the_whole_step(on_nonfinite) -> None:
    model = TwoLayerMultiTask(2)
    accumulator = core.TaskGradientAccumulator(
        model.shared_params(), task_params=model.task_params()
    )
    accumulator.add(model.losses(), weight=0.5)
    losses = model.losses()
    accumulator.add([losses[0] * float("inf"), losses[1]], weight=0.5)
    if on_nonfinite == "raise":
        with pytest.raises(errors.NonFiniteLossError, match="task 0"):
            accumulator.backward(core.DiBSMTL())
        assert accumulator.micro_batches == 2  # kept: reset() drops it
    else:
        info = accumulator.backward(core.DiBSMTL(), on_nonfinite="skip")
        assert info.skipped and torch.isnan(info.weights).all() and info.gramian is None
        assert accumulator.micro_batches == 0
    assert all(p.grad is None for p in model.parameters())
