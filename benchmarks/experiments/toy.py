"""The DiBS-MTL illustrative example (spec dibs.md §5; paper Figs. 2-3): `python -m benchmarks toy`.

Every method runs from the five starting points of the DiBS-MTL toy trainer with Adam (lr 1e-3)
for 35,000 steps, once on the nominal two-task toy and once with task 0's loss replaced by the
strictly increasing `h(f0) = sign(f0) f0^4` (`--transforms none,0:power:4`). One run is one
(method, seed, transform) with its five starts, stored as one JSON by the shared harness
(`benchmarks.harness.runs`), so a rerun reuses finished runs and a killed sweep loses at most the
run in progress. Every method runs its five starts as one batch (`toy_problems.runner.run_toy`;
stateful methods keep their state per start).

After the sweep it prints and writes `OUT/toy/summary.md` (each run's endpoint, the distance of
its untransformed losses to the Pareto front, and the gap |x_nominal - x_transformed|, zero for a
transformation-invariant method) and draws the paper's trajectory figures (`toy_nominal`,
`toy_transformed`, `toy_transformed_scaled`, PNG and PDF). `--quick` (2,000 steps) writes its
summary and figures to `OUT/toy/quick/`.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from benchmarks.harness.cli import (
    add_common_arguments,
    default_device,
    methods_in_words,
    parse_methods,
    parse_seeds,
    parse_transforms,
)
from benchmarks.harness.experiment import ExperimentResult
from benchmarks.harness.runs import ResultStore, RunSpec, run_sweep_batched
from core.errors import InvalidHyperparameterError, MTLInputError
from core.registry import available_methods
from toy_problems import TwoTaskToy
from toy_problems.command_config import CommandConfig
from toy_problems.measured import MeasuredRun, run_measured
from toy_problems.runner import Track, forked_starmap, run_tracks, single_thread
from toy_problems.store import environment, save_figure_atomic, write_markdown_table
from toy_problems.task_transforms import TaskTransform, parse_task_transform

logger = logging.getLogger(__name__)

EXPERIMENT = "toy"
DEFAULT_STEPS = 35_000
"""Adam steps per run, as the DiBS-MTL toy trainer."""
QUICK_STEPS = 2_000
FULL_RUN_MINUTES = 3
"""The full default sweep's wall time on the project's 2-core machine, rounded (docs/DECISIONS.md)."""
FULL_RUN_SECONDS_PER_RUN = 177 / 72
"""Wall seconds per run of 35,000 steps: the full default sweep, 72 runs, took 175-179 s with two
processes on the project's 2-core machine, figures included (docs/DECISIONS.md)."""
DEFAULT_LR = 1e-3
RECORDS_PER_TRAJECTORY = 500
"""`--record-every` defaults to `max(1, steps // 500)`: about 500 recorded points per trajectory."""
FRONT_POINTS = 2_000
"""Points of the reference's plotted Pareto front (x2 = -8.3552) that distances are measured to."""
# Methods whose `loss_domain` is not "any" (they take logs of or divide by the loss values) see
# `h(f) - h(-20)` (positive; a constant shift, which no gradient sees), since the toy's losses are
# negative near the front.
TOY_TASKS = 2
RANDOM_SEED_NOTE = "the seed only matters for the random methods (rlw, rgw, pcgrad); the others repeat the same run"

DISPLAY_NAMES = {
    "dibsmtl": "1-Step DiBS-MTL",
    "dibsmtl:steps=5": "5-Step DiBS-MTL",
    "nashmtl": "Nash-MTL",
    "famo": "FAMO",
    "mgda": "MGDA",
    "pcgrad": "PCGrad",
    "cagrad": "CAGrad",
    "imtl_g": "IMTL-G",
    "uw": "UW",
    "ls": "LS",
    "scaleinvls": "Scale-invariant LS",
    "rlw": "RLW",
    "rgw": "RGW",
    "dwa": "DWA",
    "normalized_sum": "Normalised sum",
}
"""Panel titles, as the paper's where it has the method."""
PAPER_ORDER = (
    "dibsmtl",
    "dibsmtl:steps=5",
    "nashmtl",
    "famo",
    "mgda",
    "pcgrad",
    "cagrad",
    "imtl_g",
    "uw",
    "ls",
)
"""The method specs in the order of the paper's panels; the default runs them first, then the other registered ones."""


def display_name(spec: str, /) -> str:
    """A panel title: the paper's name where it has the method, else the method's own title
    (with the spec's hyperparameters, if any)."""
    from core.registry import describe_method, parse_method_spec

    if spec in DISPLAY_NAMES:
        return DISPLAY_NAMES[spec]
    parsed = parse_method_spec(spec)
    settings = ", ".join(f"{key}={value}" for key, value in parsed.hyperparameters)
    return describe_method(parsed.name).title + (f" ({settings})" if settings else "")


def default_methods() -> list[str]:
    """The paper's method specs (in its panel order), then every other registered method that runs
    on a model's parameters (engine mode "full"; the toy has no representation and no heads),
    alphabetically."""
    from toy_problems.runner import runs_on_parameters

    return [
        *PAPER_ORDER,
        *(m for m in available_methods() if m not in PAPER_ORDER and runs_on_parameters(m)),
    ]


# ----------------------------------------------------------------------------- transforms and methods


def parse_toy_transform(text: str, /) -> TaskTransform | None:
    """'none' -> None; 'TASK:SPEC' (e.g. '0:power:4', TASK 0 or 1) -> the task transform, which must
    be defined on every loss the toy can produce (all t > its lower bound -20); else
    InvalidHyperparameterError."""
    try:
        parsed = parse_task_transform(text, TOY_TASKS)
        if parsed is not None:
            parsed.check_domain(TwoTaskToy.lower_bound)
    except InvalidHyperparameterError as error:
        raise InvalidHyperparameterError(f"--transforms entry {error}") from None
    return parsed


def toy_track(method: str, transform: str, seed: int) -> Track:
    """The runner's track of one run."""
    parsed = parse_toy_transform(transform)
    return Track(method, () if parsed is None else (parsed,), seed)


# ----------------------------------------------------------------------------- one run


def _json_numbers(tensor: Tensor) -> Any:
    """Nested lists of floats (float64), with None for NaN and infinities (strict JSON)."""
    tensor = tensor.detach().to(torch.float64).cpu()
    values = tensor.tolist()
    return (
        values if bool(torch.isfinite(tensor).all()) else _finite_or_none(values)
    )  # walk the lists only if needed


def _finite_or_none(values: Any) -> Any:
    if isinstance(values, list):
        return [_finite_or_none(v) for v in values]
    return values if math.isfinite(values) else None


def run_toy_experiments(
    runs: Sequence[tuple[str, str, int]],
    /,
    *,
    steps: int,
    lr: float = DEFAULT_LR,
    dtype: torch.dtype = torch.float64,
    record_every: int | None = None,
    device: str | torch.device = "cpu",
    show_progress: bool = False,
    processes: int = 1,
) -> list[dict[str, Any]]:
    """Runs `(method spec, transform, seed)` from the five DiBS-MTL starts on the toy, all as one
    batched computation (`toy_problems.measured.run_measured`, the function under `inspect` too,
    split by method over `processes` forked processes on the CPU); returns each run's JSON-ready
    result (endpoints, untransformed end losses, distance to the front, final stationarity
    residual, its share of the batch's seconds, and the trajectories every `record_every` steps in
    x and in the untransformed loss space)."""
    record_every = default_record_every(steps) if record_every is None else record_every
    problem = TwoTaskToy()
    starts = problem.default_starts(dtype=dtype, device=device)
    measured = run_measured(
        problem,
        starts,
        [toy_track(method, transform, seed) for method, transform, seed in runs],
        num_steps=steps,
        lr=lr,
        record_every=record_every,
        front=problem.pareto_front(FRONT_POINTS),
        processes=processes,
        progress=f"{len(runs)} runs" if show_progress else None,
    )
    return [
        _run_result(starts, run, method, transform, seed, str(device))
        for run, (method, transform, seed) in zip(measured, runs)
    ]


def run_toy_experiment(
    method: str, transform: str = "none", /, *, seed: int = 0, **options: Any
) -> dict[str, Any]:
    """One run (`run_toy_experiments` with one (method, transform, seed))."""
    return run_toy_experiments([(method, transform, seed)], **options)[0]


def _run_result(
    starts: Tensor, run: MeasuredRun, method: str, transform: str, seed: int, device: str
) -> dict[str, Any]:
    points = run.trajectory.points.to(torch.float64).cpu()  # [R, 5, 2]
    assert run.distances is not None  # the toy has its front
    return {
        "method": method,
        "transform": transform,
        "seed": seed,
        "device": device,
        "seconds": run.seconds,
        "starts": _json_numbers(starts),
        "endpoints": _json_numbers(points[-1]),
        "end_losses": _json_numbers(run.losses[-1]),
        "end_losses_seen": _json_numbers(run.trajectory.losses[-1]),
        "distance_to_front": _json_numbers(run.distances[-1]),
        "final_residual": _json_numbers(run.residuals[-1]),
        "trajectory": {
            "steps": run.trajectory.steps.tolist(),
            "x": _json_numbers(points),
            "losses": _json_numbers(run.losses),
        },
    }


def default_record_every(steps: int) -> int:
    return max(1, steps // RECORDS_PER_TRAJECTORY)


# ----------------------------------------------------------------------------- the sweep


@dataclass(frozen=True)
class Config(CommandConfig):
    """The settings of `python -m benchmarks toy`: one field per flag, with its name and default."""

    quick: bool = False
    methods: str = field(default_factory=lambda: ",".join(default_methods()))
    seeds: str = "0"
    transforms: str = "none,0:power:4"
    device: str = field(default_factory=default_device)
    out: Path = Path("results")
    fresh: bool = False
    steps: int | None = None
    lr: float = DEFAULT_LR
    dtype: str = "float64"
    record_every: int | None = None
    quiet: bool = False
    summary: bool = False


def plan_runs(config: Config) -> tuple[list[RunSpec], list[str], list[int], list[str]]:
    """The runs of this invocation, validated before any of them starts."""
    methods = parse_methods(config.methods)
    if len(set(methods)) != len(methods):
        raise InvalidHyperparameterError(f"--methods lists a method twice: {config.methods!r}")
    seeds = parse_seeds(config.seeds)
    transforms = parse_transforms(config.transforms)
    if len(set(transforms)) != len(transforms):
        raise InvalidHyperparameterError(
            f"--transforms lists a transform twice: {config.transforms!r}"
        )
    parsed = [parse_toy_transform(text) for text in transforms]
    steps = (
        config.steps
        if config.steps is not None
        else (QUICK_STEPS if config.quick else DEFAULT_STEPS)
    )
    if steps < 1:
        raise InvalidHyperparameterError(f"--steps must be at least 1, got {steps}")
    record_every = (
        default_record_every(steps) if config.record_every is None else config.record_every
    )
    if record_every < 1:
        raise InvalidHyperparameterError(f"--record-every must be at least 1, got {record_every}")
    if not (math.isfinite(config.lr) and config.lr > 0):
        raise InvalidHyperparameterError(f"--lr must be a finite positive number, got {config.lr}")
    if config.dtype not in ("float32", "float64"):
        raise InvalidHyperparameterError(
            f"--dtype must be float32 or float64, got {config.dtype!r}"
        )
    try:
        torch.zeros(1, device=config.device)
    except (RuntimeError, AssertionError) as error:
        raise InvalidHyperparameterError(
            f"--device {config.device!r} is not usable here ({str(error).splitlines()[0]}); e.g. cpu or cuda"
        ) from None
    _check_starts(methods, parsed, dtype=getattr(torch, config.dtype), device=config.device)
    settings = {
        "steps": steps,
        "lr": config.lr,
        "dtype": config.dtype,
        "record_every": record_every,
        "optimizer": "adam",
        "starts": [
            list(start) for start in TwoTaskToy().default_starts(dtype=torch.float64).tolist()
        ],
        "loss_lower_bound": TwoTaskToy.lower_bound,
    }
    runs = [
        RunSpec(EXPERIMENT, method, seed, transform, settings)
        for method in methods
        for seed in seeds
        for transform in transforms
    ]
    return runs, methods, seeds, transforms


def planned_runs(config: Config) -> list[RunSpec]:
    """The runs `run(config)` sweeps, in order."""
    return plan_runs(config)[0]


def expected_seconds(
    config: Config, todo: Sequence[RunSpec], /, *, workers: int = 1
) -> tuple[float, str]:
    """The approximate wall time of the runs `todo`: the full sweep's seconds per run, scaled by
    steps (`--workers 2` runs one process each where the sweep alone forks two: the same cores)."""
    seconds = sum(FULL_RUN_SECONDS_PER_RUN * run.config["steps"] / DEFAULT_STEPS for run in todo)
    return seconds, "the full sweep's 72 runs of 35,000 steps took 175-179 s with 2 processes"


def _check_starts(
    methods: list[str], transforms: list[TaskTransform | None], *, dtype: torch.dtype, device: str
) -> None:
    """Every method accepts the losses it will see at the starts (fails before any run): one step
    of every run."""
    problem = TwoTaskToy()
    tracks = [Track(method, () if t is None else (t,)) for method in methods for t in transforms]
    try:
        run_tracks(
            problem,
            problem.default_starts(dtype=dtype, device=device),
            tracks,
            num_steps=1,
            lr=DEFAULT_LR,
        )
    except MTLInputError as error:
        raise InvalidHyperparameterError(
            f"a method rejects the toy's losses at the starts: {error}"
        ) from None


def report_folder(out: str | Path, *, quick: bool) -> Path:
    """Where the summary and the figures go: OUT/toy, or OUT/toy/quick for --quick."""
    folder = Path(out) / EXPERIMENT
    return folder / "quick" if quick else folder


def run(config: Config, /) -> ExperimentResult:
    """Sweep the runs of `config` that are not stored yet (every unfinished run as one batched
    computation), then write the summary and the figures; with `config.summary`, only read the
    finished runs (nothing is computed or written). The result's `details["results"]` holds every
    run's result keyed by (method, seed, transform)."""
    runs, methods, seeds, transforms = plan_runs(config)
    if config.summary:
        return _stored_summary(
            runs, methods, seeds, transforms, ResultStore(config.out, read_only=True)
        )
    store = ResultStore(config.out)
    if config.fresh:
        for spec in runs:
            store.discard(spec)
    dtype = getattr(torch, config.dtype)
    workers = int(
        os.environ.get("MTL_WORKERS", "1")
    )  # set by `--workers N` for its worker processes
    processes = (
        1 if workers > 1 else min(2, os.cpu_count() or 1)
    )  # the two cores of the project's machines

    def run_many(specs: list[RunSpec]) -> list[Mapping[str, Any]]:
        # every unfinished run in one batched computation (minutes): it restarts rather than checkpoints
        settings = specs[0].config
        return run_toy_experiments(
            [(spec.method, spec.transform, spec.seed) for spec in specs],
            steps=settings["steps"],
            lr=settings["lr"],
            dtype=dtype,
            record_every=settings["record_every"],
            device=config.device,
            show_progress=not config.quiet,
            processes=processes,
        )

    torch.optim.Adam(
        [torch.zeros(1, requires_grad=True)]
    )  # torch's one-off import of the optimiser machinery
    # (seconds) happens here, not inside the first run's timing
    began = time.perf_counter()
    with single_thread():
        # under `--workers N` each worker takes batches of a 1/N share of the runs
        records = run_sweep_batched(
            runs,
            run_many,
            store,
            batch_size=math.ceil(len(runs) / workers) if workers > 1 else None,
        )
    wall = time.perf_counter() - began
    results = results_by_run(records)
    settings = runs[0].config
    folder = report_folder(config.out, quick=config.quick)
    table = format_tables(results, methods, seeds, transforms)
    provenance = (
        f"`python -m benchmarks toy{' --quick' if config.quick else ''}` (steps {settings['steps']}, Adam lr {settings['lr']:g}, "
        f"{settings['dtype']}, record every {settings['record_every']} steps, seeds {','.join(map(str, seeds))}, "
        f"transforms {','.join(transforms)}; device {config.device}, one intra-op thread); machine: {environment()}; "
        f"sweep wall time {wall:.0f} s (finished runs are reused; run times are in the per-method table)"
    )
    if settings["steps"] < DEFAULT_STEPS:
        provenance += f". {short_run_note(settings['steps'])}"
    summary = write_markdown_table(
        folder / "summary.md",
        "The DiBS-MTL toy: endpoints, distance to the front, invariance gap",
        provenance,
        table,
    )
    formats = (
        ("png",) if config.quick else ("png", "pdf")
    )  # the quick look: no PDF (half the drawing time)
    figures = draw_figures(
        results,
        methods,
        seeds[0],
        transforms,
        folder,
        steps=settings["steps"],
        formats=formats,
        processes=processes,
    )
    report = per_method_report(table, settings["steps"]) + (  # the per-start table is in the file
        f"\n\nwrote {summary} (with the table per start), {len(figures)} figures ({', '.join(sorted({p.stem for p in figures}))}) "
        f"in {folder}, and one JSON per run in {Path(config.out) / EXPERIMENT / 'runs'}"
    )
    return ExperimentResult(list(records), report, [summary, *figures], {"results": results})


def _stored_summary(
    runs: list[RunSpec],
    methods: list[str],
    seeds: list[int],
    transforms: list[str],
    store: ResultStore,
) -> ExperimentResult:
    """`--summary`: the per-method table of the finished runs, read from `store` (nothing is written)."""
    records = {spec.run_id: store.load(spec) for spec in runs}
    missing = [spec for spec in runs if records[spec.run_id] is None]
    if missing:
        listed = ", ".join(
            f"{spec.method} ({spec.transform}, seed {spec.seed})" for spec in missing[:5]
        )
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise MTLInputError(
            f"{len(missing)} of {len(runs)} runs with these settings are not finished in {store.root}: {listed}{more}; "
            "run the same command without --summary to compute them"
        )
    stored = [records[spec.run_id] for spec in runs]
    results = results_by_run(stored)
    return ExperimentResult(
        stored,
        per_method_report(
            format_tables(results, methods, seeds, transforms), runs[0].config["steps"]
        ),
        details={"results": results},
    )


def results_by_run(
    records: Iterable[Mapping[str, Any]],
) -> dict[tuple[str, int, str], Mapping[str, Any]]:
    """The stored results keyed by (method, seed, transform)."""
    return {
        (r["spec"]["method"], r["spec"]["seed"], r["spec"]["transform"]): r["result"]
        for r in records
    }


def per_method_report(table: str, steps: int) -> str:
    """The per-method part of `format_tables`' text, and what a short run cannot show."""
    text = table[table.index(f"\n{PER_METHOD_HEADING}\n") + 1 :]
    return text + (f"\n\n{short_run_note(steps)}" if steps < DEFAULT_STEPS else "")


def short_run_note(steps: int) -> str:
    """What a run shorter than the paper's cannot show."""
    return (
        f"Note: {steps:,} steps instead of the paper's {DEFAULT_STEPS:,}: the runs have not reached the front yet, so the "
        "distances to the front and the residuals are not the paper's; the invariance gaps and the ordering of the methods "
        f"are (the full run: python -m benchmarks toy, about {FULL_RUN_MINUTES} minutes)"
    )


# ----------------------------------------------------------------------------- the tables


def _label(transform: str) -> str:
    return "nominal" if transform == "none" else transform


def _point(values: list | None) -> str:
    if values is None or any(v is None for v in values):
        return "n/a"
    return f"({values[0]:.3f}, {values[1]:.3f})"


def _number(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def _gap(first: list | None, second: list | None) -> float | None:
    if first is None or second is None or any(v is None for v in [*first, *second]):
        return None
    return math.dist(first, second)


def format_tables(
    results: Mapping[tuple[str, int, str], Mapping[str, Any]],
    methods: list[str],
    seeds: list[int],
    transforms: list[str],
) -> str:
    """Markdown: one row per method, seed and start (endpoint and distance per transform, gaps to
    the nominal run), then one row per method with the largest gap, distance and residual."""
    compared = [t for t in transforms if t != "none"] if "none" in transforms else []
    show_seed = len(seeds) > 1
    header = ["method", *(["seed"] if show_seed else []), "start"]
    for transform in transforms:
        header += [f"{_label(transform)} end (x1, x2)", f"dist, {_label(transform)}"]
    header += [f"gap, {t}" for t in compared]
    lines = [_row(header), _row(["---"] * len(header))]
    summary_header = [
        "method",
        *[f"max gap, {t}" for t in compared],
        *[f"max dist, {_label(t)}" for t in transforms],
        *[f"max residual, {_label(t)}" for t in transforms],
        "seconds",
    ]
    summary = [_row(summary_header), _row(["---"] * len(summary_header))]
    for method in methods:
        gaps = {t: [] for t in compared}
        distances = {t: [] for t in transforms}
        residuals = {t: [] for t in transforms}
        seconds = 0.0
        for seed in seeds:
            runs = {t: results[(method, seed, t)] for t in transforms}
            seconds += sum(run["seconds"] for run in runs.values())
            starts = next(iter(runs.values()))["starts"]
            for j, start in enumerate(starts):
                cells = [
                    method,
                    *([str(seed)] if show_seed else []),
                    f"({start[0]:g}, {start[1]:g})",
                ]
                for t, run in runs.items():
                    distances[t].append(run["distance_to_front"][j])
                    residuals[t].append(run["final_residual"][j])
                    cells += [_point(run["endpoints"][j]), _number(run["distance_to_front"][j])]
                for t in compared:
                    gap = _gap(runs["none"]["endpoints"][j], runs[t]["endpoints"][j])
                    gaps[t].append(gap)
                    cells.append(_number(gap, ".2e"))
                lines.append(_row(cells))
        summary.append(
            _row(
                [
                    method,
                    *[_number(_max(gaps[t]), ".2e") for t in compared],
                    *[_number(_max(distances[t])) for t in transforms],
                    *[_number(_max(residuals[t]), ".1e") for t in transforms],
                    f"{seconds:.0f}",
                ]
            )
        )
    notes = (
        "dist: Euclidean distance of the endpoint's untransformed losses (f0, f1) to the Pareto front (2,000 points of "
        "x2 = -8.3552, x1 in [-7, 7]); gap: |x_nominal - x_transformed| between the endpoints of the nominal and the "
        "transformed run from the same start (0 for a transformation-invariant method); residual: the final "
        "Pareto-stationarity residual min_a ||sum_i a_i grad f_i|| of the untransformed losses; seconds: the method's "
        f"runs together. n/a: not finite (the run diverged). With several seeds, {RANDOM_SEED_NOTE}."
    )
    return "\n".join(
        ["## Per method and start", "", *lines, "", PER_METHOD_HEADING, "", *summary, "", notes]
    )


PER_METHOD_HEADING = "## Per method"


def _max(values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None]
    return max(finite) if finite and len(finite) == len(values) else None


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


# ----------------------------------------------------------------------------- the figures


def draw_figures(
    results: Mapping[tuple[str, int, str], Mapping[str, Any]],
    methods: list[str],
    seed: int,
    transforms: list[str],
    folder: Path,
    *,
    steps: int,
    formats: tuple[str, ...] = ("png", "pdf"),
    processes: int = 1,
) -> list[Path]:
    """The paper's trajectory figures, in `formats`: `toy_nominal`; for each transformed version
    `toy_transformed` (mapped back to the untransformed losses) and `toy_transformed_scaled` (in
    the transformed loss space), with the transform's name appended when there are several; and
    `toy_invariance_gap`. With `processes > 1` (where processes can fork) the figures are drawn
    that many at a time (drawing is most of a quick run's time)."""
    jobs: list[tuple[str, tuple, list[Path]]] = []  # (kind, arguments, paths to save)
    transformed = [t for t in transforms if t != "none"]
    parts = panel_groups(methods)
    for transform in transforms:
        if transform == "none":
            names = {"toy_nominal": None}
            title = "Nominal losses"
        else:
            stem = (
                "toy_transformed"
                if len(transformed) == 1
                else f"toy_transformed_{_slug(transform)}"
            )
            names = {stem: None, f"{stem}_scaled": parse_toy_transform(transform)}
            title = f"Task {int(transform.split(':')[0])}'s loss transformed ({transform})"
        for name, scaled in names.items():
            suffix = "" if scaled is None else ", in the transformed loss space"
            for index, part in enumerate(parts):
                runs = [(method, results[(method, seed, transform)]) for method in part]
                numbered = name if index == 0 else f"{name}_{index + 1}"
                of = f" (part {index + 1} of {len(parts)})" if len(parts) > 1 else ""
                arguments = (
                    runs,
                    scaled,
                    steps,
                    f"{title}{suffix}: trajectories from the 5 starts (seed {seed}){of}",
                )
                jobs.append(
                    (
                        "trajectories",
                        arguments,
                        [folder / f"{numbered}.{extension}" for extension in formats],
                    )
                )
        if transform != "none" and "none" in transforms:
            gaps = {
                method: endpoint_gaps(
                    results[(method, seed, "none")], results[(method, seed, transform)]
                )
                for method in methods
            }
            gap_name = (
                "toy_invariance_gap"
                if len(transformed) == 1
                else f"toy_invariance_gap_{_slug(transform)}"
            )
            jobs.append(
                (
                    "gaps",
                    (gaps, transform, steps),
                    [folder / f"{gap_name}.{extension}" for extension in formats],
                )
            )
    return [
        path
        for paths in forked_starmap(_draw_and_save, jobs, processes=processes)
        for path in paths
    ]


PANELS_PER_FIGURE = 15
"""At most this many method panels per trajectory figure; more methods go to `<figure>_2`, ..."""


def panel_groups(methods: Sequence[str], /) -> list[list[str]]:
    """The methods in figures of at most `PANELS_PER_FIGURE` panels: the paper's methods first (in
    the order of `methods`), then the others grouped by family (`summary.family_groups`, as the
    supervised experiments' figures)."""
    from benchmarks.harness.summary import family_groups

    ordered = [method for _, group in family_groups(methods, first=PAPER_ORDER) for method in group]
    return [
        ordered[i : i + PANELS_PER_FIGURE] for i in range(0, len(ordered), PANELS_PER_FIGURE)
    ] or [[]]


def _draw_and_save(kind: str, arguments: tuple, paths: list[Path]) -> list[Path]:
    """One figure of `draw_figures`, saved in every format (module level: it may run in a forked process)."""
    if kind == "trajectories":
        runs, scaled, steps, title = arguments
        figure = _trajectory_figure(runs, scaled, steps=steps, title=title)
    else:
        gaps, transform, steps = arguments
        figure = invariance_gap_figure(gaps, transform, steps=steps)
    # not a pyplot figure, so save_figure_atomic's plt.close leaves it usable for the next format
    return [save_figure_atomic(figure, path, tight=kind != "trajectories") for path in paths]


def endpoint_gaps(nominal: Mapping[str, Any], transformed: Mapping[str, Any]) -> list[float]:
    """`|x_nominal - x_transformed|` at the end, per start (NaN where a run diverged)."""
    return [
        _gap(a, b) if _gap(a, b) is not None else math.nan
        for a, b in zip(nominal["endpoints"], transformed["endpoints"])
    ]


def invariance_gap_figure(gaps: Mapping[str, list[float]], transform: str, *, steps: int):
    """One row per method (ordered by median gap), one dot per start: the endpoint gap between
    the nominal and the transformed run on a log axis (gaps below 1e-16 drawn at 1e-16), over
    the band below 1e-8 that rounding and solver tolerances leave an invariant method."""
    import numpy as np
    from matplotlib.figure import Figure

    order = sorted(gaps, key=lambda m: np.nanmedian(np.array(gaps[m], dtype=float)))
    figure = Figure(figsize=(8, 0.38 * len(order) + 1.2), layout="constrained")
    ax = figure.subplots()
    for row, method in enumerate(order):
        values = np.clip(np.array(gaps[method], dtype=float), 1e-16, None)
        far = np.nanmedian(values) > 1e-3
        ax.scatter(
            values,
            np.full(values.shape, row),
            s=22,
            color="tab:red" if far else "tab:blue",
            zorder=3,
        )
    ax.axvspan(1e-16, 1e-8, color="tab:blue", alpha=0.08, label="rounding / solver tolerance")
    ax.set_xscale("log")
    ax.set_yticks(range(len(order)), [display_name(m) for m in order], fontsize=8)
    ax.set_xlabel("|x_nominal - x_transformed| at the end (one dot per start)")
    ax.set_title(f"Endpoint gap under {transform} ({steps:,} steps)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return figure


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in ".+-" else "-" for c in text).strip("-")


def _trajectory_figure(
    runs: list[tuple[str, Mapping[str, Any]]],
    scaled: TaskTransform | None,
    *,
    steps: int,
    title: str,
):
    """One panel per method: trajectories in (f0, f1) (tasks numbered from 0 as in the flags; or with the transformed task's axis in the
    transformed space), coloured by iteration (magma_r), over the Pareto front, starts marked."""
    import numpy as np
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    def space(losses: np.ndarray) -> np.ndarray:
        if scaled is None:
            return losses
        task, h = scaled.task, scaled.transform
        out = losses.copy()
        finite = np.isfinite(out[..., task])
        values = np.full(out.shape[:-1], np.nan)
        values[finite] = h(torch.as_tensor(out[..., task][finite], dtype=torch.float64)).numpy()
        out[..., task] = values
        return out

    front = space(TwoTaskToy().pareto_front(FRONT_POINTS).numpy())
    columns = min(5, len(runs))
    rows = math.ceil(len(runs) / columns)
    width, height = 3.2 * columns + 1.4, 3.0 * rows + 1.15
    # fixed margins in inches (a layout engine measures every tick label: most of the drawing time)
    figure = Figure(figsize=(width, height))
    axes = figure.subplots(
        rows,
        columns,
        squeeze=False,
        gridspec_kw={
            "left": 0.55 / width,
            "right": 1 - 1.4 / width,
            "bottom": 0.85 / height,
            "top": 1 - 0.75 / height,
            "wspace": 0.3,
            "hspace": 0.45,
        },
    )
    norm = Normalize(vmin=0, vmax=steps)
    mappable = None
    for ax, (method, run) in zip(axes.flat, runs):
        trajectory = run["trajectory"]
        losses = space(np.array(trajectory["losses"], dtype=float))  # [R, 5, 2], None -> nan
        iterations = np.array(trajectory["steps"], dtype=float)
        ax.plot(
            front[:, 0],
            front[:, 1],
            color="tab:blue",
            linewidth=2.5,
            alpha=0.6,
            zorder=1,
            label="Pareto front",
        )
        points = losses.transpose(1, 0, 2).reshape(-1, 2)  # start by start, in order of iteration
        mappable = ax.scatter(
            points[:, 0],
            points[:, 1],
            c=np.tile(iterations, losses.shape[1]),
            cmap="magma_r",
            norm=norm,
            s=3,
            linewidths=0,
            zorder=2,
            rasterized=True,
        )  # rasterized: a light, fast PDF
        ax.scatter(
            losses[0, :, 0],
            losses[0, :, 1],
            marker="o",
            s=28,
            facecolors="none",
            edgecolors="black",
            linewidths=1.0,
            zorder=3,
            label="start",
        )
        ax.scatter(
            losses[-1, :, 0],
            losses[-1, :, 1],
            marker="*",
            s=40,
            color="black",
            zorder=4,
            label="end",
        )
        ax.set_title(display_name(method), fontsize=10)
        x_task = "h(f0)" if scaled is not None and scaled.task == 0 else "f0"
        y_task = "h(f1)" if scaled is not None and scaled.task == 1 else "f1"
        ax.set_xlabel(x_task, fontsize=8)
        ax.set_ylabel(y_task, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(runs) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncols=3, fontsize=8, frameon=False)
    if mappable is not None:
        colorbar_axes = figure.add_axes(
            (
                1 - 1.15 / width,
                0.85 / height + 0.1 * (1 - 1.35 / height),
                0.15 / width,
                0.8 * (1 - 1.35 / height),
            )
        )
        figure.colorbar(mappable, cax=colorbar_axes, label="iteration")
    figure.suptitle(title, fontsize=11)
    return figure


# ----------------------------------------------------------------------------- the command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(
        parser,
        methods=",".join(default_methods()),
        seeds="0",
        transforms="none,0:power:4",
        methods_text=methods_in_words(
            len(PAPER_ORDER), "the paper's figures, in its panel order", len(default_methods())
        ),
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"Adam steps per run (default: {DEFAULT_STEPS:,}, the paper's; {QUICK_STEPS:,} with --quick)",
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=DEFAULT_LR,
        help="Adam learning rate on x (default: %(default)g, the paper's)",
    )
    parser.add_argument(
        "--dtype",
        choices=["float32", "float64"],
        default="float64",
        help="floating dtype of the runs (default: %(default)s; the reference trains in float32, where Adam amplifies rounding "
        "along the flat Pareto set so that even DiBS-MTL's nominal and transformed endpoints drift apart by up to 0.07)",
    )
    parser.add_argument(
        "--record-every",
        type=int,
        default=None,
        help=f"record the trajectories every N steps (default: steps // {RECORDS_PER_TRAJECTORY}, about {RECORDS_PER_TRAJECTORY} points per trajectory; the last step is always recorded)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--summary",
        action="store_true",
        help="print the tables of these settings' finished runs in --out without computing or writing anything "
        "(a read-only store works); fails, naming them, if runs are missing",
    )
