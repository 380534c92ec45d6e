"""Data: dataset adapters (LA, ACDC, NIfTI folders), split lists, augmentation, the two-stream sampler, the training
loader, a synthetic LA set."""
from .acdc import ACDCSlices, acdc_slice_path, acdc_volume_path, load_acdc_slice, load_acdc_volume
from .cases import Transform
from .datasets import DatasetAdapter
from .la import LA_FOLDER, LAVolumes, la_case_path, load_la_case
from .loader import training_batches
from .registry import DATASETS, NIFTI_DATASETS, get_dataset
from .samplers import TwoStreamBatchSampler
from .splits import DATA_DIR, SPLITS_DIR, Split, acdc_split, la_split, patient_of, patients_to_slices, read_list
from .synthetic import make_synthetic_la
from .transforms import (
    ACDCTrainTransform,
    LATrainTransform,
    random_crop,
    random_rot_flip,
    random_rotate,
    resize_nearest,
)

__all__ = [
    "DATASETS", "NIFTI_DATASETS", "DatasetAdapter", "get_dataset",
    "ACDCSlices", "ACDCTrainTransform", "DATA_DIR", "LA_FOLDER", "LATrainTransform", "LAVolumes", "SPLITS_DIR", "Split",
    "Transform", "TwoStreamBatchSampler", "acdc_slice_path", "acdc_split", "acdc_volume_path", "la_case_path",
    "la_split", "load_acdc_slice", "load_acdc_volume", "load_la_case", "make_synthetic_la", "patient_of",
    "patients_to_slices", "random_crop", "random_rot_flip", "random_rotate", "read_list", "resize_nearest",
    "training_batches",
]
