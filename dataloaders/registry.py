"""The datasets by name: LA, ACDC, and a user's nnU-Net-layout NIfTI folder ('NIfTI-3d' / 'NIfTI-2d')."""
from __future__ import annotations

from utils.choices import unknown_choice

from .datasets import ACDCDataset, DatasetAdapter, LADataset
from .nifti_dataset import NIFTI_MODES, dataset_from_config

DATASETS: dict[str, DatasetAdapter] = {"LA": LADataset(), "ACDC": ACDCDataset()}
NIFTI_DATASETS = tuple(f"NIfTI-{mode}" for mode in NIFTI_MODES)


def get_dataset(name: str, config=None) -> DatasetAdapter:
    """The adapter of a benchmark by name; a NIfTI folder's is built from the config (its `nifti` settings)."""
    if name in NIFTI_DATASETS:
        return dataset_from_config(config)
    if name not in DATASETS:
        raise unknown_choice("dataset", name, [*DATASETS, *NIFTI_DATASETS])
    return DATASETS[name]
