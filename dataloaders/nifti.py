"""Datasets in the nnU-Net raw layout (NIfTI) and the preprocessing that maps a scan to the network grid and back.

Layout (nnU-Net v1 and v2 raw folders both work):

    DIR/dataset.json                  label names and values, channel names, file ending
    DIR/imagesTr/<case>_0000.nii.gz   one file per input channel (_0000, _0001, ...)
    DIR/labelsTr/<case>.nii.gz        only for labeled cases: a training image without one is UNLABELED
    DIR/imagesTs/<case>_0000.nii.gz   optional test scans
    DIR/labelsTs/<case>.nii.gz        optional references for the test scans (scored by predict.py --labels)

Preprocessing (`preprocess`, recorded in a `PreprocessRecord` so `restore_labels` can undo it exactly):
  1. optional crop to the bounding box of the non-zero voxels of any channel (the body region);
  2. optional resampling to `target_spacing` mm: images with a cubic (or linear) spline, labels nearest;
  3. per-case, per-channel normalisation: z-score (the paper's "zero mean, unit variance"), min-max, or none.
Arrays keep the NIfTI voxel axis order (i, j, k) with a leading channel axis: image (C, X, Y, Z).
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from utils.cli import float_list
from utils.errors import UserError
from utils.settings import setting

from .cases import check_label_values, parse_key

NORMALIZATIONS = ("zscore", "minmax", "none")
NIFTI_GROUP = "your NIfTI dataset"  # train.py's -h section of these settings
UNLABELED = -1  # label value of unlabeled training samples: never read (methods get label=None), fails if used
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})(?P<ending>\.nii(\.gz)?)$")


# ----------------------------------------------------------------------------------------------- the folder
@dataclass
class NiftiDatasetInfo:
    """What a raw folder holds: label names, channels and the case ids of each subset."""

    root: Path
    labels: dict[str, int]  # name -> value, background (0) included; values 0..K-1
    channel_names: list[str]
    file_ending: str = ".nii.gz"
    labeled: list[str] = field(default_factory=list)  # imagesTr cases with a labelsTr file
    unlabeled: list[str] = field(default_factory=list)  # imagesTr cases without one
    test: list[str] = field(default_factory=list)  # imagesTs cases
    test_labeled: list[str] = field(default_factory=list)  # imagesTs cases with a labelsTs file

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def class_names(self) -> list[str]:
        """Foreground class names ordered by value (1..K-1)."""
        return [name for name, _ in sorted(self.labels.items(), key=lambda kv: kv[1]) if _ != 0]

    def image_paths(self, case: str, subset: str = "Tr") -> list[Path]:
        return [self.root / f"images{subset}" / f"{case}_{c:04d}{self.file_ending}" for c in range(self.num_channels)]

    def label_path(self, case: str, subset: str = "Tr") -> Path:
        return self.root / f"labels{subset}" / f"{case}{self.file_ending}"


def _parse_labels(raw: dict, path: Path) -> dict[str, int]:
    """nnU-Net v2 {"background": 0, "LA": 1} or v1 {"0": "background", "1": "LA"} -> {name: value}."""
    if not raw:
        raise UserError(f"{path}: 'labels' is empty; list every class, e.g. {{\"background\": 0, \"tumour\": 1}}")
    if all(isinstance(v, str) for v in raw.values()):  # v1: value -> name
        labels = {name: int(value) for value, name in raw.items()}
    elif all(isinstance(v, int) for v in raw.values()):
        labels = {name: int(value) for name, value in raw.items()}
    else:
        raise UserError(f"{path}: 'labels' must map names to integer values (nnU-Net regions are not supported), "
                         f"got {raw}")
    if sorted(labels.values()) != list(range(len(labels))):
        raise UserError(f"{path}: label values must be 0..{len(labels) - 1} with 0 = background, "
                         f"got {sorted(labels.values())}")
    return labels


def _cases_in(folder: Path, ending: str, num_channels: int) -> list[str]:
    """Case ids of `<case>_XXXX<ending>` files; every case needs every channel."""
    if not folder.is_dir():
        return []
    channels: dict[str, set[int]] = {}
    for path in folder.iterdir():
        match = _CHANNEL_FILE.match(path.name)
        if match and match["ending"] == ending:
            channels.setdefault(match["case"], set()).add(int(match["channel"]))
    expected = set(range(num_channels))
    incomplete = {case: sorted(expected - found) for case, found in channels.items() if not expected <= found}
    if incomplete:
        case, missing = next(iter(sorted(incomplete.items())))
        raise FileNotFoundError(f"{folder}: {len(incomplete)} case(s) lack channel files, e.g. {case} has no "
                                f"{', '.join(f'{case}_{c:04d}{ending}' for c in missing)}")
    return sorted(channels)


def read_nifti_dataset(root: str | Path) -> NiftiDatasetInfo:
    """Scan an nnU-Net raw folder. Labeled = imagesTr cases with a labelsTr file; the rest are unlabeled."""
    root = Path(root)
    meta_path = root / "dataset.json"
    if not root.is_dir():
        raise FileNotFoundError(f"--data {root} does not exist; it should be an nnU-Net raw folder with dataset.json, "
                                f"imagesTr/ and labelsTr/ (see docs/own-data.md)")
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found; write one with 'labels' (e.g. {{\"background\": 0, "
                                f"\"organ\": 1}}) and 'channel_names' (e.g. {{\"0\": \"MRI\"}}) "
                                f"(see docs/own-data.md)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{meta_path} is not valid JSON: {exc}") from None
    labels = _parse_labels(meta.get("labels", {}), meta_path)
    channels_raw = meta.get("channel_names", meta.get("modality"))
    if not channels_raw:
        raise UserError(f"{meta_path}: 'channel_names' missing; e.g. {{\"0\": \"MRI\"}} for one input channel")
    channel_names = [channels_raw[k] for k in sorted(channels_raw, key=int)]
    ending = meta.get("file_ending", ".nii.gz")
    if ending not in (".nii.gz", ".nii"):
        raise UserError(f"{meta_path}: file_ending {ending!r} is not supported; use .nii.gz or .nii")
    info = NiftiDatasetInfo(root, labels, channel_names, ending)

    train_cases = _cases_in(root / "imagesTr", ending, info.num_channels)
    if not train_cases:
        raise FileNotFoundError(f"{root / 'imagesTr'} holds no '<case>_0000{ending}' images")
    info.labeled = [c for c in train_cases if info.label_path(c).is_file()]
    info.unlabeled = [c for c in train_cases if c not in set(info.labeled)]
    orphans = sorted(p.name for p in (root / "labelsTr").glob(f"*{ending}")
                     if p.name[: -len(ending)] not in set(train_cases)) if (root / "labelsTr").is_dir() else []
    if orphans:
        raise FileNotFoundError(f"{root / 'labelsTr'}: label(s) without an image in imagesTr, e.g. {orphans[0]}")
    if not info.labeled:
        raise UserError(f"{root}: no training case has a label in labelsTr/; at least one labeled case is needed")
    info.test = _cases_in(root / "imagesTs", ending, info.num_channels)
    info.test_labeled = [c for c in info.test if info.label_path(c, "Ts").is_file()]
    return info


# ----------------------------------------------------------------------------------------------- reading scans
@dataclass
class Scan:
    """One scan as read from disk: image (C, X, Y, Z) float32 and the geometry to write results back with."""

    image: np.ndarray
    spacing: tuple[float, ...]  # mm per array axis
    affine: np.ndarray
    header: object  # nibabel header of the first channel (None for h5 input)


def _read_volume(path: Path):
    import nibabel as nib

    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # noqa: BLE001 - nibabel raises several types for a bad file
        raise UserError(f"{path} is not a readable NIfTI file ({type(exc).__name__}: {exc})") from None
    shape = img.shape
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) != 3:
        raise UserError(f"{path} has shape {img.shape}; expected a 3-D scan (one file per channel)")
    return img, shape


def read_scan_header(path: Path) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """(3-D shape, voxel size in mm) of one channel file as read_scan sees it, without reading the voxels."""
    img, shape = _read_volume(Path(path))
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return tuple(int(s) for s in shape), zooms + (1.0,) * (3 - len(zooms))


def read_scan(paths: Sequence[Path]) -> Scan:
    """Read the channel files of one case; they must share shape and affine."""
    channels, first = [], None
    for path in paths:
        img, shape = _read_volume(Path(path))
        data = np.asarray(img.dataobj, dtype=np.float32).reshape(shape)
        if not np.isfinite(data).all():
            raise UserError(f"{path}: {int(data.size - np.isfinite(data).sum())} NaN/Inf voxels; fix or exclude "
                             f"this case")
        if first is None:
            first = img
        elif shape != channels[0].shape or not np.allclose(img.affine, first.affine, atol=1e-4):
            raise UserError(f"{path}: shape {shape} / affine differ from channel 0 {paths[0]}; channels of one "
                             f"case must be on the same grid")
        channels.append(data)
    zooms = tuple(float(z) for z in first.header.get_zooms()[:3])
    zooms = zooms + (1.0,) * (3 - len(zooms))
    return Scan(np.stack(channels), zooms, np.asarray(first.affine, dtype=np.float64), first.header)


def read_label(path: Path, shape: tuple[int, ...], num_classes: int | None = None) -> np.ndarray:
    """uint8 label map; values must be class indices below `num_classes` (no silent uint8 wrap-around)."""
    img, label_shape = _read_volume(Path(path))
    if tuple(label_shape) != tuple(shape):
        raise UserError(f"{path}: label shape {label_shape} differs from the image shape {shape}")
    return check_label_values(np.asarray(img.dataobj).reshape(label_shape), Path(path), "label map", num_classes)


# ----------------------------------------------------------------------------------------------- preprocessing
@dataclass
class Preprocessing:
    """Written into every checkpoint (config.nifti.preprocessing) so predict.py repeats it on new scans; train.py's
    preprocessing flags are generated from these fields."""

    normalization: str = setting("zscore", "per-case, per-channel intensity normalisation (the paper: zscore)",
                                 choices=NORMALIZATIONS, group=NIFTI_GROUP)
    target_spacing: tuple[float, ...] | None = setting(
        None, "resample every case to this voxel size (per array axis); default: keep each grid", unit="mm",
        parse=float_list, group=NIFTI_GROUP)
    crop_nonzero: bool = setting(False, "crop each case to its non-zero (body) region", switch=True,
                                 group=NIFTI_GROUP)
    image_order: int = setting(3, "image resampling: 3 cubic, 1 linear (labels always nearest)", choices=(1, 3),
                               group=NIFTI_GROUP)
    slice_axis: int = setting(2, "2-D mode: the array axis slices are taken along (the coarsest one, from the "
                                 "scans' spacing)", flag=False)

    def __post_init__(self):
        if self.normalization not in NORMALIZATIONS:
            raise UserError(f"unknown normalization {self.normalization!r}; choose from {', '.join(NORMALIZATIONS)}")
        if self.target_spacing is not None:
            self.target_spacing = tuple(float(s) for s in self.target_spacing)
            if len(self.target_spacing) != 3 or any(s <= 0 for s in self.target_spacing):
                raise UserError(f"target spacing needs 3 positive values in mm, got {self.target_spacing}")
        if self.image_order not in (1, 3):
            raise UserError(f"image_order must be 1 (linear) or 3 (cubic), got {self.image_order}")
        if self.slice_axis not in (0, 1, 2):
            raise UserError(f"slice_axis must be 0, 1 or 2, got {self.slice_axis}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["target_spacing"] = list(self.target_spacing) if self.target_spacing else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass
class PreprocessRecord:
    """Everything `restore_labels` needs to map a prediction back onto the scan's own grid."""

    original_shape: tuple[int, ...]
    original_spacing: tuple[float, ...]
    crop: tuple[tuple[int, int], ...]  # (start, stop) per axis on the original grid
    resampled_shape: tuple[int, ...]


def nonzero_box(image: np.ndarray) -> tuple[tuple[int, int], ...]:
    """(start, stop) per spatial axis of the voxels that are non-zero in any channel; the full box if none."""
    mask = np.any(image != 0, axis=0)
    if not mask.any():
        return tuple((0, s) for s in mask.shape)
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append((int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float] | None) -> tuple[int, ...]:
    """Grid size that covers the same extent at `target` mm: round(size * spacing / target), at least 1."""
    if target is None:
        return tuple(int(s) for s in shape)
    return tuple(max(int(round(n * s / t)), 1) for n, s, t in zip(shape, spacing, target, strict=True))


def resize(array: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """Resample one spatial array to exactly `shape`; voxel extents (not centres) are aligned (grid_mode)."""
    shape = tuple(int(s) for s in shape)
    if array.shape == shape:
        return array.copy()
    factors = [out / size for out, size in zip(shape, array.shape, strict=True)]
    out = ndimage.zoom(array, factors, order=order, mode="nearest", grid_mode=True, prefilter=order > 1)
    if out.shape != shape:  # scipy rounds the size itself; fix a one-voxel disagreement at the far border
        out = out[tuple(slice(0, s) for s in shape)]
        out = np.pad(out, [(0, s - o) for s, o in zip(shape, out.shape, strict=True)], mode="edge")
    return out


def normalize(image: np.ndarray, method: str) -> np.ndarray:
    """Per-channel intensity normalisation of (C, *spatial)."""
    if method == "none":
        return image.astype(np.float32, copy=False)
    out = np.empty_like(image, dtype=np.float32)
    for c, channel in enumerate(image):
        if method == "zscore":
            out[c] = (channel - channel.mean()) / max(float(channel.std()), 1e-8)
        else:  # minmax
            low, high = float(channel.min()), float(channel.max())
            out[c] = (channel - low) / (high - low) if high > low else 0.0
    return out


def preprocess(image: np.ndarray, spacing: Sequence[float], settings: Preprocessing,
               label: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, PreprocessRecord]:
    """(C, X, Y, Z) scan -> network-grid image (and label), plus the record that undoes it."""
    spatial = tuple(image.shape[1:])
    box = nonzero_box(image) if settings.crop_nonzero else tuple((0, s) for s in spatial)
    window = tuple(slice(a, b) for a, b in box)
    image = image[(slice(None), *window)]
    label = label[window] if label is not None else None
    cropped_spacing = tuple(float(s) for s in spacing)
    new_shape = resampled_shape(image.shape[1:], cropped_spacing, settings.target_spacing)
    if new_shape != tuple(image.shape[1:]):
        image = np.stack([resize(channel, new_shape, settings.image_order) for channel in image])
        label = resize(label, new_shape, 0) if label is not None else None
    record = PreprocessRecord(spatial, cropped_spacing, box, new_shape)
    return normalize(image, settings.normalization), label, record


def restore_labels(labels: np.ndarray, record: PreprocessRecord) -> np.ndarray:
    """Label map on the network grid -> the scan's original shape (nearest resampling, paste into the crop)."""
    crop_shape = tuple(b - a for a, b in record.crop)
    labels = resize(np.asarray(labels), crop_shape, 0)
    out = np.zeros(record.original_shape, dtype=labels.dtype)
    out[tuple(slice(a, b) for a, b in record.crop)] = labels
    return out


def choose_slice_axis(spacings: Sequence[Sequence[float]], target: Sequence[float] | None) -> int:
    """2-D mode slices along the coarsest axis (largest target, else median spacing); ties pick the last."""
    reference = np.asarray(target if target is not None else np.median(np.asarray(spacings, float), axis=0))
    return int(np.flatnonzero(reference >= reference.max() - 1e-6)[-1])


# ----------------------------------------------------------------------------------------------- training data
def random_rot_flip_crop(image: np.ndarray, label: np.ndarray | None, patch_size: Sequence[int],
                         rng: np.random.Generator, foreground_fraction: float = 0.33
                         ) -> tuple[np.ndarray, np.ndarray | None]:
    """Augment a (C, *spatial) image and its label: rot90 + flip in the first two spatial axes, random crop.

    Axes shorter than the patch are zero-padded. With probability `foreground_fraction` (labeled samples)
    the crop is placed around a random foreground voxel: full-field scans otherwise rarely show small organs.
    """
    k, flip_axis = int(rng.integers(0, 4)), int(rng.integers(0, 2))
    image = np.flip(np.rot90(image, k, axes=(1, 2)), axis=flip_axis + 1)
    label = np.flip(np.rot90(label, k, axes=(0, 1)), axis=flip_axis) if label is not None else None
    patch = tuple(int(p) for p in patch_size)
    pad = [(max(p - s, 0) // 2, max(p - s, 0) - max(p - s, 0) // 2) for s, p in zip(image.shape[1:], patch,
                                                                                     strict=True)]
    if any(sum(p) for p in pad):
        image = np.pad(image, [(0, 0), *pad])
        label = np.pad(label, pad) if label is not None else None
    spatial = image.shape[1:]
    centre = None
    if label is not None and rng.random() < foreground_fraction:
        foreground = np.argwhere(label > 0)
        if len(foreground):
            centre = foreground[int(rng.integers(0, len(foreground)))]
    if centre is None:
        offsets = [int(rng.integers(0, s - p + 1)) for s, p in zip(spatial, patch, strict=True)]
    else:
        offsets = [int(min(max(c - p // 2, 0), s - p)) for c, s, p in zip(centre, spatial, patch, strict=True)]
    window = tuple(slice(o, o + p) for o, p in zip(offsets, patch, strict=True))
    image = np.ascontiguousarray(image[(slice(None), *window)])
    label = np.ascontiguousarray(label[window]) if label is not None else None
    return image, label


def slice_id(case: str, index: int) -> str:
    return f"{case}_slice_{index}"


def parse_slice_id(item: str) -> tuple[str, int]:
    case, _, index = item.rpartition("_slice_")
    if not case or not index.isdigit():
        raise UserError(f"{item!r} is not a slice id '<case>_slice_<k>'")
    return case, int(index)


# load(case) -> (image (C, X, Y, Z) preprocessed, label or None)
CaseLoader = Callable[[str], tuple[np.ndarray, np.ndarray | None]]


class NiftiTrainDataset(Dataset):
    """Training samples of a NIfTI task: whole cases (3-D) or `<case>_slice_<k>` slices (2-D mode).

    Keys and seeding follow the LA / ACDC datasets: key = index or (index, sample_seed). Unlabeled samples
    carry a label filled with UNLABELED only so that batches collate; the trainer hands methods label=None.
    """

    def __init__(self, item_ids: Sequence[str], load_case: CaseLoader, patch_size: Sequence[int],
                 slice_axis: int | None = None):
        self.item_ids = list(item_ids)
        self.load_case = load_case
        self.patch_size = tuple(int(p) for p in patch_size)
        self.slice_axis = slice_axis  # None: 3-D items

    def __len__(self) -> int:
        return len(self.item_ids)

    def preload(self) -> None:
        for item in self.item_ids:
            self.arrays(item)

    def arrays(self, item: str) -> tuple[np.ndarray, np.ndarray | None]:
        if self.slice_axis is None:
            return self.load_case(item)
        case, index = parse_slice_id(item)
        image, label = self.load_case(case)
        image = np.take(image, index, axis=self.slice_axis + 1)
        return image, (np.take(label, index, axis=self.slice_axis) if label is not None else None)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, sample_seed = parse_key(key)
        if not 0 <= index < len(self.item_ids):
            raise IndexError(f"index {index} out of range for {len(self.item_ids)} samples")
        image, label = self.arrays(self.item_ids[index])
        image, label = random_rot_flip_crop(image, label, self.patch_size, np.random.default_rng(sample_seed))
        labels = (torch.from_numpy(label.astype(np.int64)) if label is not None
                  else torch.full(image.shape[1:], UNLABELED, dtype=torch.int64))
        return {"image": torch.from_numpy(image.astype(np.float32, copy=False)), "label": labels,
                "case": self.item_ids[index]}
