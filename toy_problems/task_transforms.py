"""One `TASK:SPEC` parser and one transformed problem, for everything above `core`.

A task transform replaces task `TASK`'s loss `l` by `h(l)`, `h` a strictly increasing transform of
`core.transforms` written as `SPEC` (`exp`, `power:4`, `affine:1:1|log`, ...). `TASK` is a 0-based
index or, where the tasks have names (the supervised suites), a name. `"none"` is no transform.
The toy runs, the supervised experiments' `--transforms` and `inspect --transform` all parse here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from core.errors import InvalidHyperparameterError, LossDomainError
from core.transforms import TRANSFORM_SPEC_FORMS, MonotoneTransform, parse_transform


@dataclass(frozen=True)
class TaskTransform:
    """`h` applied to the loss of task `task` (0-based)."""

    task: int
    transform: MonotoneTransform

    @property
    def spec(self) -> str:
        """The `TASK:SPEC` text (with the task index)."""
        return f"{self.task}:{self.transform.to_spec()}"

    def values(self, losses: Tensor, /) -> Tensor:
        """Losses `[..., K]` with task `task`'s column replaced by `h(l_task)`."""
        out = losses.clone()
        out[..., self.task] = self.transform(losses[..., self.task])
        return out

    def values_and_jacobian(self, losses: Tensor, jacobian: Tensor, /) -> tuple[Tensor, Tensor]:
        """`h` applied to the losses `[..., K]` and the chain rule `h'(l) grad l` to the per-task
        gradients `[..., K, n]`."""
        values = self.values(losses)
        scaled = jacobian.clone()
        scaled[..., self.task, :] = (
            jacobian[..., self.task, :]
            * self.transform.derivative(losses[..., self.task])[..., None]
        )
        return values, scaled

    def check_domain(self, lower_bound: float | None, /) -> None:
        """Refuse a transform that is not defined on every loss the problem can produce (all
        values above `lower_bound`; nothing is checked without a bound)."""
        if lower_bound is None:
            return
        try:
            self.transform.check_domain(torch.tensor([lower_bound], dtype=torch.float64))
        except LossDomainError as error:
            raise InvalidHyperparameterError(
                f"transform {self.spec!r}: the losses range over ({lower_bound:g}, inf), outside this transform's domain "
                f"({error}); choose one defined on all reals, e.g. power:P, exp, arcsinh, softplus or affine:A:B"
            ) from None

    def transformed_bound(self, lower_bound: float, /) -> float:
        """`h(lower_bound)`: the transformed task's lower bound."""
        return float(self.transform(torch.tensor(lower_bound, dtype=torch.float64)))


def parse_task_transform(text: str, /, tasks: int | Sequence[str]) -> TaskTransform | None:
    """`"none"` -> None; `"TASK:SPEC"` -> `TaskTransform`; anything else raises
    `InvalidHyperparameterError` naming the valid tasks and forms.

    `tasks`: the number of tasks (TASK is an index 0..K-1) or their names (TASK is a name or an
    index)."""
    text = text.strip()
    if text == "none":
        return None
    names = [] if isinstance(tasks, int) else list(tasks)
    count = tasks if isinstance(tasks, int) else len(names)
    task_text, sep, spec = text.partition(":")
    choices = f"{', '.join(names)} or " if names else ""
    if not sep or not spec:
        raise InvalidHyperparameterError(
            f"transform {text!r}: expected 'none' or TASK:SPEC with TASK {choices}an index 0..{count - 1} and SPEC one of "
            f"{TRANSFORM_SPEC_FORMS}, e.g. 0:power:4"
        )
    if task_text in names:
        task = names.index(task_text)
    elif task_text.isdigit() and int(task_text) < count:
        task = int(task_text)
    else:
        raise InvalidHyperparameterError(
            f"transform {text!r}: unknown task {task_text!r}; tasks are {choices}0..{count - 1}"
        )
    try:
        return TaskTransform(task, parse_transform(spec))
    except InvalidHyperparameterError as error:
        raise InvalidHyperparameterError(f"transform {text!r}: {error}") from None


def combine(transforms: Sequence[TaskTransform], /) -> list[TaskTransform]:
    """Several task transforms, at most one per task (compose them in one SPEC with '|')."""
    seen: set[int] = set()
    for transform in transforms:
        if transform.task in seen:
            raise InvalidHyperparameterError(
                f"task {transform.task} has two transforms; compose them in one spec with '|' (e.g. {transform.task}:exp|log)"
            )
        seen.add(transform.task)
    return list(transforms)
