"""Mean Teacher: consistency between the student and an EMA teacher on noisy unlabeled inputs.

Tarvainen & Valpola, NeurIPS 2017, as the UA-MT code base (yulequan/UA-MT, LA) and SSL4MIS
(`train_mean_teacher_2D.py` / `_3D.py`) run it. Recipe (both): EMA decay 0.99 with a = min(1 - 1/(t+1), 0.99);
teacher input = unlabeled image + clip(N(0, 0.1^2), -0.2, 0.2); consistency = mean squared difference of the
softmax outputs on the unlabeled part; supervised = (CE + Dice) / 2; weight w(t) = 0.1 ramp(t // 150, L) with
L = 40 (LA) / 200 (ACDC). The student is evaluated (main output `logits`); the teacher is never tested.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from methods.base import Batch, Method, MethodOutput, MethodSettings
from methods.ema import cpu_state, ema_update, make_teacher
from utils.losses import softmax_mse
from utils.ramps import consistency_weight

NOISE_STD = 0.1
NOISE_CLIP = 0.2


def input_noise(images: Tensor) -> Tensor:
    """clip(N(0, 0.1^2), -0.2, 0.2) of the shape of `images`: the recipes' teacher-input perturbation."""
    return torch.clamp(torch.randn_like(images) * NOISE_STD, -NOISE_CLIP, NOISE_CLIP)


class MeanTeacher(Method):
    name = "mean_teacher"
    consistency_by_dims = {3: 0.1, 2: 0.1}

    def __init__(self, network: nn.Module, settings: MethodSettings):
        super().__init__(network, settings)
        self.teacher = make_teacher(network)

    @torch.no_grad()
    def teacher_probs(self, images: Tensor) -> Tensor:
        self.teacher.train()
        return torch.softmax(self.teacher(images + input_noise(images)).logits, dim=1)

    def consistency(self, student_logits: Tensor, images: Tensor, iteration: int) -> tuple[Tensor, dict]:
        """Unlabeled consistency term and extra log terms; UA-MT overrides this."""
        return softmax_mse(student_logits, self.teacher_probs(images)), {}

    def training_loss(self, labeled: Batch, unlabeled: Batch | None, iteration: int) -> MethodOutput:
        unlabeled = self.require_unlabeled(unlabeled)
        s = self.settings
        n = len(labeled)
        logits = self.network(torch.cat([labeled.image, unlabeled.image])).logits
        dice, ce = self.dice_and_ce(logits[:n], labeled.label)
        supervised = 0.5 * (dice + ce)
        consistency, extra = self.consistency(logits[n:], unlabeled.image, iteration)
        weight = consistency_weight(iteration, s.consistency, s.consistency_rampup)
        loss = self.supervised_weight * supervised + weight * consistency
        terms = {"total": loss.detach(), "dice": dice.detach(), "ce": ce.detach(), "supervised": supervised.detach(),
                 "consistency": consistency.detach(), "consistency_weight": torch.tensor(weight), **extra}
        return MethodOutput(loss, terms, logits[:n].detach())

    def after_optimizer_step(self, iteration: int) -> None:
        # the recipes update with their 0-based step counter: the first update copies the student
        ema_update(self.teacher, self.network, self.settings.ema_decay, iteration - 1)

    def state_dict(self) -> dict:
        return {"teacher": cpu_state(self.teacher.state_dict())}

    def load_state_dict(self, state: dict) -> None:
        if "teacher" in state:
            self.teacher.load_state_dict(state["teacher"])
