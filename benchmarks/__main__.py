"""`python -m benchmarks <experiment> [options]`; `python -m benchmarks --list` lists the experiments, then the methods.

Every sweep prints one line on stderr when it starts: the runs left to do, the runs already
stored and, where the time per run was measured, the expected duration (docs/cli.md).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from benchmarks.experiments import pareto_multimnist, random_weighting, toy
from benchmarks.experiments.supervised import command
from benchmarks.harness import parallel, workers
from benchmarks.harness.runs import ResultStore
from benchmarks.perf import report
from core.errors import MTLInputError
from toy_problems.command_config import escape_help, expected_duration_line, method_listing
from toy_problems.store import unwritable_reason

EXPERIMENTS = {
    "toy": (
        toy,
        "the DiBS-MTL toy: every method from the 5 starts, nominal and with task 0's loss transformed; endpoints table and trajectory figures",
    ),
    "multimnist": (
        command("multimnist"),
        "LeNet on MultiMNIST (embedded digits or --data-root): every method x 3 seeds x 5 transforms of the left-digit loss, single-task baselines, Δm%, Δp, MR",
    ),
    "random_weighting": (
        random_weighting,
        "the litmus test: RLW (5 distributions) and RGW vs equal weighting, 5 seeds, on MultiMNIST and Auto MPG; Δp vs EW",
    ),
    "pareto_multimnist": (
        pareto_multimnist,
        "continuous Pareto exploration: 5 weighted-sum LeNets, tangent walks along e1 and e2, explored front, hypervolume, Pareto points per minute vs weighted-sum training",
    ),
    "nyuv2": (
        command("nyuv2"),
        "NYUv2 (3 tasks, SegNet-MTAN, the Nash-MTL protocol) on your preprocessed .npy data (--data-root)",
    ),
    "cityscapes": (
        command("cityscapes"),
        "Cityscapes (2 tasks, SegNet-MTAN, the Nash-MTL protocol) on your preprocessed .npy data (--data-root)",
    ),
    "qm9": (
        command("qm9"),
        "QM9 (11 targets, MPNN, the Nash-MTL protocol) on PyTorch Geometric's processed QM9 (--data-root)",
    ),
    "perf": (
        report.command("perf"),
        "the performance report, every ratio side by side in one run: DiBS-MTL/MGDA/Nash-MTL step vs LS, weight-solve share, batched vs looped gradients, MTL-R vs full, Nash-MTL vs reference solver, torch vs SciPy MINRES, tangent cost vs n, scaling with K; writes benchmarks/PERFORMANCE.md",
    ),
    "perf-nash": (
        report.command("perf-nash"),
        "alias of `perf --sections nash`: Nash-MTL weight solve, our Newton solver vs a reference-style CCP with cvxpy (optional), at equal residual",
    ),
    "perf-tangent": (
        report.command("perf-tangent"),
        "alias of `perf --sections tangent`: torch MINRES vs SciPy MINRES on the same HVP, and the cost of one tangent direction as n grows to 1e6",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--list",
        action="store_true",
        help="list the experiments, then every method (name, kind, family, paper, hyperparameters), and exit",
    )
    commands = parser.add_subparsers(dest="experiment", metavar="EXPERIMENT")
    for name, (module, summary) in EXPERIMENTS.items():
        subparser = commands.add_parser(
            name, help=escape_help(summary), description=summary
        )  # argparse %-formats help ("Δm%"), not descriptions
        module.add_arguments(subparser)
        if hasattr(module, "Config"):  # sweeps of stored runs can share their runs among workers
            workers.add_arguments(subparser)
    return parser


def listing() -> str:
    """The text of `--list`: the experiments, then the methods (as `python -m toy_problems --list`)."""
    lines = [f"{len(EXPERIMENTS)} experiments (python -m benchmarks EXPERIMENT --help):"]
    lines += [f"  {name:<18} {summary}" for name, (_, summary) in EXPERIMENTS.items()]
    return "\n".join([*lines, "", *method_listing()])


def announce_runs(module: Any, config: Any, runs: list, *, workers: int) -> None:
    """The expected-duration line of a sweep about to start, on stderr (nothing when no run is left
    or it is short; a worker or data-parallel rank leaves it to the process that started it)."""
    if os.environ.get("MTL_WORKER") is not None or parallel.inside_torchrun():
        return
    store = ResultStore(config.out, read_only=True)
    todo = [
        run for run in runs if config.fresh or not store.result_path(run).exists()
    ]  # a file check: nothing is read
    seconds, basis = module.expected_seconds(config, todo, workers=workers)
    line = expected_duration_line(len(todo), len(runs) - len(todo), seconds, basis=basis)
    if line is not None:
        print(line, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list or args.experiment is None:
        print(listing())
        return 0
    module = EXPERIMENTS[args.experiment][0]
    try:
        if not hasattr(module, "Config"):  # the performance report: a command of its own
            return module.main(args)
        config = module.Config.from_args(args)
        reads_only = getattr(config, "summary", False)  # a summary computes and writes nothing
        if not reads_only:  # refuse an unwritable store before any compute
            reason = unwritable_reason(config.out)
            if reason is not None:
                raise MTLInputError(f"--out {reason}")
        if not reads_only:
            runs = module.planned_runs(config)  # bad options fail here, before anything starts
            if not getattr(config, "summary_only", False):
                announce_runs(module, config, runs, workers=args.workers)
        if args.workers != 1 and not reads_only:
            workers.launch(sys.argv[1:] if argv is None else argv, args, runs)
            config = config.replace(
                fresh=False
            )  # the summary run: reuses what the workers stored, runs what is missing
        result = module.run(config)
        if result.report:
            print(result.report)
        return 0
    except MTLInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        where = f" in {args.out}" if getattr(args, "out", None) is not None else ""
        print(
            f"\ninterrupted: the finished runs are stored{where}; run the same command again to resume "
            "(finished runs are reused, interrupted ones restart from their last checkpoint)",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
