"""Fault-tolerant sweeps: several worker processes on one result store run every run exactly once;
`kill -9` of a worker, or of the whole sweep, followed by a rerun, still finishes every run exactly
once with the results of an uninterrupted sweep; claims are OS file locks that die with their
holder."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from benchmarks.__main__ import main
from benchmarks.harness.runs import ResultStore, RunSpec, run_sweep
from benchmarks.harness.workers import worker_argv, worker_environment

SWEEP = [
    "toy",
    "--methods",
    "dibsmtl,ls,normalized_sum",
    "--transforms",
    "none,0:power:4",
    "--steps",
    "1200",
    "--quiet",
]
TIMING = {"seconds"}  # the only result fields that differ between identical runs


def _results(out: Path) -> dict[str, dict]:
    records = ResultStore(out).records("toy")
    return {r["run_id"]: {k: v for k, v in r["result"].items() if k not in TIMING} for r in records}


def _journal(out: Path) -> list[dict]:
    path = out / "toy" / "journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _start(out: Path, workers: int) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "benchmarks",
        *SWEEP,
        "--out",
        str(out),
        "--workers",
        str(workers),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, env=env
    )


def _wait_for(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the sweep")
        time.sleep(0.05)


def _assert_each_run_finished_once(out: Path, expected: dict) -> None:
    finishes = Counter(event["run_id"] for event in _journal(out) if event["event"] == "finish")
    assert set(finishes) == set(expected) and set(finishes.values()) == {1}, finishes
    assert _results(out) == expected


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The uninterrupted sweep, one process."""
    out = tmp_path_factory.mktemp("reference")
    assert main([*SWEEP, "--out", str(out)]) == 0
    results = _results(out)
    assert len(results) == 6
    return results


@pytest.mark.slow
def test_kill_9_of_one_worker_mid_run_is_taken_up_by_the_other(tmp_path, reference):
    sweep = _start(tmp_path, workers=2)
    workers_file = tmp_path / "toy" / "workers" / "workers.json"
    _wait_for(workers_file.exists)
    victim = json.loads(workers_file.read_text())["pids"][0]

    def victim_inside_a_run() -> bool:
        """Started a run, has not finished it, and has not saved its result either (the result is
        saved just before the finish is journaled)."""
        events = [e for e in _journal(tmp_path) if e["pid"] == victim]
        counts = Counter(e["event"] for e in events)
        if counts["start"] <= counts["finish"]:
            return False
        last = [e["run_id"] for e in events if e["event"] == "start"][-1]
        return not (tmp_path / "toy" / "runs" / f"{last}.json").exists()

    while (
        True
    ):  # freeze the victim, then look: a frozen process cannot finish its run under our eyes
        _wait_for(victim_inside_a_run)
        os.kill(victim, signal.SIGSTOP)
        if victim_inside_a_run():
            os.kill(victim, signal.SIGKILL)  # mid-run
            break
        os.kill(
            victim, signal.SIGCONT
        )  # it finished the run just before the stop: try the next one
    output = sweep.communicate(timeout=300)[0].decode()
    assert sweep.returncode == 0, output
    assert "worker 0 exited with status -9" in output
    started = [
        e["run_id"] for e in _journal(tmp_path) if e["event"] == "start" and e["pid"] == victim
    ]
    finished = [
        e["run_id"] for e in _journal(tmp_path) if e["event"] == "finish" and e["pid"] == victim
    ]
    # the toy computes a worker's runs in batches of half the runs: the victim died inside a batch
    assert 1 <= len(started) - len(finished) <= 3, (
        "the killed worker should have died inside a batch of runs"
    )
    _assert_each_run_finished_once(tmp_path, reference)


@pytest.mark.slow
def test_kill_9_of_the_whole_sweep_then_a_rerun_finishes_every_run_once(tmp_path, reference):
    sweep = _start(tmp_path, workers=2)
    _wait_for(lambda: sum(e["event"] == "finish" for e in _journal(tmp_path)) >= 2)
    os.killpg(sweep.pid, signal.SIGKILL)  # the parent and both workers
    sweep.wait(timeout=60)
    assert 2 <= len(_results(tmp_path)) < 6
    rerun = _start(tmp_path, workers=2)
    output = rerun.communicate(timeout=300)[0].decode()
    assert rerun.returncode == 0, output
    _assert_each_run_finished_once(tmp_path, reference)


def _hold(lock: str, ready, release) -> None:
    import fcntl

    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        ready.set()
        release.wait(30)


def test_a_run_held_by_a_live_process_is_waited_for_and_a_dead_holders_run_is_taken_up(tmp_path):
    store = ResultStore(tmp_path)
    specs = [RunSpec("exp", "m", seed) for seed in range(3)]
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold, args=(str(store.lock_path(specs[0])), ready, release))
    store.lock_path(specs[0]).parent.mkdir(parents=True)
    holder.start()
    assert ready.wait(30)
    order = []

    def run_one(spec, checkpoint):
        order.append(spec.seed)
        if spec.seed == 2:
            os.kill(holder.pid, signal.SIGKILL)  # the holder dies without finishing run 0
        return {"seed": spec.seed}

    records = run_sweep(specs, run_one, store, show_progress=False)
    holder.join(30)
    assert order == [1, 2, 0]  # run 0 was held elsewhere: taken up last, once its holder was gone
    assert [r["result"]["seed"] for r in records] == [0, 1, 2]  # returned in the order of the specs


def test_worker_argv_drops_workers_and_fresh():
    assert worker_argv(["toy", "--workers", "3", "--fresh", "--quick"]) == [
        "toy",
        "--quick",
        "--workers",
        "1",
    ]
    assert worker_argv(["toy", "--workers=2"]) == ["toy", "--workers", "1"]


def test_zero_workers_is_a_clear_error(tmp_path, capsys):
    assert main([*SWEEP, "--out", str(tmp_path), "--workers", "0"]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err


def test_without_file_locks_one_process_sweeps_and_workers_are_refused(
    tmp_path, capsys, monkeypatch
):
    """Where `fcntl` is missing (Windows) a sweep still runs in one process; --workers N says why not."""
    from benchmarks.harness import runs

    monkeypatch.setattr(runs, "fcntl", None)
    small = [
        "toy",
        "--methods",
        "ls,dibsmtl",
        "--transforms",
        "none",
        "--steps",
        "50",
        "--quiet",
        "--out",
        str(tmp_path),
    ]
    assert main([*small, "--workers", "2"]) == 2
    assert "needs POSIX file locks" in capsys.readouterr().err
    assert not (tmp_path / "toy" / "workers").exists()  # refused before any worker started
    assert main(small) == 0
    assert (
        list((tmp_path / "toy" / "runs").glob("*.json"))
        and not (tmp_path / "toy" / "locks").exists()
    )


def test_workers_share_the_cores_unless_the_caller_set_the_threads():
    """Each of N workers gets cores // N torch threads (at least 1), so that N workers do not run
    N x cores threads; a thread count the caller exported is kept."""
    two_of_two = worker_environment(1, 2, {"PATH": "/bin"}, cores=2)
    assert two_of_two["OMP_NUM_THREADS"] == two_of_two["MKL_NUM_THREADS"] == "1"
    assert (
        two_of_two["MTL_WORKER"] == "1"
        and two_of_two["MTL_WORKERS"] == "2"
        and two_of_two["PATH"] == "/bin"
    )
    assert worker_environment(0, 2, {}, cores=16)["OMP_NUM_THREADS"] == "8"
    assert worker_environment(0, 4, {}, cores=2)["OMP_NUM_THREADS"] == "1"
    assert worker_environment(0, 2, {"OMP_NUM_THREADS": "3"}, cores=2)["OMP_NUM_THREADS"] == "3"
