"""SS-Net: supervised Dice + w(t) [ LDS (VAT, Dice discrepancy) + 0.1 (class separation, labeled + unlabeled) ].

Wu et al., "Exploring Smoothness and Class-Separation for Semi-supervised Medical Image Segmentation",
MICCAI 2022; the method in this project's words: docs/method.md. Behaviour follows the official code
(ycwu1997/SS-Net, `train_ss_3d.py` / `train_ss_2d.py`) where it differs from the paper; the paper's versions are
settings: memory_keep="highest" (the paper's "highest-ranked" prototypes; the code keeps the lowest-scored) and
memory_weights="learned" (learned prototype weights; in the code they are all 1).

The projection / prediction / selector heads belong to this method (SSNetHeads), not to the network: they are
trained with it by the same optimiser and saved in the method's state. Their module names are those of the
official checkpoints, whose single state dict networks.loading.split_head_keys divides between both.

The memory-saving step (the trainer's --low_memory 1, the default; docs/speed.md) computes exactly what the
official order computes, about half the peak memory: the main pass's terms are backpropagated before the VAT
passes run, each separation term right after its heads (whose activations are recomputed in backward), and
VAT's clean target reuses the main pass's encoder trunk. tests/test_memory_step.py checks that the weights,
gradients, BatchNorm statistics, prototype memory and generator state equal those of one backward bit for bit.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from methods.base import Batch, Method, MethodOutput, MethodSettings
from methods.ema import cpu_state
from methods.recipe import SSNET_ACDC_DICE, SSNET_ACDC_SCHEDULE, SSNET_LA_DICE, SSNET_LA_SCHEDULE, Recipe
from utils.argmax import argmax_classes
from utils.choices import unknown_choice
from utils.losses import LDS_DISCREPANCIES, class_rows, separation_of_class_rows, vat_lds_loss
from utils.profiling import section
from utils.prototype_memory import PrototypeMemory

HEAD_DIM = 32


def mlp_head(in_dim: int, out_dim: int, activation: nn.Module) -> nn.Sequential:
    """Linear(in→32) → BatchNorm1d(32) → activation → Linear(32→out); indices 0..3 as in the official keys.

    The activation runs in place (on BatchNorm's output, which BatchNorm's backward does not read): the same
    values and gradients as out of place, one (N, 32) tensor less per head for backward."""
    return nn.Sequential(nn.Linear(in_dim, HEAD_DIM), nn.BatchNorm1d(HEAD_DIM), activation,
                         nn.Linear(HEAD_DIM, out_dim))


class RecomputedNorm:
    """`layers` then a BatchNorm, as one piece whose activations backward recomputes from its input
    (torch.utils.checkpoint): autograd's own backward on the same recomputed values, so gradients equal
    those of the plain call bit for bit. The recomputation runs the BatchNorm on copies of its running
    statistics, which must move once per forward, not again in backward."""

    def __init__(self, norm: nn.modules.batchnorm._BatchNorm, *layers) -> None:
        self.norm, self.layers = norm, layers
        self.recomputing = False

    def __call__(self, x: Tensor) -> Tensor:
        return checkpoint(self._forward, x, use_reentrant=False, preserve_rng_state=False,
                          context_fn=lambda: (contextlib.nullcontext(), self._recomputation()))

    @contextmanager
    def _recomputation(self) -> Iterator[None]:
        self.recomputing = True
        try:
            yield
        finally:
            self.recomputing = False

    def _forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        norm = self.norm
        if not (self.recomputing and norm.training and norm.track_running_stats):
            return norm(x)
        # the call the module makes (batch statistics in training mode), on copies of the running statistics
        return F.batch_norm(x, norm.running_mean.clone(), norm.running_var.clone(), norm.weight, norm.bias,
                            True, 0.0, norm.eps)


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
        self.projection_head = mlp_head(feature_channels, HEAD_DIM, nn.ReLU(inplace=True))
        self.prediction_head = mlp_head(HEAD_DIM, HEAD_DIM, nn.ReLU(inplace=True))
        for prefix in ("contrastive_class_selector_", "contrastive_class_selector_memory"):
            for c in range(num_classes):
                self.add_module(f"{prefix}{c}", mlp_head(HEAD_DIM, 1, nn.LeakyReLU(0.2, inplace=True)))

    def project(self, features: Tensor) -> Tensor:
        return self.projection_head(features)

    def predict(self, projected: Tensor) -> Tensor:
        return self.prediction_head(projected)

    def embed(self, features: Tensor, recompute: bool = False) -> Tensor:
        """predict(project(voxel_vectors(features))) for (B, C, *spatial) features: one row per voxel.

        recompute=True keeps for backward only the two ReLU outputs of the (N, 32) activations and recomputes
        the linear layers and BatchNorms in backward (RecomputedNorm): the same values and gradients, about a
        third of the memory the heads hold on LA's 2 million voxels per batch half, for one more forward of
        three of the four linear layers."""
        if not recompute:
            return self.predict(self.project(voxel_vectors(features)))
        g, h = self.projection_head, self.prediction_head
        first = g[2](RecomputedNorm(g[1], voxel_vectors, g[0])(features))
        return h[3](h[2](RecomputedNorm(h[1], g[3], h[0])(first)))

    @staticmethod
    def recomputed(head: nn.Sequential):
        """An mlp_head as a function whose Linear and BatchNorm activations backward recomputes."""
        return lambda x: head[3](head[2](RecomputedNorm(head[1], head[0])(x)))

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
        predicted = argmax_classes(probs_l)
        candidate = (predicted == labels) & (predicted > 0)
        # Under torchrun every rank takes the candidates of all ranks (rank order = the global batch order), so
        # the memory is the same everywhere; gathered before the empty check, which every rank must agree on.
        # (The mask picks the rows of voxel_vectors(features_l) straight from the channels-last view.)
        vectors = self.gather_across_ranks(features_l.detach().movedim(1, -1)[candidate])
        candidate = candidate.reshape(-1)
        vector_labels = self.gather_across_ranks(labels.reshape(-1)[candidate])
        if vectors.shape[0] == 0:
            return
        with torch.no_grad(), eval_mode(self.heads.projection_head):
            projected = self.heads.project(vectors)
        self.memory.update(projected, vector_labels, self._rank_candidates)

    def _separation(self, features: Tensor, labels: Tensor, recompute: bool = False) -> Tensor:
        """utils.losses.class_separation_loss of the heads' embedding of `features`; the embedding of all voxels
        is dropped once the rows of the classes in the memory are taken. recompute: the heads' activations are
        recomputed in backward (SSNetHeads.embed)."""
        heads = self.heads
        rows = class_rows(heads.embed(features, recompute), labels.reshape(-1), self.memory.prototypes)
        feature_selector = heads.feature_selector
        if recompute:
            def feature_selector(c: int):
                return heads.recomputed(heads.feature_selector(c))
        return separation_of_class_rows(rows, self.memory.prototypes, feature_selector, heads.memory_selector,
                                        self.settings.memory_weights, features.new_zeros(()))

    @property
    def saves_memory(self) -> bool:
        """The memory-saving step: the trainer lets this method backpropagate parts of its loss early."""
        return self.backward_early is not None

    def _reuses_trunk(self) -> bool:
        return self.saves_memory and self.network.has_trunk and not getattr(self.network, "compiled", False)

    def training_loss(self, labeled: Batch, unlabeled: Batch | None, iteration: int) -> MethodOutput:
        unlabeled = self.require_unlabeled(unlabeled)
        s = self.settings
        images = torch.cat([labeled.image, unlabeled.image])
        weight = self.warmup_weight(iteration)
        if self.saves_memory:
            supervised, separation_l, separation_u, terms, labeled_logits, clean_probs = self._main_pass_early(
                images, labeled.label, weight)
        else:
            supervised, separation_l, separation_u, terms, labeled_logits = self._main_pass(images, labeled.label)
            clean_probs = None
        lds = vat_lds_loss(self.network, images, self.discrepancy, xi=s.xi, epsilon=s.magnitude,
                           power_iterations=s.power_iterations, clean_probs=clean_probs)
        if self.saves_memory:
            # The main-pass terms are backpropagated already; the loss keeps the total's value (the same
            # expression as below, on detached terms) and the graph of the LDS term only.
            regularisers = lds.detach() + s.separation_weight * (separation_l + separation_u)
            total = self.supervised_weight * supervised + weight * regularisers
            remaining = weight * lds
            loss = total + (remaining - remaining.detach())
        else:
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
        return MethodOutput(loss, terms, labeled_logits, monitors)

    def _main_forward(self, images: Tensor, labels: Tensor, keep_trunk: bool = False):
        """The main pass and the prototype-memory update, the start of both step orders: (the network's output,
        the unlabeled half's pseudo labels, the encoder trunk for VAT's clean pass when keep_trunk, else None)."""
        n_labeled, trunk = labels.shape[0], None
        with section("main forward"):
            if keep_trunk:
                out, trunk = self.network.forward_keeping_trunk(images)
            else:
                out = self.network(images)
            probs = torch.softmax(out.logits, dim=1)
            pseudo_labels = argmax_classes(probs[n_labeled:].detach())  # no threshold, as the official code
        with section("memory update"):
            self._update_memory(out.features[:n_labeled], probs[:n_labeled].detach(), labels)
        return out, pseudo_labels, trunk

    def _main_pass(self, images: Tensor, labels: Tensor):
        """The official order: the main-pass terms with their graphs, for one backward of the whole loss."""
        n_labeled = labels.shape[0]
        out, pseudo_labels, _ = self._main_forward(images, labels)
        features = out.features
        with section("heads, labeled half"):
            separation_l = self._separation(features[:n_labeled], labels)
        with section("heads, unlabeled half"):
            separation_u = self._separation(features[n_labeled:], pseudo_labels)
        with section("supervised Dice"):
            supervised, terms = self.supervised_loss(out.logits[:n_labeled], labels)
        return supervised, separation_l, separation_u, terms, out.logits[:n_labeled].detach()

    def _main_pass_early(self, images: Tensor, labels: Tensor, weight: float):
        """The same forward computations as `_main_pass`, in the same order, each term backpropagated as soon as
        it is complete; returns detached terms and VAT's clean target from the trunk (or None).

        Each separation term goes back through the heads into a detached copy of the features, so that the
        heads' activations of one batch half live at a time; the supervised term and that copy's gradient then
        go back through the network in one backward. Every upstream gradient is the product the single backward
        forms (w(t), then the separation weight), and every parameter and the features receive at most two
        contributions (or disjoint ones), whose sum does not depend on the order: the gradients equal the
        single backward's bit for bit. The VAT passes then run on the same weights.
        """
        s, n_labeled = self.settings, labels.shape[0]
        out, pseudo_labels, trunk = self._main_forward(images, labels, keep_trunk=self._reuses_trunk())
        logits, features = out.logits, out.features
        halves = {"labeled": (features[:n_labeled], labels), "unlabeled": (features[n_labeled:], pseudo_labels)}
        separation, features_gradient = [], []
        for half, (part, part_labels) in halves.items():
            with section(f"heads, {half} half (+ backward)"):
                heads_input = part.detach().requires_grad_()
                term = self._separation(heads_input, part_labels, recompute=True)
                if term.requires_grad:  # a constant 0 while the memory is empty
                    self.backward_early(weight * (s.separation_weight * term))
                separation.append(term.detach())
                if heads_input.grad is not None:
                    features_gradient.append((part, heads_input.grad))
        with section("supervised Dice"):
            supervised, terms = self.supervised_loss(logits[:n_labeled], labels)
        with section("main backward"):
            self.backward_early(self.supervised_weight * supervised, features_gradient)
            # under torchrun this ran inside DDP's forward, where DDP does not average: average it here (the
            # final backward's DDP average then keeps it, being linear)
            self.average_gradients(self.parameters())
        labeled_logits, clean_probs = logits[:n_labeled].detach(), None
        if trunk is not None:  # VAT's clean pass, which comes next, without recomputing the trunk
            del out, logits, features, halves, heads_input, part, features_gradient
            with section("VAT clean (trunk reused)"), torch.no_grad():
                clean_probs = torch.softmax(self.network.forward_from_trunk(trunk)[0], dim=1)
        return supervised.detach(), *separation, terms, labeled_logits, clean_probs

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
