"""CT scans in Hounsfield units: nnU-Net's CT normalisation, a manual window, the body crop, and telling a CT
from an MR volume by its intensities.

nnU-Net's CT scheme (`CTNormalization` in nnunetv2/preprocessing/normalization/default_normalization_schemes.py,
with the `foreground_intensity_properties_per_channel` of its dataset fingerprint): the intensities of the labeled
(foreground) voxels, pooled over the training cases, give the 0.5 and 99.5 percentiles, the mean and the standard
deviation; every scan is clipped to the two percentiles, then mean-subtracted and divided by the standard
deviation (at least 1e-8). Unlike a per-scan z-score, one HU value maps to one network input in every scan.
nnU-Net samples 10,000 foreground voxels per case; here every labeled voxel of the cases counted is used (no
sampling, so the numbers are exactly numpy's on those voxels).
"""
from __future__ import annotations

import argparse
from collections.abc import Iterable

import numpy as np
from scipy import ndimage

from utils.errors import UserError

BODY_THRESHOLD_HU = -500.0  # air is about -1000 HU, lung about -800, fat about -100: above this is the body
STATISTIC_NAMES = ("percentile_00_5", "percentile_99_5", "mean", "std")
CT_CHANNEL_NAMES = ("ct",)  # dataset.json channel names that mean CT (nnU-Net selects its CT scheme on "CT")
# a scan is CT-like when it holds air: some voxels at or below -500 HU and a minimum near -1000 HU
AIR_FRACTION_CT = 0.01
MIN_HU_CT = -900.0
# a CT scan always holds fat (about -100 HU) or air; a volume with nothing below this is not in HU
MAX_MIN_HU_CT = -200.0


def is_ct(channel_names: Iterable[str]) -> bool:
    """Every channel named CT (case-insensitive), as nnU-Net reads dataset.json's channel_names / modality."""
    names = [str(n).strip().lower() for n in channel_names]
    return bool(names) and all(n in CT_CHANNEL_NAMES for n in names)


def foreground_statistics(cases: Iterable[tuple[np.ndarray, np.ndarray]]) -> list[dict[str, float]]:
    """Per channel {percentile_00_5, percentile_99_5, mean, std} of the voxels with label > 0, pooled over the
    (image (C, X, Y, Z), label (X, Y, Z)) cases given (the labeled training cases, on their own grids)."""
    pooled: list[list[np.ndarray]] = []
    for image, label in cases:
        foreground = np.asarray(label) > 0
        if not pooled:
            pooled = [[] for _ in range(image.shape[0])]
        for c, channel in enumerate(image):
            pooled[c].append(channel[foreground].astype(np.float64))
    if not pooled or not sum(v.size for v in pooled[0]):
        raise UserError("--normalization ct needs labeled voxels: the labeled training cases have no foreground; "
                        "check labelsTr/ or use --window LOW,HIGH")
    statistics = []
    for values in pooled:
        voxels = np.concatenate(values)
        low, high = np.percentile(voxels, [0.5, 99.5])
        statistics.append({"percentile_00_5": float(low), "percentile_99_5": float(high),
                           "mean": float(voxels.mean()), "std": float(voxels.std())})
    return statistics


def check_statistics(statistics, channels: int) -> list[dict[str, float]]:
    """The stored statistics, validated (one dict of the four numbers per channel)."""
    statistics = [dict(s) for s in statistics]
    if len(statistics) != channels or any(set(s) != set(STATISTIC_NAMES) for s in statistics):
        raise UserError(f"CT statistics must be one {{{', '.join(STATISTIC_NAMES)}}} per channel ({channels}), got "
                        f"{statistics}")
    return [{k: float(s[k]) for k in STATISTIC_NAMES} for s in statistics]


def ct_normalize(channel: np.ndarray, statistics: dict[str, float]) -> np.ndarray:
    """nnU-Net's CT scheme for one channel: clip to the foreground percentiles, then (x - mean) / std."""
    clipped = np.clip(channel, statistics["percentile_00_5"], statistics["percentile_99_5"])
    return ((clipped - statistics["mean"]) / max(statistics["std"], 1e-8)).astype(np.float32)


def window_normalize(channel: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """A fixed HU window: clip to [low, high] and map it linearly to [0, 1]."""
    low, high = window
    return ((np.clip(channel, low, high) - low) / (high - low)).astype(np.float32)


def parse_window(text: str) -> list[float]:
    """`-160,240` -> [-160.0, 240.0]: the --window flag (HU, LOW < HIGH)."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH in HU like -160,240, got {text!r}") from None
    if len(values) != 2 or not values[0] < values[1]:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH in HU with LOW < HIGH like -160,240, got {text!r}")
    return values


def check_window(window) -> tuple[float, float] | None:
    if window is None:
        return None
    window = tuple(float(v) for v in window)
    if len(window) != 2 or not window[0] < window[1]:
        raise UserError(f"--window needs LOW,HIGH in HU with LOW < HIGH (e.g. -160,240 for soft tissue), got "
                        f"{list(window)}")
    return window


def body_box(image: np.ndarray, threshold_hu: float = BODY_THRESHOLD_HU) -> tuple[tuple[int, int], ...]:
    """(start, stop) per spatial axis of the largest connected region above `threshold_hu` in channel 0 of a
    (C, X, Y, Z) CT scan: the body, without the air around it and unconnected specks (the full box if none)."""
    inside = image[0] > threshold_hu
    components, count = ndimage.label(inside)
    if count == 0:
        return tuple((0, s) for s in inside.shape)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    body = components == int(sizes.argmax())
    box = []
    for axis in range(body.ndim):
        hits = np.flatnonzero(body.any(axis=tuple(a for a in range(body.ndim) if a != axis)))
        box.append((int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def hu_summary(volume: np.ndarray) -> tuple[float, float]:
    """(minimum, fraction of voxels at or below -500 HU) of a volume, what `modality_problem` reads."""
    volume = np.asarray(volume, dtype=np.float32)
    return float(volume.min()), float((volume <= BODY_THRESHOLD_HU).mean())


def modality_problem(summary: tuple[float, float], model_is_ct: bool) -> str:
    """Why a scan cannot be what a CT (or a non-CT) model was trained on, or '' when it can."""
    minimum, air_fraction = summary
    if model_is_ct and minimum > MAX_MIN_HU_CT:
        return (f"no voxel below {minimum:.4g}; the model was trained on CT in Hounsfield units (air about "
                f"-1000 HU, fat about -100 HU), this looks like an MR or an already normalised volume")
    if not model_is_ct and minimum <= MIN_HU_CT and air_fraction >= AIR_FRACTION_CT:
        return (f"minimum {minimum:.4g} and {100 * air_fraction:.0f} % of the voxels at or below "
                f"{BODY_THRESHOLD_HU:.0f}: a CT in Hounsfield units, but the model was not trained on CT")
    return ""
