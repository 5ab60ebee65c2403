"""Engine cost, measured side by side: DiBS-MTL, MGDA and Nash-MTL steps vs linear scalarisation,
weight-solve shares, batched vs looped per-task gradients, and (with the optional cvxpy) the
Nash-MTL weight solve vs a reference-style CCP at equal residual on the model's own Gramian, on a
LeNet-size two-task model and a 10-task MLP.

Every ratio compares timings taken in the same run, interleaved round by round, so machine
load affects both sides alike. Nothing here asserts a wall-clock limit.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from benchmarks.perf.nash_solver import ReferenceStyleCCP, reference_solver
from benchmarks.store import environment, write_json_atomic, write_markdown_table
from core import MGDA, DiBSMTL, LinearScalarization, NashMTL, mtl_backward
from core.engine import solve_weights
from core.jacobian import task_jacobians
from core.methods.nash_mtl import nash_residual


class LeNetTwoTask(nn.Module):
    """The MultiMNIST LeNet of Sener & Koltun (2018): shared conv encoder, two MLP heads."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 10, 5), nn.MaxPool2d(2), nn.ReLU(), nn.Conv2d(10, 20, 5), nn.MaxPool2d(2), nn.ReLU(),
            nn.Flatten(), nn.Linear(320, 50), nn.ReLU(),
        )
        self.heads = nn.ModuleList(nn.Sequential(nn.Linear(50, 50), nn.ReLU(), nn.Linear(50, 10)) for _ in range(2))

    def batch(self, size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return torch.randn(size, 1, 28, 28, generator=generator), torch.randint(0, 10, (size, 2), generator=generator)

    def task_losses(self, features: Tensor, targets: Tensor) -> list[Tensor]:
        return [nn.functional.cross_entropy(head(features), targets[:, i]) for i, head in enumerate(self.heads)]


class MLPTenTask(nn.Module):
    """A 3-layer shared MLP with 10 regression heads."""

    def __init__(self, *, in_dim: int = 64, hidden: int = 256, num_tasks: int = 10) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.encoder = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.heads = nn.ModuleList(nn.Linear(hidden, 1) for _ in range(num_tasks))

    def batch(self, size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return torch.randn(size, self.in_dim, generator=generator), torch.randn(size, len(self.heads), generator=generator)

    def task_losses(self, features: Tensor, targets: Tensor) -> list[Tensor]:
        return [nn.functional.mse_loss(head(features)[:, 0], targets[:, i]) for i, head in enumerate(self.heads)]


def _median_seconds(function: Callable[[], object], repeats: int, device: torch.device) -> float:
    samples = []
    for _ in range(repeats):
        _synchronize(device)
        began = time.perf_counter()
        function()
        _synchronize(device)
        samples.append(time.perf_counter() - began)
    return statistics.median(samples)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_model(
    model: nn.Module, *, batch_size: int, repeats: int, rounds: int, seed: int = 0, device: str = "cpu"
) -> dict[str, float]:
    """Median timings (seconds) of each variant, interleaved over `rounds` rounds."""
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    inputs, targets = (t.to(device) for t in model.batch(batch_size, generator))
    model.to(device)
    shared = list(model.encoder.parameters())
    heads = [list(head.parameters()) for head in model.heads]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step(method) -> Callable[[], None]:
        def run() -> None:
            optimizer.zero_grad(set_to_none=True)
            losses = model.task_losses(model.encoder(inputs), targets)
            mtl_backward(losses, shared, method, task_params=heads)
            optimizer.step()

        return run

    def jacobian(strategy: str) -> Callable[[], None]:
        def run() -> None:
            losses = torch.stack(model.task_losses(model.encoder(inputs), targets))
            task_jacobians(losses, shared, strategy=strategy, retain_graph=False)

        return run

    dibs = DiBSMTL()
    # the weight solve alone, on the Gramian of this model's real per-task gradients
    losses = torch.stack(model.task_losses(model.encoder(inputs), targets))
    rows = torch.cat([j.reshape(losses.shape[0], -1) for j in task_jacobians(losses, shared, retain_graph=False)], dim=1)
    gram, detached = rows @ rows.T, losses.detach()
    nash = NashMTL()
    variants = {
        "ls_step": step(LinearScalarization()),
        "dibsmtl_step": step(dibs),
        "mgda_step": step(MGDA()),
        "nashmtl_step": step(nash),
        "dibsmtl_weights": lambda: solve_weights(dibs, gram, detached),
        "mgda_weights": lambda: solve_weights(MGDA(), gram, detached),
        "nashmtl_weights": lambda: solve_weights(NashMTL(), gram, detached),
        "dibsmtl_weights_in_place": lambda: dibs(gram, detached),
        "mgda_weights_in_place": lambda: MGDA()(gram, detached),
        "jacobian_loop": jacobian("loop"),
        "jacobian_batched": jacobian("batched"),
    }
    variants |= nash_reference_variants(gram.detach().cpu().to(torch.float64), detached.cpu())
    for function in variants.values():  # warm-up
        function()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, function in variants.items():
            samples[name].append(_median_seconds(function, repeats, device))
    return {name: statistics.median(values) for name, values in samples.items()} | {
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
    return {"nashmtl_ccp_weights": lambda: reference.solve(gram.numpy()), "nashmtl_equal_residual_weights": lambda: ours(gram, losses)}


NASH_REFERENCE_RATIO = "reference CCP / nashmtl weight solve, equal residual"


def ratios(timings: dict[str, float]) -> dict[str, float | None]:
    """The side-by-side ratios reported in the table (None where a variant was not measured)."""
    return {
        "dibsmtl_step / ls_step": timings["dibsmtl_step"] / timings["ls_step"],
        "mgda_step / ls_step": timings["mgda_step"] / timings["ls_step"],
        "nashmtl_step / ls_step": timings["nashmtl_step"] / timings["ls_step"],
        "dibsmtl weight share of its step": timings["dibsmtl_weights"] / timings["dibsmtl_step"],
        "mgda weight share of its step": timings["mgda_weights"] / timings["mgda_step"],
        "nashmtl weight share of its step": timings["nashmtl_weights"] / timings["nashmtl_step"],
        NASH_REFERENCE_RATIO: (
            timings["nashmtl_ccp_weights"] / timings["nashmtl_equal_residual_weights"] if "nashmtl_ccp_weights" in timings else None
        ),
        "batched / looped per-task gradients": timings["jacobian_batched"] / timings["jacobian_loop"],
        # the engine solves on a CPU copy of the Gramian; this is the cost of solving where it lives
        "dibsmtl weights on the model's device / engine's": timings["dibsmtl_weights_in_place"] / timings["dibsmtl_weights"],
        "mgda weights on the model's device / engine's": timings["mgda_weights_in_place"] / timings["mgda_weights"],
    }


def markdown_table(results: dict[str, dict]) -> str:
    names = list(results)
    lines = ["| quantity | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    rows = [
        ("shared parameters", lambda r: f"{int(r['timings']['shared_parameters']):,}"),
        ("tasks K", lambda r: f"{int(r['timings']['num_tasks'])}"),
        ("LS step (ms)", lambda r: f"{1e3 * r['timings']['ls_step']:.2f}"),
        ("DiBS-MTL step (ms)", lambda r: f"{1e3 * r['timings']['dibsmtl_step']:.2f}"),
        ("MGDA step (ms)", lambda r: f"{1e3 * r['timings']['mgda_step']:.2f}"),
        ("Nash-MTL step (ms)", lambda r: f"{1e3 * r['timings']['nashmtl_step']:.2f}"),
    ] + [(key, (lambda k: lambda r: _ratio_cell(r["ratios"][k]))(key)) for key in next(iter(results.values()))["ratios"]]
    for label, cell in rows:
        lines.append(f"| {label} | " + " | ".join(cell(results[n]) for n in names) + " |")
    return "\n".join(lines)


def _ratio_cell(value: float | None) -> str:
    return "not measured (optional cvxpy: pip install -r requirements-bench.txt)" if value is None else f"{value:.3f}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per variant and round (median taken)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median of the round medians)")
    parser.add_argument("--batch-size", type=int, default=256, help="batch size of both models")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="1 repeat, 1 round, batch 16: checks that it runs")
    parser.add_argument("--device", default="cpu", help="torch device of the models (e.g. cuda); timings synchronise it")
    parser.add_argument("--out", type=Path, default=Path("results"), help="folder for the JSON result")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table to this markdown file")


def main(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats, rounds, batch = (1, 1, 16) if args.quick else (args.repeats, args.rounds, args.batch_size)
    torch.manual_seed(0)
    results = {}
    for name, model in {"LeNet, 2 tasks": LeNetTwoTask(), "MLP, 10 tasks": MLPTenTask()}.items():
        timings = measure_model(model, batch_size=batch, repeats=repeats, rounds=rounds, device=args.device)
        results[name] = {"timings": timings, "ratios": ratios(timings)}
    table = markdown_table(results)
    payload = {"experiment": "perf_engine", "config": {"repeats": repeats, "rounds": rounds, "batch_size": batch, "device": args.device}, "environment": environment(), "results": results, "table": table}
    path = write_json_atomic(args.out / "perf_engine.json", payload)
    if args.markdown is not None:
        machine = payload["environment"]
        write_markdown_table(
            args.markdown,
            "Engine performance",
            f"`python -m benchmarks perf` (batch {batch}, {repeats} repeats x {rounds} interleaved rounds, median; "
            f"device {args.device}; {machine['platform']}, torch {machine['torch']}, {machine['threads']} threads)",
            table,
        )
    print(table)
    print(f"\nwrote {path}")
    return 0
