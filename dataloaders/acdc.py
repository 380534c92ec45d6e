"""ACDC cine-MRI: 2D training slices `<root>/data/slices/<name>.h5`; val/test volumes `<root>/data/<name>.h5`.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .cases import CasesDataset, Transform, read_image_label

ACDC_NUM_CLASSES = 4  # background, right ventricle, myocardium, left ventricle


def acdc_slice_path(root: str | Path, name: str) -> Path:
    return Path(root) / "data" / "slices" / f"{name}.h5"


def acdc_volume_path(root: str | Path, name: str) -> Path:
    return Path(root) / "data" / f"{name}.h5"


def load_acdc_slice(root: str | Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 (H, W) min-max scaled to [0, 1], label uint8 {0..3} (H, W)) of one training slice."""
    return read_image_label(acdc_slice_path(root, name), ndim=2, what=f"ACDC slice {name}",
                            num_classes=ACDC_NUM_CLASSES)


def load_acdc_volume(root: str | Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 (S, H, W), label uint8 (S, H, W)) of one val/test volume; slice axis first."""
    return read_image_label(acdc_volume_path(root, name), ndim=3, what=f"ACDC volume {name}",
                            num_classes=ACDC_NUM_CLASSES)


class ACDCSlices(CasesDataset):
    """ACDC training slices; key = index or (index, sample_seed); transform gets default_rng(sample_seed)."""

    def __init__(self, root: str | Path, slice_names: Sequence[str], transform: Transform | None = None,
                 cache: bool = True):
        super().__init__(slice_names, transform, cache)
        self.root = Path(root)

    def load(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        return load_acdc_slice(self.root, case_id)
