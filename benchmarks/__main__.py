"""`python -m benchmarks <experiment> [options]`; `python -m benchmarks --list` lists experiments."""

from __future__ import annotations

import argparse
import logging
import sys

from benchmarks import toy_demo
from benchmarks.perf import engine_step, nash_solver, tangent_solver
from core.errors import MTLInputError

EXPERIMENTS = {
    "demo": (toy_demo, "DiBS-MTL vs linear scalarisation and MGDA on the two-task toy, nominal and with task 1's loss transformed"),
    "perf-nash": (nash_solver, "Nash-MTL weight solve: our Newton solver vs a reference-style CCP with cvxpy (optional), at equal residual"),
    "perf-tangent": (tangent_solver, "tangent directions: torch MINRES vs SciPy MINRES on the same HVP, and the cost of one direction as n grows to 1e6"),
    "perf": (engine_step, "engine cost side by side: DiBS-MTL vs LS step, weight-solve share, batched vs looped per-task gradients"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--list", action="store_true", help="list the experiments and exit")
    commands = parser.add_subparsers(dest="experiment", metavar="EXPERIMENT")
    for name, (module, summary) in EXPERIMENTS.items():
        module.add_arguments(commands.add_parser(name, help=summary, description=summary))
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list or args.experiment is None:
        for name, (_, summary) in EXPERIMENTS.items():
            print(f"{name:<12} {summary}")
        return 0
    try:
        return EXPERIMENTS[args.experiment][0].main(args)
    except MTLInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
