"""NIfTI datasets (nnU-Net raw or Medical Segmentation Decathlon layout) and the preprocessing that maps a scan to
the network grid and back.

nnU-Net raw layout (v1 and v2 folders both work):

    DIR/dataset.json                  label names and values, channel names, file ending
    DIR/imagesTr/<case>_0000.nii.gz   one file per input channel (_0000, _0001, ...)
    DIR/labelsTr/<case>.nii.gz        only for labeled cases: a training image without one is UNLABELED
    DIR/imagesTs/<case>_0000.nii.gz   optional test scans
    DIR/labelsTs/<case>.nii.gz        optional references for the test scans (scored by predict.py --labels)

Medical Segmentation Decathlon layout (a TaskXX_Name folder as downloaded): the same folders, but one file per
case, `imagesTr/<case>.nii.gz`, multi-modal cases as one 4-D image with the channels on the last axis
(Task01_BrainTumour: X x Y x Z x 4), `modality` in dataset.json, no labels for imagesTs/. The macOS `._*` files
some Decathlon archives carry are ignored (in both layouts). `read_nifti_dataset` detects the layout.

Preprocessing (`preprocess`, recorded in a `PreprocessRecord` so `restore_labels` can undo it exactly):
  1. optional crop to the body: the bounding box of the non-zero voxels of any channel, or for CT the largest
     connected region above -500 HU (air is -1000 HU, not 0);
  2. optional resampling to `target_spacing` mm: images with a cubic (or linear) spline, labels nearest;
  3. per-channel normalisation: per-case z-score (the paper's "zero mean, unit variance"), min-max or none; for CT
     nnU-Net's scheme with the training set's foreground statistics (`ct`) or a fixed HU window (dataloaders/ct.py).
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
from .ct import body_box, check_statistics, check_window, ct_normalize, parse_window, window_normalize

NORMALIZATIONS = ("zscore", "minmax", "none", "ct", "window")
NIFTI_GROUP = "your NIfTI dataset"  # train.py's -h section of these settings
UNLABELED = -1  # label value of unlabeled training samples: never read (methods get label=None), fails if used
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})(?P<ending>\.nii(\.gz)?)$")
LAYOUTS = {"nnunet": "nnU-Net raw layout (imagesTr/<case>_0000.nii.gz, one file per channel)",
           "decathlon": "Medical Segmentation Decathlon layout (imagesTr/<case>.nii.gz, channels on the last axis "
                        "of a 4-D image)"}


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
    layout: str = "nnunet"  # a key of LAYOUTS

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
        """The files of one case: one per channel (nnU-Net), or the one image holding every channel (Decathlon)."""
        if self.layout == "decathlon":
            return [self.root / f"images{subset}" / f"{case}{self.file_ending}"]
        return [self.root / f"images{subset}" / f"{case}_{c:04d}{self.file_ending}" for c in range(self.num_channels)]

    def describe(self) -> str:
        """One line for the log: the layout detected and what it holds."""
        return (f"{self.root}: {LAYOUTS[self.layout]}; {len(self.labeled)} labeled, {len(self.unlabeled)} "
                f"unlabeled training case(s), {len(self.test)} test scan(s) ({len(self.test_labeled)} with labels); "
                f"{self.num_channels} channel(s) {', '.join(self.channel_names)}; classes "
                f"{', '.join(self.class_names)}")

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


def _visible_files(folder: Path, ending: str) -> list[Path]:
    """Files ending in `ending`, without the hidden ones (macOS `._name` companions in Decathlon archives)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.endswith(ending) and not p.name.startswith("."))


def detect_layout(root: Path, meta: dict, ending: str) -> str:
    """'decathlon' or 'nnunet'. dataset.json's training entries name existing files only in the Decathlon's
    own folders (nnU-Net v1 lists them without the _0000 its files carry); otherwise the file names decide."""
    entries = [e.get("image", "") for e in meta.get("training", []) if isinstance(e, dict)]
    if entries and all(entries) and all((root / e).is_file() for e in entries[:3]):
        return "decathlon"
    files = _visible_files(root / "imagesTr", ending)
    with_channel = [p for p in files if _CHANNEL_FILE.match(p.name)]
    if with_channel and len(with_channel) < len(files):
        other = next(p for p in files if not _CHANNEL_FILE.match(p.name))
        raise UserError(f"{root / 'imagesTr'} mixes nnU-Net channel files ({with_channel[0].name}) with "
                        f"Decathlon-style files ({other.name}); keep one layout (docs/own-data.md)")
    return "nnunet" if with_channel or not files else "decathlon"


def _decathlon_cases_in(folder: Path, ending: str) -> list[str]:
    return [p.name[: -len(ending)] for p in _visible_files(folder, ending)]


def _cases_in(folder: Path, ending: str, num_channels: int) -> list[str]:
    """Case ids of `<case>_XXXX<ending>` files; every case needs every channel."""
    if not folder.is_dir():
        return []
    channels: dict[str, set[int]] = {}
    for path in _visible_files(folder, ending):
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
    info = NiftiDatasetInfo(root, labels, channel_names, ending, layout=detect_layout(root, meta, ending))

    if info.layout == "decathlon":
        def cases_in(folder: Path) -> list[str]:
            return _decathlon_cases_in(folder, ending)
    else:
        def cases_in(folder: Path) -> list[str]:
            return _cases_in(folder, ending, info.num_channels)
    train_cases = cases_in(root / "imagesTr")
    if not train_cases:
        raise FileNotFoundError(f"{root / 'imagesTr'} holds no '<case>_0000{ending}' (nnU-Net) or "
                                f"'<case>{ending}' (Decathlon) images")
    info.labeled = [c for c in train_cases if info.label_path(c).is_file()]
    info.unlabeled = [c for c in train_cases if c not in set(info.labeled)]
    orphans = sorted(p.name for p in (root / "labelsTr").glob(f"*{ending}")
                     if p.name[: -len(ending)] not in set(train_cases)) if (root / "labelsTr").is_dir() else []
    if orphans:
        raise FileNotFoundError(f"{root / 'labelsTr'}: label(s) without an image in imagesTr, e.g. {orphans[0]}")
    if not info.labeled:
        raise UserError(f"{root}: no training case has a label in labelsTr/; at least one labeled case is needed")
    info.test = cases_in(root / "imagesTs")
    info.test_labeled = [c for c in info.test if info.label_path(c, "Ts").is_file()]
    if info.layout == "decathlon":
        first = info.image_paths(train_cases[0])[0]
        channels = scan_channels(first)
        if channels != info.num_channels:
            raise UserError(f"{first} holds {channels} channel(s) but {meta_path} names {info.num_channels} "
                            f"({', '.join(channel_names)}); a multi-modal Decathlon image keeps its channels on "
                            f"the last axis")
    return info


# ----------------------------------------------------------------------------------------------- reading scans
@dataclass
class Scan:
    """One scan as read from disk: image (C, X, Y, Z) float32 and the geometry to write results back with."""

    image: np.ndarray
    spacing: tuple[float, ...]  # mm per array axis
    affine: np.ndarray
    header: object  # nibabel header of the first channel (None for h5 input)


def _read_volume(path: Path, channels_last: bool = False):
    """(nibabel image, 3-D spatial shape, channels). With `channels_last`, a 4-D X x Y x Z x C image is C channels
    of one case (the Decathlon's multi-modal layout); otherwise only trailing axes of size 1 may follow the three."""
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
    channels = 1
    if channels_last and len(shape) == 4:
        shape, channels = shape[:3], int(shape[3])
    if len(shape) != 3:
        raise UserError(f"{path} has shape {img.shape}; expected a 3-D scan"
                        + (" or a 4-D image with the channels on the last axis" if channels_last else ""))
    return img, shape, channels


def read_scan_header(path: Path) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """(3-D shape, voxel size in mm) of one channel file as read_scan sees it, without reading the voxels."""
    img, shape, _ = _read_volume(Path(path), channels_last=True)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return tuple(int(s) for s in shape), zooms + (1.0,) * (3 - len(zooms))


def scan_channels(path: Path) -> int:
    """Channels one image file holds (1, or C for a 4-D X x Y x Z x C image), from its header."""
    return _read_volume(Path(path), channels_last=True)[2]


def read_scan(paths: Sequence[Path]) -> Scan:
    """Read the files of one case (one per channel, or 4-D files with channels last); one shape and affine."""
    channels, first = [], None
    for path in paths:
        img, shape, count = _read_volume(Path(path), channels_last=True)
        data = np.asarray(img.dataobj, dtype=np.float32).reshape((*shape, count))
        if not np.isfinite(data).all():
            raise UserError(f"{path}: {int(data.size - np.isfinite(data).sum())} NaN/Inf voxels; fix or exclude "
                             f"this case")
        if first is None:
            first = img
        elif shape != channels[0].shape or not np.allclose(img.affine, first.affine, atol=1e-4):
            raise UserError(f"{path}: shape {shape} / affine differ from channel 0 {paths[0]}; channels of one "
                             f"case must be on the same grid")
        channels.extend(np.moveaxis(data, -1, 0))
    zooms = tuple(float(z) for z in first.header.get_zooms()[:3])
    zooms = zooms + (1.0,) * (3 - len(zooms))
    return Scan(np.stack(channels), zooms, np.asarray(first.affine, dtype=np.float64), first.header)


def read_label(path: Path, shape: tuple[int, ...], num_classes: int | None = None) -> np.ndarray:
    """uint8 label map; values must be class indices below `num_classes` (no silent uint8 wrap-around)."""
    img, label_shape, _ = _read_volume(Path(path))
    if tuple(label_shape) != tuple(shape):
        raise UserError(f"{path}: label shape {label_shape} differs from the image shape {shape}")
    return check_label_values(np.asarray(img.dataobj).reshape(label_shape), Path(path), "label map", num_classes)


# ----------------------------------------------------------------------------------------------- preprocessing
@dataclass
class Preprocessing:
    """Written into every checkpoint (config.nifti.preprocessing) so predict.py repeats it on new scans; train.py's
    preprocessing flags are generated from these fields."""

    normalization: str = setting(
        "zscore", "per-case, per-channel intensity normalisation (the paper: zscore); ct: nnU-Net's CT scheme with the "
        "foreground statistics of the labeled training cases, chosen when dataset.json names every channel CT; "
        "window: a fixed HU window (--window)", choices=NORMALIZATIONS, group=NIFTI_GROUP)
    target_spacing: tuple[float, ...] | None = setting(
        None, "resample every case to this voxel size (per array axis); default: keep each grid", unit="mm",
        parse=float_list, group=NIFTI_GROUP)
    crop_nonzero: bool = setting(False, "crop each case to its non-zero (body) region; on CT to the largest region "
                                        "above -500 HU", switch=True, group=NIFTI_GROUP)
    image_order: int = setting(3, "image resampling: 3 cubic, 1 linear (labels always nearest)", choices=(1, 3),
                               group=NIFTI_GROUP)
    slice_axis: int = setting(2, "2-D mode: the array axis slices are taken along (the coarsest one, from the "
                                 "scans' spacing)", flag=False)
    window: tuple[float, float] | None = setting(
        None, "CT: clip to this HU window and map it to [0, 1] instead of the CT statistics (sets --normalization "
              "window), e.g. --window=-160,240 (with '=': a negative value is not a flag)", unit="HU",
        parse=parse_window, metavar="LOW,HIGH", group=NIFTI_GROUP)
    modality: str = setting("", "'CT' for scans in Hounsfield units (body crop, predict.py's modality check), "
                                "else ''; from dataset.json and the normalisation", flag=False)
    ct_statistics: list[dict[str, float]] | None = setting(
        None, "per channel, the foreground statistics of the CT scheme (percentile_00_5, percentile_99_5, mean, "
              "std), computed by train.py", flag=False)

    def __post_init__(self):
        if self.normalization not in NORMALIZATIONS:
            raise UserError(f"unknown normalization {self.normalization!r}; choose from {', '.join(NORMALIZATIONS)}")
        self.window = check_window(self.window)
        if (self.window is not None) != (self.normalization == "window"):
            raise UserError("--window LOW,HIGH and --normalization window go together (a fixed HU window); "
                            f"got normalization {self.normalization!r} and window {self.window}")
        if self.modality not in ("", "CT"):
            raise UserError(f"modality must be 'CT' or '' (not CT), got {self.modality!r}")
        if self.ct_statistics is not None:
            self.ct_statistics = check_statistics(self.ct_statistics, len(self.ct_statistics))
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
        d["window"] = list(self.window) if self.window else None
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


def normalize(image: np.ndarray, method: str, ct_statistics: Sequence[dict[str, float]] | None = None,
              window: tuple[float, float] | None = None) -> np.ndarray:
    """Per-channel intensity normalisation of (C, *spatial); `ct` needs one statistics dict per channel,
    `window` the HU window."""
    if method == "none":
        return image.astype(np.float32, copy=False)
    if method == "ct" and (ct_statistics is None or len(ct_statistics) != image.shape[0]):
        raise UserError(f"the CT normalisation needs the training set's foreground statistics for each of the "
                        f"{image.shape[0]} channel(s); train.py computes them (config.nifti.preprocessing."
                        f"ct_statistics), got {ct_statistics}")
    if method == "window" and window is None:
        raise UserError("the window normalisation needs --window LOW,HIGH (HU)")
    out = np.empty_like(image, dtype=np.float32)
    for c, channel in enumerate(image):
        if method == "ct":
            out[c] = ct_normalize(channel, ct_statistics[c])
        elif method == "window":
            out[c] = window_normalize(channel, window)
        elif method == "zscore":
            out[c] = (channel - channel.mean()) / max(float(channel.std()), 1e-8)
        else:  # minmax
            low, high = float(channel.min()), float(channel.max())
            out[c] = (channel - low) / (high - low) if high > low else 0.0
    return out


def preprocess(image: np.ndarray, spacing: Sequence[float], settings: Preprocessing,
               label: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, PreprocessRecord]:
    """(C, X, Y, Z) scan -> network-grid image (and label), plus the record that undoes it."""
    spatial = tuple(image.shape[1:])
    if not settings.crop_nonzero:
        box = tuple((0, s) for s in spatial)
    else:  # CT: air is -1000 HU, not 0, so the body is what lies well above air
        box = body_box(image) if settings.modality == "CT" else nonzero_box(image)
    window = tuple(slice(a, b) for a, b in box)
    image = image[(slice(None), *window)]
    label = label[window] if label is not None else None
    cropped_spacing = tuple(float(s) for s in spacing)
    new_shape = resampled_shape(image.shape[1:], cropped_spacing, settings.target_spacing)
    if new_shape != tuple(image.shape[1:]):
        image = np.stack([resize(channel, new_shape, settings.image_order) for channel in image])
        label = resize(label, new_shape, 0) if label is not None else None
    record = PreprocessRecord(spatial, cropped_spacing, box, new_shape)
    return normalize(image, settings.normalization, settings.ct_statistics, settings.window), label, record


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
