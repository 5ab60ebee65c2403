"""The result every claim returns, and how it is written."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks.store import environment, save_figure_atomic, write_json_atomic


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one thread for the duration (restored after). The claims run thousands of
    operations on tensors of a few dozen numbers, where thread hand-offs cost more than the
    arithmetic (and, on a loaded 2-core machine, intra-op threads contend badly)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass
class ClaimResult:
    """One claim's verdict. `measured` and `bound` are what the table prints side by side.

    `figure` is a matplotlib Figure (or None), saved next to the JSON; `data` holds the raw
    numbers behind it (JSON-ready), so the figure can be redrawn without rerunning.
    """

    name: str
    statement: str
    passed: bool
    measured: str
    bound: str
    data: dict[str, Any] = field(default_factory=dict)
    figure: Any = None

    def save(self, out: Path) -> list[Path]:
        payload = {
            "name": self.name,
            "statement": self.statement,
            "passed": self.passed,
            "measured": self.measured,
            "bound": self.bound,
            "data": self.data,
            "environment": environment(),
        }
        paths = [write_json_atomic(out / f"{self.name}.json", payload)]
        if self.figure is not None:
            paths.append(save_figure_atomic(self.figure, out / f"{self.name}.png"))
        return paths
