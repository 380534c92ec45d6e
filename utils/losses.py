"""Loss functions of SS-Net (docs/method.md §3.4, §3.5, §3.7) and of the baselines, as pure functions of tensors.

Shapes: probabilities/logits (B, K, *spatial) with K classes including background, labels (B, *spatial) int64;
per-voxel feature vectors (N, dim).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor, nn

from utils.profiling import section
from utils.ramps import sigmoid_rampup


def _pooled_dims(t: Tensor) -> tuple[int, ...]:
    """Every axis except the class axis 1: sums are pooled over the batch and all voxels."""
    return (0, *range(2, t.ndim))


def dice_loss(
    probs: Tensor,
    labels: Tensor,
    *,
    include_background: bool,
    squared_denominator: bool,
    smooth: float,
) -> Tensor:
    """Soft Dice loss averaged over classes: mean_c 1 - (2 sum p_c g_c + s) / (sum p_c^q + sum g_c^q + s).

    The official scripts differ by dataset: LA uses the foreground channel only with plain sums and s = 1e-8,
    ACDC averages all 4 classes including background with squared sums and s = 1e-10 (docs/method.md §3.4). For two
    classes without background this is exactly the official binary Dice on channel 1.
    """
    num_classes = probs.shape[1]
    onehot = F.one_hot(labels.long(), num_classes).movedim(-1, 1).to(probs.dtype)
    dims = _pooled_dims(probs)
    intersection = (probs * onehot).sum(dims)
    prob_mass = (probs * probs).sum(dims) if squared_denominator else probs.sum(dims)
    per_class = 1.0 - (2.0 * intersection + smooth) / (prob_mass + onehot.sum(dims) + smooth)
    return per_class[0 if include_background else 1 :].mean()


def pooled_dice_discrepancy(probs_hat: Tensor, probs: Tensor, smooth: float = 1e-8) -> Tensor:
    """The official 3D LDS discrepancy: one soft Dice over all classes, samples and voxels pooled.

    As every voxel's probabilities sum to 1 this equals 1 - mean_voxels sum_c p_hat_c p_c (docs/method.md §3.5).
    """
    intersection = (probs_hat * probs).sum()
    return 1.0 - (2.0 * intersection + smooth) / (probs_hat.sum() + probs.sum() + smooth)


def class_mean_dice_discrepancy(probs_hat: Tensor, probs: Tensor, smooth: float = 1e-10) -> Tensor:
    """The official 2D LDS discrepancy: per-class soft Dice with squared sums, background included, averaged.

    The official module hard-codes 4 classes; here it is every class of the tensor.
    """
    dims = _pooled_dims(probs)
    intersection = (probs_hat * probs).sum(dims)
    denominator = (probs_hat * probs_hat).sum(dims) + (probs * probs).sum(dims)
    return (1.0 - (2.0 * intersection + smooth) / (denominator + smooth)).mean()


LDS_DISCREPANCIES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "pooled_dice": pooled_dice_discrepancy,
    "class_mean_dice": class_mean_dice_discrepancy,
}


@contextmanager
def frozen_bn_running_stats(module: nn.Module) -> Iterator[None]:
    """BatchNorm keeps normalising with batch statistics but stops updating running mean/var/counter.

    The perturbed VAT passes see x + r, not data; letting them move the running statistics would make
    evaluation depend on the adversary (docs/method.md §3.5).
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in norms:
            m.track_running_stats = True


def normalize_per_sample(d: Tensor, eps: float = 1e-8) -> Tensor:
    """Scale each sample of d (B, ...) to unit L2 norm over all its elements (+eps as the official code)."""
    norms = d.flatten(1).norm(dim=1).view(-1, *([1] * (d.ndim - 1)))
    return d / (norms + eps)


def adversarial_direction(
    predict_probs: Callable[[Tensor], Tensor],
    images: Tensor,
    clean_probs: Tensor,
    discrepancy: Callable[[Tensor, Tensor], Tensor],
    *,
    xi: float,
    power_iterations: int = 1,
) -> Tensor:
    """Unit-norm (per sample) direction that most increases discrepancy(p(x + xi d), p(x)), by power iteration.

    Only d receives a gradient (torch.autograd.grad), so the probe pass leaves no parameter gradient behind.
    The random start is drawn as the official VAT does, from the CPU generator in the default dtype and then
    moved to the images' device, so a seeded run makes the same draws on a GPU as on the CPU.
    """
    direction = normalize_per_sample((torch.rand(images.shape) - 0.5).to(images.device))
    for _ in range(power_iterations):
        direction = direction.detach().requires_grad_(True)
        distance = discrepancy(predict_probs(images + xi * direction), clean_probs)
        (grad,) = torch.autograd.grad(distance, direction)
        direction = normalize_per_sample(grad.detach())
    return direction.detach()


def vat_lds_loss(
    network: nn.Module,
    images: Tensor,
    discrepancy: Callable[[Tensor, Tensor], Tensor],
    *,
    xi: float = 10.0,
    magnitude: float = 10.0,
    power_iterations: int = 1,
    clean_probs: Tensor | None = None,
) -> Tensor:
    """SS-Net's local distributional smoothness loss: VAT with a Dice-type discrepancy (docs/method.md §3.5).

    The target is the soft prediction of a separate training-mode forward without gradient (it updates BN
    running statistics, as the official code); the probe and adversarial passes run with BN statistics frozen.
    Gradient reaches the parameters only through the adversarial prediction. `clean_probs`: that target when
    the caller has computed it (SS-Net's low-memory step reuses its main pass's encoder trunk for it).
    xi: the probe step, magnitude: the perturbation's L2 norm per sample (the paper's epsilon).
    """

    def predict_probs(x: Tensor) -> Tensor:
        return torch.softmax(network(x)[0], dim=1)

    if clean_probs is None:
        with section("VAT clean"), torch.no_grad():
            clean_probs = predict_probs(images)
    with frozen_bn_running_stats(network):
        with section("VAT probe"):
            direction = adversarial_direction(
                predict_probs, images, clean_probs, discrepancy, xi=xi, power_iterations=power_iterations
            )
        with section("VAT adversarial forward"):
            return discrepancy(predict_probs(images + magnitude * direction), clean_probs)


MEMORY_WEIGHTS = ("ones", "learned")


def class_separation_loss(
    features: Tensor,
    labels: Tensor,
    prototypes: Sequence[Tensor | None],
    feature_selector: Callable[[int], nn.Module],
    memory_selector: Callable[[int], nn.Module],
    memory_weights: str = "ones",
) -> Tensor:
    """SS-Net's weighted cosine class-separation loss SEP(F, labels, memory).

    features (N, d) carry gradient, labels (N,), prototypes[c] (P_c, d) constant or None. For each class with
    more than one feature and more than one prototype:
        L_c = 1/(M N) sum_ij alpha_i beta_j (1 - cos(f_i, z_j)),
    alpha = feature-selector scores (on the detached raw features) rescaled to mean 1. The result is divided by
    the full class count, background included.

    beta, the prototype weights (memory_weights):
    * "ones" (default, the official code): the official `contrastive_losses.py` transposes the (N, 1) memory
      selector output to (1, N) before rescaling it with `shape[0]` and `sum(dim=0)`, so each weight is divided
      by itself: beta = 1. The memory selector still runs (its BatchNorm statistics move as in the official
      step) and stays in the graph with a zero gradient, so SGD's weight decay and momentum treat it as the
      official step does (there it receives a rounding-level gradient); it never learns anything.
    * "learned" (the paper's intent): beta = memory-selector scores on the L2-normalised prototypes, mean 1.

    The double sum factorises, L_c = [(sum_i alpha_i)(sum_j beta_j) - (sum_i alpha_i f_hat_i).(sum_j beta_j
    z_hat_j)] / (M N), which is computed instead of the M x N distance matrix (M is up to 2 million on LA).
    The same as `separation_of_class_rows(class_rows(features, labels, prototypes), ...)`, the two halves a
    caller uses to drop `features` (all N rows) before the selectors run.
    """
    return separation_of_class_rows(class_rows(features, labels, prototypes), prototypes, feature_selector,
                                    memory_selector, memory_weights, features.new_zeros(()))


def check_memory_weights(memory_weights: str) -> None:
    if memory_weights not in MEMORY_WEIGHTS:
        raise ValueError(f"unknown memory weights {memory_weights!r}; choose from: {', '.join(MEMORY_WEIGHTS)}")


def class_rows(features: Tensor, labels: Tensor, prototypes: Sequence[Tensor | None]) -> dict[int, Tensor]:
    """class -> its rows of `features`, for the classes the separation loss uses (more than one prototype and
    more than one feature)."""
    rows = {}
    for c, memory in enumerate(prototypes):
        if memory is None or memory.shape[0] <= 1:
            continue
        class_features = features[labels == c]
        if class_features.shape[0] > 1:
            rows[c] = class_features
    return rows


def separation_of_class_rows(
    rows: dict[int, Tensor],
    prototypes: Sequence[Tensor | None],
    feature_selector: Callable[[int], nn.Module],
    memory_selector: Callable[[int], nn.Module],
    memory_weights: str,
    zero: Tensor,
) -> Tensor:
    """The separation loss from `class_rows` (see class_separation_loss); `zero` a 0-dim zero of the features'
    dtype and device, the sum's start."""
    check_memory_weights(memory_weights)
    total = zero
    for c in sorted(rows):
        class_features, memory = rows[c], prototypes[c]
        count = class_features.shape[0]
        memory = memory.to(class_features.dtype)
        feature_scores = torch.sigmoid(feature_selector(c)(class_features.detach())).squeeze(1)
        alpha = count * feature_scores / feature_scores.sum()
        memory_unit = F.normalize(memory, dim=1)
        memory_scores = torch.sigmoid(memory_selector(c)(memory_unit)).squeeze(1)
        if memory_weights == "learned":
            beta = memory.shape[0] * memory_scores / memory_scores.sum()
        else:
            beta = 1.0 + 0.0 * memory_scores  # exactly 1, zero gradient (see the docstring)
        weighted_features = (alpha.unsqueeze(1) * F.normalize(class_features, dim=1)).sum(0)
        weighted_memory = (beta.unsqueeze(1) * memory_unit).sum(0)
        pairs = count * memory.shape[0]
        total = total + (alpha.sum() * beta.sum() - weighted_features.dot(weighted_memory)) / pairs
    return total / len(prototypes)


# -- baselines (methods/mean_teacher.py, ua_mt.py, sassnet.py, dtc.py, urpc.py, mc_net.py) -----------------
def softmax_mse(student_logits: Tensor, teacher_probs: Tensor) -> Tensor:
    """Mean squared difference of the student's softmax and a target probability map (Mean Teacher)."""
    return ((torch.softmax(student_logits, dim=1) - teacher_probs) ** 2).mean()


def predictive_entropy(probs: Tensor, eps: float = 1e-6) -> Tensor:
    """-sum_c p_c log(p_c + eps) per voxel: (B, C, *spatial) -> (B, 1, *spatial), UA-MT's uncertainty (nats)."""
    return -(probs * torch.log(probs + eps)).sum(dim=1, keepdim=True)


def uncertainty_threshold(iteration: int, max_iterations: int) -> float:
    """UA-MT's schedule: (3/4 + 1/4 ramp(t, t_max)) ln 2 nats, rising from about 0.52 to ln 2 over training.

    The ramp is Laine & Aila's sigmoid ramp on the raw iteration count (not t // 150); ln 2 is the public
    recipe's constant in 3-D and in the 2-D (4-class) SSL4MIS script alike.
    """
    return (0.75 + 0.25 * sigmoid_rampup(iteration, max_iterations)) * math.log(2.0)


def masked_mse(student_probs: Tensor, teacher_probs: Tensor, mask: Tensor, divisor: float = 2.0,
               eps: float = 1e-16) -> Tensor:
    """sum(mask (p_s - p_t)^2) / (divisor sum(mask) + eps) over the certain voxels (UA-MT's consistency).

    mask (B, 1, *spatial) in {0, 1}. Both UA-MT scripts divide by 2 sum(mask): the mean over certain voxels and
    classes with 2 classes (LA), twice that mean with the 4 ACDC classes (the 2-D script keeps the 2).
    """
    squared = (student_probs - teacher_probs) ** 2
    return (mask * squared).sum() / (divisor * mask.sum() + eps)


def signed_distance_map(labels: Tensor, num_classes: int) -> Tensor:
    """Normalised signed distance map of each foreground class: (B, *spatial) int -> (B, C-1, *spatial) float.

    As DTC / SASSNet's `compute_sdf`, per sample and class c with mask M = (label == c):
    sdf = (d_out - min d_out) / (max d_out - min d_out) - (d_in - min d_in) / (max d_in - min d_in), where
    d_out = Euclidean distance (in voxels) to M outside it and d_in = distance to the background inside it;
    0 on M's inner boundary (voxels of M with a face neighbour outside M; image borders do not count).
    Negative inside, 0 on the contour, positive outside, in [-1, 1]. A class absent from a sample gives zeros
    (as the official code); a class filling the whole sample gives -(d_in normalised) only.
    """
    masks = labels.detach().cpu().numpy()
    out = np.zeros((masks.shape[0], num_classes - 1, *masks.shape[1:]), dtype=np.float32)
    cross = ndimage.generate_binary_structure(masks.ndim - 1, 1)
    for b in range(masks.shape[0]):
        for c in range(1, num_classes):
            inside = masks[b] == c
            if not inside.any():
                continue
            outside_distance = ndimage.distance_transform_edt(~inside)
            inside_distance = ndimage.distance_transform_edt(inside)
            boundary = inside & ~ndimage.binary_erosion(inside, structure=cross, border_value=1)
            sdf = _rescaled(outside_distance) - _rescaled(inside_distance)
            sdf[boundary] = 0.0
            out[b, c - 1] = sdf
    return torch.from_numpy(out).to(labels.device)


def _rescaled(distance: np.ndarray) -> np.ndarray:
    low, high = distance.min(), distance.max()
    return (distance - low) / (high - low) if high > low else np.zeros_like(distance)


def sdf_to_probability(sdf: Tensor, k: float = 1500.0) -> Tensor:
    """DTC's transform of a level set to a soft mask: sigmoid(-k sdf), ~1 inside (sdf < 0), ~0 outside."""
    return torch.sigmoid(-k * sdf)


def sharpen(probs: Tensor, temperature: float) -> Tensor:
    """MC-Net's sharpening p^(1/T) / (p^(1/T) + (1-p)^(1/T)), element-wise on every class channel.

    T < 1 pushes each probability towards 0 or 1 (T = 0.1 in the recipe); 0.5 stays 0.5. Element-wise, as the
    public recipe: with more than two classes the channels no longer sum to exactly 1.
    """
    power = 1.0 / temperature
    high, low = probs.pow(power), (1.0 - probs).pow(power)
    return high / (high + low)


def mutual_consistency_loss(probs: Sequence[Tensor], temperature: float) -> Tensor:
    """MC-Net: sum over ordered pairs i != j of mean((p_i - sharpen(p_j))^2); gradient flows into both sides."""
    total = probs[0].new_zeros(())
    for i, p_i in enumerate(probs):
        for j, p_j in enumerate(probs):
            if i != j:
                total = total + ((p_i - sharpen(p_j, temperature)) ** 2).mean()
    return total


def uncertainty_rectified_consistency(logits: Sequence[Tensor], eps: float = 1e-8) -> Tensor:
    """URPC's consistency of pyramid predictions with their mean, down-weighting uncertain voxels.

    For each output s with probabilities p_s and the mean prediction p = mean_s p_s: uncertainty
    u_s = KL(p || p_s) summed over classes (B, 1, *spatial), weight w_s = exp(-u_s), and
    L_s = mean(w_s (p - p_s)^2) / (mean(w_s) + eps) + mean(u_s); the loss is mean_s L_s. The mean prediction is
    not detached (as the public recipe), so gradient reaches every output through both sides.
    """
    log_probs = [torch.log_softmax(x, dim=1) for x in logits]
    probs = [lp.exp() for lp in log_probs]
    mean_probs = torch.stack(probs).mean(dim=0)
    total = mean_probs.new_zeros(())
    for p_s, log_p_s in zip(probs, log_probs, strict=True):
        kl = (torch.xlogy(mean_probs, mean_probs) - mean_probs * log_p_s).sum(dim=1, keepdim=True)
        weight = torch.exp(-kl)
        total = total + ((mean_probs - p_s) ** 2 * weight).mean() / (weight.mean() + eps) + kl.mean()
    return total / len(logits)


def masked_dice_loss(probs: Tensor, labels: Tensor, mask: Tensor, *, per_sample: bool, squared: bool,
                     smooth: float) -> Tensor:
    """Soft Dice loss over the voxels where `mask` (B, *spatial) is 1, every class included (BCP's two Dice losses).

    per_sample: a Dice per sample and class, then the mean of all (BCP's LA `mask_DiceLoss`); else one Dice per class
    over the batch (BCP's ACDC `DiceLoss`). squared: sum p^2 + sum g^2 in the denominator, else sum p + sum g.
    Returns mean(1 - (2 sum p g m + s) / (denominator + s)).
    """
    num_classes = probs.shape[1]
    onehot = F.one_hot(labels.long(), num_classes).movedim(-1, 1).to(probs.dtype)
    mask = mask.unsqueeze(1).to(probs.dtype)
    dims = tuple(range(2, probs.ndim)) if per_sample else _pooled_dims(probs)
    intersection = (probs * onehot * mask).sum(dims)
    if squared:
        denominator = (probs * probs * mask).sum(dims) + (onehot * onehot * mask).sum(dims)
    else:
        denominator = ((probs + onehot) * mask).sum(dims)
    return (1.0 - (2.0 * intersection + smooth) / (denominator + smooth)).mean()
