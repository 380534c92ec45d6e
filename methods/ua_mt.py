"""UA-MT: Mean Teacher whose consistency counts only voxels where the teacher is certain.

Yu et al., "Uncertainty-aware Self-ensembling Model for Semi-supervised 3D Left Atrium Segmentation",
MICCAI 2019. Everything of Mean Teacher (EMA 0.99, input noise, (CE + Dice) / 2) plus:
* uncertainty = entropy of the mean softmax of T = 8 noisy teacher passes (run as 4 forwards of the unlabeled
  batch repeated twice), -sum_c p log(p + 1e-6), in nats; the consistency target is the single noisy teacher pass;
* threshold = (3/4 + 1/4 ramp(s, T_max)) ln 2 on the script's counter s, ramped over the run (T_max =
  --max_iteration: 6,000 / 30,000 in the recipes); ln 2 also with the 4 ACDC classes, as the 2-D script;
* consistency = sum over certain voxels (uncertainty < threshold) of the squared softmax difference, divided by
  2 x their count: both scripts divide by 2, the LA class count, also with 4 classes (so on ACDC the term is twice
  the masked mean).

LA (3-D): yulequan/UA-MT @ 88ed29a `code/train_LA_meanteacher_certainty_unlabel.py` (the README's script):
6,000 iterations (:28), lambda 0.1 and ramp 40 (:38-39), w before the counter's increment (:171), threshold on the
same counter over max_iterations (:173), masked MSE / (2 sum(mask)) (:175), 8 passes (:151-162), EMA (:182),
LR x0.1 every 2,500 after the increment (:239-242); Dice foreground, squared sums, smooth 1e-5
(`code/utils/losses.py:5-13`).
ACDC (2-D): HiLab-git/SSL4MIS @ 06df604 `code/train_uncertainty_aware_mean_teacher_2D.py`: 30,000 iterations,
lambda 0.1, ramp 200 (:37-63), w before the increment (:184), threshold ln 2 over 30,000 (:187-188), / (2 sum(mask))
(:190-191), 8 passes (:161-177), poly LR (:199-203), no 1,000-iteration gate; `DiceLoss` as Mean Teacher 2-D.
"""
from __future__ import annotations

import torch
from torch import Tensor

from methods.mean_teacher import MeanTeacher, input_noise
from methods.recipe import SSL4MIS_2D_SCHEDULE, SSL4MIS_DICE, UAMT_LA_DICE, UAMT_LA_SCHEDULE, Recipe
from utils.losses import masked_mse, predictive_entropy, uncertainty_threshold

MC_PASSES = 8


class UAMT(MeanTeacher):
    name = "ua_mt"
    recipes = {
        3: Recipe("yulequan/UA-MT @ 88ed29a `code/train_LA_meanteacher_certainty_unlabel.py`",
                  ":28 iterations, :38-39 lambda and ramp, :171 w before the increment, :173 threshold over the "
                  "run, :175 / (2 sum mask), :239-242 LR, `code/utils/losses.py:5-13` Dice", 0.1,
                  UAMT_LA_SCHEDULE, UAMT_LA_DICE),
        2: Recipe("HiLab-git/SSL4MIS @ 06df604 `code/train_uncertainty_aware_mean_teacher_2D.py`",
                  ":37-63 iterations, lambda and ramp, :184 w before the increment, :187-188 threshold ln 2 over "
                  "the run, :190-191 / (2 sum mask), :199-203 poly LR, `code/utils/losses.py:156-192` Dice", 0.1,
                  SSL4MIS_2D_SCHEDULE, SSL4MIS_DICE),
    }

    @torch.no_grad()
    def teacher_uncertainty(self, images: Tensor) -> Tensor:
        """(U, 1, *spatial) entropy of the mean teacher prediction over MC_PASSES noisy dropout passes."""
        self.teacher.train()
        repeated = images.repeat(2, *([1] * (images.ndim - 1)))
        passes = [torch.softmax(self.teacher(repeated + input_noise(repeated)).logits, dim=1)
                  for _ in range(MC_PASSES // 2)]
        probs = torch.cat(passes).reshape(MC_PASSES, *images.shape[:1], *passes[0].shape[1:])
        return predictive_entropy(probs.mean(dim=0))

    def consistency(self, student_logits: Tensor, images: Tensor, noise: Tensor, iteration: int
                    ) -> tuple[Tensor, dict]:
        teacher_probs = self.teacher_probs(images + noise)
        uncertainty = self.teacher_uncertainty(images)
        threshold = uncertainty_threshold(self.recipe_counter(iteration), self.settings.max_iteration)
        mask = (uncertainty < threshold).to(student_logits.dtype)
        loss = masked_mse(torch.softmax(student_logits, dim=1), teacher_probs, mask)
        return loss, {"uncertainty_threshold": torch.tensor(threshold), "certain_fraction": mask.mean()}
