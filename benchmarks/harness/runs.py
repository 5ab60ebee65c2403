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

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from core.errors import MTLInputError
from core.registry import (
    NAMING_GENERATION,
    RENAMED,
    REUSED_NAMES,
    MethodSpec,
    legacy_specs,
    parse_method_spec,
)
from toy_problems.store import environment, write_atomic, write_json_atomic

try:  # POSIX file locks; elsewhere (Windows) one process per store, and --workers is refused
    import fcntl
except ImportError:  # pragma: no cover - exercised by monkeypatching `fcntl` to None
    fcntl = None

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


def legacy_method_names(method: str, /) -> list[str]:
    """The names a method spec was stored under before the registry's renames (none for run names
    that are not method specs, e.g. `stl:TASK`)."""
    try:
        return legacy_specs(method)
    except MTLInputError:
        return []


def _names_another_method(record: Mapping[str, Any], old_name: str | None = None, /) -> bool:
    """Whether a stored record's method name meant another method when it was stored
    (`core.registry.REUSED_NAMES`: `imtl` was IMTL-G's name in results of naming generation 1).
    With `old_name` (a migration from that old name): whether the record is of the old meaning;
    a name that is only an alias (`nsum`) always is."""
    try:
        name = parse_method_spec(record["spec"]["method"]).name
    except (MTLInputError, KeyError, TypeError):
        return False
    old_meaning = name in REUSED_NAMES and record.get("naming", 1) < REUSED_NAMES[name]
    return old_meaning or (old_name is not None and name not in REUSED_NAMES)


def file_locks_available() -> bool:
    """Whether runs can be claimed across processes (POSIX `flock`), i.e. whether `--workers` works."""
    return fcntl is not None


class ResultStore:
    """Finished results and checkpoints of runs under one output folder.

    `read_only=True` reads without touching the folder (a summary of a finished store, a read-only
    mount): a run under an old method name is migrated in memory only, a corrupt file is reported
    and left where it is, and `save`/`discard` refuse."""

    def __init__(self, root: str | Path, /, *, read_only: bool = False) -> None:
        self.root = Path(root)
        self.read_only = read_only

    def _check_writable(self, action: str) -> None:
        if self.read_only:
            raise RuntimeError(f"cannot {action} in a read-only result store ({self.root})")

    def result_path(self, spec: RunSpec, /) -> Path:
        return self.root / spec.experiment / "runs" / f"{spec.run_id}.json"

    def checkpoint_path(self, spec: RunSpec, /) -> Path:
        return self.root / spec.experiment / "checkpoints" / f"{spec.run_id}.pt"

    # -- results ---------------------------------------------------------------------------------

    def save(
        self, spec: RunSpec, result: Mapping[str, Any], /, *, elapsed_s: float
    ) -> dict[str, Any]:
        """Write the finished run atomically and drop its checkpoint; returns the stored record."""
        self._check_writable("save a run")
        record = {
            "format": FORMAT_VERSION,
            "naming": NAMING_GENERATION,
            "spec": spec.as_dict(),
            "run_id": spec.run_id,
            "result": json.loads(_canonical(dict(result))),
            "elapsed_s": elapsed_s,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "environment": environment(),
        }
        record["sha256"] = hashlib.sha256(_canonical(record).encode()).hexdigest()
        write_json_atomic(
            self.result_path(spec), record, indent=None
        )  # trajectories: thousands of numbers
        self.checkpoint_path(spec).unlink(missing_ok=True)
        return record

    def load(self, spec: RunSpec, /) -> dict[str, Any] | None:
        """The finished record of `spec`, or None (not run, or its file was corrupt and set aside).

        A run stored under an old method name (`legacy_method_names`: `dibsmtl_multi_step` for
        `dibsmtl:steps=5`, `nsum`, `imtl`) is migrated: its record is written again under the
        current run id, with `migrated_from` naming the old one, and the old file is kept.
        """
        path = self.result_path(spec)
        if not path.exists():
            return self._migrate(spec)
        record = self._read_valid(path)
        if record is not None and record["spec"] != spec.as_dict():
            record = None
            problem = "was written for another run"
        else:
            problem = "is truncated or corrupt (its checksum does not match)"
        if record is not None and _names_another_method(
            record
        ):  # stored before its name changed meaning
            self._rehome(spec, record)
            return None
        if record is None and self.read_only:
            logger.warning("result file %s %s; left as it is (read-only store)", path, problem)
        elif record is None:
            aside = path.with_suffix(".json.corrupt")
            try:
                os.replace(path, aside)
            except FileNotFoundError:  # another worker set it aside first
                return None
            logger.warning(
                "result file %s %s; moved it to %s and the run will be redone", path, problem, aside
            )
        return record

    def discard(self, spec: RunSpec, /) -> None:
        """Forget the run so that it is redone (`--fresh`): its result, its checkpoint and any result
        stored under an old name of its method (which `load` would otherwise migrate back)."""
        self._check_writable("discard a run")
        self.result_path(spec).unlink(missing_ok=True)
        self.checkpoint_path(spec).unlink(missing_ok=True)
        for old_name in legacy_method_names(spec.method):
            self.result_path(
                RunSpec(spec.experiment, old_name, spec.seed, spec.transform, spec.config)
            ).unlink(missing_ok=True)

    def _migrate(self, spec: RunSpec) -> dict[str, Any] | None:
        for old_name in legacy_method_names(spec.method):
            old = RunSpec(spec.experiment, old_name, spec.seed, spec.transform, spec.config)
            old_path = self.result_path(old)
            record = self._read_valid(old_path) if old_path.exists() else None
            if (
                record is None
                or record["spec"] != old.as_dict()
                or not _names_another_method(record, old_name)
            ):
                continue
            record.update(spec=spec.as_dict(), run_id=spec.run_id, migrated_from=old.run_id)
            if self.read_only:
                return record
            write_json_atomic(
                self.result_path(spec),
                {**record, "sha256": hashlib.sha256(_canonical(record).encode()).hexdigest()},
                indent=None,
            )
            logger.info(
                "run %s was stored as %s (method %r); migrated to the current name",
                spec.run_id,
                old.run_id,
                old_name,
            )
            return record
        return None

    def _rehome(self, spec: RunSpec, record: dict[str, Any]) -> None:
        """A record found under `spec`'s run id whose method name meant another method when it was
        stored (`imtl`, IMTL-G's old name): written under the run id of that method's current name
        (unless one is there), so that running `spec` now, which overwrites the file, loses nothing."""
        if self.read_only:
            return
        name = parse_method_spec(spec.method)
        current = str(MethodSpec(RENAMED[name.name], name.hyperparameters))
        target = RunSpec(spec.experiment, current, spec.seed, spec.transform, spec.config)
        if not self.result_path(target).exists():
            moved = {
                **record,
                "spec": target.as_dict(),
                "run_id": target.run_id,
                "migrated_from": spec.run_id,
            }
            moved.pop("sha256", None)
            write_json_atomic(
                self.result_path(target),
                {**moved, "sha256": hashlib.sha256(_canonical(moved).encode()).hexdigest()},
            )
            logger.info(
                "run %s was IMTL-G's under its old name %r; migrated to %s",
                spec.run_id,
                name.name,
                target.run_id,
            )

    def records(self, experiment: str, /) -> list[dict[str, Any]]:
        """Every valid finished record of `experiment` (corrupt files are skipped with a warning)."""
        folder = self.root / experiment / "runs"
        found = []
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            record = self._read_valid(path)
            if record is None:
                logger.warning(
                    "skipping corrupt result file %s (rerun the experiment to redo it)", path
                )
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

    # -- claims: several worker processes on one store -------------------------------------------

    def lock_path(self, spec: RunSpec, /) -> Path:
        return self.root / spec.experiment / "locks" / f"{spec.run_id}.lock"

    def journal_path(self, experiment: str, /) -> Path:
        return self.root / experiment / "journal.jsonl"

    @contextlib.contextmanager
    def claim(self, spec: RunSpec, /, *, wait: bool) -> Iterator[bool]:
        """Hold the run's lock for the block: yields True when this process holds it, False when
        another live process does (only with `wait=False`). The lock is an OS file lock (`flock`),
        so the kernel releases it when its holder dies, even by `kill -9`: a run is never left
        claimed by a dead worker."""
        if fcntl is None:  # no OS file locks here: this process is the store's only writer
            yield True
            return
        path = self.lock_path(spec)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def journal(self, spec: RunSpec, event: str, /) -> None:
        """Append `{event, run_id, pid, time}` to the experiment's journal: who started and who
        finished each run (one short line per write, appended atomically by the OS)."""
        path = self.journal_path(spec.experiment)
        path.parent.mkdir(parents=True, exist_ok=True)
        line = (
            json.dumps(
                {"event": event, "run_id": spec.run_id, "pid": os.getpid(), "time": time.time()}
            )
            + "\n"
        )
        with path.open("a") as handle:
            handle.write(line)

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
            # tensors and plain values only (model, optimiser, scheduler and method state_dicts)
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - any unreadable checkpoint means: start over
            logger.warning(
                "checkpoint %s is unreadable (%s); the run starts from scratch", path, error
            )
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
    data_parallel: Any | None = None,
) -> list[dict[str, Any]]:
    """Run every spec not finished yet and return all their records, in the order of `specs`.

    Finished runs (a valid result file with the same spec) are skipped; a run with a checkpoint
    resumes from it. Several processes may sweep the same specs on one store at once (`python -m
    benchmarks ... --workers N`): each run is claimed with an OS file lock while it runs, so no
    two processes run it together; a run another process holds is taken up last, once its lock is
    free: its result is then read, or, if that process died, the run is resumed here. Every start
    and finish goes to the experiment's `journal.jsonl`. A failing run raises after the runs
    before it have been saved.

    `data_parallel` (a `benchmarks.harness.parallel.DataParallel`): every rank calls this with the
    same specs; rank 0 decides and announces each run it starts, the other ranks run it with it
    (their `run_one` takes part in the collectives) and return an empty list; only rank 0 writes.
    """
    specs = list(specs)
    ids = [spec.run_id for spec in specs]
    if len(set(ids)) != len(ids):
        raise ValueError("the sweep lists the same run twice")
    if data_parallel is not None and not data_parallel.leader:
        return _follow(specs, run_one, store, data_parallel)
    announce = data_parallel.broadcast if data_parallel is not None else None
    records: dict[str, dict[str, Any]] = {}
    held_elsewhere: list[RunSpec] = []
    skipped = 0
    with tqdm(total=len(specs), desc="runs", unit="run", disable=not show_progress) as bar:
        for spec in specs:
            record = store.load(spec)
            if record is None:
                with store.claim(spec, wait=False) as mine:
                    if mine:
                        bar.set_postfix_str(f"{spec.method} {spec.transform} seed {spec.seed}")
                        record = _run_claimed(spec, run_one, store, announce)
                if record is None:
                    held_elsewhere.append(spec)
                    continue
            else:
                skipped += 1
            records[spec.run_id] = record
            bar.update()
        for (
            spec
        ) in held_elsewhere:  # another worker holds it: wait for its lock, then read or resume
            with store.claim(spec, wait=True):
                records[spec.run_id] = _run_claimed(spec, run_one, store, announce)
            bar.update()
    if announce is not None:
        announce(None)  # the followers stop
    if skipped:
        logger.info("%d of %d runs were already finished and were not rerun", skipped, len(specs))
    return [records[run_id] for run_id in ids]


BatchFunction = Callable[[list[RunSpec]], list[Mapping[str, Any]]]


def run_sweep_batched(
    specs: Iterable[RunSpec],
    run_many: BatchFunction,
    store: ResultStore,
    /,
    *,
    batch_size: int | None = None,
) -> list[dict[str, Any]]:
    """`run_sweep` for runs that are computed together: the unfinished runs this process can claim
    go to `run_many(claimed)` calls (each returns its runs' results in order) of at most
    `batch_size` runs (all at once by default), and each result is saved as its own record, with
    its batch's time shared among them (`elapsed_s`).

    Finished runs are read, not rerun; runs that another process holds (`--workers`: each worker
    claims batches of `batch_size` until none is left) are waited for and read, or, if that
    process died, run here. A batch that fails saves nothing of itself (earlier batches are kept)
    and raises.
    """
    specs = list(specs)
    ids = [spec.run_id for spec in specs]
    if len(set(ids)) != len(ids):
        raise ValueError("the sweep lists the same run twice")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    records, pending = _finished_and_pending(specs, store)
    if len(pending) < len(specs):
        logger.info(
            "%d of %d runs were already finished and were not rerun",
            len(specs) - len(pending),
            len(specs),
        )
    held_elsewhere = []
    while pending:
        with contextlib.ExitStack() as claims:
            mine, rest = [], []
            for spec in pending:
                if (batch_size is None or len(mine) < batch_size) and claims.enter_context(
                    store.claim(spec, wait=False)
                ):
                    mine.append(spec)
                else:
                    rest.append(spec)
            records.update(_run_batch(mine, run_many, store))
        if not mine:  # everything left is held by other workers
            held_elsewhere = rest
            break
        pending = rest
    for spec in held_elsewhere:  # another worker holds it: wait for its lock, then read or run it
        with store.claim(spec, wait=True):
            records.update(_run_batch([spec], run_many, store))
    return [records[run_id] for run_id in ids]


def _finished_and_pending(
    specs: list[RunSpec], store: ResultStore
) -> tuple[dict[str, dict[str, Any]], list[RunSpec]]:
    """The stored records of the finished specs (by run id) and the specs still to run, in order."""
    records, pending = {}, []
    for spec in specs:
        record = store.load(spec)
        if record is None:
            pending.append(spec)
        else:
            records[spec.run_id] = record
    return records, pending


def _run_batch(
    specs: list[RunSpec], run_many: BatchFunction, store: ResultStore
) -> dict[str, dict[str, Any]]:
    """Run the claimed `specs` together (those another worker finished meanwhile are read)."""
    records, todo = _finished_and_pending(specs, store)
    if not todo:
        return records
    for spec in todo:
        store.journal(spec, "start")
    began = time.perf_counter()
    results = list(run_many(todo))
    if len(results) != len(todo):
        raise ValueError(f"the batch function returned {len(results)} results for {len(todo)} runs")
    share = (time.perf_counter() - began) / len(todo)
    for spec, result in zip(todo, results):
        _check_json_ready(result, spec)
    for spec, result in zip(todo, results):
        records[spec.run_id] = store.save(spec, result, elapsed_s=share)
        store.journal(spec, "finish")
    return records


def _run_claimed(
    spec: RunSpec,
    run_one: RunFunction,
    store: ResultStore,
    announce: Callable[[Any], Any] | None = None,
) -> dict[str, Any]:
    """Run `spec` (its lock held by the caller) unless another worker finished it meanwhile."""
    record = store.load(spec)
    if record is not None:
        return record
    if announce is not None:
        announce(spec.run_id)
    store.journal(spec, "start")
    began = time.perf_counter()
    result = run_one(spec, Checkpoint(store, spec))
    _check_json_ready(result, spec)
    record = store.save(spec, result, elapsed_s=time.perf_counter() - began)
    store.journal(spec, "finish")
    return record


def _follow(
    specs: list[RunSpec], run_one: RunFunction, store: ResultStore, data_parallel: Any
) -> list[dict[str, Any]]:
    """A non-zero rank of a data-parallel sweep: run what rank 0 announces, write nothing."""
    by_id = {spec.run_id: spec for spec in specs}
    while (run_id := data_parallel.broadcast(None)) is not None:
        run_one(by_id[run_id], Checkpoint(store, by_id[run_id]))
    return []


def _check_json_ready(result: Mapping[str, Any], spec: RunSpec) -> None:
    def walk(value: Any) -> None:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(
                f"run {spec.run_id} returned a non-finite number; store it as None or a string"
            )
        if isinstance(value, Mapping):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    walk(result)
