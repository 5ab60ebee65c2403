"""`task_jacobians(strategy="auto")` weighs the batched pass's estimated memory against a limit
or the memory available (core/jacobian.py): a tiny limit forces the loop, a large one allows the
batched pass, both give the same gradients, the engine reads the limit from the environment,
the decision is logged, and the estimate bounds the measured peak of a vmapped pass."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import core
from core import jacobian
from core.jacobian import (
    MEMORY_LIMIT_VARIABLE,
    MEMORY_SAFETY,
    UNKNOWN_BUDGET,
    batched_memory_estimate,
    choose_strategy,
    memory_budget,
    parse_memory_size,
    task_jacobians,
)
from tests.models import TwoLayerMultiTask

LARGE = 1 << 40


@pytest.fixture
def calls(monkeypatch) -> list[str]:
    """Which of the two strategies ran, in order (the real functions still run)."""
    seen: list[str] = []
    loop, batched = jacobian._jacobians_loop, jacobian._jacobians_batched

    def spy_loop(*args):
        seen.append("loop")
        return loop(*args)

    def spy_batched(*args):
        seen.append("batched")
        return batched(*args)

    monkeypatch.setattr(jacobian, "_jacobians_loop", spy_loop)
    monkeypatch.setattr(jacobian, "_jacobians_batched", spy_batched)
    monkeypatch.delenv(MEMORY_LIMIT_VARIABLE, raising=False)
    return seen


def test_a_tiny_limit_forces_the_loop_and_a_large_one_allows_the_batched_pass(calls) -> None:
    model = TwoLayerMultiTask(4)
    losses = torch.stack(model.losses())
    tiny = choose_strategy(losses, model.shared_params(), memory_limit=1)
    assert (tiny.strategy, tiny.rule) == ("loop", "memory") and tiny.estimate > tiny.budget == 1
    large = choose_strategy(losses, model.shared_params(), memory_limit=LARGE)
    assert (large.strategy, large.rule) == ("batched", "fits") and large.estimate <= large.budget
    looped = task_jacobians(losses, model.shared_params(), memory_limit=1)
    batched = task_jacobians(losses, model.shared_params(), memory_limit=LARGE)
    assert calls == ["loop", "batched"]
    for a, b in zip(looped, batched, strict=True):
        assert torch.equal(a, b)  # float64 through linear layers: bit for bit here


def test_representation_mode_fits_where_the_parameters_do_not(calls) -> None:
    model = TwoLayerMultiTask(3, in_dim=64, hidden=256)
    features = model.representation()
    losses = torch.stack(model.losses_from(features))
    on_parameters = batched_memory_estimate(losses, model.shared_params())
    on_features = batched_memory_estimate(losses, [features])
    assert on_features < on_parameters
    limit = (on_features + on_parameters) // 2
    assert choose_strategy(losses, [features], memory_limit=limit).strategy == "batched"
    assert choose_strategy(losses, model.shared_params(), memory_limit=limit).strategy == "loop"


def test_the_estimate_grows_with_the_activations_and_covers_the_result() -> None:
    def estimate(batch: int, tasks: int = 4) -> int:
        torch.manual_seed(0)
        net = torch.nn.Sequential(
            torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, tasks)
        )
        losses = (net(torch.randn(batch, 8)) ** 2).mean(0)
        return batched_memory_estimate(losses, list(net.parameters()))

    parameter_bytes = (8 * 32 + 32 + 32 * 4 + 4) * 4
    assert estimate(16) >= MEMORY_SAFETY * 4 * parameter_bytes
    assert estimate(1024) > 10 * estimate(16)  # the activations dominate: about linear in the batch
    assert estimate(64, tasks=8) > estimate(64, tasks=4)


def test_the_engine_reads_the_limit_from_the_environment(calls, monkeypatch, caplog) -> None:
    monkeypatch.setattr(jacobian, "_warned_memory", False)
    monkeypatch.setattr(jacobian, "_last_choice", None)
    grads = {}
    for limit in ("1", "1T"):
        monkeypatch.setenv(MEMORY_LIMIT_VARIABLE, limit)
        model = TwoLayerMultiTask(3)
        with caplog.at_level(logging.INFO, logger="core.jacobian"):
            core.mtl_backward(
                model.losses(), model.shared_params(), core.MGDA(), task_params=model.task_params()
            )
        grads[limit] = [p.grad.clone() for p in model.parameters()]
    assert calls == ["loop", "batched"]
    assert all(torch.equal(a, b) for a, b in zip(grads["1"], grads["1T"], strict=True))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        len(warnings) == 1 and "by the loop" in warnings[0] and MEMORY_LIMIT_VARIABLE in warnings[0]
    )
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any(m.startswith("per-task gradients: loop (") for m in infos) and any(
        m.startswith("per-task gradients: batched (") for m in infos
    )


def test_budget_sources(monkeypatch) -> None:
    monkeypatch.delenv(MEMORY_LIMIT_VARIABLE, raising=False)
    cpu = torch.device("cpu")
    monkeypatch.setattr(jacobian, "available_memory", lambda device: (8000, "test"))
    assert memory_budget(cpu, 1000) == (1000, "memory_limit")
    budget, source = memory_budget(cpu, 10_000)
    assert budget == 8000 and "capped" in source  # a limit never exceeds what is there
    assert memory_budget(cpu)[0] == 4000  # half of what is available
    monkeypatch.setenv(MEMORY_LIMIT_VARIABLE, "2K")
    assert memory_budget(cpu) == (2048, MEMORY_LIMIT_VARIABLE)
    monkeypatch.delenv(MEMORY_LIMIT_VARIABLE)
    monkeypatch.setattr(jacobian, "available_memory", lambda device: (None, ""))
    assert memory_budget(cpu)[0] == UNKNOWN_BUDGET
    with pytest.raises(ValueError, match="memory_limit"):
        memory_budget(cpu, -1)


def test_available_memory_on_this_machine() -> None:
    available, origin = jacobian.available_memory(torch.device("cpu"))
    if available is None:
        pytest.skip("no figure of the available memory here (no psutil, no /proc/meminfo)")
    assert available > 0 and origin in ("psutil", "/proc/meminfo")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8G", 8 << 30),
        ("512m", 512 << 20),
        ("1.5GiB", 3 << 29),
        ("1000000", 10**6),
        ("10KB", 10240),
        (" ", None),
        (None, None),
    ],
)
def test_memory_sizes_parse(text, expected) -> None:
    assert parse_memory_size(text) == expected


def test_a_bad_memory_size_says_what_is_expected() -> None:
    with pytest.raises(ValueError, match="e.g. 8G"):
        parse_memory_size("lots")


def test_single_task_and_convolutions_keep_their_rules() -> None:
    model = TwoLayerMultiTask(1)
    assert (
        choose_strategy(torch.stack(model.losses()), model.shared_params(), memory_limit=LARGE).rule
        == "single task"
    )
    conv = torch.nn.Conv2d(1, 2, 3)
    losses = conv(torch.randn(2, 1, 5, 5)).mean(dim=(0, 2, 3))
    assert (
        choose_strategy(losses, list(conv.parameters()), memory_limit=LARGE).rule
        == "convolution on cpu"
    )


PROBE = textwrap.dedent("""
    import gc, json, sys, torch
    torch.set_num_threads(1)
    from core.jacobian import batched_memory_estimate, task_jacobians
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 1024), torch.nn.Tanh(), torch.nn.Linear(1024, 8))
    losses = (net(torch.randn(512, 256)) ** 2).mean(0)
    inputs = list(net.parameters())
    estimate = batched_memory_estimate(losses, inputs)
    def rss(key):
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith(key))
    gc.collect()
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    base = rss("VmRSS")
    task_jacobians(losses, inputs, strategy="batched")
    print(json.dumps({"estimate": estimate, "peak": rss("VmHWM") - base}))
""")


@pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="needs Linux's resettable peak RSS"
)
def test_the_estimate_bounds_the_measured_peak_of_a_vmapped_pass() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[2],
        timeout=120,
    )
    if done.returncode != 0 and "clear_refs" in done.stderr:
        pytest.skip("the peak RSS cannot be reset here")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["peak"] > 30e6  # the probe measured something (about 120 MB)
    assert result["peak"] <= result["estimate"]
