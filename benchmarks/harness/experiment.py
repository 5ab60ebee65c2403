"""The typed API of every `python -m benchmarks` experiment: `run(Config(...)) -> ExperimentResult`.

Each experiment module defines `Config` (a `toy_problems.command_config.CommandConfig`: one field
per flag, with the flags' names and defaults), `planned_runs(config)` (the stored runs it makes, in
order) and `run(config)`. The command line only parses its flags into a `Config` and prints the
result's `report`; notebooks and tests call `run` directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ExperimentResult:
    """What one invocation of an experiment gives back.

    `records`: the stored record (`ResultStore.load`) of every planned run, in planned order
    (runs left unfinished, e.g. under `--summary-only`, are missing); `report`: the text the
    command prints; `files`: the summary and figures it wrote; `details`: experiment-specific
    values (e.g. the toy's per-run results keyed by (method, seed, transform)).
    """

    records: list[dict[str, Any]]
    report: str
    files: list[Path] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
