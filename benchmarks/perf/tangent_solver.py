"""Cost of tangent directions (Ma, Du & Matusik 2020): torch MINRES vs SciPy's, and growth with n.

1. torch `core.pareto.minres` against `scipy.sparse.linalg.minres` on a `LinearOperator` wrapping
   the same Hessian-vector product (an MLP with two task losses), at equal iterations and at equal
   residual (SciPy run with the relative residual torch reached). Timings interleaved; the ratio
   scipy / torch is reported (> 1: torch faster). SciPy is optional (requirements-bench.txt).
2. One tangent direction (Jacobian, min-norm weights, HVP graph, 10 MINRES iterations) on MLPs
   with n from about 1e3 to 1e6 parameters: the fitted exponent of time against n (1: linear).
3. The two HVP paths, double backward through a kept first-order graph and torch.func
   forward-over-reverse, for one operator set-up plus k products.
Nothing here asserts a wall-clock limit.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from benchmarks.store import environment, write_json_atomic, write_markdown_table
from core.pareto import HessianVectorProduct, minres, tangent_directions
from core.pareto.hvp import FunctionalHessianVectorProduct

PARAMETER_TARGETS = (1_000, 10_000, 100_000, 1_000_000)


def two_task_mlp(num_parameters: int, *, in_dim: int = 32, seed: int = 0) -> tuple[list[torch.Tensor], callable, callable]:
    """A tanh MLP `in_dim -> h -> h -> 2` with about `num_parameters` weights, two regression tasks
    on a fixed batch of 256 (float32). Returns its parameters, `losses()` `[2]` (autograd through
    the parameters) and `flat_losses(x)` (the same losses of one flat parameter vector, for
    torch.func)."""
    width = max(2, int((-(in_dim + 3) + math.sqrt((in_dim + 3) ** 2 + 4 * num_parameters)) / 2))
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():  # torch's default initialisation, seeded, without touching the global RNG
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(in_dim, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 2))
    inputs = torch.randn(256, in_dim, generator=generator)
    targets = torch.randn(256, 2, generator=generator)
    names, params = zip(*model.named_parameters())

    def losses() -> torch.Tensor:
        return ((model(inputs) - targets) ** 2).mean(dim=0)

    def flat_losses(flat: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(flat, [p.numel() for p in params])
        state = {name: piece.reshape(p.shape) for name, piece, p in zip(names, pieces, params)}
        return ((torch.func.functional_call(model, state, (inputs,)) - targets) ** 2).mean(dim=0)

    return list(params), losses, flat_losses


def hvp_paths(num_parameters: int, *, products: int, repeats: int) -> dict[str, float]:
    """Seconds for one operator set-up plus `products` HVPs: double backward (graph built once)
    against torch.func forward-over-reverse (nothing kept between calls)."""
    params, losses, flat_losses = two_task_mlp(num_parameters)
    point = torch.cat([p.detach().reshape(-1) for p in params])
    weights = torch.tensor([0.5, 0.5])
    vector = torch.randn(point.numel(), generator=torch.Generator().manual_seed(1))

    def graph() -> None:
        operator = HessianVectorProduct(losses(), params, weights=weights)
        for _ in range(products):
            operator(vector)

    def functional() -> None:
        operator = FunctionalHessianVectorProduct(flat_losses, point, weights=weights)
        for _ in range(products):
            operator(vector)

    graph(), functional()  # warm-up
    return {"parameters": float(point.numel()), "functional_over_graph": _time(functional, repeats) / _time(graph, repeats)}


def _time(function, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        began = time.perf_counter()
        function()
        samples.append(time.perf_counter() - began)
    return statistics.median(samples)


def compare_with_scipy(num_parameters: int, *, iterations: int, repeats: int) -> dict[str, float]:
    import numpy as np
    from scipy.sparse.linalg import LinearOperator
    from scipy.sparse.linalg import minres as scipy_minres

    params, losses, _ = two_task_mlp(num_parameters)
    operator = HessianVectorProduct(losses(), params, weights=torch.tensor([0.5, 0.5]), damping=0.1)
    rhs = operator.gradient.clone()
    dimension = operator.dimension
    linear = LinearOperator((dimension, dimension), matvec=lambda v: operator(torch.from_numpy(np.asarray(v, dtype=np.float32).reshape(-1))).numpy(), dtype=np.float32)
    rhs_numpy = rhs.numpy()
    scipy_minres(linear, rhs_numpy, rtol=1e-12, maxiter=2)  # warm-up of both paths
    ours = minres(operator, rhs, rtol=1e-12, maxiter=iterations)
    reached = float(ours.residual_norms[-1]) / float(rhs.norm())
    # equal residual: each solver's iteration count to reach `reached` (SciPy's own stopping test
    # differs from ours, so its count is found from its iterates, not from its rtol)
    torch_count = next(k for k, norm in enumerate(ours.residual_norms.tolist()) if norm <= reached * 1.0001 * float(rhs.norm()))
    iterates: list = []
    scipy_minres(linear, rhs_numpy, rtol=1e-12, maxiter=10 * iterations, callback=lambda xk: iterates.append(xk.copy()))
    residuals = [float(np.linalg.norm(rhs_numpy - linear.matvec(xk)) / np.linalg.norm(rhs_numpy)) for xk in iterates]
    scipy_count = next((k + 1 for k, value in enumerate(residuals) if value <= reached * 1.0001), len(residuals))
    variants = {
        "torch_equal_iterations": lambda: minres(operator, rhs, rtol=1e-12, maxiter=iterations),
        "scipy_equal_iterations": lambda: scipy_minres(linear, rhs_numpy, rtol=1e-12, maxiter=iterations),
        "torch_equal_residual": lambda: minres(operator, rhs, rtol=1e-12, maxiter=torch_count),
        "scipy_equal_residual": lambda: scipy_minres(linear, rhs_numpy, rtol=1e-12, maxiter=scipy_count),
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):  # interleaved, so that machine load affects both sides alike
        for name, function in variants.items():
            samples[name].append(_time(function, 1))
    seconds = {name: statistics.median(values) for name, values in samples.items()}
    scipy_solution, _ = scipy_minres(linear, rhs_numpy, rtol=1e-12, maxiter=scipy_count)
    torch_equal_iterations, scipy_equal_iterations = seconds["torch_equal_iterations"], seconds["scipy_equal_iterations"]
    torch_equal_residual, scipy_equal_residual = seconds["torch_equal_residual"], seconds["scipy_equal_residual"]
    scipy_residual = float(np.linalg.norm(rhs_numpy - linear.matvec(scipy_solution)) / np.linalg.norm(rhs_numpy))
    return {
        "parameters": float(dimension),
        "iterations": float(iterations),
        "relative_residual": reached,
        "torch_equal_residual_iterations": float(torch_count),
        "scipy_equal_residual_iterations": float(scipy_count),
        "scipy_relative_residual": scipy_residual,
        "scipy_over_torch_equal_iterations": scipy_equal_iterations / torch_equal_iterations,
        "scipy_over_torch_equal_residual": scipy_equal_residual / torch_equal_residual,
    }


def tangent_cost(targets: tuple[int, ...], *, repeats: int) -> dict[str, object]:
    rows = []
    for target in targets:
        params, losses, _ = two_task_mlp(target)

        def one_direction(losses=losses, params=params) -> None:
            tangent_directions(losses(), params, torch.tensor([[1.0, 0.0]]), damping=0.1, maxiter=10, rtol=1e-12)

        one_direction()  # warm-up
        rows.append({"parameters": float(sum(p.numel() for p in params)), "seconds": _time(one_direction, repeats)})
    logs = torch.tensor([[math.log(r["parameters"]), math.log(r["seconds"])] for r in rows], dtype=torch.float64)
    design = torch.stack([logs[:, 0], torch.ones(len(rows), dtype=torch.float64)], dim=1)
    exponent = float(torch.linalg.lstsq(design, logs[:, 1:]).solution[0, 0])
    # at small n the fixed cost of the batch's forward/backward dominates: the slope between the
    # two largest sizes is the asymptotic one
    largest = float((logs[-1, 1] - logs[-2, 1]) / (logs[-1, 0] - logs[-2, 0]))
    return {"rows": rows, "fitted_exponent": exponent, "largest_sizes_exponent": largest}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--iterations", type=int, default=20, help="MINRES iterations of the equal-iteration comparison")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repeat: checks that it runs")
    parser.add_argument("--out", type=Path, default=Path("results"), help="folder for the JSON result")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the tables to this markdown file")


def main(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    targets, repeats, iterations = ((300, 1_000), 1, 3) if args.quick else (PARAMETER_TARGETS, args.repeats, args.iterations)
    try:
        import scipy  # noqa: F401

        comparisons = [compare_with_scipy(n, iterations=iterations, repeats=repeats) for n in targets[-2:]]
    except ImportError:
        print("scipy is not installed (optional: pip install -r requirements-bench.txt); skipping the SciPy comparison", file=sys.stderr)
        comparisons = []
    scaling = tangent_cost(targets, repeats=repeats)
    paths = [hvp_paths(n, products=iterations, repeats=repeats) for n in targets]
    lines = ["| parameters | rel. residual after k its | scipy / torch, equal iterations | scipy / torch, equal residual |", "|---|---|---|---|"]
    for row in comparisons:
        lines.append(f"| {int(row['parameters']):,} | {row['relative_residual']:.1e} (k = {int(row['iterations'])}) | {row['scipy_over_torch_equal_iterations']:.2f} | {row['scipy_over_torch_equal_residual']:.2f} |")
    lines += ["", "| parameters | seconds per tangent direction | torch.func / double-backward HVP (set-up + k products) |", "|---|---|---|"]
    lines += [f"| {int(row['parameters']):,} | {row['seconds']:.4f} | {path['functional_over_graph']:.2f} |" for row, path in zip(scaling["rows"], paths)]
    lines.append(f"\nfitted exponent of time against n: {scaling['fitted_exponent']:.2f} over all sizes, {scaling['largest_sizes_exponent']:.2f} between the two largest (1 = linear)")
    table = "\n".join(lines)
    payload = {"experiment": "perf_tangent", "config": {"targets": list(targets), "repeats": repeats, "iterations": iterations}, "environment": environment(), "scipy_comparison": comparisons, "scaling": scaling, "hvp_paths": paths, "table": table}
    path = write_json_atomic(args.out / "perf_tangent.json", payload)
    if args.markdown is not None:
        machine = payload["environment"]
        write_markdown_table(args.markdown, "Tangent directions: torch MINRES vs SciPy, and cost against n", f"`python -m benchmarks perf-tangent` ({repeats} repeats, median; {machine['platform']}, torch {machine['torch']}, {machine['threads']} threads)", table)
    print(table)
    print(f"\nwrote {path}")
    return 0
