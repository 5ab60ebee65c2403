"""Command-line options every experiment shares, and their parsing into run lists."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.errors import InvalidHyperparameterError, MTLInputError
from core.registry import canonical_spec, parse_method_specs
from toy_problems.command_config import escape_help


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def add_common_arguments(
    parser: argparse.ArgumentParser,
    *,
    methods: str,
    seeds: str,
    transforms: str,
    unset: bool = False,
    methods_text: str | None = None,
) -> None:
    """--quick, --methods, --seeds, --transforms, --device, --out, --fresh. With `unset`, the
    parsed default of --methods, --seeds and --transforms is None (the experiment then chooses,
    e.g. fewer methods in quick mode) and the help names `methods`, `seeds`, `transforms` as the
    full run's defaults. `methods_text` says in words what a long default list of methods is
    (the help stays readable; `--list` shows every method)."""
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few minutes' version of the experiment (fewer steps/epochs/seeds), stored apart from full runs",
    )
    full_run = " (full run)" if unset else ""
    parser.add_argument(
        "--methods",
        default=None if unset else methods,
        help=escape_help(
            "comma-separated method specs, each a name or name:key=value:... (e.g. dibsmtl:steps=5,cagrad:c=0.5; "
            f"default{full_run}: {methods_text or methods}); {METHODS_LISTED}"
        ),
    )
    parser.add_argument(
        "--seeds",
        default=None if unset else seeds,
        help=f"comma-separated integer seeds (default{full_run}: {seeds})",
    )
    parser.add_argument(
        "--transforms",
        default=None if unset else transforms,
        help=escape_help(transforms_help(transforms, full_run=full_run)),
    )
    parser.add_argument(
        "--device",
        default=default_device(),
        help="torch device (default: cuda if available, else cpu)",
    )
    parser.add_argument("--out", type=Path, default=Path("results"), help=OUT_HELP)
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="delete this experiment's finished runs with the same settings and rerun them",
    )


METHODS_LISTED = "`python -m benchmarks --list` (or `python -m toy_problems --list`) lists every method with its paper, kind and hyperparameters"
"""What every --methods help says instead of printing the registry's names."""
OUT_HELP = "root of the result store: runs, summaries and figures go to OUT/<experiment>/... (default: %(default)s)"
"""The one meaning of --out in every command line (docs/cli.md)."""


def transforms_help(default: str, /, *, full_run: str = "") -> str:
    """The help of every `--transforms` flag: one comma-separated list, each entry 'none' or TASK:SPEC."""
    return (
        "comma-separated loss transforms, each 'none' or 'TASK:SPEC' with SPEC as core.transforms.parse_transform reads it "
        f"('exp', 'log', 'power:P', 'affine:A:B', joined by '|') (default{full_run}: {default})"
    )


def methods_in_words(count_first: int, first_what: str, total: int, /) -> str:
    """A long default method list in words: 'the 15 methods of the published table, then every other
    method that works on the parameters (36 in all)'."""
    return f"the {count_first} methods of {first_what}, then every other method that works on the parameters ({total} in all)"


def parse_methods(text: str) -> list[str]:
    """`--methods` -> canonical specs (`core.registry.canonical_spec`: one text per method, which
    run ids are made of); unknown names or hyperparameters raise with the accepted ones listed."""
    try:
        return [canonical_spec(spec) for spec in parse_method_specs(text)]
    except MTLInputError as error:
        raise InvalidHyperparameterError(f"--methods {text!r}: {error}") from None


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InvalidHyperparameterError(
            f"--seeds must be comma-separated integers, got {text!r}"
        ) from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise InvalidHyperparameterError(
            f"--seeds must list distinct non-negative integers, got {text!r}"
        )
    return seeds


def parse_transforms(text: str) -> list[str]:
    transforms = [part.strip() for part in text.split(",") if part.strip()]
    if not transforms:
        raise InvalidHyperparameterError(
            "--transforms must list at least one transform (or 'none')"
        )
    return transforms


@dataclass(frozen=True)
class RunTiming:
    """The measured seconds of one run of an experiment at `epochs` epochs, one thread per run on
    `toy_problems.command_config.MACHINE` (`basis`: where they come from), which the expected-duration
    line scales by each run's own epochs (`run.config["protocol"]["epochs"]`)."""

    single_task: float
    method: float
    epochs: int
    basis: str

    def seconds(self, runs: Sequence[Any], /, *, workers: int = 1) -> float:
        """The expected wall time of `runs` (RunSpecs) over `workers` processes (at most the 2 cores at once)."""
        total = sum(
            (self.single_task if run.method.startswith("stl:") else self.method)
            * run.config["protocol"]["epochs"]
            / self.epochs
            for run in runs
        )
        return total / max(1, min(workers, 2))
