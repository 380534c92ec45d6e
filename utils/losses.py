"""Loss functions of SS-Net as pure functions of tensors (spec §3.4, §3.5, §3.7).

Shapes: probabilities/logits (B, K, *spatial) with K classes including background, labels (B, *spatial) int64;
per-voxel feature vectors (N, dim).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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
    ACDC averages all 4 classes including background with squared sums and s = 1e-10 (spec §3.4). For two
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

    As every voxel's probabilities sum to 1 this equals 1 - mean_voxels sum_c p_hat_c p_c (spec §3.5, §8.4).
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
    evaluation depend on the adversary (spec §3.5 step 3).
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
    """
    direction = normalize_per_sample(torch.rand_like(images) - 0.5)
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
    epsilon: float = 10.0,
    power_iterations: int = 1,
) -> Tensor:
    """SS-Net's local distributional smoothness loss: VAT with a Dice-type discrepancy (spec §3.5).

    The target is the soft prediction of a separate training-mode forward without gradient (it updates BN
    running statistics, as the official code); the probe and adversarial passes run with BN statistics frozen.
    Gradient reaches the parameters only through the adversarial prediction.
    """

    def predict_probs(x: Tensor) -> Tensor:
        return torch.softmax(network(x)[0], dim=1)

    with torch.no_grad():
        clean_probs = predict_probs(images)
    with frozen_bn_running_stats(network):
        direction = adversarial_direction(
            predict_probs, images, clean_probs, discrepancy, xi=xi, power_iterations=power_iterations
        )
        return discrepancy(predict_probs(images + epsilon * direction), clean_probs)


def class_separation_loss(
    features: Tensor,
    labels: Tensor,
    prototypes: Sequence[Tensor | None],
    feature_selector: Callable[[int], nn.Module],
    memory_selector: Callable[[int], nn.Module],
) -> Tensor:
    """SS-Net's weighted cosine class-separation loss SEP(F, labels, memory) (spec §3.7).

    features (N, d) carry gradient, labels (N,), prototypes[c] (P_c, d) constant or None. For each class with
    more than one feature and more than one prototype:
        L_c = 1/(M N) sum_ij alpha_i beta_j (1 - cos(f_i, z_j)),
    alpha, beta = selector weights rescaled to mean 1 (feature selector on detached raw features, memory
    selector on normalised prototypes). The result is divided by the full class count, background included.

    Because sum(alpha) = M and sum(beta) = N, the double sum factorises:
        L_c = 1 - (sum_i alpha_i f_hat_i) . (sum_j beta_j z_hat_j) / (M N),
    which is computed instead of the M x N distance matrix (M is up to 2 million voxels on LA).
    """
    num_classes = len(prototypes)
    total = features.new_zeros(())
    for c in range(num_classes):
        memory = prototypes[c]
        if memory is None or memory.shape[0] <= 1:
            continue
        class_features = features[labels == c]
        count = class_features.shape[0]
        if count <= 1:
            continue
        memory = memory.to(features.dtype)
        feature_scores = torch.sigmoid(feature_selector(c)(class_features.detach())).squeeze(1)
        alpha = count * feature_scores / feature_scores.sum()
        memory_unit = F.normalize(memory, dim=1)
        memory_scores = torch.sigmoid(memory_selector(c)(memory_unit)).squeeze(1)
        beta = memory.shape[0] * memory_scores / memory_scores.sum()
        weighted_features = (alpha.unsqueeze(1) * F.normalize(class_features, dim=1)).sum(0)
        weighted_memory = (beta.unsqueeze(1) * memory_unit).sum(0)
        total = total + 1.0 - weighted_features.dot(weighted_memory) / (count * memory.shape[0])
    return total / num_classes
