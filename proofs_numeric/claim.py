"""The result every claim returns, and how it is written."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toy_problems.runner import single_thread  # noqa: F401 - re-exported for the claims
from toy_problems.store import environment, save_figure_atomic, write_json_atomic


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
