"""`python -m benchmarks perf`: one performance report, every ratio measured side by side in one run.

Sections (each can be run alone with `--sections`; `perf-nash` and `perf-tangent` are aliases
that run the `nash` and the `tangent` section):

- `engine`: DiBS-MTL, MGDA and Nash-MTL step / linear scalarisation (LS) step, the weight-solve
  share of each step, batched vs looped per-task gradients, the weight solve on the model's device
  vs on the engine's CPU copy, and (cvxpy) the Nash-MTL solve vs a reference-style CCP on the
  model's own Gramian; a LeNet-size two-task model and a 10-task MLP (`engine_step`).
- `representation`: representation ("MTL-R", `mtl_backward(..., representation=features)`) vs
  full mode step of each gradient method, measured in the same rounds as `engine`.
- `nash`: the Nash-MTL weight solve (damped Newton) vs a reference-style CCP with cvxpy at equal
  residual, cold and warm-started, K = 2 to 40 (`nash_solver`; needs cvxpy).
- `tangent`: torch MINRES vs SciPy MINRES on the same HVP (needs SciPy), and the cost of one
  tangent direction (in seconds and in gradients) as n grows to 1e6 (`tangent_solver`; CPU).
- `scaling`: an MLP with K = 2 to 64 heads: each method's step and weight solve alone / LS step.
- `torchjd`: one optimiser step of DiBS-MTL and MGDA (full and representation mode) against
  TorchJD 0.18's `autojac.mtl_backward` + `jac_to_grad` with its MGDA aggregator, on the engine
  section's two models (`engine_step.torchjd_comparison`; needs torchjd).
- `solvers`: the K x K weight solves alone, ours vs TorchJD 0.18's on the same Gramian: the
  min-norm point (MGDA) and CAGrad's dual, K = 2 to 40, float64, float32 and ill-conditioned
  (row norms 1e-6..1e6) Gramians, with the KKT gap and CAGrad's dual objective each reaches
  (`solvers`; needs torchjd, and cvxpy for TorchJD's CAGrad).
- `methods`: every registered method alone, one call on one K = 10 problem and on the 1,000 toy
  rows a step of the toy runner hands it, against LS on the same inputs (`methods`).

Every reported number is a time or a ratio of times measured in this run, interleaved round by
round with the medians taken (`benchmarks.perf.timing`), so machine load affects both sides
alike: the ratios are the result, the absolute times depend on the machine. A missing optional
dependency skips its part with "skipped: pip install -r requirements-bench.txt".

Output: the report (markdown: how it was generated, the machine, a summary table, one table per
section), a figure and the JSON of every timing. A full run (all sections, not `--quick`, no
`--out`) writes `benchmarks/PERFORMANCE.md` and `benchmarks/performance.png`
(`PERFORMANCE_CUDA.md` / `performance_cuda.png` with `--device cuda`) and the JSON to
`results/perf/perf.json`; anything else (`--quick`, a subset of sections, an alias) writes all
three under `--out` (default `results/perf/`), never over the committed report.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from tqdm import tqdm

from benchmarks.perf import engine_step, methods, nash_solver, solvers, tangent_solver
from toy_problems.store import environment, save_figure_atomic, write_json_atomic, write_text_atomic

SECTIONS = (
    "engine",
    "representation",
    "torchjd",
    "nash",
    "tangent",
    "scaling",
    "solvers",
    "methods",
)
COMMANDS = {"perf": SECTIONS, "perf-nash": ("nash",), "perf-tangent": ("tangent",)}
"""The CLI names of the report and the sections each runs by default."""
SKIPPED = "skipped: pip install -r requirements-bench.txt"
REPORT_FOLDER = Path(__file__).resolve().parents[1]
"""Where a full run writes the committed report: `benchmarks/`."""
DEFAULT_OUT = Path("results") / "perf"
MODELS = {"LeNet, 2 tasks": engine_step.LeNetTwoTask, "MLP, 10 tasks": engine_step.MultiHeadMLP}
TANGENT_SIZES = (1_000, 10_000, 100_000, 1_000_000)


@dataclass(frozen=True)
class Settings:
    """What each section measures (full run, or the `--quick` smoke check)."""

    rounds: int
    repeats: int
    batch_size: int
    device: str
    seed: int
    scaling_tasks: tuple[int, ...]
    scaling_hidden: int
    nash_tasks: tuple[int, ...]
    nash_problems: int
    solver: str
    tangent_sizes: tuple[int, ...]
    minres_iterations: int
    solver_tasks: tuple[int, ...]
    solver_problems: int

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        common = {"device": args.device, "seed": args.seed, "solver": args.solver.upper()}
        if args.quick:
            return cls(
                rounds=1,
                repeats=1,
                batch_size=16,
                scaling_tasks=tuple(args.scaling_tasks),
                scaling_hidden=32,
                nash_tasks=(2, 5),
                nash_problems=2,
                tangent_sizes=(300, 1_000),
                minres_iterations=3,
                solver_tasks=(2, 5),
                solver_problems=1,
                **common,
            )
        return cls(
            rounds=args.rounds,
            repeats=args.repeats,
            batch_size=args.batch_size,
            scaling_tasks=tuple(args.scaling_tasks),
            scaling_hidden=256,
            nash_tasks=tuple(args.nash_tasks),
            nash_problems=args.nash_problems,
            tangent_sizes=TANGENT_SIZES,
            minres_iterations=args.minres_iterations,
            solver_tasks=tuple(args.solver_tasks),
            solver_problems=args.solver_problems,
            **common,
        )


@dataclass
class Section:
    """One section of the report: its markdown, its JSON results and its summary rows
    (quantity, measured, where); `skipped` says why it measured nothing."""

    name: str
    title: str
    text: str
    results: dict[str, Any] = field(default_factory=dict)
    summary: list[tuple[str, str, str]] = field(default_factory=list)
    skipped: str | None = None


class Measurements:
    """Runs the sections, sharing the engine models' timings between `engine` and `representation`."""

    def __init__(self, settings: Settings, progress: tqdm) -> None:
        self.settings = settings
        self.progress = progress
        self._models: dict[str, dict[str, float]] | None = None

    def _describe(self, what: str) -> None:
        self.progress.set_description(what)

    def models(self) -> dict[str, dict[str, float]]:
        if self._models is None:
            s = self.settings
            self._models = {}
            for name, factory in MODELS.items():
                self._describe(f"engine: {name}")
                model = engine_step.seeded(factory, s.seed)
                self._models[name] = engine_step.measure_model(
                    model,
                    batch_size=s.batch_size,
                    repeats=s.repeats,
                    rounds=s.rounds,
                    seed=s.seed,
                    device=s.device,
                )
                self.progress.update()
        return self._models

    def engine(self) -> Section:
        s, results = self.settings, self.models()
        table = engine_step.engine_table(results)
        text = (
            f"One optimiser step (forward, `mtl_backward`, Adam step; batch {s.batch_size}, device {s.device}) of each gradient "
            "method against linear scalarisation (LS, one backward pass of the summed losses); each method's weight solve alone "
            "on the Gramian of the model's own per-task gradients, as a share of its step; per-task gradients looped vs batched "
            "(`torch.vmap`); off the CPU, the weight solve where the Gramian lives vs on the engine's CPU copy; and the "
            "Nash-MTL solve against "
            "the reference-style CCP (cvxpy) at equal residual on the same Gramian.\n\n" + table
        )
        lenet, mlp = (engine_step.ratios(t) for t in results.values())
        where = "LeNet K=2 / MLP K=10"
        summary = [
            (
                f"{name} step / LS step",
                f"{lenet[f'{name} step / LS step']:.2f} / {mlp[f'{name} step / LS step']:.2f}",
                where,
            )
            for name, _ in engine_step.GRADIENT_METHODS.values()
        ]
        summary += [
            (
                f"{name} weight solve, share of its step",
                f"{_percent(lenet[f'{name} weight solve, share of its step'])} / {_percent(mlp[f'{name} weight solve, share of its step'])}",
                where,
            )
            for name, _ in engine_step.GRADIENT_METHODS.values()
        ]
        summary.append(
            (
                "batched / looped per-task gradients",
                f"{lenet['batched / looped per-task gradients']:.2f} / {mlp['batched / looped per-task gradients']:.2f}",
                where,
            )
        )
        reference = (lenet[engine_step.NASH_REFERENCE_RATIO], mlp[engine_step.NASH_REFERENCE_RATIO])
        summary.append(
            (
                engine_step.NASH_REFERENCE_RATIO,
                " / ".join(SKIPPED if r is None else f"{r:.1f}" for r in reference),
                f"{where}, the model's Gramian",
            )
        )
        return Section(
            "engine",
            "Engine step: gradient methods vs linear scalarisation",
            text,
            {"timings": results, "ratios": {n: engine_step.ratios(t) for n, t in results.items()}},
            summary,
        )

    def representation(self) -> Section:
        s, results = self.settings, self.models()
        text = (
            'The same step in representation mode ("MTL-R": per-task gradients with respect to the shared features, '
            "`mtl_backward(..., representation=features)`, then one backward pass of the combined feature gradient through "
            f"the encoder) against full mode (per-task gradients on every shared parameter), in the same interleaved rounds "
            f"as the engine section (batch {s.batch_size}, device {s.device}).\n\n"
            + engine_step.representation_table(results)
        )
        lenet, mlp = (engine_step.representation_ratios(t) for t in results.values())
        summary = [
            (
                f"{name}: MTL-R step / full step",
                f"{lenet[f'{name}: MTL-R step / full step']:.2f} / {mlp[f'{name}: MTL-R step / full step']:.2f}",
                "LeNet K=2 / MLP K=10",
            )
            for name, _ in engine_step.GRADIENT_METHODS.values()
        ]
        return Section(
            "representation",
            "Representation mode (MTL-R) vs full mode",
            text,
            {"ratios": {n: engine_step.representation_ratios(t) for n, t in results.items()}},
            summary,
        )

    def torchjd(self) -> Section:
        s = self.settings
        title = "Engine step against TorchJD"
        self._describe("torchjd: engine steps")
        results = engine_step.torchjd_comparison(
            batch_size=s.batch_size,
            repeats=s.repeats,
            rounds=s.rounds,
            seed=s.seed,
            device=s.device,
        )
        self.progress.update(len(MODELS))
        if "skipped" in results:
            return Section("torchjd", title, f"{SKIPPED} ({results['skipped']})", skipped=SKIPPED)
        text = (
            f"One optimiser step (forward, backward, Adam step; batch {s.batch_size}, device {s.device}) of our DiBS-MTL and MGDA "
            f'through `core.mtl_backward` (full mode, and representation mode "MTL-R") against TorchJD '
            f"{results['torchjd_version']}'s `autojac.mtl_backward(losses, features=...)` + `jac_to_grad(shared, MGDA())` on the "
            "same model, heads passed to both, in the same interleaved rounds; below 1: ours is faster.\n\n"
            + engine_step.torchjd_table(results)
        )
        models = {
            name: engine_step.torchjd_ratios(t)
            for name, t in results.items()
            if name != "torchjd_version"
        }
        lenet, mlp = models.values()
        summary = [
            (quantity, f"{lenet[quantity]:.2f} / {mlp[quantity]:.2f}", "LeNet K=2 / MLP K=10")
            for quantity in lenet
        ]
        return Section("torchjd", title, text, {"timings": results, "ratios": models}, summary)

    def nash(self) -> Section:
        s = self.settings
        title = "Nash-MTL weight solve: damped Newton vs reference-style CCP"
        solver = nash_solver.reference_solver(s.solver)
        if solver is None:
            self.progress.update(len(s.nash_tasks))
            return Section(
                "nash",
                title,
                f"{SKIPPED} (the reference-style solver needs cvxpy with ECOS or CLARABEL)",
                skipped=SKIPPED,
            )
        import cvxpy

        results = {}
        for num_tasks in s.nash_tasks:
            self._describe(f"nash: K={num_tasks}")
            results[num_tasks] = nash_solver.measure(
                num_tasks, problems=s.nash_problems, rounds=s.rounds, solver=solver, seed=s.seed
            )
            self.progress.update()
        text = (
            f"`core.NashMTL` against the reference code's concave-convex procedure (cvxpy {cvxpy.__version__} with {solver}), "
            f"{s.nash_problems} random Gramians per K x {s.rounds} interleaved rounds, median ms per solve and the residual reached. "
            "Cold: independent Gramians, the CCP from alpha = 1, ours without warm start, at the residual the CCP reached "
            "(and at our default tolerance 1e-10); problems the CCP fails on are counted and left out. Warm: a drifting "
            "sequence of Gramians, both warm-started from their previous solution, as in training.\n\n"
            + nash_solver.markdown_table(results)
        )
        cold = [r["speedup_cold_equal"] for r in results.values()]
        warm = [r["speedup_warm_equal"] for r in results.values()]
        tasks = ", ".join(str(k) for k in results)
        summary = [
            (
                "reference CCP / Nash-MTL weight solve, cold, equal residual",
                _span(cold, "x"),
                f"K = {tasks}, random Gramians",
            ),
            (
                "reference CCP / Nash-MTL weight solve, warm-started, equal residual",
                _span(warm, "x"),
                f"K = {tasks}, drifting Gramians",
            ),
        ]
        return Section(
            "nash",
            title,
            text,
            {
                "solver": solver,
                "cvxpy": cvxpy.__version__,
                "per_task_count": {str(k): v for k, v in results.items()},
            },
            summary,
        )

    def tangent(self) -> Section:
        s = self.settings
        parts, summary, results = [], [], {}
        try:
            import scipy  # noqa: F401
        except ImportError:
            comparisons = None
            parts.append(f"torch MINRES vs SciPy MINRES: {SKIPPED} (needs SciPy)")
        else:
            comparisons = []
            for size in s.tangent_sizes[-2:]:
                self._describe(f"tangent: MINRES vs SciPy, n={size:,}")
                comparisons.append(
                    tangent_solver.compare_with_scipy(
                        size, iterations=s.minres_iterations, rounds=s.rounds * s.repeats
                    )
                )
            parts.append(
                "torch `core.pareto.minres` against `scipy.sparse.linalg.minres` on a `LinearOperator` wrapping the same damped "
                f"Hessian-vector product (a two-task tanh MLP, batch 256), at {s.minres_iterations} iterations each and at equal "
                f"residual, {s.rounds * s.repeats} interleaved rounds; > 1: torch is faster.\n\n"
                + tangent_solver.scipy_table(comparisons)
            )
            largest = comparisons[-1]
            summary.append(
                (
                    "SciPy / torch MINRES, equal residual",
                    f"{largest['scipy_over_torch_equal_residual']:.2f}",
                    f"n = {int(largest['parameters']):,}",
                )
            )
        results["scipy_comparison"] = comparisons
        self.progress.update()
        self._describe("tangent: cost against n")
        costs = tangent_solver.measure_costs(
            s.tangent_sizes, products=s.minres_iterations, rounds=s.rounds, repeats=s.repeats
        )
        self.progress.update()
        results["costs"] = costs
        parts.append(
            "One tangent direction (Jacobian, min-norm weights, HVP graph, 10 MINRES iterations) against one gradient of the "
            "summed losses on the same model, and the two HVP paths (double backward through a kept first-order graph, "
            f"torch.func forward-over-reverse), every size interleaved, {s.rounds} rounds x {s.repeats} calls (1 call per round "
            "for a variant that takes over 0.1 s).\n\n" + tangent_solver.cost_table(costs)
        )
        last = costs["rows"][-1]
        summary += [
            (
                "exponent of tangent-direction time against n",
                f"{costs['largest_sizes_exponent']:.2f}",
                f"between the two largest n (1 = linear; {costs['fitted_exponent']:.2f} over all)",
            ),
            (
                "one tangent direction / one gradient",
                f"{last['tangent_over_gradient']:.1f}",
                f"n = {int(last['parameters']):,}",
            ),
        ]
        return Section(
            "tangent",
            "Tangent directions: torch MINRES vs SciPy, and cost against n (CPU)",
            "\n\n".join(parts),
            results,
            summary,
        )

    def scaling(self) -> Section:
        s = self.settings
        results = {}
        for num_tasks in s.scaling_tasks:
            self._describe(f"scaling: K={num_tasks}")
            results[num_tasks] = engine_step.measure_scaling_point(
                num_tasks,
                batch_size=s.batch_size,
                hidden=s.scaling_hidden,
                repeats=s.repeats,
                rounds=s.rounds,
                device=s.device,
                seed=s.seed,
            )
            self.progress.update()
        text = (
            f"`MultiHeadMLP` (3 shared layers of width {s.scaling_hidden}, K linear heads; batch {s.batch_size}, device {s.device}): "
            "each method's optimiser step and its weight solve alone (on the model's own Gramian, as the engine runs it) as "
            "ratios to the LS step at the same K, all variants of one K interleaved.\n\n"
            + engine_step.scaling_table(results)
        )
        first, last = min(results), max(results)
        summary = [
            (
                f"{name} step / LS step",
                f"{engine_step.scaling_ratios(results[first])[f'{name} step / LS step']:.2f} -> {engine_step.scaling_ratios(results[last])[f'{name} step / LS step']:.2f}",
                f"K = {first} -> {last}, MLP",
            )
            for name, _ in engine_step.GRADIENT_METHODS.values()
        ]
        summary += [
            (
                f"{name} weight solve / LS step",
                f"{_percent(engine_step.scaling_ratios(results[last])[f'{name} weight solve / LS step'])}",
                f"K = {last}, MLP",
            )
            for name, _ in engine_step.GRADIENT_METHODS.values()
        ]
        payload = {
            "timings": {str(k): v for k, v in results.items()},
            "ratios": {str(k): engine_step.scaling_ratios(v) for k, v in results.items()},
        }
        return Section(
            "scaling",
            f"Scaling with the number of tasks K = {first} to {last}",
            text,
            payload,
            summary,
        )

    def solvers(self) -> Section:
        s = self.settings
        title = "Weight solves alone: min-norm (MGDA) and CAGrad, ours vs TorchJD"
        version = solvers.torchjd_version()
        if version is None:
            self.progress.update(len(s.solver_tasks))
            return Section(
                "solvers", title, f"{SKIPPED} (the comparison needs torchjd)", skipped=SKIPPED
            )
        results: dict[str, dict[int, dict[str, float]]] = {case: {} for case in solvers.CASES}
        for num_tasks in s.solver_tasks:
            for case in solvers.CASES:
                self._describe(f"solvers: K={num_tasks}, {case}")
                results[case][num_tasks] = solvers.measure(
                    num_tasks,
                    case,
                    problems=s.solver_problems,
                    rounds=s.rounds,
                    repeats=s.repeats,
                    seed=s.seed,
                )
            self.progress.update()
        has_cagrad = solvers.torchjd_cagrad() is not None
        cagrad_note = (
            "" if has_cagrad else f" TorchJD's CAGrad: {SKIPPED} (it needs cvxpy with CLARABEL)."
        )
        text = (
            f"`core.min_norm_point` (the MGDA weights) against TorchJD {version}'s `MGDAWeighting`, and `core.CAGrad(c=0.4).solve` "
            "against TorchJD's `CAGradWeighting(c=0.4)`, each given the same Gramian (the solve alone), "
            f"{s.solver_problems} random Gramians per (K, case) x {s.rounds} interleaved rounds x {s.repeats} calls, median ms "
            "per solve. Cases: float64 Gramians of K x 3K Jacobians, the same cast to float32, and float64 ones with row "
            "norms spread over 1e-6..1e6. MGDA quality: the relative KKT gap `(a^T G a - min_i (G a)_i) / max_i G_ii` "
            "(largest over the problems), in float64 on the given Gramian, of the weights each side returns, and ours as "
            "the solver reports it (its float64 solution, before rounding to a float32 Gramian's dtype, which alone leaves "
            "~1e-8). CAGrad quality: the dual objective `F(w) = g_w . g_0 + c ||g_0|| ||g_w||` / max_i G_ii (mean over the "
            "problems; smaller is better) at each side's dual weights (TorchJD's recovered from `1/K + kappa w`), the largest "
            "relative difference (<= 0: ours as good or better) and our certified duality gap."
            + cagrad_note
            + "\n\n"
            "MGDA:\n\n"
            + solvers.mgda_table(results)
            + "\n\nCAGrad:\n\n"
            + solvers.cagrad_table(results)
        )
        rows = [r for per_task_count in results.values() for r in per_task_count.values()]
        largest = max(s.solver_tasks)
        where = f"K = {', '.join(str(k) for k in s.solver_tasks)}; {', '.join(solvers.CASES)}"
        summary = [
            (
                "ours / TorchJD, MGDA weight solve",
                _ratio_span([r["mgda_ours_over_torchjd"] for r in rows]),
                where,
            ),
            (
                "ours / TorchJD, MGDA weight solve, float32",
                f"{results['float32'][largest]['mgda_ours_over_torchjd']:.2f}",
                f"K = {largest}",
            ),
            (
                "largest relative KKT gap: ours (solver) / ours (weights returned) / TorchJD",
                f"{max(r['mgda_ours_solver_gap'] for r in rows):.0e} / {max(r['mgda_ours_gap'] for r in rows):.0e} / {max(r['mgda_torchjd_gap'] for r in rows):.0e}",
                where,
            ),
        ]
        if has_cagrad:
            summary += [
                (
                    "ours / TorchJD, CAGrad weight solve",
                    _ratio_span([r["cagrad_ours_over_torchjd"] for r in rows]),
                    where,
                ),
                (
                    "largest (F ours - F TorchJD) / F, CAGrad dual objective",
                    _largest([r["cagrad_objective_difference"] for r in rows]),
                    f"{where} (<= 0: ours as good or better)",
                ),
            ]
        else:
            summary.append(
                ("ours / TorchJD, CAGrad weight solve", f"{SKIPPED} (needs cvxpy)", where)
            )
        payload = {
            "torchjd": version,
            "per_case": {
                case: {str(k): v for k, v in per.items()} for case, per in results.items()
            },
        }
        return Section("solvers", title, text, payload, summary)

    def methods(self) -> Section:
        s = self.settings
        self._describe("methods: every registered method")
        results = methods.measure(rounds=s.rounds, repeats=s.repeats, seed=s.seed)
        self.progress.update()
        failed = results.pop("failed", {})
        text = (
            "Every registered method alone (its weights from the Gramian or the losses, or its update from the Jacobian), "
            f"median over {s.rounds} interleaved rounds x {s.repeats} calls, on the CPU, against linear scalarisation (LS) on the "
            "same inputs: one problem of the size of a training step's Gramian, and the batch of rows the toy runner hands "
            "a method each step.\n\n"
            + methods.table(results)
            + ("\n\nFailed: " + "; ".join(f"{k}: {v}" for k, v in failed.items()) if failed else "")
        )
        slowest = {case: max(r, key=r.get) for case, r in results.items()}
        summary = [
            (
                f"slowest method call, {case}",
                f"{slowest[case]} {1e3 * results[case][slowest[case]]:.2f} ms",
                f"{len(results[case])} methods",
            )
            for case in results
        ]
        return Section(
            "methods",
            "Every method's own cost",
            text,
            {"seconds": results, "failed": failed},
            summary,
        )


def run_sections(names: Sequence[str], settings: Settings, *, quiet: bool = False) -> list[Section]:
    """Measure the named sections, in report order."""
    units = {
        "engine": len(MODELS),
        "representation": 0 if "engine" in names else len(MODELS),
        "torchjd": len(MODELS),
        "nash": len(settings.nash_tasks),
        "tangent": 2,
        "scaling": len(settings.scaling_tasks),
        "solvers": len(settings.solver_tasks),
        "methods": 1,
    }
    with tqdm(
        total=sum(units[n] for n in names), unit="part", disable=quiet, leave=False
    ) as progress:
        measurements = Measurements(settings, progress)
        return [getattr(measurements, name)() for name in SECTIONS if name in names]


def summary_table(sections: list[Section]) -> str:
    lines = ["| section | quantity | measured | where |", "|---|---|---|---|"]
    for section in sections:
        if section.skipped:
            lines.append(f"| {section.name} | {section.title} | {section.skipped} | |")
        lines += [
            f"| {section.name} | {quantity} | {value} | {where} |"
            for quantity, value, where in section.summary
        ]
    return "\n".join(lines)


def draw_figure(sections: list[Section]):
    """Up to four panels, one per measured section with a natural plot: step / LS vs K, tangent
    cost vs n, MTL-R vs full step, Nash-MTL speed-up vs K. None when none applies."""
    from matplotlib.figure import Figure

    by_name = {s.name: s for s in sections if not s.skipped}
    panels = [name for name in ("scaling", "tangent", "representation", "nash") if name in by_name]
    if not panels:
        return None
    columns = min(2, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(5.2 * columns, 3.9 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    colours = {"DiBS-MTL": "C0", "MGDA": "C1", "Nash-MTL": "C2"}
    for ax, name in zip(axes, panels):
        results = by_name[name].results
        if name == "scaling":
            counts = [int(k) for k in results["ratios"]]
            for method, colour in colours.items():
                ax.plot(
                    counts,
                    [results["ratios"][str(k)][f"{method} step / LS step"] for k in counts],
                    "o-",
                    color=colour,
                    label=f"{method} step",
                )
                ax.plot(
                    counts,
                    [results["ratios"][str(k)][f"{method} weight solve / LS step"] for k in counts],
                    "s--",
                    color=colour,
                    alpha=0.7,
                    label=f"{method} weight solve",
                )
            ax.axhline(1.0, color="grey", lw=0.8)
            ax.set(
                xscale="log",
                yscale="log",
                xlabel="tasks K",
                ylabel="time / LS step (same K)",
                title="Scaling with K",
            )
            _integer_ticks(ax, counts)
            ax.legend(fontsize=7, ncol=2)
        elif name == "tangent":
            rows_ = results["costs"]["rows"]
            sizes = [r["parameters"] for r in rows_]
            ax.plot(
                sizes, [r["tangent_seconds"] for r in rows_], "o-", label="one tangent direction"
            )
            ax.plot(sizes, [r["gradient_seconds"] for r in rows_], "s--", label="one gradient")
            ax.set(
                xscale="log",
                yscale="log",
                xlabel="parameters n",
                ylabel="seconds (median)",
                title=f"Tangent cost vs n (slope {results['costs']['largest_sizes_exponent']:.2f} at the largest n)",
            )
            ax.legend(fontsize=8)
        elif name == "representation":
            models = list(results["ratios"])
            width = 0.8 / len(models)
            for i, model in enumerate(models):
                values = [
                    results["ratios"][model][f"{method}: MTL-R step / full step"]
                    for method in colours
                ]
                ax.bar([j + i * width for j in range(len(colours))], values, width, label=model)
            ax.axhline(1.0, color="grey", lw=0.8)
            ax.set_xticks(
                [j + width * (len(models) - 1) / 2 for j in range(len(colours))], list(colours)
            )
            ax.set(ylabel="MTL-R step / full step", title="Representation mode vs full mode")
            ax.legend(fontsize=8)
        else:
            per_k = results["per_task_count"]
            counts = [int(k) for k in per_k]
            ax.plot(
                counts,
                [per_k[str(k)]["speedup_cold_equal"] for k in counts],
                "o-",
                label="cold, equal residual",
            )
            ax.plot(
                counts,
                [per_k[str(k)]["speedup_warm_equal"] for k in counts],
                "s--",
                label="warm-started, equal residual",
            )
            ax.set(
                xscale="log",
                yscale="log",
                xlabel="tasks K",
                ylabel="reference CCP / ours",
                title="Nash-MTL solve: speed-up over the CCP",
            )
            _integer_ticks(ax, counts)
            ax.legend(fontsize=8)
    return figure


def _integer_ticks(ax, values: list[int]) -> None:
    """Major ticks at `values` on a log x axis, labelled as integers, and no minor labels."""
    ax.set_xticks(values, [str(v) for v in values])
    ax.set_xticks([], minor=True)


def machine() -> dict[str, str]:
    """`toy_problems.store.environment()` plus the CPU, its core count, the GPU and OMP_NUM_THREADS."""
    facts = environment() | {
        "cpu": _cpu_name(),
        "cpu_count": str(os.cpu_count()),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset"),
    }
    if torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name()
    return facts


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def render(
    sections: list[Section],
    *,
    command: str,
    settings: Settings,
    facts: dict[str, str],
    figure_name: str | None,
    quick: bool,
) -> str:
    title = f"Performance report ({'GPU' if settings.device.startswith('cuda') else 'CPU'})"
    gpu = f", GPU {facts['gpu']}" if "gpu" in facts and settings.device.startswith("cuda") else ""
    lines = [
        f"# {title}",
        "",
        f"Generated by `{command}` on {datetime.date.today().isoformat()}: {facts['platform']}, {facts['cpu']} ({facts['cpu_count']} cores{gpu}), "
        f"Python {facts['python']}, torch {facts['torch']}, {facts['threads']} torch threads (OMP_NUM_THREADS {facts['OMP_NUM_THREADS']}), "
        f"device {settings.device}; {settings.rounds} interleaved rounds x {settings.repeats} calls per variant, medians"
        + (" (`--quick`: a smoke check, not a measurement)" if quick else "")
        + ".",
        "",
        "Every number below is a time or a ratio of times measured in this one run, side by side: the variants of a "
        "comparison are called in turn, round after round, and the median of the per-round medians is kept, so that load "
        "from other jobs on the machine (this one may be shared) slows both sides alike. **The ratios are the result; the "
        "absolute times (ms, s) only describe this machine under its load at the time.** Nothing in the test suite asserts "
        "a wall-clock limit.",
        "",
        "## Summary",
        "",
        summary_table(sections),
    ]
    if figure_name is not None:
        lines += [
            "",
            f"![step cost vs K, tangent cost vs n, MTL-R vs full, Nash-MTL speed-up]({figure_name})",
        ]
    for number, section in enumerate(sections, start=1):
        lines += [
            "",
            f"## {number}. {section.title}",
            "",
            f"`--sections {section.name}`. {section.text}",
        ]
    return "\n".join(lines) + "\n"


def output_paths(args: argparse.Namespace, sections: Sequence[str]) -> tuple[Path, Path, Path]:
    """(report, figure, JSON): the committed `benchmarks/PERFORMANCE*.md` only for a full run."""
    if args.out is None and not args.quick and set(sections) == set(SECTIONS):
        kind = torch.device(args.device).type
        suffix = "" if kind == "cpu" else f"_{kind}"
        return (
            REPORT_FOLDER / f"PERFORMANCE{suffix.upper()}.md",
            REPORT_FOLDER / f"performance{suffix}.png",
            DEFAULT_OUT / f"perf{suffix}.json",
        )
    folder = DEFAULT_OUT if args.out is None else args.out
    return folder / "PERFORMANCE.md", folder / "performance.png", folder / "perf.json"


def add_arguments(parser: argparse.ArgumentParser, *, sections: Sequence[str] = SECTIONS) -> None:
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=SECTIONS,
        default=list(sections),
        metavar="SECTION",
        help=f"sections to run, any of {', '.join(SECTIONS)} (default: {' '.join(sections)}); only a run of every section (not --quick, no --out) writes benchmarks/PERFORMANCE.md",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1 round x 1 call, batch 16, small models and sizes, 1 torch thread unless --threads: a smoke check in seconds, even on a busy machine; writes under --out",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="interleaved rounds per comparison (median of the round medians)",
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed calls per variant and round (median)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=256, help="batch size of the engine and scaling models"
    )
    parser.add_argument(
        "--scaling-tasks",
        type=int,
        nargs="+",
        default=list(engine_step.TASK_COUNTS),
        help="numbers of tasks K of the scaling section",
    )
    parser.add_argument(
        "--nash-tasks",
        type=int,
        nargs="+",
        default=list(nash_solver.TASK_COUNTS),
        help="numbers of tasks K of the nash section",
    )
    parser.add_argument(
        "--nash-problems", type=int, default=20, help="random Gramians per K in the nash section"
    )
    parser.add_argument(
        "--solver",
        default="ECOS",
        help="cvxpy solver of the reference-style CCP (ECOS as in the reference; CLARABEL if ECOS is missing)",
    )
    parser.add_argument(
        "--solver-tasks",
        type=int,
        nargs="+",
        default=list(solvers.TASK_COUNTS),
        help="numbers of tasks K of the solvers section",
    )
    parser.add_argument(
        "--solver-problems",
        type=int,
        default=5,
        help="random Gramians per K and case in the solvers section",
    )
    parser.add_argument(
        "--minres-iterations",
        type=int,
        default=20,
        help="MINRES iterations of the torch vs SciPy comparison (and HVP products per path)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the models, batches and Gramians"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0: torch's default, or 1 with --quick); recorded in the report",
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device of the engine, representation and scaling models (default: cuda if available); nash and tangent run on the CPU",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"folder for PERFORMANCE.md, performance.png and perf.json (default: {DEFAULT_OUT}, or benchmarks/ for the report of a full run)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    """Run the sections, print the report, write it (markdown, figure, JSON). Exit status 2 when
    every section was skipped for a missing optional dependency."""
    threads = args.threads or (1 if args.quick else 0)
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run(args)
    finally:  # main() is also called in-process (tests): leave torch's threads as they were
        torch.set_num_threads(previous)


def _run(args: argparse.Namespace) -> int:
    defaults = COMMANDS.get(getattr(args, "experiment", "perf"), SECTIONS)
    settings = Settings.from_args(args)
    names = list(dict.fromkeys(args.sections))
    sections = run_sections(names, settings, quiet=args.quiet)
    for section in sections:
        if section.skipped:
            print(f"{section.name}: {section.skipped}", file=sys.stderr)
    report_path, figure_path, json_path = output_paths(args, names)
    figure = draw_figure(sections)
    if figure is not None:
        save_figure_atomic(figure, figure_path)
    facts = machine()
    command = command_line(args, defaults)
    text = render(
        sections,
        command=command,
        settings=settings,
        facts=facts,
        figure_name=figure_path.name if figure is not None else None,
        quick=args.quick,
    )
    write_text_atomic(report_path, text)
    payload = {
        "experiment": "perf",
        "command": command,
        "config": vars(settings),
        "environment": facts,
        "sections": {
            s.name: {
                "title": s.title,
                "skipped": s.skipped,
                "results": s.results,
                "summary": s.summary,
                "markdown": s.text,
            }
            for s in sections
        },
    }
    write_json_atomic(json_path, payload)
    print(text)
    written = [report_path, json_path] + ([figure_path] if figure is not None else [])
    print("wrote " + ", ".join(str(p) for p in written))
    return 2 if all(s.skipped for s in sections) else 0


def command_line(args: argparse.Namespace, sections: Sequence[str]) -> str:
    """The command that reproduces `args`: the CLI name and every option that differs from its default."""
    parser = argparse.ArgumentParser()
    add_arguments(parser, sections=sections)
    defaults = vars(parser.parse_args([]))
    words = ["python -m benchmarks", getattr(args, "experiment", None) or "perf"]
    for key, default in defaults.items():
        value = getattr(args, key)
        if value == default or key == "quiet":
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            words.append(flag)
        elif isinstance(value, list):
            words += [flag] + [str(v) for v in value]
        else:
            words += [flag, str(value)]
    return " ".join(words)


def command(name: str, /) -> SimpleNamespace:
    """`add_arguments` and `main` of CLI name `name` (`perf` or an alias), as `python -m benchmarks` registers them."""

    def add(parser: argparse.ArgumentParser) -> None:
        add_arguments(parser, sections=COMMANDS[name])

    return SimpleNamespace(add_arguments=add, main=main)


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%" if value >= 0.001 else f"{100 * value:.2f}%"


def _largest(values: list[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    return f"{max(finite):.1e}" if finite else "not measured"


def _ratio_span(values: list[float]) -> str:
    """The range of ratios, to two significant digits (they span orders of magnitude)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "not measured"
    return f"{min(finite):.2g}-{max(finite):.2g}" if len(finite) > 1 else f"{finite[0]:.2g}"


def _span(values: list[float], unit: str = "") -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "not measured"
    return (
        f"{min(finite):.1f}{unit}-{max(finite):.1f}{unit}"
        if len(finite) > 1
        else f"{finite[0]:.1f}{unit}"
    )
