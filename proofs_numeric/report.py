"""What `python -m proofs_numeric` prints: the expected duration of a run, one row per claim (as
each finishes), and sub-tables for the claims that measure several things (per check, per method,
per setting), so that no row of the main table holds a cell of several hundred characters.

Formatting only: it reads a `ClaimResult` (its `data` as the claim modules write it) and never
changes a verdict. A sub-table row's own verdict comes from what the claim stored with it (its
value, bound and relation, or its `passed`/`agrees` flag).
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from proofs_numeric.claim import ClaimResult
from toy_problems.command_config import MACHINE, duration_text

logger = logging.getLogger(__name__)

CELL_WIDTH = 100
"""A main-table cell `measured | bound` longer than this is replaced by a summary of its sub-tables."""

# --------------------------------------------------------------------------------------------
# expected duration

EXPECTED_SECONDS: dict[str, tuple[float, float]] = {
    "invariance": (260.0, 3.5),
    "method_invariance": (205.0, 9.1),
    "dibs_mtl_convergence": (120.0, 12.8),
    "nash_transforms": (82.0, 2.5),
    "rlw_theorem": (60.0, 3.4),
    "dibs_theorems": (12.0, 3.2),
    "tangent_accuracy": (6.0, 0.8),
    "dibs_fairness": (5.0, 1.3),
}
"""Seconds of each claim alone on one torch thread, (full, quick), on `MACHINE`. Full: the timings
of docs/DECISIONS.md (idle machine; tangent_accuracy measured at 8.8 s beside two other jobs, scaled
like dibs_fairness and dibs_theorems, which took 1.45x their idle time there). Quick: measured one
after another beside a background benchmark (2026-12, about 37 s in all)."""
STARTUP_SECONDS = 5.0
"""Importing torch and the claim modules (`--list` takes 4-8 s on `MACHINE`)."""
UNKNOWN_CLAIM_SECONDS = (60.0, 5.0)
"""A claim missing from `EXPECTED_SECONDS` (a new one) is assumed to take this long."""


def claim_seconds(name: str, /, *, quick: bool) -> float:
    """The expected seconds of one claim alone in the given mode."""
    full, fast = EXPECTED_SECONDS.get(name, UNKNOWN_CLAIM_SECONDS)
    return fast if quick else full


def longest_first(names: Iterable[str], /, *, quick: bool) -> list[str]:
    """`names` by expected seconds in this mode, longest first: the order in which processes take
    them, which keeps the run's wall time close to the longest claim's or to the total / processes."""
    return sorted(names, key=lambda name: -claim_seconds(name, quick=quick))


def expected_seconds(names: Sequence[str], /, *, quick: bool, processes: int) -> float:
    """The wall time of running `names` in `processes` processes that each take the next claim
    (longest first) as soon as they are free, plus the start-up."""
    finish_times = [0.0] * max(1, min(processes, len(names)))
    for name in longest_first(names, quick=quick):
        heapq.heapreplace(finish_times, finish_times[0] + claim_seconds(name, quick=quick))
    return STARTUP_SECONDS + max(finish_times)


def expected_duration_line(names: Sequence[str], /, *, quick: bool, processes: int) -> str:
    """The line a run prints when it starts: its expected duration, and the other mode's."""
    mode, other = ("quick", "full run") if quick else ("full", "--quick")
    seconds = expected_seconds(names, quick=quick, processes=processes)
    other_seconds = expected_seconds(names, quick=not quick, processes=processes)
    claims = f"{len(names)} claim{'s' if len(names) != 1 else ''}"
    return (
        f"{claims}, {mode} mode, {processes} process{'es' if processes != 1 else ''}: expected "
        f"{duration_text(seconds)} on {MACHINE} (approximate; {other}: {duration_text(other_seconds)})"
    )


# --------------------------------------------------------------------------------------------
# rows and sub-tables


@dataclass(frozen=True)
class Table:
    """A sub-table under the main table: one row per check, method or setting of one claim.
    `failing` names the rows whose own criterion fails (None: the rows carry no verdict); `note`,
    printed under the title, says what a row's verdict means where the columns do not."""

    title: str
    unit: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    failing: tuple[str, ...] | None = None
    note: str = ""


class ClaimRow(NamedTuple):
    """One claim's line of the main table (the first four fields are the old row tuple, so
    `row[0]` is still the name and `row[1]` the verdict) and its sub-tables."""

    name: str
    verdict: str
    measured: str
    bound: str
    seconds: float = math.nan
    details: tuple[Table, ...] = ()


def claim_row(result: ClaimResult, /, *, seconds: float) -> ClaimRow:
    """The row and sub-tables of a finished claim."""
    verdict = "PASS" if result.passed else "FAIL"
    return ClaimRow(
        result.name, verdict, result.measured, result.bound, seconds, detail_tables(result)
    )


def detail_tables(result: ClaimResult, /) -> tuple[Table, ...]:
    """The claim's sub-tables: its checks (value against bound) and its per-method or per-setting
    measurements; for a claim with neither, its long cell split at its `;`."""
    tables: list[Table] = []
    builders = [_checks_table, *PER_SETTING_TABLES.get(result.name, ())]
    for build in builders:
        try:
            table = build(result.data)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
            # a claim whose data changed shape must not lose its row: fall back to its cell
            logger.warning(
                "%s: no sub-table from %s (%s: %s)",
                result.name,
                build.__name__,
                type(error).__name__,
                error,
            )
            continue
        if table is not None:
            tables.append(table)
    if not tables and len(_cell(result.measured, result.bound)) > CELL_WIDTH:
        tables.append(_cell_parts_table(result.measured, result.bound))
    return tuple(tables)


def _checks_table(data: dict[str, Any], /) -> Table | None:
    """`data["checks"]`: {name: {value, bound[, relation | sense][, passed]}}, the form the claims
    with numeric criteria store (no relation: `value <= bound`, as those claims test)."""
    checks = data.get("checks")
    if not isinstance(checks, dict) or not checks:
        return None
    rows, failing = [], []
    for name, check in checks.items():
        relation = check.get("relation") or check.get("sense") or "<="
        holds = (
            check["passed"]
            if "passed" in check
            else _holds(check["value"], relation, check["bound"])
        )
        rows.append(
            (name, number(check["value"]), f"{relation} {number(check['bound'])}", _verdict(holds))
        )
        if not holds:
            failing.append(name)
    return Table(
        "checks", "checks", ("check", "measured", "bound", "verdict"), tuple(rows), tuple(failing)
    )


def _holds(value: float, relation: str, bound: float) -> bool:
    if value is None or not math.isfinite(value):
        return False
    return value <= bound if relation == "<=" else value >= bound


def _invariance_table(data: dict[str, Any], /) -> Table:
    """invariance: per method, how far transformed runs move, in step scales (median and largest
    over runs), and the excess over the rounding control."""
    rows, failing = [], []
    for kind, methods in (("invariant", data["invariant"]), ("diverges", data["non_invariant"])):
        for method, measures in methods.items():
            rows.append(
                (
                    method,
                    kind,
                    number(measures["median_ratio"]),
                    number(measures["max_ratio"]),
                    number(measures["control_excess"]),
                    _verdict(measures["passed"]),
                )
            )
            if not measures["passed"]:
                failing.append(method)
    note = (
        f"verdict ok: invariant with median <= {number(data['invariance_tolerance'])} (Nash-MTL: any median) and control "
        f"excess <= 1; diverges with median >= {number(data['divergence_min'])}"
    )
    columns = ("method", "expected", "median", "largest", "control excess", "verdict")
    return Table(
        "per method, deviation of transformed runs in step scales",
        "methods",
        columns,
        tuple(rows),
        tuple(failing),
        note,
    )


def _method_invariance_table(data: dict[str, Any], /) -> Table:
    """method_invariance: per registered method, its declared and its measured invariance."""
    rows, failing = [], []
    for method, result in data["methods"].items():
        if "error" in result:
            rows.append((method, "", f"error: {result['error']}", _verdict(False)))
            failing.append(method)
            continue
        rows.append(
            (
                method,
                _invariance_kind(result["declared"]),
                _invariance_kind(result["measured"]),
                _verdict(result["agrees"]),
            )
        )
        if not result["agrees"]:
            failing.append(method)
    columns = ("method", "declared", "measured", "verdict")
    return Table(
        "per method, declared and measured invariance",
        "methods",
        columns,
        tuple(rows),
        tuple(failing),
        "verdict ok: they agree",
    )


def _invariance_kind(flags: dict[str, bool], /) -> str:
    if flags["monotone_invariant"]:
        return "monotone-invariant"
    return "rescaling only" if flags["rescaling_invariant"] else "neither"


def _rlw_settings_table(data: dict[str, Any], /) -> Table:
    """rlw_theorem: per problem (n, K) and setting, the final E||theta_k - theta*||^2 with its
    simultaneous CI, the theorem's bound there, and the largest upper CI end / bound over k (held
    against the claim's own limit on that ratio, stored with its check)."""
    limit = data.get("checks", {}).get(RLW_RATIO_CHECK, {}).get("bound", 1.0)
    rows, failing = [], []
    for curve in data["curves"]:
        final = curve["final"]
        holds = _holds(curve["max_upper_over_bound"], "<=", limit)
        rows.append(
            (
                curve["problem"],
                curve["setting"],
                f"{number(final['mean'])} [{number(final['low'])}, {number(final['high'])}]",
                number(final["bound"]),
                number(curve["max_upper_over_bound"]),
                _verdict(holds),
            )
        )
        if not holds:
            failing.append(f"{curve['problem']}, {curve['setting']}")
    columns = (
        "problem",
        "setting",
        "final E|theta - theta*|^2 [CI]",
        "final bound",
        "max upper CI / bound",
        "verdict",
    )
    note = f"verdict ok: the upper end of the simultaneous {100 * (1 - data['alpha']):g}% CI <= {number(limit)} x the bound at every k"
    return Table("per problem and setting", "settings", columns, tuple(rows), tuple(failing), note)


RLW_RATIO_CHECK = "upper CI / bound, max over k and settings"
"""rlw_theorem's check of the worst ratio; its bound is the limit each setting's ratio is held to."""


PER_SETTING_TABLES: dict[str, tuple[Callable[[dict[str, Any]], Table | None], ...]] = {
    "invariance": (_invariance_table,),
    "method_invariance": (_method_invariance_table,),
    "rlw_theorem": (_rlw_settings_table,),
}
"""The claims whose data holds measurements per method or setting, beyond `data["checks"]`."""


def _cell_parts_table(measured: str, bound: str, /) -> Table:
    """A long `measured | bound` cell as rows: its `;`-separated parts side by side (or its
    `,`-separated ones when it has a single part), the bound beside the first when they do not pair."""
    measured_parts, bound_parts = measured.split("; "), bound.split("; ")
    if len(measured_parts) == 1 and len(bound_parts) == 1:
        measured_parts, bound_parts = measured.split(", "), bound.split(", ")
    if len(bound_parts) != len(measured_parts):
        bound_parts = [bound] + [""] * (len(measured_parts) - 1)
    return Table(
        "measured | bound, part by part",
        "measurements",
        ("measured", "bound"),
        tuple(zip(measured_parts, bound_parts)),
    )


def number(value: Any, /) -> str:
    """A measured value in a few characters: 3 significant digits from 1e-3 to 1e4, else 2 in
    scientific notation (1e-12, 9.8e-16); booleans as yes/no."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if value is None:
        return "none"
    if not isinstance(value, float):
        return str(value)
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    return f"{value:.3g}" if 1e-3 <= abs(value) < 1e4 else f"{value:.2g}"


def _verdict(holds: bool) -> str:
    return "ok" if holds else "FAIL"


# --------------------------------------------------------------------------------------------
# the printed text


def _cell(measured: str, bound: str) -> str:
    return f"{measured} | {bound}"


def main_cell(row: ClaimRow, /) -> str:
    """The main table's last cell: `measured | bound` when short, else what the sub-tables hold
    (how many rows, which fail) with a pointer to them."""
    cell = _cell(row.measured, row.bound)
    if len(cell) <= CELL_WIDTH or not row.details:
        return cell
    parts = []
    for table in row.details:
        text = f"{len(table.rows)} {table.unit}"
        if table.failing is not None:
            shown = ", ".join(table.failing[:3]) + (", ..." if len(table.failing) > 3 else "")
            text += f", failing: {shown}" if table.failing else ", all ok"
        parts.append(text)
    return "; ".join(parts) + (" (table below)" if len(parts) == 1 else " (tables below)")


def table_header(width: int, /) -> str:
    return f"{'claim':<{width}}  verdict   time  measured | bound"


def table_line(row: ClaimRow, width: int, /) -> str:
    """One line of the main table."""
    seconds = (
        ""
        if math.isnan(row.seconds)
        else f"{row.seconds:.0f} s"
        if row.seconds >= 10
        else f"{row.seconds:.1f} s"
    )
    return f"{row.name:<{width}}  {row.verdict:<7}  {seconds:>5}  {main_cell(row)}"


def render_table(claim: str, table: Table, /) -> list[str]:
    """A sub-table's lines: its title, then columns padded to their widest cell, indented."""
    widths = [max(len(cell) for cell in column) for column in zip(table.columns, *table.rows)]
    lines = [f"{claim}: {table.title}"] + ([f"  {table.note}"] if table.note else [])
    for cells in (table.columns, *table.rows):
        lines.append(
            "  " + "  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip()
        )
    return lines


def detail_lines(rows: Sequence[ClaimRow], /) -> list[str]:
    """Every claim's sub-tables, a blank line before each."""
    lines: list[str] = []
    for row in rows:
        for table in row.details:
            lines += ["", *render_table(row.name, table)]
    return lines


def footer(rows: Sequence[ClaimRow], out: Path, /) -> str:
    """The last line: how many claims pass, which fail, where the results are."""
    failed = [row.name for row in rows if row.verdict != "PASS"]
    if failed:
        verdict = f"{len(failed)} of {len(rows)} claims FAIL: {', '.join(failed)}"
    else:
        verdict = f"all {len(rows)} claims pass" if len(rows) != 1 else "the claim passes"
    return f"{verdict}; results in {out}"


def name_width(names: Iterable[str], /) -> int:
    return max([len("claim"), *(len(name) for name in names)])


def report(rows: Sequence[ClaimRow], out: Path, /) -> str:
    """The whole report: the main table, the sub-tables under it, the footer."""
    width = name_width(row.name for row in rows)
    lines = [
        table_header(width),
        *(table_line(row, width) for row in rows),
        *detail_lines(rows),
        "",
        footer(rows, out),
    ]
    return "\n".join(lines)
