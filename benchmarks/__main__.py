"""`python -m benchmarks <experiment> [options]`; `python -m benchmarks --list` lists experiments."""

from __future__ import annotations

import argparse
import logging
import sys

from benchmarks.experiments import pareto_multimnist, random_weighting, toy
from benchmarks.experiments.supervised import command
from benchmarks.harness import workers
from benchmarks.perf import report
from core.errors import MTLInputError
from toy_problems.store import unwritable_reason

EXPERIMENTS = {
    "toy": (toy, "the DiBS-MTL toy: every method from the 5 starts, nominal and with task 0's loss transformed; endpoints table and trajectory figures"),
    "multimnist": (command("multimnist"), "LeNet on MultiMNIST (embedded digits or --data-root): every method x 3 seeds x 5 transforms of the left-digit loss, single-task baselines, Δm%, Δp, MR"),
    "random_weighting": (random_weighting, "the litmus test: RLW (5 distributions) and RGW vs equal weighting, 5 seeds, on MultiMNIST and Auto MPG; Δp vs EW"),
    "pareto_multimnist": (pareto_multimnist, "continuous Pareto exploration: 5 weighted-sum LeNets, tangent walks along e1 and e2, explored front, hypervolume, Pareto points per minute vs weighted-sum training"),
    "nyuv2": (command("nyuv2"), "NYUv2 (3 tasks, SegNet-MTAN, the Nash-MTL protocol) on your preprocessed .npy data (--data-root)"),
    "cityscapes": (command("cityscapes"), "Cityscapes (2 tasks, SegNet-MTAN, the Nash-MTL protocol) on your preprocessed .npy data (--data-root)"),
    "qm9": (command("qm9"), "QM9 (11 targets, MPNN, the Nash-MTL protocol) on PyTorch Geometric's processed QM9 (--data-root)"),
    "perf": (report.command("perf"), "the performance report, every ratio side by side in one run: DiBS-MTL/MGDA/Nash-MTL step vs LS, weight-solve share, batched vs looped gradients, MTL-R vs full, Nash-MTL vs reference solver, torch vs SciPy MINRES, tangent cost vs n, scaling with K; writes benchmarks/PERFORMANCE.md"),
    "perf-nash": (report.command("perf-nash"), "alias of `perf --sections nash`: Nash-MTL weight solve, our Newton solver vs a reference-style CCP with cvxpy (optional), at equal residual"),
    "perf-tangent": (report.command("perf-tangent"), "alias of `perf --sections tangent`: torch MINRES vs SciPy MINRES on the same HVP, and the cost of one tangent direction as n grows to 1e6"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--list", action="store_true", help="list the experiments and exit")
    commands = parser.add_subparsers(dest="experiment", metavar="EXPERIMENT")
    for name, (module, summary) in EXPERIMENTS.items():
        subparser = commands.add_parser(name, help=summary, description=summary)
        module.add_arguments(subparser)
        if hasattr(module, "Config"):  # sweeps of stored runs can share their runs among workers
            workers.add_arguments(subparser)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list or args.experiment is None:
        for name, (_, summary) in EXPERIMENTS.items():
            print(f"{name:<18} {summary}")
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
        if args.workers != 1 and not reads_only:
            workers.launch(sys.argv[1:] if argv is None else argv, args, module.planned_runs(config))
            config = config.replace(fresh=False)  # the summary run: reuses what the workers stored, runs what is missing
        result = module.run(config)
        if result.report:
            print(result.report)
        return 0
    except MTLInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        where = f" in {args.out}" if getattr(args, "out", None) is not None else ""
        print(f"\ninterrupted: the finished runs are stored{where}; run the same command again to resume "
              "(finished runs are reused, interrupted ones restart from their last checkpoint)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
