"""The one return type every segmentation network shares."""
from __future__ import annotations

from typing import NamedTuple

import torch


class NetworkOutput(NamedTuple):
    """What `forward` returns; inference reads only `logits`.

    logits:   (B, C, *spatial) un-normalised class scores.
    features: (B, F, *spatial) full-resolution decoder embedding feeding the SS-Net heads (F = 16 by default).
    """

    logits: torch.Tensor
    features: torch.Tensor
