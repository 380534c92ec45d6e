"""Does each input of predict.py look like what the model was trained on? Checked for every input before the
first prediction, so a wrong input costs seconds and writes nothing.

What the model was trained on comes from the checkpoint: the network (2-D or 3-D, input channels) and the
dataset adapter (how its stored h5 arrays are normalised, the voxel size it resamples scans to).

* Refused, always (the prediction could not mean anything): an array or scan of the wrong dimensionality (an h5
  array that is not 3-D, a single-slice scan for a 3-D network) or the wrong number of channels.
* Refused unless --skip_input_checks (very unlikely to be the model's kind of data): an h5 array for an LA / ACDC
  model without the normalisation of the public h5 files (LA z-scored, so with negative values and a standard
  deviation near 1; ACDC min-max scaled to [0, 1]); a scan whose voxel size is more than 4x off the model's
  training grid along an axis the network sees.
* Warned about on stderr, prediction goes on: a voxel size 2-4x off that grid.

* Refused unless --skip_input_checks: a NIfTI scan whose intensities are not of the model's modality: for a model
  trained on CT (Hounsfield units) a scan with nothing below -200 (no air, no fat: an MR or a normalised volume);
  for any other model a scan in HU (minimum at or below -900 and at least 1 % of the voxels at or below -500).

Not checkable: other intensities of a NIfTI scan (each scan is normalised on its own), and the anatomy of an
input of the right shape.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dataloaders import DatasetAdapter
from dataloaders.ct import hu_summary, modality_problem
from dataloaders.nifti import read_scan_header, scan_channels
from utils.errors import UserError

VOXEL_SIZE_REFUSED = 4.0  # scan voxel size / training voxel size (or its inverse) beyond which a scan is refused
VOXEL_SIZE_WARNED = 2.0


@dataclass
class InputDescription:
    """What is known of one input before predicting it."""

    case: str
    source: str  # the file (channel 0 for NIfTI)
    kind: str  # "h5" (a stored array) or "nifti" (a scan)
    shape: tuple[int, ...]  # the array or the scan's 3-D shape
    channels: int
    spacing: tuple[float, ...] | None = None  # mm, NIfTI only
    intensity: tuple[float, float, float, float] | None = None  # (min, max, mean, sd), h5 only
    hu: tuple[float, float] | None = None  # NIfTI only: (minimum, fraction at or below -500) of channel 0


@dataclass
class ModelExpectation:
    """What the checkpoint says its inputs were."""

    name: str  # the dataset, for messages
    spatial_dims: int
    in_channels: int
    stored_normalization: str  # of h5 arrays: "zscore", "minmax", "" (the model normalises them itself)
    voxel_size: tuple[float, ...] | None  # mm the scans are resampled to; None: kept as they are
    slice_axis: int | None  # 2-D networks on volumes: the axis sliced (its spacing does not matter)
    ct: bool = False  # trained on CT scans in Hounsfield units

    @classmethod
    def of(cls, dataset: DatasetAdapter, in_channels: int) -> ModelExpectation:
        target = dataset.scan_preprocessing.target_spacing
        slice_axis = dataset.slice_axis if dataset.slice_axis is not None else (2 if dataset.spatial_dims == 2
                                                                                 else None)
        return cls(dataset.name, dataset.spatial_dims, int(in_channels), dataset.stored_normalization,
                   tuple(target) if target else None, slice_axis, dataset.scan_preprocessing.modality == "CT")


def describe_h5(case: str, path, image: np.ndarray) -> InputDescription:
    finite = image[np.isfinite(image)] if image.size else image
    stats = ((float(finite.min()), float(finite.max()), float(finite.mean()), float(finite.std()))
             if finite.size else None)
    return InputDescription(case, str(path), "h5", tuple(image.shape), 1, intensity=stats)


def describe_nifti(case: str, paths) -> InputDescription:
    import nibabel as nib

    shape, spacing = read_scan_header(paths[0])
    channels = sum(scan_channels(p) for p in paths)
    voxels = np.asanyarray(nib.load(str(paths[0])).dataobj)
    first_channel = voxels.reshape(*shape, -1)[..., 0] if voxels.size else voxels
    return InputDescription(case, str(paths[0]), "nifti", shape, channels, spacing=spacing,
                            hu=hu_summary(first_channel) if first_channel.size else None)


def intensity_problem(stats: tuple[float, float, float, float], normalization: str, name: str) -> str:
    low, high, mean, sd = stats
    if normalization == "minmax" and (low < -1e-3 or high > 1 + 1e-3):
        return (f"values {low:.3g}..{high:.3g}; {name} models read volumes min-max scaled to [0, 1] per volume "
                f"(as the public {name} h5 files store them)")
    if normalization == "zscore" and (low >= 0 or not 0.1 <= sd <= 10 or abs(mean) > 5):
        return (f"values {low:.3g}..{high:.3g} (mean {mean:.3g}, sd {sd:.3g}); {name} models read volumes z-scored "
                f"per scan (negative values, sd about 1, as the public {name} h5 files store them)"
                + ("; values in [0, 1] look like a min-max scaled volume, e.g. ACDC" if low >= 0 and high <= 1
                   else ""))
    return ""


def voxel_size_ratios(spacing: tuple[float, ...], expect: ModelExpectation) -> list[tuple[int, float]]:
    """(axis, scan / training voxel size) of the axes the network sees."""
    return [(axis, s / t) for axis, (s, t) in enumerate(zip(spacing, expect.voxel_size, strict=True))
            if axis != expect.slice_axis and s > 0 and t > 0]


def problems(item: InputDescription, expect: ModelExpectation) -> tuple[list[str], list[str], list[str]]:
    """(always refused, refused unless skipped, warnings) for one input."""
    fatal, implausible, warnings = [], [], []
    if item.channels != expect.in_channels:
        hint = (f"; give the channels as <case>_0000.nii.gz ... <case>_{expect.in_channels - 1:04d}.nii.gz "
                f"or as one 4-D image with the channels on the last axis"
                if item.kind == "nifti" or expect.in_channels > 1 else "")
        fatal.append(f"{item.channels} input channel(s); the model takes {expect.in_channels}{hint}")
    if item.kind == "h5" and len(item.shape) != 3:
        fatal.append(f"a {len(item.shape)}-D array {item.shape}; {expect.name} models predict 3-D volumes "
                     f"(LA (W, H, D), ACDC (S, H, W), NIfTI models one channel (X, Y, Z))")
    elif expect.spatial_dims == 3 and min(item.shape) == 1:
        fatal.append(f"a single slice {item.shape}; the model is a 3-D network trained on volumes")
    if item.intensity is not None and expect.stored_normalization:
        problem = intensity_problem(item.intensity, expect.stored_normalization, expect.name)
        if problem:
            implausible.append(problem)
    if item.hu is not None:
        problem = modality_problem(item.hu, expect.ct)
        if problem:
            implausible.append(problem)
    if item.spacing is not None and expect.voxel_size is not None:
        for axis, ratio in voxel_size_ratios(item.spacing, expect):
            off = max(ratio, 1 / ratio)
            direction = "coarser" if ratio > 1 else "finer"
            text = (f"voxel size {_mm(item.spacing)} mm: axis {axis} is {off:.1f}x {direction} than the model's "
                    f"training grid {_mm(expect.voxel_size)} mm")
            if off > VOXEL_SIZE_REFUSED:
                implausible.append(text)
            elif off > VOXEL_SIZE_WARNED:
                warnings.append(text + "; resampling to it may lose what the model relies on")
    return fatal, implausible, warnings


def _mm(values) -> str:
    return "x".join(f"{v:.3g}" for v in values)


def check_inputs(items: list[InputDescription], expect: ModelExpectation, skip: bool = False,
                 checkpoint: str = "") -> list[str]:
    """Raise UserError naming every input that cannot match the model; return the warnings to show."""
    refused, warnings, skippable = [], [], True
    for item in items:
        fatal, implausible, warned = problems(item, expect)
        skippable &= not fatal
        reasons = fatal + ([] if skip else implausible)
        if reasons:
            refused.append(f"{item.source}: {'; '.join(reasons)}")
        warnings += [f"{item.source}: {w}" for w in warned + (implausible if skip else [])]
    if refused:
        shown = " | ".join(refused[:3]) + (f" | and {len(refused) - 3} more" if len(refused) > 3 else "")
        raise UserError(f"{len(refused)} of {len(items)} input(s) cannot match what {checkpoint or 'the model'} "
                        f"was trained on ({expect.name}, {expect.spatial_dims}-D network, {expect.in_channels} "
                        f"channel(s)); nothing was written: {shown}"
                        + (" (--skip_input_checks predicts them anyway)" if skippable else ""))
    return warnings
