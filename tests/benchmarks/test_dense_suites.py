"""NYUv2 and Cityscapes suites on tiny fixtures: the .npy loaders and their errors, the
augmentation, SegNet-MTAN, the losses and metrics against hand-computed values, one DiBS-MTL step."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch

import core
from benchmarks.data.dense import (
    CITYSCAPES_LAYOUT,
    NYUV2_LAYOUT,
    DatasetError,
    DenseDataset,
    augment_dense,
    write_fixture,
)
from benchmarks.models.segnet import SegNetMTAN, SegNetSplit, parameter_count
from benchmarks.suites import cityscapes, nyuv2
from benchmarks.suites.nyuv2 import (
    DenseMetricAccumulator,
    angle_statistics,
    confusion_matrix,
    depth_errors,
    depth_loss,
    normal_angles,
    normal_loss,
    segmentation_loss,
    segmentation_scores,
)
from core.errors import MTLInputError

TINY = (4, 8, 8, 16, 16)
H, W = 32, 64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny convolutions gain nothing from intra-op threads, and on a busy 2-core machine OpenMP's
    waiting makes them ten times slower; restore the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def nyu_root(tmp_path_factory):
    return write_fixture(
        tmp_path_factory.mktemp("nyuv2"), dataset="nyuv2", count=4, height=H, width=W, seed=0
    )


@pytest.fixture(scope="module")
def city_root(tmp_path_factory):
    return write_fixture(
        tmp_path_factory.mktemp("cityscapes"),
        dataset="cityscapes",
        count=3,
        height=H,
        width=W,
        seed=1,
    )


# ---------------------------------------------------------------- data


def test_nyuv2_fixture_round_trips(nyu_root) -> None:
    data = DenseDataset(nyu_root, "train", layout=NYUV2_LAYOUT)
    assert len(data) == 4 and (data.height, data.width) == (H, W)
    for index in (0, 3):
        image, targets = data[index]
        assert image.dtype == torch.float32 and image.shape == (3, H, W)
        stored = np.load(nyu_root / "train" / "image" / f"{index}.npy")
        assert torch.allclose(image, torch.from_numpy(stored).permute(2, 0, 1).float())
        label = torch.from_numpy(np.load(nyu_root / "train" / "label" / f"{index}.npy")).long()
        assert targets["segmentation"].dtype == torch.int64 and torch.equal(
            targets["segmentation"], label
        )
        depth = np.load(nyu_root / "train" / "depth" / f"{index}.npy")
        assert targets["depth"].shape == (1, H, W) and torch.equal(
            targets["depth"][0], torch.from_numpy(depth[..., 0])
        )
        normal = np.load(nyu_root / "train" / "normal" / f"{index}.npy")
        assert targets["normal"].shape == (3, H, W) and torch.equal(
            targets["normal"], torch.from_numpy(normal).permute(2, 0, 1)
        )
        assert set(targets["segmentation"].unique().tolist()) <= set(range(-1, 13))


def test_test_and_val_read_the_val_folder(nyu_root, city_root) -> None:
    test_image, _ = nyuv2.NYUV2.datasets(str(nyu_root), "test")[1]
    val_image = (
        torch.from_numpy(np.load(nyu_root / "val" / "image" / "1.npy")).permute(2, 0, 1).float()
    )
    assert torch.equal(test_image, val_image)
    image, targets = cityscapes.CITYSCAPES.datasets(str(city_root), "val")[2]
    assert image.shape == (3, H, W) and set(targets) == {"segmentation", "depth"}
    assert int(targets["segmentation"].max()) < 7 and int(targets["segmentation"].min()) >= -1
    assert (city_root / "val" / "label_7" / "2.npy").exists()


def test_errors_name_the_expected_file(tmp_path, nyu_root) -> None:
    with pytest.raises(
        DatasetError, match=r"nowhere does not exist: expected .*nowhere/train/image/0\.npy"
    ):
        DenseDataset(tmp_path / "nowhere", "train", layout=NYUV2_LAYOUT)
    with pytest.raises(DatasetError, match="no embedded copy"):
        nyuv2.datasets(None, "train")
    root = write_fixture(tmp_path / "broken", dataset="nyuv2", count=3, height=H, width=W, seed=2)
    shutil.rmtree(root / "val")
    with pytest.raises(
        DatasetError, match=r"expected .*broken/val/image/0\.npy: split 'test' reads the folder"
    ):
        DenseDataset(root, "test", layout=NYUV2_LAYOUT)
    (root / "train" / "depth" / "2.npy").unlink()
    with pytest.raises(DatasetError, match=r"expected .*broken/train/depth/2\.npy"):
        DenseDataset(root, "train", layout=NYUV2_LAYOUT)
    np.save(
        root / "train" / "depth" / "2.npy", np.ones((H, W), dtype=np.float32)
    )  # channel axis missing
    data = DenseDataset(root, "train", layout=NYUV2_LAYOUT)
    with pytest.raises(
        DatasetError,
        match=r"expected .*train/depth/2\.npy to hold an array of shape \(32, 64, 1\), found \(32, 64\)",
    ):
        data[2]
    (root / "train" / "normal" / "1.npy").write_bytes(b"not a numpy file")
    with pytest.raises(
        DatasetError, match=r"expected .*train/normal/1\.npy to be a \.npy array .* cannot be read"
    ):
        data[1]
    np.save(root / "train" / "label" / "0.npy", np.full((H, W), 13.0, dtype=np.float32))
    with pytest.raises(DatasetError, match=r"train/label/0\.npy to hold labels in 0\.\.12 or -1"):
        data[0]
    np.save(root / "train" / "image" / "1.npy", np.full((H, W, 3), np.nan))
    with pytest.raises(DatasetError, match=r"train/image/1\.npy to hold finite values"):
        data[1]
    with pytest.raises(MTLInputError, match="split"):
        DenseDataset(root, "validation", layout=NYUV2_LAYOUT)


def test_augmentation_is_deterministic_and_keeps_shapes(nyu_root) -> None:
    plain = DenseDataset(nyu_root, "train", layout=NYUV2_LAYOUT)
    image, targets = plain[0]
    draws = []
    for _ in range(2):
        generator = torch.Generator().manual_seed(7)
        draws.append([augment_dense(image, targets, generator=generator) for _ in range(6)])
    for (a_image, a_targets), (b_image, b_targets) in zip(*draws):
        assert torch.equal(a_image, b_image) and all(
            torch.equal(a_targets[k], b_targets[k]) for k in targets
        )
        assert a_image.shape == image.shape and a_image.dtype == image.dtype
        assert all(
            a_targets[k].shape == targets[k].shape and a_targets[k].dtype == targets[k].dtype
            for k in targets
        )
        assert set(a_targets["segmentation"].unique().tolist()) <= set(
            targets["segmentation"].unique().tolist()
        )
    assert any(not torch.equal(a, image) for a, _ in draws[0])  # something changed in six draws
    # the dataset draws from its own generator: reseeding repeats the sequence
    data = DenseDataset(nyu_root, "train", layout=NYUV2_LAYOUT, augment=True)
    data.reseed(3)
    first = [data[1][0] for _ in range(3)]
    data.reseed(3)
    assert all(torch.equal(a, data[1][0]) for a in first)


def test_flip_negates_normal_x_and_scale_divides_depth(nyu_root) -> None:
    image, targets = DenseDataset(nyu_root, "train", layout=NYUV2_LAYOUT)[2]
    flipped_image, flipped = augment_dense(
        image,
        targets,
        generator=torch.Generator().manual_seed(0),
        scales=(1.0,),
        flip_probability=1.0,
    )
    assert torch.equal(flipped_image, image.flip(-1)) and torch.equal(
        flipped["depth"], targets["depth"].flip(-1)
    )
    assert torch.equal(flipped["normal"][0], -targets["normal"][0].flip(-1))
    assert torch.equal(flipped["normal"][1:], targets["normal"][1:].flip(-1))
    _, scaled = augment_dense(
        image,
        targets,
        generator=torch.Generator().manual_seed(0),
        scales=(1.5,),
        flip_probability=0.0,
    )
    original = set((targets["depth"] / 1.5).flatten().tolist())
    assert (
        set(scaled["depth"].flatten().tolist()) <= original
    )  # nearest sampling, then depth / scale


# ---------------------------------------------------------------- model


def test_model_forward_shapes_and_heads() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, H, W)
    for suite_module, classes in ((nyuv2, 13), (cityscapes, 7)):
        for architecture in ("mtan", "split"):
            model = suite_module.make_model(architecture=architecture, filters=TINY)
            out = model(x)
            assert list(out) == list(suite_module.TASKS)
            assert out["segmentation"].shape == (2, classes, H, W)
            assert torch.allclose(out["segmentation"].exp().sum(1), torch.ones(2, H, W), atol=1e-5)
            assert out["depth"].shape == (2, 1, H, W)
            if "normal" in out:
                assert out["normal"].shape == (2, 3, H, W)
                norms = out["normal"].norm(
                    dim=1
                )  # 0 only where a tiny net's raw output is exactly 0 (dead ReLUs)
                assert (
                    bool((((norms - 1).abs() < 1e-5) | (norms == 0)).all())
                    and float((norms > 0).double().mean()) > 0.9
                )
    split = nyuv2.make_model(architecture="split", filters=TINY).eval()
    assert all(
        torch.equal(a, b) for a, b in zip(split(x).values(), split.decode(split.encode(x)).values())
    )
    with pytest.raises(MTLInputError, match="divisible by 32"):
        split(torch.randn(1, 3, 30, 64))


@pytest.mark.parametrize("architecture", ["mtan", "split"])
def test_shared_and_task_parameters_partition_the_model(architecture) -> None:
    model = nyuv2.make_model(architecture=architecture, filters=TINY)
    shared = {id(p) for p in model.shared_parameters()}
    heads = {task: {id(p) for p in params} for task, params in model.task_parameters().items()}
    assert list(heads) == list(nyuv2.TASKS)
    everything = {id(p) for p in model.parameters()}
    pieces = [shared, *heads.values()]
    assert set().union(*pieces) == everything and sum(map(len, pieces)) == len(everything)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all("pred" in names[i] for group in heads.values() for i in group)
    assert all(
        "pred" not in names[i] for i in shared
    )  # the reference's rule: shared = no "pred" in the name
    if architecture == "mtan":
        assert any("encoder_att" in names[i] for i in shared) and any(
            "decoder_att" in names[i] for i in shared
        )


def test_published_parameter_counts() -> None:
    with torch.device("meta"):
        mtan_nyu, mtan_city = nyuv2.make_model(), cityscapes.make_model()
    assert parameter_count(mtan_nyu) == {
        "total": 44_229_073,
        "shared": 44_117_184,
        "heads": 111_889,
    }
    assert parameter_count(mtan_city) == {
        "total": 41_206_984,
        "shared": 41_132_608,
        "heads": 74_376,
    }
    assert isinstance(mtan_nyu, SegNetMTAN) and isinstance(
        nyuv2.make_model(architecture="split", filters=TINY), SegNetSplit
    )


# ---------------------------------------------------------------- losses and metrics by hand


def test_segmentation_metrics_by_hand() -> None:
    target = torch.tensor([[[0, 0], [1, -1]]])
    predicted = torch.tensor([[[0, 1], [1, 1]]])
    confusion = confusion_matrix(predicted, target, num_classes=2)
    assert confusion.tolist() == [[1, 1], [0, 1]]  # rows ground truth, the -1 pixel skipped
    miou, accuracy = segmentation_scores(confusion)
    assert miou == pytest.approx(50.0) and accuracy == pytest.approx(
        200 / 3
    )  # IoU 1/2 and 1/2; 2 of 3 right
    # a third class absent from ground truth and prediction is left out of the mean
    assert segmentation_scores(confusion_matrix(predicted, target, num_classes=3)) == pytest.approx(
        (50.0, 200 / 3)
    )
    # over two batches the confusion matrix accumulates (not a mean of per-batch scores)
    accumulator = DenseMetricAccumulator(("segmentation",), num_classes=2)
    log_probs = torch.log(
        torch.nn.functional.one_hot(predicted, 2).permute(0, 3, 1, 2).float().clamp_min(1e-6)
    )
    accumulator.update({"segmentation": log_probs}, {"segmentation": target})
    accumulator.update(
        {"segmentation": log_probs[..., :1]}, {"segmentation": target[..., :1]}
    )  # pixels (0,0), (1,0): both right
    assert accumulator.compute() == pytest.approx(
        {"mean_iou": 100 * (2 / 3 + 2 / 3) / 2, "pixel_accuracy": 80.0}
    )
    # the loss: mean of -log p(label) over labelled pixels
    probs = torch.tensor([[[[0.9, 0.2], [0.5, 0.5]]]])
    log_probs = torch.log(torch.cat([probs, 1 - probs], dim=1))
    expected = -(math.log(0.9) + math.log(0.2) + math.log(0.5)) / 3
    assert float(segmentation_loss(log_probs, target)) == pytest.approx(expected, rel=1e-6)
    assert float(segmentation_loss(log_probs, torch.full_like(target, -1))) == 0.0


def test_depth_metrics_by_hand() -> None:
    target = torch.tensor([[[[2.0, 0.0], [4.0, 1.0]]]])
    prediction = torch.tensor([[[[1.0, 5.0], [3.0, 2.0]]]])  # the 0 pixel (prediction 5) is ignored
    absolute, relative, count = depth_errors(prediction, target)
    assert (float(absolute), float(relative), int(count)) == pytest.approx(
        (1.0, (1 / 2 + 1 / 4 + 1) / 3, 3)
    )
    assert float(depth_loss(prediction, target)) == pytest.approx(1.0)
    # per-batch means, then the plain mean over batches (as the reference); empty batches skipped
    accumulator = DenseMetricAccumulator(("depth",), num_classes=1)
    accumulator.update({"depth": prediction}, {"depth": target})
    accumulator.update(
        {"depth": torch.tensor([[[[4.0, 0.0]]]])}, {"depth": torch.tensor([[[[1.0, 0.0]]]])}
    )  # one pixel, error 3
    accumulator.update(
        {"depth": torch.ones(1, 1, 1, 2)}, {"depth": torch.zeros(1, 1, 1, 2)}
    )  # nothing valid
    assert accumulator.compute() == pytest.approx(
        {"abs_error": (1.0 + 3.0) / 2, "rel_error": ((1 / 2 + 1 / 4 + 1) / 3 + 3.0) / 2}
    )
    assert float(depth_loss(prediction, torch.zeros_like(target))) == 0.0


def test_normal_metrics_by_hand() -> None:
    degrees = torch.tensor([0.0, 10.0, 25.0, 90.0, 40.0], dtype=torch.float64)
    radians = torch.deg2rad(degrees)
    prediction = torch.stack([radians.sin(), torch.zeros(5, dtype=torch.float64), radians.cos()])[
        None, :, None, :
    ]  # [1, 3, 1, 5]
    target = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)[None, :, None, None].repeat(
        1, 1, 1, 5
    )
    target[..., 4] = 0.0  # the 40-degree pixel has no ground truth
    angles = normal_angles(prediction, target)
    assert angles.tolist() == pytest.approx([0.0, 10.0, 25.0, 90.0], abs=1e-6)
    expected = [
        31.25,
        17.5,
        50.0,
        50.0,
        75.0,
    ]  # mean, median (10 + 25) / 2, % < 11.25, < 22.5, < 30
    assert angle_statistics(angles).tolist() == pytest.approx(expected, abs=1e-6)
    accumulator = DenseMetricAccumulator(("normal",), num_classes=1)
    accumulator.update({"normal": prediction}, {"normal": target})
    accumulator.update(
        {"normal": prediction[..., :1]}, {"normal": target[..., :1]}
    )  # a batch with one exact pixel
    got = accumulator.compute()
    assert list(got) == ["angle_mean", "angle_median", "within_11.25", "within_22.5", "within_30"]
    assert list(got.values()) == pytest.approx(
        [(31.25 + 0) / 2, (17.5 + 0) / 2, 75.0, 75.0, 87.5], abs=1e-6
    )
    cosines = torch.cos(torch.deg2rad(degrees[:4]))
    assert float(normal_loss(prediction, target)) == pytest.approx(
        1 - float(cosines.mean()), abs=1e-9
    )


# ---------------------------------------------------------------- suites end to end


def test_suites_state_the_protocol_and_report_every_metric(nyu_root, city_root) -> None:
    assert (nyuv2.PROTOCOL.epochs, nyuv2.PROTOCOL.batch_size, nyuv2.PROTOCOL.lr) == (200, 2, 1e-4)
    assert (cityscapes.PROTOCOL.epochs, cityscapes.PROTOCOL.batch_size) == (200, 8)
    for protocol in (nyuv2.PROTOCOL, cityscapes.PROTOCOL):
        assert (protocol.optimizer, protocol.scheduler, protocol.step_size, protocol.gamma) == (
            "adam",
            "step",
            100,
            0.5,
        )
        assert protocol.selection == "last_mean:10"
    assert list(nyuv2.BASE_VALUES.values()) == [
        38.30,
        63.76,
        0.6754,
        0.2780,
        25.01,
        19.21,
        30.14,
        57.20,
        69.15,
    ]
    assert list(cityscapes.BASE_VALUES.values()) == [74.01, 93.16, 0.0125, 27.77]
    assert [m.higher_is_better for m in nyuv2.METRICS] == [
        True,
        True,
        False,
        False,
        False,
        False,
        True,
        True,
        True,
    ]
    assert (
        nyuv2.NYUV2.datasets(str(nyu_root), "train").augment
        and not nyuv2.NYUV2.datasets(str(nyu_root), "test").augment
    )
    torch.manual_seed(0)
    for suite, root in ((nyuv2.NYUV2, nyu_root), (cityscapes.CITYSCAPES, city_root)):
        model = (nyuv2 if suite is nyuv2.NYUV2 else cityscapes).make_model(filters=TINY).eval()
        loader = torch.utils.data.DataLoader(suite.datasets(str(root), "test"), batch_size=2)
        accumulator = suite.make_accumulator()
        with torch.no_grad():
            for images, targets in loader:
                predictions = model(images)
                losses = suite.task_losses(predictions, targets)
                assert list(losses) == list(suite.task_names) and all(
                    torch.isfinite(v) for v in losses.values()
                )
                accumulator.update(predictions, targets)
        metrics = accumulator.compute()
        assert list(metrics) == [m.name for m in suite.metrics] and all(
            math.isfinite(v) for v in metrics.values()
        )
    assert (
        CITYSCAPES_LAYOUT.height,
        CITYSCAPES_LAYOUT.width,
        NYUV2_LAYOUT.height,
        NYUV2_LAYOUT.width,
    ) == (128, 256, 288, 384)


def test_one_dibs_mtl_step_updates_the_model(nyu_root) -> None:
    torch.manual_seed(0)
    model = nyuv2.make_model(filters=TINY)
    images, targets = next(
        iter(torch.utils.data.DataLoader(nyuv2.datasets(str(nyu_root), "train"), batch_size=2))
    )
    losses = nyuv2.task_losses(model(images), targets)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    heads = model.task_parameters()
    info = core.mtl_backward(
        list(losses.values()),
        model.shared_parameters(),
        core.DiBSMTL(),
        task_params=[heads[t] for t in nyuv2.TASKS],
    )
    assert info.weights.shape == (3,) and bool(torch.isfinite(info.weights).all())
    optimizer.step()
    after = list(model.parameters())
    assert all(bool(torch.isfinite(p).all()) for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(before, after))
    assert all(p.grad is not None for p in model.shared_parameters())
