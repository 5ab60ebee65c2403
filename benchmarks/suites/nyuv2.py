"""NYUv2 with SegNet-MTAN: 13-class segmentation, depth and surface normals (spec dibs.md §6.1-6.2,
random_weighting_baselines_metrics.md §4.2, §5.1, §5.3, §5.5, §6.4).

This module also holds the dense losses and metrics of the MTAN / Nash-MTL / FAMO protocol, which
the Cityscapes suite reuses (AvivNavon/nash-mtl `experiments/nyuv2/{trainer,utils}.py`,
Cranial-XIX/FAMO `experiments/cityscapes/{trainer,utils}.py`).

Losses (spec dibs.md §6.2):
- segmentation: NLL of the log-softmax, mean over pixels whose label is not -1;
- depth: L1 averaged over valid pixels (ground truth != 0);
- normals: 1 - the mean dot product of prediction and ground truth over valid pixels
  (ground truth not all-zero).
"Valid" is the reference's mask: the ground truth's channels do not sum to 0.

Metrics, per evaluation pass (units: the papers' tables, spec §6.4; Delta_m is a ratio, so only
consistency with the base values matters):
- `mean_iou`, `pixel_accuracy`: percent, from one confusion matrix accumulated over the pass
  (pixels labelled -1 excluded);
- `abs_error`, `rel_error`: raw ratios/units (NYUv2 metres; Cityscapes inverse depth), mean over
  a batch's valid pixels, then the plain mean over batches, as the reference (`avg_cost += cost /
  test_batch`, so a smaller last batch weighs as much as a full one);
- `angle_mean`, `angle_median` (degrees) and `within_11.25`, `within_22.5`, `within_30` (percent of
  valid pixels with angle strictly below the threshold): per batch over its valid pixels, then the
  plain mean over batches, as the reference (the "median" is the mean of per-batch medians).

Deviations from the reference, each only where the reference returns NaN or fails:
- a class with no pixel in ground truth or prediction is left out of the mIoU mean (the reference's
  mean is then NaN); a batch with no valid depth/normal pixel is left out of the batch mean;
- a batch with no valid pixel gives segmentation and depth loss 0 and normal loss 1, all with zero
  gradient (the reference divides by zero);
- the segmentation loss is `cross_entropy`, which equals the reference's NLL on the model's
  log-probabilities (log-softmax is idempotent) and also accepts raw logits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.data.dense import (
    DEPTH,
    IGNORE_INDEX,
    NORMAL,
    NYUV2_LAYOUT,
    SEGMENTATION,
    DenseDataset,
    DenseLayout,
)
from benchmarks.data.errors import DatasetError
from benchmarks.harness.suite import MetricSpec, Suite, TrainingProtocol
from benchmarks.models.segnet import SEGNET_FILTERS, TaskHead, make_segnet
from core.errors import MTLInputError

TASKS = (SEGMENTATION, DEPTH, NORMAL)
NUM_CLASSES = NYUV2_LAYOUT.num_classes  # 13 (spec dibs.md §6.2)
ANGLE_THRESHOLDS = (11.25, 22.5, 30.0)
"""Degrees; the fraction of valid pixels with a smaller angular error is reported (spec dibs.md §6.2)."""

HEADS = {
    SEGMENTATION: TaskHead(NUM_CLASSES, "log_softmax"),
    DEPTH: TaskHead(1, "identity"),
    NORMAL: TaskHead(3, "unit_vector"),
}

SEGMENTATION_METRICS = (
    MetricSpec("mean_iou", SEGMENTATION, True),
    MetricSpec("pixel_accuracy", SEGMENTATION, True),
)
DEPTH_METRICS = (
    MetricSpec("abs_error", DEPTH, False),
    MetricSpec("rel_error", DEPTH, False),
)
NORMAL_METRICS = (
    MetricSpec("angle_mean", NORMAL, False),
    MetricSpec("angle_median", NORMAL, False),
    MetricSpec("within_11.25", NORMAL, True),
    MetricSpec("within_22.5", NORMAL, True),
    MetricSpec("within_30", NORMAL, True),
)
METRICS = SEGMENTATION_METRICS + DEPTH_METRICS + NORMAL_METRICS
"""In the order of the papers' tables and of `delta_fn` (spec dibs.md §6.2, σ = [1,1,0,0,0,0,1,1,1])."""

BASE_VALUES = {
    "mean_iou": 38.30,
    "pixel_accuracy": 63.76,
    "abs_error": 0.6754,
    "rel_error": 0.2780,
    "angle_mean": 25.01,
    "angle_median": 19.21,
    "within_11.25": 30.14,
    "within_22.5": 57.20,
    "within_30": 69.15,
}
"""STL SegNet values from CAGrad, the `BASE` of Nash-MTL/FAMO (spec random_weighting §5.5, dibs.md
§6.2 v1); percent where the tables print percent (the code stores those as fractions)."""
BASE_SOURCE = (
    "single-task SegNet from CAGrad, as `BASE` in nash-mtl/FAMO experiments/nyuv2/utils.py "
    "(spec random_weighting_baselines_metrics.md §5.5; dibs.md §6.2 v1)"
)

PROTOCOL = TrainingProtocol(
    epochs=200,  # spec random_weighting §5.3; dibs.md §6.2 v1 (HEAD: 500)
    batch_size=2,  # spec random_weighting §5.3; dibs.md §6.2
    lr=1e-4,  # Adam, spec §5.3
    optimizer="adam",
    scheduler="step",  # StepLR(100, 0.5): "halved at epoch 100", spec §5.3
    step_size=100,
    gamma=0.5,
    selection="last_mean:10",  # mean test metrics of the last 10 epochs, spec §5.1
    method_lr=0.025,  # learnable weighting parameters, spec §5.3
)
AUGMENT_TRAIN = True
"""RandomScaleCrop + flip on the training split (spec random_weighting §5.3 "augmentation on"; dibs.md §6.2)."""
AUGMENTATION_SEED = 0
"""Initial seed of the training split's augmentation generator; reseed with `DenseDataset.reseed`."""

NOTES = {
    "test_split": "'test' and 'val' both read the release's val/ folder (654 images): the published protocols test on val",
    "units": "mean_iou, pixel_accuracy, within_* in percent; angles in degrees; abs_error in metres; rel_error a ratio",
    "averaging": "depth and normal metrics: per-batch means over valid pixels, then the mean over batches (reference)",
    "clipping": "no gradient clipping in the protocol; Nash-MTL's max_norm 1.0 belongs to that method's settings",
}


# ---------------------------------------------------------------- losses (shared with Cityscapes)


def valid_mask(target: Tensor, /) -> Tensor:
    """`[B, 1, H, W]` bool: pixels whose ground-truth channels do not sum to 0 (the reference's mask)."""
    return target.sum(dim=1, keepdim=True) != 0


def segmentation_loss(prediction: Tensor, target: Tensor, /) -> Tensor:
    """Mean cross-entropy over pixels labelled 0..C-1; `prediction` `[B, C, H, W]` log-probabilities
    (or logits), `target` `[B, H, W]` with -1 = ignore. 0 when every pixel is ignored."""
    total = F.cross_entropy(prediction, target, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (target != IGNORE_INDEX).sum().clamp_min(1)


def depth_loss(prediction: Tensor, target: Tensor, /) -> Tensor:
    """L1 error averaged over valid pixels (ground truth != 0); `[B, 1, H, W]` both."""
    mask = valid_mask(target)
    return ((prediction - target).abs() * mask).sum() / mask.sum().clamp_min(1)


def normal_loss(prediction: Tensor, target: Tensor, /) -> Tensor:
    """1 - the mean over valid pixels of the dot product of unit normals `[B, 3, H, W]`."""
    mask = valid_mask(target)
    return 1 - (prediction * target * mask).sum() / mask.sum().clamp_min(1)


LOSSES = {SEGMENTATION: segmentation_loss, DEPTH: depth_loss, NORMAL: normal_loss}


def dense_task_losses(
    predictions: Mapping[str, Tensor],
    targets: Mapping[str, Tensor],
    /,
    *,
    task_names: Sequence[str] = TASKS,
) -> dict[str, Tensor]:
    """`{task: scalar loss}` in `task_names` order."""
    return {task: LOSSES[task](predictions[task], targets[task]) for task in task_names}


def task_losses(
    predictions: Mapping[str, Tensor], targets: Mapping[str, Tensor], /
) -> dict[str, Tensor]:
    """NYUv2's three task losses."""
    return dense_task_losses(predictions, targets, task_names=TASKS)


# ---------------------------------------------------------------- metrics (shared with Cityscapes)


def confusion_matrix(predicted: Tensor, target: Tensor, /, *, num_classes: int) -> Tensor:
    """`[C, C]` int64 counts, rows the ground truth and columns the prediction, over pixels whose
    label is in 0..C-1 (labels -1 and out-of-range ones are skipped, as the reference's ConfMatrix)."""
    predicted, target = predicted.reshape(-1), target.reshape(-1).long()
    keep = (target >= 0) & (target < num_classes)
    codes = num_classes * target[keep] + predicted[keep].long()
    return torch.bincount(codes, minlength=num_classes**2).reshape(num_classes, num_classes)


def segmentation_scores(confusion: Tensor, /) -> tuple[float, float]:
    """(mIoU, pixel accuracy) in percent from a confusion matrix; classes absent from both ground
    truth and prediction are left out of the mIoU mean. NaN when the matrix is empty."""
    counts = confusion.double()
    diagonal = counts.diagonal()
    union = counts.sum(0) + counts.sum(1) - diagonal
    present = union > 0
    total = counts.sum()
    if total == 0:
        return float("nan"), float("nan")
    miou = (diagonal[present] / union[present]).mean()
    return 100.0 * float(miou), 100.0 * float(diagonal.sum() / total)


def depth_errors(prediction: Tensor, target: Tensor, /) -> tuple[Tensor, Tensor, Tensor]:
    """(mean absolute error, mean relative error |p - g| / g, number of valid pixels) over the valid
    pixels of one batch, as 0-d tensors (the means are 0 when nothing is valid)."""
    mask = valid_mask(target)
    count = mask.sum()
    error = (prediction - target).abs()
    safe_target = torch.where(mask, target, torch.ones_like(target))
    denominator = count.clamp_min(1).to(error.dtype)
    return (
        (error * mask).sum() / denominator,
        (error / safe_target * mask).sum() / denominator,
        count,
    )


def normal_angles(prediction: Tensor, target: Tensor, /) -> Tensor:
    """Angular errors in degrees `[N]` at the valid pixels: acos of the clamped dot product."""
    mask = valid_mask(target)[:, 0]
    cosine = (prediction * target).sum(dim=1).clamp(-1, 1)
    return torch.rad2deg(torch.acos(cosine[mask]))


def angle_statistics(
    angles: Tensor, /, *, thresholds: Sequence[float] = ANGLE_THRESHOLDS
) -> Tensor:
    """`[2 + len(thresholds)]`: mean, median (the midpoint of the two middle values for an even
    count, as `np.median`), and the percent of angles strictly below each threshold."""
    ordered = angles.double().sort().values
    n = ordered.numel()
    median = (ordered[(n - 1) // 2] + ordered[n // 2]) / 2
    within = [100.0 * (ordered < t).double().mean() for t in thresholds]
    return torch.stack([ordered.mean(), median, *within])


class DenseMetricAccumulator:
    """The dense metrics over an evaluation pass (module docstring); `compute()` returns them by
    name in the order of `metrics`."""

    def __init__(self, tasks: Sequence[str], /, *, num_classes: int) -> None:
        unknown = set(tasks) - set(LOSSES)
        if unknown:
            raise MTLInputError(
                f"unknown dense tasks {sorted(unknown)}; expected a subset of {list(LOSSES)}"
            )
        self.tasks = tuple(tasks)
        self.num_classes = num_classes
        self.metrics = tuple(
            spec
            for task, specs in (
                (SEGMENTATION, SEGMENTATION_METRICS),
                (DEPTH, DEPTH_METRICS),
                (NORMAL, NORMAL_METRICS),
            )
            if task in self.tasks
            for spec in specs
        )
        self.confusion: Tensor | None = None
        self.depth_sum = torch.zeros(2, dtype=torch.float64)
        self.depth_batches = torch.zeros((), dtype=torch.float64)
        self.normal_sum = torch.zeros(2 + len(ANGLE_THRESHOLDS), dtype=torch.float64)
        self.normal_batches = 0

    def update(self, predictions: Mapping[str, Tensor], targets: Mapping[str, Tensor], /) -> None:
        with torch.no_grad():
            if SEGMENTATION in self.tasks:
                batch = confusion_matrix(
                    predictions[SEGMENTATION].argmax(dim=1),
                    targets[SEGMENTATION],
                    num_classes=self.num_classes,
                )
                self.confusion = batch if self.confusion is None else self.confusion + batch
            if DEPTH in self.tasks:
                absolute, relative, count = depth_errors(predictions[DEPTH], targets[DEPTH])
                seen = (count > 0).double()
                self.depth_sum = (
                    self.depth_sum.to(absolute.device)
                    + torch.stack([absolute, relative]).double() * seen
                )
                self.depth_batches = self.depth_batches.to(absolute.device) + seen
            if NORMAL in self.tasks:
                angles = normal_angles(predictions[NORMAL], targets[NORMAL])
                if angles.numel() > 0:
                    self.normal_sum = self.normal_sum.to(angles.device) + angle_statistics(angles)
                    self.normal_batches += 1

    def compute(self) -> dict[str, float]:
        values: dict[str, float] = {}
        if SEGMENTATION in self.tasks:
            confusion = (
                self.confusion
                if self.confusion is not None
                else torch.zeros(self.num_classes, self.num_classes)
            )
            values["mean_iou"], values["pixel_accuracy"] = segmentation_scores(confusion)
        if DEPTH in self.tasks:
            batches = float(self.depth_batches)
            means = (self.depth_sum / batches).tolist() if batches else [float("nan")] * 2
            values["abs_error"], values["rel_error"] = means
        if NORMAL in self.tasks:
            means = (
                (self.normal_sum / self.normal_batches).tolist()
                if self.normal_batches
                else [float("nan")] * 5
            )
            for spec, value in zip(NORMAL_METRICS, means):
                values[spec.name] = value
        return {spec.name: values[spec.name] for spec in self.metrics}


def make_accumulator() -> DenseMetricAccumulator:
    """NYUv2's metric accumulator (all nine metrics)."""
    return DenseMetricAccumulator(TASKS, num_classes=NUM_CLASSES)


# ---------------------------------------------------------------- data and model


def dense_datasets(
    root: str | Path | None,
    split: str,
    /,
    *,
    layout: DenseLayout,
    augment_train: bool,
    seed: int = AUGMENTATION_SEED,
) -> DenseDataset:
    """`split` of a dense release at `root` (augmented when it is the training split and `augment_train`)."""
    if root is None:
        raise DatasetError(
            f"{layout.name} has no embedded copy: pass the folder of the preprocessed release (expected "
            f"<root>/train/image/0.npy), or write a tiny one with benchmarks.data.dense.write_fixture"
        )
    augment = augment_train and split == "train"
    return DenseDataset(
        root, split, layout=layout, augment=augment, generator=torch.Generator().manual_seed(seed)
    )


def datasets(root: str | Path | None, split: str, /) -> DenseDataset:
    """NYUv2 `split` ("train", or "val"/"test", both the release's val/)."""
    return dense_datasets(root, split, layout=NYUV2_LAYOUT, augment_train=AUGMENT_TRAIN)


def make_model(
    *, architecture: Literal["mtan", "split"] = "mtan", filters: Sequence[int] = SEGNET_FILTERS
) -> nn.Module:
    """SegNet-MTAN (default, as Nash-MTL/FAMO/DiBS-MTL v1) or the split SegNet, with NYUv2's heads."""
    return make_segnet(HEADS, architecture=architecture, filters=filters)


NYUV2 = Suite(
    name="nyuv2",
    task_names=TASKS,
    metrics=METRICS,
    make_model=make_model,
    task_losses=task_losses,
    make_accumulator=make_accumulator,
    datasets=datasets,
    protocol=PROTOCOL,
    base_values=BASE_VALUES,
    base_source=BASE_SOURCE,
    notes=NOTES,
)
