"""Feature perturbations and the pyramid (deep-supervision) outputs used by URPC.

URPC (Luo et al., MICCAI 2021 / MedIA 2022; public recipe: SSL4MIS `UNet_URPC`, `code/networks/unet.py:209-301`)
perturbs the input of each auxiliary classifier differently during training, so the pyramid predictions disagree
where the model is unsure: element-wise dropout (p = 0.5) on the deepest stage (`F.dropout`; it was channel
dropout in SSL4MIS until Dec 2021), attention-based feature dropout on the middle one, multiplicative uniform
noise (±0.3) on the shallowest. The decoder itself continues with the unperturbed features. All randomness comes
from torch's generator (SSL4MIS draws the feature-dropout fraction with NumPy), so a seeded run is reproducible.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

FEATURE_DROPOUT_RANGE = (0.7, 0.9)  # threshold = max(channel-mean attention) x U(0.7, 0.9)
FEATURE_NOISE_RANGE = 0.3  # x + x * U(-0.3, 0.3), one noise map shared by the batch
DROPOUT = 0.5


def element_dropout(x: torch.Tensor, p: float = DROPOUT) -> torch.Tensor:
    """Element-wise dropout of (B, C, *spatial) with 1/(1-p) scaling (called in training only)."""
    return F.dropout(x, p, training=True)


def feature_dropout(x: torch.Tensor, low: float = FEATURE_DROPOUT_RANGE[0],
                    high: float = FEATURE_DROPOUT_RANGE[1]) -> torch.Tensor:
    """Zero the most activated locations: where the channel-mean exceeds a random fraction of its maximum."""
    attention = x.mean(dim=1, keepdim=True)  # (B, 1, *spatial)
    fraction = low + (high - low) * torch.rand((), device=x.device)
    threshold = attention.flatten(1).max(dim=1).values * fraction  # (B,)
    keep = attention < threshold.view(-1, *([1] * (x.ndim - 1)))
    return x * keep.to(x.dtype)


def feature_noise(x: torch.Tensor, uniform_range: float = FEATURE_NOISE_RANGE) -> torch.Tensor:
    """x + x * n with n ~ U(-r, r) of shape (C, *spatial), shared by every sample of the batch."""
    noise = (torch.rand(x.shape[1:], device=x.device, dtype=x.dtype) * 2.0 - 1.0) * uniform_range
    return x + x * noise.unsqueeze(0)


# shallow -> deep: the 1/2-resolution stage gets noise, the 1/4 one feature dropout, the 1/8 one dropout
PYRAMID_PERTURBATIONS = (feature_noise, feature_dropout, element_dropout)


def pyramid_logits(
    stage_features: Sequence[torch.Tensor],
    classifiers: Sequence[nn.Module],
    output_size: Sequence[int],
    mode: str,
    training: bool,
) -> tuple[torch.Tensor, ...]:
    """Auxiliary logits of the decoder stages (shallow to deep), perturbed in training, resized to `output_size`."""
    outputs = []
    for features, classifier, perturb in zip(stage_features, classifiers, PYRAMID_PERTURBATIONS, strict=True):
        logits = classifier(perturb(features) if training else features)
        align = {} if mode == "nearest" else {"align_corners": False}
        outputs.append(F.interpolate(logits, size=tuple(output_size), mode=mode, **align))
    return tuple(outputs)
