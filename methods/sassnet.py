"""SASSNet: a signed-distance head trained on labels plus an adversarial shape prior on unlabeled data.

Li, Zhang & He, "Shape-aware Semi-supervised 3D Semantic Segmentation for Medical Images", MICCAI 2020.
LA (3-D) recipe: kleinzcy/SASSnet @ 1761aa8 `code/train_gan_sdfloss.py` (the README's command):
* network: the segmentation network plus a tanh signed-distance head (`sdf_head=True`, one channel per
  foreground class; `code/networks/vnet_sdf.py:181-183`, both heads on the dropped-out x9);
* supervised = Dice + beta MSE(sdf, normalised SDF of the label), beta = 0.3 (:42, :164-170); the Dice is on the
  foreground with squared sums and smooth 1e-5 (:166, `code/utils/losses.py:7-15`); the BCE is computed but unused;
* a discriminator D(sdf, image) -> {unlabeled, labeled} logits (`code/networks/discriminator.py:54-98`): conv 4,
  stride 2, 64 channels on the SDF map and on the image, summed, LeakyReLU 0.2 and channel dropout 0.5, then 128,
  256 (each LeakyReLU + dropout), 512 (LeakyReLU), average pooling and Linear(512, 2); trained with Adam (lr 1e-4,
  betas 0.9 / 0.99; :37, :124), after each segmentation step, on the whole batch predicted by the updated network
  in eval mode without gradient (labeled -> 1, unlabeled -> 0; :185-200); the gradients the generator step left in
  D are discarded first (:198);
* adversarial term: CE(D(sdf_unlabeled, image_unlabeled), "labeled") with D in eval mode (:172-174), weight
  w(t) = lambda ramp(s // 150, 40) on the counter before its increment (:47-48, :168): lambda = 0.01 with 16
  labeled scans, 0.015 with 8 (README.md:20-23); with 4 (not in the README) we use 0.015, the smaller budget's;
* 6,000 iterations (:33), LR x0.1 every 2,500 after the increment (:221-224).
The recipe pools D with a fixed 7x7x5 window (the output size for 112x112x80 crops); we pool globally, which is
the same there and works for any crop. The recipe's segmentation output is one sigmoid channel; ours is a 2-class
softmax (the same function class; thresholding p > 0.5 is argmax).
ACDC (2-D): there is no authors' recipe (kleinzcy/SASSnet is 3-D only; SSL4MIS and MC-Net have none). We run the
same method with 2-D convolutions, the LA weights above and SS-Net's ACDC schedule and Dice: the paper's ACDC rows
of the baselines were produced by SS-Net's authors, whose 2-D scripts (SS-Net, MC-Net) train 30,000 iterations
at a constant LR. Inference: the segmentation logits (main decoder), not the SDF.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods.base import Batch, Method, MethodOutput, MethodSettings, StepContext
from methods.ema import cpu_state
from methods.recipe import UAMT_LA_DICE, UAMT_LA_SCHEDULE, Recipe
from utils.losses import signed_distance_map
from utils.modes import eval_mode

SDF_WEIGHT = 0.3  # beta
DISCRIMINATOR_LR = 1e-4
DISCRIMINATOR_BETAS = (0.9, 0.99)
DISCRIMINATOR_WIDTH = 64
LABELED, UNLABELED = 1, 0  # discriminator classes


class ShapeDiscriminator(nn.Module):
    """D(sdf (B, K, *spatial), image (B, 1, *spatial)) -> (B, 2) logits [unlabeled, labeled]; 2-D or 3-D."""

    def __init__(self, spatial_dims: int, map_channels: int, image_channels: int = 1,
                 width: int = DISCRIMINATOR_WIDTH) -> None:
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.map_conv = conv(map_channels, width, 4, stride=2, padding=1)
        self.image_conv = conv(image_channels, width, 4, stride=2, padding=1)
        self.conv2 = conv(width, 2 * width, 4, stride=2, padding=1)
        self.conv3 = conv(2 * width, 4 * width, 4, stride=2, padding=1)
        self.conv4 = conv(4 * width, 8 * width, 4, stride=2, padding=1)
        self.dropout = nn.Dropout3d(0.5) if spatial_dims == 3 else nn.Dropout2d(0.5)
        self.classifier = nn.Linear(8 * width, 2)

    def forward(self, sdf: Tensor, image: Tensor) -> Tensor:
        x = self.dropout(F.leaky_relu(self.map_conv(sdf) + self.image_conv(image), 0.2))
        x = self.dropout(F.leaky_relu(self.conv2(x), 0.2))
        x = self.dropout(F.leaky_relu(self.conv3(x), 0.2))
        x = F.leaky_relu(self.conv4(x), 0.2)
        return self.classifier(x.flatten(2).mean(dim=2))


class SASSNet(Method):
    name = "sassnet"
    recipes = {
        3: Recipe("kleinzcy/SASSnet @ 1761aa8 `code/train_gan_sdfloss.py`",
                  ":33 iterations, :47-48 lambda and ramp, README.md:20-23 lambda 0.015 with 8 labels, :168 w "
                  "before the increment, :221-224 LR, :42 beta, :37/:124 Adam, `code/utils/losses.py:7-15` Dice",
                  0.01, UAMT_LA_SCHEDULE, UAMT_LA_DICE, consistency_by_labelnum=((8, 0.015),),
                  note="lambda 0.015 with 8 labeled (README), 0.01 with 16; 4 labeled (not given): 0.015"),
        2: Recipe("kleinzcy/SASSnet (3-D only)", "", 0.01,
                  note="no authors' 2-D recipe: SASSNet's LA weights on SS-Net's ACDC schedule and Dice"),
    }

    def __init__(self, network: nn.Module, settings: MethodSettings):
        super().__init__(network, settings)
        self.discriminator = ShapeDiscriminator(network.spatial_dims, network.num_classes - 1,
                                                network.in_channels).to(self.device)
        self.discriminator_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=DISCRIMINATOR_LR,
                                                        betas=DISCRIMINATOR_BETAS)
        self._last_batch: tuple[Tensor, int] | None = None
        self._last_discriminator_loss: Tensor | None = None  # logged from the second iteration on

    @classmethod
    def network_options(cls, spatial_dims: int) -> dict:
        return {"sdf_head": True}

    def forward(self, labeled: Batch, unlabeled: Batch | None, step: StepContext) -> MethodOutput:
        unlabeled = self.require_unlabeled(unlabeled)
        n = len(labeled)
        images = self.labeled_then_unlabeled(labeled, unlabeled)
        out = self.network(images)
        dice, terms = self.supervised_loss(out.logits[:n], labeled.label)
        sdf_loss = F.mse_loss(out.sdf[:n], signed_distance_map(labeled.label, self.network.num_classes))
        supervised = dice + SDF_WEIGHT * sdf_loss
        self.discriminator.eval()
        verdict = self.discriminator(out.sdf[n:], unlabeled.image)
        # the segmentation network wants its unlabeled shapes to pass as labeled ones
        adversarial = F.cross_entropy(verdict, torch.full((len(unlabeled),), LABELED, device=images.device))
        weight = self.warmup_weight(step.iteration)
        loss = self.weighted_loss(supervised, adversarial, weight)
        self._last_batch = (images.detach(), n)
        terms.update(supervised=supervised, sdf=sdf_loss, adversarial=adversarial)
        if self._last_discriminator_loss is not None:
            terms["discriminator_previous"] = self._last_discriminator_loss
        return self.output(loss, out.logits[:n], terms, weight)

    def after_optimizer_step(self, step: StepContext) -> None:
        """One discriminator step on the batch just used, predicted by the updated network in eval mode."""
        if self._last_batch is None:
            return
        images, n = self._last_batch
        self._last_batch = None
        with torch.no_grad(), eval_mode(self.network):
            sdf = self.network(images).sdf
        self.discriminator.train()
        target = torch.full((images.shape[0],), UNLABELED, device=images.device)
        target[:n] = LABELED
        loss = F.cross_entropy(self.discriminator(sdf, images), target)
        self.discriminator_optimizer.zero_grad(set_to_none=True)  # also drops the grads of the generator step
        loss.backward()
        step.average_gradients(self.discriminator.parameters())  # one discriminator on every rank (torchrun)
        self.discriminator_optimizer.step()
        self._last_discriminator_loss = loss.detach().cpu()

    def extra_state(self) -> dict:
        state = {"discriminator_optimizer": cpu_state(self.discriminator_optimizer.state_dict())}
        if self._last_discriminator_loss is not None:
            state["last_discriminator_loss"] = self._last_discriminator_loss.clone()
        return state

    def load_extra_state(self, state: dict) -> None:
        if "discriminator_optimizer" in state:
            self.discriminator_optimizer.load_state_dict(state["discriminator_optimizer"])
            self._last_discriminator_loss = state.get("last_discriminator_loss", self._last_discriminator_loss)
