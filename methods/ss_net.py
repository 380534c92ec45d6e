"""SS-Net: supervised Dice + w(t) [ LDS (VAT, Dice discrepancy) + 0.1 (class separation, labeled + unlabeled) ].

Wu et al., "Exploring Smoothness and Class-Separation for Semi-supervised Medical Image Segmentation",
MICCAI 2022; the method in this project's words: docs/method.md. Behaviour follows the official code
(ycwu1997/SS-Net, `train_ss_3d.py` / `train_ss_2d.py`) where it differs from the paper; the paper's versions are
settings: memory_keep="highest" (the paper's "highest-ranked" prototypes; the code keeps the lowest-scored) and
memory_weights="learned" (learned prototype weights; in the code they are all 1).

The projection / prediction / selector heads belong to this method (SSNetHeads), not to the network: they are
trained with it by the same optimiser and saved in the method's state. Their module names are those of the
official checkpoints, whose single state dict networks.loading.split_head_keys divides between both.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor, nn

from methods.base import Batch, Method, MethodOutput, MethodSettings
from methods.ema import cpu_state
from methods.recipe import SSNET_ACDC_DICE, SSNET_ACDC_SCHEDULE, SSNET_LA_DICE, SSNET_LA_SCHEDULE, Recipe
from utils.choices import unknown_choice
from utils.losses import LDS_DISCREPANCIES, class_separation_loss, vat_lds_loss
from utils.prototype_memory import PrototypeMemory

HEAD_DIM = 32


def mlp_head(in_dim: int, out_dim: int, activation: nn.Module) -> nn.Sequential:
    """Linear(in→32) → BatchNorm1d(32) → activation → Linear(32→out); indices 0..3 as in the official keys."""
    return nn.Sequential(nn.Linear(in_dim, HEAD_DIM), nn.BatchNorm1d(HEAD_DIM), activation,
                         nn.Linear(HEAD_DIM, out_dim))


class SSNetHeads(nn.Module):
    """SS-Net's heads on individual voxel embeddings, i.e. on (N, dim) tensors.

    projection g: (N, feature_channels) → (N, 32); prediction h: (N, 32) → (N, 32); per class c a feature
    selector S_c and a memory selector S^mem_c: (N, 32) → (N, 1) logits. Registered as `projection_head`,
    `prediction_head`, `contrastive_class_selector_{c}`, `contrastive_class_selector_memory{c}` (no underscore
    before the index in the memory name): the official names. 8,452 parameters for 16 features and 2 classes.
    """

    def __init__(self, feature_channels: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.projection_head = mlp_head(feature_channels, HEAD_DIM, nn.ReLU())
        self.prediction_head = mlp_head(HEAD_DIM, HEAD_DIM, nn.ReLU())
        for prefix in ("contrastive_class_selector_", "contrastive_class_selector_memory"):
            for c in range(num_classes):
                self.add_module(f"{prefix}{c}", mlp_head(HEAD_DIM, 1, nn.LeakyReLU(0.2)))

    def project(self, features: Tensor) -> Tensor:
        return self.projection_head(features)

    def predict(self, projected: Tensor) -> Tensor:
        return self.prediction_head(projected)

    def feature_selector(self, class_index: int) -> nn.Module:
        return getattr(self, f"contrastive_class_selector_{self._checked_class(class_index)}")

    def memory_selector(self, class_index: int) -> nn.Module:
        return getattr(self, f"contrastive_class_selector_memory{self._checked_class(class_index)}")

    def _checked_class(self, class_index: int) -> int:
        if not 0 <= class_index < self.num_classes:
            raise IndexError(f"class index {class_index} out of range for num_classes={self.num_classes}")
        return class_index


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
    # the background selectors are never used (no background prototypes), nor any head before the memory fills
    leaves_parameters_unused = True
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
            raise unknown_choice("LDS discrepancy", settings.lds_discrepancy, LDS_DISCREPANCIES)
        self.discrepancy = LDS_DISCREPANCIES[settings.lds_discrepancy]
        self.memory = PrototypeMemory(settings.num_classes, settings.memory_size, settings.memory_keep)
        self.heads = SSNetHeads(network.feature_channels, settings.num_classes).to(self.device)
        self.extra_modules = {"heads": self.heads}

    def _rank_candidates(self, c: int, candidates: Tensor) -> Tensor:
        # The selector stays in training mode here (batch statistics, running stats updated), as the official code.
        return torch.sigmoid(self.heads.feature_selector(c)(candidates))

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
        with torch.no_grad(), eval_mode(self.heads.projection_head):
            projected = self.heads.project(vectors)
        self.memory.update(projected, vector_labels, self._rank_candidates)

    def _separation(self, features: Tensor, labels: Tensor) -> Tensor:
        heads = self.heads
        predicted_features = heads.predict(heads.project(voxel_vectors(features)))
        return class_separation_loss(predicted_features, labels.reshape(-1), self.memory.prototypes,
                                     heads.feature_selector, heads.memory_selector, self.settings.memory_weights)

    def training_loss(self, labeled: Batch, unlabeled: Batch | None, iteration: int) -> MethodOutput:
        unlabeled = self.require_unlabeled(unlabeled)
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
            self.network, images, self.discrepancy, xi=s.xi, epsilon=s.magnitude, power_iterations=s.power_iterations
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
        )
        monitors = {"consistency_weight": torch.tensor(weight)}
        for c, count in enumerate(self.memory.counts()[1:], start=1):
            monitors[f"memory_size_class{c}"] = torch.tensor(float(count))
        return MethodOutput(loss, terms, logits[:n_labeled].detach(), monitors)

    def state_dict(self) -> dict:
        return {"memory": self.memory.state_dict(), "heads": cpu_state(self.heads.state_dict())}

    def load_state_dict(self, state: dict) -> None:
        if "memory" in state:
            self.memory.load_state_dict(state["memory"], self.device)
        if "heads" in state:
            self.heads.load_state_dict(state["heads"])

    def load_legacy_network_keys(self, head_state: dict[str, Tensor]) -> None:
        if head_state:
            self.heads.load_state_dict(head_state)
