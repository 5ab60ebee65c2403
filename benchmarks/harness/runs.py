"""Runs and their result store: one JSON per run, written atomically, resumable.

A run is (experiment, method, seed, transform, config). Its id is readable and ends with a hash
of everything that defines it, so a rerun with the same settings finds its finished result and a
run with other settings (say `--quick`) never reuses it. Each result file carries a SHA-256 of
its own content: a truncated, hand-edited or otherwise corrupt file is detected, set aside as
`<name>.corrupt` (never deleted) and the run is redone. Long runs save a checkpoint (atomic
`torch.save`) after each epoch and resume from it when killed.

Layout under the output folder: `<experiment>/runs/<run_id>.json`,
`<experiment>/checkpoints/<run_id>.pt`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from benchmarks.store import environment, write_atomic, write_json_atomic

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


def _canonical(payload: Any) -> str:
    """The JSON text a checksum is taken over: sorted keys, no NaN (they are not JSON)."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "none"


@dataclass(frozen=True)
class RunSpec:
    """One run: `config` holds every other setting that changes its result (JSON values only)."""

    experiment: str
    method: str
    seed: int
    transform: str = "none"
    config: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "method": self.method,
            "seed": self.seed,
            "transform": self.transform,
            "config": json.loads(_canonical(dict(self.config))),
        }

    @property
    def run_id(self) -> str:
        digest = hashlib.sha256(_canonical(self.as_dict()).encode()).hexdigest()[:10]
        return f"{_slug(self.method)}__{_slug(self.transform)}__seed{self.seed}__{digest}"


class ResultStore:
    """Finished results and checkpoints of runs under one output folder."""

    def __init__(self, root: str | Path, /) -> None:
        self.root = Path(root)

    def result_path(self, spec: RunSpec, /) -> Path:
        return self.root / spec.experiment / "runs" / f"{spec.run_id}.json"

    def checkpoint_path(self, spec: RunSpec, /) -> Path:
        return self.root / spec.experiment / "checkpoints" / f"{spec.run_id}.pt"

    # -- results ---------------------------------------------------------------------------------

    def save(self, spec: RunSpec, result: Mapping[str, Any], /, *, elapsed_s: float) -> dict[str, Any]:
        """Write the finished run atomically and drop its checkpoint; returns the stored record."""
        record = {
            "format": FORMAT_VERSION,
            "spec": spec.as_dict(),
            "run_id": spec.run_id,
            "result": json.loads(_canonical(dict(result))),
            "elapsed_s": elapsed_s,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "environment": environment(),
        }
        record["sha256"] = hashlib.sha256(_canonical(record).encode()).hexdigest()
        write_json_atomic(self.result_path(spec), record)
        self.checkpoint_path(spec).unlink(missing_ok=True)
        return record

    def load(self, spec: RunSpec, /) -> dict[str, Any] | None:
        """The finished record of `spec`, or None (not run, or its file was corrupt and set aside)."""
        path = self.result_path(spec)
        if not path.exists():
            return None
        record = self._read_valid(path)
        if record is not None and record["spec"] != spec.as_dict():
            record = None
            problem = "was written for another run"
        else:
            problem = "is truncated or corrupt (its checksum does not match)"
        if record is None:
            aside = path.with_suffix(".json.corrupt")
            os.replace(path, aside)
            logger.warning("result file %s %s; moved it to %s and the run will be redone", path, problem, aside)
        return record

    def records(self, experiment: str, /) -> list[dict[str, Any]]:
        """Every valid finished record of `experiment` (corrupt files are skipped with a warning)."""
        folder = self.root / experiment / "runs"
        found = []
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            record = self._read_valid(path)
            if record is None:
                logger.warning("skipping corrupt result file %s (rerun the experiment to redo it)", path)
            else:
                found.append(record)
        return found

    @staticmethod
    def _read_valid(path: Path) -> dict[str, Any] | None:
        try:
            record = json.loads(path.read_text())
            claimed = record.pop("sha256")
            valid = claimed == hashlib.sha256(_canonical(record).encode()).hexdigest()
        except (OSError, ValueError, KeyError, AttributeError, TypeError):
            return None
        return record if valid and record.get("format") == FORMAT_VERSION else None

    # -- checkpoints -----------------------------------------------------------------------------

    def save_checkpoint(self, spec: RunSpec, state: Mapping[str, Any], /) -> None:
        """Atomically replace the run's checkpoint with `state` (anything `torch.save` takes)."""
        write_atomic(self.checkpoint_path(spec), lambda stream: torch.save(dict(state), stream))

    def load_checkpoint(self, spec: RunSpec, /) -> dict[str, Any] | None:
        """The run's last checkpoint, or None (none saved, or unreadable: then it restarts)."""
        path = self.checkpoint_path(spec)
        if not path.exists():
            return None
        try:
            # our own files: they hold optimiser and generator states, not only tensors
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:  # noqa: BLE001 - any unreadable checkpoint means: start over
            logger.warning("checkpoint %s is unreadable (%s); the run starts from scratch", path, error)
            return None


@dataclass
class Checkpoint:
    """What a run function gets to save and restore its progress."""

    store: ResultStore
    spec: RunSpec

    def load(self) -> dict[str, Any] | None:
        return self.store.load_checkpoint(self.spec)

    def save(self, state: Mapping[str, Any]) -> None:
        self.store.save_checkpoint(self.spec, state)


RunFunction = Callable[[RunSpec, Checkpoint], Mapping[str, Any]]


def run_sweep(
    specs: Iterable[RunSpec],
    run_one: RunFunction,
    store: ResultStore,
    /,
    *,
    show_progress: bool = True,
) -> list[dict[str, Any]]:
    """Run every spec not finished yet, in order, and return all their records.

    Finished runs (a valid result file with the same spec) are skipped; a run with a checkpoint
    resumes from it. A failing run raises after the runs before it have been saved.
    """
    specs = list(specs)
    ids = [spec.run_id for spec in specs]
    if len(set(ids)) != len(ids):
        raise ValueError("the sweep lists the same run twice")
    records: list[dict[str, Any]] = []
    skipped = 0
    with tqdm(specs, desc="runs", unit="run", disable=not show_progress) as bar:
        for spec in bar:
            record = store.load(spec)
            if record is None:
                bar.set_postfix_str(f"{spec.method} {spec.transform} seed {spec.seed}")
                began = time.perf_counter()
                result = run_one(spec, Checkpoint(store, spec))
                _check_json_ready(result, spec)
                record = store.save(spec, result, elapsed_s=time.perf_counter() - began)
            else:
                skipped += 1
            records.append(record)
    if skipped:
        logger.info("%d of %d runs were already finished and were not rerun", skipped, len(specs))
    return records


def _check_json_ready(result: Mapping[str, Any], spec: RunSpec) -> None:
    def walk(value: Any) -> None:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"run {spec.run_id} returned a non-finite number; store it as None or a string")
        if isinstance(value, Mapping):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    walk(result)
