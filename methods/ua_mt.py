"""UA-MT: Mean Teacher whose consistency counts only voxels where the teacher is certain.

Yu et al., "Uncertainty-aware Self-ensembling Model for Semi-supervised 3D Left Atrium Segmentation",
MICCAI 2019; public recipe yulequan/UA-MT (`train_LA_meanteacher_certainty_unlabel.py`) and SSL4MIS
(`train_uncertainty_aware_mean_teacher_2D.py`) for ACDC. Everything of Mean Teacher (EMA 0.99, input noise,
(CE + Dice) / 2, w(t) = 0.1 ramp(t // 150, L)) plus:
* uncertainty = entropy of the mean softmax of T = 8 noisy teacher passes (run as 4 forwards of the unlabeled
  batch repeated twice, as the recipe), -sum_c p log(p + 1e-6), in nats;
* threshold = (3/4 + 1/4 ramp(t, t_max)) ln 2 on the raw iteration (t_max = --max_iteration);
* consistency = sum over certain voxels (uncertainty < threshold) of the squared softmax difference, divided
  by C x their count (the recipe divides by 2 = C on LA; SSL4MIS keeps 2 with 4 classes).
"""
from __future__ import annotations

import torch
from torch import Tensor

from methods.mean_teacher import MeanTeacher, input_noise
from utils.losses import masked_mse, predictive_entropy, uncertainty_threshold

MC_PASSES = 8


class UAMT(MeanTeacher):
    name = "ua_mt"
    consistency_by_dims = {3: 0.1, 2: 0.1}

    @torch.no_grad()
    def teacher_uncertainty(self, images: Tensor) -> Tensor:
        """(U, 1, *spatial) entropy of the mean teacher prediction over MC_PASSES noisy dropout passes."""
        self.teacher.train()
        repeated = images.repeat(2, *([1] * (images.ndim - 1)))
        passes = [torch.softmax(self.teacher(repeated + input_noise(repeated)).logits, dim=1)
                  for _ in range(MC_PASSES // 2)]
        probs = torch.cat(passes).reshape(MC_PASSES, *images.shape[:1], *passes[0].shape[1:])
        return predictive_entropy(probs.mean(dim=0))

    def consistency(self, student_logits: Tensor, images: Tensor, iteration: int) -> tuple[Tensor, dict]:
        teacher_probs = self.teacher_probs(images)
        uncertainty = self.teacher_uncertainty(images)
        threshold = uncertainty_threshold(iteration, self.settings.max_iterations)
        mask = (uncertainty < threshold).to(student_logits.dtype)
        loss = masked_mse(torch.softmax(student_logits, dim=1), teacher_probs, mask)
        return loss, {"uncertainty_threshold": torch.tensor(threshold), "certain_fraction": mask.mean()}
