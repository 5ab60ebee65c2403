"""CUDA paths (skipped without a GPU; CI has none): every method through the engine on the GPU
matches the CPU result, and random weightings draw from a generator on either device."""

from __future__ import annotations

import pytest
import torch

import core
from core.registry import available_methods, make_method
from tests.models import TwoLayerMultiTask

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def engine_grads(model: TwoLayerMultiTask, method, representation: bool) -> list[torch.Tensor]:
    model.zero_grad_all()
    z = model.representation()
    info = core.mtl_backward(
        model.losses_from(z),
        model.shared_params(),
        method,
        task_params=model.task_params(),
        representation=z if representation else None,
    )
    assert info.weights.device == z.device
    return [p.grad.detach().cpu() for p in model.parameters()]


def seeded(name: str, device: str):
    """A fresh method; random ones draw from a generator seeded with 0 on `device`."""
    return make_method(name, num_tasks=3, generator=torch.Generator(device).manual_seed(0))


@pytest.mark.parametrize("representation", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", [n for n in available_methods() if n != "rgw"])
def test_engine_on_cuda_matches_cpu(name, dtype, representation) -> None:
    if ("representation" if representation else "full") not in seeded(name, "cpu").engine_modes:
        pytest.skip(f"{name} does not declare this engine mode")
    cpu = TwoLayerMultiTask(3, dtype=dtype)
    gpu = TwoLayerMultiTask(3, dtype=dtype).cuda()
    gpu.inputs, gpu.targets = gpu.inputs.cuda(), gpu.targets.cuda()
    # random methods: the same seeded CPU generator on both sides, so both draw the same randomness
    want = engine_grads(cpu, seeded(name, "cpu"), representation)
    got = engine_grads(gpu, seeded(name, "cpu"), representation)
    tolerance = 1e-10 if dtype == torch.float64 else 1e-4
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("cls", [core.RandomLossWeighting, core.RandomGradientWeighting])
def test_random_weights_with_a_cuda_generator(cls) -> None:
    method = cls(generator=torch.Generator("cuda").manual_seed(1))
    losses = torch.ones(1000, 4, device="cuda")
    weights = (
        method(losses)
        if cls is core.RandomLossWeighting
        else method(torch.eye(4, device="cuda").expand(1000, 4, 4), losses)
    )
    assert weights.device.type == "cuda"
    torch.testing.assert_close(weights.sum(-1), torch.ones(1000, device="cuda"))
    again = cls(generator=torch.Generator("cuda").manual_seed(1))
    repeat = (
        again(losses)
        if cls is core.RandomLossWeighting
        else again(torch.eye(4, device="cuda").expand(1000, 4, 4), losses)
    )
    assert torch.equal(weights, repeat)


def test_toy_experiment_on_cuda_matches_cpu() -> None:
    from benchmarks.experiments.toy import run_toy_experiment

    for transform in ("none", "0:power:4"):
        for name in ("dibsmtl", "ls", "uw"):
            kwargs = {"steps": 200, "dtype": torch.float64, "record_every": 50}
            cpu, gpu = (
                run_toy_experiment(name, transform, device="cpu", **kwargs),
                run_toy_experiment(name, transform, device="cuda", **kwargs),
            )
            assert gpu["device"].startswith("cuda")
            for key in ("endpoints", "end_losses", "distance_to_front"):
                torch.testing.assert_close(
                    torch.tensor(gpu[key]), torch.tensor(cpu[key]), rtol=1e-8, atol=1e-8
                )
            torch.testing.assert_close(
                torch.tensor(gpu["trajectory"]["x"]),
                torch.tensor(cpu["trajectory"]["x"]),
                rtol=1e-8,
                atol=1e-8,
            )
    nominal, transformed = (
        run_toy_experiment("dibsmtl", t, device="cuda", steps=200) for t in ("none", "0:power:4")
    )
    torch.testing.assert_close(
        torch.tensor(transformed["endpoints"]),
        torch.tensor(nominal["endpoints"]),
        rtol=0,
        atol=1e-12,
    )  # invariance on the GPU too
