"""URPC: uncertainty-rectified pyramid consistency between multi-scale outputs of one network.

Luo et al., "Efficient Semi-supervised Gross Target Volume of Nasopharyngeal Carcinoma Segmentation via
Uncertainty Rectified Pyramid Consistency", MICCAI 2021 / MedIA 2022; public recipe SSL4MIS
(`train_uncertainty_rectified_pyramid_consistency_2D.py` / `_3D.py`, networks `UNet_URDS`):
* network: the main output plus three auxiliary outputs of the deeper decoder stages (1/2, 1/4, 1/8
  resolution), each perturbed in training (feature noise, feature dropout, channel dropout) and up-sampled
  to full size (`deep_supervision=True`; networks/perturbations.py);
* supervised = mean over the 4 outputs of (CE + Dice) / 2;
* consistency on the unlabeled part: utils.losses.uncertainty_rectified_consistency (KL to the mean
  prediction as uncertainty, exp(-KL) weights, plus the mean KL), averaged over the 4 outputs;
* weight w(t) = 0.1 ramp(t // 150, L), L = 40 (LA) / 200 (ACDC).
The recipe's 2-D URPC U-Net up-samples with transposed convs; here the shared U-Net keeps its bilinear
decoder so every method has the same backbone. Inference: the main (full-resolution) logits only.
"""
from __future__ import annotations

import torch

from methods.base import Batch, Method, MethodOutput
from utils.losses import uncertainty_rectified_consistency
from utils.ramps import consistency_weight


class URPC(Method):
    name = "urpc"
    consistency_by_dims = {3: 0.1, 2: 0.1}

    @classmethod
    def network_options(cls, spatial_dims: int) -> dict:
        return {"deep_supervision": True}

    def training_loss(self, labeled: Batch, unlabeled: Batch | None, iteration: int) -> MethodOutput:
        unlabeled = self.require_unlabeled(unlabeled)
        s = self.settings
        n = len(labeled)
        out = self.network(torch.cat([labeled.image, unlabeled.image]))
        outputs = [out.logits, *out.aux_logits]
        dices, ces = zip(*(self.dice_and_ce(o[:n], labeled.label) for o in outputs), strict=True)
        supervised = (sum(dices) + sum(ces)) / (2 * len(outputs))
        consistency = uncertainty_rectified_consistency([o[n:] for o in outputs])
        weight = consistency_weight(iteration, s.consistency, s.consistency_rampup)
        loss = self.supervised_weight * supervised + weight * consistency
        terms = {"total": loss.detach(), "dice": dices[0].detach(), "ce": ces[0].detach(),
                 "supervised": supervised.detach(), "consistency": consistency.detach(),
                 "consistency_weight": torch.tensor(weight)}
        return MethodOutput(loss, terms, out.logits[:n].detach())
