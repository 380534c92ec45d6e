"""Sampled decoder features of one test case, per class: the input of the feature-space (t-SNE) view.

The features are NetworkOutput.features, the full-resolution decoder embedding that feeds both the classifier
and SS-Net's projection heads. LA: one network patch centred on the ground truth; ACDC: the short-axis slice
with the most ground truth, resized to the network's input size (nearest, as the test path does). The voxel
positions are drawn from the ground truth only, so every model is probed at the same voxels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch import nn


@dataclass
class FeatureSample:
    features: np.ndarray  # (N, F)
    labels: np.ndarray  # (N,) ground truth
    predicted: np.ndarray  # (N,) the network's argmax


def network_input(image: np.ndarray, label: np.ndarray, patch_size: tuple[int, ...]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The region the features are read from: a 3-D patch (len(patch_size) == 3) or a resized 2-D slice."""
    if len(patch_size) == 3:
        mask = label > 0 if (label > 0).any() else np.ones(label.shape, bool)
        centre = np.argwhere(mask).mean(0).round().astype(int)
        pad = [(0, max(p - s, 0)) for p, s in zip(patch_size, image.shape, strict=True)]
        image, label = np.pad(image, pad), np.pad(label, pad)
        start = [int(np.clip(c - p // 2, 0, s - p)) for c, p, s in zip(centre, patch_size, image.shape, strict=True)]
        region = tuple(slice(b, b + p) for b, p in zip(start, patch_size, strict=True))
        return image[region], label[region]
    if len(patch_size) == 2:
        area = (label > 0).reshape(label.shape[0], -1).sum(1)
        s = int(np.argmax(area))
        factors = [p / n for p, n in zip(patch_size, image.shape[1:], strict=True)]
        return ndimage.zoom(image[s], factors, order=0), ndimage.zoom(label[s], factors, order=0)
    raise ValueError(f"patch_size must have 2 or 3 entries, got {patch_size}")


def sample_positions(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Flat indices: up to `per_class` random voxels of every class present (seeded)."""
    rng = np.random.default_rng(seed)
    flat = labels.reshape(-1)
    chosen = [rng.choice(np.flatnonzero(flat == c), min(per_class, int((flat == c).sum())), replace=False)
              for c in np.unique(flat)]
    return np.sort(np.concatenate(chosen))


@torch.no_grad()
def sample_features(network: nn.Module, image: np.ndarray, labels: np.ndarray, positions: np.ndarray
                    ) -> FeatureSample:
    """Run the network (eval mode) on one region and read features/predictions at the flat positions."""
    device = next(network.parameters()).device
    network.eval()
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(device)
    output = network(x)
    logits, features = output.logits, output.features
    features = features[0].flatten(1).T[torch.from_numpy(positions).to(device)]
    predicted = logits[0].argmax(0).reshape(-1)[torch.from_numpy(positions).to(device)]
    return FeatureSample(features.cpu().numpy(), labels.reshape(-1)[positions].astype(np.int64),
                         predicted.cpu().numpy())


def feature_tsne_figure(samples: dict[str, FeatureSample], class_names: dict[int, str], *, seed: int = 0,
                        perplexity: float = 30.0, title: str = "", panel_inches: float = 3.6):
    """One t-SNE panel per model, points coloured by the true class, misclassified voxels crossed in black."""
    import matplotlib.pyplot as plt

    from viz.embedding import scatter_by_class, silhouette, tsne_embedding

    figure, axes = plt.subplots(1, len(samples), figsize=(len(samples) * panel_inches, panel_inches + 0.35),
                                squeeze=False)
    for ax, (name, sample) in zip(axes[0], samples.items(), strict=True):
        points = tsne_embedding(sample.features, seed=seed, perplexity=perplexity)
        scatter_by_class(ax, points, sample.labels, class_names, size=5)
        wrong = sample.predicted != sample.labels
        ax.scatter(points[wrong, 0], points[wrong, 1], s=5, c="k", marker="x", linewidths=0.4, alpha=0.7)
        ax.set_title(f"{name}\nsilhouette {silhouette(sample.features, sample.labels):.2f}, "
                     f"{100 * wrong.mean():.0f}% misclassified (x)", fontsize=8)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.8 if title else 0.86, wspace=0.06)
    return figure
