"""The one return type every segmentation network shares."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn


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


@dataclass
class Trunk:
    """The part of one forward pass that a second training-mode pass on the same input would compute again
    bit for bit: the encoder up to its first random draw (SegmentationNetwork.forward_keeping_trunk).

    stages: the encoder's outputs before that draw (V-Net: x1..x4 and block five before its dropout).
    norm_inputs: (BatchNorm layer, its input) of every BatchNorm the trunk ran, in call order: a reuse
    runs them again so that their running statistics move exactly as a full second pass would move them.
    """

    stages: list[torch.Tensor]
    norm_inputs: list[tuple[nn.Module, torch.Tensor]] = field(default_factory=list)
