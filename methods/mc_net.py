"""MC-Net: two decoders with different up-sampling trained for sharpened mutual consistency.

Wu et al., "Semi-supervised Left Atrium Segmentation with Mutual Consistency Training", MICCAI 2021.
* network: one encoder, two decoders (`num_decoders=2`): V-Net decoder 1 transposed convs, decoder 2 trilinear
  up-sampling with align_corners=True + conv (`code/networks/VNet.py:99-103`); U-Net decoder 1 bilinear, decoder
  2 transposed convs (`code/networks/unet.py:141-165`);
* mutual consistency on the whole batch: sum over ordered pairs i != j of mean((p_i - sharpen(p_j, T))^2),
  T = 0.1, sharpening element-wise p^(1/T) / (p^(1/T) + (1-p)^(1/T)), nothing detached;
* supervised = lambda sum over the decoders of the Dice loss (CE computed but unused).
LA (3-D): ycwu1997/MC-Net @ fee453c `code/train_mcnet_3d.py`: 15,000 iterations (:37), LR 0.01 never changed
(:41; no LR update in the loop), lambda_c 1.0 and ramp 40 (:46-47), w after the counter's increment (:160-161),
T 0.1 (:48), lambda 0.5 (:49, :163) with SS-Net's foreground Dice (plain sums, smooth 1e-8).
ACDC (2-D): `code/train_mcnet_2d.py`: 30,000 iterations (:39), constant LR (:99), lambda_c 0.1 and ramp 200
(:51-52), w after the increment (:141-142); lambda 1 (:54) with a Dice without the factor 2, 1 - I / (sum p^2 +
sum g^2 + 1e-10) (`code/utils/losses.py:35-56`), which has the gradient of lambda 0.5 with the usual Dice; we use
the latter (the logged loss is 0.5 per decoder lower).
Inference: decoder 1 (`logits`), as the published test code.
"""
from __future__ import annotations

import torch

from methods.base import Batch, Method, MethodOutput, StepContext
from methods.recipe import SSNET_ACDC_DICE, SSNET_LA_DICE, Recipe, Schedule
from utils.losses import mutual_consistency_loss

SUPERVISED_WEIGHT = 0.5  # lambda
TEMPERATURE = 0.1


class MCNet(Method):
    name = "mc_net"
    recipes = {
        3: Recipe("ycwu1997/MC-Net @ fee453c `code/train_mcnet_3d.py`",
                  ":37 iterations, :41 LR never changed, :46-47 lambda and ramp, :160-161 w after the increment, "
                  ":49/:163 lambda 0.5, `code/networks/VNet.py:102` align_corners", 1.0,
                  Schedule(15000, "constant", 40.0, rampup_zero_based=False), SSNET_LA_DICE),
        2: Recipe("ycwu1997/MC-Net @ fee453c `code/train_mcnet_2d.py`",
                  ":39 iterations, :99 LR never changed, :51-52 lambda and ramp, :141-142 w after the increment, "
                  ":54 lambda 1 with `code/utils/losses.py:35-56` Dice", 0.1,
                  Schedule(30000, "constant", 200.0, rampup_zero_based=False), SSNET_ACDC_DICE),
    }

    @classmethod
    def network_options(cls, spatial_dims: int) -> dict:
        return {"num_decoders": 2}

    def forward(self, labeled: Batch, unlabeled: Batch | None, step: StepContext) -> MethodOutput:
        n = len(labeled)
        out = self.network(self.labeled_then_unlabeled(labeled, unlabeled))
        outputs = [out.logits, *out.decoder_logits]
        dices, term_dicts = zip(*(self.supervised_loss(o[:n], labeled.label) for o in outputs), strict=True)
        supervised = SUPERVISED_WEIGHT * sum(dices)
        consistency = mutual_consistency_loss([torch.softmax(o, dim=1) for o in outputs], TEMPERATURE)
        weight = self.warmup_weight(step.iteration)
        loss = self.weighted_loss(supervised, consistency, weight)
        terms = {**term_dicts[0], "supervised": supervised, "consistency": consistency}
        for i, d in enumerate(term_dicts[1:], start=2):
            terms[f"dice_decoder{i}"] = d["dice"]
        return self.output(loss, out.logits[:n], terms, weight)
