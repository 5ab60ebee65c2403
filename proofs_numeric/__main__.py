"""`python -m proofs_numeric [--quick] [--claim NAME] [--out DIR] [--processes N]`: run the numerical claim checks.

Prints the run's expected duration (to stderr), then one row per claim (verdict, seconds,
measured | bound, or a summary when that is long) as each claim finishes, then sub-tables for the
claims that measure several things (per check, method or setting) and a last line with the
verdict. Writes `<claim>.json` and `<claim>.png` to `OUT/proofs_numeric` (`OUT/proofs_numeric/quick`
with `--quick`; `--out OUT` is the result store's root, default `results`), and exits 1 when any
claim fails (2 on bad arguments). The notebooks read these files instead of rerunning a claim
(`proofs_numeric.claim.stored_or_run`). The claims are independent: with `--processes N` (default:
2, or 1 on a one-core machine) N forked processes take them in turn, longest first, one torch
thread each; a claim's numbers do not depend on which process runs it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
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
from proofs_numeric.report import (
    ClaimRow,
    claim_row,
    detail_lines,
    expected_duration_line,
    footer,
    longest_first,
    name_width,
    report,
    table_header,
    table_line,
)
from toy_problems.command_config import CommandConfig
from toy_problems.runner import forked_imap_unordered

CLAIMS = {
    module.NAME: module
    for module in (
        dibs_mtl_convergence,
        invariance,
        method_invariance,
        dibs_theorems,
        dibs_fairness,
        rlw_theorem,
        nash_transforms,
        tangent_accuracy,
    )
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m proofs_numeric", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="fewer starts and iterations: every claim in seconds"
    )
    parser.add_argument(
        "--claim", action="append", choices=sorted(CLAIMS), help="run only this claim (repeatable)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("results"),
        help="root of the result store: JSON and figures go to OUT/proofs_numeric (OUT/proofs_numeric/quick with "
        "--quick) (default: %(default)s)",
    )
    parser.add_argument(
        "--list", action="store_true", help="list the claims with their statements and exit"
    )
    parser.add_argument(
        "--processes",
        type=_positive_int,
        default=min(2, os.cpu_count() or 1),
        help="claims run in this many forked processes at once (default: %(default)s)",
    )
    return parser


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _run_and_save(name: str, quick: bool, out: Path) -> ClaimRow:
    """One claim run, timed and saved (module level: it runs in a forked process); its row, with
    its sub-tables built here so that only they, not the claim's data, travel back."""
    began = time.perf_counter()
    result = run_claim(CLAIMS[name], quick=quick)
    result.save(out)
    return claim_row(result, seconds=time.perf_counter() - began)


def _run_job(job: tuple[str, bool, Path]) -> ClaimRow:
    return _run_and_save(*job)


def run_claims(
    names: list[str],
    *,
    quick: bool,
    out: Path,
    processes: int = 1,
    on_row: Callable[[ClaimRow], None] | None = None,
) -> list[ClaimRow]:
    """Every claim in `names` run and saved under `out`, longest first; `on_row` sees each row as
    its claim finishes (in the order they finish); the rows come back in the order of `names`."""
    jobs = [(name, quick, out) for name in longest_first(names, quick=quick)]
    by_name: dict[str, ClaimRow] = {}
    for row in forked_imap_unordered(_run_job, jobs, processes=processes):
        by_name[row.name] = row
        if on_row is not None:
            on_row(row)
    return [by_name[name] for name in names]


@dataclass(frozen=True)
class Config(CommandConfig):
    """The settings of `python -m proofs_numeric`: one field per flag, with its name and default
    (`claim`: the claims to run, None for all; `out`: the root of the result store, the claims go to
    OUT/proofs_numeric, or OUT/proofs_numeric/quick in quick mode)."""

    quick: bool = False
    claim: tuple[str, ...] | None = None
    out: Path = Path("results")
    processes: int = field(default_factory=lambda: min(2, os.cpu_count() or 1))

    def names(self) -> list[str]:
        """The claims to run, in table order (the order asked, else `CLAIMS`')."""
        return list(dict.fromkeys(self.claim or CLAIMS))


@dataclass
class ClaimsResult:
    """What `run(config)` gives: a row per claim (name, verdict, measured, bound, seconds,
    sub-tables), the report the command prints (main table, sub-tables, verdict line), the folder
    the results went to, and whether every claim passed."""

    rows: list[ClaimRow]
    report: str
    out: Path
    passed: bool


def run(config: Config, /, *, on_row: Callable[[ClaimRow], None] | None = None) -> ClaimsResult:
    """Run and save the claims of `config` (`on_row` sees each row as its claim finishes); unknown
    claim names raise ValueError."""
    unknown = sorted(set(config.claim or ()) - set(CLAIMS))
    if unknown:
        raise ValueError(f"unknown claims {unknown}; choose from {', '.join(sorted(CLAIMS))}")
    if config.processes < 1:
        raise ValueError(f"processes must be at least 1, got {config.processes}")
    out = (
        Path(config.out) / "proofs_numeric" / ("quick" if config.quick else "")
    )  # quick never overwrites full
    rows = run_claims(
        config.names(), quick=config.quick, out=out, processes=config.processes, on_row=on_row
    )
    return ClaimsResult(rows, report(rows, out), out, all(row.verdict == "PASS" for row in rows))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.list:
        for name, module in CLAIMS.items():
            print(f"{name}: {module.STATEMENT}")
        return 0
    config = Config.from_args(args)
    names = config.names()
    width = name_width(names)
    # rows print in the order the claims finish, not table order: the claims run longest first,
    # so the table's first claim may finish last and would hold back every row above it
    print(
        expected_duration_line(
            names, quick=config.quick, processes=min(config.processes, len(names))
        ),
        file=sys.stderr,
        flush=True,
    )
    print(table_header(width), flush=True)
    try:
        result = run(config, on_row=lambda row: print(table_line(row, width), flush=True))
    except KeyboardInterrupt:
        print(
            "\ninterrupted: the claims that finished are saved; run the same command again "
            "(--claim NAME runs only the ones you name)",
            file=sys.stderr,
        )
        return 130
    print("\n".join([*detail_lines(result.rows), "", footer(result.rows, result.out)]), flush=True)
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
