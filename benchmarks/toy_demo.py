"""Demo: task balancing on the two-task toy, nominal and with task 1's loss transformed.

Every method runs from the five starting points of the DiBS-MTL paper on the nominal losses and
on `(h(f1), f2)` with the strictly increasing `h(t) = sign(t) t^4` (the reference toy's
transform), all ten runs as one batched computation. The table shows where each run ends in the
untransformed loss space, how far that is from the Pareto front, and how far the transformed
run's endpoint is from the nominal one: zero for a transformation-invariant method.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from benchmarks.store import environment, write_json_atomic
from core.errors import InvalidHyperparameterError
from core.registry import available_methods, make_method
from core.transforms import MonotoneTransform, parse_transform
from toy_problems import TwoTaskToy
from toy_problems.runner import run_toy

logger = logging.getLogger(__name__)

DEFAULT_METHODS = ("ls", "mgda", "dibsmtl", "dibsmtl_multi_step")


def transformed_objectives(problem: TwoTaskToy, transform: MonotoneTransform):
    """Objectives on `x [2, ..., 2]`: row 0 nominal, row 1 with `transform` applied to task 1."""

    def objectives(x: Tensor) -> Tensor:
        values = problem(x)
        first = torch.stack([values[0, ..., 0], transform(values[1, ..., 0])])
        return torch.stack([first, values[..., 1]], dim=-1)

    return objectives


def distance_to_front(losses: Tensor, front: Tensor) -> Tensor:
    """Euclidean distance in loss space from each point `[..., 2]` to a sampled front `[m, 2]`."""
    return torch.cdist(losses.reshape(-1, 2).double(), front).amin(dim=-1).reshape(losses.shape[:-1])


def run_demo(
    *,
    methods: list[str],
    num_steps: int,
    transform: str = "power:4",
    lr: float = 1e-3,
    dtype: torch.dtype = torch.float64,
    device: str = "cpu",
    show_progress: bool = True,
    finished: dict | None = None,
    on_method_done=None,
) -> dict:
    """Run every method on the nominal and transformed toy; return a JSON-ready result.

    `finished` holds results of methods already run with the same settings (they are reused, so
    an interrupted run resumes); `on_method_done(partial_result)` is called after each method.
    """
    problem = TwoTaskToy()
    transform_fn = parse_transform(transform)
    starts = problem.default_starts(dtype=dtype, device=device)
    batch = torch.stack([starts, starts])  # [version, start, 2]
    objectives = transformed_objectives(problem, transform_fn)
    front = problem.pareto_front(2000)
    config = {"methods": methods, "num_steps": num_steps, "transform": transform, "lr": lr, "dtype": str(dtype), "starts": problem.default_starts(dtype=torch.float64).tolist()}
    results = {name: finished[name] for name in methods if finished and name in finished}
    for name in methods:
        if name in results:
            continue
        method = make_method(name, num_tasks=2)
        began = time.perf_counter()
        with tqdm(total=num_steps, desc=name, disable=not show_progress, leave=False) as bar:
            trajectory = run_toy(
                objectives, batch, method, num_steps=num_steps, lr=lr, record_every=max(1, num_steps), progress=lambda _: bar.update()
            )
        endpoints = trajectory.points[-1].cpu()
        nominal_losses = problem(endpoints.double())  # untransformed losses of both versions
        results[name] = {
            "seconds": time.perf_counter() - began,
            "endpoints": endpoints.tolist(),
            "untransformed_losses": nominal_losses.tolist(),
            "distance_to_front": distance_to_front(nominal_losses, front).tolist(),
            "endpoint_gap": torch.linalg.vector_norm(endpoints[0] - endpoints[1], dim=-1).tolist(),
        }
        if on_method_done is not None:
            on_method_done(_payload(config, results, complete=False))
    kept = {name: data for name, data in (finished or {}).items() if name not in results}  # nothing is dropped
    return _payload(config, results | kept, complete=True)


def _payload(config: dict, results: dict, *, complete: bool) -> dict:
    return {"experiment": "toy_demo", "config": config, "environment": environment(), "results": results, "complete": complete}


RESUME_KEYS = ("num_steps", "transform", "lr", "dtype")
"""A saved result is reused only if these settings match (methods may differ)."""


def load_finished(path: Path, config: dict) -> dict:
    """Per-method results of an earlier run at `path` with the same settings, else {}."""
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as error:
        logger.warning("ignoring unreadable earlier result %s (%s)", path, error)
        return {}
    if saved.get("experiment") != "toy_demo" or any(saved.get("config", {}).get(k) != config[k] for k in RESUME_KEYS):
        return {}
    return dict(saved.get("results", {}))


def format_table(result: dict) -> str:
    """A plain-text table: one row per method and start."""
    header = f"{'method':<20} {'start':>13} | {'nominal end (x1, x2)':>21} {'dist':>7} | {'transformed end':>21} {'dist':>7} | {'gap':>8}"
    lines = [header, "-" * len(header)]
    starts = result["config"]["starts"]
    for name in result["config"]["methods"]:
        data = result["results"][name]
        for j, start in enumerate(starts):
            nominal, transformed = data["endpoints"][0][j], data["endpoints"][1][j]
            lines.append(
                f"{name:<20} {f'({start[0]:g}, {start[1]:g})':>13} | "
                f"{f'({nominal[0]:.3f}, {nominal[1]:.3f})':>21} {data['distance_to_front'][0][j]:7.3f} | "
                f"{f'({transformed[0]:.3f}, {transformed[1]:.3f})':>21} {data['distance_to_front'][1][j]:7.3f} | "
                f"{data['endpoint_gap'][j]:8.2e}"
            )
    lines.append("dist: distance of the endpoint's untransformed losses to the Pareto front; gap: |x_nominal - x_transformed|.")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"comma-separated method names, from: {', '.join(available_methods())}")
    parser.add_argument("--steps", type=int, default=35_000, help="Adam steps per run (the paper uses 35,000)")
    parser.add_argument("--quick", action="store_true", help="3,000 steps instead of --steps, for a fast look")
    parser.add_argument("--transform", default="power:4", help="transform of task 1's loss (default sign(t)|t|^4, the reference toy's)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (paper: 1e-3)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float64", help="floating dtype of the runs (float32, as the reference, lets Adam amplify rounding along the Pareto set)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    parser.add_argument("--out", type=Path, default=Path("results"), help="folder for the JSON result")
    parser.add_argument("--fresh", action="store_true", help="rerun every method instead of reusing the finished ones of an earlier run with the same settings")


def main(args: argparse.Namespace) -> int:
    methods = [m for m in args.methods.split(",") if m]
    for name in methods:
        if not make_method(name, num_tasks=2).batch_independent:  # fails early, listing the valid names
            raise InvalidHyperparameterError(f"{name} keeps per-task state, which the batched toy runs cannot share; choose another method")
    parse_transform(args.transform)  # likewise, before any run
    num_steps = 3_000 if args.quick else args.steps
    if num_steps < 1 or not methods:
        raise InvalidHyperparameterError(f"--steps must be at least 1 (got {num_steps}) and --methods must name a method")
    dtype = getattr(torch, args.dtype)
    path = args.out / "toy_demo.json"
    settings = {"num_steps": num_steps, "transform": args.transform, "lr": args.lr, "dtype": str(dtype)}
    finished = {} if args.fresh else load_finished(path, settings)
    reused = [name for name in methods if name in finished]
    if reused:
        print(f"reusing finished runs of {', '.join(reused)} from {path} (--fresh reruns them)")
    result = run_demo(
        methods=methods, num_steps=num_steps, transform=args.transform, lr=args.lr, dtype=dtype, device=args.device,
        finished=finished, on_method_done=lambda partial: write_json_atomic(path, partial),
    )
    write_json_atomic(path, result)
    print(format_table(result))
    print(f"\nwrote {path}")
    return 0
