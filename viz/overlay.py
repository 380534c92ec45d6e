"""Image + label overlays of one case: representative slices, ground truth vs prediction, and run montages.

Array conventions are the stored ones: LA volumes (W, H, D), 0.625 mm isotropic; ACDC volumes (S, H, W) with
thick short-axis slices. LA is shown in three orthogonal views through the ground-truth centre; ACDC in three
short-axis slices spread over the slices that hold ground truth (orthogonal views of 10 mm slices are smears).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import to_rgba

from viz.embedding import class_color

LAYOUTS = ("orthogonal", "stack")
DATASET_LAYOUTS = {"LA": "orthogonal", "ACDC": "stack"}
GT_OUTLINE_COLOR = "#ffe119"  # yellow: the ground-truth contour drawn over predictions


@dataclass
class View:
    """One displayed 2D slice: rows x cols arrays, ready for imshow."""

    name: str
    image: np.ndarray
    label: np.ndarray
    prediction: np.ndarray | None = None


def window(image: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """Map the [low, high] intensity percentiles to [0, 1] (MRI intensities have long tails)."""
    lo, hi = np.percentile(image, [low, high])
    return np.clip((image - lo) / (hi - lo + 1e-8), 0.0, 1.0)


def label_rgba(labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """(H, W) integer labels -> (H, W, 4) colours, background transparent."""
    rgba = np.zeros((*labels.shape, 4), dtype=np.float32)
    for c in np.unique(labels):
        if c == 0:
            continue
        rgba[labels == c] = (*to_rgba(class_color(int(c)))[:3], alpha)
    return rgba


def _centre(mask: np.ndarray) -> np.ndarray | None:
    points = np.argwhere(mask)
    return None if points.size == 0 else np.round(points.mean(0)).astype(int)


def reference_mask(label: np.ndarray, prediction: np.ndarray | None) -> np.ndarray:
    """Where to look: the ground-truth foreground, else the predicted one, else everything."""
    for mask in (label > 0, None if prediction is None else prediction > 0):
        if mask is not None and mask.any():
            return mask
    return np.ones(label.shape, dtype=bool)


def orthogonal_views(image: np.ndarray, label: np.ndarray, prediction: np.ndarray | None = None) -> list[View]:
    """Axial, coronal and sagittal slices of a (W, H, D) volume through the foreground centre."""
    x, y, z = _centre(reference_mask(label, prediction))

    def cut(volume, index):
        return None if volume is None else volume[index].T  # rows = second remaining axis

    cuts = [("axial", (slice(None), slice(None), z)), ("coronal", (slice(None), y, slice(None))),
            ("sagittal", (x, slice(None), slice(None)))]
    return [View(f"{name} {axis_index}", cut(image, index), cut(label, index), cut(prediction, index))
            for (name, index), axis_index in zip(cuts, (f"z={z}", f"y={y}", f"x={x}"), strict=True)]


def stack_views(image: np.ndarray, label: np.ndarray, prediction: np.ndarray | None = None,
                count: int = 3) -> list[View]:
    """`count` slices along axis 0 of an (S, H, W) volume, spread over the slices holding foreground."""
    mask = reference_mask(label, prediction)
    occupied = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(1))
    picks = occupied[np.round(np.linspace(0, len(occupied) - 1, count + 2)[1:-1]).astype(int)] \
        if len(occupied) > count else occupied
    return [View(f"slice {s}", image[s], label[s], None if prediction is None else prediction[s]) for s in picks]


def case_views(image: np.ndarray, label: np.ndarray, prediction: np.ndarray | None, layout: str) -> list[View]:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown view layout {layout!r}; choose from: {', '.join(LAYOUTS)}")
    if image.ndim != 3 or image.shape != label.shape or (prediction is not None and prediction.shape != label.shape):
        raise ValueError(f"image, label and prediction must be 3-D arrays of one shape, got {image.shape}, "
                         f"{label.shape}, {None if prediction is None else prediction.shape}")
    return orthogonal_views(image, label, prediction) if layout == "orthogonal" else \
        stack_views(image, label, prediction)


def best_slice_view(image: np.ndarray, label: np.ndarray, predictions: dict[str, np.ndarray], layout: str
                    ) -> tuple[View, dict[str, np.ndarray]]:
    """The slice with the most ground-truth foreground (axial for LA, short-axis for ACDC), for montages."""
    axis = 2 if layout == "orthogonal" else 0
    mask = reference_mask(label, None)
    area = mask.sum(axis=tuple(a for a in range(3) if a != axis))
    index = int(np.argmax(area))

    def cut(volume):
        plane = np.take(volume, index, axis=axis)
        return plane.T if layout == "orthogonal" else plane

    view = View(f"{'z' if axis == 2 else 'slice'} {index}", cut(image), cut(label))
    return view, {name: cut(p) for name, p in predictions.items()}


def draw_overlay(ax: Axes, image: np.ndarray, labels: np.ndarray | None, outline: np.ndarray | None = None,
                 title: str = "") -> None:
    """Grey image, labels filled in class colours, optional ground-truth outline in yellow."""
    ax.imshow(window(image), cmap="gray", interpolation="nearest")
    if labels is not None:
        ax.imshow(label_rgba(labels), interpolation="nearest")
    if outline is not None:
        for c in np.unique(outline):
            if c > 0:
                ax.contour(outline == c, levels=[0.5], colors=GT_OUTLINE_COLOR, linewidths=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def case_overlay_figure(image: np.ndarray, label: np.ndarray, prediction: np.ndarray, *, layout: str,
                        title: str = "", panel_inches: float = 2.5):
    """Two rows x three views: ground truth filled; prediction filled with the ground-truth outline."""
    import matplotlib.pyplot as plt

    views = case_views(image, label, prediction, layout)
    figure, axes = plt.subplots(2, 3, figsize=(3 * panel_inches, 2 * panel_inches + 0.3), squeeze=False)
    for col in range(3):
        if col >= len(views):
            axes[0, col].axis("off")
            axes[1, col].axis("off")
            continue
        v = views[col]
        draw_overlay(axes[0, col], v.image, v.label, title=f"ground truth, {v.name}")
        draw_overlay(axes[1, col], v.image, v.prediction, outline=v.label,
                     title=f"prediction (outline: truth), {v.name}")
    if title:
        figure.suptitle(title, fontsize=9)
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.9, wspace=0.03, hspace=0.12)
    return figure


@dataclass
class MontageCase:
    case: str
    image: np.ndarray  # the stored volume
    label: np.ndarray
    predictions: dict[str, np.ndarray] = field(default_factory=dict)  # run name -> label map, same shape


def mean_foreground_dice(prediction: np.ndarray, label: np.ndarray) -> float:
    """Mean Dice over the foreground classes present in either map (1.0 when both are empty)."""
    from utils.metrics import dice_score

    classes = [c for c in np.union1d(np.unique(label), np.unique(prediction)) if c > 0]
    return float(np.mean([dice_score(prediction == c, label == c) for c in classes])) if classes else 1.0


def comparison_montage(cases: list[MontageCase], run_names: list[str], *, layout: str, panel_inches: float = 2.2):
    """Rows = cases, columns = image | ground truth | one column per run (the paper's Fig. 3 arrangement).

    Each run panel shows its prediction on the case's slice with most foreground, the truth outlined in
    yellow, and its Dice on the whole volume.
    """
    import matplotlib.pyplot as plt

    if not cases or not run_names:
        raise ValueError("a montage needs at least one case and one run")
    n_cols = 2 + len(run_names)
    figure, axes = plt.subplots(len(cases), n_cols, figsize=(n_cols * panel_inches, len(cases) * panel_inches),
                                squeeze=False)
    for row, case in enumerate(cases):
        view, planes = best_slice_view(case.image, case.label, case.predictions, layout)
        draw_overlay(axes[row, 0], view.image, None, title=f"{case.case} ({view.name})")
        draw_overlay(axes[row, 1], view.image, view.label, title="ground truth")
        for col, name in enumerate(run_names, start=2):
            dice = mean_foreground_dice(case.predictions[name], case.label)
            draw_overlay(axes[row, col], view.image, planes[name], outline=view.label,
                         title=f"{name}: Dice {100 * dice:.1f}%")
    figure.subplots_adjust(left=0.005, right=0.995, bottom=0.005, top=1 - 0.3 / (len(cases) * panel_inches),
                           wspace=0.03, hspace=0.15)
    return figure
