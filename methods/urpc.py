"""URPC: uncertainty-rectified pyramid consistency between multi-scale outputs of one network.

Luo et al., "Efficient Semi-supervised Gross Target Volume of Nasopharyngeal Carcinoma Segmentation via
Uncertainty Rectified Pyramid Consistency", MICCAI 2021 / MedIA 2022.
ACDC (2-D) recipe: HiLab-git/SSL4MIS @ 06df604 `code/train_uncertainty_rectified_pyramid_consistency_2D.py`
with `UNet_URPC` (`code/networks/unet.py:209-274, 352-370`):
* network: the main output plus three auxiliary outputs of the deeper decoder stages (1/2, 1/4, 1/8
  resolution), perturbed in training before their classifier only (1/2: feature noise U(-0.3, 0.3); 1/4:
  feature dropout; 1/8: element-wise dropout p = 0.5) and resized to full size with nearest interpolation
  (`deep_supervision=True`; networks/perturbations.py); the decoder up-samples bilinearly, as our U-Net;
* supervised = mean over the 4 outputs of (CE + Dice) / 2 (:140-159), `DiceLoss` over all classes, squared sums,
  smooth 1e-5;
* consistency on the unlabeled part: utils.losses.uncertainty_rectified_consistency (KL to the mean prediction
  as uncertainty, exp(-KL) weights, plus the mean KL), averaged over the 4 outputs (:161-203);
* 30,000 iterations, lambda 0.1, ramp 200 (:36-59), w before the counter's increment (:180), poly LR (:209-213).
LA (3-D): there is no URPC recipe for LA (SSL4MIS's 3-D script trains a 3-D U-Net on GTV / BraTS with LR 0.1,
60,000 iterations and ramp 400). We keep the V-Net with the 2-D perturbation scheme on auxiliary 1x1x1 heads of
its decoder stages (SSL4MIS `unet_3D_dv_semi` instead puts Dropout3d, p = 0.5 ... 0.1, on the main decoder path),
the 2-D recipe's weights and Dice, and SS-Net's LA schedule: the paper's LA row was produced by SS-Net's authors,
whose LA scripts (SS-Net, MC-Net) train 15,000 iterations. Inference: the main (full-resolution) logits only.
"""
from __future__ import annotations

from methods.base import Batch, Method, MethodOutput, StepContext
from methods.recipe import SSL4MIS_2D_SCHEDULE, SSL4MIS_DICE, Recipe
from utils.losses import uncertainty_rectified_consistency


class URPC(Method):
    name = "urpc"
    recipes = {
        3: Recipe("none for LA; weights and Dice of HiLab-git/SSL4MIS @ 06df604 "
                  "`code/train_uncertainty_rectified_pyramid_consistency_2D.py`",
                  ":56-59 lambda, :140-159 supervised, `code/utils/losses.py:156-192` Dice", 0.1,
                  dice=SSL4MIS_DICE,
                  note="no LA recipe: the 2-D recipe's weights and Dice on SS-Net's LA schedule (the paper's LA "
                       "row comes from SS-Net's authors, whose LA scripts train 15,000 iterations)"),
        2: Recipe("HiLab-git/SSL4MIS @ 06df604 `code/train_uncertainty_rectified_pyramid_consistency_2D.py`",
                  ":36-59 iterations, lambda and ramp, :180 w before the increment, :209-213 poly LR, "
                  "`code/networks/unet.py:246-274` perturbations, `code/utils/losses.py:156-192` Dice", 0.1,
                  SSL4MIS_2D_SCHEDULE, SSL4MIS_DICE),
    }

    @classmethod
    def network_options(cls, spatial_dims: int) -> dict:
        return {"deep_supervision": True}

    def forward(self, labeled: Batch, unlabeled: Batch | None, step: StepContext) -> MethodOutput:
        n = len(labeled)
        out = self.network(self.labeled_then_unlabeled(labeled, unlabeled))
        outputs = [out.logits, *out.aux_logits]
        dices, ces = zip(*(self.dice_and_ce(o[:n], labeled.label) for o in outputs), strict=True)
        supervised = (sum(dices) + sum(ces)) / (2 * len(outputs))
        consistency = uncertainty_rectified_consistency([o[n:] for o in outputs])
        weight = self.warmup_weight(step.iteration)
        loss = self.weighted_loss(supervised, consistency, weight)
        terms = {"dice": dices[0], "ce": ces[0], "supervised": supervised, "consistency": consistency}
        return self.output(loss, out.logits[:n], terms, weight)
