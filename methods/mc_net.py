"""MC-Net: two decoders with different up-sampling trained for sharpened mutual consistency.

Wu et al., "Semi-supervised Left Atrium Segmentation with Mutual Consistency Training", MICCAI 2021; public
recipe ycwu1997/MC-Net (`train_mcnet_3d.py` with `mcnet3d_v1`, `train_mcnet_2d.py` with `mcnet2d_v1`):
* network: one encoder, two decoders (`num_decoders=2`): V-Net decoder 1 transposed convs, decoder 2
  trilinear interpolation + conv; U-Net decoder 1 bilinear, decoder 2 transposed convs;
* supervised = lambda sum over the decoders of the Dice loss, lambda = 0.5 (CE is computed but unused);
* mutual consistency on the whole batch: sum over ordered pairs i != j of mean((p_i - sharpen(p_j, T))^2),
  T = 0.1, sharpening element-wise p^(1/T) / (p^(1/T) + (1-p)^(1/T)), no detach (as the recipe);
* weight w(t) = lambda_c ramp(t // 150, L): lambda_c = 1.0 (LA) / 0.1 (ACDC), L = 40 / 200.
Inference: decoder 1 (`logits`), as the published test code.
"""
from __future__ import annotations

import torch

from methods.base import Batch, Method, MethodOutput
from utils.losses import mutual_consistency_loss
from utils.ramps import consistency_weight

SUPERVISED_WEIGHT = 0.5  # lambda
TEMPERATURE = 0.1


class MCNet(Method):
    name = "mc_net"
    consistency_by_dims = {3: 1.0, 2: 0.1}

    @classmethod
    def network_options(cls, spatial_dims: int) -> dict:
        return {"num_decoders": 2}

    def training_loss(self, labeled: Batch, unlabeled: Batch | None, iteration: int) -> MethodOutput:
        unlabeled = self.require_unlabeled(unlabeled)
        s = self.settings
        n = len(labeled)
        out = self.network(torch.cat([labeled.image, unlabeled.image]))
        outputs = [out.logits, *out.decoder_logits]
        dices, term_dicts = zip(*(self.supervised_loss(o[:n], labeled.label) for o in outputs), strict=True)
        supervised = SUPERVISED_WEIGHT * sum(dices)
        consistency = mutual_consistency_loss([torch.softmax(o, dim=1) for o in outputs], TEMPERATURE)
        weight = consistency_weight(iteration, s.consistency, s.consistency_rampup)
        loss = self.supervised_weight * supervised + weight * consistency
        terms = {**term_dicts[0], "total": loss.detach(), "supervised": supervised.detach(),
                 "consistency": consistency.detach(), "consistency_weight": torch.tensor(weight)}
        for i, d in enumerate(term_dicts[1:], start=2):
            terms[f"dice_decoder{i}"] = d["dice"]
        return MethodOutput(loss, terms, out.logits[:n].detach())
