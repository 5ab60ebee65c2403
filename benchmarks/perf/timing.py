"""Side-by-side timing shared by every section of `python -m benchmarks perf`.

Variants are timed round by round, each round calling every variant in turn (in an order shuffled
per round, so that no variant always follows the same one and inherits its cache state), so that a
change in machine load (another job on a shared machine, frequency scaling) affects all of them
alike; the result of a variant is the median over rounds of its per-round median. Ratios of these medians are
what the report states; nothing here asserts a wall-clock limit.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Hashable, Mapping
from typing import TypeVar

import torch

Name = TypeVar("Name", bound=Hashable)


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued kernels (a no-op on the CPU), so that a timing covers them."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(
    function: Callable[[], object], repeats: int, device: torch.device | str = "cpu"
) -> float:
    """Median wall-clock seconds of `repeats` calls of `function`, each synchronised on `device`."""
    samples = []
    for _ in range(repeats):
        synchronize(device)
        began = time.perf_counter()
        function()
        synchronize(device)
        samples.append(time.perf_counter() - began)
    return statistics.median(samples)


def interleaved_medians(
    variants: Mapping[Name, Callable[[], object]],
    /,
    *,
    rounds: int,
    repeats: int,
    device: torch.device | str = "cpu",
    warm_up: bool = True,
    seed: int = 0,
    long_call_seconds: float | None = None,
) -> dict[Name, float]:
    """Seconds per call of each variant: `rounds` interleaved rounds of `repeats` calls each, the
    variants in an order shuffled per round (by `seed`), the median over rounds of the per-round
    medians (after one untimed warm-up call of each). A variant whose call, timed once after the
    warm-up, takes longer than `long_call_seconds` is called once per round (its timing needs no averaging; the run
    stays short)."""
    if warm_up:
        for function in variants.values():
            function()
    calls = dict.fromkeys(variants, repeats)
    if long_call_seconds is not None:  # one timed probe call each, after the warm-up
        calls |= {
            name: 1
            for name, function in variants.items()
            if median_seconds(function, 1, device) > long_call_seconds
        }
    samples: dict[Name, list[float]] = {name: [] for name in variants}
    order = list(variants)
    shuffler = random.Random(seed)
    for _ in range(rounds):
        shuffler.shuffle(order)
        for name in order:
            samples[name].append(median_seconds(variants[name], calls[name], device))
    return {name: statistics.median(values) for name, values in samples.items()}
