"""DTC: dual-task consistency between the segmentation and a level-set (signed distance) head.

Luo, Chen, Song & Wang, "Semi-supervised Medical Image Segmentation through Dual-task Consistency",
AAAI 2021; public recipe HiLab-git/DTC (`train_la_dtc.py`) and SSL4MIS (`train_dtc_sdf_soft_sig_2D.py`):
* network: segmentation head plus a tanh level-set head (`sdf_head=True`, one channel per foreground class);
* supervised = Dice + beta MSE(sdf, normalised SDF of the label) on labeled data, beta = 0.3 (CE unused);
* dual-task consistency on the whole batch: mean((sigmoid(-k sdf) - p_fg)^2), k = 1500, p_fg the softmax
  of every foreground class (LA: the one foreground channel, as the recipe's sigmoid output; the SSL4MIS
  2-D script also compares a background level set, which we do not predict);
* weight w(t) = lambda ramp(t // 150, L): lambda = 1.0 (LA, DTC) / 0.1 (ACDC, SSL4MIS), L = 40 / 200.
Inference: the segmentation logits (main decoder).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from methods.base import Batch, Method, MethodOutput
from utils.losses import sdf_to_probability, signed_distance_map
from utils.ramps import consistency_weight

SDF_WEIGHT = 0.3  # beta
LEVEL_SET_SHARPNESS = 1500.0  # k in sigmoid(-k sdf)


class DTC(Method):
    name = "dtc"
    consistency_by_dims = {3: 1.0, 2: 0.1}

    @classmethod
    def network_options(cls, spatial_dims: int) -> dict:
        return {"sdf_head": True}

    def training_loss(self, labeled: Batch, unlabeled: Batch | None, iteration: int) -> MethodOutput:
        unlabeled = self.require_unlabeled(unlabeled)
        s = self.settings
        n = len(labeled)
        out = self.network(torch.cat([labeled.image, unlabeled.image]))
        dice, terms = self.supervised_loss(out.logits[:n], labeled.label)
        sdf_loss = F.mse_loss(out.sdf[:n], signed_distance_map(labeled.label, self.network.num_classes))
        supervised = dice + SDF_WEIGHT * sdf_loss
        foreground = torch.softmax(out.logits, dim=1)[:, 1:]
        consistency = ((sdf_to_probability(out.sdf, LEVEL_SET_SHARPNESS) - foreground) ** 2).mean()
        weight = consistency_weight(iteration, s.consistency, s.consistency_rampup)
        loss = self.supervised_weight * supervised + weight * consistency
        terms.update(total=loss.detach(), supervised=supervised.detach(), sdf=sdf_loss.detach(),
                     consistency=consistency.detach(), consistency_weight=torch.tensor(weight))
        return MethodOutput(loss, terms, out.logits[:n].detach())
