"""3-D V-Net used for LA (docs/method.md §2): plain encoder–decoder, BatchNorm3d, ReLU, additive skips.

Tensors are (B, C, D, H, W); the network does not care which physical axis each spatial dim is (the LA volumes
are stored (W, H, D) and fed in that order). Submodule names reproduce the official state-dict keys
(`encoder.block_one.conv.0.weight`, `decoder.block_five_up.conv.0.weight`, `decoder.out_conv.weight`, ...).
Options for the baselines (all off by default, leaving the official keys untouched): a tanh signed-distance
head (`sdf_head`), pyramid outputs (`deep_supervision`) and extra decoders that up-sample differently
(`num_decoders`).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import SegmentationNetwork
from .output import DecoderOutput
from .perturbations import pyramid_logits

# up-sampling of decoder 1, 2, 3 (MC-Net: transposed conv, then trilinear, then nearest interpolation + conv)
VNET_UPSAMPLING = ("transposed", "trilinear", "nearest")


def _conv_bn_relu(conv: nn.Module, out_channels: int) -> list[nn.Module]:
    return [conv, nn.BatchNorm3d(out_channels), nn.ReLU(inplace=True)]


class ConvStage(nn.Module):
    """n × [3×3×3 conv (pad 1) → BN → ReLU]; keeps the spatial size. Keys: conv.{3i}, conv.{3i+1}."""

    def __init__(self, num_convs: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(num_convs):
            conv_in = in_channels if i == 0 else out_channels
            layers += _conv_bn_relu(nn.Conv3d(conv_in, out_channels, 3, padding=1), out_channels)
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class DownStage(nn.Module):
    """2×2×2 conv, stride 2 → BN → ReLU: halves every spatial size."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            *_conv_bn_relu(nn.Conv3d(in_channels, out_channels, 2, stride=2), out_channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UpStage(nn.Module):
    """2×2×2 transposed conv, stride 2 → BN → ReLU: doubles every spatial size."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            *_conv_bn_relu(nn.ConvTranspose3d(in_channels, out_channels, 2, stride=2), out_channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class InterpolationUpStage(nn.Module):
    """×2 interpolation (trilinear or nearest) → 3×3×3 conv (pad 1) → BN → ReLU: MC-Net's second/third decoder.

    Trilinear with align_corners=True, as MC-Net's `Upsampling_function` (ycwu1997/MC-Net `code/networks/VNet.py:102`).
    """

    def __init__(self, in_channels: int, out_channels: int, mode: str) -> None:
        super().__init__()
        align = {} if mode == "nearest" else {"align_corners": True}
        self.conv = nn.Sequential(
            nn.Upsample(scale_factor=2, mode=mode, **align),
            *_conv_bn_relu(nn.Conv3d(in_channels, out_channels, 3, padding=1), out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _up_stage(in_channels: int, out_channels: int, upsampling: str) -> nn.Module:
    if upsampling == "transposed":
        return UpStage(in_channels, out_channels)
    if upsampling in ("trilinear", "nearest"):
        return InterpolationUpStage(in_channels, out_channels, upsampling)
    raise ValueError(f"unknown V-Net up-sampling {upsampling!r}; choose from: {', '.join(VNET_UPSAMPLING)}")


class VNetEncoder(nn.Module):
    """(B, in, D, H, W) → [x1 (f, 1), x2 (2f, ½), x3 (4f, ¼), x4 (8f, ⅛), x5 (16f, 1/16)], f = base_filters.

    x5 goes through Dropout3d(0.5) when built with dropout=True (active in train mode only).
    """

    def __init__(self, in_channels: int, base_filters: int, dropout: bool) -> None:
        super().__init__()
        f = base_filters
        self.block_one = ConvStage(1, in_channels, f)
        self.block_one_dw = DownStage(f, 2 * f)
        self.block_two = ConvStage(2, 2 * f, 2 * f)
        self.block_two_dw = DownStage(2 * f, 4 * f)
        self.block_three = ConvStage(3, 4 * f, 4 * f)
        self.block_three_dw = DownStage(4 * f, 8 * f)
        self.block_four = ConvStage(3, 8 * f, 8 * f)
        self.block_four_dw = DownStage(8 * f, 16 * f)
        self.block_five = ConvStage(3, 16 * f, 16 * f)
        self.dropout = nn.Dropout3d(0.5) if dropout else nn.Identity()

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        return self.finish(self.trunk(image))

    def trunk(self, image: torch.Tensor) -> list[torch.Tensor]:
        """[x1, x2, x3, x4, block five's output before its dropout]: everything before the first random draw."""
        x1 = self.block_one(image)
        x2 = self.block_two(self.block_one_dw(x1))
        x3 = self.block_three(self.block_two_dw(x2))
        x4 = self.block_four(self.block_three_dw(x3))
        return [x1, x2, x3, x4, self.block_five(self.block_four_dw(x4))]

    def finish(self, trunk: list[torch.Tensor]) -> list[torch.Tensor]:
        """The trunk's stages with block five's dropout applied: the encoder's output."""
        x1, x2, x3, x4, x5 = trunk
        return [x1, x2, x3, x4, self.dropout(x5)]


def _add_skip(up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """up + skip. Without autograd (evaluation) the sum goes into `up`, the up-stage's fresh output: one
    full-size activation less to allocate and fault in per stage, the same values bit for bit."""
    return up + skip if torch.is_grad_enabled() else up.add_(skip)


class VNetDecoder(nn.Module):
    """[x1..x5] → (logits (B, C, D, H, W), embedding x9 (B, f, D, H, W)); skips are added, not concatenated.

    The embedding is x9 after Dropout3d(0.5) (dropout=True, train mode): exactly what the classifier sees.
    Options: `sdf_head` adds `sdf_conv` (1×1×1, f → C-1, tanh: DTC's / SASSNet's level-set head on x9);
    `deep_supervision` adds `aux_conv1..3` (1×1×1 on the outputs of block_eight, block_seven, block_six,
    trilinear up-sampling, as URPC's 3-D network); `upsampling` picks the up stages (MC-Net's decoders).
    """

    def __init__(
        self,
        num_classes: int,
        base_filters: int,
        dropout: bool,
        *,
        upsampling: str = "transposed",
        sdf_head: bool = False,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        f = base_filters
        self.block_five_up = _up_stage(16 * f, 8 * f, upsampling)
        self.block_six = ConvStage(3, 8 * f, 8 * f)
        self.block_six_up = _up_stage(8 * f, 4 * f, upsampling)
        self.block_seven = ConvStage(3, 4 * f, 4 * f)
        self.block_seven_up = _up_stage(4 * f, 2 * f, upsampling)
        self.block_eight = ConvStage(2, 2 * f, 2 * f)
        self.block_eight_up = _up_stage(2 * f, f, upsampling)
        self.block_nine = ConvStage(1, f, f)
        self.out_conv = nn.Conv3d(f, num_classes, 1)
        self.dropout = nn.Dropout3d(0.5) if dropout else nn.Identity()
        self.sdf_conv = nn.Conv3d(f, num_classes - 1, 1) if sdf_head else None
        self.deep_supervision = deep_supervision
        if deep_supervision:
            self.aux_conv1 = nn.Conv3d(2 * f, num_classes, 1)
            self.aux_conv2 = nn.Conv3d(4 * f, num_classes, 1)
            self.aux_conv3 = nn.Conv3d(8 * f, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> DecoderOutput:
        x1, x2, x3, x4, x5 = features
        x6 = self.block_six(_add_skip(self.block_five_up(x5), x4))
        x7 = self.block_seven(_add_skip(self.block_six_up(x6), x3))
        x8 = self.block_eight(_add_skip(self.block_seven_up(x7), x2))
        x9 = self.dropout(self.block_nine(_add_skip(self.block_eight_up(x8), x1)))
        sdf = torch.tanh(self.sdf_conv(x9)) if self.sdf_conv is not None else None
        aux: tuple[torch.Tensor, ...] = ()
        if self.deep_supervision:
            aux = pyramid_logits([x8, x7, x6], [self.aux_conv1, self.aux_conv2, self.aux_conv3], x9.shape[2:],
                                 "trilinear", self.training)
        return DecoderOutput(self.out_conv(x9), x9, sdf, aux)


class VNet(SegmentationNetwork):
    """V-Net for 3-D volumes (B, in_channels, D, H, W).

    The paper's LA network is VNet(1, 2, 16, dropout=True): 9,448,866 parameters (9,457,318 with SS-Net's
    heads). `dropout` only switches the two Dropout3d layers (no parameters), so state dicts load across
    dropout=True/False. Baseline options
    (see NetworkOutput): `sdf_head`, `deep_supervision`, `num_decoders` (2 = MC-Net: decoder2 up-samples
    trilinearly + conv instead of the transposed conv of the main decoder).
    """

    name = "vnet"

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        base_filters: int = 16,
        dropout: bool = True,
        sdf_head: bool = False,
        deep_supervision: bool = False,
        num_decoders: int = 1,
    ) -> None:
        if not 1 <= num_decoders <= len(VNET_UPSAMPLING):
            raise ValueError(f"num_decoders must be 1..{len(VNET_UPSAMPLING)} (one per up-sampling kind: "
                             f"{', '.join(VNET_UPSAMPLING)}), got {num_decoders}")
        super().__init__(
            VNetEncoder(in_channels, base_filters, dropout),
            VNetDecoder(num_classes, base_filters, dropout, sdf_head=sdf_head, deep_supervision=deep_supervision),
            in_channels=in_channels,
            num_classes=num_classes,
            feature_channels=base_filters,
            spatial_dims=3,
            extra_decoders=[VNetDecoder(num_classes, base_filters, dropout, upsampling=mode)
                            for mode in VNET_UPSAMPLING[1:num_decoders]],
        )
        self.base_filters = base_filters
        self.use_dropout = dropout
        self.sdf_head = sdf_head
        self.deep_supervision = deep_supervision

    def network_kwargs(self) -> dict[str, Any]:
        return {
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "base_filters": self.base_filters,
            "dropout": self.use_dropout,
            "sdf_head": self.sdf_head,
            "deep_supervision": self.deep_supervision,
            "num_decoders": self.num_decoders,
        }
