"""Engine cost, measured side by side: DiBS-MTL, MGDA and Nash-MTL steps vs linear scalarisation,
weight-solve shares, batched vs looped per-task gradients, representation ("MTL-R") vs full
mode, (with the optional cvxpy) the Nash-MTL weight solve vs a reference-style CCP at equal
residual on the model's own Gramian, how the step cost grows with the number of tasks K, and (with
the optional torchjd) our DiBS-MTL and MGDA steps against TorchJD's `autojac.mtl_backward` +
`jac_to_grad` with its MGDA aggregator on the same model (`torchjd_comparison`).

Models: a LeNet-size two-task model, a 10-task MLP and, for the scaling with K, the same MLP with
K heads. Every ratio compares timings taken in the same run, interleaved round by round
(`benchmarks.perf.timing`), so machine load affects both sides alike. These are the sections
`engine`, `representation` and `scaling` of `python -m benchmarks perf`
(`benchmarks.perf.report`). Nothing here asserts a wall-clock limit.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks.perf.nash_solver import ReferenceStyleCCP, reference_solver
from benchmarks.perf.timing import interleaved_medians
from core import MGDA, DiBSMTL, LinearScalarization, NashMTL, mtl_backward
from core.engine import solve_weights
from core.jacobian import task_jacobians
from core.methods.nash_mtl import nash_residual

GRADIENT_METHODS = {
    "dibsmtl": ("DiBS-MTL", DiBSMTL),
    "mgda": ("MGDA", MGDA),
    "nashmtl": ("Nash-MTL", NashMTL),
}
"""The gradient weightings timed against linear scalarisation: key -> (display name, class)."""

TASK_COUNTS = (2, 4, 8, 16, 32, 64)
"""K of the scaling section."""


class LeNetTwoTask(nn.Module):
    """The MultiMNIST LeNet of Sener & Koltun (2018): shared conv encoder, two MLP heads."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 10, 5),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(10, 20, 5),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(320, 50),
            nn.ReLU(),
        )
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(50, 50), nn.ReLU(), nn.Linear(50, 10)) for _ in range(2)
        )

    def batch(self, size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return torch.randn(size, 1, 28, 28, generator=generator), torch.randint(
            0, 10, (size, 2), generator=generator
        )

    def task_losses(self, features: Tensor, targets: Tensor) -> list[Tensor]:
        return [
            nn.functional.cross_entropy(head(features), targets[:, i])
            for i, head in enumerate(self.heads)
        ]


class MultiHeadMLP(nn.Module):
    """A 3-layer shared ReLU MLP (`in_dim -> hidden -> hidden -> hidden`) with `num_tasks`
    linear regression heads."""

    def __init__(self, *, num_tasks: int = 10, in_dim: int = 64, hidden: int = 256) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.encoder = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
        )
        self.heads = nn.ModuleList(nn.Linear(hidden, 1) for _ in range(num_tasks))

    def batch(self, size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return torch.randn(size, self.in_dim, generator=generator), torch.randn(
            size, len(self.heads), generator=generator
        )

    def task_losses(self, features: Tensor, targets: Tensor) -> list[Tensor]:
        return [
            nn.functional.mse_loss(head(features)[:, 0], targets[:, i])
            for i, head in enumerate(self.heads)
        ]


def seeded(factory: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    """`factory()` with torch's default initialisation seeded by `seed`, the global RNG untouched."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return factory()


def measure_model(
    model: nn.Module,
    *,
    batch_size: int,
    repeats: int,
    rounds: int,
    seed: int = 0,
    device: str = "cpu",
    representation: bool = True,
    jacobians: bool = True,
    device_weights: bool | None = None,
    nash_reference: bool = True,
) -> dict[str, float]:
    """Median seconds of each variant, all interleaved over `rounds` rounds of `repeats` calls.

    Always: one optimiser step of linear scalarisation and of each gradient method (`*_step`),
    and each method's weight solve alone on the Gramian of this model's per-task gradients, as
    the engine runs it (`*_weights`). Optionally: the steps in representation mode
    (`*_step_representation`), the looped and batched per-task gradients (`jacobian_*`), the
    weight solve on the model's device (`*_weights_in_place`; by default only off the CPU, where
    it is the same call) and the Nash-MTL reference-style CCP against our solver at equal residual
    (needs cvxpy; left out without it).
    """
    device = torch.device(device)
    if device_weights is None:
        device_weights = device.type != "cpu"
    generator = torch.Generator().manual_seed(seed)
    inputs, targets = (t.to(device) for t in model.batch(batch_size, generator))
    model.to(device)
    shared = list(model.encoder.parameters())
    heads = [list(head.parameters()) for head in model.heads]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step(method, *, mtl_r: bool = False) -> Callable[[], None]:
        def run() -> None:
            optimizer.zero_grad(set_to_none=True)
            features = model.encoder(inputs)
            losses = model.task_losses(features, targets)
            mtl_backward(
                losses,
                shared,
                method,
                task_params=heads,
                representation=features if mtl_r else None,
            )
            optimizer.step()

        return run

    def jacobian(strategy: str) -> Callable[[], None]:
        def run() -> None:
            losses = torch.stack(model.task_losses(model.encoder(inputs), targets))
            task_jacobians(losses, shared, strategy=strategy, retain_graph=False)

        return run

    # the weight solve alone, on the Gramian of this model's real per-task gradients
    losses = torch.stack(model.task_losses(model.encoder(inputs), targets))
    rows = torch.cat(
        [
            j.reshape(losses.shape[0], -1)
            for j in task_jacobians(losses, shared, retain_graph=False)
        ],
        dim=1,
    )
    gram, detached = (rows @ rows.T).detach(), losses.detach()
    variants: dict[str, Callable[[], object]] = {"ls_step": step(LinearScalarization())}
    for key, (_, method_class) in GRADIENT_METHODS.items():
        variants[f"{key}_step"] = step(method_class())
        if representation:
            variants[f"{key}_step_representation"] = step(method_class(), mtl_r=True)
        # a fresh method per call: Nash-MTL's warm start would otherwise make later solves free
        variants[f"{key}_weights"] = lambda c=method_class: solve_weights(c(), gram, detached)
        if device_weights:
            variants[f"{key}_weights_in_place"] = lambda c=method_class: c()(gram, detached)
    if jacobians:
        variants |= {"jacobian_loop": jacobian("loop"), "jacobian_batched": jacobian("batched")}
    if nash_reference:
        variants |= nash_reference_variants(gram.cpu().to(torch.float64), detached.cpu())
    timings = interleaved_medians(
        variants, rounds=rounds, repeats=repeats, device=device, seed=seed
    )
    return timings | {
        "shared_parameters": float(sum(p.numel() for p in shared)),
        "num_tasks": float(len(heads)),
    }


def nash_reference_variants(gram: Tensor, losses: Tensor) -> dict[str, Callable[[], object]]:
    """Cold Nash-MTL solves on `gram`: the reference-style CCP (cvxpy, if installed) and ours with
    the residual the CCP reached as tolerance; nothing without cvxpy or if the CCP fails here."""
    solver = reference_solver()
    if solver is None:
        return {}
    reference = ReferenceStyleCCP(gram.shape[-1], solver=solver)
    reference.warm_up(gram.numpy())
    reached = nash_residual(gram, torch.from_numpy(reference.solve(gram.numpy()))).item()
    if not reached <= 1e-3:
        return {}
    ours = NashMTL(warm_start=False, tolerance=max(reached, 1e-12))
    return {
        "nashmtl_ccp_weights": lambda: reference.solve(gram.numpy()),
        "nashmtl_equal_residual_weights": lambda: ours(gram, losses),
    }


NASH_REFERENCE_RATIO = "reference CCP / Nash-MTL weight solve, equal residual"


def ratios(timings: dict[str, float]) -> dict[str, float | None]:
    """The engine section's side-by-side ratios (None where a variant was not measured)."""
    result: dict[str, float | None] = {}
    for key, (name, _) in GRADIENT_METHODS.items():
        result[f"{name} step / LS step"] = timings[f"{key}_step"] / timings["ls_step"]
    for key, (name, _) in GRADIENT_METHODS.items():
        result[f"{name} weight solve, share of its step"] = (
            timings[f"{key}_weights"] / timings[f"{key}_step"]
        )
    result[NASH_REFERENCE_RATIO] = (
        timings["nashmtl_ccp_weights"] / timings["nashmtl_equal_residual_weights"]
        if "nashmtl_ccp_weights" in timings
        else None
    )
    result["batched / looped per-task gradients"] = (
        timings["jacobian_batched"] / timings["jacobian_loop"]
    )
    # the engine solves on a CPU copy of the Gramian; this is the cost of solving where it lives
    for key, (name, _) in GRADIENT_METHODS.items():
        if f"{key}_weights_in_place" in timings:
            result[f"{name} weights on the model's device / on the engine's CPU copy"] = (
                timings[f"{key}_weights_in_place"] / timings[f"{key}_weights"]
            )
    return result


def representation_ratios(timings: dict[str, float]) -> dict[str, float]:
    """The representation section's ratios: MTL-R step / full step and MTL-R step / LS step."""
    result = {}
    for key, (name, _) in GRADIENT_METHODS.items():
        result[f"{name}: MTL-R step / full step"] = (
            timings[f"{key}_step_representation"] / timings[f"{key}_step"]
        )
    for key, (name, _) in GRADIENT_METHODS.items():
        result[f"{name}: MTL-R step / LS step"] = (
            timings[f"{key}_step_representation"] / timings["ls_step"]
        )
    return result


def scaling_ratios(timings: dict[str, float]) -> dict[str, float]:
    """The scaling section's ratios at one K: each step and each weight solve alone / LS step."""
    result = {}
    for key, (name, _) in GRADIENT_METHODS.items():
        result[f"{name} step / LS step"] = timings[f"{key}_step"] / timings["ls_step"]
    for key, (name, _) in GRADIENT_METHODS.items():
        result[f"{name} weight solve / LS step"] = timings[f"{key}_weights"] / timings["ls_step"]
    return result


def measure_scaling_point(
    num_tasks: int,
    *,
    batch_size: int,
    hidden: int,
    repeats: int,
    rounds: int,
    device: str = "cpu",
    seed: int = 0,
) -> dict[str, float]:
    """Steps and weight solves of every method on `MultiHeadMLP(num_tasks=K)`, interleaved."""
    model = seeded(lambda: MultiHeadMLP(num_tasks=num_tasks, hidden=hidden), seed)
    return measure_model(
        model,
        batch_size=batch_size,
        repeats=repeats,
        rounds=rounds,
        seed=seed,
        device=device,
        representation=False,
        jacobians=False,
        device_weights=False,
        nash_reference=False,
    )


def engine_table(results: dict[str, dict[str, float]]) -> str:
    """Rows: model size, step times (ms) and the engine ratios; one column per model."""
    rows: list[tuple[str, Callable[[dict[str, float]], str]]] = [
        ("shared parameters", lambda t: f"{int(t['shared_parameters']):,}"),
        ("tasks K", lambda t: f"{int(t['num_tasks'])}"),
        ("LS step (ms)", lambda t: f"{1e3 * t['ls_step']:.2f}"),
    ]
    rows += [
        (f"{name} step (ms)", (lambda k: lambda t: f"{1e3 * t[f'{k}_step']:.2f}")(key))
        for key, (name, _) in GRADIENT_METHODS.items()
    ]
    rows += [
        (label, (lambda k: lambda t: ratio_cell(ratios(t)[k], missing="cvxpy"))(label))
        for label in ratios(next(iter(results.values())))
    ]
    return quantity_table(results, rows)


def representation_table(results: dict[str, dict[str, float]]) -> str:
    """Rows: MTL-R step times (ms) and the representation ratios; one column per model."""
    rows: list[tuple[str, Callable[[dict[str, float]], str]]] = [
        (
            f"{name} MTL-R step (ms)",
            (lambda k: lambda t: f"{1e3 * t[f'{k}_step_representation']:.2f}")(key),
        )
        for key, (name, _) in GRADIENT_METHODS.items()
    ]
    rows += [
        (label, (lambda k: lambda t: ratio_cell(representation_ratios(t)[k]))(label))
        for label in representation_ratios(next(iter(results.values())))
    ]
    return quantity_table(results, rows)


def scaling_table(results: dict[int, dict[str, float]]) -> str:
    """One row per K: shared parameters, LS step (ms), each step / LS step, each weight solve / LS step."""
    labels = list(scaling_ratios(next(iter(results.values()))))
    lines = [
        "| K | LS step (ms) | " + " | ".join(labels) + " |",
        "|---|---|" + "---|" * len(labels),
    ]
    for num_tasks, timings in results.items():
        cells = [ratio_cell(value) for value in scaling_ratios(timings).values()]
        lines.append(
            f"| {num_tasks} | {1e3 * timings['ls_step']:.2f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def quantity_table(
    results: dict[str, dict[str, float]], rows: list[tuple[str, Callable[[dict[str, float]], str]]]
) -> str:
    """A markdown table with one row per (label, cell function) and one column per result."""
    names = list(results)
    lines = ["| quantity | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, cell in rows:
        lines.append(f"| {label} | " + " | ".join(cell(results[name]) for name in names) + " |")
    return "\n".join(lines)


def ratio_cell(value: float | None, *, missing: str = "") -> str:
    """A ratio to 3 significant decimals, or why it is missing."""
    if value is None:
        return (
            f"skipped: pip install -r requirements-bench.txt ({missing})"
            if missing
            else "not measured"
        )
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


TORCHJD_MODELS: dict[str, Callable[[], nn.Module]] = {
    "LeNet, 2 tasks": LeNetTwoTask,
    "MLP, 10 tasks": MultiHeadMLP,
}
"""The models of the TorchJD comparison (the engine section's)."""

TORCHJD_OURS = {"dibsmtl": "DiBS-MTL", "mgda": "MGDA"}
"""Our steps compared with TorchJD's MGDA step: key -> display name."""


def torchjd_comparison(
    *,
    batch_size: int,
    repeats: int,
    rounds: int,
    seed: int = 0,
    device: str = "cpu",
    models: dict[str, Callable[[], nn.Module]] | None = None,
) -> dict[str, Any]:
    """Median seconds of one optimiser step (forward, backward, Adam step) per model, interleaved:
    our DiBS-MTL and MGDA steps in full mode (`*_step`) and representation mode
    (`*_step_representation`), and TorchJD's `autojac.mtl_backward(losses, features=...,
    tasks_params=heads, shared_params=...)` + `jac_to_grad(shared, MGDA())` (`torchjd_mgda_step`;
    TorchJD has one mode: per-task gradients on the shared parameters, through the features).
    Every variant passes the heads. Returns `{"skipped": reason}` when torchjd is not installed,
    else `{"torchjd_version": ..., model name: timings}` (`torchjd_table` renders it).
    """
    try:
        from torchjd.aggregation import MGDA as TorchJDMGDA
        from torchjd.autojac import jac_to_grad
        from torchjd.autojac import mtl_backward as torchjd_mtl_backward
    except ImportError:
        return {"skipped": "torchjd is not installed (pip install torchjd)"}
    results: dict[str, Any] = {"torchjd_version": metadata.version("torchjd")}
    for name, factory in (TORCHJD_MODELS if models is None else models).items():
        model = seeded(factory, seed).to(device)
        torchjd_step = _torchjd_step_factory(torchjd_mtl_backward, jac_to_grad, TorchJDMGDA())
        results[name] = _measure_against_torchjd(
            model,
            torchjd_step,
            batch_size=batch_size,
            repeats=repeats,
            rounds=rounds,
            seed=seed,
            device=device,
        )
    return results


def _torchjd_step_factory(
    torchjd_mtl_backward: Callable, jac_to_grad: Callable, aggregator: object
) -> Callable:
    """TorchJD's MTL backward: per-task gradients through the features onto the shared parameters'
    `.jac`, then aggregated into `.grad` (the heads receive their plain gradients)."""

    def backward(
        losses: list[Tensor], features: Tensor, shared: list[Tensor], heads: list[list[Tensor]]
    ) -> None:
        torchjd_mtl_backward(losses, features=features, tasks_params=heads, shared_params=shared)
        jac_to_grad(shared, aggregator)

    return backward


def _measure_against_torchjd(
    model: nn.Module,
    torchjd_backward: Callable,
    *,
    batch_size: int,
    repeats: int,
    rounds: int,
    seed: int,
    device: str,
) -> dict[str, float]:
    inputs, targets = (
        t.to(device) for t in model.batch(batch_size, torch.Generator().manual_seed(seed))
    )
    shared = list(model.encoder.parameters())
    heads = [list(head.parameters()) for head in model.heads]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step(backward: Callable[[list[Tensor], Tensor], None]) -> Callable[[], None]:
        def run() -> None:
            optimizer.zero_grad(set_to_none=True)
            features = model.encoder(inputs)
            backward(model.task_losses(features, targets), features)
            optimizer.step()

        return run

    def ours(method: object, representation: bool) -> Callable[[list[Tensor], Tensor], None]:
        return lambda losses, features: mtl_backward(
            losses,
            shared,
            method,
            task_params=heads,
            representation=features if representation else None,
        )

    variants = {
        "torchjd_mgda_step": step(
            lambda losses, features: torchjd_backward(losses, features, shared, heads)
        )
    }
    for key in TORCHJD_OURS:
        method_class = GRADIENT_METHODS[key][1]
        variants[f"{key}_step"] = step(ours(method_class(), False))
        variants[f"{key}_step_representation"] = step(ours(method_class(), True))
    return interleaved_medians(variants, rounds=rounds, repeats=repeats, device=device, seed=seed)


def torchjd_ratios(timings: dict[str, float]) -> dict[str, float]:
    """Each of our steps / TorchJD's MGDA step (below 1: ours is faster)."""
    reference = timings["torchjd_mgda_step"]
    result = {}
    for key, name in TORCHJD_OURS.items():
        result[f"{name} step / TorchJD MGDA step"] = timings[f"{key}_step"] / reference
        result[f"{name} MTL-R step / TorchJD MGDA step"] = (
            timings[f"{key}_step_representation"] / reference
        )
    return result


def torchjd_table(results: dict[str, Any]) -> str:
    """Rows: step times (ms) and the ratios to TorchJD's step; one column per model (or why skipped)."""
    if "skipped" in results:
        return f"skipped: {results['skipped']}"
    models = {name: timings for name, timings in results.items() if name != "torchjd_version"}
    rows: list[tuple[str, Callable[[dict[str, float]], str]]] = [
        (
            f"TorchJD {results['torchjd_version']} MGDA step (ms)",
            lambda t: f"{1e3 * t['torchjd_mgda_step']:.2f}",
        )
    ]
    for key, name in TORCHJD_OURS.items():
        rows.append((f"{name} step (ms)", (lambda k: lambda t: f"{1e3 * t[f'{k}_step']:.2f}")(key)))
        rows.append(
            (
                f"{name} MTL-R step (ms)",
                (lambda k: lambda t: f"{1e3 * t[f'{k}_step_representation']:.2f}")(key),
            )
        )
    rows += [
        (label, (lambda k: lambda t: ratio_cell(torchjd_ratios(t)[k]))(label))
        for label in torchjd_ratios(next(iter(models.values())))
    ]
    return quantity_table(models, rows)
