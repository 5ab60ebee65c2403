"""The one function under both toy front ends: run tracks from starts and measure them.

`python -m toy_problems inspect` (any problem, any methods) and `python -m benchmarks toy` (the
DiBS-MTL toy, stored runs) differ only in what they choose and how they report; both call
`run_measured`, which advances every track as one batch (`toy_problems.runner.run_tracks`, split
by method over forked processes when asked) and measures every recorded iterate on the
untransformed problem: the losses, the Pareto-stationarity residual and, where the problem has
a front sample, the distance to it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm import tqdm

from toy_problems.base import Problem
from toy_problems.measures import distance_to_front, stationarity_residuals
from toy_problems.runner import Track, Trajectory, forked_starmap, run_tracks


@dataclass(frozen=True)
class MeasuredRun:
    """One track's trajectory and its measurements on the untransformed problem (float64, CPU).

    `losses` `[R, S, K]` and `residuals` `[R, S]` at every record; `distances` `[D, S]` at the
    records `distance_records` (None without a front); `seconds`: the track's share of its batch's
    wall time.
    """

    track: Track
    trajectory: Trajectory
    losses: Tensor
    residuals: Tensor
    distances: Tensor | None
    distance_records: Tensor
    seconds: float


def run_measured(
    problem: Problem,
    starts: Tensor,
    tracks: Sequence[Track],
    /,
    *,
    num_steps: int,
    lr: float,
    optimizer: str = "adam",
    record_every: int = 1,
    front: Tensor | None = None,
    distance_records: Tensor | None = None,
    processes: int = 1,
    progress: str | None = None,
) -> list[MeasuredRun]:
    """Every track from every start `[S, n]` for `num_steps` steps, measured; in `tracks`' order.

    The iterates are projected after every step where the problem has a `project` (box problems).
    `distance_records`: the record indices at which distances to `front` are measured (default:
    the last record). With `processes > 1` on the CPU, the tracks are split by method (a method's
    tracks share one instance) between that many forked processes, one torch thread each; a
    track's result does not depend on the other tracks of its batch, so the split changes nothing
    but the time. `progress`: the description of a progress bar over the steps (shown by the first
    process only), None for none.
    """
    if starts.device.type != "cpu" or processes <= 1:
        parts = [list(range(len(tracks)))]
    else:
        parts = split_by_method(tracks, processes, costs=method_step_costs(problem, starts, tracks))
    options = {
        "num_steps": num_steps,
        "lr": lr,
        "optimizer": optimizer,
        "record_every": record_every,
        "front": front,
        "distance_records": distance_records,
    }
    if len(parts) == 1:
        return _measure_part(problem, starts, list(tracks), options, progress)
    jobs = [
        (problem, starts, [tracks[i] for i in part], options, progress if index == 0 else None)
        for index, part in enumerate(parts)
    ]
    finished = forked_starmap(_measure_part, jobs, processes=len(parts))
    by_index = {i: run for part, runs in zip(parts, finished) for i, run in zip(part, runs)}
    return [by_index[i] for i in range(len(tracks))]


def _measure_part(
    problem: Problem, starts: Tensor, tracks: list[Track], options: dict, progress: str | None
) -> list[MeasuredRun]:
    """One batch of `run_measured` (module level: it may run in a forked process)."""
    began = time.perf_counter()
    with tqdm(
        total=options["num_steps"],
        desc=progress,
        unit="step",
        disable=progress is None,
        leave=False,
    ) as bar:
        trajectories = run_tracks(
            problem,
            starts,
            tracks,
            num_steps=options["num_steps"],
            lr=options["lr"],
            optimizer=options["optimizer"],
            record_every=options["record_every"],
            project=getattr(problem, "project", None),
            progress=lambda _: bar.update(),
        )
    seconds = (time.perf_counter() - began) / max(1, len(tracks))
    front = options["front"]
    runs = []
    for track, trajectory in zip(tracks, trajectories):
        losses, residuals = stationarity_residuals(
            problem, trajectory.points.to(torch.float64).cpu()
        )
        records = options["distance_records"]
        records = torch.tensor([losses.shape[0] - 1]) if records is None else records
        distances = None if front is None else distance_to_front(losses[records], front)
        runs.append(MeasuredRun(track, trajectory, losses, residuals, distances, records, seconds))
    return runs


def split_by_method(
    tracks: Sequence[Track], processes: int, /, *, costs: Mapping[str, float] | None = None
) -> list[list[int]]:
    """The track indices in at most `processes` parts, every track of one method in one part:
    methods dealt out, most expensive first, each to the part with the least cost so far (a
    method's cost is `costs[method]` per step for all its tracks, or its number of tracks)."""
    by_method: dict[str, list[int]] = {}
    for index, track in enumerate(tracks):
        by_method.setdefault(track.method, []).append(index)
    cost = {
        method: (costs[method] if costs is not None else len(members))
        for method, members in by_method.items()
    }
    parts: list[list[int]] = [[] for _ in range(max(1, min(processes, len(by_method))))]
    loads = [0.0] * len(parts)
    for method in sorted(by_method, key=lambda m: cost[m], reverse=True):
        lightest = loads.index(min(loads))
        parts[lightest].extend(by_method[method])
        loads[lightest] += cost[method]
    return [sorted(part) for part in parts if part]


def method_step_costs(
    problem: Problem, starts: Tensor, tracks: Sequence[Track], /, *, steps: int = 20
) -> dict[str, float]:
    """Seconds per step of each method's tracks (the methods' own calls, measured on fresh
    instances at the starts over `steps` calls after one warm-up call): what `split_by_method`
    balances. The measurement changes no run (the runs build their own instances)."""
    from toy_problems.runner import method_seconds_per_step

    by_method: dict[str, list[Track]] = {}
    for track in tracks:
        by_method.setdefault(track.method, []).append(track)
    return {
        method: method_seconds_per_step(problem, starts, members, steps=steps)
        for method, members in by_method.items()
    }
