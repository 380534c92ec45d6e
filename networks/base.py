"""Base class of the segmentation networks: the encoder-decoder contract, input checks, self-description.

A network is only the segmentation backbone (encoder, decoder, the options some baselines need). What a
training method adds on top (SS-Net's projection / prediction / selector heads) belongs to the method
(methods/ss_net.py); networks/loading.py maps the official checkpoints, which store both in one state dict.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from .output import NetworkOutput


class SegmentationNetwork(nn.Module):
    """Encoder–decoder segmentation backbone.

    Subclasses build `encoder` (input → list of feature maps, shallow to deep) and `decoder`
    (feature list → DecoderOutput) and pass them here; the names keep the official state-dict keys
    (`encoder.*`, `decoder.*`). `extra_decoders` (MC-Net) are registered as `decoder2`, `decoder3`, ...
    """

    name: ClassVar[str]  # registry name used by build_network
    size_divisor: ClassVar[int] = 16  # four 2× downsamplings
    compiled: bool = False  # set by networks.speed.compile_network: calling submodules directly bypasses it

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        *,
        in_channels: int,
        num_classes: int,
        feature_channels: int,
        spatial_dims: int,
        extra_decoders: Sequence[nn.Module] = (),
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background + foreground), got {num_classes}")
        self.encoder = encoder
        self.decoder = decoder
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.feature_channels = feature_channels
        self.spatial_dims = spatial_dims
        self.num_decoders = 1 + len(extra_decoders)
        for index, extra in enumerate(extra_decoders, start=2):
            self.add_module(f"decoder{index}", extra)

    # -- segmentation path ------------------------------------------------------------------------
    def forward(self, image: torch.Tensor) -> NetworkOutput:
        """image (B, in_channels, *spatial) with every spatial size divisible by 16 → NetworkOutput."""
        self.check_input(image)
        return self.decode(self.encoder(image))

    def decode(self, encoded: list[torch.Tensor]) -> NetworkOutput:
        """The decoder(s) on the encoder's outputs."""
        main = self.decoder(encoded)
        extra = tuple(getattr(self, f"decoder{i}")(encoded).logits for i in range(2, self.num_decoders + 1))
        return NetworkOutput(main.logits, main.features, main.sdf, main.aux_logits, extra)

    def check_input(self, image: torch.Tensor) -> None:
        """Raise ValueError naming the shape and the rule when `image` cannot pass through the network."""
        expected_ndim = self.spatial_dims + 2
        layout = "(B, C, D, H, W)" if self.spatial_dims == 3 else "(B, C, H, W)"
        shape = tuple(image.shape)
        net = type(self).__name__
        if image.ndim != expected_ndim:
            raise ValueError(f"{net} expects a {expected_ndim}-D input {layout}, got shape {shape}")
        if shape[1] != self.in_channels:
            raise ValueError(f"{net} was built with in_channels={self.in_channels}, got input shape {shape}")
        spatial = shape[2:]
        if any(s % self.size_divisor for s in spatial):
            padded = tuple(-(-s // self.size_divisor) * self.size_divisor for s in spatial)
            raise ValueError(
                f"{net} needs every spatial size divisible by {self.size_divisor} "
                f"(four 2x downsamplings); got input shape {shape}. Pad the spatial sizes {spatial} to "
                f"{padded} first (e.g. torch.nn.functional.pad), or use sliding-window inference."
            )

    # -- self-description stored in checkpoints ---------------------------------------------------
    def network_kwargs(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this architecture (subclasses override)."""
        raise NotImplementedError

    def network_config(self) -> dict[str, Any]:
        """`{"name", "kwargs"}`; `build_network(cfg["name"], **cfg["kwargs"])` rebuilds this architecture."""
        return {"name": self.name, "kwargs": self.network_kwargs()}
