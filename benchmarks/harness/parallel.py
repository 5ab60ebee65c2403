"""`--nproc N`: data-parallel training of each run over N processes (torchrun underneath).

The command relaunches itself with `python -m torch.distributed.run --standalone --nproc-per-node
N` (torchrun). Every rank loads the same shuffled batches and trains on its slice of each one;
`core.mtl_backward(..., process_group=...)` all-reduces what the weights depend on, so every rank
takes the step one process would take on the whole batch (up to summation order), also with a
nonlinear loss transform, which is applied to the whole batch's loss
(`core.distributed.transform_of_mean`). Rank 0 decides which runs to run and writes every result
and checkpoint; the other ranks follow its decisions.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from core.errors import InvalidHyperparameterError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="train each run data-parallel over N processes with torch.distributed (torchrun; gloo on CPU, "
        "nccl on CUDA); the runs are stored apart from single-process ones (default: %(default)s)",
    )


@dataclass(frozen=True)
class DataParallel:
    """This process's place in a data-parallel group."""

    rank: int
    world: int
    group: Any

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def shard(self, batch: Any, /) -> tuple[Any, float]:
        """This rank's contiguous slice of every tensor in `batch` (along dim 0), and the slice's
        share of the batch times the world size: the factor that makes the mean over ranks of the
        slices' mean losses the whole batch's mean loss, also for uneven slices."""
        size = _batch_size(batch)
        if size < self.world:
            raise InvalidHyperparameterError(
                f"a batch of {size} samples cannot be split over {self.world} processes"
            )
        bounds = [size * r // self.world for r in range(self.world + 1)]
        start, stop = bounds[self.rank], bounds[self.rank + 1]
        return _slice(batch, start, stop), (stop - start) * self.world / size

    def broadcast(self, value: Any, /) -> Any:
        """Rank 0's `value`, on every rank."""
        import torch.distributed as dist

        holder = [value]
        dist.broadcast_object_list(holder, src=0, group=self.group)
        return holder[0]

    def mean_grads_(self, parameters: Sequence[Tensor], /) -> None:
        """Average the `.grad` of `parameters` over the ranks (after a plain `backward`)."""
        from core.distributed import Reducer

        with_grad = [p for p in parameters if p.grad is not None]
        for param, mean in zip(
            with_grad, Reducer(self.group).mean_list([p.grad for p in with_grad])
        ):
            param.grad.copy_(mean)


def from_environment(device: torch.device) -> DataParallel | None:
    """The group torchrun set up for this process (initialised here), or None outside torchrun."""
    import torch.distributed as dist

    if world_size() <= 1:
        return None
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DataParallel(rank=dist.get_rank(), world=dist.get_world_size(), group=dist.group.WORLD)


def device_for(device: torch.device) -> torch.device:
    """On CUDA, each rank its own GPU (torchrun's LOCAL_RANK)."""
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def relaunch(argv: Sequence[str], nproc: int, /) -> int:
    """Run `python -m benchmarks ARGV` under torchrun with `nproc` processes; its exit status."""
    if nproc < 1:
        raise InvalidHyperparameterError(f"--nproc must be at least 1, got {nproc}")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "benchmarks",
        *argv,
    ]
    return subprocess.call(
        command, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    )


def inside_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _batch_size(batch: Any) -> int:
    if isinstance(batch, Tensor):
        return batch.shape[0]
    if hasattr(batch, "slice_samples"):  # a batch type that splits itself, e.g. QM9's MoleculeBatch
        return batch.num_samples
    if isinstance(batch, dict) and batch:
        return _batch_size(next(iter(batch.values())))
    if isinstance(batch, (list, tuple)) and batch:
        return _batch_size(batch[0])
    raise InvalidHyperparameterError(
        f"--nproc splits batches of tensors, dicts or tuples of them, or objects with `num_samples` and "
        f"`slice_samples(start, stop)`; this suite's batches are {type(batch).__name__}"
    )


def _slice(batch: Any, start: int, stop: int) -> Any:
    if isinstance(batch, Tensor):
        return batch[start:stop]
    if hasattr(batch, "slice_samples"):
        return batch.slice_samples(start, stop)
    if isinstance(batch, dict):
        return {key: _slice(value, start, stop) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_slice(item, start, stop) for item in batch)
    raise InvalidHyperparameterError(f"--nproc cannot split a batch holding {type(batch).__name__}")
