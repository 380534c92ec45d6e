"""Connected-component post-processing of predicted masks (the LA `--largest_component 1` step of
docs/method.md §4.1)."""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import ndimage


def largest_connected_component(mask: np.ndarray, connectivity: int | None = None) -> np.ndarray:
    """Boolean mask holding only the largest connected component of `mask`.

    connectivity: as scikit-image's `label`, the number of orthogonal steps allowed between neighbours,
    1..ndim; None means ndim (full: 8-connectivity in 2D, 26 in 3D), the default SS-Net relies on.
    An empty mask returns an empty mask (the official script asserts instead, crashing the evaluation).
    Ties keep the component with the lowest label, i.e. the one whose first voxel comes first in raster order.
    """
    mask = np.asarray(mask).astype(bool, copy=False)
    connectivity = mask.ndim if connectivity is None else connectivity
    if not 1 <= connectivity <= mask.ndim:
        raise ValueError(
            f"connectivity must be in 1..{mask.ndim} for a {mask.ndim}-D mask, got {connectivity}"
        )
    if not mask.any():
        return np.zeros_like(mask)
    structure = ndimage.generate_binary_structure(mask.ndim, connectivity)
    components, _ = ndimage.label(mask, structure=structure)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0  # background is not a component
    return components == int(np.argmax(sizes))  # argmax returns the first maximum: lowest label wins ties


def keep_largest_component_per_class(
    labels: np.ndarray, classes: Iterable[int], connectivity: int | None = None
) -> np.ndarray:
    """Label map where each class in `classes` keeps only its largest component; removed voxels become 0.

    Classes not listed are left untouched.
    """
    labels = np.asarray(labels)
    cleaned = labels.copy()
    for c in classes:
        class_mask = labels == c
        cleaned[class_mask & ~largest_connected_component(class_mask, connectivity)] = 0
    return cleaned
