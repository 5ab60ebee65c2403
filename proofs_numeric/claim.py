"""The result every claim returns, and how it is written."""

from __future__ import annotations

import json
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
    quick: bool | None = None  # the settings it ran with (set by `run_claim`; None: not recorded)

    def save(self, out: Path) -> list[Path]:
        payload = {
            "name": self.name,
            "statement": self.statement,
            "passed": self.passed,
            "measured": self.measured,
            "bound": self.bound,
            "quick": self.quick,
            "data": self.data,
            "environment": environment(),
        }
        paths = [write_json_atomic(out / f"{self.name}.json", payload)]
        if self.figure is not None:
            paths.append(save_figure_atomic(self.figure, out / f"{self.name}.png"))
        return paths

    @classmethod
    def load(cls, path: Path) -> ClaimResult | None:
        """A result written by `save` (without its figure, which stays a PNG beside it), or None
        when the file is missing or is not such a result."""
        try:
            payload = json.loads(Path(path).read_text())
            fields = {
                key: payload[key]
                for key in ("name", "statement", "passed", "measured", "bound", "data")
            }
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return cls(**fields, quick=payload.get("quick"))


def run_claim(module: Any, /, *, quick: bool) -> ClaimResult:
    """`module.run(quick=quick)` with the setting recorded in the result."""
    result = module.run(quick=quick)
    result.quick = bool(quick)
    return result


def stored_or_run(module: Any, /, *, quick: bool, out: Path) -> ClaimResult:
    """The claim's result stored under `out` (by `python -m proofs_numeric`) if it ran with the same
    `quick` setting, else a fresh run, saved there. The figure is `out/<name>.png` either way."""
    out = Path(out)
    stored = ClaimResult.load(out / f"{module.NAME}.json")
    if (
        stored is not None
        and stored.name == module.NAME
        and isinstance(stored.quick, bool)
        and stored.quick == bool(quick)
        and (out / f"{module.NAME}.png").exists()
    ):
        return stored
    result = run_claim(module, quick=quick)
    result.save(out)
    return result
