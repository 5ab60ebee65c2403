"""SegNet-MTAN and the split SegNet for dense multi-task prediction (spec dibs.md §6.2-6.3).

SegNet-MTAN: S. Liu, E. Johns, A. J. Davison, *End-to-End Multi-Task Learning with Attention*,
CVPR 2019 (arXiv:1803.10704), as the Nash-MTL / FAMO / DiBS-MTL experiments build it
(AvivNavon/nash-mtl `experiments/nyuv2/models.py`, Cranial-XIX/FAMO `experiments/cityscapes/models.py`):

- A shared SegNet: five encoder stages (conv block, then 1, 1, 2, 2, 2 more conv blocks per stage,
  each block conv3x3 -> BatchNorm -> ReLU; 2x2 max pooling with indices) and five decoder stages
  (max unpooling with those indices, then the mirrored conv blocks), filters [64, 128, 256, 512, 512].
- Per task, soft attention masks (conv1x1-BN-ReLU-conv1x1-BN-sigmoid) at every stage: in the encoder
  a mask on each stage's first features multiplies its last features, followed by a shared conv
  block and max pooling; in the decoder the running attention features are upsampled (bilinear,
  align_corners=True), passed through a shared conv block, concatenated with the unpooled shared
  features, turned into a mask that multiplies the stage's decoder output.
- Heads ("pred" layers, one per task): conv3x3(f0, f0) then conv1x1(f0, C), no normalisation.
  Segmentation returns log-probabilities (log-softmax, for NLL), depth the raw map, normals the map
  L2-normalised over channels.
- Initialisation: Xavier-normal conv weights, zero biases, BatchNorm weight 1 and bias 0.

Shared parameters (spec dibs.md §6.2, §10.6): every parameter except the heads, the task attention
modules included (the reference selects names without "pred"). The heads live in `self.pred`.

Parameter counts (filters [64, 128, 256, 512, 512], computed with `parameter_count`):
- SegNet-MTAN, NYUv2 heads (13, 1, 3): 44,229,073 (shared 44,117,184, heads 111,889).
- SegNet-MTAN, Cityscapes heads (7, 1): 41,206,984 (shared 41,132,608, heads 74,376).
- Split SegNet, NYUv2: 25,055,185 (shared 24,943,296); Cityscapes: 25,017,672 (same shared part).

Deviations: normals use `F.normalize` (norm clamped at 1e-12), which differs from the reference's
plain division only where that would divide by zero. The reference's last decoder attention block
maps f4 -> f4 channels and only works when f3 == f4; here it maps f4 -> f3, which is identical for
the published filters and lets tests use other filter lists. ReLUs are not in-place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.errors import MTLInputError

SEGNET_FILTERS: tuple[int, int, int, int, int] = (64, 128, 256, 512, 512)
"""Channels of the five SegNet stages (spec dibs.md §6.2, "Filters [64, 128, 256, 512, 512]")."""
DOWNSAMPLING = 32
"""Five 2x2 poolings: input height and width must be multiples of 32 (288 x 384 and 128 x 256 are)."""

HeadOutput = Literal["log_softmax", "identity", "unit_vector"]


@dataclass(frozen=True)
class TaskHead:
    """A task's prediction head: `channels` outputs, post-processed by `output`."""

    channels: int
    output: HeadOutput = "identity"


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """conv3x3 -> BatchNorm -> ReLU, SegNet's building block."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


def attention_block(in_channels: int, hidden: int, out_channels: int) -> nn.Sequential:
    """MTAN's attention mask: conv1x1 -> BN -> ReLU -> conv1x1 -> BN -> sigmoid."""
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden, kernel_size=1),
        nn.BatchNorm2d(hidden),
        nn.ReLU(),
        nn.Conv2d(hidden, out_channels, kernel_size=1),
        nn.BatchNorm2d(out_channels),
        nn.Sigmoid(),
    )


def prediction_head(channels: int, outputs: int) -> nn.Sequential:
    """conv3x3(f0, f0) -> conv1x1(f0, outputs), the reference's "pred" layer."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, kernel_size=3, padding=1),
        nn.Conv2d(channels, outputs, kernel_size=1),
    )


def _finish(prediction: Tensor, output: HeadOutput) -> Tensor:
    if output == "log_softmax":
        return F.log_softmax(prediction, dim=1)
    if output == "unit_vector":
        return F.normalize(prediction, p=2, dim=1, eps=1e-12)
    return prediction


def _initialise(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_normal_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _check_filters(filters: Sequence[int]) -> tuple[int, ...]:
    filters = tuple(int(f) for f in filters)
    if len(filters) != 5 or min(filters) < 1:
        raise MTLInputError(f"filters must be five positive channel counts, got {filters}")
    return filters


def _check_heads(heads: Mapping[str, TaskHead]) -> dict[str, TaskHead]:
    if not heads:
        raise MTLInputError("at least one task head is needed")
    for task, head in heads.items():
        if head.channels < 1 or head.output not in ("log_softmax", "identity", "unit_vector"):
            raise MTLInputError(f"task {task!r}: invalid head {head}")
    return dict(heads)


class _SharedSegNet(nn.Module):
    """The shared SegNet encoder-decoder; `forward` returns every intermediate MTAN needs."""

    def __init__(self, filters: tuple[int, ...]) -> None:
        super().__init__()
        f = filters
        self.encoder_block = nn.ModuleList(
            [conv_block(3, f[0])] + [conv_block(f[i - 1], f[i]) for i in range(1, 5)]
        )
        self.decoder_block = nn.ModuleList(
            [conv_block(f[0], f[0])] + [conv_block(f[i], f[i - 1]) for i in range(1, 5)]
        )
        enc: list[nn.Module] = [conv_block(f[0], f[0]), conv_block(f[1], f[1])]
        dec: list[nn.Module] = [conv_block(f[0], f[0]), conv_block(f[0], f[0])]
        for i in range(2, 5):
            enc.append(nn.Sequential(conv_block(f[i], f[i]), conv_block(f[i], f[i])))
            dec.append(
                nn.Sequential(conv_block(f[i - 1], f[i - 1]), conv_block(f[i - 1], f[i - 1]))
            )
        self.conv_block_enc = nn.ModuleList(enc)
        self.conv_block_dec = nn.ModuleList(dec)

    def forward(self, x: Tensor) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        """Returns (encoder stage inputs' features, encoder stage outputs, unpooled decoder inputs,
        decoder stage outputs); decoder lists run from the deepest stage (index 0) to the top."""
        first, last, indices = [], [], []
        for i in range(5):
            a = self.encoder_block[i](x)
            b = self.conv_block_enc[i](a)
            x, idx = F.max_pool2d(b, kernel_size=2, stride=2, return_indices=True)
            first.append(a)
            last.append(b)
            indices.append(idx)
        unpooled, decoded = [], []
        for j in range(5):
            k = 4 - j
            up = F.max_unpool2d(
                x, indices[k], kernel_size=2, stride=2, output_size=last[k].shape[-2:]
            )
            x = self.conv_block_dec[k](self.decoder_block[k](up))
            unpooled.append(up)
            decoded.append(x)
        return first, last, unpooled, decoded


def _check_input(x: Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != 3:
        raise MTLInputError(f"SegNet expects images [B, 3, H, W], got {tuple(x.shape)}")
    if x.shape[-2] % DOWNSAMPLING or x.shape[-1] % DOWNSAMPLING:
        raise MTLInputError(
            f"SegNet needs H and W divisible by {DOWNSAMPLING} (five 2x2 poolings), got {tuple(x.shape[-2:])}"
        )


class SegNetMTAN(nn.Module):
    """SegNet-MTAN (Liu et al., CVPR 2019) with one attention branch and one head per task
    (module docstring). `forward(x)` returns `{task: prediction [B, C, H, W]}`."""

    def __init__(
        self, heads: Mapping[str, TaskHead], /, *, filters: Sequence[int] = SEGNET_FILTERS
    ) -> None:
        super().__init__()
        self.heads = _check_heads(heads)
        self.filters = f = _check_filters(filters)
        self.segnet = _SharedSegNet(f)
        # shared blocks of the attention branches (encoder: f_i -> f_{i+1}, last f4 -> f4)
        self.encoder_block_att = nn.ModuleList(
            [conv_block(f[i], f[min(i + 1, 4)]) for i in range(5)]
        )
        # decoder: f0 -> f0, f_i -> f_{i-1}; the last is f4 -> f3 (reference f4 -> f4 with f3 == f4)
        self.decoder_block_att = nn.ModuleList(
            [conv_block(f[0], f[0])] + [conv_block(f[i], f[i - 1]) for i in range(1, 5)]
        )
        self.encoder_att = nn.ModuleDict()
        self.decoder_att = nn.ModuleDict()
        for task in self.heads:
            self.encoder_att[task] = nn.ModuleList(
                [attention_block(f[0], f[0], f[0])]
                + [attention_block(2 * f[i], f[i], f[i]) for i in range(1, 5)]
            )
            self.decoder_att[task] = nn.ModuleList(
                [attention_block(2 * f[0], f[0], f[0])]
                + [attention_block(f[i] + f[i - 1], f[i - 1], f[i - 1]) for i in range(1, 5)]
            )
        self.pred = nn.ModuleDict(
            {task: prediction_head(f[0], head.channels) for task, head in self.heads.items()}
        )
        _initialise(self)

    def task_features(self, x: Tensor, /) -> dict[str, Tensor]:
        """Each task's attended features `[B, f0, H, W]` (the input of its head)."""
        _check_input(x)
        first, last, unpooled, decoded = self.segnet(x)
        features = {}
        for task in self.heads:
            enc_att, dec_att = self.encoder_att[task], self.decoder_att[task]
            a = None
            for k in range(5):
                mask = enc_att[k](first[0] if k == 0 else torch.cat((first[k], a), dim=1))
                a = F.max_pool2d(self.encoder_block_att[k](mask * last[k]), kernel_size=2, stride=2)
            for j in range(5):
                k = 4 - j
                a = F.interpolate(a, scale_factor=2, mode="bilinear", align_corners=True)
                a = self.decoder_block_att[k](a)
                mask = dec_att[k](torch.cat((unpooled[j], a), dim=1))
                a = mask * decoded[j]
            features[task] = a
        return features

    def forward(self, x: Tensor, /) -> dict[str, Tensor]:
        features = self.task_features(x)
        return {
            task: _finish(self.pred[task](features[task]), head.output)
            for task, head in self.heads.items()
        }

    def shared_parameters(self) -> list[nn.Parameter]:
        """Everything except the heads, attention modules included (spec dibs.md §6.2)."""
        heads = {id(p) for p in self.pred.parameters()}
        return [p for p in self.parameters() if id(p) not in heads]

    def task_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Each task's head ("pred") parameters."""
        return {task: list(self.pred[task].parameters()) for task in self.heads}


class SegNetSplit(nn.Module):
    """The split ("hard parameter sharing") SegNet: the shared encoder-decoder, then one head per
    task on its last features (reference `SegNetSplit`, type "standard"). Supports the
    representation ("MTL-R") mode: `encode(x)` is the shared `[B, f0, H, W]` feature map and
    `decode(features)` applies the heads."""

    def __init__(
        self, heads: Mapping[str, TaskHead], /, *, filters: Sequence[int] = SEGNET_FILTERS
    ) -> None:
        super().__init__()
        self.heads = _check_heads(heads)
        self.filters = f = _check_filters(filters)
        self.segnet = _SharedSegNet(f)
        self.pred = nn.ModuleDict(
            {task: prediction_head(f[0], head.channels) for task, head in self.heads.items()}
        )
        _initialise(self)

    def encode(self, x: Tensor, /) -> Tensor:
        _check_input(x)
        return self.segnet(x)[3][-1]

    def decode(self, features: Tensor, /) -> dict[str, Tensor]:
        return {
            task: _finish(self.pred[task](features), head.output)
            for task, head in self.heads.items()
        }

    def forward(self, x: Tensor, /) -> dict[str, Tensor]:
        return self.decode(self.encode(x))

    def shared_parameters(self) -> list[nn.Parameter]:
        """Everything except the heads."""
        heads = {id(p) for p in self.pred.parameters()}
        return [p for p in self.parameters() if id(p) not in heads]

    def task_parameters(self) -> dict[str, list[nn.Parameter]]:
        return {task: list(self.pred[task].parameters()) for task in self.heads}


def make_segnet(
    heads: Mapping[str, TaskHead],
    /,
    *,
    architecture: Literal["mtan", "split"] = "mtan",
    filters: Sequence[int] = SEGNET_FILTERS,
) -> nn.Module:
    """SegNet-MTAN ("mtan", as Nash-MTL/FAMO/DiBS-MTL v1) or the split SegNet ("split") with `heads`."""
    if architecture == "mtan":
        return SegNetMTAN(heads, filters=filters)
    if architecture == "split":
        return SegNetSplit(heads, filters=filters)
    raise MTLInputError(f"architecture must be 'mtan' or 'split', got {architecture!r}")


def parameter_count(model: nn.Module, /) -> dict[str, int]:
    """Total, shared and head parameter counts of a model with `shared_parameters()`."""
    total = sum(p.numel() for p in model.parameters())
    shared = sum(p.numel() for p in model.shared_parameters())  # type: ignore[operator]
    return {"total": total, "shared": shared, "heads": total - shared}
