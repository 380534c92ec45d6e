"""DTC: dual-task consistency between the segmentation and a level-set (signed distance) head.

Luo, Chen, Song & Wang, "Semi-supervised Medical Image Segmentation through Dual-task Consistency", AAAI 2021.
* network: segmentation head plus a tanh level-set head (`sdf_head=True`, one channel per foreground class);
* supervised = Dice + beta MSE(sdf, normalised SDF of the label) on labeled data, beta = 0.3 (CE unused);
* dual-task consistency on the whole batch: mean((sigmoid(-k sdf) - p_fg)^2), k = 1500, p_fg the softmax
  of every foreground class (LA: the one foreground channel, as the recipe's sigmoid output).
LA (3-D): HiLab-git/DTC @ 2525b9c `code/train_la_dtc.py`: 6,000 iterations (:33-34), lambda 1.0 (:60-61; the
`--consistency_weight` 0.1 there is never read), ramp 40 (:62-63), w on the counter before its increment (:189),
beta 0.3 (:50-51), consistency over the whole batch, nothing detached (:185-187), LR x0.1 every 2,500 after the
increment (:251-254); Dice foreground, squared sums, smooth 1e-5 (:183-184, `code/utils/losses.py:8-16`).
ACDC (2-D): the only 2-D DTC code is an unmerged SSL4MIS pull request (#37, commit 68832ad,
`code/train_dtc_sdf_soft_sig_2D.py`): 30,000 iterations, lambda 0.1, ramp 200, beta 0.3 (:37-66), w before the
increment (:154), poly LR (:164-168), `DiceLoss` over all 4 classes (squared, smooth 1e-5). Its level set has a
background channel and its consistency covers all 4 channels; ours predicts and compares the 3 foreground classes.
Inference: the segmentation logits (main decoder).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from methods.base import Batch, Method, MethodOutput, StepContext
from methods.recipe import SSL4MIS_2D_SCHEDULE, SSL4MIS_DICE, UAMT_LA_DICE, UAMT_LA_SCHEDULE, Recipe
from utils.losses import sdf_to_probability, signed_distance_map

SDF_WEIGHT = 0.3  # beta
LEVEL_SET_SHARPNESS = 1500.0  # k in sigmoid(-k sdf)


class DTC(Method):
    name = "dtc"
    recipes = {
        3: Recipe("HiLab-git/DTC @ 2525b9c `code/train_la_dtc.py`",
                  ":33-34 iterations, :60-63 lambda and ramp, :189 w before the increment, :251-254 LR, :50-51 "
                  "beta, :183-187 Dice and consistency, `code/utils/losses.py:8-16` Dice", 1.0, UAMT_LA_SCHEDULE,
                  UAMT_LA_DICE),
        2: Recipe("HiLab-git/SSL4MIS pull request #37 @ 68832ad `code/train_dtc_sdf_soft_sig_2D.py`",
                  ":37-66 iterations, lambda, ramp and beta, :154 w before the increment, :164-168 poly LR", 0.1,
                  SSL4MIS_2D_SCHEDULE, SSL4MIS_DICE,
                  note="the only 2-D DTC code is an unmerged SSL4MIS pull request; its background level set is "
                       "left out"),
    }

    @classmethod
    def network_options(cls, spatial_dims: int) -> dict:
        return {"sdf_head": True}

    def forward(self, labeled: Batch, unlabeled: Batch | None, step: StepContext) -> MethodOutput:
        n = len(labeled)
        out = self.network(self.labeled_then_unlabeled(labeled, unlabeled))
        dice, terms = self.supervised_loss(out.logits[:n], labeled.label)
        sdf_loss = F.mse_loss(out.sdf[:n], signed_distance_map(labeled.label, self.network.num_classes))
        supervised = dice + SDF_WEIGHT * sdf_loss
        foreground = torch.softmax(out.logits, dim=1)[:, 1:]
        consistency = ((sdf_to_probability(out.sdf, LEVEL_SET_SHARPNESS) - foreground) ** 2).mean()
        weight = self.warmup_weight(step.iteration)
        loss = self.weighted_loss(supervised, consistency, weight)
        terms.update(supervised=supervised, sdf=sdf_loss, consistency=consistency)
        return self.output(loss, out.logits[:n], terms, weight)
