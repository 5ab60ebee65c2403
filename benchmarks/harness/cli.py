"""Command-line options every experiment shares, and their parsing into run lists."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from core.errors import InvalidHyperparameterError, MTLInputError
from core.registry import available_methods, canonical_spec, parse_method_specs


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def add_common_arguments(parser: argparse.ArgumentParser, *, methods: str, seeds: str, transforms: str, unset: bool = False) -> None:
    """--quick, --methods, --seeds, --transforms, --device, --out, --fresh. With `unset`, the
    parsed default of --methods, --seeds and --transforms is None (the experiment then chooses,
    e.g. fewer methods in quick mode) and the help names `methods`, `seeds`, `transforms` as the
    full run's defaults."""
    parser.add_argument("--quick", action="store_true", help="a few minutes' version of the experiment (fewer steps/epochs/seeds), stored apart from full runs")
    full_run = " (full run)" if unset else ""
    parser.add_argument(
        "--methods",
        default=None if unset else methods,
        help="comma-separated method specs, each a name or name:key=value:... (e.g. dibsmtl:steps=5,cagrad:c=0.5; "
        f"default{full_run}: {methods}); names: {', '.join(available_methods())}",
    )
    parser.add_argument("--seeds", default=None if unset else seeds, help=f"comma-separated integer seeds (default{full_run}: {seeds})")
    parser.add_argument(
        "--transforms",
        default=None if unset else transforms,
        help="comma-separated loss transforms, each 'none' or 'TASK:SPEC' with SPEC as core.transforms.parse_transform reads it "
        f"('exp', 'log', 'power:P', 'affine:A:B', joined by '|') (default{full_run}: {transforms})",
    )
    parser.add_argument("--device", default=default_device(), help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--out", type=Path, default=Path("results"), help="output folder; results go to OUT/<experiment>/ (default: %(default)s)")
    parser.add_argument("--fresh", action="store_true", help="delete this experiment's finished runs with the same settings and rerun them")


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
        raise InvalidHyperparameterError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise InvalidHyperparameterError(f"--seeds must list distinct non-negative integers, got {text!r}")
    return seeds


def parse_transforms(text: str) -> list[str]:
    transforms = [part.strip() for part in text.split(",") if part.strip()]
    if not transforms:
        raise InvalidHyperparameterError("--transforms must list at least one transform (or 'none')")
    return transforms
