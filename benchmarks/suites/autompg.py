"""Auto MPG as a two-task problem: a second real multi-task dataset that an installed package ships.

The 392 cars of UCI Auto MPG that `mlxtend` ships (`mlxtend.data.autompg_data()`; no download).
Two tasks on the same inputs (cylinders, displacement, horsepower, weight, acceleration, model
year, standardised with training statistics): regress the fuel consumption `mpg` (MSE on the
standardised target; reported as MAE in mpg, lower is better) and classify the `origin` (USA,
Europe, Japan; cross-entropy; reported as accuracy in percent). Like the Census-Income tasks of
the continuous-Pareto paper, the tasks are measured attributes of the same record, and one is a
regression while the other is a classification, so their losses have different scales.

Split: a fixed seeded shuffle, 294 training and 98 test cars (no validation split). Model: MLP
6 -> 64 -> 64 (ReLU) shared, a linear head per task. Protocol (this project's, docs/DECISIONS.md):
Adam lr 1e-3, batch 32, 100 epochs, the last epoch reported.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

import torch
from torch import Tensor, nn

from benchmarks.data.errors import DatasetError
from benchmarks.harness.suite import MetricSpec, Suite, TrainingProtocol

TASKS = ("mpg", "origin")
FEATURES = ("cylinders", "displacement", "horsepower", "weight", "acceleration", "model_year")
TRAIN_SIZE = 294
SPLIT_SEED = 0
PROTOCOL = TrainingProtocol(epochs=100, batch_size=32, lr=1e-3)


@lru_cache(maxsize=1)
def _arrays() -> tuple[Tensor, Tensor, Tensor]:
    try:
        from mlxtend.data import autompg_data
    except ImportError as error:  # pragma: no cover - mlxtend is a requirement
        raise DatasetError(
            "the Auto MPG data ships with the mlxtend package: pip install -r requirements.txt"
        ) from error
    features, mpg = autompg_data()
    table = torch.as_tensor(features[:, :7].astype("float64"))
    if table.shape != (392, 7) or not bool(torch.isfinite(table).all()):
        raise DatasetError(
            f"mlxtend's Auto MPG table has shape {tuple(table.shape)} or non-finite values; expected 392 complete rows"
        )
    origin = table[:, 6].long() - 1  # 1 USA, 2 Europe, 3 Japan
    return table[:, :6], torch.as_tensor(mpg, dtype=torch.float64), origin


class AutoMPG(torch.utils.data.Dataset):
    """Items `(features [6], {"mpg": standardised mpg, "origin": class})`."""

    def __init__(self, split: str) -> None:
        if split not in ("train", "test", "val"):
            raise DatasetError(f"Auto MPG has splits train and test (val = test), got {split!r}")
        inputs, mpg, origin = _arrays()
        order = torch.randperm(inputs.shape[0], generator=torch.Generator().manual_seed(SPLIT_SEED))
        train, test = order[:TRAIN_SIZE], order[TRAIN_SIZE:]
        rows = train if split == "train" else test
        mean, std = inputs[train].mean(0), inputs[train].std(0)
        self.mpg_mean, self.mpg_std = float(mpg[train].mean()), float(mpg[train].std())
        self.inputs = ((inputs[rows] - mean) / std).float()
        self.mpg = ((mpg[rows] - self.mpg_mean) / self.mpg_std).float()
        self.origin = origin[rows]

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def __getitem__(self, index: int):
        return self.inputs[index], {"mpg": self.mpg[index], "origin": self.origin[index]}


class AutoMPGNet(nn.Module):
    """MLP 6 -> 64 -> 64 shared, heads Linear(64, 1) (mpg) and Linear(64, 3) (origin)."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(len(FEATURES), hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.heads = nn.ModuleDict({"mpg": nn.Linear(hidden, 1), "origin": nn.Linear(hidden, 3)})

    def encode(self, inputs: Tensor) -> Tensor:
        return self.encoder(inputs)

    def decode(self, features: Tensor) -> dict[str, Tensor]:
        return {"mpg": self.heads["mpg"](features)[:, 0], "origin": self.heads["origin"](features)}

    def forward(self, inputs: Tensor) -> dict[str, Tensor]:
        return self.decode(self.encode(inputs))

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())

    def task_parameters(self) -> dict[str, list[nn.Parameter]]:
        return {name: list(head.parameters()) for name, head in self.heads.items()}


def task_losses(
    predictions: Mapping[str, Tensor], targets: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    return {
        "mpg": nn.functional.mse_loss(predictions["mpg"], targets["mpg"]),
        "origin": nn.functional.cross_entropy(predictions["origin"], targets["origin"]),
    }


class AutoMPGAccumulator:
    """MAE of mpg in miles per gallon and origin accuracy in percent."""

    def __init__(self) -> None:
        reference = AutoMPG("train")
        self.scale = reference.mpg_std
        self.absolute_error, self.correct, self.count = 0.0, 0, 0

    def update(self, predictions: Mapping[str, Tensor], targets: Mapping[str, Tensor], /) -> None:
        self.absolute_error += float((predictions["mpg"] - targets["mpg"]).abs().sum()) * self.scale
        self.correct += int((predictions["origin"].argmax(-1) == targets["origin"]).sum())
        self.count += int(targets["mpg"].shape[0])

    def compute(self) -> dict[str, float]:
        return {
            "mpg_mae": self.absolute_error / max(self.count, 1),
            "origin_accuracy": 100.0 * self.correct / max(self.count, 1),
        }


AUTOMPG = Suite(
    name="autompg",
    task_names=TASKS,
    metrics=(MetricSpec("mpg_mae", "mpg", False), MetricSpec("origin_accuracy", "origin", True)),
    make_model=AutoMPGNet,
    task_losses=task_losses,
    make_accumulator=AutoMPGAccumulator,
    datasets=lambda root, split: AutoMPG(split),
    protocol=PROTOCOL,
)
