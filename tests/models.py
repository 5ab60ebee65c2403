"""Small multi-task models shared by the tests."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TwoLayerMultiTask(nn.Module):
    """A shared tanh encoder and K linear heads; task i's loss is the MSE of head i."""

    def __init__(
        self,
        num_tasks: int,
        *,
        in_dim: int = 4,
        hidden: int = 5,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.encoder = nn.Linear(in_dim, hidden).to(dtype)
        self.heads = nn.ModuleList(nn.Linear(hidden, 1).to(dtype) for _ in range(num_tasks))
        with torch.no_grad():
            for param in self.parameters():
                param.copy_(torch.randn(param.shape, generator=generator, dtype=dtype))
        self.inputs = torch.randn(8, in_dim, generator=generator, dtype=dtype)
        self.targets = torch.randn(8, num_tasks, generator=generator, dtype=dtype)

    def representation(self) -> Tensor:
        return torch.tanh(self.encoder(self.inputs))

    def losses_from(self, representation: Tensor) -> list[Tensor]:
        return [
            ((head(representation)[:, 0] - self.targets[:, i]) ** 2).mean()
            for i, head in enumerate(self.heads)
        ]

    def losses(self) -> list[Tensor]:
        return self.losses_from(self.representation())

    def shared_params(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())

    def task_params(self) -> list[list[nn.Parameter]]:
        return [list(head.parameters()) for head in self.heads]

    def zero_grad_all(self) -> None:
        for param in self.parameters():
            param.grad = None
