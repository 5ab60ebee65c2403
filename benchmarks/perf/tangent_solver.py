"""Cost of tangent directions (Ma, Du & Matusik 2020): torch MINRES vs SciPy's, and growth with n.

1. torch `core.pareto.minres` against `scipy.sparse.linalg.minres` on a `LinearOperator` wrapping
   the same Hessian-vector product (an MLP with two task losses), at equal iterations and at equal
   residual (each solver run for the iterations it needs to reach the relative residual torch
   reached). Timings interleaved; the ratio scipy / torch is reported (> 1: torch faster). SciPy is
   optional (requirements-bench.txt); without it this part is skipped.
2. One tangent direction (Jacobian, min-norm weights, HVP graph, 10 MINRES iterations) on MLPs
   with n from about 1e3 to 1e6 parameters, against one gradient of the summed losses on the same
   model: the fitted exponent of time against n (1: linear) and the cost in gradients.
3. The two HVP paths, double backward through a kept first-order graph and torch.func
   forward-over-reverse, for one operator set-up plus k products.
Every size and variant is interleaved round by round (`benchmarks.perf.timing`). This is the
`tangent` section of `python -m benchmarks perf` (`benchmarks.perf.report`; the alias
`perf-tangent` runs it alone), on the CPU. Nothing here asserts a wall-clock limit.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from benchmarks.perf.timing import interleaved_medians
from core.pareto import HessianVectorProduct, minres, tangent_directions
from core.pareto.hvp import FunctionalHessianVectorProduct

PARAMETER_TARGETS = (1_000, 10_000, 100_000, 1_000_000)


def two_task_mlp(
    num_parameters: int, *, in_dim: int = 32, seed: int = 0
) -> tuple[list[torch.Tensor], callable, callable]:
    """A tanh MLP `in_dim -> h -> h -> 2` with about `num_parameters` weights, two regression tasks
    on a fixed batch of 256 (float32). Returns its parameters, `losses()` `[2]` (autograd through
    the parameters) and `flat_losses(x)` (the same losses of one flat parameter vector, for
    torch.func)."""
    width = max(2, int((-(in_dim + 3) + math.sqrt((in_dim + 3) ** 2 + 4 * num_parameters)) / 2))
    generator = torch.Generator().manual_seed(seed)
    with (
        torch.random.fork_rng()
    ):  # torch's default initialisation, seeded, without touching the global RNG
        torch.manual_seed(seed)
        model = nn.Sequential(
            nn.Linear(in_dim, width),
            nn.Tanh(),
            nn.Linear(width, width),
            nn.Tanh(),
            nn.Linear(width, 2),
        )
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


def compare_with_scipy(num_parameters: int, *, iterations: int, rounds: int) -> dict[str, float]:
    """torch vs SciPy MINRES on the same damped HVP operator, at equal iterations and at equal
    residual: seconds interleaved over `rounds` rounds (one solve each), ratios scipy / torch."""
    import numpy as np
    from scipy.sparse.linalg import LinearOperator
    from scipy.sparse.linalg import minres as scipy_minres

    params, losses, _ = two_task_mlp(num_parameters)
    operator = HessianVectorProduct(losses(), params, weights=torch.tensor([0.5, 0.5]), damping=0.1)
    rhs = operator.gradient.clone()
    dimension = operator.dimension
    linear = LinearOperator(
        (dimension, dimension),
        matvec=lambda v: operator(
            torch.from_numpy(np.asarray(v, dtype=np.float32).reshape(-1))
        ).numpy(),
        dtype=np.float32,
    )
    rhs_numpy = rhs.numpy()
    scipy_minres(linear, rhs_numpy, rtol=1e-12, maxiter=2)  # warm-up of both paths
    ours = minres(operator, rhs, rtol=1e-12, maxiter=iterations)
    reached = float(ours.residual_norms[-1]) / float(rhs.norm())
    # equal residual: each solver's iteration count to reach `reached` (SciPy's own stopping test
    # differs from ours, so its count is found from its iterates, not from its rtol)
    torch_count = next(
        k
        for k, norm in enumerate(ours.residual_norms.tolist())
        if norm <= reached * 1.0001 * float(rhs.norm())
    )
    iterates: list = []
    scipy_minres(
        linear,
        rhs_numpy,
        rtol=1e-12,
        maxiter=10 * iterations,
        callback=lambda xk: iterates.append(xk.copy()),
    )
    residuals = [
        float(np.linalg.norm(rhs_numpy - linear.matvec(xk)) / np.linalg.norm(rhs_numpy))
        for xk in iterates
    ]
    scipy_count = next(
        (k + 1 for k, value in enumerate(residuals) if value <= reached * 1.0001), len(residuals)
    )
    variants = {
        "torch_equal_iterations": lambda: minres(operator, rhs, rtol=1e-12, maxiter=iterations),
        "scipy_equal_iterations": lambda: scipy_minres(
            linear, rhs_numpy, rtol=1e-12, maxiter=iterations
        ),
        "torch_equal_residual": lambda: minres(operator, rhs, rtol=1e-12, maxiter=torch_count),
        "scipy_equal_residual": lambda: scipy_minres(
            linear, rhs_numpy, rtol=1e-12, maxiter=scipy_count
        ),
    }
    seconds = interleaved_medians(variants, rounds=rounds, repeats=1)
    scipy_solution, _ = scipy_minres(linear, rhs_numpy, rtol=1e-12, maxiter=scipy_count)
    torch_equal_iterations, scipy_equal_iterations = (
        seconds["torch_equal_iterations"],
        seconds["scipy_equal_iterations"],
    )
    torch_equal_residual, scipy_equal_residual = (
        seconds["torch_equal_residual"],
        seconds["scipy_equal_residual"],
    )
    scipy_residual = float(
        np.linalg.norm(rhs_numpy - linear.matvec(scipy_solution)) / np.linalg.norm(rhs_numpy)
    )
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


def measure_costs(
    targets: tuple[int, ...], *, products: int, rounds: int, repeats: int
) -> dict[str, object]:
    """Per size: seconds of one tangent direction, of one gradient of the summed losses, and of
    the two HVP paths (one operator set-up plus `products` products), every size and variant
    interleaved (a variant whose call takes over 0.1 s is called once per round instead of
    `repeats` times); the tangent cost in gradients, torch.func / double backward, and the exponent
    of tangent time against n (fitted over all sizes, and between the two largest)."""
    variants = {}
    sizes = []
    for target in targets:
        params, losses, flat_losses = two_task_mlp(target)
        point = torch.cat([p.detach().reshape(-1) for p in params])
        weights = torch.tensor([0.5, 0.5])
        vector = torch.randn(point.numel(), generator=torch.Generator().manual_seed(1))

        def tangent(losses=losses, params=params) -> None:
            tangent_directions(
                losses(), params, torch.tensor([[1.0, 0.0]]), damping=0.1, maxiter=10, rtol=1e-12
            )

        def gradient(losses=losses, params=params) -> None:
            torch.autograd.grad(losses().sum(), params)

        def graph(losses=losses, params=params, weights=weights, vector=vector) -> None:
            operator = HessianVectorProduct(losses(), params, weights=weights)
            for _ in range(products):
                operator(vector)

        def functional(
            flat_losses=flat_losses, point=point, weights=weights, vector=vector
        ) -> None:
            operator = FunctionalHessianVectorProduct(flat_losses, point, weights=weights)
            for _ in range(products):
                operator(vector)

        sizes.append(point.numel())
        variants |= {
            (target, "tangent"): tangent,
            (target, "gradient"): gradient,
            (target, "hvp_graph"): graph,
            (target, "hvp_functional"): functional,
        }
    seconds = interleaved_medians(variants, rounds=rounds, repeats=repeats, long_call_seconds=0.1)
    rows = []
    for target, size in zip(targets, sizes):
        row = {"parameters": float(size)} | {
            f"{name}_seconds": seconds[(target, name)]
            for name in ("tangent", "gradient", "hvp_graph", "hvp_functional")
        }
        row["tangent_over_gradient"] = row["tangent_seconds"] / row["gradient_seconds"]
        row["functional_over_graph"] = row["hvp_functional_seconds"] / row["hvp_graph_seconds"]
        rows.append(row)
    logs = torch.tensor(
        [[math.log(r["parameters"]), math.log(r["tangent_seconds"])] for r in rows],
        dtype=torch.float64,
    )
    design = torch.stack([logs[:, 0], torch.ones(len(rows), dtype=torch.float64)], dim=1)
    exponent = float(torch.linalg.lstsq(design, logs[:, 1:]).solution[0, 0])
    # at small n the fixed cost of the batch's forward/backward dominates: the slope between the
    # two largest sizes is the asymptotic one
    largest = float((logs[-1, 1] - logs[-2, 1]) / (logs[-1, 0] - logs[-2, 0]))
    return {
        "rows": rows,
        "fitted_exponent": exponent,
        "largest_sizes_exponent": largest,
        "products": products,
    }


def scipy_table(comparisons: list[dict[str, float]]) -> str:
    """One row per size: residual reached, scipy / torch at equal iterations and at equal residual."""
    lines = [
        "| parameters | rel. residual after k its | iterations to it, torch / SciPy | scipy / torch, equal iterations | scipy / torch, equal residual |",
        "|---|---|---|---|---|",
    ]
    for row in comparisons:
        lines.append(
            f"| {int(row['parameters']):,} | {row['relative_residual']:.1e} (k = {int(row['iterations'])}) | "
            f"{int(row['torch_equal_residual_iterations'])} / {int(row['scipy_equal_residual_iterations'])} | "
            f"{row['scipy_over_torch_equal_iterations']:.2f} | {row['scipy_over_torch_equal_residual']:.2f} |"
        )
    return "\n".join(lines)


def cost_table(costs: dict[str, object]) -> str:
    """One row per size: seconds per tangent direction, in gradients, and the HVP paths' ratio;
    then the fitted exponents."""
    lines = [
        f"| parameters | seconds per tangent direction | tangent direction / one gradient | torch.func / double-backward HVP (set-up + {costs['products']} products) |",
        "|---|---|---|---|",
    ]
    for row in costs["rows"]:
        lines.append(
            f"| {int(row['parameters']):,} | {row['tangent_seconds']:.4f} | {row['tangent_over_gradient']:.1f} | {row['functional_over_graph']:.2f} |"
        )
    lines.append(
        f"\nfitted exponent of tangent time against n: {costs['fitted_exponent']:.2f} over all sizes, "
        f"{costs['largest_sizes_exponent']:.2f} between the two largest (1 = linear)"
    )
    return "\n".join(lines)
