"""Summary tables of a supervised experiment, recomputed from its stored runs.

Per (transform, method): every metric as mean +- sample std over seeds; Delta_m% (flat over
metrics, lower is better) against the single-task base, as mean +- std over seeds of each seed's
Delta_m; Delta_p (task-balanced, higher is better) against equal weighting under the same
transform; Mean Rank among the methods run under that transform (single-task runs excluded).
The base is the harness's own single-task runs ("stl:TASK", nominal losses, mean over their
seeds) when the experiment trained them, else the suite's published base values.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from benchmarks.harness.suite import MetricSpec
from core.metrics import delta_m, delta_p, mean_rank


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
    per_seed: dict[int, list[float]] = field(default_factory=dict)  # seed -> metric values in suite order
    paired_delta_p: tuple[float, float, int, int] | None = None  # mean, std, wins, pairs against the reference, seed by seed
    paired_delta_p_per_seed: dict[int, float] = field(default_factory=dict)  # seed -> Δp against the reference's run of that seed


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def single_task_base(records: Sequence[Mapping[str, Any]], metrics: Sequence[MetricSpec]) -> dict[str, float] | None:
    """Each metric's value in its own task's single-task runs (mean over seeds), if all exist."""
    values: dict[str, list[float]] = defaultdict(list)
    for record in records:
        method, result = record["spec"]["method"], record["result"]
        if method.startswith("stl:") and result.get("status") == "finished":
            task = method.split(":", 1)[1]
            for metric in metrics:
                if metric.task == task:
                    values[metric.name].append(result["selected"]["test"][metric.name])
    if any(metric.name not in values for metric in metrics):
        return None
    return {name: statistics.fmean(found) for name, found in values.items()}


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
        if base is not None and finished:
            seed_scores = [delta_m([r["result"]["selected"]["test"][n] for n in names], [base[n] for n in names], higher) for r in finished]
            dm = _mean_std(seed_scores)
        per_seed = {r["spec"]["seed"]: [r["result"]["selected"]["test"][n] for n in names] for r in finished}
        rows.append(Row(transform, method, seeds, mean, std, dm, None, None, len(members) - len(finished), per_seed))

    by_transform: dict[str, list[int]] = defaultdict(list)
    for index, row in enumerate(rows):
        if row.mean:
            by_transform[row.transform].append(index)
    for indices in by_transform.values():
        ranks = mean_rank([[rows[i].mean[n] for n in names] for i in indices], higher) if len(indices) > 1 else None
        reference = next((rows[i] for i in indices if rows[i].method == reference_method), None)
        for position, i in enumerate(indices):
            row = rows[i]
            dp = paired = None
            per_seed: dict[int, float] = {}
            if reference is not None:
                dp = delta_p([row.mean[n] for n in names], [reference.mean[n] for n in names], higher, tasks)
                common = sorted(set(row.per_seed) & set(reference.per_seed))
                if common:
                    per_seed = {s: delta_p(row.per_seed[s], reference.per_seed[s], higher, tasks) for s in common}
                    scores = list(per_seed.values())
                    paired = (*_mean_std(scores), sum(score > 0 for score in scores), len(scores))
            rows[i] = replace(row, delta_p=dp, mean_rank=float(ranks[position]) if ranks is not None else None, paired_delta_p=paired,
                              paired_delta_p_per_seed=per_seed)
    return rows, base, origin


def markdown_table(rows: Sequence[Row], metrics: Sequence[MetricSpec], /, *, reference_method: str = "ls") -> str:
    """One markdown table: metrics (mean +- std), Delta_m%, Delta_p vs the reference (of the seed
    means, and seed by seed: mean +- std and how many seeds beat the reference), MR, seeds."""
    arrows = {m.name: "↑" if m.higher_is_better else "↓" for m in metrics}
    header = ["transform", "method", *[f"{m.name} {arrows[m.name]}" for m in metrics], "Δm% ↓", f"Δp vs {reference_method} ↑", "paired Δp (wins)", "MR ↓", "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.transform.replace("|", "\\|"), row.method]  # a transform spec may hold "|"
        cells += [f"{row.mean[m.name]:.4g} ± {row.std[m.name]:.2g}" if row.mean else "–" for m in metrics]
        cells.append(f"{row.delta_m[0]:+.2f} ± {row.delta_m[1]:.2f}" if row.delta_m else "–")
        cells.append(f"{row.delta_p:+.2f}" if row.delta_p is not None else "–")
        paired = row.paired_delta_p
        cells.append(f"{paired[0]:+.2f} ± {paired[1]:.2f} ({paired[2]}/{paired[3]})" if paired and row.method != reference_method else "–")
        cells.append(f"{row.mean_rank:.2f}" if row.mean_rank is not None else "–")
        cells.append(f"{len(row.seeds)}" + (f" ({row.diverged} diverged)" if row.diverged else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def delta_m_figure(rows: Sequence[Row], title: str, /):
    """Bars of Delta_m% (mean +- std over seeds) per method, grouped by transform."""
    from matplotlib.figure import Figure

    transforms = list(dict.fromkeys(row.transform for row in rows))
    methods = list(dict.fromkeys(row.method for row in rows))
    figure = Figure(figsize=(max(6.0, 0.8 * len(methods) + 1.5), 4.2))  # the transforms share a method's slot
    axis = figure.subplots()
    width = 0.8 / max(len(transforms), 1)
    lookup = {(row.transform, row.method): row for row in rows}
    for t_index, transform in enumerate(transforms):
        xs, heights, errors = [], [], []
        for m_index, method in enumerate(methods):
            row = lookup.get((transform, method))
            if row is not None and row.delta_m is not None:
                xs.append(m_index + (t_index - (len(transforms) - 1) / 2) * width)
                heights.append(row.delta_m[0])
                errors.append(row.delta_m[1])
        axis.bar(xs, heights, width=width, yerr=errors, capsize=2, label=transform)
    axis.axhline(0.0, color="black", linewidth=0.8)
    axis.set_xticks(range(len(methods)), methods, rotation=45, ha="right")
    axis.set_ylabel("Δm% vs single-task (lower is better)")
    axis.set_title(title)
    axis.legend(title="loss transform", fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    return figure


def mean_rank_figure(rows: Sequence[Row], title: str, /):
    """Mean Rank (lower is better) per method, one marker series per loss transform.

    Methods stay in their order of first appearance (as in `delta_m_figure` and the tables);
    ranks are among the methods run under the same transform, so the possible range is 1 (first
    on every metric) to the number of those methods. Rows without a Mean Rank are left out.
    """
    from matplotlib.figure import Figure

    transforms = list(dict.fromkeys(row.transform for row in rows))
    methods = list(dict.fromkeys(row.method for row in rows))
    lookup = {(row.transform, row.method): row for row in rows}
    figure = Figure(figsize=(max(6.0, 0.45 * len(methods) + 2.0), 4.0), layout="constrained")
    axis = figure.subplots()
    markers = "osD^v<>phX*"
    width = 0.6 / max(len(transforms), 1)  # side by side within a method's slot, so equal ranks stay visible
    for t_index, transform in enumerate(transforms):
        xs, ranks = [], []
        for m_index, method in enumerate(methods):
            row = lookup.get((transform, method))
            if row is not None and row.mean_rank is not None:
                xs.append(m_index + (t_index - (len(transforms) - 1) / 2) * width)
                ranks.append(row.mean_rank)
        axis.plot(xs, ranks, linestyle="none", marker=markers[t_index % len(markers)], markersize=6, alpha=0.85, label=transform)
    if len(methods) > 1:  # light lines between the methods' slots
        axis.vlines([m + 0.5 for m in range(len(methods) - 1)], 0, 1, transform=axis.get_xaxis_transform(), colors="0.9", linewidth=0.8, zorder=0)
    axis.set_xticks(range(len(methods)), methods, rotation=45, ha="right")
    axis.set_xlim(-0.6, len(methods) - 0.4)
    compared = max((sum(row.transform == t and row.mean_rank is not None for row in rows) for t in transforms), default=1)
    axis.set_ylim(0.5, max(compared, 2) + 0.5)  # the whole possible range, 1 to the number of methods compared
    axis.set_ylabel("Mean Rank (lower is better)")
    axis.grid(axis="y", alpha=0.3)
    axis.set_title(title)
    axis.legend(title="loss transform", fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return figure


def delta_m_pivot(rows: Sequence[Row], /) -> str:
    """Δm% (mean ± std over seeds) with one row per method and one column per loss transform."""
    transforms = list(dict.fromkeys(row.transform for row in rows))
    methods = list(dict.fromkeys(row.method for row in rows))
    lookup = {(row.transform, row.method): row for row in rows}
    header = ["method", *[t.replace("|", "\\|") for t in transforms]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in methods:
        cells = [method]
        for transform in transforms:
            row = lookup.get((transform, method))
            cells.append(f"{row.delta_m[0]:+.2f} ± {row.delta_m[1]:.2f}" if row is not None and row.delta_m else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
