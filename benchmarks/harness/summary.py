"""Summary tables of a supervised experiment, recomputed from its stored runs.

Per (transform, method): every metric as mean +- sample std over seeds; Delta_m% (flat over
metrics, lower is better) against the single-task base, as mean +- std over seeds of each seed's
Delta_m; Delta_p (task-balanced, higher is better) against equal weighting under the same
transform; Mean Rank among the methods run under that transform (single-task runs excluded).
The base is the harness's own single-task runs ("stl:TASK", nominal losses, mean over their
seeds) when the experiment trained them, else the suite's published base values.

A value over one seed has no spread: it is printed as `value (n=1)`, never `value ± 0`, and the
figures draw no error bar for it. With more methods than one panel holds (`PANEL_SLOTS`), the
figures and the Delta_m% pivot group the methods: the caller's `first` methods (e.g. the published
table's) first, then one group per family (`method_family`).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from benchmarks.harness.suite import MetricSpec
from core.metrics import delta_m, delta_p, mean_rank

PANEL_SLOTS = 15
"""At most this many method slots in one row of a figure's panels; more methods are grouped."""
FIRST_GROUP = "published table"
"""The label of the `first` methods' group."""
SINGLE_TASK = "single-task (stl)"
"""The method cell of the single-task reference row."""


@dataclass(frozen=True)
class Row:
    transform: str
    method: str
    seeds: tuple[int, ...]
    mean: dict[str, float]
    std: dict[str, float]
    delta_m: tuple[float, float] | None
    delta_p: float | None
    mean_rank: float | None
    diverged: int
    per_seed: dict[int, list[float]] = field(
        default_factory=dict
    )  # seed -> metric values in suite order
    paired_delta_p: tuple[float, float, int, int] | None = (
        None  # mean, std, wins, pairs against the reference, seed by seed
    )
    paired_delta_p_per_seed: dict[int, float] = field(
        default_factory=dict
    )  # seed -> Δp against the reference's run of that seed
    delta_m_per_seed: dict[int, float] = field(
        default_factory=dict
    )  # seed -> Δm% of that seed's run against the base


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def spread(
    mean: float, std: float, count: int, /, *, digits: str = ".2f", std_digits: str | None = None
) -> str:
    """`mean ± std` over `count` values, or `mean (n=1)` for one value (its std of 0 is no spread)."""
    if count == 1:
        return f"{mean:{digits}} (n=1)"
    return f"{mean:{digits}} ± {std:{std_digits or digits.lstrip('+')}}"


# -- scores ------------------------------------------------------------------------------------------


def single_task_base(
    records: Sequence[Mapping[str, Any]], metrics: Sequence[MetricSpec]
) -> dict[str, float] | None:
    """Each metric's value in its own task's single-task runs (mean over seeds), if all exist."""
    values = _single_task_values(records, metrics)
    if any(metric.name not in values for metric in metrics):
        return None
    return {name: statistics.fmean(found) for name, found in values.items()}


def _single_task_values(
    records: Sequence[Mapping[str, Any]], metrics: Sequence[MetricSpec]
) -> dict[str, list[float]]:
    """Each metric's values over its own task's finished single-task runs (one per seed)."""
    values: dict[str, list[float]] = defaultdict(list)
    for record in records:
        method, result = record["spec"]["method"], record["result"]
        if method.startswith("stl:") and result.get("status") == "finished":
            task = method.split(":", 1)[1]
            for metric in metrics:
                if metric.task == task:
                    values[metric.name].append(result["selected"]["test"][metric.name])
    return values


def single_task_reference(
    records: Sequence[Mapping[str, Any]],
    metrics: Sequence[MetricSpec],
    /,
    *,
    published_base: Mapping[str, float] | None = None,
) -> Row | None:
    """The single-task reference as a table row: each metric over its task's single-task runs
    (mean, std and seeds), else the published base values (no seeds), else None. Its Δm% is 0 by
    definition, so the row carries none."""
    values = _single_task_values(records, metrics)
    if all(metric.name in values for metric in metrics):
        seeds = tuple(
            sorted(
                {
                    r["spec"]["seed"]
                    for r in records
                    if r["spec"]["method"].startswith("stl:")
                    and r["result"].get("status") == "finished"
                }
            )
        )
        mean = {name: _mean_std(found)[0] for name, found in values.items()}
        std = {name: _mean_std(found)[1] for name, found in values.items()}
        return Row("none", SINGLE_TASK, seeds, mean, std, None, None, None, 0)
    if published_base is not None:
        return Row(
            "none", "single-task (published)", (), dict(published_base), {}, None, None, None, 0
        )
    return None


def summarize(
    records: Sequence[Mapping[str, Any]],
    metrics: Sequence[MetricSpec],
    /,
    *,
    published_base: Mapping[str, float] | None = None,
    reference_method: str = "ls",
) -> tuple[list[Row], dict[str, float] | None, str]:
    """Rows in (transform, method) order of first appearance, the base used and its origin."""
    names = [m.name for m in metrics]
    higher = [m.higher_is_better for m in metrics]
    tasks = [m.task for m in metrics]
    base = single_task_base(records, metrics)
    origin = "single-task runs of this experiment (mean over their seeds)"
    if base is None and published_base is not None:
        base, origin = dict(published_base), "published single-task values"
    elif base is None:
        origin = "none (no single-task runs and no published base)"

    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for record in records:
        spec = record["spec"]
        if not spec["method"].startswith("stl:"):
            groups[(spec["transform"], spec["method"])].append(record)
    rows = []
    for (transform, method), members in groups.items():
        finished = [r for r in members if r["result"].get("status") == "finished"]
        seeds = tuple(sorted(r["spec"]["seed"] for r in finished))
        per_metric = {n: [r["result"]["selected"]["test"][n] for r in finished] for n in names}
        if finished:
            mean = {n: _mean_std(v)[0] for n, v in per_metric.items()}
            std = {n: _mean_std(v)[1] for n, v in per_metric.items()}
        else:
            mean, std = {}, {}
        dm = None
        seed_scores: dict[int, float] = {}
        if base is not None and finished:
            seed_scores = {
                r["spec"]["seed"]: delta_m(
                    [r["result"]["selected"]["test"][n] for n in names],
                    [base[n] for n in names],
                    higher,
                )
                for r in finished
            }
            dm = _mean_std(list(seed_scores.values()))
        per_seed = {
            r["spec"]["seed"]: [r["result"]["selected"]["test"][n] for n in names] for r in finished
        }
        rows.append(
            Row(
                transform,
                method,
                seeds,
                mean,
                std,
                dm,
                None,
                None,
                len(members) - len(finished),
                per_seed,
                delta_m_per_seed=seed_scores,
            )
        )

    by_transform: dict[str, list[int]] = defaultdict(list)
    for index, row in enumerate(rows):
        if row.mean:
            by_transform[row.transform].append(index)
    for indices in by_transform.values():
        ranks = (
            mean_rank([[rows[i].mean[n] for n in names] for i in indices], higher)
            if len(indices) > 1
            else None
        )
        reference = next((rows[i] for i in indices if rows[i].method == reference_method), None)
        for position, i in enumerate(indices):
            row = rows[i]
            dp = paired = None
            per_seed: dict[int, float] = {}
            if reference is not None:
                dp = delta_p(
                    [row.mean[n] for n in names], [reference.mean[n] for n in names], higher, tasks
                )
                common = sorted(set(row.per_seed) & set(reference.per_seed))
                if common:
                    per_seed = {
                        s: delta_p(row.per_seed[s], reference.per_seed[s], higher, tasks)
                        for s in common
                    }
                    scores = list(per_seed.values())
                    paired = (*_mean_std(scores), sum(score > 0 for score in scores), len(scores))
            rows[i] = replace(
                row,
                delta_p=dp,
                mean_rank=float(ranks[position]) if ranks is not None else None,
                paired_delta_p=paired,
                paired_delta_p_per_seed=per_seed,
            )
    return rows, base, origin


# -- tables ------------------------------------------------------------------------------------------


def markdown_table(
    rows: Sequence[Row],
    metrics: Sequence[MetricSpec],
    /,
    *,
    reference_method: str = "ls",
    single_task: Row | None = None,
) -> str:
    """One markdown table: metrics (mean +- std), Delta_m%, Delta_p vs the reference (of the seed
    means, and seed by seed: mean +- std and how many seeds beat the reference), MR, seeds; with
    `single_task` (`single_task_reference`), that reference first, its Δm% 0 by definition."""
    arrows = {m.name: "↑" if m.higher_is_better else "↓" for m in metrics}
    header = [
        "transform",
        "method",
        *[f"{m.name} {arrows[m.name]}" for m in metrics],
        "Δm% ↓",
        f"Δp vs {reference_method} ↑",
        "paired Δp (wins)",
        "MR ↓",
        "seeds",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    if single_task is not None:
        lines.append("| " + " | ".join(_single_task_cells(single_task, metrics)) + " |")
    for row in rows:
        count = len(row.seeds)
        cells = [row.transform.replace("|", "\\|"), row.method]  # a transform spec may hold "|"
        cells += [
            spread(row.mean[m.name], row.std[m.name], count, digits=".4g", std_digits=".2g")
            if row.mean
            else "–"
            for m in metrics
        ]
        cells.append(spread(*row.delta_m, count, digits="+.2f") if row.delta_m else "–")
        cells.append(f"{row.delta_p:+.2f}" if row.delta_p is not None else "–")
        cells.append(
            _paired_cell(*row.paired_delta_p)
            if row.paired_delta_p and row.method != reference_method
            else "–"
        )
        cells.append(f"{row.mean_rank:.2f}" if row.mean_rank is not None else "–")
        cells.append(f"{count}" + (f" ({row.diverged} diverged)" if row.diverged else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _paired_cell(mean: float, std: float, wins: int, pairs: int) -> str:
    """Δp seed by seed against the reference: `mean ± std (wins/pairs)`; one pair: its value, the
    `(wins/1)` already says n=1."""
    value = f"{mean:+.2f}" if pairs == 1 else spread(mean, std, pairs, digits="+.2f")
    return f"{value} ({wins}/{pairs})"


def _single_task_cells(row: Row, metrics: Sequence[MetricSpec]) -> list[str]:
    """The reference row: each metric of its own task's runs; Δm% 0 by definition; no Δp or rank."""
    count = len(row.seeds)
    values = [
        spread(row.mean[m.name], row.std[m.name], count, digits=".4g", std_digits=".2g")
        if count
        else f"{row.mean[m.name]:.4g}"
        for m in metrics
    ]
    return [
        row.transform,
        row.method,
        *values,
        "0 (reference)",
        "–",
        "–",
        "–",
        str(count) if count else "published",
    ]


def delta_m_pivot(rows: Sequence[Row], /, *, first: Sequence[str] = ()) -> str:
    """Δm% (mean ± std over seeds) with one row per method and one column per loss transform; with
    more methods than `PANEL_SLOTS`, a first column names each group (`method_groups`)."""
    transforms = list(dict.fromkeys(row.transform for row in rows))
    groups = method_groups(list(dict.fromkeys(row.method for row in rows)), first=first)
    lookup = {(row.transform, row.method): row for row in rows}
    grouped = len(groups) > 1
    header = [
        *(["group"] if grouped else []),
        "method",
        *[t.replace("|", "\\|") for t in transforms],
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, methods in groups:
        for index, method in enumerate(methods):
            cells = [
                *([label if index == 0 else ""] if grouped else []),
                method,
            ]  # the label once, on the group's first row
            for transform in transforms:
                row = lookup.get((transform, method))
                cells.append(
                    spread(*row.delta_m, len(row.seeds), digits="+.2f")
                    if row is not None and row.delta_m
                    else "–"
                )
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def delta_m_seed_table(rows: Sequence[Row], /) -> str:
    """Δm% of each seed's run, one row per transform and method, one column per seed (the spread
    behind the summary's mean ± std, and what pairs rows seed by seed); "–" where a seed's run is
    missing or diverged."""
    seeds = sorted({seed for row in rows for seed in row.delta_m_per_seed})
    header = ["transform", "method", *[f"seed {seed}" for seed in seeds]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if not row.delta_m_per_seed:
            continue
        cells = [row.transform.replace("|", "\\|"), row.method]
        cells += [
            f"{row.delta_m_per_seed[seed]:+.2f}" if seed in row.delta_m_per_seed else "–"
            for seed in seeds
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def transform_drift_table(records: Sequence[Mapping[str, Any]], /) -> str:
    """How far each transformed run lies from the nominal run of the same method and seed, seed by
    seed: the largest relative difference over the test metrics after the first epoch and after
    the last epoch both runs finished. An update invariant to the transform stays at
    float-rounding level after one epoch, unless training amplifies the rounding early (as it
    amplifies any difference later); one that is not moves at once. "" when no finished run pairs
    with a nominal one."""
    histories: dict[tuple[str, str, int], list[Mapping[str, Any]]] = {}
    for record in records:
        spec, result = record["spec"], record["result"]
        if result.get("status") == "finished" and not spec["method"].startswith("stl:"):
            histories[(spec["transform"], spec["method"], spec["seed"])] = result["history"]
    gaps: dict[tuple[str, str], dict[int, tuple[float, float, int]]] = defaultdict(dict)
    for (transform, method, seed), history in sorted(
        histories.items(), key=lambda item: item[0][2]
    ):
        nominal = histories.get(("none", method, seed))
        if transform == "none" or not nominal or not history:
            continue
        last = min(len(history), len(nominal)) - 1
        gaps[(transform, method)][seed] = (
            _relative_gap(history[0]["test"], nominal[0]["test"]),
            _relative_gap(history[last]["test"], nominal[last]["test"]),
            last + 1,
        )
    if not gaps:
        return ""
    lines = [
        "| transform | method | after epoch 1 | after the last epoch |",
        "|---|---|---|---|",
    ]
    for (transform, method), by_seed in gaps.items():
        first = " / ".join(f"{gap:.1e} (seed {seed})" for seed, (gap, _, _) in by_seed.items())
        last = " / ".join(
            f"{gap:.1e} (seed {seed}, epoch {epoch})" for seed, (_, gap, epoch) in by_seed.items()
        )
        lines.append(f"| {transform.replace('|', chr(92) + '|')} | {method} | {first} | {last} |")
    return "\n".join(lines)


def _relative_gap(values: Mapping[str, float], reference: Mapping[str, float]) -> float:
    """The largest |value - reference| / |reference| over the metrics (the absolute gap where the
    reference is 0)."""
    return max(
        abs(values[name] - ref) / abs(ref) if ref else abs(values[name] - ref)
        for name, ref in reference.items()
    )


# -- method groups -----------------------------------------------------------------------------------


def method_family(spec: str, /) -> str:
    """A method spec's family: the module of `core.methods` that defines it ("gradient_alignment");
    "other" for a run name that is no registry spec (random_weighting's variants, "ew")."""
    from core.errors import MTLInputError
    from core.registry import describe_method, parse_method_spec

    try:
        return describe_method(parse_method_spec(spec).name).cls.__module__.rsplit(".", 1)[-1]
    except MTLInputError:  # UnknownMethodError, or a malformed spec
        return "other"


def family_groups(
    methods: Sequence[str], /, *, first: Sequence[str] = ()
) -> list[tuple[str, list[str]]]:
    """`methods` in labelled groups: those listed in `first` (in the order of `methods`) as one
    group, then one group per family, families alphabetically, each in the order of `methods`."""
    chosen = set(first)
    leading = [m for m in methods if m in chosen]
    families: dict[str, list[str]] = defaultdict(list)
    for method in methods:
        if method not in chosen:
            families[method_family(method)].append(method)
    groups = [(FIRST_GROUP, leading)] if leading else []
    return groups + [(family.replace("_", " "), families[family]) for family in sorted(families)]


def method_groups(
    methods: Sequence[str], /, *, first: Sequence[str] = ()
) -> list[tuple[str, list[str]]]:
    """The groups the figures and the pivot show: one group of every method, in order, when they
    fit one panel (`PANEL_SLOTS`), else `family_groups`."""
    if len(methods) <= PANEL_SLOTS:
        return [("", list(methods))]
    return family_groups(methods, first=first)


def _panel_rows(groups: list[tuple[str, list[str]]], /) -> list[list[tuple[str, list[str]]]]:
    """The groups packed, in order, into rows of at most `PANEL_SLOTS` method slots (a larger
    group is split into parts of that size)."""
    parts = []
    for label, methods in groups:
        chunks = [methods[i : i + PANEL_SLOTS] for i in range(0, len(methods), PANEL_SLOTS)] or [[]]
        parts += [
            (label if len(chunks) == 1 else f"{label} ({k + 1}/{len(chunks)})", chunk)
            for k, chunk in enumerate(chunks)
        ]
    rows: list[list[tuple[str, list[str]]]] = [[]]
    for part in parts:
        if rows[-1] and sum(len(m) for _, m in rows[-1]) + len(part[1]) > PANEL_SLOTS:
            rows.append([])
        rows[-1].append(part)
    return rows


def _method_panels(
    rows: Sequence[Row],
    *,
    first: Sequence[str],
    slot_width: float,
    row_height: float,
    extra_width: float,
):
    """A figure with one panel per method group (rows of at most `PANEL_SLOTS` slots, every slot
    the same width, the y axis shared) and the panels with their methods."""
    from matplotlib.figure import Figure

    methods = list(dict.fromkeys(row.method for row in rows))
    packed = _panel_rows(method_groups(methods, first=first))
    slots = min(max(len(methods), 1), PANEL_SLOTS)
    figure = Figure(
        figsize=(max(6.0, slot_width * slots + extra_width), row_height * len(packed) + 0.9),
        layout="constrained",
    )
    grid = figure.add_gridspec(len(packed), slots)
    panels = []
    for r, row_groups in enumerate(packed):
        start = 0
        for label, group in row_groups:
            axis = figure.add_subplot(
                grid[r, start : start + max(len(group), 1)], sharey=panels[0][0] if panels else None
            )
            if start > 0:
                axis.tick_params(labelleft=False)
            if label:
                axis.set_title(label, fontsize=9)
            panels.append((axis, group))
            start += max(len(group), 1)
    return figure, panels


def _slot_offsets(count: int, width: float) -> list[float]:
    """The x offsets of `count` series side by side within a method's slot."""
    return [(index - (count - 1) / 2) * width for index in range(count)]


# -- figures -----------------------------------------------------------------------------------------


def delta_m_figure(
    rows: Sequence[Row],
    title: str,
    /,
    *,
    first: Sequence[str] = (),
    base: Mapping[str, float] | None = None,
    base_origin: str | None = None,
):
    """Bars of Delta_m% per method, one bar per transform in a method's slot, with error bars (std
    over seeds) where there are several seeds; more methods than `PANEL_SLOTS` are drawn in panels
    per group (`method_groups`: `first`, e.g. the published table's methods, then the families).

    The single-task reference has Δm% 0 by definition, so a bar would be empty: it is the labelled
    zero line instead, and with `base` (`summarize`'s) the figure names its values, which say what
    0 stands for (e.g. 80.5% and 75.1% accuracy).
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    transforms = list(dict.fromkeys(row.transform for row in rows))
    figure, panels = _method_panels(
        rows, first=first, slot_width=0.62, row_height=2.9, extra_width=2.6
    )
    width = 0.8 / max(len(transforms), 1)
    offsets = _slot_offsets(len(transforms), width)
    lookup = {(row.transform, row.method): row for row in rows}
    colours = {transform: f"C{index % 10}" for index, transform in enumerate(transforms)}
    for axis, methods in panels:
        for offset, transform in zip(offsets, transforms):
            found = [
                (m_index, lookup[(transform, m)])
                for m_index, m in enumerate(methods)
                if (transform, m) in lookup and lookup[(transform, m)].delta_m is not None
            ]
            xs = [m_index + offset for m_index, _ in found]
            axis.bar(
                xs,
                [row.delta_m[0] for _, row in found],
                width=width,
                color=colours[transform],
                label=transform,
            )
            spread_rows = [
                (x, row) for x, (_, row) in zip(xs, found) if len(row.seeds) > 1
            ]  # one seed: no spread to draw
            if spread_rows:
                axis.errorbar(
                    [x for x, _ in spread_rows],
                    [row.delta_m[0] for _, row in spread_rows],
                    yerr=[row.delta_m[1] for _, row in spread_rows],
                    fmt="none",
                    ecolor="black",
                    elinewidth=0.8,
                    capsize=2,
                )
        axis.axhline(0.0, color="black", linewidth=0.8)
        _method_ticks(axis, methods)
    panels[0][0].set_ylabel("Δm% vs single-task (lower is better)")
    figure.suptitle(title, fontsize=10)
    note = _base_note(base, base_origin)
    if note:
        figure.supxlabel(note, fontsize=8)
    handles = [
        Patch(color=colours[t], label=t) for t in transforms
    ]  # every transform, whichever panel has its bars
    handles.append(
        Line2D([], [], color="black", linewidth=0.8, label="single-task\nreference (Δm% = 0)")
    )
    figure.legend(
        handles=handles, title="loss transform", fontsize="small", loc="outside right upper"
    )
    return figure


def _base_note(base: Mapping[str, float] | None, origin: str | None) -> str:
    if not base:
        return ""
    values = ", ".join(f"{name} {value:.4g}" for name, value in base.items())
    return f"Δm% = 0: the single-task reference, {values}" + (
        f" ({origin.replace(' (', ', ').replace(')', '')})" if origin else ""
    )


def _method_ticks(axis, methods: Sequence[str]) -> None:
    axis.set_xticks(range(len(methods)), methods, rotation=45, ha="right", fontsize=8)
    axis.set_xlim(-0.6, max(len(methods), 1) - 0.4)
    if len(methods) > 1:  # light lines between the methods' slots
        axis.vlines(
            [m + 0.5 for m in range(len(methods) - 1)],
            0,
            1,
            transform=axis.get_xaxis_transform(),
            colors="0.9",
            linewidth=0.8,
            zorder=0,
        )


def mean_rank_figure(rows: Sequence[Row], title: str, /, *, first: Sequence[str] = ()):
    """Mean Rank (lower is better) per method, one marker series per loss transform.

    Methods stay in their order of first appearance (as in `delta_m_figure` and the tables; more
    than `PANEL_SLOTS` in panels per group, as there); ranks are among the methods run under the
    same transform, so the possible range is 1 (first on every metric) to the number of those
    methods. Rows without a Mean Rank are left out.
    """
    from matplotlib.lines import Line2D

    transforms = list(dict.fromkeys(row.transform for row in rows))
    lookup = {(row.transform, row.method): row for row in rows}
    figure, panels = _method_panels(
        rows, first=first, slot_width=0.45, row_height=2.8, extra_width=2.6
    )
    markers = "osD^v<>phX*"
    offsets = _slot_offsets(
        len(transforms), 0.6 / max(len(transforms), 1)
    )  # side by side in a slot, so equal ranks stay visible
    for axis, methods in panels:
        for t_index, (offset, transform) in enumerate(zip(offsets, transforms)):
            found = [
                (m_index, lookup[(transform, m)].mean_rank)
                for m_index, m in enumerate(methods)
                if (transform, m) in lookup and lookup[(transform, m)].mean_rank is not None
            ]
            axis.plot(
                [m_index + offset for m_index, _ in found],
                [rank for _, rank in found],
                linestyle="none",
                color=f"C{t_index % 10}",
                marker=markers[t_index % len(markers)],
                markersize=5,
                alpha=0.85,
                label=transform,
            )
        _method_ticks(axis, methods)
        axis.grid(axis="y", alpha=0.3)
    compared = max(
        (sum(row.transform == t and row.mean_rank is not None for row in rows) for t in transforms),
        default=1,
    )
    panels[0][0].set_ylim(
        0.5, max(compared, 2) + 0.5
    )  # the whole possible range, 1 to the number of methods compared (shared)
    panels[0][0].set_ylabel("Mean Rank (lower is better)")
    figure.suptitle(title, fontsize=10)
    handles = [
        Line2D(
            [], [], linestyle="none", color=f"C{i % 10}", marker=markers[i % len(markers)], label=t
        )
        for i, t in enumerate(transforms)
    ]
    figure.legend(
        handles=handles, title="loss transform", fontsize="small", loc="outside right upper"
    )
    return figure
