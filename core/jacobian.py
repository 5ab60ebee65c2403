"""Per-task gradients, the Gramian, and flattening of parameter lists.

Two ways to get the K per-task gradients of K losses with respect to some inputs:
- "loop": K calls of `torch.autograd.grad`, one per task, retaining the graph;
- "batched": one call with `is_grads_batched=True`, which vmaps the backward pass over the K
  one-hot output gradients.
Which one is faster depends on the model (`python -m benchmarks perf` measures both side by
side): on CPU the vmapped pass was 10-25% faster through linear layers with 4-10 tasks, and
25-55% slower through convolutions; on an H100 GPU it was faster for both (0.85x the loop's
time through the LeNet convolutions, 0.30x through the 10-task MLP). "auto" therefore takes the
batched pass on an accelerator, and on the CPU when every input is at most 2-D (linear weights,
biases, features); otherwise the loop.

`task_roots`, `tasks_reaching` and `unreached_inputs` answer, from the structure of the autograd
graph alone (no backward pass), which task losses can reach which tensors: the engine uses them to
refuse a task that reaches none of the shared parameters before anything is computed.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor
from torch.autograd.graph import Node, get_gradient_edge

logger = logging.getLogger(__name__)

JacobianStrategy = Literal["loop", "batched", "auto"]

_warned_batched_failure = False


def flatten(tensors: Sequence[Tensor], /) -> Tensor:
    """Concatenate tensors into one flat vector (an empty sequence gives an empty vector)."""
    if not tensors:
        return torch.zeros(0)
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vector: Tensor, like: Sequence[Tensor], /) -> list[Tensor]:
    """Split a flat vector into tensors shaped like `like` (inverse of `flatten`)."""
    sizes = [t.numel() for t in like]
    if vector.numel() != sum(sizes):
        raise ValueError(f"vector of {vector.numel()} elements cannot fill tensors of {sum(sizes)}")
    return [chunk.view_as(t) for chunk, t in zip(torch.split(vector, sizes), like)]


def gramian(jacobian: Tensor, /) -> Tensor:
    """The Gramian `G = J J^T` of a (batched) Jacobian `[..., K, D]`: `G_ij = <g_i, g_j>`."""
    return jacobian @ jacobian.transpose(-1, -2)


def task_jacobians(
    losses: Tensor,
    inputs: Sequence[Tensor],
    /,
    *,
    strategy: JacobianStrategy = "auto",
    retain_graph: bool = True,
) -> list[Tensor | None]:
    """Gradients of each of the K losses with respect to each input.

    Returns, per input, a tensor of shape `[K, *input.shape]` whose row i is `d l_i / d input`
    (zeros where loss i does not reach it), or None where no loss reaches that input at all.
    `losses` is a vector of K scalars of one graph. The graph is kept (`retain_graph`) so that
    the caller can still backpropagate through it.
    """
    global _warned_batched_failure
    if strategy == "auto":
        linear_only = all(t.ndim <= 2 for t in inputs)
        strategy = "batched" if losses.shape[0] > 1 and (losses.device.type != "cpu" or linear_only) else "loop"
    if strategy == "batched":
        try:
            return _jacobians_batched(losses, inputs, retain_graph)
        except RuntimeError as error:  # an op without a batching rule: fall back, say so once
            if not _warned_batched_failure:
                logger.warning("batched per-task gradients failed (%s); using the loop", error)
                _warned_batched_failure = True
    return _jacobians_loop(losses, inputs, retain_graph)


def _jacobians_loop(losses: Tensor, inputs: Sequence[Tensor], retain_graph: bool) -> list[Tensor | None]:
    per_task = []
    for i in range(losses.shape[0]):
        keep = retain_graph or i < losses.shape[0] - 1
        per_task.append(torch.autograd.grad(losses[i], inputs, retain_graph=keep, allow_unused=True))
    result: list[Tensor | None] = []
    for j, tensor in enumerate(inputs):
        rows = [grads[j] for grads in per_task]
        if all(row is None for row in rows):
            result.append(None)
            continue
        result.append(torch.stack([torch.zeros_like(tensor) if row is None else row for row in rows]))
    return result


def _jacobians_batched(losses: Tensor, inputs: Sequence[Tensor], retain_graph: bool) -> list[Tensor | None]:
    eye = torch.eye(losses.shape[0], dtype=losses.dtype, device=losses.device)
    grads = torch.autograd.grad(
        losses, inputs, grad_outputs=eye, is_grads_batched=True, retain_graph=retain_graph, allow_unused=True
    )
    return list(grads)


def task_roots(losses: Sequence[Tensor] | Tensor, /) -> list[Node | None]:
    """The autograd node each task's loss starts from (None for a loss without a graph).

    `losses` is a list of K scalars, or one tensor [K]: when that tensor was made by `torch.stack`,
    task i starts at the graph of the i-th stacked loss; otherwise every task starts at the whole
    tensor's graph (the tasks cannot be told apart by structure, so each counts as reaching what any
    of them reaches).
    """
    if isinstance(losses, Tensor):
        node = _node(losses)
        count = losses.shape[0]
        if node is not None and node.name() == "StackBackward0" and len(node.next_functions) == count:
            return [edge[0] for edge in node.next_functions]
        return [node] * count
    return [_node(loss) for loss in losses]


def tasks_reaching(roots: Sequence[Node | None], targets: Sequence[Tensor], /) -> list[bool]:
    """For each root, whether its graph reaches at least one of `targets` (tensors that require grad).

    A walk over the autograd graph from each root that stops at the first target found: cheap when
    the targets are near the losses (a representation, the last layers of an encoder).
    """
    wanted = {get_gradient_edge(target).node for target in targets}
    return [root is not None and (root in wanted or _walk_finds(root, wanted)) for root in roots]


def unreached_inputs(roots: Sequence[Node | None], inputs: Sequence[Tensor], /) -> list[int]:
    """Indices of the `inputs` (tensors that require grad) that no root's graph reaches.

    One breadth-first walk from all roots together, stopping once every input was found.
    """
    positions: dict[Node, list[int]] = {}
    for index, tensor in enumerate(inputs):
        positions.setdefault(get_gradient_edge(tensor).node, []).append(index)
    missing = set(positions)
    seen: set[Node] = set()
    queue: deque[Node] = deque()
    for root in roots:
        if root is not None and root not in seen:
            seen.add(root)
            missing.discard(root)
            queue.append(root)
    while queue and missing:
        for child, _ in queue.popleft().next_functions:
            if child is not None and child not in seen:
                seen.add(child)
                missing.discard(child)
                queue.append(child)
    return sorted(index for node in missing for index in positions[node])


def _node(tensor: Tensor) -> Node | None:
    if not tensor.requires_grad:
        return None
    return tensor.grad_fn if tensor.grad_fn is not None else get_gradient_edge(tensor).node


def _walk_finds(root: Node, wanted: set[Node]) -> bool:
    seen = {root}
    queue = deque([root])
    while queue:
        for child, _ in queue.popleft().next_functions:
            if child is None or child in seen:
                continue
            if child in wanted:
                return True
            seen.add(child)
            queue.append(child)
    return False


def batched_task_gradients(
    objectives: Callable[[Tensor], Tensor], x: Tensor, /, *, create_graph: bool = False
) -> tuple[Tensor, Tensor]:
    """Values `[..., K]` and per-task gradients `[..., K, n]` of a batched objective `x [..., n]`.

    `objectives` must treat the leading batch dimensions independently (every toy problem does),
    so the gradient of `f[..., i].sum()` with respect to x is, row by row, `grad f_i(x_row)`.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        values = objectives(x)
        num_tasks = values.shape[-1]
        rows = [
            torch.autograd.grad(
                values[..., i].sum(), x, retain_graph=create_graph or i < num_tasks - 1, create_graph=create_graph
            )[0]
            for i in range(num_tasks)
        ]
    return (values if create_graph else values.detach()), torch.stack(rows, dim=-2)


def values_and_jacobian(objectives: Callable[[Tensor], Tensor], x: Tensor, /) -> tuple[Tensor, Tensor]:
    """Values `[..., K]` and per-task gradients `[..., K, n]` at `x` `[..., n]`: the objective's own
    `values_and_jacobian(x)` where it has one (the toy problems' closed forms, a transformed family's
    chain rule), else `batched_task_gradients` (one autograd pass per task)."""
    own = getattr(objectives, "values_and_jacobian", None)
    return own(x) if own is not None else batched_task_gradients(objectives, x)
