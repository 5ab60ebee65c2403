"""`python -m toy_problems inspect`: watch task-balancing methods converge on any toy problem.

Every method runs from every starting point as one batched computation per method
(`toy_problems.runner.run_toy`; stateful methods keep their state per start). Methods are
`name:key=value` specs (`--methods dibsmtl:steps=5,cagrad:c=0.5`). Optional strictly increasing
transforms of single task losses (`--transforms TASK:KIND[:PARAM],...`) change what the methods
see; everything is also reported on the untransformed losses. The command prints a table of the
endpoints and writes, into one folder of the result store `--out` (OUT/toy_inspect/PROBLEM/<settings>),
a JSON result and PNG figures (see `--help`).

`python -m toy_problems --list` lists the problems, then the methods.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from core.errors import InvalidHyperparameterError, LossDomainError, MTLInputError
from core.registry import available_methods, canonical_spec, make_method, parse_method_specs
from core.transforms import TRANSFORM_SPEC_FORMS, MonotoneTransform
from toy_problems import (
    ZDT1,
    ZDT2,
    ZDT3,
    Bargaining1D,
    ConvexQuadratic,
    FonsecaFleming,
    Problem,
    RandomNonconvex,
    TwoTaskToy,
    ZDT2Variant,
)
from toy_problems.command_config import (
    LONG_COMMAND_SECONDS,
    MACHINE,
    CommandConfig,
    duration_text,
    escape_help,
    method_listing,
)
from toy_problems.measured import run_measured
from toy_problems.runner import OPTIMIZERS, Track, Trajectory, make_optimizer, run_tracks
from toy_problems.store import unwritable_reason
from toy_problems.task_transforms import TaskTransform, combine, parse_task_transform

logger = logging.getLogger(__name__)

BALANCE_TOLERANCE = 0.05
"""Endpoints whose normalised task positions differ by less than this are called "balanced"."""
FRONT_SAMPLES = {2: 2000}
"""Points of the dense `pareto_front()` sample per number of tasks (K >= 3: `FRONT_SAMPLES_MANY`)."""
FRONT_SAMPLES_MANY = 20_000
MAX_STORED_RECORDS = 400
"""Records per start kept in the JSON file and drawn in the figures (always including the first and last)."""
MAX_RECORDED_NUMBERS = 25_000_000
"""Above this many recorded numbers per method (records x starts x (n_var + n_obj)) the iterates
are recorded every few steps instead of every step (the JSON says how often)."""

DOMINANCE_DEFINITION = (
    "normalised position u_i = (f_i(end) - ideal_i) / (nadir_i - ideal_i) on the untransformed losses, with "
    "ideal_i and nadir_i the smallest and largest value of task i on the analytic Pareto front (problems "
    "without one: over the endpoints of every run of the invocation); the favoured (dominating) task is the "
    f"one with the smallest u_i, i.e. the task that ended closest to its own best value, or 'balanced' if "
    f"max u - min u < {BALANCE_TOLERANCE}"
)
RESIDUAL_DEFINITION = (
    "stationarity residual min_{a in simplex} ||sum_i a_i grad f_i(x)|| of the untransformed losses "
    "(core.pareto.stationarity of the Gramian), 0 exactly at Pareto-stationary points; on box-constrained "
    "problems (ZDT1-3, whose iterates are projected onto the box after every step) a coordinate at a bound "
    "where every task's gradient points out of the box is left out (box KKT), otherwise the residual "
    "never vanishes on their Pareto sets"
)


class UsageError(Exception):
    """A bad command-line argument: reported as one line on stderr, exit status 2."""


# ----------------------------------------------------------------------------- problem registry


@dataclass(frozen=True)
class ProblemEntry:
    """How the CLI builds one problem: a factory taking the keyword sizes in `defaults`."""

    summary: str
    factory: Callable[..., Problem]
    defaults: dict[str, int] = field(default_factory=dict)
    """Overridable settings (`n_var`, `n_obj`, `seed`) and their documented defaults."""

    def build(self, name: str, overrides: dict[str, int | None]) -> Problem:
        given = {key: value for key, value in overrides.items() if value is not None}
        fixed = [key for key in given if key not in self.defaults]
        if fixed:
            flags = ", ".join(f"--{_FLAG_OF[key]}" for key in fixed)
            can = {
                key: sorted(n for n, e in PROBLEMS.items() if key in e.defaults) for key in fixed
            }
            where = "; ".join(
                f"--{_FLAG_OF[key]} applies to: {', '.join(names)}" for key, names in can.items()
            )
            raise UsageError(f"problem {name!r} does not take {flags} ({where})")
        try:
            return self.factory(**(self.defaults | given))
        except InvalidHyperparameterError as error:
            raise UsageError(f"problem {name!r}: {error}") from None


_FLAG_OF = {"n_var": "n-var", "n_obj": "n-obj", "seed": "problem-seed"}

PROBLEMS: dict[str, ProblemEntry] = {
    "two_task_toy": ProblemEntry(
        "the CAGrad / Nash-MTL / DiBS-MTL two-task toy, its 5 published starts", TwoTaskToy
    ),
    "bargaining": ProblemEntry(
        "DiBS Example 2: x^2 vs (x - 1)^2 on [0, 1]", lambda: Bargaining1D(first_power=2)
    ),
    "bargaining_x4": ProblemEntry(
        "DiBS Example 1 variant: x^4 vs (x - 1)^2 on [0, 1]", lambda: Bargaining1D(first_power=4)
    ),
    "zdt1": ProblemEntry("ZDT1 on [0, 1]^n, convex front (projected steps)", ZDT1, {"n_var": 30}),
    "zdt2": ProblemEntry("ZDT2 on [0, 1]^n, concave front (projected steps)", ZDT2, {"n_var": 30}),
    "zdt3": ProblemEntry(
        "ZDT3 on [0, 1]^n, disconnected front (projected steps)", ZDT3, {"n_var": 30}
    ),
    "zdt2_variant": ProblemEntry(
        "the unconstrained ZDT2 variant of Ma et al. (2020) on R^3", ZDT2Variant
    ),
    "fonseca_fleming": ProblemEntry(
        "Fonseca-Fleming on R^n, concave front", FonsecaFleming, {"n_var": 2}
    ),
    "quadratic": ProblemEntry(
        "seeded random strongly convex quadratics (ConvexQuadratic.random, condition 10)",
        lambda n_var, n_obj, seed: ConvexQuadratic.random(n_var, n_obj, seed=seed),
        {"n_var": 4, "n_obj": 3, "seed": 0},
    ),
    "nonconvex": ProblemEntry(
        "seeded random smooth nonconvex coercive problem (RandomNonconvex), no analytic front",
        lambda n_var, n_obj, seed: RandomNonconvex(n_var, n_obj, seed=seed),
        {"n_var": 4, "n_obj": 3, "seed": 0},
    ),
}
"""The problems of `toy_problems`, by command-line name."""


def build_problem(
    name: str, *, n_var: int | None = None, n_obj: int | None = None, seed: int | None = None
) -> Problem:
    """The problem registered as `name`, with optional size and seed overrides (UsageError if unknown)."""
    if name not in PROBLEMS:
        raise UsageError(f"unknown problem {name!r}; choose one of: {', '.join(PROBLEMS)}")
    problem = PROBLEMS[name].build(name, {"n_var": n_var, "n_obj": n_obj, "seed": seed})
    if problem.n_obj < 2:
        raise UsageError(
            f"problem {name!r} with {problem.n_obj} task: --n-obj must be at least 2 for a multi-task problem"
        )
    return problem


def listing() -> str:
    """The text of `--list`: every problem with its sizes and analytic sets, then every method."""
    lines = [
        f"{'problem':<16} {'n_var':>5} {'n_obj':>5}  {'analytic set/front':<18} description",
        "-" * 100,
    ]
    for name, entry in PROBLEMS.items():
        problem = entry.factory(**entry.defaults)
        sizes = ", ".join(f"--{_FLAG_OF[key]} {value}" for key, value in entry.defaults.items())
        description = entry.summary + (f" (defaults: {sizes})" if sizes else "")
        lines.append(
            f"{name:<16} {problem.n_var:>5} {problem.n_obj:>5}  {'yes' if problem.has_pareto_set else 'no':<18} {description}"
        )
    return "\n".join([*lines, "", *method_listing()])


# ----------------------------------------------------------------------------- argument parsing


def parse_transforms(specs: list[str], num_tasks: int) -> dict[int, MonotoneTransform]:
    """`TASK:SPEC` strings (`toy_problems.task_transforms`) -> {task index: transform}; UsageError
    on anything invalid, or on two transforms of one task."""
    try:
        parsed = combine(
            [t for t in (parse_task_transform(spec, num_tasks) for spec in specs) if t is not None]
        )
    except InvalidHyperparameterError as error:
        raise UsageError(f"--transforms: {error}") from None
    return {t.task: t.transform for t in parsed}


def transformed_objectives(
    problem: Problem, transforms: dict[int, MonotoneTransform]
) -> Callable[[Tensor], Tensor]:
    """The losses the methods see: `h_i(f_i(x))` for transformed tasks, `f_i(x)` for the others."""
    if not transforms:
        return problem

    def objectives(x: Tensor) -> Tensor:
        values = problem(x)
        return torch.stack(
            [
                transforms[i](values[..., i]) if i in transforms else values[..., i]
                for i in range(values.shape[-1])
            ],
            dim=-1,
        )

    return objectives


@dataclass(frozen=True)
class InspectConfig(CommandConfig):
    """What `inspect` runs: one field per flag of `python -m toy_problems inspect`, with the same
    names, meanings and defaults (`--n-var` is `n_var`, repeated flags are tuples)."""

    problem: str
    methods: str = "dibsmtl,ls,mgda"
    transform: tuple[str, ...] = ()
    starts: str = "default"
    start: tuple[str, ...] = ()
    seed: int = 0
    steps: int = 2000
    optimizer: str = "adam"
    lr: float = 1e-3
    dtype: str = "float64"
    device: str = field(default_factory=lambda: "cuda" if torch.cuda.is_available() else "cpu")
    n_var: int | None = None
    n_obj: int | None = None
    problem_seed: int | None = None
    quiet: bool = True


@dataclass
class InspectResult:
    """What `run` returns: the `inspect.json` payload, the figures by file name, the printed table."""

    payload: dict
    figures: dict[str, Any]
    table: str


def parse_starts(
    config: InspectConfig, problem: Problem, *, dtype: torch.dtype, device: str
) -> Tensor:
    """The starting points `[S, n_var]`: explicit `--start`s (inside the bounds), the problem's
    defaults, or N seeded uniform draws from its bounds."""
    if config.start:
        points = []
        for text in config.start:
            try:
                point = [float(v) for v in text.split(",")]
            except ValueError:
                point = []
            if len(point) != problem.n_var or not all(math.isfinite(v) for v in point):
                raise UsageError(
                    f"--start {text!r}: expected {problem.n_var} comma-separated finite numbers"
                )
            points.append(point)
        starts = torch.tensor(points, dtype=torch.float64)
        lower, upper = problem.lower_upper()
        outside = ((starts < lower) | (starts > upper)).any(dim=-1)
        if bool(outside.any()):
            bad = config.start[int(outside.nonzero()[0, 0])]
            raise UsageError(
                f"--start {bad!r} lies outside the problem's bounds [{_fmt_vec(lower)}, {_fmt_vec(upper)}]"
            )
        return starts.to(dtype=dtype, device=device)
    if config.starts == "default":
        return problem.default_starts(dtype=dtype, device=device)
    try:
        count = int(config.starts)
    except ValueError:
        count = 0
    if count < 1:
        raise UsageError(f"--starts {config.starts!r}: expected 'default' or a positive integer")
    return problem.starts(
        count, generator=torch.Generator().manual_seed(config.seed), dtype=dtype, device=device
    )


def build_method(spec: str, num_tasks: int, *, seed: int, device: str):
    """A fresh method from a spec for the toy runs; random methods draw from a generator seeded
    with `seed` (the runner treats every step as an epoch: DWA's ratios are those of consecutive
    steps)."""
    return make_method(
        spec, num_tasks=num_tasks, generator=torch.Generator(device=device).manual_seed(seed)
    )


# ----------------------------------------------------------------------------- measurements


def normalised_positions(losses: Tensor, ideal: Tensor, nadir: Tensor) -> Tensor:
    """`u_i = (f_i - ideal_i) / (nadir_i - ideal_i)` (0 where the range is empty)."""
    span = nadir - ideal
    safe = torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, (losses - ideal) / safe, torch.zeros_like(losses))


def favoured_task(position: Tensor) -> int | str:
    """The index of the smallest normalised position; "balanced" when they all lie within
    `BALANCE_TOLERANCE` of each other, "n/a" when a loss is not finite."""
    if not bool(torch.isfinite(position).all()):
        return "n/a"
    if float(position.max() - position.min()) < BALANCE_TOLERANCE:
        return "balanced"
    return int(position.argmin())


def stored_indices(num_records: int, limit: int = MAX_STORED_RECORDS) -> Tensor:
    """At most `limit` evenly spread record indices, the first and the last included."""
    if num_records <= limit:
        return torch.arange(num_records)
    return torch.linspace(0, num_records - 1, limit).round().long().unique()


@dataclass
class MethodRun:
    """Everything measured for one method: the trajectory and its untransformed measurements."""

    name: str
    seconds: float
    trajectory: Trajectory
    raw_losses: Tensor  # [R, S, K]
    residuals: Tensor  # [R, S]
    running_min: Tensor  # [R, S]
    distances: Tensor | None  # [R', S] at `stored` records, None without a front
    stored: Tensor  # record indices kept for JSON and figures


# ----------------------------------------------------------------------------- the command


SECONDS_PER_METHOD_STEP = 177 * 2 / (72 * 35_000)
"""CPU seconds of one method's step from 5 starts on the two-task toy: the toy sweep's 72 runs of
35,000 steps took 175-179 s on two processes (docs/DECISIONS.md); other problems and more starts
cost somewhat more (an estimate for the duration line, not a bound)."""


def expected_duration(config: InspectConfig, methods: int, /) -> str | None:
    """The line `inspect` prints when it starts a run expected to take over half a minute, else None."""
    seconds = methods * config.steps * SECONDS_PER_METHOD_STEP
    if seconds < LONG_COMMAND_SECONDS:
        return None
    return (
        f"{methods} methods x {config.steps:,} steps, expected {duration_text(seconds)} on {MACHINE} "
        f"(the toy sweep's {SECONDS_PER_METHOD_STEP * 1e3:.2f} ms per method and step)"
    )


def run(
    config: InspectConfig, /, *, on_start: Callable[[str], None] | None = None
) -> InspectResult:
    """Validate, run every method from every start as one batch, measure: the payload, the figures
    and the table of `python -m toy_problems inspect` (nothing is written; `write_outputs` does).
    Invalid settings raise `UsageError` naming the flag; once they are checked, `on_start` (the
    command line's stderr) gets the expected duration of a long run."""
    problem = build_problem(
        config.problem, n_var=config.n_var, n_obj=config.n_obj, seed=config.problem_seed
    )
    num_tasks = problem.n_obj
    if config.steps < 1:
        raise UsageError(f"--steps must be a positive integer, got {config.steps}")
    if not (math.isfinite(config.lr) and config.lr > 0):
        raise UsageError(f"--lr must be a finite positive number, got {config.lr}")
    try:
        names = [canonical_spec(spec) for spec in parse_method_specs(config.methods)]
        for name in names:  # hyperparameter values are checked by the class
            build_method(name, num_tasks, seed=config.seed, device="cpu")
    except MTLInputError as error:
        raise UsageError(f"--methods {config.methods!r}: {error}") from None
    if len(set(names)) != len(names):
        raise UsageError(f"--methods lists a method twice: {config.methods!r}")
    transforms = parse_transforms(config.transform, num_tasks)
    dtype = getattr(torch, config.dtype)
    try:
        torch.zeros(1, device=config.device)
    except (RuntimeError, AssertionError) as error:
        raise UsageError(
            f"--device {config.device!r} is not usable here ({str(error).splitlines()[0]}); e.g. cpu or cuda"
        ) from None
    starts = parse_starts(config, problem, dtype=dtype, device=config.device)
    _check_starts(problem, transforms, starts, names, config)
    line = expected_duration(config, len(names))
    if on_start is not None and line is not None:
        on_start(line)

    front = None
    if problem.has_pareto_set:
        front = (
            problem.pareto_front(FRONT_SAMPLES.get(num_tasks, FRONT_SAMPLES_MANY))
            .to(torch.float64)
            .cpu()
        )
    numbers = (config.steps + 1) * starts.shape[0] * (problem.n_var + num_tasks)
    record_every = max(1, math.ceil(numbers / MAX_RECORDED_NUMBERS))

    make_optimizer(
        [torch.zeros(1, requires_grad=True)], config.optimizer, config.lr
    )  # torch's one-off import of the
    # optimiser machinery (seconds) happens here, not inside the first method's timing
    task_transforms = tuple(
        TaskTransform(task, transform) for task, transform in sorted(transforms.items())
    )
    stored = stored_indices(
        math.ceil(config.steps / record_every) + 1
    )  # the records kept in the JSON and the figures
    try:  # every method from every start, as one batch
        measured = run_measured(
            problem,
            starts,
            [Track(name, task_transforms, config.seed) for name in names],
            num_steps=config.steps,
            lr=config.lr,
            optimizer=config.optimizer,
            record_every=record_every,
            front=front,
            distance_records=stored,
            progress=None if config.quiet else f"{config.problem}: {len(names)} methods",
        )
    except MTLInputError as error:
        hint = (
            " (a loss left the domain of its --transforms entry)"
            if isinstance(error, LossDomainError) and transforms
            else ""
        )
        raise UsageError(f"a method failed during the run: {error}{hint}") from None
    runs = [
        MethodRun(
            name,
            run.seconds,
            run.trajectory,
            run.losses,
            run.residuals,
            run.residuals.cummin(dim=0).values,
            run.distances,
            stored,
        )
        for name, run in zip(names, measured)
    ]
    logger.info(
        "%d methods: %d steps from %d starts in %.1f s",
        len(names),
        config.steps,
        starts.shape[0],
        runs[0].seconds * len(names),
    )

    if front is not None:
        ideal, nadir = front.amin(dim=0), front.amax(dim=0)
        reference = "analytic Pareto front"
    else:
        ends = torch.cat([run.raw_losses[-1] for run in runs])
        finite = ends[torch.isfinite(ends).all(dim=-1)]
        ideal, nadir = (
            (finite.amin(dim=0), finite.amax(dim=0))
            if finite.numel()
            else (torch.zeros(num_tasks),) * 2
        )
        reference = "endpoints of every run of this invocation"
    payload = _payload(
        config, problem, transforms, starts, names, runs, record_every, ideal, nadir, reference
    )
    figures = _figures(config, problem, transforms, front, runs)
    return InspectResult(payload, figures, format_table(payload))


def _check_starts(problem, transforms, starts, names, config) -> None:
    """Fail before any run: transforms outside their domain at the starts, methods that reject the
    losses they would see there (one step of each, as the run takes it)."""
    raw = problem(starts)
    for task, transform in transforms.items():
        try:
            transform.check_domain(raw[..., task])
        except LossDomainError as error:
            values = ", ".join(f"{v:.4g}" for v in raw[..., task].tolist())
            raise UsageError(
                f"--transforms {task}:{transform.to_spec()}: {error} (task {task}'s losses at the starts: {values}); "
                f"choose a transform defined there, e.g. exp, arcsinh, power:P or affine:A:B"
            ) from None
    task_transforms = tuple(
        TaskTransform(task, transform) for task, transform in sorted(transforms.items())
    )
    for name in names:
        try:
            run_tracks(
                problem,
                starts,
                [Track(name, task_transforms, config.seed)],
                num_steps=1,
                lr=config.lr,
                optimizer=config.optimizer,
            )
        except MTLInputError as error:
            method = build_method(name, problem.n_obj, seed=config.seed, device="cpu")
            raise UsageError(
                f"method {name!r} rejects the losses at the starts {_fmt_rows(raw)}: {error}{_domain_hint(method)}"
            ) from None


def _domain_hint(method) -> str:
    if method.loss_domain != "any":
        kind = "non-negative" if method.loss_domain == "nonnegative" else method.loss_domain
        return f" ({method.name} needs {kind} losses: make them so with a transform, e.g. --transforms TASK:exp)"
    return ""


# ----------------------------------------------------------------------------- outputs


def _json_numbers(tensor: Tensor) -> Any:
    """Nested lists of floats, with None for NaN and infinities (strict JSON)."""
    return _replace_nan(tensor.detach().to(torch.float64).cpu().tolist())


def _replace_nan(values: Any) -> Any:
    if isinstance(values, list):
        return [_replace_nan(v) for v in values]
    return values if isinstance(values, float) and math.isfinite(values) else None


def _payload(
    config, problem, transforms, starts, names, runs, record_every, ideal, nadir, reference
) -> dict:
    from toy_problems.store import environment

    results = {}
    for run in runs:
        ends = run.raw_losses[-1]
        positions = normalised_positions(ends, ideal, nadir)
        per_start = []
        for j in range(starts.shape[0]):
            entry = {
                "start": _json_numbers(starts[j]),
                "end": _json_numbers(run.trajectory.points[-1, j]),
                "end_losses": _json_numbers(ends[j]),
                "final_residual": _json_numbers(run.residuals[-1, j]),
                "min_residual": _json_numbers(run.running_min[-1, j]),
                "distance_to_front": None
                if run.distances is None
                else _json_numbers(run.distances[-1, j]),
                "normalised_position": _json_numbers(positions[j]),
                "favoured_task": favoured_task(positions[j]),
            }
            if transforms:
                entry["end_losses_transformed"] = _json_numbers(run.trajectory.losses[-1, j])
            per_start.append(entry)
        stored = run.stored
        trajectory = {
            "steps": run.trajectory.steps[stored].tolist(),
            "losses": _json_numbers(run.raw_losses[stored]),
            "residual": _json_numbers(run.residuals[stored]),
            "running_min_residual": _json_numbers(run.running_min[stored]),
            "distance_to_front": None if run.distances is None else _json_numbers(run.distances),
        }
        if transforms:
            trajectory["losses_transformed"] = _json_numbers(run.trajectory.losses[stored])
        results[run.name] = {"seconds": run.seconds, "runs": per_start, "trajectory": trajectory}
    return {
        "experiment": "toy_inspect",
        "config": {
            "problem": config.problem,
            "problem_repr": repr(problem),
            "n_var": problem.n_var,
            "n_obj": problem.n_obj,
            "has_pareto_set": problem.has_pareto_set,
            "projected": hasattr(problem, "project"),
            "methods": names,
            "transforms": {str(task): t.to_spec() for task, t in sorted(transforms.items())},
            "starts": _json_numbers(starts),
            "steps": config.steps,
            "optimizer": config.optimizer,
            "lr": config.lr,
            "dtype": config.dtype,
            "device": config.device,
            "seed": config.seed,
            "residual_every": record_every,
        },
        "definitions": {
            "residual": RESIDUAL_DEFINITION,
            "running_min_residual": "the smallest residual up to each step",
            "distance_to_front": "Euclidean distance of the untransformed losses to a dense sample of the analytic front",
            "favoured_task": DOMINANCE_DEFINITION,
            "losses": "untransformed task losses f_i(x); losses_transformed: what the methods saw",
        },
        "dominance_reference": {
            "source": reference,
            "ideal": _json_numbers(ideal),
            "nadir": _json_numbers(nadir),
        },
        "environment": environment(),
        "results": results,
    }


def format_table(payload: dict) -> str:
    """One row per method and start: endpoint, untransformed end losses, residuals, distance, favoured task."""
    config = payload["config"]
    header = [
        "method",
        "start",
        "end x",
        "end losses",
        "residual",
        "min res",
        "dist",
        "position u",
        "favours",
    ]
    rows = []
    for name in config["methods"]:
        for run in payload["results"][name]["runs"]:
            distance, favoured = run["distance_to_front"], run["favoured_task"]
            rows.append(
                [
                    name,
                    _fmt_list(run["start"]),
                    _fmt_list(run["end"]),
                    _fmt_list(run["end_losses"]),
                    _fmt_number(run["final_residual"]),
                    _fmt_number(run["min_residual"]),
                    "n/a" if distance is None else _fmt_number(distance),
                    "/".join(_fmt_short(u) for u in run["normalised_position"]),
                    favoured if isinstance(favoured, str) else f"task {favoured}",
                ]
            )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    separators = {1, 2, 3, 4, 6, 7}  # a bar before these columns

    def line(cells: list[str]) -> str:
        parts = [cells[0].ljust(widths[0])]
        for i in range(1, len(cells)):
            parts.append(("| " if i in separators else "") + cells[i].rjust(widths[i]))
        return " ".join(parts)

    lines = [line(header), "-" * len(line(header)), *(line(row) for row in rows)]
    transforms = config["transforms"]
    lines.append(
        f"{config['problem']}: {config['steps']} {config['optimizer']} steps (lr {config['lr']:g}, {config['dtype']})"
        + (
            f", transforms {', '.join(f'{k}:{v}' for k, v in transforms.items())} (losses shown untransformed)"
            if transforms
            else ""
        )
        + "; "
        + ", ".join(
            f"{name} {payload['results'][name]['seconds']:.1f} s" for name in config["methods"]
        )
    )
    lines.append(
        "residual: Pareto-stationarity residual at the end (min res: smallest along the run); dist: distance to the "
        "analytic front; u: normalised position between the front's extremes, favours: the task with the smallest u "
        f"(balanced: spread < {BALANCE_TOLERANCE}; reference: {payload['dominance_reference']['source']})."
    )
    return "\n".join(lines)


def _fmt_number(value: float | None) -> str:
    return "nan" if value is None else f"{value:.2e}"


def _fmt_short(value: float | None) -> str:
    return "nan" if value is None else f"{value:.2f}"


def _fmt_list(values: list, limit: int = 3) -> str:
    shown = ", ".join("nan" if v is None else f"{v:.3g}" for v in values[:limit])
    return f"({shown}{', ...' if len(values) > limit else ''})"


def _fmt_vec(values: Tensor) -> str:
    return _fmt_list(values.tolist())


def _fmt_rows(values: Tensor) -> str:
    return "; ".join(_fmt_list(row) for row in values.tolist())


def _figures(config, problem, transforms, front, runs: list[MethodRun]) -> dict[str, Any]:
    """The figures by file name: trajectories (seen losses), untransformed trajectories (with transforms), convergence."""
    figures = {"trajectories.png": _trajectory_figure(problem, transforms, front, runs, seen=True)}
    if transforms:
        figures["trajectories_untransformed.png"] = _trajectory_figure(
            problem, {}, front, runs, seen=False
        )
    figures["convergence.png"] = _convergence_figure(config, runs, front is not None)
    return figures


def _task_pairs(num_tasks: int) -> list[tuple[int, int]]:
    return list(itertools.combinations(range(num_tasks), 2))[:3]


def _trajectory_figure(problem, transforms, front, runs, *, seen: bool):
    from matplotlib.figure import Figure

    pairs = _task_pairs(problem.n_obj)
    figure = Figure(figsize=(3.6 * len(runs), 3.4 * len(pairs)), layout="constrained")
    axes = figure.subplots(len(pairs), len(runs), squeeze=False)
    front_seen = None
    if front is not None:
        try:
            front_seen = (
                transformed_objectives(lambda f: f, transforms)(front) if transforms else front
            )
        except LossDomainError:
            logger.info(
                "the front lies partly outside a transform's domain; not drawn in the transformed view"
            )
    colours = [f"C{j % 10}" for j in range(runs[0].trajectory.points.shape[1])]
    for column, run in enumerate(runs):
        losses = (
            (run.trajectory.losses if seen else run.raw_losses)[run.stored].to(torch.float64).cpu()
        )
        for row, (a, b) in enumerate(pairs):
            ax = axes[row][column]
            if front_seen is not None:
                ax.scatter(
                    front_seen[:, a],
                    front_seen[:, b],
                    s=1,
                    color="0.6",
                    label="Pareto front",
                    rasterized=True,
                )
            for j, colour in enumerate(colours):
                ax.plot(losses[:, j, a], losses[:, j, b], color=colour, linewidth=1)
                ax.plot(losses[0, j, a], losses[0, j, b], "o", color=colour, markersize=4)
                ax.plot(losses[-1, j, a], losses[-1, j, b], "*", color=colour, markersize=9)
            ax.set_xlabel(_loss_label(a, transforms))
            ax.set_ylabel(_loss_label(b, transforms))
            if row == 0:
                ax.set_title(run.name)
    view = (
        "losses as the methods see them"
        if transforms
        else ("untransformed losses" if not seen else "losses")
    )
    figure.suptitle(f"{problem!r}: {view} (o start, * end)")
    return figure


def _loss_label(task: int, transforms: dict[int, MonotoneTransform]) -> str:
    return f"{transforms[task].to_spec()}(f{task})" if task in transforms else f"f{task}"


def _convergence_figure(config, runs: list[MethodRun], has_front: bool):
    from matplotlib.figure import Figure

    rows = 2 if has_front else 1
    figure = Figure(figsize=(3.6 * len(runs), 3.2 * rows), layout="constrained")
    axes = figure.subplots(rows, len(runs), squeeze=False, sharey="row")
    tiny = torch.finfo(torch.float64).tiny
    for column, run in enumerate(runs):
        steps = run.trajectory.steps[run.stored].numpy()
        residual = run.residuals[run.stored].clamp_min(tiny)
        running = run.running_min[run.stored].clamp_min(tiny)
        ax = axes[0][column]
        for j in range(residual.shape[1]):
            ax.plot(steps, residual[:, j], color=f"C{j % 10}", linewidth=0.6, alpha=0.4)
            ax.plot(steps, running[:, j], color=f"C{j % 10}", linewidth=1.4, label=f"start {j}")
        ax.set_yscale("log")
        ax.set_title(run.name)
        ax.set_xlabel("iteration")
        if column == 0:
            ax.set_ylabel("stationarity residual (thin) and running min")
            ax.legend(fontsize="small")
        if has_front:
            ax = axes[1][column]
            distances = run.distances.clamp_min(tiny)
            for j in range(distances.shape[1]):
                ax.plot(steps, distances[:, j], color=f"C{j % 10}", linewidth=1.2)
            ax.set_yscale("log")
            ax.set_xlabel("iteration")
            if column == 0:
                ax.set_ylabel("distance to the Pareto front")
    figure.suptitle(f"{config.problem}: convergence ({config.optimizer}, lr {config.lr:g})")
    return figure


def write_outputs(out: Path, payload: dict, figures: dict[str, Any]) -> list[Path]:
    """Write the JSON and the figures into a temporary folder inside `out`, then move each file into
    `out` (each replacement is atomic and stays on `out`'s file system, so a mounted `out` works; on
    any error nothing in `out` changes). A figure of an earlier run that this run does not make (the
    untransformed view) is removed."""
    from toy_problems.store import save_figure_atomic, write_json_atomic

    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging.", dir=out))
    try:
        write_json_atomic(staging / "inspect.json", payload)
        for name, figure in figures.items():
            save_figure_atomic(figure, staging / name)
        written = []
        for path in sorted(staging.iterdir()):
            os.replace(path, out / path.name)
            written.append(out / path.name)
        if "trajectories_untransformed.png" not in figures:
            (out / "trajectories_untransformed.png").unlink(missing_ok=True)
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def inspect_folder(root: str | Path, config: InspectConfig, /) -> Path:
    """`ROOT/toy_inspect/PROBLEM/<settings>` in the result store `root` (`--out`): one folder per
    set of settings (steps, optimiser, learning rate, seed, then a hash of every flag that changes
    the numbers), so that an inspection never replaces one made with other settings."""
    settings = {key: getattr(config, key) for key in NUMERIC_FLAGS}  # tuples and lists hash alike
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[
        :8
    ]
    return (
        Path(root)
        / "toy_inspect"
        / config.problem
        / f"{config.steps}steps-{config.optimizer}-lr{config.lr:g}-seed{config.seed}-{digest}"
    )


def default_out(config: InspectConfig, /) -> Path:
    """`inspect_folder` in the default result store, `results`."""
    return inspect_folder(Path("results"), config)


NUMERIC_FLAGS = (
    "problem",
    "methods",
    "transform",
    "starts",
    "start",
    "seed",
    "steps",
    "optimizer",
    "lr",
    "dtype",
    "n_var",
    "n_obj",
    "problem_seed",
)
"""The flags whose values change what `inspect` computes (not --out, --quiet or --device)."""


# ----------------------------------------------------------------------------- the parser and main


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=104, initial_indent="  ", subsequent_indent="    ")


EPILOG = f"""
what it writes into OUT/toy_inspect/PROBLEM/<steps>steps-<optimizer>-lr<lr>-seed<seed>-<hash of the other
settings>, one folder per set of settings in the result store --out (default results):
  inspect.json                    config, per method and start: start, end point, end losses (untransformed,
                                  and as seen with transforms), final and smallest residual, distance to the
                                  front, normalised position and favoured task; trajectories (at most
                                  {MAX_STORED_RECORDS} records per start): losses, residual, running min, distance
  trajectories.png                the runs in loss space over the analytic Pareto front (as the methods see
                                  the losses; K > 2: the first three pairs of tasks)
  trajectories_untransformed.png  with --transforms: the same runs on the untransformed losses
  convergence.png                 stationarity residual and its running minimum against iterations (log
                                  scale), and the distance to the front where it is known
Files are written to a temporary folder inside it first and moved in only after the run succeeded.

definitions:
{_wrap("residual: " + RESIDUAL_DEFINITION + ".")}
{_wrap("favoured task: " + DOMINANCE_DEFINITION + ".")}
  stateful methods (uw, dwa, famo, nashmtl) keep their state per start, in the same batch: uw's log-variances
  join x's optimiser, every step ends an epoch (dwa's ratio is that of consecutive steps), famo updates its
  logits after every step.

bad arguments print one line on stderr (with the valid choices) and exit with status 2, writing nothing.
"""


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as one line (no usage block), exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m toy_problems",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--list",
        action="store_true",
        help="list the problems (n_var, n_obj, analytic Pareto set/front), then every method (name, kind, family, paper, hyperparameters), and exit",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    inspect_parser = commands.add_parser(
        "inspect",
        help="run methods from several starts on one problem; print a table, write JSON and figures",
        description="Run task-balancing methods on a toy problem and inspect their convergence.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(inspect_parser)
    return parser


class _TransformList(argparse.Action):
    """`--transforms a,b`: the comma-separated entries join the list of transforms (`InspectConfig.transform`)."""

    def __call__(self, parser, namespace, values, option_string=None):
        entries = [part.strip() for part in str(values).split(",") if part.strip()]
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest) or []), *entries])


class _DeprecatedTransform(argparse.Action):
    """`--transform a` (repeatable), the spelling before `--transforms`: still accepted, with a note on stderr."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(
            f"note: --transform is deprecated; write --transforms {values} (one comma-separated list, as every command line takes it)",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest) or []), str(values)])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `inspect`."""
    parser.add_argument(
        "--problem",
        required=True,
        choices=list(PROBLEMS),
        metavar="NAME",
        help=f"the toy problem, one of: {', '.join(PROBLEMS)} (see --list)",
    )
    parser.add_argument(
        "--methods",
        default="dibsmtl,ls,mgda",
        help=f"comma-separated method specs, name or name:key=value:... (default dibsmtl,ls,mgda; e.g. "
        f"dibsmtl:steps=5,cagrad:c=0.5); `python -m toy_problems --list` lists all {len(available_methods())} methods",
    )
    parser.add_argument(
        "--transforms",
        action=_TransformList,
        dest="transform",
        default=[],
        metavar="TASK:KIND[:PARAM],...",
        help=escape_help(
            f"comma-separated strictly increasing transforms of single task losses (task TASK, 0-based), "
            f"applied before the methods see them; at most one per task, 'none' for no transform. "
            f"KIND: {TRANSFORM_SPEC_FORMS}. Example: 0:exp,1:power:4"
        ),
    )
    parser.add_argument(
        "--transform",
        action=_DeprecatedTransform,
        dest="transform",
        metavar="TASK:KIND[:PARAM]",
        help="deprecated spelling of --transforms, one transform per flag (repeatable); still accepted",
    )
    parser.add_argument(
        "--starts",
        default="default",
        metavar="default|N",
        help="'default': the problem's default starting points (the published ones where they exist, else "
        "5 seeded draws); N: N points drawn uniformly from the problem's bounds with --seed",
    )
    parser.add_argument(
        "--start",
        action="append",
        default=[],
        metavar="X1,X2,...",
        help="an explicit starting point inside the problem's bounds (repeatable; replaces --starts)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the drawn starts and of random methods (rlw, rgw, pcgrad); default 0",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=2000,
        help="optimiser steps per run (default 2000; the DiBS-MTL toy uses 35,000)",
    )
    parser.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default="adam",
        help="adam (torch defaults, as the DiBS-MTL toy) or sgd; default adam",
    )
    parser.add_argument(
        "--lr", type=float, default=1e-3, help="learning rate (default 1e-3, the DiBS-MTL toy's)"
    )
    parser.add_argument(
        "--dtype",
        choices=["float32", "float64"],
        default="float64",
        help="floating dtype of the runs (default float64: residuals below float32 resolution stay visible)",
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (default: cuda if available)",
    )
    parser.add_argument(
        "--n-var",
        type=int,
        default=None,
        help="number of variables, for zdt1-3, fonseca_fleming, quadratic, nonconvex (defaults in --list)",
    )
    parser.add_argument(
        "--n-obj",
        type=int,
        default=None,
        help="number of tasks, for quadratic and nonconvex (default 3)",
    )
    parser.add_argument(
        "--problem-seed",
        type=int,
        default=None,
        help="the seed that draws quadratic and nonconvex (default 0)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("results"),
        help="root of the result store: the files go to OUT/toy_inspect/PROBLEM/<settings>, one folder per set "
        "of settings (default: %(default)s)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m toy_problems`; returns the exit status (2 for bad arguments)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.list:
            print(listing())
            return 0
        if args.command is None:
            raise UsageError(
                "choose a command: inspect (python -m toy_problems inspect --help), or --list"
            )
        config = InspectConfig.from_args(args)
        out = inspect_folder(args.out, config)
        reason = unwritable_reason(out)  # before any compute
        if reason is not None:
            raise UsageError(f"--out {reason}")
        result = run(config, on_start=lambda line: print(line, file=sys.stderr, flush=True))
    except KeyboardInterrupt:
        print(
            "\ninterrupted: nothing was written (inspect writes its folder at the end); run the same command again",
            file=sys.stderr,
        )
        return 130
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    if (
        args.out / "inspect.json"
    ).exists():  # an inspection written when --out named the folder itself
        print(
            f"note: --out is the root of the result store (docs/cli.md): this inspection goes to {out}; "
            f"{args.out / 'inspect.json'} is an earlier one, left as it is",
            file=sys.stderr,
        )
    written = write_outputs(out, result.payload, result.figures)
    print(result.table)
    print(f"\nwrote {', '.join(str(path) for path in written)}")
    return 0
