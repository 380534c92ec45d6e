"""Training augmentation of image/label pairs (numpy), all randomness drawn from an explicit Generator.

Behaviour follows the official SS-Net code (docs/method.md §3.2); only the random-number source differs.
Functions never modify their inputs in place (the datasets cache the stored arrays).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage


def random_rot_flip(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, copy: bool = True
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Rotate by k*90 degrees in the plane of the first two axes (k in 0..3), then always flip one of them.

    copy=False returns read-only strided views of the inputs (no copy of the volume): crop them afterwards
    and only the crop is copied (LATrainTransform).
    """
    k = int(rng.integers(0, 4))
    axis = int(rng.integers(0, 2))
    image = np.flip(np.rot90(image, k, axes=(0, 1)), axis=axis)
    label = np.flip(np.rot90(label, k, axes=(0, 1)), axis=axis)
    if not copy:
        return image, label
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


def random_rotate(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, max_degrees: int = 20
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Rotate in the plane of the first two axes by an integer angle uniform in [-max_degrees, max_degrees).

    Nearest-neighbour for the image as well as the label (as the official ACDC code), same size, zero fill.
    """
    angle = int(rng.integers(-max_degrees, max_degrees))

    def rotate(array: np.ndarray) -> np.ndarray:
        return ndimage.rotate(array, angle, axes=(1, 0), order=0, reshape=False, mode="constant", cval=0)

    return rotate(image), rotate(label)


def crop_padding(shape: Sequence[int], patch_size: Sequence[int]) -> list[int]:
    """Per-axis padding (each side) applied before cropping; all zero unless some axis is <= the patch."""
    if all(size > patch for size, patch in zip(shape, patch_size, strict=True)):
        return [0] * len(shape)
    return [max((patch - size) // 2 + 3, 0) for size, patch in zip(shape, patch_size, strict=True)]


def random_crop(image: np.ndarray, label: np.ndarray, patch_size: Sequence[int], rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray]:
    """Random `patch_size` crop; small inputs are zero-padded first (docs/method.md §3.2 rule).

    Offsets are uniform in [0, size - patch) with the upper bound exclusive, as the official code, so the
    last possible position is never drawn; size == patch gives offset 0.
    """
    patch_size = tuple(int(p) for p in patch_size)
    if len(patch_size) != image.ndim or image.shape != label.shape:
        raise ValueError(
            f"random_crop: patch_size {patch_size} must have one entry per axis of image {image.shape}, "
            f"and label {label.shape} must match the image"
        )
    pad = crop_padding(image.shape, patch_size)
    if any(pad):
        widths = [(p, p) for p in pad]
        image = np.pad(image, widths, mode="constant", constant_values=0)
        label = np.pad(label, widths, mode="constant", constant_values=0)
    offsets = [int(rng.integers(0, size - patch)) if size > patch else 0
               for size, patch in zip(image.shape, patch_size, strict=True)]
    window = tuple(slice(o, o + p) for o, p in zip(offsets, patch_size, strict=True))
    return np.ascontiguousarray(image[window]), np.ascontiguousarray(label[window])


def resize_nearest(array: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Order-0 zoom to exactly `size` (scipy's zoom may round one voxel off; that voxel is cropped or
    edge-padded)."""
    size = tuple(int(s) for s in size)
    if len(size) != array.ndim:
        raise ValueError(f"resize_nearest: size {size} must have one entry per axis of {array.shape}")
    if array.shape == size:
        return array.copy()
    factors = [out / inp for out, inp in zip(size, array.shape, strict=True)]
    zoomed = ndimage.zoom(array, factors, order=0)
    if zoomed.shape != size:
        zoomed = zoomed[tuple(slice(0, s) for s in size)]
        zoomed = np.pad(zoomed, [(0, s - z) for s, z in zip(size, zoomed.shape, strict=True)], mode="edge")
    return zoomed


class LATrainTransform:
    """LA training augmentation: random rot90 + flip in x-y, then a random `patch_size` crop."""

    def __init__(self, patch_size: Sequence[int] = (112, 112, 80)):
        self.patch_size = tuple(int(p) for p in patch_size)

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
        # rotate/flip as views and copy only the crop: the same voxels as rotating the whole volume first
        image, label = random_rot_flip(image, label, rng, copy=False)
        return random_crop(image, label, self.patch_size, rng)

    def __repr__(self) -> str:
        return f"LATrainTransform(patch_size={self.patch_size})"


class ACDCTrainTransform:
    """ACDC training augmentation: p=0.5 rot90+flip, else p=0.5 small rotation, else none; then resize."""

    def __init__(self, output_size: Sequence[int] = (256, 256)):
        self.output_size = tuple(int(s) for s in output_size)

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
        if rng.random() < 0.5:
            image, label = random_rot_flip(image, label, rng)
        elif rng.random() < 0.5:
            image, label = random_rotate(image, label, rng)
        return resize_nearest(image, self.output_size), resize_nearest(label, self.output_size)

    def __repr__(self) -> str:
        return f"ACDCTrainTransform(output_size={self.output_size})"
