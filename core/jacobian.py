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

Memory. The vmapped pass carries K gradients through every node at once, so its peak grows with
K times the graph's activations, where the loop's holds one task's at a time: through the QM9
MPNN (batch 120, 11 tasks) it reached 19 GB. So "auto" takes the batched pass only where its
estimated peak fits the memory at hand (`choose_strategy`, which says why it chose what it chose):

    estimate = MEMORY_SAFETY * K * (A + P)

A is the bytes of the gradients the backward pass computes (one per graph node between the
losses and the inputs: the size of the node's forward outputs, read from the graph's metadata,
so nothing is unpacked or recomputed), P the bytes of the inputs (the K rows of the result).
Measured peaks of the vmapped pass (this process's resident-set high-water mark, CPU, float32)
were 0.78-1.28 x K (A + P): the MPNN at 8 and 16 molecules with hidden width 64 and 32
(1.14-1.28), a 3-layer MLP (0.78), a 2-layer CNN (1.08); MEMORY_SAFETY = 2 covers these with
room. The budget is the `memory_limit` argument, or else the environment variable
`MTL_JACOBIAN_MEMORY_LIMIT` (bytes, or a number with a K/M/G/T suffix, powers of 1024), capped
by the memory available; without either, AVAILABLE_SHARE (half) of the memory available, leaving
the rest to other processes (two sweep workers on one machine) and the allocator's slack.
Available memory: psutil's `virtual_memory().available` where psutil is installed, else
`MemAvailable` in /proc/meminfo, on the CPU; free plus cached-but-unused memory on a CUDA device;
where there is no figure, UNKNOWN_BUDGET (1 GiB). The decision is logged at INFO when it changes,
and once at WARNING when memory rules the batched pass out (then slower than it could be, but
within memory).

`task_roots`, `tasks_reaching` and `unreached_inputs` answer, from the structure of the autograd
graph alone (no backward pass), which task losses can reach which tensors: the engine uses them to
refuse a task that reaches none of the shared parameters before anything is computed.
"""

from __future__ import annotations

import logging
import os
import re
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor
from torch.autograd.graph import Node, get_gradient_edge

logger = logging.getLogger(__name__)

JacobianStrategy = Literal["loop", "batched", "auto"]

MEMORY_SAFETY = 2.0
"""Factor on K (A + P) in the batched pass's memory estimate (module docstring: measured 0.78-1.28)."""
AVAILABLE_SHARE = 0.5
"""Share of the available memory the batched pass may take when no limit is given."""
UNKNOWN_BUDGET = 1 << 30
"""The budget (bytes) where there is neither a limit nor a figure of the available memory."""
MEMORY_LIMIT_VARIABLE = "MTL_JACOBIAN_MEMORY_LIMIT"
"""Environment variable with a memory limit for the batched pass (`8G`, `512M`, `1000000`)."""

_warned_batched_failure = False
_warned_memory = False
_last_choice: tuple[str, str] | None = None


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
    memory_limit: int | None = None,
) -> list[Tensor | None]:
    """Gradients of each of the K losses with respect to each input.

    Returns, per input, a tensor of shape `[K, *input.shape]` whose row i is `d l_i / d input`
    (zeros where loss i does not reach it), or None where no loss reaches that input at all.
    `losses` is a vector of K scalars of one graph. The graph is kept (`retain_graph`) so that
    the caller can still backpropagate through it. `strategy="auto"` decides with
    `choose_strategy`: speed first, then the batched pass's estimated memory against
    `memory_limit` (bytes; None: `MTL_JACOBIAN_MEMORY_LIMIT` or the memory available), see the
    module.
    """
    global _warned_batched_failure
    if strategy == "auto":
        choice = choose_strategy(losses, inputs, memory_limit=memory_limit)
        _report(choice)
        strategy = choice.strategy
    if strategy == "batched":
        try:
            return _jacobians_batched(losses, inputs, retain_graph)
        except RuntimeError as error:  # an op without a batching rule: fall back, say so once
            if not _warned_batched_failure:
                logger.warning("batched per-task gradients failed (%s); using the loop", error)
                _warned_batched_failure = True
    return _jacobians_loop(losses, inputs, retain_graph)


@dataclass(frozen=True)
class StrategyChoice:
    """What `strategy="auto"` takes and why: `strategy` ("loop" or "batched"); `rule`, the rule
    that decided ("single task", "convolution on cpu", "memory" or "fits"); `reason`, a sentence;
    and where memory was weighed, the batched pass's `estimate` and the `budget` (bytes)."""

    strategy: Literal["loop", "batched"]
    rule: str
    reason: str
    estimate: int | None = None
    budget: int | None = None


def choose_strategy(
    losses: Tensor, inputs: Sequence[Tensor], /, *, memory_limit: int | None = None
) -> StrategyChoice:
    """The strategy "auto" takes for these losses and inputs (module docstring): the loop for one
    task, and on the CPU for inputs of more than 2 dimensions (speed); else the batched pass where
    its estimated peak (`batched_memory_estimate`) fits the budget (`memory_budget`), the loop
    where it does not."""
    num_tasks = losses.shape[0] if losses.ndim else 1
    if num_tasks <= 1:
        return StrategyChoice("loop", "single task", "one task: nothing to batch")
    if losses.device.type == "cpu" and not all(t.ndim <= 2 for t in inputs):
        return StrategyChoice(
            "loop",
            "convolution on cpu",
            "an input has more than 2 dimensions: on the CPU the loop is faster through convolutions",
        )
    estimate = batched_memory_estimate(losses, inputs)
    budget, source = memory_budget(losses.device, memory_limit)
    if estimate > budget:
        return StrategyChoice(
            "loop",
            "memory",
            f"the batched pass over {num_tasks} tasks would need about {_size(estimate)} (estimate), more than the "
            f"{_size(budget)} allowed ({source}); the loop holds one task's gradients at a time",
            estimate,
            budget,
        )
    return StrategyChoice(
        "batched",
        "fits",
        f"the batched pass over {num_tasks} tasks needs about {_size(estimate)} (estimate), within the {_size(budget)} allowed ({source})",
        estimate,
        budget,
    )


def batched_memory_estimate(losses: Tensor, inputs: Sequence[Tensor], /) -> int:
    """Estimated peak bytes of the batched pass, `MEMORY_SAFETY * K * (A + P)` (module docstring).

    A sums the bytes of the forward outputs of every graph node reachable from the losses before
    an input is reached (`Node._input_metadata`: shapes and dtypes, so no saved tensor is unpacked
    and no checkpointed segment recomputed); P is the inputs' bytes."""
    num_tasks = losses.shape[0] if losses.ndim else 1
    stops = {get_gradient_edge(tensor).node for tensor in inputs if tensor.requires_grad}
    root = _node(losses)
    activations = 0
    seen: set[Node] = set()
    queue: deque[Node] = deque([root] if root is not None else [])
    while queue:
        node = queue.popleft()
        if node in seen or node in stops:
            continue
        seen.add(node)
        activations += _output_bytes(node)
        queue.extend(child for child, _ in node.next_functions if child is not None)
    parameters = sum(tensor.numel() * tensor.element_size() for tensor in inputs)
    return int(MEMORY_SAFETY * num_tasks * (activations + parameters))


def _output_bytes(node: Node) -> int:
    try:
        metadata = (
            node._input_metadata
        )  # one entry per forward output: the gradients this node receives
    except (AttributeError, RuntimeError):  # a node kind without it counts nothing
        return 0
    total = 0
    for entry in metadata:
        try:
            count = 1
            for size in entry.shape:
                count *= int(size)
            total += count * entry.dtype.itemsize
        except (TypeError, RuntimeError, AttributeError):  # nested or symbolic shapes
            continue
    return total


def memory_budget(device: torch.device, memory_limit: int | None = None, /) -> tuple[int, str]:
    """The bytes the batched pass may take on `device`, and where that figure comes from: the
    `memory_limit` (else `MTL_JACOBIAN_MEMORY_LIMIT`) capped by the available memory, else
    `AVAILABLE_SHARE` of the available memory, else `UNKNOWN_BUDGET` (module docstring)."""
    if memory_limit is not None and (
        isinstance(memory_limit, bool) or not isinstance(memory_limit, int) or memory_limit < 0
    ):
        raise ValueError(
            f"memory_limit must be a number of bytes (an int >= 0) or None, got {memory_limit!r}"
        )
    source = "memory_limit"
    if memory_limit is None:
        memory_limit = parse_memory_size(os.environ.get(MEMORY_LIMIT_VARIABLE))
        source = MEMORY_LIMIT_VARIABLE
    available, origin = available_memory(torch.device(device))
    if memory_limit is not None:
        if available is not None and available < memory_limit:
            return (
                available,
                f"{source} {_size(memory_limit)}, capped by the {_size(available)} available ({origin})",
            )
        return memory_limit, source
    if available is None:
        return UNKNOWN_BUDGET, "no figure of the memory available on this device: the default"
    return int(
        AVAILABLE_SHARE * available
    ), f"{AVAILABLE_SHARE:.0%} of the {_size(available)} available ({origin})"


def available_memory(device: torch.device, /) -> tuple[int | None, str]:
    """Bytes available for new tensors on `device` and where the figure comes from (None where
    there is none): psutil, else /proc/meminfo's `MemAvailable`, on the CPU; free plus
    cached-but-unused memory on a CUDA device."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached), "torch.cuda.mem_get_info"
    if device.type != "cpu":
        return None, ""
    try:
        import psutil  # optional, not a dependency of core
    except ImportError:
        psutil = None
    if psutil is not None:
        return int(psutil.virtual_memory().available), "psutil"
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None, ""
    found = re.search(r"^MemAvailable:\s+(\d+)\s*kB", text, flags=re.MULTILINE)
    return (int(found.group(1)) * 1024, "/proc/meminfo") if found else (None, "")


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_memory_size(text: str | None, /) -> int | None:
    """Bytes from `"8G"`, `"512M"`, `"1.5GiB"`, `"1000000"` (K, M, G, T: powers of 1024, with an
    optional B or iB after them); None for None or blank text."""
    if text is None or not text.strip():
        return None
    found = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*(?:([KMGT])I?)?B?\s*", text.upper())
    if found is None:
        raise ValueError(
            f"{MEMORY_LIMIT_VARIABLE}={text!r} is not a memory size: give bytes, or a number with K, M, G or T (e.g. 8G)"
        )
    return int(float(found.group(1)) * _UNITS[found.group(2) or ""])


def _size(count: int) -> str:
    return f"{count / (1 << 30):.2f} GiB" if count >= 1 << 30 else f"{count / (1 << 20):.1f} MiB"


def _report(choice: StrategyChoice) -> None:
    """Log the choice at INFO when its rule changes, and once at WARNING when memory rules the
    batched pass out."""
    global _last_choice, _warned_memory
    key = (choice.strategy, choice.rule)
    if key != _last_choice:
        logger.info("per-task gradients: %s (%s)", choice.strategy, choice.reason)
        _last_choice = key
    if choice.rule == "memory" and not _warned_memory:
        logger.warning("per-task gradients by the loop: %s", choice.reason)
        _warned_memory = True


def _jacobians_loop(
    losses: Tensor, inputs: Sequence[Tensor], retain_graph: bool
) -> list[Tensor | None]:
    per_task = []
    for i in range(losses.shape[0]):
        keep = retain_graph or i < losses.shape[0] - 1
        per_task.append(
            torch.autograd.grad(losses[i], inputs, retain_graph=keep, allow_unused=True)
        )
    result: list[Tensor | None] = []
    for j, tensor in enumerate(inputs):
        rows = [grads[j] for grads in per_task]
        if all(row is None for row in rows):
            result.append(None)
            continue
        result.append(
            torch.stack([torch.zeros_like(tensor) if row is None else row for row in rows])
        )
    return result


def _jacobians_batched(
    losses: Tensor, inputs: Sequence[Tensor], retain_graph: bool
) -> list[Tensor | None]:
    eye = torch.eye(losses.shape[0], dtype=losses.dtype, device=losses.device)
    grads = torch.autograd.grad(
        losses,
        inputs,
        grad_outputs=eye,
        is_grads_batched=True,
        retain_graph=retain_graph,
        allow_unused=True,
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
        if (
            node is not None
            and node.name() == "StackBackward0"
            and len(node.next_functions) == count
        ):
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
                values[..., i].sum(),
                x,
                retain_graph=create_graph or i < num_tasks - 1,
                create_graph=create_graph,
            )[0]
            for i in range(num_tasks)
        ]
    return (values if create_graph else values.detach()), torch.stack(rows, dim=-2)


def values_and_jacobian(
    objectives: Callable[[Tensor], Tensor], x: Tensor, /
) -> tuple[Tensor, Tensor]:
    """Values `[..., K]` and per-task gradients `[..., K, n]` at `x` `[..., n]`: the objective's own
    `values_and_jacobian(x)` where it has one (the toy problems' closed forms, a transformed family's
    chain rule), else `batched_task_gradients` (one autograd pass per task)."""
    own = getattr(objectives, "values_and_jacobian", None)
    return own(x) if own is not None else batched_task_gradients(objectives, x)
