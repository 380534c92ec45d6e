"""Flip test-time augmentation as a drop-in network."""
from __future__ import annotations

from itertools import combinations

import torch
from torch import nn


class FlipTTA(nn.Module):
    """Averages softmax over every combination of flips of the spatial axes; returns log-probabilities as
    logits, so the sliding window's softmax (and the 2-D argmax) see the averaged probabilities."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network
        # what the predictor reads from a network
        self.num_classes = getattr(network, "num_classes", None)
        self.in_channels = getattr(network, "in_channels", None)
        self.spatial_dims = getattr(network, "spatial_dims", None)

    def forward(self, x: torch.Tensor):
        axes = list(range(2, x.ndim))
        flips = [list(c) for r in range(len(axes) + 1) for c in combinations(axes, r)]
        probs = sum(torch.softmax(self.network(x.flip(f) if f else x)[0], 1).flip(f) if f
                    else torch.softmax(self.network(x)[0], 1) for f in flips) / len(flips)
        return torch.log(probs.clamp_min(1e-12)), None
