"""Data parallelism for the engine: what `mtl_backward(..., process_group=...)` all-reduces.

Each rank computes its task losses on its own shard of the batch. A method's weights depend on
the losses and on the per-task gradients of the *whole* batch, so every rank must see the same
ones before it solves for the weights; otherwise ranks take different steps and drift apart. With
equal shards, the whole batch's loss and per-task gradient are the means over ranks of the local
ones (both are linear in the per-sample terms), so the engine all-reduces (mean):

- the task losses, before any method sees them (loss weightings and stateful methods then agree);
- full mode: the per-task gradients `J` (K x D) on the shared parameters, before the Gramian
  `J J^T`. The Gramian of a mean is not the mean of the Gramians, so `J` itself must travel: K
  times the traffic of plain data-parallel training; the heads' gradient (one vector-Jacobian
  product of `sum_i c_i l_i` after the weights) is averaged like any gradient;
- representation mode ("MTL-R"): each rank's rows of `J` belong to its own samples, so the whole
  batch's Gramian is the *sum* of the local ones divided by W^2 (W ranks): only K x K numbers
  travel; the combined gradient is backpropagated through the local encoder (and heads) and that
  gradient is averaged, as in plain data parallelism;
- loss weightings: the gradient of `sum_i w_i l_i` (and of the method's penalty), averaged.

Every rank then runs the same deterministic solve on the same numbers and gets the same weights;
checks of values (non-finite losses or gradients) run on reduced numbers, so every rank raises
the same error (or, with `on_nonfinite="skip"`, skips the same step) instead of one rank raising
while the others wait in a collective.

The engine's gradient path never asks whether it runs distributed: it calls one reduction strategy,
`LocalReduction` (one process, every step the identity) or `ProcessGroupReduction` (the
all-reduces above), chosen once per call by `reduction_for(process_group)`.

`torch.distributed` must be initialised (any backend: gloo on CPU, nccl on GPU). The engine writes
`.grad` itself with `torch.autograd.grad`, so DistributedDataParallel's own gradient hooks never
fire: run the forward pass of a DDP-wrapped model inside `model.no_sync()` (see docs/distributed.md).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import torch
from torch import Tensor


def default_group() -> Any | None:
    """`torch.distributed.group.WORLD` when a process group with more than one rank is
    initialised, else None (single process: the engine then reduces nothing)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.group.WORLD
    return None


_FINISHED_WORK: deque[Any] = deque(maxlen=64)
"""The handles of the latest collectives, kept alive on purpose; see `Reducer._all_reduce`."""


class Reducer:
    """All-reduces over `group` (a `torch.distributed` process group); one object per call."""

    def __init__(self, group: Any) -> None:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "process_group was given but torch.distributed is not initialised; call "
                "torch.distributed.init_process_group first (or pass process_group=None for one process)"
            )
        self._dist = dist
        self.group = group
        self.size = dist.get_world_size(group)

    def _all_reduce(self, buffer: Tensor, op: Any) -> None:
        """All-reduce `buffer` (a tensor of this module's own) in place; the caller empties it with
        `set_()` once it has read the values.

        The collective's handle holds `buffer`. Whoever frees the handle last frees `buffer` and
        needs the GIL for its Python object. Left to itself, that is the backend's worker thread,
        which may come to it only after a short script's last line: at interpreter exit it cannot
        take the GIL and the process aborts ("terminate called without an active exception",
        gloo, about one run in ten on 2 busy cores). So Python keeps the handles of the latest 64
        collectives: the worker drops its reference long before ours, and the last one frees in
        Python. Emptied, the kept buffers hold no memory.
        """
        work = self._dist.all_reduce(buffer, op=op, group=self.group, async_op=True)
        work.wait()
        _FINISHED_WORK.append(work)

    def _reduced(self, tensor: Tensor, op: Any) -> Tensor:
        """`tensor`, in place, replaced by its reduction over ranks (through a buffer of our own)."""
        buffer = tensor.detach().clone()
        self._all_reduce(buffer, op)
        tensor.copy_(buffer)
        buffer.set_()  # type: ignore[call-overload]  # torch's stubs lack set_()'s no-argument form (empty the storage)
        return tensor

    def sum_(self, tensor: Tensor, /) -> Tensor:
        """Sum over ranks, in place (the result is identical on every rank)."""
        return self._reduced(tensor, self._dist.ReduceOp.SUM)

    def mean_(self, tensor: Tensor, /) -> Tensor:
        """Mean over ranks, in place."""
        return self.sum_(tensor).div_(self.size)

    def max_(self, tensor: Tensor, /) -> Tensor:
        """Elementwise maximum over ranks, in place (used to agree on flags)."""
        return self._reduced(tensor, self._dist.ReduceOp.MAX)

    def mean_list(self, tensors: list[Tensor], /) -> list[Tensor]:
        """The means over ranks of several tensors: one collective per dtype and device (each group
        flattened together), every result in its tensor's own dtype, shape and device."""
        results = list(tensors)  # every entry is replaced: each index is in one group
        groups: dict[tuple[torch.dtype, torch.device], list[int]] = {}
        for index, tensor in enumerate(tensors):
            groups.setdefault((tensor.dtype, tensor.device), []).append(index)
        for indices in groups.values():
            flat = torch.cat([tensors[i].detach().reshape(-1) for i in indices])
            self._all_reduce(flat, self._dist.ReduceOp.SUM)
            flat.div_(self.size)
            for i, piece in zip(indices, flat.split([tensors[i].numel() for i in indices])):
                results[i] = piece.view_as(tensors[i])
            flat.set_()  # type: ignore[call-overload]  # as above; the views keep the storage
        return results


class LocalReduction:
    """The reduction strategy of one process: the local losses and gradients are the whole batch's,
    so every step returns its input (and no collective runs)."""

    size = 1

    def losses(self, values: Tensor, /) -> Tensor:
        """The whole batch's task losses from this process's (detached) ones."""
        return values

    def jacobian(self, blocks: list[Tensor], /) -> list[Tensor]:
        """Full mode: the whole batch's per-task gradients `J` (its `[K, n_j]` block per shared
        parameter) from this process's."""
        return blocks

    def representation_gramian(self, jacobian: Tensor, /) -> tuple[Tensor, Tensor]:
        """Representation mode: the whole batch's Gramian and per-task gradient norms from this
        process's per-task feature gradients `J` (K x F)."""
        return jacobian @ jacobian.T, torch.linalg.vector_norm(jacobian, dim=1)

    def gradients(self, tensors: list[Tensor], /) -> list[Tensor]:
        """The whole batch's gradients (of a weighted loss, the heads, the encoder) from this process's."""
        return tensors

    def flags(self, flags: Tensor, /) -> Tensor:
        """Flags (0 or 1) that every process must agree on: their maximum over processes."""
        return flags


class ProcessGroupReduction:
    """The reduction strategy of data parallelism over `group`: equal shards, so the whole batch's
    losses and gradients are the means over ranks of the local ones (see the module docstring);
    representation-mode Gramians are summed and divided by W^2. One object per engine call."""

    def __init__(self, group: Any, /) -> None:
        self._reducer = Reducer(group)
        self.size = self._reducer.size

    def losses(self, values: Tensor, /) -> Tensor:
        return self._reducer.mean_(values.clone())

    def jacobian(self, blocks: list[Tensor], /) -> list[Tensor]:
        return self._reducer.mean_list(blocks)  # one collective (per dtype and device)

    def representation_gramian(self, jacobian: Tensor, /) -> tuple[Tensor, Tensor]:
        # rows of other ranks' samples: the whole batch's J stacks the ranks' columns, each scaled by 1/W
        gramian = self._reducer.sum_(jacobian @ jacobian.T).div_(self.size**2)
        return gramian, gramian.diagonal().clamp_min(0).sqrt()

    def gradients(self, tensors: list[Tensor], /) -> list[Tensor]:
        return self._reducer.mean_list(tensors) if tensors else []

    def flags(self, flags: Tensor, /) -> Tensor:
        return self._reducer.max_(flags.clone())


Reduction = LocalReduction | ProcessGroupReduction
"""The reduction strategies the engine accepts."""


def reduction_for(process_group: Any | None, /) -> Reduction:
    """`LocalReduction()` for `process_group=None`, else `ProcessGroupReduction(process_group)`
    (which raises if `torch.distributed` is not initialised)."""
    return LocalReduction() if process_group is None else ProcessGroupReduction(process_group)


def all_reduce_mean(tensor: Tensor, /, group: Any | None = None) -> Tensor:
    """A copy of `tensor` averaged over the ranks of `group` (default: every rank), e.g. the
    recomputed losses FAMO's `update` needs, so that its state stays identical on every rank."""
    group = default_group() if group is None else group
    result = tensor.detach().clone()
    return result if group is None else Reducer(group).mean_(result)


def transform_of_mean(transform: Any, loss: Tensor, /, group: Any | None = None) -> Tensor:
    """This rank's stand-in for `transform(L)`, L the whole batch's loss (the mean over ranks of
    `loss`, each rank's mean loss on its equal shard).

    Applying `h` to each shard's loss would train on `mean_r h(l_r)`, which is not `h(L)` for a
    nonaffine h. The stand-in `h(L) + h'(L) (l_r - L)` (L reduced and detached) averages over ranks
    to `h(L)`, and its gradients average to `h'(L) mean_r grad l_r = grad h(L)`: the chain rule at
    the whole batch's loss, exactly. `transform` needs `derivative` (a `core.transforms`
    `MonotoneTransform`). With `group=None` nothing is reduced and this is `transform(loss)`, as
    `mtl_backward(..., process_group=None)` reduces nothing; pass `dist.group.WORLD` for all ranks.
    """
    if group is None:
        return transform(loss)
    whole = Reducer(group).mean_(loss.detach().clone())
    return transform(whole) + transform.derivative(whole) * (loss - whole)
