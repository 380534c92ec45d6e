"""What the LA and ACDC datasets share: reading an h5 case, the key/transform contract, the sample dict."""
from __future__ import annotations

import errno
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from utils.errors import UserError

# Errors of a network file system or a failing disk that often pass: retried before a case counts as unreadable.
TRANSIENT_READ_ERRNOS = {errno.EIO, errno.EAGAIN, errno.EINTR, errno.ETIMEDOUT, errno.ESTALE}
READ_RETRY_DELAYS_S = (1.0, 4.0, 15.0)  # waits before the 2nd, 3rd and 4th attempt

# (image, label, rng) -> (image, label)
Transform = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def read_image_label(path: Path, ndim: int, what: str, num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image float32, label uint8) of `path`, checked: `ndim` equal axes, finite image, labels in [0, num_classes).

    `what` names the case in messages, e.g. "LA case 06SR5RBREL16DQ6M8LWS".
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{what}: {path} not found; expected an h5 file with datasets 'image' and 'label'. "
            f"Restore or prepare the dataset (see docs/data.md) and check the data root."
        )
    image, raw_label = read_with_retries(lambda: read_h5_arrays(path, what), path, what)
    if image.shape != raw_label.shape or image.ndim != ndim or image.size == 0:
        raise UserError(
            f"{what}: {path} has image shape {image.shape} and label shape {raw_label.shape}; "
            f"expected two equal, non-empty {ndim}-D shapes"
        )
    if not np.isfinite(image).all():
        bad = int(np.size(image) - np.isfinite(image).sum())
        raise UserError(f"{what}: {path} has {bad} NaN/Inf voxels in 'image'; fix or exclude this case")
    return image, check_label_values(raw_label, path, what, num_classes)


def read_h5_arrays(path: Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(path, "r") as f:
        missing = [key for key in ("image", "label") if key not in f]
        if missing:
            raise UserError(f"{what}: {path} has no dataset(s) {missing}; found {sorted(f.keys())}. "
                             f"Re-create it with datasets 'image' and 'label'")
        return np.asarray(f["image"][()], dtype=np.float32), np.asarray(f["label"][()])


def read_with_retries(read: Callable[[], tuple], path: Path, what: str) -> tuple:
    """read(), retried with a warning after a transient OSError (EIO, ESTALE, ...); any other OSError (h5py: a
    truncated file, not HDF5) or the last failure becomes a UserError naming the case and the file."""
    for attempt, delay_s in enumerate((*READ_RETRY_DELAYS_S, None), start=1):
        try:
            return read()
        except OSError as exc:
            if exc.errno not in TRANSIENT_READ_ERRNOS or delay_s is None:
                tried = f" (after {attempt} attempts)" if attempt > 1 else ""
                raise UserError(f"{what}: {path} is not a readable h5 file{tried} ({exc}); restore or re-download "
                                 f"it") from None
            print(f"warning: {what}: reading {path} failed ({exc.strerror or exc}); retrying in {delay_s:g} s "
                  f"(attempt {attempt + 1} of {len(READ_RETRY_DELAYS_S) + 1})", file=sys.stderr, flush=True)
            time.sleep(delay_s)
    raise AssertionError("unreachable")


def check_label_values(label: np.ndarray, path: Path, what: str, num_classes: int | None) -> np.ndarray:
    """The label map as uint8 after checking that every value is a class index (no silent wrap-around)."""
    if label.dtype.kind == "b":
        label = label.astype(np.uint8)
    if label.dtype.kind not in "iuf":
        raise UserError(f"{what}: {path} 'label' has dtype {label.dtype}; expected integer class indices")
    if label.dtype.kind == "f" and not np.array_equal(label, np.round(label)):
        raise UserError(f"{what}: {path} 'label' holds non-integer values; expected integer class indices")
    low, high = label.min(), label.max()
    limit = 256 if num_classes is None else num_classes
    if low < 0 or high >= limit:
        stray = sorted(set(np.unique(label).tolist()) - set(range(limit)))[:5]
        raise UserError(f"{what}: {path} 'label' holds values {stray} outside the classes 0..{limit - 1}; "
                         f"remap the labels or fix the file")
    return label.astype(np.uint8)


def parse_key(key: int | tuple[int, int]) -> tuple[int, int]:
    """Dataset key -> (index, sample_seed). A bare index uses itself as seed (deterministic evaluation)."""
    if isinstance(key, tuple):
        index, sample_seed = key
        return int(index), int(sample_seed)
    return int(key), int(key)


def to_sample(image: np.ndarray, label: np.ndarray, case: str) -> dict:
    """Sample dict: image float32 (1, *spatial), label int64 (*spatial), case id."""
    return {
        "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)[None]),
        "label": torch.from_numpy(np.ascontiguousarray(label).astype(np.int64)),
        "case": case,
    }


class CasesDataset(Dataset):
    """Shared key / transform / cache contract of the LA and ACDC datasets."""

    def __init__(self, case_ids: Sequence[str], transform: Transform | None = None, cache: bool = True):
        self.case_ids = list(case_ids)
        self.transform = transform
        self.cache = cache
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def load(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.case_ids)

    def arrays(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Stored (image, label) of case `index`; cached arrays are shared, so never modify them in place."""
        if index in self._cache:
            return self._cache[index]
        arrays = self.load(self.case_ids[index])
        if self.cache:
            self._cache[index] = arrays
        return arrays

    def preload(self) -> None:
        """Read every case now: bad files fail before training, and forked workers share one copy in memory."""
        for index in range(len(self.case_ids)):
            self.arrays(index)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, sample_seed = parse_key(key)
        if not 0 <= index < len(self.case_ids):
            raise IndexError(f"index {index} out of range for {len(self.case_ids)} cases")
        image, label = self.arrays(index)
        if self.transform is not None:
            image, label = self.transform(image, label, np.random.default_rng(sample_seed))
        return to_sample(image, label, self.case_ids[index])
