"""The contract between the trainer loop and a training method.

A method turns one labeled and one unlabeled batch into a loss and a dict of detached terms for logging.
The trainer (optimiser, schedule, logging, evaluation, checkpoints) knows no method by name.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from utils.losses import dice_loss


@dataclass
class Batch:
    image: Tensor  # (B, C_in, *spatial)
    label: Tensor | None  # (B, *spatial) int64; None for unlabeled data, so no method can peek
    case: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.image.shape[0]


@dataclass
class MethodOutput:
    loss: Tensor
    terms: dict[str, Tensor]  # detached scalars, logged as loss/<name>
    labeled_logits: Tensor | None = None  # detached, for image panels


@dataclass
class MethodSettings:
    """Hyper-parameters of the training methods; defaults per dataset live in engine/presets.py."""

    num_classes: int
    # supervised Dice (spec §3.4)
    dice_include_background: bool = False
    dice_squared_denominator: bool = False
    dice_smooth: float = 1e-8
    ce_weight: float = 0.0  # the official scripts compute CE but give it weight 0
    # warm-up weight w(t) = consistency * ramp(t // 150, consistency_rampup)
    consistency: float = 1.0
    consistency_rampup: float = 40.0
    # LDS / VAT (spec §3.5)
    lds_discrepancy: str = "pooled_dice"
    xi: float = 10.0
    epsilon: float = 10.0
    power_iterations: int = 1
    # class separation (spec §3.6, §3.7)
    separation_weight: float = 0.1
    memory_size: int = 32
    memory_keep: str = "lowest"


class Method:
    name = "base"
    uses_unlabeled = True  # False: the trainer draws labeled-only batches

    def __init__(self, network: nn.Module, settings: MethodSettings):
        self.network = network
        self.settings = settings

    def training_loss(self, labeled: Batch, unlabeled: Batch | None, iteration: int) -> MethodOutput:
        raise NotImplementedError

    def supervised_loss(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Dice (+ ce_weight x cross-entropy) on the labeled part; CE is always logged."""
        s = self.settings
        dice = dice_loss(
            torch.softmax(logits, dim=1),
            labels,
            include_background=s.dice_include_background,
            squared_denominator=s.dice_squared_denominator,
            smooth=s.dice_smooth,
        )
        ce = F.cross_entropy(logits, labels)
        loss = dice + s.ce_weight * ce if s.ce_weight else dice
        return loss, {"dice": dice.detach(), "ce": ce.detach()}

    # Extra state that a checkpoint must carry to resume (e.g. SS-Net's prototype memory).
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
