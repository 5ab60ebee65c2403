"""K x K weight solves: our min-norm (MGDA) and CAGrad solvers vs TorchJD 0.18's, on the same Gramian.

Both sides get the same Gramian and return weights, so the comparison is of the solve alone:
- MGDA: `core.min_norm_point(G).weights` (Wolfe's active set in float64 on the host) against
  `torchjd.aggregation.MGDAWeighting()(G)` (Frank-Wolfe, Sener & Koltun's Alg. 2, in the Gramian's
  dtype, stopping when the step size falls below 1e-3, at most 100 steps). Quality: the relative
  KKT gap `(a^T G a - min_i (G a)_i) / max_i G_ii`, evaluated in float64 on the given Gramian, of
  the weights each returns, and ours as the solver reports it (of its float64 solution, before the
  weights are rounded to a float32 Gramian's dtype: that rounding alone leaves ~1e-8).
- CAGrad (c = 0.4): `core.CAGrad(c=0.4, rescale=0).solve(G)` (exact faces, root steps, duality-gap
  certificate) against `torchjd.aggregation.CAGradWeighting(c=0.4)(G)` (cvxpy + CLARABEL on an
  SVD factor of the trace-normalised Gramian). Quality: CAGrad's dual objective
  `F(w) = g_w . g_0 + c ||g_0|| ||g_w||` (relative to `max_i G_ii`) at the dual weights: ours as the
  solver returns them, TorchJD's recovered from its weights `1/K + kappa w` as
  `w = (weights - 1/K) / (sum(weights) - 1)`. Smaller is better (F is minimised). TorchJD returns no
  direction (all-zero weights) where `||g_w|| < 1e-4` after dividing G by its trace (the
  ill-conditioned case): those problems are counted and left out of its F.

Gramians: `G = J J^T` with J of shape K x 3K, Gaussian rows with a shared component (mild
conflict) and row scales 10^U(-1, 1), in float64; the same cast to float32; and an
ill-conditioned float64 case whose row norms are spread log-uniformly over 1e-6..1e6 (12 orders of
magnitude). Timings are `benchmarks.perf.timing.interleaved_medians` over all problems of a
(K, case), so machine load affects both sides alike; nothing here asserts a wall-clock limit.

This is the `solvers` section of `python -m benchmarks perf` (`benchmarks.perf.report`). TorchJD
(and, for its CAGrad, cvxpy with CLARABEL) is optional (`pip install -r requirements-bench.txt`);
without it the section says so and is skipped.
"""

from __future__ import annotations

import math

import torch

from benchmarks.perf.timing import interleaved_medians
from core import CAGrad, min_norm_point

TASK_COUNTS = (2, 5, 10, 20, 40)
CASES = ("float64", "float32", "ill-conditioned")
CAGRAD_C = 0.4


def torchjd_version() -> str | None:
    """TorchJD's version, or None if it is not installed."""
    try:
        import torchjd  # noqa: F401
    except ImportError:
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torchjd")
    except PackageNotFoundError:
        return "unknown"


def torchjd_cagrad() -> object | None:
    """TorchJD's `CAGradWeighting(c=0.4)`, or None if it (or its cvxpy/CLARABEL) is missing."""
    try:
        from torchjd.aggregation import CAGradWeighting

        return CAGradWeighting(c=CAGRAD_C)
    except (
        ImportError,
        ValueError,
        AttributeError,
    ):  # find_spec of a module blocked in sys.modules
        return None


def random_gramians(num_tasks: int, case: str, count: int, *, seed: int) -> list[torch.Tensor]:
    """`count` Gramians of K x 3K Jacobians for `case` (see the module docstring)."""
    generator = torch.Generator().manual_seed(seed)
    gramians = []
    for _ in range(count):
        dim = 3 * num_tasks
        shared = torch.randn(1, dim, generator=generator, dtype=torch.float64)
        rows = 0.5 * shared + torch.randn(num_tasks, dim, generator=generator, dtype=torch.float64)
        if case == "ill-conditioned":
            rows = rows / rows.norm(dim=1, keepdim=True)
            exponents = -6 + 12 * torch.rand(num_tasks, 1, generator=generator, dtype=torch.float64)
            if num_tasks >= 2:  # both ends of the range occur
                exponents[:2, 0] = torch.tensor([-6.0, 6.0], dtype=torch.float64)
            rows = rows * 10.0**exponents
        else:
            rows = rows * 10.0 ** (
                2 * torch.rand(num_tasks, 1, generator=generator, dtype=torch.float64) - 1
            )
        gram = rows @ rows.T
        gramians.append(gram.float() if case == "float32" else gram)
    return gramians


def kkt_gap(gram: torch.Tensor, weights: torch.Tensor) -> float:
    """`(a^T G a - min_i (G a)_i) / max_i G_ii` in float64 (weights normalised to sum 1)."""
    gram = gram.to(torch.float64)
    weights = weights.to(torch.float64)
    weights = weights / weights.sum()
    product = gram @ weights
    return max(float(weights @ product - product.min()), 0.0) / float(gram.diagonal().max())


def cagrad_objective(
    gram: torch.Tensor, weights: torch.Tensor | None, c: float = CAGRAD_C
) -> float:
    """CAGrad's dual objective `F(w) = g_w . g_0 + c ||g_0|| ||g_w||` at simplex weights, in
    float64, relative to `max_i G_ii` (NaN for None)."""
    if weights is None:
        return math.nan
    gram = gram.to(torch.float64)
    gram = gram / gram.diagonal().max()
    weights = weights.to(torch.float64).clamp_min(0)
    weights = weights / weights.sum()
    mean_products = gram.mean(dim=1)
    radius = c * float(mean_products.mean().clamp_min(0).sqrt())
    return float(weights @ mean_products) + radius * float(
        (weights @ gram @ weights).clamp_min(0).sqrt()
    )


def torchjd_dual_weights(direction_weights: torch.Tensor) -> torch.Tensor | None:
    """TorchJD's CAGrad returns `1/K + kappa w` (w on the simplex): `w` recovered, or None when it
    returned no direction (kappa = 0)."""
    weights = direction_weights.to(torch.float64)
    kappa = float(weights.sum()) - 1.0
    if not kappa > 1e-12:
        return None
    return (weights - 1.0 / weights.numel()) / kappa


def measure(
    num_tasks: int, case: str, *, problems: int, rounds: int, repeats: int, seed: int
) -> dict[str, float]:
    """Median seconds per solve of each side, the ratios and the quality measures, over
    `problems` Gramians of one (K, case)."""
    from torchjd.aggregation import MGDAWeighting

    gramians = random_gramians(num_tasks, case, problems, seed=seed)
    mgda_reference = MGDAWeighting()
    cagrad_reference = torchjd_cagrad()
    ours_cagrad = CAGrad(c=CAGRAD_C, rescale=0)
    variants = {
        "ours_mgda": lambda: [min_norm_point(gram).weights for gram in gramians],
        "torchjd_mgda": lambda: [mgda_reference(gram) for gram in gramians],
        "ours_cagrad": lambda: [ours_cagrad.solve(gram) for gram in gramians],
    }
    if cagrad_reference is not None:
        variants["torchjd_cagrad"] = lambda: [cagrad_reference(gram) for gram in gramians]
    seconds = interleaved_medians(variants, rounds=rounds, repeats=repeats, seed=seed)
    result: dict[str, float] = {
        f"{name}_seconds": value / problems for name, value in seconds.items()
    }
    result["mgda_ours_over_torchjd"] = seconds["ours_mgda"] / seconds["torchjd_mgda"]
    solutions = [min_norm_point(gram) for gram in gramians]
    result["mgda_ours_solver_gap"] = max(float(s.kkt_gap.max()) for s in solutions)
    result["mgda_ours_gap"] = max(kkt_gap(gram, s.weights) for gram, s in zip(gramians, solutions))
    result["mgda_torchjd_gap"] = max(kkt_gap(gram, mgda_reference(gram)) for gram in gramians)
    ours_solutions = [ours_cagrad.solve(gram) for gram in gramians]
    ours_objectives = [
        cagrad_objective(gram, solution[1]) for gram, solution in zip(gramians, ours_solutions)
    ]
    result["cagrad_ours_objective"] = sum(ours_objectives) / problems
    result["cagrad_ours_dual_gap"] = max(float(solution[2].max()) for solution in ours_solutions)
    if cagrad_reference is not None:
        reference_objectives = [
            cagrad_objective(gram, torchjd_dual_weights(cagrad_reference(gram)))
            for gram in gramians
        ]
        result["cagrad_ours_over_torchjd"] = seconds["ours_cagrad"] / seconds["torchjd_cagrad"]
        finite = [value for value in reference_objectives if math.isfinite(value)]
        result["cagrad_torchjd_objective"] = sum(finite) / len(finite) if finite else math.nan
        # F(ours) - F(TorchJD), relative to |F|: <= 0 where ours is as good or better; TorchJD returns
        # no direction (all-zero weights) where ||g_w|| < 1e-4 after dividing G by its trace
        differences = [
            (ours - reference) / max(abs(reference), 1e-300)
            for ours, reference in zip(ours_objectives, reference_objectives)
            if math.isfinite(reference)
        ]
        result["cagrad_torchjd_no_direction"] = problems - len(differences)
        result["cagrad_objective_difference"] = max(differences) if differences else math.nan
    else:
        for key in (
            "cagrad_ours_over_torchjd",
            "cagrad_torchjd_objective",
            "cagrad_objective_difference",
            "cagrad_torchjd_no_direction",
        ):
            result[key] = math.nan
    return result


def mgda_table(results: dict[str, dict[int, dict[str, float]]]) -> str:
    columns = [
        ("case", lambda case, k, r: case),
        ("K", lambda case, k, r: f"{k}"),
        ("ours ms", lambda case, k, r: f"{1e3 * r['ours_mgda_seconds']:.3f}"),
        ("TorchJD ms", lambda case, k, r: f"{1e3 * r['torchjd_mgda_seconds']:.3f}"),
        ("ours / TorchJD", lambda case, k, r: f"{r['mgda_ours_over_torchjd']:.2f}"),
        ("KKT gap, ours (solver)", lambda case, k, r: f"{r['mgda_ours_solver_gap']:.1e}"),
        ("KKT gap, ours (weights returned)", lambda case, k, r: f"{r['mgda_ours_gap']:.1e}"),
        ("KKT gap, TorchJD", lambda case, k, r: f"{r['mgda_torchjd_gap']:.1e}"),
    ]
    return _table(columns, results)


def cagrad_table(results: dict[str, dict[int, dict[str, float]]]) -> str:
    columns = [
        ("case", lambda case, k, r: case),
        ("K", lambda case, k, r: f"{k}"),
        ("ours ms", lambda case, k, r: f"{1e3 * r['ours_cagrad_seconds']:.3f}"),
        (
            "TorchJD ms",
            lambda case, k, r: _number(1e3 * r.get("torchjd_cagrad_seconds", math.nan), ".2f"),
        ),
        ("ours / TorchJD", lambda case, k, r: _number(r["cagrad_ours_over_torchjd"], ".2f")),
        ("F ours", lambda case, k, r: f"{r['cagrad_ours_objective']:.12g}"),
        ("F TorchJD", lambda case, k, r: _torchjd_objective(r)),
        (
            "(F ours - F TorchJD) / F",
            lambda case, k, r: _number(r["cagrad_objective_difference"], ".1e"),
        ),
        ("duality gap, ours", lambda case, k, r: f"{r['cagrad_ours_dual_gap']:.1e}"),
    ]
    return _table(columns, results)


def _table(columns, results: dict[str, dict[int, dict[str, float]]]) -> str:
    lines = ["| " + " | ".join(name for name, _ in columns) + " |", "|" + "---|" * len(columns)]
    for case, per_task_count in results.items():
        for num_tasks, r in per_task_count.items():
            lines.append("| " + " | ".join(cell(case, num_tasks, r) for _, cell in columns) + " |")
    return "\n".join(lines)


def _torchjd_objective(r: dict[str, float]) -> str:
    missing = r["cagrad_torchjd_no_direction"]
    note = f" ({missing:.0f} without direction)" if math.isfinite(missing) and missing > 0 else ""
    return _number(r["cagrad_torchjd_objective"], ".12g") + note


def _number(value: float, spec: str) -> str:
    return "n/a" if value is None or not math.isfinite(value) else format(value, spec)
