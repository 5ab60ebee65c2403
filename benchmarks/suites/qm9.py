"""QM9 with the Gilmer MPNN: 11 molecular property regressions (spec dibs.md §6.1, §6.4;
random_weighting_baselines_metrics.md §4, §5.1, §5.3-§5.5, §6.6).

Data: PyTorch Geometric's QM9 under the user's root (`benchmarks.data.qm9`: `processed/data_v3.pt`
read without torch_geometric; no embedded default, nothing is downloaded), or (`source="qm9pack"`,
`QM9PACK`, `QM9PACK_SANITISED`) the QM9 that the package qm9pack installs, converted once to the
same layout and cached (`benchmarks.data.qm9pack`; the root is then the cache folder). Targets
[0, 1, 2, 3, 5, 6, 12, 13, 14, 15, 11] = mu, alpha, HOMO, LUMO, <R^2>, ZPVE, U0, U, H, G
(atomisation versions, PyG targets 12-15) and c_v; a seeded shuffle gives test (first 10k),
validation (next 10k) and train (the rest); targets are standardised with the training split's
mean and std (Nash-MTL App. B; see `benchmarks.data.qm9` for how the reference code differs).

Losses: per-task MSE on the standardised targets, the batch mean (Nash-MTL `trainer.py`:
`F.mse_loss(out, y, reduction="none").mean(0)`).

Metrics: per-task MAE in the targets' original units (|prediction - target| in standardised
units times the std), energies HOMO, LUMO, ZPVE, U0, U, H, G (positions [2, 3, 5, 6, 7, 8, 9])
times 1000, i.e. in meV; all lower is better. Units: mu D, alpha a0^3, <R^2> a0^2,
c_v cal/(mol K), the others meV. Delta_m uses the STL values of Nash-MTL/FAMO `BASE`.

Protocol (Nash-MTL / FAMO / DiBS-MTL HEAD): Adam lr 1e-3, batch 120, 300 epochs,
ReduceLROnPlateau(factor 0.7, patience 5, min_lr 1e-5) on validation Delta_m, test metrics at the
epoch with the best validation Delta_m; learnable weighting parameters lr 0.025.

The MAE needs the training split's std, which is only known once the data is read: the suite's
`make_accumulator()` uses the statistics of the last `datasets(root, split)` call (the training
loop reads the datasets first), and raises a clear error before any.

CPU scale (`CPU_PRESET`, `python -m benchmarks qm9 --data-source qm9pack --preset cpu`): still all
11 tasks of real QM9 with the same split, losses, metrics, optimiser and selection rule, but a
subset of molecules (the first 6,000 of the training split's shuffled order, the first 1,000 of
the validation and of the test split, so every preset molecule sits in the split the full
protocol gives it; targets standardised with the training subset's statistics), an MPNN of
hidden width 16 instead of 64 (edge network 5 -> 128 -> 16 x 16; 39,803 parameters instead of
617,675), 10 epochs instead of 300, and per-task gradients on the shared features (MTL-R) for the
gradient weightings. Sized by measured step times to train LS, SI-LS, RLW, UW, FAMO, MGDA, PCGrad,
CAGrad, IMTL-G, Nash-MTL and DiBS-MTL (1 and 5 steps) x 3 seeds x {nominal, mu's loss squared}
plus the 33 single-task runs in about 3.3 hours on 2 cores with `--workers 2` (docs/DECISIONS.md,
"QM9 at CPU scale"). Its numbers are not comparable with the published tables (an 18x smaller
training set, a 4x narrower network, 30x fewer epochs, MTL-R gradients).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor
from torch.nn import functional as F

from benchmarks.data.qm9 import (
    TARGET_COLUMNS,
    TEST_SIZE,
    VAL_SIZE,
    QM9Split,
    QM9Splits,
    collate,
    load_qm9,
    qm9_splits,
    split_indices,
    target_statistics,
)
from benchmarks.data.qm9pack import FEATURE_LAYOUTS, FeatureLayout, load_qm9pack
from benchmarks.harness.suite import MetricSpec, Suite, TrainingProtocol
from benchmarks.models.mpnn import MPNN
from core.errors import MTLInputError

TASKS = ("mu", "alpha", "homo", "lumo", "r2", "zpve", "u0", "u", "h", "g", "cv")
"""The 11 tasks in the order of `TARGET_COLUMNS` (PyG targets 0, 1, 2, 3, 5, 6, 12, 13, 14, 15, 11)."""
MEV_TASKS = ("homo", "lumo", "zpve", "u0", "u", "h", "g")
"""Targets reported in meV (eV x 1000): positions [2, 3, 5, 6, 7, 8, 9] (spec dibs.md §6.4)."""
UNITS = {"mu": "D", "alpha": "a0^3", "r2": "a0^2", "cv": "cal/(mol K)"} | {
    task: "meV" for task in MEV_TASKS
}

METRICS = tuple(MetricSpec(f"{task}_mae", task, higher_is_better=False) for task in TASKS)
"""Per-task MAE in original units (meV for the energies), all lower is better."""

BASE_VALUES = dict(
    zip(
        (m.name for m in METRICS),
        (0.0671, 0.1814, 60.576, 53.915, 0.5027, 4.539, 58.838, 64.244, 63.852, 66.223, 0.07212),
    )
)
BASE_SOURCE = (
    "single-task (STL) MPNN, `BASE` in AvivNavon/nash-mtl and Cranial-XIX/FAMO "
    "experiments/quantum_chemistry/utils.py (spec random_weighting_baselines_metrics.md §5.5, "
    "dibs.md §6.4); the STL row of Nash-MTL Table 6 (spec §6.6) rounds these"
)

PROTOCOL = TrainingProtocol(
    epochs=300,  # spec dibs.md §6.4, random_weighting §5.3
    batch_size=120,
    lr=1e-3,  # Adam; Nash-MTL's default of {1e-3, 5e-4, 1e-4}
    optimizer="adam",
    scheduler="plateau",  # ReduceLROnPlateau on validation Delta_m
    gamma=0.7,
    patience=5,
    min_lr=1e-5,
    selection="best_val",  # spec random_weighting §5.1
    method_lr=0.025,  # spec random_weighting §5.3
)
SPLIT_SEED = 1
"""The seed of the split shuffle (the reference runs seed 1, spec dibs.md §6.4; its permutation
comes from the global RNG and is not reproduced, see `benchmarks.data.qm9`)."""

NOTES = {
    "data": "PyG QM9 root with processed/data_v3.pt (or raw/qm9_v3.pt), read without torch_geometric",
    "split": f"seeded torch.randperm (seed {SPLIT_SEED}): test first 10k, val next 10k, train the rest",
    "normalisation": "targets standardised with the training split's mean and unbiased std (the reference code's statistics are whole-dataset ones: normalisation='all')",
    "graph": "complete graph without self loops, edge features = bond one-hot (4) + distance in Angstrom (norm=False): 5",
    "units": "MAE in original units: mu D, alpha a0^3, r2 a0^2, cv cal/(mol K), energies meV",
    "model": "Gilmer MPNN: NNConv(mean) + GRU x3, Set2Set(3), Linear(128->64), 11 linear heads; 617,675 parameters",
}


class QM9MeanAbsoluteError:
    """Per-task MAE over an evaluation pass, in original units: `sum |p - t| * std / count`,
    times 1000 for `MEV_TASKS` (Nash-MTL `trainer.py::evaluate`). Predictions and targets are
    standardised `{task: [B]}`; `std` [T] holds the standardisation std per task."""

    def __init__(
        self,
        std: Tensor | Sequence[float],
        /,
        *,
        task_names: Sequence[str] = TASKS,
        mev_tasks: Sequence[str] = MEV_TASKS,
    ) -> None:
        std = torch.as_tensor(std, dtype=torch.float64).reshape(-1)
        if std.numel() != len(task_names):
            raise MTLInputError(f"{std.numel()} standard deviations for {len(task_names)} tasks")
        self.task_names = tuple(task_names)
        self.scale = std * torch.tensor(
            [1000.0 if name in mev_tasks else 1.0 for name in self.task_names], dtype=torch.float64
        )
        self._sums: Tensor | None = None
        self._count = 0

    def update(self, predictions: Mapping[str, Tensor], targets: Mapping[str, Tensor], /) -> None:
        errors = torch.stack(
            [
                (
                    predictions[name].detach().reshape(-1).double()
                    - targets[name].detach().reshape(-1).double()
                )
                .abs()
                .sum()
                for name in self.task_names
            ]
        )
        self._sums = errors if self._sums is None else self._sums + errors
        self._count += targets[self.task_names[0]].numel()

    def compute(self) -> dict[str, float]:
        if self._sums is None or self._count == 0:
            raise MTLInputError("QM9MeanAbsoluteError.compute() before any update")
        values = (self._sums.cpu() / self._count * self.scale).tolist()
        return {f"{name}_mae": value for name, value in zip(self.task_names, values)}


def task_losses(
    predictions: Mapping[str, Tensor], targets: Mapping[str, Tensor], /
) -> dict[str, Tensor]:
    """Per-task MSE (batch mean) on the standardised targets, in `TASKS` order."""
    return {
        name: F.mse_loss(
            predictions[name].reshape(-1), targets[name].reshape(-1).to(predictions[name].dtype)
        )
        for name in TASKS
    }


QM9Source = Literal["pyg", "qm9pack"]
SOURCES = ("pyg", "qm9pack")
"""Where the molecules come from: PyG's files under the root, or qm9pack (root: cache folder)."""


class QM9Data:
    """Reads and splits QM9 for the suite and keeps the statistics of the last read, which the
    MAE accumulator needs (module docstring). `source` "qm9pack" reads `load_qm9pack(root,
    layout=layout, limit=limit)` instead of PyG's files."""

    def __init__(
        self,
        *,
        split_seed: int = SPLIT_SEED,
        test_size: int = TEST_SIZE,
        val_size: int = VAL_SIZE,
        normalisation: Literal["train", "all"] = "train",
        source: QM9Source = "pyg",
        layout: FeatureLayout = "pyg",
        limit: int | None = None,
        subset: tuple[int, int, int] | None = None,
    ) -> None:
        if subset is not None and (
            len(subset) != 3 or min(subset) < 1 or subset[1] > val_size or subset[2] > test_size
        ):
            raise MTLInputError(
                f"subset must be (train, val, test) sizes of at least 1, val at most {val_size} and test at most {test_size}, got {subset!r}"
            )
        if source not in SOURCES:
            raise MTLInputError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
        if layout not in FEATURE_LAYOUTS or (
            source == "pyg" and (layout != "pyg" or limit is not None)
        ):
            raise MTLInputError(
                f"layout ({', '.join(FEATURE_LAYOUTS)}) and limit are options of source='qm9pack'; got source={source!r}, layout={layout!r}, limit={limit!r}"
            )
        self.split_seed, self.test_size, self.val_size, self.normalisation = (
            split_seed,
            test_size,
            val_size,
            normalisation,
        )
        self.source, self.layout, self.limit, self.subset = source, layout, limit, subset
        self.last: QM9Splits | None = None

    def splits(self, root: str | Path | None, /) -> QM9Splits:
        """The three splits of the QM9 under `root` (read once per file version, split once)."""
        molecules = (
            load_qm9(root)
            if self.source == "pyg"
            else load_qm9pack(root, layout=self.layout, limit=self.limit)
        )
        if self.last is None or self.last.train.molecules is not molecules:
            if self.subset is None:
                self.last = qm9_splits(
                    molecules,
                    task_names=TASKS,
                    seed=self.split_seed,
                    test_size=self.test_size,
                    val_size=self.val_size,
                    normalisation=self.normalisation,
                    target_columns=TARGET_COLUMNS,
                )
            else:
                self.last = self._subset_splits(molecules)
        return self.last

    def _subset_splits(self, molecules) -> QM9Splits:
        """The first `subset` = (train, val, test) molecules of each split of the full protocol's
        shuffle (`split_indices`), standardised with the training subset's statistics (or all
        molecules', `normalisation="all"`)."""
        train_size, val_size, test_size = self.subset
        parts = split_indices(
            len(molecules), seed=self.split_seed, test_size=self.test_size, val_size=self.val_size
        )
        if train_size > parts["train"].numel():
            raise MTLInputError(
                f"a training subset of {train_size} molecules, but the training split has {parts['train'].numel()}"
            )
        parts = {
            "train": parts["train"][:train_size],
            "val": parts["val"][:val_size],
            "test": parts["test"][:test_size],
        }
        columns = list(TARGET_COLUMNS)
        mean, std = target_statistics(
            molecules.y[:, columns]
            if self.normalisation == "all"
            else molecules.y[parts["train"]][:, columns]
        )
        made = {
            name: QM9Split(
                molecules, indices, task_names=TASKS, mean=mean, std=std, target_columns=columns
            )
            for name, indices in parts.items()
        }
        return QM9Splits(
            train=made["train"], val=made["val"], test=made["test"], mean=mean, std=std
        )

    def datasets(self, root: str | Path | None, split: str, /) -> QM9Split:
        """QM9 `split` ("train", "val" or "test") under `root`."""
        return self.splits(root)[split]

    def make_accumulator(self) -> QM9MeanAbsoluteError:
        """The MAE accumulator with the statistics of the last `datasets` call."""
        if self.last is None:
            raise MTLInputError(
                "QM9's MAE is reported in original units, which needs the training split's std: call suite.datasets(root, split) before suite.make_accumulator()"
            )
        return QM9MeanAbsoluteError(self.last.std)


def make_model(*, hidden: int = 64) -> MPNN:
    """The QM9 MPNN with one head per task of `TASKS` (hidden width 64 as published)."""
    return MPNN(TASKS, hidden=hidden)


@dataclass(frozen=True)
class QM9Preset:
    """A smaller QM9 protocol on the same data and tasks (module docstring): subset sizes of the
    three splits, the MPNN's hidden width, the epochs, and the sweep's defaults (methods, seeds,
    loss transforms, representation mode for the gradient weightings). `suite(data_source)`
    gives its suite for `--data-source` None (PyG's files), "qm9pack" or "qm9pack-sanitised"."""

    name: str
    train_size: int
    val_size: int
    test_size: int
    hidden: int
    epochs: int
    methods: str
    seeds: str
    transforms: str
    representation: bool

    def suite(self, data_source: str | None = None, /) -> Suite:
        return _preset_suite(self, data_source)


@functools.cache
def _preset_suite(
    preset: QM9Preset, data_source: str | None
) -> Suite:  # one suite (and one cached split) per preset and source
    if data_source not in DATA_SOURCES:
        raise MTLInputError(
            f"QM9 has no data source {data_source!r}; choose one of: {', '.join(str(name) for name in DATA_SOURCES)}"
        )
    source, layout = DATA_SOURCES[data_source]
    return make_qm9_suite(source=source, layout=layout, preset=preset)


DATA_SOURCES: dict[str | None, tuple[QM9Source, FeatureLayout]] = {
    None: ("pyg", "pyg"),
    "qm9pack": ("qm9pack", "pyg"),
    "qm9pack-sanitised": ("qm9pack", "sanitised"),
}
"""`--data-source` name (None: `--data-root`'s PyG files) -> (source, feature layout)."""

CPU_METHODS = "ls,scaleinvls,rlw,uw,famo,mgda,pcgrad,cagrad,imtl_g,nashmtl,dibsmtl,dibsmtl:steps=5"
"""The published QM9 baselines the registry has (without DWA) and DiBS-MTL with 1 and 5 steps."""
CPU_PRESET = QM9Preset(
    name="cpu",
    train_size=6_000,
    val_size=1_000,
    test_size=1_000,
    hidden=16,
    epochs=10,
    methods=CPU_METHODS,
    seeds="0,1,2",
    transforms="none,mu:power:2",
    representation=True,
)
"""QM9 at CPU scale (module docstring; sized in docs/DECISIONS.md, "QM9 at CPU scale")."""
PRESETS = {preset.name: preset for preset in (CPU_PRESET,)}


def make_qm9_suite(
    *,
    split_seed: int = SPLIT_SEED,
    test_size: int = TEST_SIZE,
    val_size: int = VAL_SIZE,
    normalisation: Literal["train", "all"] = "train",
    source: QM9Source = "pyg",
    layout: FeatureLayout = "pyg",
    limit: int | None = None,
    preset: QM9Preset | None = None,
) -> Suite:
    """The QM9 suite; the keywords change the split (seed, test/validation sizes) and the
    normalisation statistics ("train", or "all" as the reference code effectively uses), and
    where the molecules come from (`source`; with "qm9pack", the feature `layout` and a `limit`
    to the first molecules, see `benchmarks.data.qm9pack`). A `preset` trains on its subsets of
    those splits, with its width and epochs (`QM9Preset`)."""
    subset = None if preset is None else (preset.train_size, preset.val_size, preset.test_size)
    data = QM9Data(
        split_seed=split_seed,
        test_size=test_size,
        val_size=val_size,
        normalisation=normalisation,
        source=source,
        layout=layout,
        limit=limit,
        subset=subset,
    )
    notes = (
        NOTES
        if source == "pyg"
        else {
            **NOTES,
            "data": f"QM9 of the package qm9pack 1.0.3 converted to PyG's layout with RDKit bonds, feature layout {layout!r}{'' if limit is None else f', first {limit} molecules'} (benchmarks.data.qm9pack)",
        }
    )
    protocol, model = PROTOCOL, make_model
    if preset is not None:
        protocol = dataclasses.replace(PROTOCOL, epochs=preset.epochs)
        model = functools.partial(make_model, hidden=preset.hidden)
        notes = {
            **notes,
            "split": f"{notes['split']}; preset {preset.name!r}: the first {preset.train_size} / {preset.val_size} / {preset.test_size} molecules of the train / val / test splits, standardised with the training subset's statistics",
            "model": f"the Gilmer MPNN at hidden width {preset.hidden} (preset {preset.name!r}; published: 64), edge network 5 -> 128 -> {preset.hidden}x{preset.hidden}",
            "scale": f"preset {preset.name!r}: {preset.epochs} epochs (published 300); gradient weightings {'on the shared features (MTL-R)' if preset.representation else 'on the shared parameters'}",
        }
    return Suite(
        name="qm9",
        task_names=TASKS,
        metrics=METRICS,
        make_model=model,
        task_losses=task_losses,
        make_accumulator=data.make_accumulator,
        datasets=data.datasets,
        protocol=protocol,
        collate=collate,
        base_values=BASE_VALUES,
        base_source=BASE_SOURCE,
        notes=notes,
    )


QM9 = make_qm9_suite()
QM9PACK = make_qm9_suite(source="qm9pack")
"""QM9 from qm9pack with PyG's features (aromatic and hybridisation columns zero, Kekule bonds)."""
QM9PACK_SANITISED = make_qm9_suite(source="qm9pack", layout="sanitised")
"""QM9 from qm9pack with RDKit's aromaticity and hybridisation (see `benchmarks.data.qm9pack`)."""
