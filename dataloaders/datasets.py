"""Dataset adapters: what differs between LA (3-D volumes), ACDC (2-D slices, volumes at test) and a user's NIfTI
folder, seen by the trainer, the predictor and the evaluation, which never branch on a dataset's name.

An adapter knows its data (split lists, file checks, stored cases, the training dataset), its network, its classes
and voxel size, and how a stored array relates to a NIfTI scan of the same case (`stored_from_scan`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from .acdc import ACDCSlices, acdc_slice_path, acdc_volume_path, load_acdc_volume
from .la import LA_FOLDER, LAVolumes, la_case_path, load_la_case
from .nifti import Preprocessing
from .splits import SPLITS_DIR, Split, acdc_split, la_split, patient_of
from .transforms import ACDCTrainTransform, LATrainTransform

# How a case is predicted (inference/predictor.py): a 3-D sliding window over the stored volume, 2-D slices
# resized to the training size (ACDC's official test), or 2-D sliding windows along a slice axis.
INFERENCE_KINDS = ("volume", "slices_resized", "slices")


def count(n: int, unit: str) -> str:
    return f"{n} {unit}{'' if n == 1 else 's'}"


def check_files_exist(paths: list[Path], what: str, root: str | Path, layout: str, dataset: str = "") -> None:
    """Fail before training or testing starts (and before anything is written) when cases are missing."""
    missing = [p for p in paths if not p.is_file()]
    if missing:
        if not Path(root).is_dir():
            raise FileNotFoundError(f"--root_path {root} does not exist; it should hold {layout} "
                                    f"(see docs/data.md)")
        shown = ", ".join(str(p) for p in missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        subset = (f"; to use only the cases you have, write lists of them (python -m data.lists "
                  f"{dataset.lower()} {root} --out DIR) and pass --lists_dir DIR / --list DIR/test.list"
                  if dataset else "")
        raise FileNotFoundError(f"{len(missing)} of {len(paths)} {what} missing under --root_path {root}: "
                                f"{shown}{subset} (see docs/data.md#a-subset-of-the-cases)")


@dataclass
class DatasetAdapter:
    """One dataset as every stage sees it; subclasses fill in the data access."""

    name: str
    network: str  # registered network name
    network_kwargs: dict
    num_classes: int  # including background
    class_names: tuple[str, ...]  # foreground classes 1..C-1
    inference: str  # one of INFERENCE_KINDS
    patch_size: tuple[int, ...]  # network input: training crop / resize, the sliding window at test
    stride: tuple[int, ...] = ()  # sliding-window step at test; () = half the patch (NIfTI) or none (ACDC)
    spacing_mm: tuple[float, ...] | None = None  # voxel size of the stored arrays, when known
    # keep the largest connected component of each class at test time (the paper's protocol)
    test_largest_component: bool = False
    has_channel_axis: bool = False  # stored images are (C, *spatial) rather than single-channel (*spatial)
    slice_axis: int | None = None  # 2-D models on volumes: the spatial axis sliced
    scan_preprocessing: Preprocessing = field(default_factory=Preprocessing)  # for new scans (predict.py)
    # how the stored arrays are normalised ("zscore", "minmax"); "" = the model normalises an h5 array itself
    stored_normalization: str = ""
    labelnum_meaning: str = ""  # -h text of --labelnum
    root_help: str = "dataset folder"  # -h text of --root_path

    @property
    def spatial_dims(self) -> int:
        return 2 if self.inference in ("slices_resized", "slices") else 3

    def lists_dir(self, override: str | Path = "") -> Path:
        return Path(override) if override else SPLITS_DIR / self.name

    def split(self, labelnum: int, select: str, lists_dir: str | Path = "") -> Split:
        raise NotImplementedError

    def check_data(self, root: str | Path, train_ids: list[str], eval_ids: list[str]) -> None:
        raise NotImplementedError

    def check_cases(self, root: str | Path, case_ids: list[str]) -> None:
        """Read every case once (keys, shapes, finite image, label values) so a bad file fails before training."""
        for case_id in case_ids:
            self.load_case(root, case_id)

    def train_dataset(self, root: str | Path, case_ids: list[str], patch_size: tuple[int, ...]) -> Dataset:
        raise NotImplementedError

    def load_case(self, root: str | Path, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def class_name(self, c: int) -> str:
        return self.class_names[c - 1] if 0 < c <= len(self.class_names) else f"class {c}"

    def describe_items(self, ids: list[str]) -> str:
        """How many training items `ids` are, in what the loader draws and what --labelnum counts."""
        return count(len(ids), "case")

    # a preprocessed NIfTI scan (C, X, Y, Z) <-> the stored array layout this dataset's models read
    def stored_from_scan(self, image: np.ndarray) -> np.ndarray:
        return image

    def scan_from_stored(self, labels: np.ndarray) -> np.ndarray:
        return labels


class LADataset(DatasetAdapter):
    def __init__(self) -> None:
        super().__init__(
            name="LA", network="vnet",
            network_kwargs={"in_channels": 1, "num_classes": 2, "base_filters": 16, "dropout": True},
            num_classes=2, class_names=("left atrium",), inference="volume", patch_size=(112, 112, 80),
            stride=(18, 18, 4),
            # The original LA scans are 0.625 mm isotropic; the h5 crops keep that grid.
            spacing_mm=(0.625, 0.625, 0.625), test_largest_component=True,
            scan_preprocessing=Preprocessing(normalization="zscore", target_spacing=(0.625, 0.625, 0.625)),
            stored_normalization="zscore",  # UA-MT's preprocessing: each scan z-scored, then cropped
            labelnum_meaning="labeled training scans (first N of data/splits/LA/train.list; 4 = 5 %, 8 = 10 %)",
            root_help=f"folder holding '{LA_FOLDER}/' (see docs/data.md)",
        )

    def split(self, labelnum: int, select: str, lists_dir: str | Path = "") -> Split:
        # The honest protocol holds the validation scans out of the unlabeled pool; the paper protocol has no val set.
        return la_split(labelnum, hold_out_val=select == "val", lists_dir=self.lists_dir(lists_dir))

    def check_data(self, root: str | Path, train_ids: list[str], eval_ids: list[str]) -> None:
        paths = [la_case_path(root, c) for c in [*train_ids, *eval_ids]]
        check_files_exist(paths, "LA cases", root, f"'{LA_FOLDER}/<case>/mri_norm2.h5'", self.name)

    def train_dataset(self, root: str | Path, case_ids: list[str], patch_size: tuple[int, ...]) -> Dataset:
        return LAVolumes(root, case_ids, transform=LATrainTransform(tuple(patch_size)))

    def load_case(self, root: str | Path, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        return load_la_case(root, case_id)

    def stored_from_scan(self, image: np.ndarray) -> np.ndarray:
        return image[0]  # the h5 arrays are (W, H, D) = the NIfTI axes

    def scan_from_stored(self, labels: np.ndarray) -> np.ndarray:
        return labels


class ACDCDataset(DatasetAdapter):
    def __init__(self) -> None:
        super().__init__(
            name="ACDC", network="unet", network_kwargs={"in_channels": 1, "num_classes": 4},
            num_classes=4, class_names=("RV", "Myo", "LV"), inference="slices_resized", patch_size=(256, 256),
            spacing_mm=None,  # the public h5 volumes carry no voxel size
            test_largest_component=False, scan_preprocessing=Preprocessing(normalization="minmax"),
            stored_normalization="minmax",  # SSL4MIS: each volume min-max scaled to [0, 1]
            labelnum_meaning=("labeled training patients (first N patients of data/splits/ACDC/train_slices.list; "
                              "3 -> 68 slices, 7 -> 136)"),
            root_help="folder holding 'data/' with the ACDC h5 volumes and 'data/slices/' (see docs/data.md)",
        )

    def split(self, labelnum: int, select: str, lists_dir: str | Path = "") -> Split:
        return acdc_split(labelnum, lists_dir=self.lists_dir(lists_dir))

    def describe_items(self, ids: list[str]) -> str:
        # the loader draws slices; --labelnum counts patients
        return f"{count(len(ids), 'slice')} ({count(len({patient_of(i) for i in ids}), 'patient')})"

    def check_data(self, root: str | Path, train_ids: list[str], eval_ids: list[str]) -> None:
        paths = [acdc_slice_path(root, s) for s in train_ids] + [acdc_volume_path(root, v) for v in eval_ids]
        check_files_exist(paths, "ACDC slices/volumes", root, "'data/<volume>.h5' and 'data/slices/<slice>.h5'",
                          self.name)

    def train_dataset(self, root: str | Path, case_ids: list[str], patch_size: tuple[int, ...]) -> Dataset:
        return ACDCSlices(root, case_ids, transform=ACDCTrainTransform(tuple(patch_size)))

    def load_case(self, root: str | Path, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        return load_acdc_volume(root, case_id)

    def stored_from_scan(self, image: np.ndarray) -> np.ndarray:
        return image[0].transpose(2, 1, 0)  # the h5 volumes are (S, H, W) = the NIfTI axes reversed

    def scan_from_stored(self, labels: np.ndarray) -> np.ndarray:
        return labels.transpose(2, 1, 0)
