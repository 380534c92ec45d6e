"""SASSNet: a signed-distance head trained on labels plus an adversarial shape prior on unlabeled data.

Li, Zhang & He, "Shape-aware Semi-supervised 3D Semantic Segmentation for Medical Images", MICCAI 2020;
public recipe kleinzcy/SASSnet (`train_gan_sdfloss.py`, `networks/discriminator.py`):
* network: the segmentation network plus a tanh signed-distance head (`sdf_head=True`, one channel per
  foreground class; the recipe's LA network has one);
* supervised = Dice + beta MSE(sdf, normalised SDF of the label), beta = 0.3 (CE is computed but unused);
* a discriminator D(sdf, image) -> {unlabeled, labeled} logits: conv 4, stride 2, 64 channels on the SDF map
  and on the image, summed, then 128, 256, 512 channels (LeakyReLU 0.2, channel dropout 0.5), average
  pooling and Linear(512, 2); trained with Adam (lr 1e-4, betas 0.9 / 0.99), its own optimiser, after each
  segmentation step on the whole batch predicted by the segmentation network in eval mode without
  gradient (labeled -> 1, unlabeled -> 0);
* adversarial term: CE(D(sdf_unlabeled, image_unlabeled), "labeled") with D in eval mode, weight
  w(t) = 0.01 ramp(t // 150, L), L = 40 (LA) / 200 (ACDC).
The recipe pools D with a fixed 7×7×5 window (the output size for 112×112×80 crops); we pool globally, which
is the same there and works for any crop. There is no authors' ACDC recipe; the 2-D variant uses the same
settings with 2-D convolutions. Inference: the segmentation logits (main decoder), not the SDF.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods.base import Batch, Method, MethodOutput, MethodSettings
from methods.ema import cpu_state
from utils.losses import signed_distance_map
from utils.ramps import consistency_weight

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
    consistency_by_dims = {3: 0.01, 2: 0.01}

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

    def training_loss(self, labeled: Batch, unlabeled: Batch | None, iteration: int) -> MethodOutput:
        unlabeled = self.require_unlabeled(unlabeled)
        s = self.settings
        n = len(labeled)
        images = torch.cat([labeled.image, unlabeled.image])
        out = self.network(images)
        dice, terms = self.supervised_loss(out.logits[:n], labeled.label)
        sdf_loss = F.mse_loss(out.sdf[:n], signed_distance_map(labeled.label, self.network.num_classes))
        supervised = dice + SDF_WEIGHT * sdf_loss
        self.discriminator.eval()
        verdict = self.discriminator(out.sdf[n:], unlabeled.image)
        # the segmentation network wants its unlabeled shapes to pass as labeled ones
        adversarial = F.cross_entropy(verdict, torch.full((len(unlabeled),), LABELED, device=images.device))
        weight = consistency_weight(iteration, s.consistency, s.consistency_rampup)
        loss = self.supervised_weight * supervised + weight * adversarial
        self._last_batch = (images.detach(), n)
        terms.update(total=loss.detach(), supervised=supervised.detach(), sdf=sdf_loss.detach(),
                     adversarial=adversarial.detach(), consistency_weight=torch.tensor(weight))
        if self._last_discriminator_loss is not None:
            terms["discriminator_previous"] = self._last_discriminator_loss
        return MethodOutput(loss, terms, out.logits[:n].detach())

    def after_optimizer_step(self, iteration: int) -> None:
        """One discriminator step on the batch just used, predicted by the updated network in eval mode."""
        if self._last_batch is None:
            return
        images, n = self._last_batch
        self._last_batch = None
        was_training = self.network.training
        self.network.eval()
        with torch.no_grad():
            sdf = self.network(images).sdf
        self.network.train(was_training)
        self.discriminator.train()
        target = torch.full((images.shape[0],), UNLABELED, device=images.device)
        target[:n] = LABELED
        loss = F.cross_entropy(self.discriminator(sdf, images), target)
        self.discriminator_optimizer.zero_grad(set_to_none=True)  # also drops the grads of the generator step
        loss.backward()
        self.average_gradients(self.discriminator.parameters())  # one discriminator on every rank (torchrun)
        self.discriminator_optimizer.step()
        self._last_discriminator_loss = loss.detach().cpu()

    def state_dict(self) -> dict:
        state = {"discriminator": cpu_state(self.discriminator.state_dict()),
                 "discriminator_optimizer": cpu_state(self.discriminator_optimizer.state_dict())}
        if self._last_discriminator_loss is not None:
            state["last_discriminator_loss"] = self._last_discriminator_loss.clone()
        return state

    def load_state_dict(self, state: dict) -> None:
        if "discriminator" in state:
            self.discriminator.load_state_dict(state["discriminator"])
            self.discriminator_optimizer.load_state_dict(state["discriminator_optimizer"])
            self._last_discriminator_loss = state.get("last_discriminator_loss", self._last_discriminator_loss)
