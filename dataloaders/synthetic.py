"""A small synthetic LA-like dataset in the real LA layout, for the README demo and fast tests.

Each case: a smooth irregular "atrium" (union of 2-3 ellipsoids, 5-15 % of the voxels) brighter than a
textured background, plus dimmer distractor blobs, a smooth multiplicative bias field and Gaussian noise,
so that a small V-Net learns it in a few hundred CPU iterations but a global threshold does not solve it.
The image is z-scored (float32), the label is uint8 {0, 1}; axes (W, H, D) like the real h5 files.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
from scipy import ndimage

from .la import LA_FOLDER, la_case_path

FOREGROUND_FRACTION_RANGE = (0.05, 0.15)


def _grid(shape: Sequence[int]) -> list[np.ndarray]:
    return np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")


def _ellipsoid(grid: list[np.ndarray], centre: np.ndarray, radii: np.ndarray, rotation: np.ndarray
               ) -> np.ndarray:
    coords = np.stack([g - c for g, c in zip(grid, centre, strict=True)], axis=-1) @ rotation
    return (((coords / radii) ** 2).sum(-1)) <= 1.0


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


def synthetic_atrium(shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Boolean mask: union of 2-3 overlapping random ellipsoids near the centre, 5-15 % of the voxels."""
    shape_arr = np.asarray(shape, dtype=np.float32)
    grid = _grid(shape)
    low, high = FOREGROUND_FRACTION_RANGE
    for _ in range(100):
        centre = shape_arr / 2 + rng.uniform(-0.1, 0.1, size=3) * shape_arr
        mask = np.zeros(tuple(shape), dtype=bool)
        for _ in range(int(rng.integers(2, 4))):
            offset = rng.uniform(-0.12, 0.12, size=3) * shape_arr
            radii = rng.uniform(0.13, 0.27, size=3) * shape_arr
            mask |= _ellipsoid(grid, centre + offset, radii, _random_rotation(rng))
        mask = ndimage.binary_opening(mask, iterations=1)
        if low <= mask.mean() <= high:
            return mask
    raise RuntimeError(f"could not draw an atrium with foreground fraction in {FOREGROUND_FRACTION_RANGE}")


def synthetic_case(shape: Sequence[int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 z-scored, label uint8) of one synthetic case."""
    shape = tuple(int(s) for s in shape)
    atrium = synthetic_atrium(shape, rng)
    grid = _grid(shape)
    # Distractors: other bright-ish structures (vessels, ventricles) that rule out plain thresholding.
    distractors = np.zeros(shape, dtype=bool)
    for _ in range(int(rng.integers(2, 4))):
        centre = rng.uniform(0.1, 0.9, size=3) * np.asarray(shape)
        radii = rng.uniform(0.05, 0.1, size=3) * np.asarray(shape)
        distractors |= _ellipsoid(grid, centre, radii, _random_rotation(rng))
    distractors &= ~ndimage.binary_dilation(atrium, iterations=2)

    texture = ndimage.gaussian_filter(rng.normal(size=shape), sigma=2.0)
    texture /= texture.std() + 1e-8
    contrast = rng.uniform(1.2, 1.8)
    image = 0.5 * texture + contrast * atrium + 0.7 * contrast * distractors
    image = ndimage.gaussian_filter(image, sigma=0.7)  # soft edges, as partial-volume boundaries
    bias = ndimage.gaussian_filter(rng.normal(size=shape), sigma=min(shape) / 4)
    bias = 1.0 + 0.3 * bias / (np.abs(bias).max() + 1e-8)
    image = image * bias + rng.normal(scale=0.35, size=shape)
    image = (image - image.mean()) / image.std()
    return image.astype(np.float32), atrium.astype(np.uint8)


def _write_h5(path: Path, image: np.ndarray, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        f.create_dataset("image", data=image, compression="gzip")
        f.create_dataset("label", data=label, compression="gzip")
    os.replace(tmp, path)  # a crash never leaves a half-written case under the final name


def make_synthetic_la(root: str | Path, n_train: int, n_test: int, shape: Sequence[int] = (64, 64, 48),
                      seed: int = 0, n_val: int = 2) -> Path:
    """Write `n_train + n_test` synthetic cases in the LA layout under `root`; returns `root`.

    Writes `<root>/2018LA_Seg_Training Set/SYNnnn/mri_norm2.h5` and `train.list` (SYN000...), `test.list`
    (the following ids) and `val.list` (the last `n_val` train ids, as the real val.list). Deterministic
    from `seed`; use `dataloaders.la_split(labelnum, lists_dir=root)` for the split.
    """
    if n_train < 1 or n_test < 0 or not 0 <= n_val < n_train:
        raise ValueError(f"need n_train >= 1, n_test >= 0 and 0 <= n_val < n_train; got "
                         f"n_train={n_train}, n_test={n_test}, n_val={n_val}")
    if len(shape) != 3:
        raise ValueError(f"shape must be (W, H, D), got {tuple(shape)}")
    root = Path(root)
    (root / LA_FOLDER).mkdir(parents=True, exist_ok=True)
    ids = [f"SYN{i:03d}" for i in range(n_train + n_test)]
    for number, case_id in enumerate(ids):
        image, label = synthetic_case(shape, np.random.default_rng([seed, number]))
        _write_h5(la_case_path(root, case_id), image, label)
    train, test = ids[:n_train], ids[n_train:]
    val = train[n_train - n_val:] if n_val else []
    for name, lines in (("train.list", train), ("test.list", test), ("val.list", val)):
        (root / name).write_text("".join(f"{line}\n" for line in lines))
    return root
