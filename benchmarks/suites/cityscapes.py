"""Cityscapes with SegNet-MTAN: 7-class segmentation and (inverse) depth (spec dibs.md §6.1, §6.3;
random_weighting_baselines_metrics.md §5.1, §5.3, §5.5, §6.5).

Data: the MTAN release at 128 x 256 (`benchmarks.data.dense`, `label_7` and `depth`; depth is the
official disparity, i.e. inverse depth, 0 = invalid). Losses and metrics are NYUv2's
(`benchmarks.suites.nyuv2`): segmentation NLL ignoring -1 and masked L1 depth; mIoU and pixel
accuracy in percent, absolute and relative depth error as raw values averaged per batch then over
batches (Cranial-XIX/FAMO `experiments/cityscapes/{trainer,utils}.py`).

Units: the base relative error 27.77 is the raw mean of |p - g| / g, not a percentage: FAMO's
`BASE = [0.7401, 0.9316, 0.0125, 27.77]` compares it with the raw `depth_error` output (inverse
depths near 0 make it large). mIoU and pixel accuracy are in percent here (74.01, 93.16).

Protocol: Nash-MTL §6 / App. B "bs 8; otherwise as NYUv2" (spec random_weighting §5.3), which is
also FAMO's trainer default (batch 8, 200 epochs, augmentation on). DiBS-MTL HEAD uses batch 2 and
500 epochs instead (spec dibs.md §6.3); this suite follows Nash-MTL/FAMO.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from torch import Tensor, nn

from benchmarks.data.dense import CITYSCAPES_LAYOUT, DEPTH, SEGMENTATION, DenseDataset
from benchmarks.harness.suite import Suite, TrainingProtocol
from benchmarks.models.segnet import SEGNET_FILTERS, TaskHead, make_segnet
from benchmarks.suites.nyuv2 import (
    AUGMENTATION_SEED,
    DEPTH_METRICS,
    SEGMENTATION_METRICS,
    DenseMetricAccumulator,
    dense_datasets,
    dense_task_losses,
)

TASKS = (SEGMENTATION, DEPTH)
NUM_CLASSES = CITYSCAPES_LAYOUT.num_classes  # 7 (spec dibs.md §6.3, label_7)

HEADS = {SEGMENTATION: TaskHead(NUM_CLASSES, "log_softmax"), DEPTH: TaskHead(1, "identity")}

METRICS = SEGMENTATION_METRICS + DEPTH_METRICS
"""mIoU, pixel accuracy, absolute and relative error (spec dibs.md §6.3, σ = [1, 1, 0, 0])."""

BASE_VALUES = {"mean_iou": 74.01, "pixel_accuracy": 93.16, "abs_error": 0.0125, "rel_error": 27.77}
"""STL values from CAGrad, FAMO's `BASE` (spec random_weighting §5.5, dibs.md §6.3); mIoU and pixel
accuracy in percent, the depth errors raw (module docstring)."""
BASE_SOURCE = (
    "single-task SegNet from CAGrad, as `BASE` in FAMO experiments/cityscapes/utils.py "
    "(spec random_weighting_baselines_metrics.md §5.5; dibs.md §6.3)"
)

PROTOCOL = TrainingProtocol(
    epochs=200,  # spec random_weighting §5.3 ("otherwise as NYUv2"); FAMO trainer default
    batch_size=8,  # spec random_weighting §5.3
    lr=1e-4,  # Adam, spec §5.3
    optimizer="adam",
    scheduler="step",  # StepLR(100, 0.5), spec §5.3 and dibs.md §6.3
    step_size=100,
    gamma=0.5,
    selection="last_mean:10",  # spec §5.1
    method_lr=0.025,  # spec §5.3
)
AUGMENT_TRAIN = True
"""RandomScaleCrop + flip on the training split: FAMO's Cityscapes trainer default
(`--apply-augmentation True`), "otherwise as NYUv2" (spec random_weighting §5.3)."""

NOTES = {
    "test_split": "'test' and 'val' both read the release's val/ folder (500 images): the published protocols test on val",
    "units": "mean_iou and pixel_accuracy in percent; abs_error and rel_error raw (inverse depth; rel_error is not a percentage)",
    "averaging": "depth metrics: per-batch means over valid pixels, then the mean over batches (reference)",
    "protocol": "Nash-MTL/FAMO (batch 8, 200 epochs); DiBS-MTL HEAD used batch 2 and 500 epochs",
}


def task_losses(
    predictions: Mapping[str, Tensor], targets: Mapping[str, Tensor], /
) -> dict[str, Tensor]:
    """Cityscapes' two task losses (segmentation NLL ignoring -1, masked L1 depth)."""
    return dense_task_losses(predictions, targets, task_names=TASKS)


def make_accumulator() -> DenseMetricAccumulator:
    """Cityscapes' metric accumulator (four metrics)."""
    return DenseMetricAccumulator(TASKS, num_classes=NUM_CLASSES)


def datasets(root: str | Path | None, split: str, /) -> DenseDataset:
    """Cityscapes `split` ("train", or "val"/"test", both the release's val/)."""
    return dense_datasets(
        root, split, layout=CITYSCAPES_LAYOUT, augment_train=AUGMENT_TRAIN, seed=AUGMENTATION_SEED
    )


def make_model(
    *, architecture: Literal["mtan", "split"] = "mtan", filters: Sequence[int] = SEGNET_FILTERS
) -> nn.Module:
    """SegNet-MTAN (default) or the split SegNet, with Cityscapes' heads."""
    return make_segnet(HEADS, architecture=architecture, filters=filters)


CITYSCAPES = Suite(
    name="cityscapes",
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
