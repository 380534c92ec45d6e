"""The one return type every segmentation network shares."""
from __future__ import annotations

from typing import NamedTuple

import torch


class NetworkOutput(NamedTuple):
    """What `forward` returns; inference reads only `logits` (read the fields by name).

    logits:   (B, C, *spatial) un-normalised class scores of the main decoder: the segmentation output.
    features: (B, F, *spatial) full-resolution decoder embedding feeding the SS-Net heads (F = 16 by default).
    The optional fields are filled only when the network is built with the matching option:
    sdf:      (B, C-1, *spatial) tanh level-set (signed distance) map, one channel per foreground class
              (`sdf_head=True`; SASSNet, DTC); None otherwise.
    aux_logits: pyramid logits of the deeper decoder stages, shallow to deep (1/2, 1/4, 1/8 resolution),
              each up-sampled to (B, C, *spatial) (`deep_supervision=True`; URPC); () otherwise.
    decoder_logits: (B, C, *spatial) logits of the extra decoders, which differ from the main one only in
              their up-sampling (`num_decoders > 1`; MC-Net); () otherwise.
    """

    logits: torch.Tensor
    features: torch.Tensor
    sdf: torch.Tensor | None = None
    aux_logits: tuple[torch.Tensor, ...] = ()
    decoder_logits: tuple[torch.Tensor, ...] = ()


class DecoderOutput(NamedTuple):
    """What a decoder returns to its network (same meaning as the NetworkOutput fields)."""

    logits: torch.Tensor
    features: torch.Tensor
    sdf: torch.Tensor | None = None
    aux_logits: tuple[torch.Tensor, ...] = ()
