"""SS-Net: supervised Dice + w(t) [ LDS (VAT, Dice discrepancy) + 0.1 (class separation, labeled + unlabeled) ].

Wu et al., "Exploring Smoothness and Class-Separation for Semi-supervised Medical Image Segmentation",
MICCAI 2022; the method in this project's words: docs/method.md. Behaviour follows the official code
(ycwu1997/SS-Net, `train_ss_3d.py` / `train_ss_2d.py`) where it differs from the paper; the paper's versions are
settings: memory_keep="highest" (the paper's "highest-ranked" prototypes; the code keeps the lowest-scored) and
memory_weights="learned" (learned prototype weights; in the code they are all 1).

`SSNet.forward` is the official order: one loss whose single backward the trainer runs. With --low_memory 1 (the
default) the same computation runs in another order, each part backpropagated as soon as it is complete
(methods/ss_net_low_memory.py); tests/test_memory_step.py checks that both end bit for bit equal.
The projection / prediction / selector heads belong to this method, not to the network; their module names are
those of the official checkpoints (networks.loading.split_head_keys divides those between both).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from methods.base import Batch, Method, MethodOutput, MethodSettings, StepContext
from methods.recipe import SSNET_ACDC_DICE, SSNET_ACDC_SCHEDULE, SSNET_LA_DICE, SSNET_LA_SCHEDULE, Recipe
from methods.ss_net_heads import SSNetHeads
from methods.ss_net_low_memory import RecomputingHeads, low_memory_step
from utils.argmax import argmax_classes
from utils.choices import unknown_choice
from utils.losses import LDS_DISCREPANCIES, class_rows, separation_of_class_rows, vat_lds_loss
from utils.modes import eval_mode
from utils.profiling import section
from utils.prototype_memory import PrototypeMemory


class SSNet(Method):
    name = "ss_net"
    trained_with_network = ("heads",)
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

    def forward(self, labeled: Batch, unlabeled: Batch | None, step: StepContext) -> MethodOutput:
        if step.saves_memory:  # --low_memory 1: the same computation, each part backpropagated when complete
            return low_memory_step(self, labeled, unlabeled, step)
        n, images = len(labeled), self.labeled_then_unlabeled(labeled, unlabeled)
        with section("main forward"):
            out = self.network(images)
        pseudo_labels = self.remember_prototypes(out.logits, out.features[:n], labeled.label, step)
        with section("heads, labeled half"):
            separation_labeled = self.separation(out.features[:n], labeled.label)
        with section("heads, unlabeled half"):
            separation_unlabeled = self.separation(out.features[n:], pseudo_labels)
        dice, terms = self.supervised_loss(out.logits[:n], labeled.label)
        lds = self.lds(images)
        weight = self.warmup_weight(step.iteration)
        loss = self.objective(dice, lds, separation_labeled, separation_unlabeled, weight)
        return self.ss_net_output(loss, out.logits[:n], terms, dice, lds, separation_labeled, separation_unlabeled,
                                  weight)

    def objective(self, dice: Tensor, lds: Tensor, separation_labeled: Tensor, separation_unlabeled: Tensor,
                  weight: float) -> Tensor:
        """dice + w(t) (lds + 0.1 (cl_l + cl_u)), as `train_ss_3d.py:177` / `train_ss_2d.py` compute it."""
        separation = self.settings.separation_weight * (separation_labeled + separation_unlabeled)
        return self.weighted_loss(dice, lds + separation, weight)

    @section("memory update")
    def remember_prototypes(self, logits: Tensor, labeled_features: Tensor, labels: Tensor, step: StepContext
                            ) -> Tensor:
        """Put the correctly predicted labeled FOREGROUND voxels, projected with eval-mode heads, into the memory;
        return the unlabeled half's pseudo labels (argmax, no threshold, as the official code)."""
        probs = torch.softmax(logits.detach(), dim=1)
        n = labels.shape[0]
        predicted = argmax_classes(probs[:n])
        candidate = (predicted == labels) & (predicted > 0)
        # Under torchrun every rank takes the candidates of all ranks (rank order = the global batch order), so the
        # memory is the same everywhere; gathered before the empty check, which every rank must agree on.
        vectors = step.gather_across_ranks(labeled_features.detach().movedim(1, -1)[candidate])
        vector_labels = step.gather_across_ranks(labels[candidate])
        if vectors.shape[0] > 0:
            with torch.no_grad(), eval_mode(self.heads.projection_head):
                projected = self.heads.projection_head(vectors)
            # the selector ranks in training mode (batch statistics, running stats updated), as the official code
            self.memory.update(projected, vector_labels,
                               lambda c, rows: torch.sigmoid(self.heads.feature_selector(c)(rows)))
        return argmax_classes(probs[n:])

    def separation(self, features: Tensor, labels: Tensor, heads: SSNetHeads | RecomputingHeads | None = None
                   ) -> Tensor:
        """The class-separation loss (utils.losses) of the heads' embedding of `features` against the memory.
        `heads`: another view of the heads (the low-memory order's recomputes their activations in backward)."""
        heads = heads or self.heads
        # only the rows of the classes in the memory are kept from the embedding of every voxel
        rows = class_rows(heads.embed(features), labels.reshape(-1), self.memory.prototypes)
        return separation_of_class_rows(rows, self.memory.prototypes, heads.feature_selector, heads.memory_selector,
                                        self.settings.memory_weights, features.new_zeros(()))

    def lds(self, images: Tensor, clean_probs: Tensor | None = None) -> Tensor:
        """Local distributional smoothness: VAT with the Dice discrepancy (`clean_probs`: its target, if known)."""
        s = self.settings
        return vat_lds_loss(self.network, images, self.discrepancy, xi=s.xi, magnitude=s.magnitude,
                            power_iterations=s.power_iterations, clean_probs=clean_probs)

    def ss_net_output(self, loss: Tensor, labeled_logits: Tensor, terms: dict, dice: Tensor, lds: Tensor,
                      separation_labeled: Tensor, separation_unlabeled: Tensor, weight: float) -> MethodOutput:
        terms = {**terms, "supervised": dice, "lds": lds, "separation_labeled": separation_labeled,
                 "separation_unlabeled": separation_unlabeled}
        memory = {f"memory_size_class{c}": torch.tensor(float(count))
                  for c, count in enumerate(self.memory.counts()[1:], start=1)}
        return self.output(loss, labeled_logits, terms, weight, memory)

    def extra_state(self) -> dict:
        return {"memory": self.memory.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        if "memory" in state:
            self.memory.load_state_dict(state["memory"], self.device)

