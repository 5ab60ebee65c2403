"""One training loop for every supervised benchmark suite and every method.

Per step: the model predicts every task, the suite's losses are computed, the run's loss
transform (if any) replaces one task's loss by `h(loss)`, and `core.mtl_backward` combines them
with the method into `.grad`; then the optimiser steps. Every method follows the lifecycle of
`core.methods.base`: learnable methods' `parameters()` (uncertainty weighting's log-variances)
join the optimiser with the method learning rate, `after_step` gets the losses recomputed on the
same batch after the step where the method says it needs them (`needs_post_step_losses`: FAMO),
and `end_epoch` closes each epoch (DWA). After each epoch the test split (and the validation split where the selection rule or the
scheduler needs it) is evaluated and a checkpoint is saved, so a killed run resumes at the last
finished epoch with the same data order, weights and random draws as an uninterrupted one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from benchmarks.harness.parallel import DataParallel
from benchmarks.harness.runs import Checkpoint, RunSpec
from benchmarks.harness.suite import MetricSpec, Suite, TrainingProtocol
from core.distributed import all_reduce_mean, transform_of_mean
from core.engine import mtl_backward
from core.errors import InvalidHyperparameterError, NonFiniteGradientError, NonFiniteLossError
from core.methods.base import Method
from core.metrics import delta_m
from core.registry import make_method
from core.transforms import MonotoneTransform
from toy_problems.task_transforms import parse_task_transform

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LossTransform:
    """`task:spec` (e.g. `left:exp`, `0:power:4`, `1:affine:1:1|log`) or `none`."""

    task_index: int | None
    transform: MonotoneTransform | None

    @classmethod
    def parse(cls, text: str, task_names: tuple[str, ...]) -> LossTransform:
        """`toy_problems.task_transforms.parse_task_transform` with the suite's task names."""
        parsed = parse_task_transform(text, task_names)
        return cls(None, None) if parsed is None else cls(parsed.task, parsed.transform)

    def __call__(self, losses: list[Tensor], group: Any | None = None) -> list[Tensor]:
        """The losses with the transform applied to one task; under data parallelism (`group`) to
        the whole batch's loss, not to this rank's shard loss (`core.distributed.transform_of_mean`)."""
        if self.transform is None:
            return losses
        if group is None:
            return [
                self.transform(loss) if i == self.task_index else loss
                for i, loss in enumerate(losses)
            ]
        return [
            transform_of_mean(self.transform, loss, group) if i == self.task_index else loss
            for i, loss in enumerate(losses)
        ]


def build_method(
    spec: str,
    num_tasks: int,
    *,
    device: torch.device,
    generator: torch.Generator,
    hyperparameters: Mapping[str, Any],
) -> Method:
    """A method from its spec with the run's generator (used by random methods) and its learnable
    parameters on the run's device."""
    return make_method(spec, num_tasks=num_tasks, generator=generator, **hyperparameters).to(
        device=device
    )


def _run_generator(seed: int, *salt: int) -> torch.Generator:
    value = seed
    for part in salt:
        value = value * 1_000_003 + part
    return torch.Generator().manual_seed(value % (2**63))


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, Mapping):
        return {key: _to_device(item, device) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(item, device) for item in value)
    if hasattr(value, "to"):
        return value.to(device)
    return value


def evaluate(
    suite: Suite, model: torch.nn.Module, loader, device: torch.device
) -> dict[str, float]:
    """The suite's metrics of `model` on every batch of `loader`."""
    accumulator = suite.make_accumulator()
    model.eval()
    with torch.no_grad():
        for inputs, targets in loader:
            accumulator.update(model(_to_device(inputs, device)), _to_device(targets, device))
    model.train()
    return {name: float(value) for name, value in accumulator.compute().items()}


def _make_optimizer(
    protocol: TrainingProtocol, model: torch.nn.Module, method: Method
) -> torch.optim.Optimizer:
    groups = [{"params": list(model.parameters())}]
    own = list(method.parameters())
    if own:
        groups.append({"params": own, "lr": protocol.method_lr, "weight_decay": 0.0})
    if protocol.optimizer == "adam":
        return torch.optim.Adam(groups, lr=protocol.lr, weight_decay=protocol.weight_decay)
    if protocol.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=protocol.lr, momentum=0.9, weight_decay=protocol.weight_decay
        )
    raise InvalidHyperparameterError(
        f"optimizer must be 'adam' or 'sgd', got {protocol.optimizer!r}"
    )


def _make_scheduler(protocol: TrainingProtocol, optimizer: torch.optim.Optimizer):
    if protocol.scheduler == "none":
        return None
    if protocol.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=protocol.step_size, gamma=protocol.gamma
        )
    if protocol.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="min",
            factor=protocol.gamma,
            patience=protocol.patience,
            min_lr=protocol.min_lr,
        )
    if protocol.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=protocol.epochs)
    raise InvalidHyperparameterError(
        f"scheduler must be none, step, plateau or cosine, got {protocol.scheduler!r}"
    )


def _suite_delta_m(
    suite: Suite, metrics: Mapping[str, float], tasks: Sequence[str]
) -> float | None:
    """Delta_m over the metrics of `tasks` against the suite's base values."""
    if suite.base_values is None:
        return None
    specs = _task_metrics(suite, tasks)
    return delta_m(
        [metrics[m.name] for m in specs],
        [suite.base_values[m.name] for m in specs],
        [m.higher_is_better for m in specs],
    )


def _task_metrics(suite: Suite, tasks: Sequence[str]) -> list[MetricSpec]:
    """The suite's metrics of `tasks`, in the suite's order."""
    return [m for m in suite.metrics if m.task in tasks]


def select_metrics(suite: Suite, history: list[dict[str, Any]], selection: str) -> dict[str, Any]:
    """The reported test metrics under the protocol's selection rule (see `TrainingProtocol`)."""
    if not history:
        raise ValueError("no finished epoch to select from")
    names = [m.name for m in suite.metrics]
    if selection == "last":
        return {"epoch": history[-1]["epoch"], "test": history[-1]["test"]}
    if selection.startswith("last_mean:"):
        window = history[-int(selection.split(":", 1)[1]) :]
        return {
            "epochs": [h["epoch"] for h in window],
            "test": {n: sum(h["test"][n] for h in window) / len(window) for n in names},
        }
    if selection == "best_val":
        scored = [(h["val_score"], i) for i, h in enumerate(history)]
        best = history[min(scored)[1]]
        return {"epoch": best["epoch"], "test": best["test"], "val": best["val"]}
    raise InvalidHyperparameterError(
        f"selection must be last, last_mean:N or best_val, got {selection!r}"
    )


def _validation_score(suite: Suite, metrics: Mapping[str, float], tasks: Sequence[str]) -> float:
    """Delta_m over the trained `tasks`' metrics against the base values where the suite has them
    (a single-task run is scheduled and selected on its own task, not on the untrained heads of
    the others); else the flat mean of the metrics' relative changes against the first epoch
    cannot be formed, so lower-is-better sum."""
    score = _suite_delta_m(suite, metrics, tasks)
    if score is not None:
        return score
    return sum(
        (-metrics[m.name] if m.higher_is_better else metrics[m.name])
        for m in _task_metrics(suite, tasks)
    )


def train_run(
    suite: Suite,
    spec: RunSpec,
    checkpoint: Checkpoint,
    /,
    *,
    protocol: TrainingProtocol,
    data_root: str | None,
    device: torch.device,
    max_batches: int | None = None,
    representation: bool = False,
    method_name: str | None = None,
    method_hyperparameters: Mapping[str, Any] | None = None,
    show_progress: bool = False,
    data_parallel: DataParallel | None = None,
) -> dict[str, Any]:
    """Train a method on `suite` with `protocol`; return the run's JSON-ready result.

    The method is `method_name` (default `spec.method`) from the registry, with
    `method_hyperparameters`; `"stl:TASK"` trains the single-task baseline of TASK (its loss
    alone, through the shared layers and its own head). `max_batches` caps the training batches
    per epoch (quick mode). A non-finite loss or gradient ends the run as "diverged" with the
    epochs finished so far, instead of failing the sweep. With `data_parallel`, this process
    trains on its slice of every batch (`benchmarks.harness.parallel`) and only rank 0 saves
    checkpoints; every rank evaluates the same model on the whole evaluation sets.
    """
    name = method_name or spec.method
    task_names = _trained_tasks(suite, name)
    transform = LossTransform.parse(spec.transform, task_names)
    train_set, test_set = suite.datasets(data_root, "train"), suite.datasets(data_root, "test")
    needs_val = protocol.selection == "best_val" or protocol.scheduler == "plateau"
    val_set = suite.datasets(data_root, "val") if needs_val else None
    loader_kwargs = {"batch_size": protocol.batch_size, "collate_fn": suite.collate}
    test_loader = torch.utils.data.DataLoader(test_set, shuffle=False, **loader_kwargs)
    val_loader = (
        torch.utils.data.DataLoader(val_set, shuffle=False, **loader_kwargs)
        if val_set is not None
        else None
    )

    state = checkpoint.load()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = suite.make_model().to(device)
    method_key = "ls" if name.startswith("stl:") else name
    method = build_method(
        method_key,
        len(task_names),
        device=device,
        generator=_run_generator(spec.seed, 1),
        hyperparameters=method_hyperparameters or {},
    )
    history: list[dict[str, Any]] = []
    if state is not None:
        model.load_state_dict(state["model"])
        method.load_state_dict(state["method"])
        history = state["history"]
    optimizer = _make_optimizer(protocol, model, method)
    scheduler = _make_scheduler(protocol, optimizer)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
    if representation and not hasattr(model, "encode"):
        raise InvalidHyperparameterError(
            f"{suite.name}'s model has no single shared representation (no encode/decode): run without --representation"
        )
    shared = model.shared_parameters()
    heads = [model.task_parameters()[name] for name in task_names]
    diverged: str | None = state.get("diverged") if state else None

    for epoch in range(len(history), protocol.epochs):
        if diverged:
            break
        began = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(
                spec.seed * 100_003 + epoch
            )  # dropout and global-RNG draws, per epoch
            if hasattr(train_set, "reseed"):  # datasets that augment with their own generator
                train_set.reseed(spec.seed * 100_003 + epoch)
            loader = torch.utils.data.DataLoader(
                train_set,
                shuffle=True,
                generator=_run_generator(spec.seed, 2, epoch),
                **loader_kwargs,
            )
            try:
                train_log = _train_epoch(
                    model,
                    loader,
                    suite,
                    task_names,
                    method,
                    optimizer,
                    shared,
                    heads,
                    transform,
                    protocol,
                    device,
                    max_batches,
                    representation,
                    show_progress,
                    f"{name} epoch {epoch + 1}",
                    data_parallel,
                )
            except (NonFiniteLossError, NonFiniteGradientError) as error:
                diverged = f"epoch {epoch + 1}: {error}"
                logger.warning("run %s diverged at %s", spec.run_id, diverged)
                break
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            **train_log,
            "lr": optimizer.param_groups[0]["lr"],
        }
        record["test"] = evaluate(suite, model, test_loader, device)
        if val_loader is not None:
            record["val"] = evaluate(suite, model, val_loader, device)
            record["val_score"] = _validation_score(suite, record["val"], task_names)
        if scheduler is not None:
            scheduler.step(
                record["val_score"]
            ) if protocol.scheduler == "plateau" else scheduler.step()
        method.end_epoch()
        record["seconds"] = time.perf_counter() - began
        history.append(record)
        if data_parallel is None or data_parallel.leader:
            checkpoint.save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler else None,
                    "method": method.state_dict(),
                    "history": history,
                    "diverged": None,
                }
            )

    result: dict[str, Any] = {
        "history": history,
        "protocol": asdict(protocol),
        "status": "diverged" if diverged else "finished",
    }
    if diverged:
        result["diverged"] = diverged
    if history and not diverged:
        selected = select_metrics(suite, history, protocol.selection)
        selected["delta_m"] = _suite_delta_m(suite, selected["test"], task_names)
        result["selected"] = selected
    return result


def _trained_tasks(suite: Suite, method_name: str) -> tuple[str, ...]:
    if not method_name.startswith("stl:"):
        return suite.task_names
    task = method_name.split(":", 1)[1]
    if task not in suite.task_names:
        raise InvalidHyperparameterError(
            f"single-task run {method_name!r}: {suite.name} has tasks {list(suite.task_names)}"
        )
    return (task,)


def _train_epoch(
    model,
    loader,
    suite,
    task_names,
    method,
    optimizer,
    shared,
    heads,
    transform,
    protocol,
    device,
    max_batches,
    representation,
    show_progress,
    label,
    data_parallel=None,
) -> dict[str, Any]:
    single_task = len(task_names) < len(suite.task_names)
    losses_sum = torch.zeros(len(task_names), dtype=torch.float64)
    weights_sum = torch.zeros(len(task_names), dtype=torch.float64)
    steps = 0
    total = len(loader) if max_batches is None else min(max_batches, len(loader))
    for inputs, targets in tqdm(
        loader, total=total, desc=label, leave=False, disable=not show_progress
    ):
        if steps == total:
            break
        inputs, targets = _to_device(inputs, device), _to_device(targets, device)
        share = 1.0
        if data_parallel is not None:
            (inputs, targets), share = data_parallel.shard((inputs, targets))
        features = None
        if representation:  # loss weightings ignore it: their gradient is the same either way
            features = model.encode(inputs)
            predictions = model.decode(features)
        else:
            predictions = model(inputs)
        loss_map = suite.task_losses(predictions, targets)
        raw = [
            loss_map[name] * share if share != 1.0 else loss_map[name] for name in task_names
        ]  # mean over ranks = whole batch
        optimizer.zero_grad(set_to_none=True)
        group = data_parallel.group if data_parallel is not None else None
        if single_task:  # a plain backward: parts of the shared model the task never uses (other tasks' attention) get no gradient
            loss = transform(raw, group)[0]
            seen = (
                loss.detach()
                if data_parallel is None
                else all_reduce_mean(loss, data_parallel.group)
            )  # every rank agrees
            if not bool(torch.isfinite(seen)):
                raise NonFiniteLossError(
                    f"task {task_names[0]!r} has a non-finite loss {float(seen)}"
                )
            loss.backward()
            if data_parallel is not None:
                data_parallel.mean_grads_(list(model.parameters()))
            weights = torch.ones(1)
        else:
            weights = mtl_backward(
                transform(raw, group),
                shared,
                method,
                task_params=heads,
                representation=features,
                process_group=group,
            ).weights
        if protocol.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(shared, protocol.max_grad_norm)
        optimizer.step()
        if method.needs_post_step_losses:  # the losses after the step, on the same batch
            with torch.no_grad():
                after = suite.task_losses(model(inputs), targets)
                after_raw = torch.stack([after[name] * share for name in task_names])
                if data_parallel is not None:  # the whole batch's losses, then the transform
                    after_raw = all_reduce_mean(after_raw, data_parallel.group)
                method.after_step(torch.stack(transform(list(after_raw))))
        batch_losses = torch.stack([loss.detach() for loss in raw])
        if data_parallel is not None:
            batch_losses = all_reduce_mean(batch_losses, data_parallel.group)
        losses_sum += batch_losses.double().cpu()
        weights_sum += weights.detach().double().cpu().reshape(-1)
        steps += 1
    return {
        "steps": steps,
        "train_loss": (losses_sum / max(steps, 1)).tolist(),
        "mean_weights": (weights_sum / max(steps, 1)).tolist(),
    }
