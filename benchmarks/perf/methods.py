"""Every registered method's own cost: one call on one problem and on a batch of toy rows.

The engine section times whole training steps of three methods; this section gives every method
of the registry a row: the median time of one call of the method alone (its weights from the
Gramian or the losses, or a Jacobian aggregation's update from the Jacobian), on one problem of
K = 10 tasks with 10,000 shared parameters (float32, as in training), and on 1,000 rows of K = 2
(float64, as the toy runner calls it once per step), against linear scalarisation on the same
inputs, in interleaved rounds. A few variants (`VARIANTS`) are timed besides the defaults: RotoGrad
with rotations, whose step includes its alignment loss and that loss's gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from benchmarks.perf.timing import interleaved_medians
from core.jacobian import gramian
from core.methods.base import GradientWeighting, JacobianAggregation, Method
from core.registry import available_methods, describe_method, make_method

CASES = {
    "one problem, K = 10, n = 10,000, float32": (10, 10_000, 1, torch.float32),
    "1,000 toy rows, K = 2, n = 2, float64": (2, 2, 1000, torch.float64),
}

VARIANTS = {"rotograd:rotation_size=100": (100, 100)}
"""Variants timed besides the registry's defaults, with the feature shape the one problem's J is
read in: RotoGrad with rotations of 100 features (the default has none), whose call adds its
alignment loss and that loss's gradient on the rotations, as the engine does each step (J as 100
samples of 100 features; on the toy rows, which hold no samples, it is the scaling alone)."""


def call_of(
    spec: str,
    num_tasks: int,
    jacobian: torch.Tensor,
    losses: torch.Tensor,
    *,
    seed: int,
    features: tuple[int, ...] | None = None,
) -> Callable[[], object]:
    """One call of the method on these inputs (its state advances call by call, as in training);
    with `features`, a Jacobian aggregation's auxiliary loss on J read as `[K, *features]` and its
    gradient on the method's own parameters too."""
    method: Method = make_method(
        spec, num_tasks=num_tasks, generator=torch.Generator().manual_seed(seed)
    )
    if isinstance(method, JacobianAggregation):
        own = list(method.parameters())
        if own and features is not None and jacobian.ndim == 2:
            shaped = jacobian.view(num_tasks, *features)

            def with_auxiliary() -> object:
                result = method.aggregate(jacobian, losses)
                auxiliary = method.auxiliary_loss(shaped, losses)
                return (
                    result if auxiliary is None else (result, torch.autograd.grad(auxiliary, own))
                )

            return with_auxiliary
        return lambda: method.aggregate(jacobian, losses)
    if isinstance(method, GradientWeighting):
        gram = gramian(jacobian)
        return lambda: method.weights(gram, losses)
    return lambda: method.weights(losses)


def measure(
    *, rounds: int, repeats: int, seed: int, methods: list[str] | None = None
) -> dict[str, dict[str, float]]:
    """Seconds per call, per case and method (a method failing on a case is left out of it)."""
    generator = torch.Generator().manual_seed(seed)
    results: dict[str, dict[str, float]] = {}
    for case, (num_tasks, width, rows, dtype) in CASES.items():
        shape = (num_tasks, width) if rows == 1 else (rows, num_tasks, width)
        jacobian = torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)
        losses = (torch.rand(shape[:-1], generator=generator, dtype=torch.float64) + 0.5).to(dtype)
        calls = {}
        for spec in methods or [*available_methods(), *VARIANTS]:
            call = call_of(
                spec, num_tasks, jacobian, losses, seed=seed, features=VARIANTS.get(spec)
            )
            try:
                call()
            except (
                RuntimeError,
                ValueError,
            ) as error:  # a method that cannot take this case is reported as such
                results.setdefault("failed", {})[f"{spec} ({case})"] = str(error)[:200]
                continue
            calls[spec] = call
        results[case] = interleaved_medians(
            calls, rounds=rounds, repeats=repeats, seed=seed, long_call_seconds=0.05
        )
    return results


def table(results: dict[str, dict[str, float]]) -> str:
    """Markdown: one row per method, its kind, and per case the microseconds per call and the ratio to LS."""
    cases = [case for case in CASES if case in results]
    header = ["method", "kind", *(f"{case}: us / call (x LS)" for case in cases)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    names = sorted({spec for case in cases for spec in results[case]})
    for spec in names:
        cells = [f"`{spec}`", describe_method(spec).kind]
        for case in cases:
            seconds = results[case].get(spec)
            cells.append(
                "failed"
                if seconds is None
                else f"{1e6 * seconds:,.0f} ({seconds / results[case]['ls']:.1f})"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
