"""2-D U-Net used for ACDC (docs/method.md §2): LeakyReLU(0.01), BatchNorm2d, encoder dropout, concatenating skips.

Tensors are (B, C, H, W). Submodule names reproduce the official state-dict keys
(`encoder.in_conv.conv_conv.0.weight`, `encoder.down1.maxpool_conv.1.conv_conv.4.weight`,
`decoder.up1.conv1x1.weight`, `decoder.up1.conv.conv_conv.0.weight`, `decoder.out_conv.weight`, ...).
Options for the baselines (all off by default, leaving the official keys untouched): a tanh signed-distance
head (`sdf_head`), pyramid outputs (`deep_supervision`) and extra decoders that up-sample differently
(`num_decoders`).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import SegmentationNetwork
from .output import DecoderOutput
from .perturbations import pyramid_logits

NUM_LEVELS = 5
# up-sampling of decoder 1, 2, 3 (MC-Net 2-D: bilinear, then transposed conv, then nearest)
UNET_UPSAMPLING = ("bilinear", "transposed", "nearest")


def unet_channels(base_filters: int) -> list[int]:
    """The U-Net's channels per level for a first-level width (16 -> the paper's 16, 32, 64, 128, 256)."""
    return [base_filters * 2**level for level in range(NUM_LEVELS)]


class ConvBlock(nn.Module):
    """3×3 conv → BN → LeakyReLU(0.01) → Dropout(p) → 3×3 conv → BN → LeakyReLU(0.01); keeps H, W."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        self.conv_conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(0.01),
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(0.01),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_conv(x)


class DownBlock(nn.Module):
    """2×2 max-pool (halves H, W) → ConvBlock."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), ConvBlock(in_channels, out_channels, dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


class UpBlock(nn.Module):
    """deep (B, Cd, h, w), skip (B, Cs, 2h, 2w) → (B, Cs, 2h, 2w).

    1×1 conv Cd→Cs, bilinear ×2 upsampling (align_corners=True), concat [skip, up], ConvBlock(2·Cs→Cs, p=0).
    upsampling="nearest": the same with nearest interpolation; "transposed": a 2×2 stride-2 transposed conv
    Cd→Cs (`up`) replaces 1×1 conv + interpolation (MC-Net's second decoder).
    """

    def __init__(self, deep_channels: int, skip_channels: int, upsampling: str = "bilinear") -> None:
        super().__init__()
        if upsampling not in UNET_UPSAMPLING:
            raise ValueError(f"unknown U-Net up-sampling {upsampling!r}; choose from: {', '.join(UNET_UPSAMPLING)}")
        self.upsampling = upsampling
        if upsampling == "transposed":
            self.up = nn.ConvTranspose2d(deep_channels, skip_channels, 2, stride=2)
        else:
            self.conv1x1 = nn.Conv2d(deep_channels, skip_channels, 1)
        self.conv = ConvBlock(2 * skip_channels, skip_channels, 0.0)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.upsampling == "transposed":
            up = self.up(deep)
        elif self.upsampling == "nearest":
            up = F.interpolate(self.conv1x1(deep), scale_factor=2, mode="nearest")
        else:
            up = F.interpolate(self.conv1x1(deep), scale_factor=2, mode="bilinear", align_corners=True)
        return self.conv(torch.cat([skip, up], dim=1))


class UNetEncoder(nn.Module):
    """(B, in, H, W) → [e0 (c0, 1), e1 (c1, ½), e2 (c2, ¼), e3 (c3, ⅛), e4 (c4, 1/16)]."""

    def __init__(self, in_channels: int, channels: Sequence[int], dropout: Sequence[float]) -> None:
        super().__init__()
        self.in_conv = ConvBlock(in_channels, channels[0], dropout[0])
        self.down1 = DownBlock(channels[0], channels[1], dropout[1])
        self.down2 = DownBlock(channels[1], channels[2], dropout[2])
        self.down3 = DownBlock(channels[2], channels[3], dropout[3])
        self.down4 = DownBlock(channels[3], channels[4], dropout[4])

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        e0 = self.in_conv(image)
        e1 = self.down1(e0)
        e2 = self.down2(e1)
        e3 = self.down3(e2)
        return [e0, e1, e2, e3, self.down4(e3)]


class UNetDecoder(nn.Module):
    """[e0..e4] → (logits (B, C, H, W) from a 3×3 conv, embedding (B, c0, H, W)); no dropout on the embedding.

    Options: `sdf_head` adds `sdf_conv` (3×3, c0 → C-1, tanh: the level-set head of DTC / SASSNet);
    `deep_supervision` adds `aux_conv1..3` (3×3 on the outputs of up3, up2, up1, nearest up-sampling, as
    URPC's 2-D network); `upsampling` picks the up blocks (MC-Net's decoders).
    """

    def __init__(
        self,
        num_classes: int,
        channels: Sequence[int],
        *,
        upsampling: str = "bilinear",
        sdf_head: bool = False,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        self.up1 = UpBlock(channels[4], channels[3], upsampling)
        self.up2 = UpBlock(channels[3], channels[2], upsampling)
        self.up3 = UpBlock(channels[2], channels[1], upsampling)
        self.up4 = UpBlock(channels[1], channels[0], upsampling)
        self.out_conv = nn.Conv2d(channels[0], num_classes, 3, padding=1)
        self.sdf_conv = nn.Conv2d(channels[0], num_classes - 1, 3, padding=1) if sdf_head else None
        self.deep_supervision = deep_supervision
        if deep_supervision:
            self.aux_conv1 = nn.Conv2d(channels[1], num_classes, 3, padding=1)
            self.aux_conv2 = nn.Conv2d(channels[2], num_classes, 3, padding=1)
            self.aux_conv3 = nn.Conv2d(channels[3], num_classes, 3, padding=1)

    def forward(self, features: list[torch.Tensor]) -> DecoderOutput:
        e0, e1, e2, e3, e4 = features
        d3 = self.up1(e4, e3)
        d2 = self.up2(d3, e2)
        d1 = self.up3(d2, e1)
        embedding = self.up4(d1, e0)
        sdf = torch.tanh(self.sdf_conv(embedding)) if self.sdf_conv is not None else None
        aux: tuple[torch.Tensor, ...] = ()
        if self.deep_supervision:
            aux = pyramid_logits([d1, d2, d3], [self.aux_conv1, self.aux_conv2, self.aux_conv3],
                                 embedding.shape[2:], "nearest", self.training)
        return DecoderOutput(self.out_conv(embedding), embedding, sdf, aux)


class UNet(SegmentationNetwork):
    """U-Net for 2-D slices (B, in_channels, H, W).

    The paper's ACDC network is UNet(1, 4): 1,813,764 parameters (1,826,828 with SS-Net's heads). `dropout`
    holds the element-wise dropout rate inside each of the five encoder blocks (the decoder uses none).
    Baseline options (see
    NetworkOutput): `sdf_head`, `deep_supervision`, `num_decoders` (2 = MC-Net: decoder2 up-samples with
    transposed convs instead of the main decoder's 1×1 conv + bilinear interpolation).
    """

    name = "unet"

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 4,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        dropout: Sequence[float] = (0.05, 0.1, 0.2, 0.3, 0.5),
        sdf_head: bool = False,
        deep_supervision: bool = False,
        num_decoders: int = 1,
    ) -> None:
        if len(channels) != NUM_LEVELS or len(dropout) != NUM_LEVELS:
            raise ValueError(
                f"UNet has {NUM_LEVELS} levels: channels and dropout need {NUM_LEVELS} entries each, "
                f"got channels={tuple(channels)}, dropout={tuple(dropout)}"
            )
        if not 1 <= num_decoders <= len(UNET_UPSAMPLING):
            raise ValueError(f"num_decoders must be 1..{len(UNET_UPSAMPLING)} (one per up-sampling kind: "
                             f"{', '.join(UNET_UPSAMPLING)}), got {num_decoders}")
        super().__init__(
            UNetEncoder(in_channels, channels, dropout),
            UNetDecoder(num_classes, channels, sdf_head=sdf_head, deep_supervision=deep_supervision),
            in_channels=in_channels,
            num_classes=num_classes,
            feature_channels=channels[0],
            spatial_dims=2,
            extra_decoders=[UNetDecoder(num_classes, channels, upsampling=mode)
                            for mode in UNET_UPSAMPLING[1:num_decoders]],
        )
        self.sdf_head = sdf_head
        self.deep_supervision = deep_supervision
        self.channels = tuple(int(c) for c in channels)
        self.dropout_rates = tuple(float(p) for p in dropout)

    def network_kwargs(self) -> dict[str, Any]:
        return {
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "channels": list(self.channels),
            "dropout": list(self.dropout_rates),
            "sdf_head": self.sdf_head,
            "deep_supervision": self.deep_supervision,
            "num_decoders": self.num_decoders,
        }
