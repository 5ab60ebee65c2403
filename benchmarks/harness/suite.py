"""What a supervised multi-task benchmark gives the shared training loop.

A `Suite` bundles a benchmark's datasets, model factory, task losses, metrics, published
single-task base values and training protocol. The harness (`benchmarks.harness.training`)
trains any method on any suite with one loop, so a new benchmark only supplies these parts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class MetricSpec:
    """One reported metric: its name, the task it belongs to, and its direction."""

    name: str
    task: str
    higher_is_better: bool


class MetricAccumulator(Protocol):
    """Accumulates predictions over an evaluation pass; `compute()` returns every metric of the
    suite by name (in the suite's `metrics` order), as plain floats in reporting units."""

    def update(
        self, predictions: Mapping[str, Tensor], targets: Mapping[str, Tensor], /
    ) -> None: ...

    def compute(self) -> dict[str, float]: ...


class MultiTaskModel(Protocol):
    """A model with one prediction per task.

    `forward(inputs)` returns `{task: prediction}`; `shared_parameters()` are the parameters
    every task uses (the engine's `shared_params`); `task_parameters()` maps each task to its own
    head parameters. Models that support the representation ("MTL-R") mode also implement
    `encode(inputs) -> features` and `decode(features) -> {task: prediction}`, with
    `forward(x) == decode(encode(x))`.
    """

    def __call__(self, inputs: Any, /) -> dict[str, Tensor]: ...

    def shared_parameters(self) -> list[nn.Parameter]: ...

    def task_parameters(self) -> dict[str, list[nn.Parameter]]: ...


@dataclass(frozen=True)
class TrainingProtocol:
    """The published training protocol of a benchmark (optimiser, schedule, selection rule).

    - `scheduler`: "none", "step" (StepLR(step_size, gamma)) or "plateau" (ReduceLROnPlateau on
      the validation Delta_m, factor `gamma`, patience `patience`, min_lr `min_lr`).
    - `selection`: "last" (the last epoch), "last_mean:N" (mean of the test metrics over the last N
      epochs, the Nash-MTL/FAMO dense protocol) or "best_val" (the test metrics at the epoch with
      the best validation Delta_m, the QM9 protocol).
    """

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    optimizer: str = "adam"
    scheduler: str = "none"
    step_size: int = 100
    gamma: float = 0.5
    patience: int = 5
    min_lr: float = 0.0
    selection: str = "last"
    method_lr: float = 0.025
    max_grad_norm: float | None = None


@dataclass(frozen=True)
class Suite:
    """A supervised multi-task benchmark.

    `datasets(root, split)` returns a torch Dataset for split "train", "val" or "test" whose items
    are `(inputs, {task: target})`; `collate` batches them (None: torch's default). `task_losses`
    maps `(predictions, targets)` to `{task: scalar loss}` in `task_names` order.
    `base_values` are the published single-task (STL) values of every metric, for Delta_m, with
    their source in `base_source`.
    """

    name: str
    task_names: tuple[str, ...]
    metrics: tuple[MetricSpec, ...]
    make_model: Callable[[], nn.Module]
    task_losses: Callable[[Mapping[str, Tensor], Mapping[str, Tensor]], dict[str, Tensor]]
    make_accumulator: Callable[[], MetricAccumulator]
    datasets: Callable[[str, str], torch.utils.data.Dataset]
    protocol: TrainingProtocol
    collate: Callable[[Sequence[Any]], Any] | None = None
    base_values: Mapping[str, float] | None = None
    base_source: str = ""
    notes: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names):
            raise ValueError(f"suite {self.name!r}: duplicate metric names {names}")
        unknown = {m.task for m in self.metrics} - set(self.task_names)
        if unknown:
            raise ValueError(f"suite {self.name!r}: metrics name unknown tasks {sorted(unknown)}")
        if self.base_values is not None and set(self.base_values) != set(names):
            raise ValueError(
                f"suite {self.name!r}: base_values must name exactly the metrics {names}"
            )
