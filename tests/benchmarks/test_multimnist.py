"""MultiMNIST: the IDX reader, the composition (shifts, canvas, resize), errors, the embedded default."""

from __future__ import annotations

import gzip
import struct

import pytest
import torch

from benchmarks.data.multimnist import (
    DatasetError,
    compose,
    draw_shifts,
    load_mnist_idx,
    multimnist,
    read_idx,
)


def idx_bytes(tensor: torch.Tensor) -> bytes:
    return (
        struct.pack(">HBB", 0, 0x08, tensor.ndim)
        + struct.pack(f">{tensor.ndim}I", *tensor.shape)
        + bytes(tensor.flatten().tolist())
    )


def write_mnist(folder, count: int = 12, *, compressed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 28, 28), generator=generator, dtype=torch.uint8)
    labels = torch.randint(0, 10, (count,), generator=generator, dtype=torch.uint8)
    for split in ("train", "t10k"):
        for name, tensor in (
            (f"{split}-images-idx3-ubyte", images),
            (f"{split}-labels-idx1-ubyte", labels),
        ):
            data = idx_bytes(tensor)
            (folder / (name + (".gz" if compressed else ""))).write_bytes(
                gzip.compress(data) if compressed else data
            )
    return images, labels


@pytest.mark.parametrize("compressed", [False, True])
def test_idx_files_round_trip(tmp_path, compressed) -> None:
    images, labels = write_mnist(tmp_path, compressed=compressed)
    loaded_images, loaded_labels = load_mnist_idx(tmp_path, "train")
    assert torch.equal(loaded_images, images) and torch.equal(loaded_labels, labels.long())


def test_missing_and_corrupt_files_say_what_was_expected(tmp_path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_mnist_idx(tmp_path / "nowhere", "train")
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.*expected in"):
        load_mnist_idx(tmp_path, "train")
    write_mnist(tmp_path, compressed=False)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(
        idx_bytes(torch.zeros(2, 28, 28, dtype=torch.uint8))[:-5]
    )
    with pytest.raises(DatasetError, match="should hold"):
        load_mnist_idx(tmp_path, "train")
    with pytest.raises(DatasetError, match="IDX file"):
        read_idx(b"\x00\x00\x09\x03" + bytes(12), name="bad", dimensions=3)


def test_shifts_follow_the_two_cases() -> None:
    s1, s2 = draw_shifts(20000, torch.Generator().manual_seed(1))
    assert set(s1.tolist()) == set(range(5)) and set(s2.tolist()) == set(range(5))
    # s1 = 4 only in the second case, where s2 >= 1; s2 = 0 only in the first, where s1 <= 3
    assert bool((s2[s1 == 4] >= 1).all()) and bool((s1[s2 == 0] <= 3).all())


def test_composition_places_both_digits_and_normalises() -> None:
    digit = torch.zeros(28, 28, dtype=torch.uint8)
    digit[10:18, 10:18] = 200
    images = torch.stack([digit, torch.zeros_like(digit)])  # pair 0 or 1 sees one real digit
    result = compose(images, torch.tensor([3, 7]), generator=torch.Generator().manual_seed(0))
    assert result.images.shape == (2, 1, 28, 28) and result.images.dtype == torch.float32
    assert sorted(map(tuple, result.labels.tolist())) in ([(3, 7), (7, 3)], [(3, 3), (7, 7)])
    background = (0 - 0.1307) / 0.3081
    assert float(result.images.min()) == pytest.approx(background)
    # 200 where one digit lies, 255 (clipped 400) where a digit paired with itself overlaps
    assert (
        min(abs(float(result.images.max()) - (v / 255 - 0.1307) / 0.3081) for v in (200, 255))
        < 1e-5
    )
    # overlap clips at 255
    saturated = compose(
        torch.full((2, 28, 28), 200, dtype=torch.uint8),
        torch.tensor([1, 2]),
        generator=torch.Generator().manual_seed(0),
    )
    assert float(saturated.images.max()) == pytest.approx((1 - 0.1307) / 0.3081, rel=1e-6)


def test_embedded_default_is_real_seeded_and_split() -> None:
    train, test = multimnist("train"), multimnist("test")
    assert len(train) == 4000 and len(test) == 1000
    assert train.images.shape == (4000, 1, 28, 28)
    counts = torch.bincount(train.labels[:, 0], minlength=10)
    assert bool((counts > 300).all())  # real digits of every class
    again = multimnist("train")
    assert torch.equal(again.images, train.images) and torch.equal(again.labels, train.labels)
    with pytest.raises(Exception, match="split"):
        multimnist("validation")
