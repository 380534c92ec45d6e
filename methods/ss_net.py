"""SS-Net: supervised Dice + w(t) [ LDS (VAT, Dice discrepancy) + 0.1 (class separation, labeled + unlabeled) ].

Wu et al., "Exploring Smoothness and Class-Separation for Semi-supervised Medical Image Segmentation",
MICCAI 2022. Behaviour follows the official code (ycwu1997/SS-Net, `train_ss_3d.py` / `train_ss_2d.py`) where it
differs from the paper; the paper's versions are settings: memory_keep="highest" (the paper's "highest-ranked"
prototypes; the code keeps the lowest-scored) and memory_weights="learned" (learned prototype weights; in the code
they are all 1).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor, nn

from methods.base import Batch, Method, MethodOutput, MethodSettings
from methods.recipe import SSNET_ACDC_DICE, SSNET_ACDC_SCHEDULE, SSNET_LA_DICE, SSNET_LA_SCHEDULE, Recipe
from utils.losses import LDS_DISCREPANCIES, class_separation_loss, vat_lds_loss
from utils.prototype_memory import PrototypeMemory


def voxel_vectors(features: Tensor) -> Tensor:
    """(B, C, *spatial) -> (B * voxels, C): one row per voxel, ordered like labels.reshape(-1)."""
    return features.movedim(1, -1).reshape(-1, features.shape[1])


@contextmanager
def eval_mode(module: nn.Module):
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


class SSNet(Method):
    name = "ss_net"
    recipes = {
        3: Recipe("ycwu1997/SS-Net @ c0a8bf6 `code/train_ss_3d.py`",
                  ":26 iterations, :35-36 lambda and ramp, :163-175 w after the increment, :177 loss, :232-235 LR, "
                  "`code/utils/losses.py:44-48` Dice", 1.0, SSNET_LA_SCHEDULE, SSNET_LA_DICE),
        2: Recipe("ycwu1997/SS-Net @ c0a8bf6 `code/train_ss_2d.py`",
                  ":29 iterations, :41-42 lambda and ramp, :165-172 w before the increment, :93 constant LR, "
                  "`code/utils/losses.py:6-42` Dice", 0.1, SSNET_ACDC_SCHEDULE, SSNET_ACDC_DICE),
    }

    def __init__(self, network: nn.Module, settings: MethodSettings):
        super().__init__(network, settings)
        if settings.lds_discrepancy not in LDS_DISCREPANCIES:
            raise ValueError(
                f"unknown LDS discrepancy {settings.lds_discrepancy!r}; choose from: {', '.join(LDS_DISCREPANCIES)}"
            )
        self.discrepancy = LDS_DISCREPANCIES[settings.lds_discrepancy]
        self.memory = PrototypeMemory(settings.num_classes, settings.memory_size, settings.memory_keep)

    def _rank_candidates(self, c: int, candidates: Tensor) -> Tensor:
        # The selector stays in training mode here (batch statistics, running stats updated), as the official code.
        return torch.sigmoid(self.network.feature_selector(c)(candidates))

    def _update_memory(self, features_l: Tensor, probs_l: Tensor, labels: Tensor) -> None:
        """Candidates are correctly predicted labeled FOREGROUND voxels, projected with eval-mode heads."""
        predicted = probs_l.argmax(dim=1)
        candidate = ((predicted == labels) & (predicted > 0)).reshape(-1)
        # Under torchrun every rank takes the candidates of all ranks (rank order = the global batch order), so
        # the memory is the same everywhere; gathered before the empty check, which every rank must agree on.
        vectors = self.gather_across_ranks(voxel_vectors(features_l.detach())[candidate])
        vector_labels = self.gather_across_ranks(labels.reshape(-1)[candidate])
        if vectors.shape[0] == 0:
            return
        with torch.no_grad(), eval_mode(self.network.projection_head):
            projected = self.network.project(vectors)
        self.memory.update(projected, vector_labels, self._rank_candidates)

    def _separation(self, features: Tensor, labels: Tensor) -> Tensor:
        net = self.network
        predicted_features = net.predict(net.project(voxel_vectors(features)))
        return class_separation_loss(predicted_features, labels.reshape(-1), self.memory.prototypes,
                                     net.feature_selector, net.memory_selector, self.settings.memory_weights)

    def training_loss(self, labeled: Batch, unlabeled: Batch | None, iteration: int) -> MethodOutput:
        if unlabeled is None or len(unlabeled) == 0:
            raise ValueError("ss_net needs unlabeled data in every batch (--batch_size > --labeled_bs)")
        s = self.settings
        n_labeled = len(labeled)
        images = torch.cat([labeled.image, unlabeled.image])
        out = self.network(images)
        logits, features = out.logits, out.features
        probs = torch.softmax(logits, dim=1)
        labels = labeled.label
        pseudo_labels = probs[n_labeled:].detach().argmax(dim=1)  # no threshold, as the official code

        self._update_memory(features[:n_labeled], probs[:n_labeled].detach(), labels)
        separation_l = self._separation(features[:n_labeled], labels)
        separation_u = self._separation(features[n_labeled:], pseudo_labels)

        supervised, terms = self.supervised_loss(logits[:n_labeled], labels)
        lds = vat_lds_loss(
            self.network, images, self.discrepancy, xi=s.xi, epsilon=s.epsilon, power_iterations=s.power_iterations
        )
        weight = self.warmup_weight(iteration)
        regularisers = lds + s.separation_weight * (separation_l + separation_u)
        loss = self.supervised_weight * supervised + weight * regularisers
        terms.update(
            total=loss.detach(),
            supervised=supervised.detach(),
            lds=lds.detach(),
            separation_labeled=separation_l.detach(),
            separation_unlabeled=separation_u.detach(),
            consistency_weight=torch.tensor(weight),
        )
        for c, count in enumerate(self.memory.counts()[1:], start=1):
            terms[f"memory_size_class{c}"] = torch.tensor(float(count))
        return MethodOutput(loss, terms, logits[:n_labeled].detach())

    def state_dict(self) -> dict:
        return {"memory": self.memory.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "memory" in state:
            device = next(self.network.parameters()).device
            self.memory.load_state_dict(state["memory"], device)
