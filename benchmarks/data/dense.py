"""NYUv2 and Cityscapes in the preprocessed .npy layout of the MTAN release (spec dibs.md §6.2-6.3,
random_weighting_baselines_metrics.md §5.3).

Layout, as the reference loaders read it (lorenmt/mtan `im2im_pred/create_dataset.py`;
AvivNavon/nash-mtl `experiments/nyuv2/data.py`; Cranial-XIX/FAMO `experiments/cityscapes/data.py`,
both marked "Source: Cranial-XIX/CAGrad nyuv2/create_dataset.py"):

- NYUv2: `<root>/{train,val}/{image,label,depth,normal}/<index>.npy`, indices 0..N-1 with no
  padding (`"{:d}.npy"`); N is the number of `*.npy` files in `image/` (795 train, 654 val).
  `image` is H x W x 3 (channels last, RGB, floats in [0, 1]; the release stores float64, e.g.
  0.55294118 = 141/255, lorenmt/mtan#50), `label` is H x W (13 classes, -1 = unlabelled),
  `depth` is H x W x 1 (metres, 0 = no measurement), `normal` is H x W x 3 (unit vectors from
  Eigen's precomputed normals, all-zero = invalid); H x W = 288 x 384 (LibMTL#61).
- Cityscapes: `<root>/{train,val}/{image,label_7,depth}/<index>.npy` (the release also holds
  `label_2` and `label_19`, unused here), H x W = 128 x 256; `label_7` has 7 classes and -1 for
  invalid pixels (lorenmt/mtan#41); `depth` is the official disparity used directly as inverse
  depth (lorenmt/mtan#15, #25), 0 = invalid, values roughly in [0, 0.5].
- The reference loaders move the channel axis first (`np.moveaxis(x, -1, 0)`) for image, depth and
  normal, keep the label as H x W, and return everything `.float()`; the trainers cast the label
  with `.long()`. This module does the same (label -> int64, the rest -> float32). The dtypes of
  label/depth/normal in the release are not stated by any source read; any real dtype is accepted.
- Split names: the release has only `train` and `val`, and the published protocols (MTAN, CAGrad,
  Nash-MTL, FAMO, DiBS-MTL v1) evaluate on `val` as the test set. So "train" reads `train/`, and
  both "val" and "test" read `val/` (spec dibs.md §6.2, "val used as the test set"; §6.3
  "Validation and test are the same split").

Augmentation (training split only, on by default in the Nash-MTL and FAMO trainers,
`--apply-augmentation True`): `RandomScaleCrop` with scales [1.0, 1.2, 1.5] (credited there to
lorenmt/mtan#34): pick a scale s, crop a window of int(H/s) x int(W/s) at a uniformly drawn
top-left corner (both ends inclusive), resize it back to H x W (image and normals bilinear with
align_corners=True, label and depth with legacy "nearest"), and divide depth by s; then a
horizontal flip with probability 1/2, which also negates the x component of the normals (the
reference does this: `normal[0, :, :] = -normal[0, :, :]`). As in the reference, the resized
normals are not renormalised. Deviation: every draw comes from a `torch.Generator` the dataset
owns (the reference mixes Python's `random` and torch's global RNG); use `reseed` for a run's
seed and `seed_augmentation_worker` as a DataLoader `worker_init_fn` when `num_workers > 0`.

`write_fixture` writes a tiny random dataset in the same layout (for tests and for trying the
pipeline without the real data).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks.data.errors import DatasetError
from core.errors import MTLInputError

logger = logging.getLogger(__name__)

SEGMENTATION, DEPTH, NORMAL = "segmentation", "depth", "normal"
"""Task names shared by the dense suites (the dataset's target keys and the model's outputs)."""

SCALES: tuple[float, ...] = (1.0, 1.2, 1.5)
"""RandomScaleCrop scales of the Nash-MTL/FAMO loaders (spec dibs.md §6.2, v1)."""
FLIP_PROBABILITY = 0.5
"""Probability of the horizontal flip (reference: `torch.rand(1) < 0.5`)."""
IGNORE_INDEX = -1
"""Label of unlabelled pixels in both releases (lorenmt/mtan#41; the losses' `ignore_index`)."""

SPLIT_FOLDERS = {"train": "train", "val": "val", "test": "val"}
"""Our split name -> the release's folder: the published protocols test on `val` (module docstring)."""

_INDEX_FILE = re.compile(r"^(\d+)\.npy$")


@dataclass(frozen=True)
class DenseLayout:
    """Where a dense dataset's arrays live: `folders` maps each target (task) to its folder."""

    name: str
    folders: Mapping[str, str]
    num_classes: int
    height: int
    width: int

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.folders)


NYUV2_LAYOUT = DenseLayout(
    name="NYUv2",
    folders={SEGMENTATION: "label", DEPTH: "depth", NORMAL: "normal"},
    num_classes=13,
    height=288,
    width=384,
)
"""NYUv2 (MTAN release): 13-class segmentation, depth, surface normals at 288 x 384."""

CITYSCAPES_LAYOUT = DenseLayout(
    name="Cityscapes",
    folders={SEGMENTATION: "label_7", DEPTH: "depth"},
    num_classes=7,
    height=128,
    width=256,
)
"""Cityscapes (MTAN release, 128 x 256 version): 7-class segmentation and inverse depth."""

LAYOUTS = {"nyuv2": NYUV2_LAYOUT, "cityscapes": CITYSCAPES_LAYOUT}

_CHANNELS = {"image": 3, DEPTH: 1, NORMAL: 3}  # channels-last arrays; the label is H x W


def _layout_hint(layout: DenseLayout, root: Path) -> str:
    folders = ",".join(("image", *layout.folders.values()))
    return f"the {layout.name} release keeps its arrays as {root}/{{train,val}}/{{{folders}}}/<index>.npy"


def _expected_shape(kind: str, height: int | None, width: int | None) -> str:
    h = "H" if height is None else str(height)
    w = "W" if width is None else str(width)
    return f"({h}, {w})" if kind == SEGMENTATION else f"({h}, {w}, {_CHANNELS[kind]})"


class DenseDataset(torch.utils.data.Dataset):
    """One split of a dense benchmark; items are `(image [3, H, W] float32, {task: target})`.

    Targets: segmentation `[H, W]` int64 (-1 = ignore), depth `[1, H, W]` float32 (0 = invalid),
    normal `[3, H, W]` float32 (all-zero = invalid). H x W is read from `image/0.npy` (the release's
    size, or a fixture's); every array must match it. With `augment`, each item is randomly
    scale-cropped and flipped (module docstring) with draws from `generator`.
    Missing or malformed files raise `DatasetError` naming the file that was expected.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        /,
        *,
        layout: DenseLayout,
        augment: bool = False,
        generator: torch.Generator | None = None,
        scales: Sequence[float] = SCALES,
    ) -> None:
        if split not in SPLIT_FOLDERS:
            raise MTLInputError(f"split must be one of {sorted(SPLIT_FOLDERS)}, got {split!r}")
        if augment and not all(s >= 1.0 for s in scales):
            raise MTLInputError(
                f"scales must all be >= 1 (a crop cannot exceed the image), got {tuple(scales)}"
            )
        self.layout = layout
        self.split = split
        self.root = Path(root).expanduser()
        self.augment = augment
        self.scales = tuple(float(s) for s in scales)
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        if not self.root.is_dir():
            raise DatasetError(
                f"the {layout.name} root {self.root} does not exist: expected {self.root}/train/image/0.npy "
                f"and the rest of the preprocessed release ({_layout_hint(layout, self.root)})"
            )
        self.folder = self.root / SPLIT_FOLDERS[split]
        if not self.folder.is_dir():
            raise DatasetError(
                f"expected {self.folder}/image/0.npy: split {split!r} reads the folder {self.folder}, which does not "
                f"exist ({_layout_hint(layout, self.root)}; 'val' and 'test' both read val/)"
            )
        self.length = self._count_and_check_files()
        first = self._load_array("image", 0, None, None)
        self.height, self.width = int(first.shape[0]), int(first.shape[1])
        if (self.height, self.width) != (layout.height, layout.width):
            logger.info(
                "%s %s split: images are %dx%d, not the published %dx%d (a fixture or another preprocessing)",
                layout.name,
                split,
                self.height,
                self.width,
                layout.height,
                layout.width,
            )

    def _count_and_check_files(self) -> int:
        image_dir = self.folder / "image"
        if not image_dir.is_dir():
            raise DatasetError(
                f"expected {image_dir}/0.npy, but the folder {image_dir} does not exist"
            )
        indices = {
            int(m.group(1)) for name in _listdir(image_dir) if (m := _INDEX_FILE.match(name))
        }
        if not indices:
            raise DatasetError(
                f"expected {image_dir}/0.npy, but {image_dir} holds no <index>.npy files"
            )
        count = max(indices) + 1
        for folder_name in ("image", *self.layout.folders.values()):
            folder = self.folder / folder_name
            if not folder.is_dir():
                raise DatasetError(
                    f"expected {folder}/0.npy, but the folder {folder} does not exist"
                )
            present = {
                int(m.group(1)) for name in _listdir(folder) if (m := _INDEX_FILE.match(name))
            }
            missing = sorted(set(range(count)) - present)
            if missing:
                raise DatasetError(
                    f"expected {folder}/{missing[0]}.npy ({len(missing)} of indices 0..{count - 1} missing in {folder}; "
                    f"{image_dir} holds images up to {count - 1}.npy and every folder needs the same indices)"
                )
        return count

    def _path(self, kind: str, index: int) -> Path:
        folder = "image" if kind == "image" else self.layout.folders[kind]
        return self.folder / folder / f"{index}.npy"

    def _load_array(
        self, kind: str, index: int, height: int | None, width: int | None
    ) -> np.ndarray:
        path = self._path(kind, index)
        expected = _expected_shape(kind, height, width)
        if not path.is_file():
            raise DatasetError(
                f"expected {path} (an array of shape {expected}), but it does not exist"
            )
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as error:
            raise DatasetError(
                f"expected {path} to be a .npy array of shape {expected}, but it cannot be read ({error})"
            ) from error
        if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
            raise DatasetError(f"expected {path} to hold real numbers, found dtype {array.dtype}")
        ok_ndim = array.ndim == (2 if kind == SEGMENTATION else 3)
        ok_channels = kind == SEGMENTATION or (ok_ndim and array.shape[2] == _CHANNELS[kind])
        ok_size = ok_ndim and (height is None or tuple(array.shape[:2]) == (height, width))
        if not (ok_ndim and ok_channels and ok_size):
            raise DatasetError(
                f"expected {path} to hold an array of shape {expected}, found {tuple(array.shape)}"
            )
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            raise DatasetError(f"expected {path} to hold finite values, found NaN or infinity")
        if kind == SEGMENTATION:
            low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
            if low < IGNORE_INDEX or high >= self.layout.num_classes:
                raise DatasetError(
                    f"expected {path} to hold labels in 0..{self.layout.num_classes - 1} or {IGNORE_INDEX} (ignore), "
                    f"found values from {low} to {high}"
                )
        return array

    def __len__(self) -> int:
        return self.length

    def load(self, index: int, /) -> tuple[Tensor, dict[str, Tensor]]:
        """Item `index` as stored (no augmentation)."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} items")
        image = self._load_array("image", index, self.height, self.width)
        targets: dict[str, Tensor] = {}
        for task in self.layout.tasks:
            array = self._load_array(task, index, self.height, self.width)
            if task == SEGMENTATION:
                targets[task] = torch.from_numpy(
                    np.asarray(array)
                ).long()  # truncation, as `.float().long()`
            else:
                targets[task] = torch.from_numpy(np.moveaxis(array, -1, 0)).float().contiguous()
        return torch.from_numpy(np.moveaxis(image, -1, 0)).float().contiguous(), targets

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        image, targets = self.load(index)
        if self.augment:
            image, targets = augment_dense(
                image, targets, generator=self.generator, scales=self.scales
            )
        return image, targets

    def reseed(self, seed: int, /) -> None:
        """Restart the augmentation draws from `seed` (e.g. the run's seed)."""
        self.generator.manual_seed(seed)


def _listdir(folder: Path) -> list[str]:
    try:
        return [entry.name for entry in folder.iterdir()]
    except OSError as error:
        raise DatasetError(
            f"expected {folder}/0.npy, but {folder} cannot be listed ({error})"
        ) from error


def seed_augmentation_worker(worker_id: int, /) -> None:
    """DataLoader `worker_init_fn`: reseed the worker's copy of the dataset's generator with the
    worker's seed, so that workers do not repeat each other's augmentation draws."""
    info = torch.utils.data.get_worker_info()
    if info is not None and isinstance(info.dataset, DenseDataset):
        info.dataset.reseed(info.seed % (1 << 63))


def augment_dense(
    image: Tensor,
    targets: Mapping[str, Tensor],
    /,
    *,
    generator: torch.Generator,
    scales: Sequence[float] = SCALES,
    flip_probability: float = FLIP_PROBABILITY,
) -> tuple[Tensor, dict[str, Tensor]]:
    """RandomScaleCrop then a horizontal flip (module docstring), drawn from `generator` in this
    order: scale index, crop row, crop column, flip. Shapes and dtypes are kept."""
    height, width = image.shape[-2:]
    scale = float(scales[int(torch.randint(len(scales), (1,), generator=generator))])
    crop_h, crop_w = int(height / scale), int(width / scale)
    top = int(torch.randint(height - crop_h + 1, (1,), generator=generator))
    left = int(torch.randint(width - crop_w + 1, (1,), generator=generator))
    flip = bool(torch.rand(1, generator=generator) < flip_probability)

    def crop(x: Tensor, mode: str) -> Tensor:
        window = x[..., top : top + crop_h, left : left + crop_w]
        if (crop_h, crop_w) == (height, width):
            return window.clone()
        corners = {"align_corners": True} if mode == "bilinear" else {}
        return F.interpolate(window[None], size=(height, width), mode=mode, **corners)[0]

    image = crop(image, "bilinear")
    out: dict[str, Tensor] = {}
    for task, target in targets.items():
        if task == SEGMENTATION:
            out[task] = crop(target[None].float(), "nearest")[0].to(target.dtype)
        elif task == DEPTH:
            out[task] = crop(target, "nearest") / scale
        elif task == NORMAL:
            out[task] = crop(target, "bilinear")
        else:
            raise MTLInputError(
                f"unknown dense target {task!r}; expected {SEGMENTATION}, {DEPTH} or {NORMAL}"
            )
    if flip:
        image = image.flip(-1)
        out = {task: target.flip(-1) for task, target in out.items()}
        if NORMAL in out:
            out[NORMAL][0].neg_()
    return image, out


def write_fixture(
    root: str | Path, *, dataset: str, count: int, height: int, width: int, seed: int
) -> Path:
    """Write a tiny random `dataset` ("nyuv2" or "cityscapes") with `count` items in each of
    `train/` and `val/`, in the release's layout; returns `root`.

    Values are valid but meaningless: images uniform in [0, 1] (float64, as the release), labels
    uniform over the classes with about 10% set to -1, depth positive (NYUv2 metres in [0.5, 10],
    Cityscapes inverse depth in [0.01, 0.5]) with about 10% zeros, normals random unit vectors with
    about 10% all-zero (label, depth and normals float32: the release's dtypes are not documented).
    """
    if dataset not in LAYOUTS:
        raise MTLInputError(f"dataset must be one of {sorted(LAYOUTS)}, got {dataset!r}")
    if count < 1 or height < 1 or width < 1:
        raise MTLInputError(
            f"count, height and width must be positive, got {count}, {height}, {width}"
        )
    layout = LAYOUTS[dataset]
    rng = np.random.default_rng(seed)
    root = Path(root)
    low, high = (0.5, 10.0) if dataset == "nyuv2" else (0.01, 0.5)
    for split in ("train", "val"):
        folders = {"image": root / split / "image"} | {
            t: root / split / f for t, f in layout.folders.items()
        }
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            arrays: dict[str, np.ndarray] = {"image": rng.uniform(0.0, 1.0, (height, width, 3))}
            label = rng.integers(0, layout.num_classes, (height, width))
            label[rng.uniform(size=(height, width)) < 0.1] = IGNORE_INDEX
            arrays[SEGMENTATION] = label.astype(np.float32)
            depth = rng.uniform(low, high, (height, width, 1))
            depth[rng.uniform(size=(height, width)) < 0.1] = 0.0
            arrays[DEPTH] = depth.astype(np.float32)
            if NORMAL in layout.folders:
                normal = rng.normal(size=(height, width, 3))
                normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
                normal[rng.uniform(size=(height, width)) < 0.1] = 0.0
                arrays[NORMAL] = normal.astype(np.float32)
            for kind, folder in folders.items():
                np.save(folder / f"{index}.npy", arrays[kind])
    return root
