"""Nash-MTL weight solve: `core.NashMTL`'s damped Newton vs a reference-style CCP with cvxpy.

The reference code (AvivNavon/nash-mtl, `methods/weight_methods.py`) solves `G alpha = 1/alpha`
with the concave-convex procedure: up to 20 convex programs (cvxpy + ECOS, warm-started,
max_iters 100) in which the concave `phi(alpha) = sum_i log alpha_i + log (G alpha)_i` is
linearised at the previous iterate, on the Gramian divided by its Frobenius norm Z (spec
random_weighting_baselines_metrics.md §3.9). The CCP here is written from that description; the
cvxpy problem is built once per K with parameters (as the reference does), so its compilation is
not timed.

Two regimes, timed at equal residual (the relative residual `max_i |alpha_i (G alpha)_i - 1|` that
the CCP reached becomes our tolerance for that problem):
- cold: independent Gramians, the CCP from alpha = 1 (the reference's first step), ours without
  warm start. From alpha = 1 the first CCP linearisation can be taken where `G alpha` has
  negative entries; the CCP then fails (residual > 1e-3 after 20 steps). Those problems are
  counted ("CCP solved") and left out of the equal-residual timing; ours is also timed on every
  problem at its default tolerance 1e-10.
- warm: a drifting sequence of Gramians (as in training), both solvers warm-started from their
  previous alpha, as the reference does between steps.
Timings are interleaved problem by problem and round by round, so machine load affects both
sides alike. Gramians: `G = J J^T` with J of shape K x 3K, Gaussian rows with a shared component
(mild conflict) and row scales 10^U(-1, 1). Nothing here asserts a wall-clock limit.

This is the `nash` section of `python -m benchmarks perf` (`benchmarks.perf.report`; the alias
`perf-nash` runs it alone). cvxpy is optional (`pip install -r requirements-bench.txt`); without it
the section says so and is skipped.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from core.methods.nash_mtl import NashMTL, nash_residual

TASK_COUNTS = (2, 3, 5, 10, 40)


def random_gramians(num_tasks: int, count: int, *, seed: int) -> list[torch.Tensor]:
    """`count` float64 Gramians of K x 3K Jacobians (mild conflict, scales over two decades)."""
    generator = torch.Generator().manual_seed(seed)
    gramians = []
    for _ in range(count):
        dim = 3 * num_tasks
        shared = torch.randn(1, dim, generator=generator, dtype=torch.float64)
        rows = 0.5 * shared + torch.randn(num_tasks, dim, generator=generator, dtype=torch.float64)
        scales = 10.0 ** (
            2 * torch.rand(num_tasks, 1, generator=generator, dtype=torch.float64) - 1
        )
        jacobian = scales * rows
        gramians.append(jacobian @ jacobian.T)
    return gramians


class ReferenceStyleCCP:
    """Concave-convex procedure for `G alpha = 1/alpha` with cvxpy, as the Nash-MTL reference runs it.

    Per CCP step: minimise `sum(G_hat alpha) + grad_phi(alpha_prev)^T alpha / Z` subject to
    `log(Z alpha_i) + log((G_hat alpha)_i) >= 0` and `alpha >= 0`, with `G_hat = G / Z`,
    `Z = ||G||_F`, `grad_phi(a) = 1/a + G_hat^T (1 / (G_hat a))`. Stops after `iterations` steps,
    when `||G alpha - 1/alpha|| < 1e-3` or the change in alpha is below 1e-6; on a solver error it
    keeps the previous alpha.
    """

    def __init__(self, num_tasks: int, *, solver: str, iterations: int = 20) -> None:
        import cvxpy as cp

        self._cp = cp
        self.solver = solver
        self.iterations = iterations
        self.gram = cp.Parameter((num_tasks, num_tasks))
        self.frobenius = cp.Parameter(nonneg=True)
        self.linear = cp.Parameter(num_tasks)
        self.alpha = cp.Variable(num_tasks, nonneg=True)
        combined = self.gram @ self.alpha
        constraints = [cp.log(cp.multiply(self.frobenius, self.alpha)) + cp.log(combined) >= 0]
        self.problem = cp.Problem(
            cp.Minimize(cp.sum(combined) + self.linear @ self.alpha), constraints
        )

    def solve(self, gramian: np.ndarray, initial: np.ndarray | None = None) -> np.ndarray:
        """Alpha from `initial` (the previous step's alpha, as the reference warm-starts) or ones."""
        norm = float(np.linalg.norm(gramian))
        normalized = gramian / norm
        self.gram.value = normalized
        self.frobenius.value = norm
        alpha = np.ones(gramian.shape[0]) if initial is None else initial.copy()
        options = {"max_iters": 100} if self.solver == "ECOS" else {}
        for _ in range(self.iterations):
            gradient = 1 / alpha + normalized.T @ (1 / (normalized @ alpha))
            self.linear.value = gradient / norm
            try:
                self.problem.solve(solver=self.solver, warm_start=True, **options)
            except self._cp.error.SolverError:
                break
            candidate = self.alpha.value
            if candidate is None or not np.all(np.isfinite(candidate)) or not np.all(candidate > 0):
                break
            change = float(np.linalg.norm(candidate - alpha))
            alpha = candidate
            if np.linalg.norm(gramian @ alpha - 1 / alpha) < 1e-3 or change < 1e-6:
                break
        return alpha

    def warm_up(self, gramian: np.ndarray) -> None:
        """Compile the parametrised problem (the reference builds it once, outside the loop)."""
        self.solve(gramian)


def _seconds(function: Callable[[], object]) -> tuple[float, object]:
    began = time.perf_counter()
    result = function()
    return time.perf_counter() - began, result


def drifting_gramians(
    num_tasks: int, count: int, *, seed: int, drift: float = 0.02
) -> list[torch.Tensor]:
    """A training-like sequence: `J_{t+1} = J_t + drift * ||J_t||_row * noise`, Gramians of each."""
    generator = torch.Generator().manual_seed(seed)
    dim = 3 * num_tasks
    shared = torch.randn(1, dim, generator=generator, dtype=torch.float64)
    jacobian = 0.5 * shared + torch.randn(num_tasks, dim, generator=generator, dtype=torch.float64)
    gramians = []
    for _ in range(count):
        gramians.append(jacobian @ jacobian.T)
        noise = torch.randn(num_tasks, dim, generator=generator, dtype=torch.float64)
        jacobian = jacobian + drift * jacobian.norm(dim=1, keepdim=True) * noise / dim**0.5
    return gramians


def measure(
    num_tasks: int, *, problems: int, rounds: int, solver: str, seed: int
) -> dict[str, float]:
    """Median seconds per solve, residuals and success rates of both solvers for one K.

    cold: independent Gramians, the CCP from alpha = 1, ours without warm start. Equal-residual
    timings use the problems the CCP solved (relative residual <= 1e-3); the CCP's failures are
    counted, and ours is timed on every problem at its default tolerance. warm: a drifting
    sequence, each solver warm-started from its previous alpha (the reference's use in training).
    """
    losses = torch.ones(num_tasks, dtype=torch.float64)
    reference = ReferenceStyleCCP(num_tasks, solver=solver)
    cold_gramians = random_gramians(num_tasks, problems, seed=seed + num_tasks)
    warm_gramians = drifting_gramians(num_tasks, problems, seed=seed + 1000 + num_tasks)
    reference.warm_up(cold_gramians[0].numpy())
    NashMTL()(cold_gramians[0], losses)  # warm-up
    keys = ("ccp_cold", "ours_cold_equal", "ours_cold_default", "ccp_warm", "ours_warm_equal")
    seconds: dict[str, list[float]] = {key: [] for key in keys}
    residuals: dict[str, list[float]] = {key: [] for key in keys}
    solved = []
    for _ in range(rounds):
        for gram in cold_gramians:
            elapsed, alpha = _seconds(lambda g=gram: reference.solve(g.numpy()))
            reached = nash_residual(gram, torch.from_numpy(alpha)).item()
            solved.append(reached <= 1e-3)
            default = NashMTL(warm_start=False)
            elapsed_default, weights_default = _seconds(lambda g=gram, m=default: m(g, losses))
            seconds["ours_cold_default"].append(elapsed_default)
            residuals["ours_cold_default"].append(nash_residual(gram, weights_default).item())
            if not solved[-1]:
                continue
            seconds["ccp_cold"].append(elapsed)
            residuals["ccp_cold"].append(reached)
            matched = NashMTL(tolerance=max(reached, 1e-12), warm_start=False)
            elapsed, weights = _seconds(lambda g=gram, m=matched: m(g, losses))
            seconds["ours_cold_equal"].append(elapsed)
            residuals["ours_cold_equal"].append(nash_residual(gram, weights).item())
        previous, ours = None, NashMTL()
        for gram in warm_gramians:
            elapsed, alpha = _seconds(lambda g=gram, a=previous: reference.solve(g.numpy(), a))
            previous = alpha
            reached = nash_residual(gram, torch.from_numpy(alpha)).item()
            seconds["ccp_warm"].append(elapsed)
            residuals["ccp_warm"].append(reached)
            ours.tolerance = max(reached, 1e-12)
            elapsed, weights = _seconds(lambda g=gram, m=ours: m(g, losses))
            seconds["ours_warm_equal"].append(elapsed)
            residuals["ours_warm_equal"].append(nash_residual(gram, weights).item())
    result: dict[str, float] = {"ccp_cold_solved_fraction": sum(solved) / len(solved)}
    for key in keys:
        result[f"{key}_seconds"] = statistics.median(seconds[key]) if seconds[key] else float("nan")
        result[f"{key}_residual"] = (
            statistics.median(residuals[key]) if residuals[key] else float("nan")
        )
    result["speedup_cold_equal"] = result["ccp_cold_seconds"] / result["ours_cold_equal_seconds"]
    result["speedup_cold_default"] = (
        result["ccp_cold_seconds"] / result["ours_cold_default_seconds"]
    )
    result["speedup_warm_equal"] = result["ccp_warm_seconds"] / result["ours_warm_equal_seconds"]
    return result


def markdown_table(results: dict[int, dict[str, float]]) -> str:
    columns = [
        ("K", lambda k, r: f"{k}"),
        ("CCP solved (cold)", lambda k, r: f"{100 * r['ccp_cold_solved_fraction']:.0f}%"),
        (
            "CCP cold ms (residual)",
            lambda k, r: f"{1e3 * r['ccp_cold_seconds']:.2f} ({r['ccp_cold_residual']:.0e})",
        ),
        (
            "ours cold, equal residual ms (residual)",
            lambda k, r: (
                f"{1e3 * r['ours_cold_equal_seconds']:.3f} ({r['ours_cold_equal_residual']:.0e})"
            ),
        ),
        (
            "ours cold, tol 1e-10 ms (residual)",
            lambda k, r: (
                f"{1e3 * r['ours_cold_default_seconds']:.3f} ({r['ours_cold_default_residual']:.0e})"
            ),
        ),
        (
            "CCP warm ms (residual)",
            lambda k, r: f"{1e3 * r['ccp_warm_seconds']:.2f} ({r['ccp_warm_residual']:.0e})",
        ),
        (
            "ours warm, equal residual ms (residual)",
            lambda k, r: (
                f"{1e3 * r['ours_warm_equal_seconds']:.3f} ({r['ours_warm_equal_residual']:.0e})"
            ),
        ),
        ("speed-up cold equal", lambda k, r: f"{r['speedup_cold_equal']:.1f}x"),
        ("speed-up cold 1e-10", lambda k, r: f"{r['speedup_cold_default']:.1f}x"),
        ("speed-up warm equal", lambda k, r: f"{r['speedup_warm_equal']:.1f}x"),
    ]
    lines = ["| " + " | ".join(name for name, _ in columns) + " |", "|" + "---|" * len(columns)]
    for num_tasks, r in results.items():
        lines.append("| " + " | ".join(cell(num_tasks, r) for _, cell in columns) + " |")
    return "\n".join(lines)


def reference_solver(preferred: str = "ECOS") -> str | None:
    """The cvxpy solver for the reference-style CCP: `preferred` if installed, else CLARABEL;
    None if cvxpy or both solvers are missing."""
    try:
        import cvxpy
    except ImportError:
        return None
    installed = cvxpy.installed_solvers()
    return preferred if preferred in installed else "CLARABEL" if "CLARABEL" in installed else None
