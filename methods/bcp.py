"""BCP: bidirectional copy-paste (Bai et al., CVPR 2023), a pre-train stage then a self-train stage.

Source: DeepMed-Lab-ECNU/BCP @ 7879f98, `code/LA_BCP_train.py` (LA, 3-D) and `code/ACDC_BCP_train.py` (ACDC, 2-D),
helpers in `code/utils/BCP_utils.py` and `code/utils/losses.py`; every value is cited in `BCP.recipes` below and in
docs/baselines.md.

One cuboid of 2/3 of the crop per axis, at a random corner, is the region a second image is pasted into
(`cuboid_keep_mask`: 1 where the first image stays, 0 in the cuboid).

* Pre-train (`settings.stage == "pretrain"`, `--pretrain_iterations`; training/stages.py runs it first, same folder):
  the labeled half of the batch split in two, a = first half, b = second; input = a outside the cuboid, b inside
  it; LA: (CE + per-sample Dice) / 2 of the pasted label over the whole crop; ACDC: the copy-paste loss with
  weight 1 on both regions. Constant LR. The best pre-train checkpoint (by --select) starts the self-train.
* Self-train: an EMA teacher (--ema_decay 0.99, no warm-up; a copy of the pre-trained student) labels the two unlabeled
  halves in two forwards (LA: foreground probability >= 0.5; ACDC: argmax; then the largest connected component of
  each class, full connectivity); two student forwards on the two pasted images, labeled <-> unlabeled both ways;
  each one's loss weighs the region carrying a pseudo label by `--consistency` (BCP's u_weight, 0.5) and the region
  carrying the ground truth by 1. loss = the sum of the two. The warm-up weight both scripts compute is only logged
  (LA :246, ACDC :370), never used: it is not computed here.

Deviations: the corner is drawn with torch's generator (the scripts use NumPy's global one; same distribution:
uniform in [0, size - int(size * 2/3)) per axis); LA's script hard-codes 112 / 112 / 80 as the crop size in that
draw (BCP_utils.py:23-25), we use the crop's size (equal at the default crop). ACDC's self-train loads the
pre-train's optimiser state with its weights (ACDC :336); here every stage starts with a fresh SGD (as LA :218,
:221). The authors select the LA checkpoints on the test set (BCP issue #19); here the run's --select decides.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods.base import Batch, Method, MethodOutput, MethodSettings, StepContext
from methods.ema import ema_update_constant, make_teacher
from methods.recipe import Dice, Recipe, Schedule
from utils.errors import UserError
from utils.losses import masked_dice_loss
from utils.postprocess import keep_largest_component_per_class

PRETRAIN = "pretrain"
MASK_RATIO = 2 / 3  # LA :51, BCP_utils.py:22; ACDC generate_mask :135
CE_EPS = 1e-16  # BCP_utils.py:66-67; ACDC :177-178


@dataclass(frozen=True)
class Variant:
    """What differs between BCP's two scripts besides the schedule."""

    dice_per_sample: bool  # LA mask_DiceLoss: per sample and class (losses.py:47-77); ACDC DiceLoss: batch pooled
    threshold: float | None  # LA: foreground probability >= 0.5 (:57-63); None: argmax (ACDC :112-117)
    pretrain_split_loss: bool  # ACDC: the copy-paste loss with weights 1/1 (:249); LA: whole-crop loss (:159-161)
    labeled_outside_first_half: bool  # LA: (a labeled | a unlabeled pasted) first (:248, :252); ACDC: b (:373)
    labeled_outside_first: bool  # forward order of the two pasted images: LA labeled-outside first, ACDC second
    ema_buffers: bool  # ACDC averages the whole state dict, BN statistics too (:123-129); LA parameters only


VARIANTS = {
    3: Variant(dice_per_sample=True, threshold=0.5, pretrain_split_loss=False, labeled_outside_first_half=True,
               labeled_outside_first=True, ema_buffers=False),
    2: Variant(dice_per_sample=False, threshold=None, pretrain_split_loss=True, labeled_outside_first_half=False,
               labeled_outside_first=False, ema_buffers=True),
}


# -- the pure pieces --------------------------------------------------------------------------------------------------
def cuboid_corner(spatial_shape: tuple[int, ...], ratio: float = MASK_RATIO,
                  generator: torch.Generator | None = None) -> tuple[int, ...]:
    """The cuboid's first voxel, one uniform draw per axis in order, in [0, size - int(size * ratio))."""
    return tuple(int(torch.randint(0, size - int(size * ratio), (1,), generator=generator))
                 for size in spatial_shape)


def cuboid_keep_mask(spatial_shape: tuple[int, ...], corner: tuple[int, ...], ratio: float = MASK_RATIO,
                     device: torch.device | str = "cpu") -> Tensor:
    """int64 mask of `spatial_shape`: 1 where the first image stays, 0 in the cuboid of int(size * ratio) voxels per
    axis starting at `corner`, where the second image is pasted."""
    keep = torch.ones(spatial_shape, dtype=torch.int64, device=device)
    keep[tuple(slice(c, c + int(size * ratio)) for c, size in zip(corner, spatial_shape, strict=True))] = 0
    return keep


def copy_paste(outside: Tensor, inside: Tensor, keep: Tensor) -> Tensor:
    """`outside` where keep is 1, `inside` in the cuboid (keep 0); images (B, C, *S) or labels (B, *S), keep (*S)."""
    return outside * keep + inside * (1 - keep)


def copy_paste_loss(logits: Tensor, outside_labels: Tensor, inside_labels: Tensor, keep: Tensor,
                    outside_weight: float, inside_weight: float, *, per_sample: bool, squared: bool,
                    smooth: float) -> tuple[Tensor, Tensor]:
    """(Dice, CE) of a pasted image: each region scored against its own labels and weighted (BCP's `mix_loss`).

    Dice: the recipe's soft Dice restricted to each region (all classes); CE: the mean over the region's voxels of
    the batch. The scripts' loss is (Dice + CE) / 2.
    """
    probs = torch.softmax(logits, dim=1)
    outside = keep.expand(logits.shape[0], *keep.shape[-(logits.ndim - 2):]).to(logits.dtype)
    inside = 1 - outside
    dice = masked_dice_loss(probs, outside_labels, outside, per_sample=per_sample, squared=squared,
                            smooth=smooth) * outside_weight
    dice = dice + masked_dice_loss(probs, inside_labels, inside, per_sample=per_sample, squared=squared,
                                   smooth=smooth) * inside_weight
    ce = outside_weight * (F.cross_entropy(logits, outside_labels, reduction="none") * outside).sum() \
        / (outside.sum() + CE_EPS)
    ce = ce + inside_weight * (F.cross_entropy(logits, inside_labels, reduction="none") * inside).sum() \
        / (inside.sum() + CE_EPS)
    return dice, ce


@torch.no_grad()
def pseudo_labels(logits: Tensor, threshold: float | None, largest_component: bool = True) -> Tensor:
    """Hard labels (B, *S) int64 from a teacher's logits (B, K, *S).

    threshold: foreground when its probability (class 1) >= threshold (BCP's LA, two classes); None: argmax of
    the probabilities. largest_component: each class >= 1 keeps its largest connected component per sample (full
    connectivity), the rest of it becomes background.
    """
    probs = torch.softmax(logits, dim=1)
    labels = (probs[:, 1] >= threshold).long() if threshold is not None else probs.argmax(dim=1)
    if not largest_component:
        return labels
    classes = range(1, logits.shape[1])
    kept = np.stack([keep_largest_component_per_class(sample, classes) for sample in labels.cpu().numpy()])
    return torch.from_numpy(kept).to(labels.device)


# -- the method -------------------------------------------------------------------------------------------------------
class BCP(Method):
    name = "bcp"
    stages = (PRETRAIN, "train")
    recipes = {
        3: Recipe("DeepMed-Lab-ECNU/BCP @ 7879f98 `code/LA_BCP_train.py`",
                  ":36 pre-train 2,000, :37 self-train 15,000, :39-40 batch 8 (4 labeled), :41 LR 0.01, :50 "
                  "u_weight 0.5, :51 mask 2/3, :143-190 pre-train at constant LR, :218-222 self-train from the "
                  "pre-train's best weights with a fresh SGD, :243-244 pseudo labels p >= 0.5 + largest component, "
                  ":270 EMA 0.99 (BCP_utils.py:78-81), :273-276 LR x0.1 every 2,500; `code/utils/losses.py:8-77` "
                  "Dice (per sample, all classes, plain sums, smooth 1e-5)", 0.5,
                  Schedule(15000, "step", 40.0, rampup_zero_based=False, lr_step=2500, pretrain_iterations=2000),
                  Dice(include_background=True, squared_denominator=False, smooth=1e-5), batch=(8, 4),
                  note="λ = the weight of the pseudo-labelled region (u_weight); the warm-up is computed and "
                       "never used (:246)"),
        2: Recipe("DeepMed-Lab-ECNU/BCP @ 7879f98 `code/ACDC_BCP_train.py`",
                  ":37 and :196 pre-train 10,000 (30,000 before b62b10b), :38 self-train 30,000, :39 and :46 batch "
                  "24 (12 labeled), :41 LR 0.01 never changed, :48 u_weight 0.5, :131-140 mask 2/3, :249 pre-train "
                  "loss weights 1/1, :335-336 self-train from the pre-train's best, :365-366 argmax + largest "
                  "component, :390 EMA 0.99 of the state dict (:123-129); `code/utils/losses.py:79-134` Dice "
                  "(batch pooled, all classes, squared, smooth 1e-10)", 0.5,
                  Schedule(30000, "constant", 200.0, rampup_zero_based=True, pretrain_iterations=10000),
                  Dice(include_background=True, squared_denominator=True, smooth=1e-10), batch=(24, 12),
                  note="λ = u_weight; 5 × 0.1 × ramp is computed and only logged (:370); fresh SGD in the "
                       "self-train (the script loads the pre-train's optimiser state, :336)"),
    }

    def __init__(self, network: nn.Module, settings: MethodSettings):
        super().__init__(network, settings)
        self.variant = VARIANTS[network.spatial_dims]
        self.pretraining = settings.stage == PRETRAIN
        # the pre-train has no teacher; the self-train's starts as the pre-trained student (LA :222, ACDC :335)
        self.teacher = None if self.pretraining else make_teacher(network)

    def dice(self) -> dict:
        """The recipe's Dice as keywords of `masked_dice_loss`."""
        s = self.settings
        return {"per_sample": self.variant.dice_per_sample, "squared": s.dice_squared_denominator,
                "smooth": s.dice_smooth}

    @staticmethod
    def halves(batch: Tensor) -> tuple[Tensor, Tensor]:
        n = batch.shape[0] // 2
        return batch[:n], batch[n:]

    def check_batch(self, labeled: Batch, unlabeled: Batch | None) -> None:
        n_unlabeled = 0 if self.pretraining else len(self.require_unlabeled(unlabeled))
        if len(labeled) % 2 or (not self.pretraining and n_unlabeled != len(labeled)):
            raise UserError(f"bcp pastes pairs of images: --labeled_bs must be even and equal to --batch_size - "
                            f"--labeled_bs on each process (got {len(labeled)} labeled, {n_unlabeled} unlabeled); "
                            f"the recipe's are 4 of 8 (LA) and 12 of 24 (ACDC)")

    def forward(self, labeled: Batch, unlabeled: Batch | None, step: StepContext) -> MethodOutput:
        self.check_batch(labeled, unlabeled)
        return self.pretrain_step(labeled) if self.pretraining else self.self_train_step(labeled, unlabeled)

    def pretrain_step(self, labeled: Batch) -> MethodOutput:
        image_a, image_b = self.halves(labeled.image)
        label_a, label_b = self.halves(labeled.label)
        keep = cuboid_keep_mask(image_a.shape[2:], cuboid_corner(tuple(image_a.shape[2:])), device=image_a.device)
        logits = self.network(copy_paste(image_a, image_b, keep)).logits
        if self.variant.pretrain_split_loss:  # ACDC: each region against its own labels, weights 1 and 1
            dice, ce = copy_paste_loss(logits, label_a, label_b, keep, 1.0, 1.0, **self.dice())
        else:  # LA: the pasted label over the whole crop
            pasted = copy_paste(label_a, label_b, keep)
            dice = masked_dice_loss(torch.softmax(logits, dim=1), pasted, torch.ones_like(logits[:, 0]),
                                    **self.dice())
            ce = F.cross_entropy(logits, pasted)
        loss = self.supervised_weight * (dice + ce) / 2
        return self.pasted_output(loss, {"dice": dice, "ce": ce})

    def self_train_step(self, labeled: Batch, unlabeled: Batch) -> MethodOutput:
        v, w = self.variant, self.settings.consistency
        image_a, image_b = self.halves(labeled.image)
        label_a, label_b = self.halves(labeled.label)
        unlabeled_a, unlabeled_b = self.halves(unlabeled.image)
        with torch.no_grad():  # two teacher forwards: BN in training mode normalises each half on its own
            self.teacher.train()
            pseudo_a = pseudo_labels(self.teacher(unlabeled_a).logits, v.threshold)
            pseudo_b = pseudo_labels(self.teacher(unlabeled_b).logits, v.threshold)
        keep = cuboid_keep_mask(image_a.shape[2:], cuboid_corner(tuple(image_a.shape[2:])), device=image_a.device)
        # the labeled-outside image pairs the halves the recipe pairs; the other image the other halves
        if v.labeled_outside_first_half:
            labeled_out = (image_a, unlabeled_a, label_a, pseudo_a)
            unlabeled_out = (unlabeled_b, image_b, pseudo_b, label_b)
        else:
            labeled_out = (image_b, unlabeled_b, label_b, pseudo_b)
            unlabeled_out = (unlabeled_a, image_a, pseudo_a, label_a)
        # the ground-truth regions are the supervised part (supervised_weight, 1 in training), the pseudo-labelled
        # ones the unlabeled term (--consistency = BCP's u_weight)
        gt = self.supervised_weight
        order = [("labeled_outside", labeled_out, gt, w), ("unlabeled_outside", unlabeled_out, w, gt)]
        if not v.labeled_outside_first:
            order.reverse()
        loss, terms = 0.0, {}
        for name, (outside, inside, outside_labels, inside_labels), outside_weight, inside_weight in order:
            logits = self.network(copy_paste(outside, inside, keep)).logits
            dice, ce = copy_paste_loss(logits, outside_labels, inside_labels, keep, outside_weight, inside_weight,
                                       **self.dice())
            loss = loss + (dice + ce) / 2
            terms[f"{name}_dice"], terms[f"{name}_ce"] = dice, ce
        return self.pasted_output(loss, terms)

    @staticmethod
    def pasted_output(loss: Tensor, terms: dict[str, Tensor]) -> MethodOutput:
        """No training image panels: every input is a pasted image, none is a labeled batch with its labels."""
        return MethodOutput(loss, {"total": loss.detach(), **{k: v.detach() for k, v in terms.items()}}, None)

    def after_optimizer_step(self, step: StepContext) -> None:
        if self.teacher is not None:
            ema_update_constant(self.teacher, self.network, self.settings.ema_decay, buffers=self.variant.ema_buffers)
