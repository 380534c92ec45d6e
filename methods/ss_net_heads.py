"""SS-Net's projection, prediction and selector heads: small MLPs on single voxel embeddings (docs/method.md)."""
from __future__ import annotations

from torch import Tensor, nn

HEAD_DIM = 32


def mlp_head(in_dim: int, out_dim: int, activation: nn.Module) -> nn.Sequential:
    """Linear(in→32) → BatchNorm1d(32) → activation → Linear(32→out); indices 0..3 as in the official keys.
    The activation runs in place (BatchNorm's backward does not read its output): one (N, 32) tensor less."""
    return nn.Sequential(nn.Linear(in_dim, HEAD_DIM), nn.BatchNorm1d(HEAD_DIM), activation,
                         nn.Linear(HEAD_DIM, out_dim))


class SSNetHeads(nn.Module):
    """SS-Net's heads on voxel embeddings (N, dim): projection g (features → 32), prediction h (32 → 32), and per
    class c a feature selector S_c and a memory selector S^mem_c (32 → 1 logit), registered under the official
    names `contrastive_class_selector_{c}` and `contrastive_class_selector_memory{c}`."""

    def __init__(self, feature_channels: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.projection_head = mlp_head(feature_channels, HEAD_DIM, nn.ReLU(inplace=True))
        self.prediction_head = mlp_head(HEAD_DIM, HEAD_DIM, nn.ReLU(inplace=True))
        for prefix in ("contrastive_class_selector_", "contrastive_class_selector_memory"):
            for c in range(num_classes):
                self.add_module(f"{prefix}{c}", mlp_head(HEAD_DIM, 1, nn.LeakyReLU(0.2, inplace=True)))

    def embed(self, features: Tensor) -> Tensor:
        """h(g(one row per voxel of the (B, C, *spatial) features)): the embedding the separation loss compares."""
        return self.prediction_head(self.projection_head(voxel_vectors(features)))

    def feature_selector(self, class_index: int) -> nn.Module:
        return getattr(self, f"contrastive_class_selector_{self._checked_class(class_index)}")

    def memory_selector(self, class_index: int) -> nn.Module:
        return getattr(self, f"contrastive_class_selector_memory{self._checked_class(class_index)}")

    def _checked_class(self, class_index: int) -> int:
        if not 0 <= class_index < self.num_classes:
            raise IndexError(f"class index {class_index} out of range for num_classes={self.num_classes}")
        return class_index


def voxel_vectors(features: Tensor) -> Tensor:
    """(B, C, *spatial) -> (B * voxels, C): one row per voxel, ordered like labels.reshape(-1)."""
    return features.movedim(1, -1).reshape(-1, features.shape[1])
