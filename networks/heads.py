"""Base class of the segmentation networks: input checks, `forward` contract and the SS-Net heads.

The heads act on individual voxel embeddings, i.e. on 2-D tensors (N, dim). They are registered at the
top level under the official SS-Net state-dict names, so released checkpoints load without renaming:
`projection_head`, `prediction_head`, `contrastive_class_selector_{c}` and
`contrastive_class_selector_memory{c}` (no underscore before the index in the memory name).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from .output import NetworkOutput

HEAD_DIM = 32


def mlp_head(in_dim: int, out_dim: int, activation: nn.Module) -> nn.Sequential:
    """Linear(in→32) → BatchNorm1d(32) → activation → Linear(32→out); indices 0..3 as in the official keys."""
    return nn.Sequential(
        nn.Linear(in_dim, HEAD_DIM), nn.BatchNorm1d(HEAD_DIM), activation, nn.Linear(HEAD_DIM, out_dim)
    )


class SegmentationNetwork(nn.Module):
    """Encoder–decoder backbone plus the SS-Net heads.

    Subclasses build `encoder` (input → list of feature maps, shallow to deep) and `decoder`
    (feature list → DecoderOutput) and pass them here; registering them before the heads keeps the
    state-dict order of the official checkpoints (encoder, decoder, heads). `extra_decoders` (MC-Net) are
    registered after the heads as `decoder2`, `decoder3`, ..., so without them nothing changes.
    """

    name: ClassVar[str]  # registry name used by build_network
    size_divisor: ClassVar[int] = 16  # four 2× downsamplings

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
        self.head_dim = HEAD_DIM
        self.spatial_dims = spatial_dims
        self.projection_head = mlp_head(feature_channels, HEAD_DIM, nn.ReLU())
        self.prediction_head = mlp_head(HEAD_DIM, HEAD_DIM, nn.ReLU())
        for prefix in ("contrastive_class_selector_", "contrastive_class_selector_memory"):
            for c in range(num_classes):
                self.add_module(f"{prefix}{c}", mlp_head(HEAD_DIM, 1, nn.LeakyReLU(0.2)))
        self.num_decoders = 1 + len(extra_decoders)
        for index, extra in enumerate(extra_decoders, start=2):
            self.add_module(f"decoder{index}", extra)

    # -- segmentation path ------------------------------------------------------------------------
    def forward(self, image: torch.Tensor) -> NetworkOutput:
        """image (B, in_channels, *spatial) with every spatial size divisible by 16 → NetworkOutput."""
        self.check_input(image)
        encoded = self.encoder(image)
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

    # -- SS-Net heads on (N, dim) voxel vectors ---------------------------------------------------
    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Projection head g: (N, feature_channels) → (N, 32)."""
        return self.projection_head(features)

    def predict(self, projected: torch.Tensor) -> torch.Tensor:
        """Prediction head h: (N, 32) → (N, 32)."""
        return self.prediction_head(projected)

    def feature_selector(self, class_index: int) -> nn.Module:
        """Selector S_c for current-batch vectors: (N, 32) → (N, 1) logits (the caller applies sigmoid)."""
        return getattr(self, f"contrastive_class_selector_{self._checked_class(class_index)}")

    def memory_selector(self, class_index: int) -> nn.Module:
        """Selector S^mem_c for memory prototypes: (N, 32) → (N, 1) logits (the caller applies sigmoid)."""
        return getattr(self, f"contrastive_class_selector_memory{self._checked_class(class_index)}")

    def _checked_class(self, class_index: int) -> int:
        if not 0 <= class_index < self.num_classes:
            raise IndexError(f"class index {class_index} out of range for num_classes={self.num_classes}")
        return class_index

    # -- self-description stored in checkpoints ---------------------------------------------------
    def network_kwargs(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this architecture (subclasses override)."""
        raise NotImplementedError

    def network_config(self) -> dict[str, Any]:
        """`{"name", "kwargs"}`; `build_network(cfg["name"], **cfg["kwargs"])` rebuilds this architecture."""
        return {"name": self.name, "kwargs": self.network_kwargs()}
