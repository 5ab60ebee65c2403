"""The two-head LeNet of the continuous-Pareto MultiMNIST experiments (spec pareto_exploration.md §6.2).

conv 1->10 5x5 -> ReLU -> maxpool 2 -> conv 10->20 5x5 -> ReLU -> maxpool 2 -> flatten 320 ->
fc 50 -> ReLU -> one head fc 50->10 per task: 22,350 parameters (21,330 shared + 2 x 510).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class MultiLeNet(nn.Module):
    """LeNet encoder shared by `num_tasks` linear 10-way heads (`task_names` name them)."""

    def __init__(
        self, task_names: tuple[str, ...] = ("left", "right"), *, num_classes: int = 10
    ) -> None:
        super().__init__()
        self.task_names = tuple(task_names)
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 10, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(10, 20, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(320, 50), nn.ReLU(),
        )  # fmt: skip
        self.heads = nn.ModuleDict({name: nn.Linear(50, num_classes) for name in self.task_names})

    def encode(self, images: Tensor) -> Tensor:
        return self.encoder(images)

    def decode(self, features: Tensor) -> dict[str, Tensor]:
        return {name: head(features) for name, head in self.heads.items()}

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return self.decode(self.encode(images))

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())

    def task_parameters(self) -> dict[str, list[nn.Parameter]]:
        return {name: list(head.parameters()) for name, head in self.heads.items()}


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
