"""`python -m proofs_numeric [--quick] [--claim NAME] [--out DIR] [--processes N]`: run the numerical claim checks.

Prints one row per claim (verdict, measured, bound), writes `<claim>.json` and `<claim>.png`
under `--out` (default `results/proofs_numeric`, `results/proofs_numeric/quick` with `--quick`),
and exits 1 when any claim fails (2 on bad arguments). The notebooks read these files instead of
rerunning a claim (`proofs_numeric.claim.stored_or_run`). The claims are independent: with
`--processes N` (default: 2, or 1 on a one-core machine) N forked processes take them in turn,
longest first, one torch thread each; a claim's numbers do not depend on which process runs it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from proofs_numeric import (
    dibs_fairness,
    dibs_mtl_convergence,
    dibs_theorems,
    invariance,
    method_invariance,
    nash_transforms,
    rlw_theorem,
    tangent_accuracy,
)
from proofs_numeric.claim import run_claim
from toy_problems.command_config import CommandConfig
from toy_problems.runner import forked_starmap

DEFAULT_OUT = Path("results/proofs_numeric")
CLAIMS = {
    module.NAME: module
    for module in (dibs_mtl_convergence, invariance, method_invariance, dibs_theorems, dibs_fairness, rlw_theorem, nash_transforms, tangent_accuracy)
}
LONGEST_FIRST = ("invariance", "method_invariance", "dibs_mtl_convergence", "nash_transforms", "rlw_theorem", "dibs_theorems", "tangent_accuracy", "dibs_fairness")
"""The claims by their full run's time (measured), the order in which processes take them."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m proofs_numeric", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer starts and iterations: every claim in seconds")
    parser.add_argument("--claim", action="append", choices=sorted(CLAIMS), help="run only this claim (repeatable)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for JSON and figures (default: results/proofs_numeric, with --quick results/proofs_numeric/quick)")
    parser.add_argument("--list", action="store_true", help="list the claims with their statements and exit")
    parser.add_argument("--processes", type=_positive_int, default=min(2, os.cpu_count() or 1),
                        help="claims run in this many forked processes at once (default: %(default)s)")
    return parser


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _run_and_save(name: str, quick: bool, out: Path) -> tuple[str, str, str, str]:
    """One claim run and saved (module level: it runs in a forked process); its table row."""
    result = run_claim(CLAIMS[name], quick=quick)
    result.save(out)
    return name, "PASS" if result.passed else "FAIL", result.measured, result.bound


def run_claims(names: list[str], *, quick: bool, out: Path, processes: int = 1) -> list[tuple[str, str, str, str]]:
    """Every claim in `names` run and saved under `out`; their table rows in the order of `names`."""
    ordered = sorted(names, key=LONGEST_FIRST.index)
    rows = forked_starmap(_run_and_save, [(name, quick, out) for name in ordered], processes=processes)
    by_name = {row[0]: row for row in rows}
    return [by_name[name] for name in names]


@dataclass(frozen=True)
class Config(CommandConfig):
    """The settings of `python -m proofs_numeric`: one field per flag, with its name and default
    (`claim`: the claims to run, None for all; `out` None: the default folder of the mode)."""

    quick: bool = False
    claim: tuple[str, ...] | None = None
    out: Path | None = None
    processes: int = field(default_factory=lambda: min(2, os.cpu_count() or 1))


@dataclass
class ClaimsResult:
    """What `run(config)` gives: a table row (name, verdict, measured, bound) per claim, the table
    the command prints, the folder the results went to, and whether every claim passed."""

    rows: list[tuple[str, str, str, str]]
    report: str
    out: Path
    passed: bool


def run(config: Config, /) -> ClaimsResult:
    """Run and save the claims of `config`; unknown claim names raise ValueError."""
    unknown = sorted(set(config.claim or ()) - set(CLAIMS))
    if unknown:
        raise ValueError(f"unknown claims {unknown}; choose from {', '.join(sorted(CLAIMS))}")
    if config.processes < 1:
        raise ValueError(f"processes must be at least 1, got {config.processes}")
    out = config.out if config.out is not None else (DEFAULT_OUT / "quick" if config.quick else DEFAULT_OUT)  # quick never overwrites full
    names = list(dict.fromkeys(config.claim or CLAIMS))
    rows = run_claims(names, quick=config.quick, out=out, processes=config.processes)
    width = max(len(row[0]) for row in rows)
    lines = [f"{'claim':<{width}}  verdict  measured | bound"]
    lines += [f"{name:<{width}}  {verdict:<7}  {measured} | {bound}" for name, verdict, measured, bound in rows]
    lines.append(f"\nresults in {out}")
    return ClaimsResult(rows, "\n".join(lines), Path(out), all(row[1] == "PASS" for row in rows))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.list:
        for name, module in CLAIMS.items():
            print(f"{name}: {module.STATEMENT}")
        return 0
    config = Config.from_args(args)
    try:
        result = run(config)
    except KeyboardInterrupt:
        print("\ninterrupted: the claims that finished are saved; run the same command again "
              "(--claim NAME runs only the ones you name)", file=sys.stderr)
        return 130
    print(result.report)
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
