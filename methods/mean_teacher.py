"""Mean Teacher: consistency between the student and an EMA teacher on noisy unlabeled inputs.

Tarvainen & Valpola, NeurIPS 2017. Common to both recipes: EMA decay 0.99 with a = min(1 - 1/(s+1), 0.99) on the
0-based step s (the first update copies the student); the teacher stays in training mode; teacher input = unlabeled
image + clip(N(0, 0.1^2), -0.2, 0.2); consistency = mean squared difference of the softmax outputs on the unlabeled
part; supervised = (CE + Dice) / 2.

LA (3-D): there is no authors' Mean Teacher script for LA (yulequan/UA-MT, all 9 commits, holds only its
supervised `train_LA.py` and the two UA-MT scripts). We use UA-MT's LA code base without the uncertainty mask,
yulequan/UA-MT @ 88ed29a `code/train_LA_meanteacher_certainty_unlabel.py`: 6,000 iterations (:28), EMA 0.99
(:36, :68-72, updated with the counter before its increment, :182), lambda 0.1 and ramp 40 (:38-39), w evaluated
before the increment (:171), noise (:146-147), (CE + Dice) / 2 (:166-169), LR x0.1 every 2,500 after the increment
(:239-242); Dice on the foreground channel with squared sums and smooth 1e-5 (`code/utils/losses.py:5-13`).

ACDC (2-D): HiLab-git/SSL4MIS @ 06df604 `code/train_mean_teacher_2D.py`: 30,000 iterations (:37-38), lambda 0.1
and ramp 200 (:60-63), w before the increment (:169), consistency 0 while the counter is below 1,000 (:170-171; the
teacher still runs), EMA 0.99 with the counter before its increment (:57, :85-89, :179), noise (:154-156),
(CE + Dice) / 2 (:164-168), poly LR computed after the step from the counter before its increment (:180-184);
`DiceLoss` over all 4 classes, squared sums, smooth 1e-5 (`code/utils/losses.py:156-192`).

Deviation: the teacher starts as a copy of the student (the scripts build a second, independently initialised
network; the first EMA update overwrites it, so only the first iteration's teacher output differs).
The student is evaluated (main output `logits`); the teacher is never tested.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from methods.base import Batch, Method, MethodOutput, MethodSettings, StepContext
from methods.ema import ema_update, make_teacher
from methods.recipe import SSL4MIS_DICE, UAMT_LA_DICE, UAMT_LA_SCHEDULE, Recipe, Schedule
from utils.losses import softmax_mse

NOISE_STD = 0.1
NOISE_CLIP = 0.2


def input_noise(images: Tensor) -> Tensor:
    """clip(N(0, 0.1^2), -0.2, 0.2) of the shape of `images`: the recipes' teacher-input perturbation."""
    return torch.clamp(torch.randn_like(images) * NOISE_STD, -NOISE_CLIP, NOISE_CLIP)


class MeanTeacher(Method):
    name = "mean_teacher"
    recipes = {
        3: Recipe("yulequan/UA-MT @ 88ed29a `code/train_LA_meanteacher_certainty_unlabel.py`",
                  ":28 iterations, :38-39 lambda and ramp, :171 w before the increment, :239-242 LR, "
                  "`code/utils/losses.py:5-13` Dice", 0.1, UAMT_LA_SCHEDULE, UAMT_LA_DICE,
                  note="no authors' Mean Teacher LA script: UA-MT's LA code base without the uncertainty"),
        2: Recipe("HiLab-git/SSL4MIS @ 06df604 `code/train_mean_teacher_2D.py`",
                  ":37-38 iterations, :60-63 lambda and ramp, :169 w before the increment, :170-171 off below "
                  "1,000, :180-184 poly LR, `code/utils/losses.py:156-192` Dice", 0.1,
                  Schedule(30000, "poly", 200.0, rampup_zero_based=True, consistency_off=1000), SSL4MIS_DICE),
    }

    def __init__(self, network: nn.Module, settings: MethodSettings):
        super().__init__(network, settings)
        self.teacher = make_teacher(network)

    @torch.no_grad()
    def teacher_probs(self, noisy_images: Tensor) -> Tensor:
        self.teacher.train()
        return torch.softmax(self.teacher(noisy_images).logits, dim=1)

    def consistency(self, student_logits: Tensor, images: Tensor, noise: Tensor, iteration: int
                    ) -> tuple[Tensor, dict]:
        """Unlabeled consistency term and its monitors; UA-MT overrides this."""
        loss = softmax_mse(student_logits, self.teacher_probs(images + noise))
        if iteration <= self.settings.consistency_off:  # the teacher still ran: same random draws as the recipe
            loss = loss.new_zeros(())
        return loss, {}

    def forward(self, labeled: Batch, unlabeled: Batch | None, step: StepContext) -> MethodOutput:
        unlabeled = self.require_unlabeled(unlabeled)
        n = len(labeled)
        noise = input_noise(unlabeled.image)  # drawn before the student's forward, as in both recipes
        logits = self.network(self.labeled_then_unlabeled(labeled, unlabeled)).logits
        dice, ce = self.dice_and_ce(logits[:n], labeled.label)
        supervised = 0.5 * (dice + ce)
        consistency, monitors = self.consistency(logits[n:], unlabeled.image, noise, step.iteration)
        weight = self.warmup_weight(step.iteration)
        loss = self.weighted_loss(supervised, consistency, weight)
        terms = {"dice": dice, "ce": ce, "supervised": supervised, "consistency": consistency}
        return self.output(loss, logits[:n], terms, weight, monitors)

    def after_optimizer_step(self, step: StepContext) -> None:
        # the recipes update with their 0-based step counter: the first update copies the student
        ema_update(self.teacher, self.network, self.settings.ema_decay, step.iteration - 1)
