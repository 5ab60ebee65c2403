"""Mixed precision with `torch.amp.GradScaler` (on the CPU): `mtl_backward(..., on_nonfinite="skip")`
skips a step whose scaled losses or gradients overflow, leaving `.grad` untouched, the scaler backs
its scale off, and the later steps train as they would without scaling (`loss_scale` lets the
method see the unscaled problem, so that scale-invariant updates are not divided by the scale)."""

from __future__ import annotations

import pytest
import torch

import core
from core import errors
from tests.models import TwoLayerMultiTask

METHODS = {
    "dibsmtl": core.DiBSMTL,
    "mgda": core.MGDA,
    "nashmtl": core.NashMTL,
    "ls": core.LinearScalarization,
}


def scaled_step(
    model: TwoLayerMultiTask, method, scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer
) -> core.StepInfo:
    """One training step with the README's GradScaler recipe."""
    optimizer.zero_grad(set_to_none=True)
    losses = [scaler.scale(loss) for loss in model.losses()]
    info = core.mtl_backward(
        losses,
        model.shared_params(),
        method,
        task_params=model.task_params(),
        on_nonfinite="skip",
        loss_scale=scaler.get_scale(),
    )
    if info.skipped:  # the scaler saw no gradient: back off by hand and do not step
        scaler.update(scaler.get_scale() * scaler.get_backoff_factor())
    else:
        scaler.step(optimizer)
        scaler.update()
    return info


def test_the_cpu_grad_scaler_is_available() -> None:
    scaler = torch.amp.GradScaler("cpu")
    assert scaler.is_enabled() and scaler.get_scale() == 2.0**16


@pytest.mark.parametrize("name", list(METHODS))
def test_an_overflowing_scaled_loss_is_skipped_and_later_steps_train(name) -> None:
    model = TwoLayerMultiTask(3, dtype=torch.float32)
    # 2^127 times a loss above 2 overflows float32: the first step's scaled losses are infinite
    assert min(float(loss.detach()) for loss in model.losses()) > 2.0
    scaler = torch.amp.GradScaler(
        "cpu", init_scale=2.0**127, backoff_factor=2.0**-100, growth_interval=1000
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    method = METHODS[name]()
    with pytest.raises(errors.NonFiniteLossError):  # what happens without skipping
        core.mtl_backward(
            [scaler.scale(loss) for loss in model.losses()], model.shared_params(), method
        )
    before = [p.detach().clone() for p in model.parameters()]

    first = scaled_step(model, method, scaler, optimizer)
    assert first.skipped and torch.isinf(first.losses).any()
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert scaler.get_scale() == 2.0**27
    for _ in range(3):
        assert not scaled_step(model, method, scaler, optimizer).skipped

    # the same three steps without scaling (powers of two scale and unscale exactly)
    reference = TwoLayerMultiTask(3, dtype=torch.float32)
    plain = torch.optim.SGD(reference.parameters(), lr=0.01)
    method = METHODS[name]()
    for _ in range(3):
        plain.zero_grad(set_to_none=True)
        core.mtl_backward(
            reference.losses(),
            reference.shared_params(),
            method,
            task_params=reference.task_params(),
        )
        plain.step()
    assert not torch.equal(model.encoder.weight, before[0])  # trained
    for got, want in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_float16_autocast_with_a_grad_scaler_skips_overflows_and_trains() -> None:
    """The realistic case: float16 activations under autocast, whose scaled gradients overflow
    float16 until the scaler has backed off far enough."""
    model = TwoLayerMultiTask(3, dtype=torch.float32)
    scaler = torch.amp.GradScaler(
        "cpu", init_scale=2.0**40, backoff_factor=2.0**-6, growth_interval=1000
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    method = core.DiBSMTL()
    initial = sum(float(loss.detach()) for loss in model.losses())
    skipped = []
    for _ in range(12):
        before = [p.detach().clone() for p in model.parameters()]
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.float16):
            features = model.representation()
            losses = model.losses_from(features)
        assert features.dtype == torch.float16 and all(
            loss.dtype == torch.float32 for loss in losses
        )
        info = core.mtl_backward(
            [scaler.scale(loss) for loss in losses],
            model.shared_params(),
            method,
            task_params=model.task_params(),
            on_nonfinite="skip",
            loss_scale=scaler.get_scale(),
        )
        if info.skipped:
            assert all(p.grad is None for p in model.parameters())
            scaler.update(scaler.get_scale() * scaler.get_backoff_factor())
            assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
        else:
            scaler.step(optimizer)
            scaler.update()
        skipped.append(info.skipped)
    assert skipped[0] and not all(skipped[-4:])  # overflowed at first, trained later
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert sum(float(loss.detach()) for loss in model.losses()) < initial


@pytest.mark.parametrize("representation", [False, True])
@pytest.mark.parametrize("name", ["dibsmtl", "nashmtl", "pcgrad", "uw"])
def test_loss_scale_gives_the_scaled_update_of_the_unscaled_problem(name, representation) -> None:
    """Losses times s with loss_scale=s: the same weights and StepInfo, and s times the `.grad`."""
    scale = 2.0**10

    def run(factor: float, loss_scale: float | None) -> tuple[core.StepInfo, list[torch.Tensor]]:
        model = TwoLayerMultiTask(3)
        method = core.make_method(name, num_tasks=3, generator=torch.Generator().manual_seed(2))
        method.to(dtype=torch.float64)
        z = model.representation()
        losses = [factor * loss for loss in model.losses_from(z)]
        info = core.mtl_backward(
            losses,
            model.shared_params(),
            method,
            task_params=model.task_params(),
            representation=z if representation else None,
            loss_scale=loss_scale,
        )
        own = list(method.parameters())
        return info, [p.grad for p in [*model.parameters(), *own]]

    plain, expected = run(1.0, None)
    scaled, got = run(scale, scale)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, scale * e, rtol=1e-10, atol=1e-12)
    for field in ("weights", "losses", "gramian", "grad_norms"):
        if getattr(plain, field) is not None:
            torch.testing.assert_close(
                getattr(scaled, field), getattr(plain, field), rtol=1e-10, atol=1e-12
            )


def test_loss_scale_is_validated() -> None:
    model = TwoLayerMultiTask(2)
    for bad in (0.0, -1.0, float("inf"), "2"):
        with pytest.raises(errors.MTLInputError, match="loss_scale"):
            core.mtl_backward(model.losses(), model.shared_params(), core.MGDA(), loss_scale=bad)
    assert all(p.grad is None for p in model.parameters())
