"""LA (2018 Atrial Segmentation Challenge) cases: `<root>/2018LA_Seg_Training Set/<ID>/mri_norm2.h5`."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .cases import CasesDataset, Transform, read_image_label

LA_FOLDER = "2018LA_Seg_Training Set"
LA_NUM_CLASSES = 2  # background, left atrium


def la_case_path(root: str | Path, case_id: str) -> Path:
    return Path(root) / LA_FOLDER / case_id / "mri_norm2.h5"


def load_la_case(root: str | Path, case_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 (W, H, D), label uint8 {0, 1} (W, H, D)) of one LA case, stored values unchanged."""
    return read_image_label(la_case_path(root, case_id), ndim=3, what=f"LA case {case_id}", num_classes=LA_NUM_CLASSES)


class LAVolumes(CasesDataset):
    """LA volumes; key = index or (index, sample_seed); the transform gets default_rng(sample_seed)."""

    def __init__(self, root: str | Path, case_ids: Sequence[str], transform: Transform | None = None,
                 cache: bool = True):
        super().__init__(case_ids, transform, cache)
        self.root = Path(root)

    def load(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        return load_la_case(self.root, case_id)
