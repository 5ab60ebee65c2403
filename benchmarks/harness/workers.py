"""`python -m benchmarks EXPERIMENT ... --workers N`: N processes sweep the same runs on one store.

Each worker is the same command with `--workers 1`, started as a child process; `run_sweep`
claims every run with an OS file lock, so the workers share the runs without running one twice,
and a run whose worker dies (even by `kill -9`) is taken up by another worker, resuming from its
checkpoint. When the workers have exited, this process runs the command once more in-process: it
finds every run stored (or runs what is still missing, e.g. if every worker was killed) and
prints and writes the summary. Worker output goes to `OUT/<experiment>/workers/worker-K.log`,
their process ids to `workers.json` beside it.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from core.errors import InvalidHyperparameterError
from toy_problems.store import write_json_atomic

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes sweeping the runs together on the same store (default: %(default)s); "
        "each run is claimed by a file lock, a killed worker's run is taken up by another",
    )


def worker_argv(argv: Sequence[str], /) -> list[str]:
    """`argv` without `--workers N` and `--fresh` (the parent deletes once, before the workers start)."""
    out: list[str] = []
    skip = False
    for item in argv:
        if skip:
            skip = False
            continue
        if item == "--workers":
            skip = True
            continue
        if item.startswith("--workers=") or item == "--fresh":
            continue
        out.append(item)
    return [*out, "--workers", "1"]


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
"""What torch's CPU thread pools read when a process starts."""


def worker_environment(
    index: int, workers: int, environ: Mapping[str, str], /, *, cores: int
) -> dict[str, str]:
    """Worker `index`'s environment: its number, and `cores // workers` threads (at least 1) unless
    the caller set the thread count. Each worker left at torch's default (all cores) made the
    workers and anything beside them fight over the cores: MultiMNIST runs took 30-360 s instead
    of 7-12 s beside other jobs on the 2-core machine (docs/DECISIONS.md)."""
    environment = {**environ, "MTL_WORKER": str(index), "MTL_WORKERS": str(workers)}
    threads = str(max(1, cores // workers))
    for variable in THREAD_VARIABLES:
        environment.setdefault(variable, threads)
    return environment


def launch(argv: Sequence[str], args: argparse.Namespace, runs: list) -> list[int]:
    """Delete the planned `runs` once under `--fresh`, start `args.workers` workers, wait; return their exit codes."""
    from benchmarks.harness.runs import ResultStore, file_locks_available

    if args.workers < 1:
        raise InvalidHyperparameterError(f"--workers must be at least 1, got {args.workers}")
    if not file_locks_available():
        raise InvalidHyperparameterError(
            f"--workers {args.workers} needs POSIX file locks (fcntl.flock), which this platform lacks; "
            "run with --workers 1, or on Linux/macOS"
        )
    if args.fresh:
        store = ResultStore(args.out)
        for run in runs:
            store.discard(run)
    folder = Path(args.out) / args.experiment / "workers"
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "benchmarks", *worker_argv(argv)]
    processes, logs = [], []
    try:
        for index in range(args.workers):
            log = (folder / f"worker-{index}.log").open("w")
            logs.append(log)
            environment = worker_environment(
                index, args.workers, os.environ, cores=os.cpu_count() or 1
            )
            processes.append(
                subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
            )
        write_json_atomic(
            folder / "workers.json", {"command": command, "pids": [p.pid for p in processes]}
        )
        print(f"{args.workers} workers sweeping {len(runs)} runs; logs in {folder}", flush=True)
        codes = [process.wait() for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:  # interrupted here: do not leave workers behind
                process.kill()
        for log in logs:
            log.close()
    for index, code in enumerate(codes):
        if code != 0:
            print(
                f"worker {index} exited with status {code} (see {folder / f'worker-{index}.log'}); its unfinished run "
                "was taken up by another worker or is run now",
                file=sys.stderr,
            )
    return codes
