"""P2Net: Parallel-Pyramid Net for top-down pose estimation (Section III-B, C of the P2Net/DA2 paper).

Reads top to bottom as the network runs: backbone pyramid (C2..C5 from any timm model), parallel fusion,
progressive fusion with intermediate heatmaps (the feature-extraction stage), then the refinement stage
(dilated bottlenecks + attention module at every level, concatenated at C2 resolution, one more dilated
bottleneck to the final heatmaps). The constructors and width presets come last.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PYRAMID_STRIDES = (4, 8, 16, 32)  # C2, C3, C4, C5
INPUT_MULTIPLE = 16  # C2..C4 must halve exactly; C5 may round (it is resampled by size, not by x2)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class P2NetOutput:
    heatmaps: Tensor  # [B, J, H/4, W/4] final refined heatmaps
    stage_heatmaps: list[
        Tensor
    ]  # feature-extraction outputs at C2, C3, C4, C5, each upsampled to [B, J, H/4, W/4]


def resample_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bring a feature map to `size`: bilinear upsampling, average pooling to go down, nothing if equal."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ConvBnAct(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> optional ReLU; padding keeps the resolution."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1, dilation: int = 1, act: bool = True) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_ch, out_ch, kernel, padding=dilation * (kernel - 1) // 2, dilation=dilation, bias=False
            ),
            nn.BatchNorm2d(out_ch),
        ]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class Bottleneck(nn.Module):
    """Residual 1x1 reduce -> 3x3 (dilated when dilation > 1) -> 1x1 expand; a 1x1 projection when widths differ."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, dilation: int = 1) -> None:
        super().__init__()
        self.reduce = ConvBnAct(in_ch, mid_ch, 1)
        self.spatial = ConvBnAct(mid_ch, mid_ch, 3, dilation=dilation)
        self.expand = ConvBnAct(mid_ch, out_ch, 1, act=False)
        self.shortcut = nn.Identity() if in_ch == out_ch else ConvBnAct(in_ch, out_ch, 1, act=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.expand(self.spatial(self.reduce(x))) + self.shortcut(x))


class DilatedBottleneck(Bottleneck):
    """The paper's Fig. 4(a): a bottleneck whose 3x3 conv is dilated (dilation 2) for a wider receptive field."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, dilation: int = 2) -> None:
        super().__init__(in_ch, mid_ch, out_ch, dilation=dilation)


class AttentionModule(nn.Module):
    """The paper's Fig. 4(b): global average pool -> 1x1 conv -> sigmoid, then reweight the input's channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weigh = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.weigh(F.adaptive_avg_pool2d(x, 1)))


class PyramidBackbone(nn.Module):
    """Any timm model as a C2..C5 pyramid: the four features at strides 4, 8, 16, 32 of its `feature_info`."""

    def __init__(self, name: str) -> None:
        super().__init__()
        import timm

        try:
            probe = timm.create_model(name, features_only=True, pretrained=False)
        except RuntimeError as e:  # timm says "Unknown model (...)"
            raise ValueError(f"backbone {name!r}: timm cannot build it ({e})") from None
        reductions = probe.feature_info.reduction()
        # the deepest feature at each stride: some families report several features at one stride
        indices = []
        for stride in PYRAMID_STRIDES:
            at_stride = [i for i, r in enumerate(reductions) if r == stride]
            if not at_stride:
                raise ValueError(
                    f"backbone {name!r}: timm reports feature strides {reductions}; P2Net needs 4, 8, 16 and 32"
                )
            indices.append(at_stride[-1])
        self.name = name
        self.out_indices = tuple(probe.feature_info.out_indices[i] for i in indices)
        self.body = timm.create_model(
            name, features_only=True, pretrained=False, out_indices=self.out_indices
        )
        self.channels: list[int] = list(self.body.feature_info.channels())
        cfg = getattr(self.body, "pretrained_cfg", None) or {}
        self.mean = tuple(cfg.get("mean", IMAGENET_MEAN))
        self.std = tuple(cfg.get("std", IMAGENET_STD))

    def forward(self, x: Tensor) -> list[Tensor]:
        return list(self.body(x))


class ParallelFusion(nn.Module):
    """Extra convs on C2 and C3; then at the C2, C3 and C4 resolutions every pyramid feature is resampled there,
    1x1-conv'd, summed, 1x1-conv'd again and added back to that level. C5 passes through unchanged."""

    def __init__(self, channels: list[int], fusion_channels: int, prep_reduction: int) -> None:
        super().__init__()
        self.prepare = nn.ModuleList(
            [Bottleneck(c, max(c // prep_reduction, 8), c) for c in channels[:2]]  # C2, C3 keep resolution
        )
        self.fused_levels = len(channels) - 1  # C2, C3, C4
        self.into_fusion = nn.ModuleList(
            [
                nn.ModuleList([ConvBnAct(c, fusion_channels, 1, act=False) for c in channels])
                for _ in range(self.fused_levels)
            ]
        )
        self.back_to_level = nn.ModuleList(
            [ConvBnAct(fusion_channels, channels[t], 1, act=False) for t in range(self.fused_levels)]
        )

    def forward(self, pyramid: list[Tensor]) -> list[Tensor]:
        feats = [prep(f) for prep, f in zip(self.prepare, pyramid)] + list(pyramid[len(self.prepare) :])
        out = []
        for t in range(self.fused_levels):
            size = tuple(feats[t].shape[-2:])
            fused = sum(conv(resample_to(f, size)) for conv, f in zip(self.into_fusion[t], feats))
            out.append(F.relu(feats[t] + self.back_to_level[t](F.relu(fused))))
        return out + feats[self.fused_levels :]


class ProgressiveFusion(nn.Module):
    """Top-down from C5: upsample x2 (to the next level's size), add the 1x1-conv'd parallel-fused feature.
    Each level also predicts intermediate heatmaps (the feature-extraction stage outputs, as CPN's GlobalNet)."""

    def __init__(self, channels: list[int], fusion_channels: int, num_joints: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList([ConvBnAct(c, fusion_channels, 1, act=False) for c in channels])
        self.heads = nn.ModuleList(
            [
                nn.Sequential(
                    ConvBnAct(fusion_channels, fusion_channels, 1),
                    nn.Conv2d(fusion_channels, num_joints, 3, padding=1),
                )
                for _ in channels
            ]
        )

    def forward(self, parallel: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        levels: list[Tensor] = [self.lateral[-1](parallel[-1])]
        for i in range(len(parallel) - 2, -1, -1):
            upsampled = resample_to(levels[0], tuple(parallel[i].shape[-2:]))
            levels.insert(0, upsampled + self.lateral[i](parallel[i]))
        c2_size = tuple(levels[0].shape[-2:])
        heatmaps = [resample_to(head(f), c2_size) for head, f in zip(self.heads, levels)]
        return levels, heatmaps


class Refinement(nn.Module):
    """Dilated bottleneck(s) + attention module at every level; C3..C5 upsampled to C2, concatenated, and one
    more dilated bottleneck -> final heatmaps."""

    def __init__(
        self, fusion_channels: int, refine_channels: int, refine_blocks: tuple[int, ...], num_joints: int
    ) -> None:
        super().__init__()
        self.levels = nn.ModuleList(
            [
                nn.Sequential(
                    *[DilatedBottleneck(fusion_channels, refine_channels, fusion_channels) for _ in range(n)],
                    AttentionModule(fusion_channels),
                )
                for n in refine_blocks
            ]
        )
        concat = fusion_channels * len(refine_blocks)
        self.final = DilatedBottleneck(concat, refine_channels, fusion_channels)
        self.predict = nn.Conv2d(fusion_channels, num_joints, 3, padding=1)

    def forward(self, levels: list[Tensor]) -> Tensor:
        c2_size = tuple(levels[0].shape[-2:])
        refined = [resample_to(block(f), c2_size) for block, f in zip(self.levels, levels)]
        return self.predict(self.final(torch.cat(refined, dim=1)))


class P2Net(nn.Module):
    """Parallel-Pyramid Net. Input: RGB images in [0, 1], [B, 3, H, W] with H, W multiples of 16; output
    heatmaps at H/4 x W/4. `config` holds the architecture kwargs: `build_p2net(**net.config)` rebuilds it."""

    def __init__(
        self,
        backbone: str = "resnet50",
        num_joints: int = 17,
        fusion_channels: int = 128,
        refine_channels: int = 64,
        pretrained_path: str | None = None,
        prep_reduction: int = 4,
        refine_blocks: tuple[int, ...] | list[int] = (1, 1, 1, 1),
    ) -> None:
        super().__init__()
        refine_blocks = tuple(int(n) for n in refine_blocks)
        if len(refine_blocks) != len(PYRAMID_STRIDES) or min(refine_blocks) < 0:
            raise ValueError(f"refine_blocks: need 4 non-negative block counts (C2..C5), got {refine_blocks}")
        for field, value in [
            ("num_joints", num_joints),
            ("fusion_channels", fusion_channels),
            ("refine_channels", refine_channels),
            ("prep_reduction", prep_reduction),
        ]:
            if int(value) < 1:
                raise ValueError(f"{field}: must be a positive integer, got {value!r}")
        # the weights file is not architecture: it stays out of `config` so checkpoints rebuild anywhere
        self.config: dict[str, Any] = {
            "backbone": backbone,
            "num_joints": int(num_joints),
            "fusion_channels": int(fusion_channels),
            "refine_channels": int(refine_channels),
            "prep_reduction": int(prep_reduction),
            "refine_blocks": list(refine_blocks),
        }
        self.backbone = PyramidBackbone(backbone)
        channels = self.backbone.channels
        self.parallel_fusion = ParallelFusion(channels, fusion_channels, prep_reduction)
        self.progressive_fusion = ProgressiveFusion(channels, fusion_channels, num_joints)
        self.refinement = Refinement(fusion_channels, refine_channels, refine_blocks, num_joints)
        self.register_buffer(
            "pixel_mean", torch.tensor(self.backbone.mean).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer("pixel_std", torch.tensor(self.backbone.std).view(1, 3, 1, 1), persistent=False)
        self._init_head_weights()
        if pretrained_path is not None:
            from pose_models.weights import load_backbone_weights

            load_backbone_weights(self.backbone.body, pretrained_path, backbone)

    def _init_head_weights(self) -> None:
        for name, module in self.named_modules():
            if name.startswith("backbone"):
                continue
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # heatmap predictors start near zero, as the Gaussian targets are mostly zero
        predictors = [head[-1] for head in self.progressive_fusion.heads] + [self.refinement.predict]
        for conv in predictors:
            nn.init.normal_(conv.weight, std=0.001)

    def forward(self, images: Tensor) -> P2NetOutput:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"P2Net expects images [B, 3, H, W], got shape {list(images.shape)}")
        h, w = images.shape[-2:]
        if h % INPUT_MULTIPLE or w % INPUT_MULTIPLE:
            raise ValueError(
                f"P2Net input height and width must be multiples of {INPUT_MULTIPLE}, got {h}x{w} "
                f"(e.g. 64x48, 128x96, 256x192, 384x288)"
            )
        x = (images - self.pixel_mean) / self.pixel_std
        pyramid = self.backbone(x)
        parallel = self.parallel_fusion(pyramid)
        levels, stage_heatmaps = self.progressive_fusion(parallel)
        heatmaps = self.refinement(levels)
        return P2NetOutput(heatmaps=heatmaps, stage_heatmaps=stage_heatmaps)


# Widths: "paper-*" land within 10% of the paper's R101 figures at 384x288 (42.5 M params, 26.3 GMACs);
# "cpu-tiny" trains on 2 CPU cores at 64x48 .. 128x96: ResNet-10-T (timm's resnet10t, a three-conv stem and one
# block per stage): with these widths about 1.7x the steps/s of ResNet-18 (0.95 against 1.63 s per step with
# evaluations, two runs side by side, 1 thread each) and faster to learn per step on SynthPose
# (benchmarks/results/calibrate_cpu.json).
PAPER_WIDTHS: dict[str, Any] = {
    "fusion_channels": 128,
    "refine_channels": 64,
    "prep_reduction": 4,
    "refine_blocks": [1, 1, 1, 1],
}
PRESETS: dict[str, dict[str, Any]] = {
    "paper-r50": {"backbone": "resnet50", **PAPER_WIDTHS},
    "paper-r101": {"backbone": "resnet101", **PAPER_WIDTHS},
    "paper-r152": {"backbone": "resnet152", **PAPER_WIDTHS},
    "cpu-tiny": {
        "backbone": "resnet10t",
        "fusion_channels": 32,
        "refine_channels": 16,
        "prep_reduction": 4,
        "refine_blocks": [1, 1, 1, 1],
    },
}


def build_p2net(preset: str | None = None, **kwargs: Any) -> P2Net:
    """A P2Net from a preset name (see PRESETS) and/or explicit kwargs; kwargs override the preset."""
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"preset {preset!r}: unknown, choose one of {sorted(PRESETS)}")
        kwargs = {**PRESETS[preset], **kwargs}
    return P2Net(**kwargs)
