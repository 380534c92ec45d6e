"""Inference over whole volumes: the LA sliding window (docs/method.md §4.1) and ACDC slice-wise prediction (§4.2).

Both take `predict_logits`, a callable mapping an input batch (B, C_in, *patch) to logits (B, K, *patch).
The caller wraps the network (e.g. `lambda x: net(x).logits`) and puts it in eval mode; the functions here
also run it under `torch.no_grad()`.

For K = 2 the argmax of `sliding_window_predict`'s averaged probabilities is the official rule "averaged
foreground probability > 0.5": each window's softmax sums to 1 over K, and a uniform average of such maps
still sums to 1, so p1 > p0 ⇔ p1 > 1 − p1 ⇔ p1 > 0.5; at an exact tie (p1 = 0.5) argmax picks class 0, as the
strict ">" does. (Only float rounding of p0 + p1 around 1 can separate the two, within ~1e-7 of 0.5.)
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

PredictLogits = Callable[[torch.Tensor], torch.Tensor]


def _per_axis(value: int | Sequence[int], ndim: int, name: str) -> tuple[int, ...]:
    values = (int(value),) * ndim if isinstance(value, int | np.integer) else tuple(int(v) for v in value)
    if len(values) != ndim:
        raise ValueError(f"{name} needs {ndim} entries (one per spatial axis), got {values}")
    if any(v < 1 for v in values):
        raise ValueError(f"{name} entries must be >= 1, got {values}")
    return values


def window_starts(size: int, patch: int, stride: int) -> list[int]:
    """Start indices of the windows along one axis.

    n = ceil((size - patch) / stride) + 1 windows; window k starts at min(k * stride, size - patch), so the
    last window is flush with the far border. size == patch gives [0]. Pad first if size < patch.
    """
    if patch < 1 or stride < 1:
        raise ValueError(f"patch and stride must be >= 1, got patch={patch}, stride={stride}")
    if size < patch:
        raise ValueError(f"axis of size {size} is smaller than the patch {patch}; pad it to the patch first")
    n_windows = math.ceil((size - patch) / stride) + 1
    return [min(k * stride, size - patch) for k in range(n_windows)]


def count_windows(
    shape: Sequence[int], patch_size: Sequence[int], stride: int | Sequence[int]
) -> int:
    """Number of windows `sliding_window_predict` runs on a volume of spatial `shape` (after its padding)."""
    patch_size = _per_axis(patch_size, len(shape), "patch_size")
    strides = _per_axis(stride, len(shape), "stride")
    return math.prod(
        len(window_starts(max(size, patch), patch, step))
        for size, patch, step in zip(shape, patch_size, strides, strict=True)
    )


def window_counts(
    shape: Sequence[int], patch_size: Sequence[int], axis_starts: Sequence[Sequence[int]],
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Per-voxel number of windows (float32, `shape`) for windows at every combination of `axis_starts`.

    The windows tile a product grid, so the count is the outer product of the per-axis coverage counts:
    one small tensor per axis instead of one scatter per window. The values are small integers, exact in
    float32, so dividing by them gives the same bits as counting window by window.
    """
    total = torch.ones((), dtype=torch.float32, device=device)
    for axis, (size, patch, starts) in enumerate(zip(shape, patch_size, axis_starts, strict=True)):
        per_axis = torch.zeros(size, dtype=torch.float32, device=device)
        for start in starts:
            per_axis[start:start + patch] += 1.0
        total = total.unsqueeze(-1) * per_axis.view(*([1] * axis), size)
    return total


def sliding_window_predict(
    predict_logits: PredictLogits,
    image: torch.Tensor,
    patch_size: Sequence[int],
    stride: int | Sequence[int],
    num_classes: int,
    batch_size: int = 1,
) -> torch.Tensor:
    """Class probabilities (K, *spatial), float32 on `image`'s device, averaged over overlapping windows.

    image: (C_in, *spatial), 2D or 3D spatial. An axis shorter than the patch is zero-padded symmetrically
    to exactly the patch (left = floor(pad / 2)) and cropped back at the end. Each window's logits are
    softmaxed over K, summed into a probability map and divided by the per-voxel window count (uniform
    weights, no Gaussian). `count_windows(image.shape[1:], patch_size, stride)` gives the number of windows.

    Everything stays on `image`'s device (volume, patch batches, accumulators): put the volume on the
    network's device and nothing crosses to the host until the caller reads the result. `batch_size`
    windows go through `predict_logits` at once (1 = the official one-at-a-time loop; same result in eval
    mode); a coarser `stride` trades a little accuracy for fewer windows (the in-training `--eval_stride`).
    """
    if image.ndim < 2:
        raise ValueError(f"image must be (C_in, *spatial), got shape {tuple(image.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    spatial = tuple(image.shape[1:])
    patch_size = _per_axis(patch_size, len(spatial), "patch_size")
    strides = _per_axis(stride, len(spatial), "stride")
    if any(step > patch for step, patch in zip(strides, patch_size, strict=True)):
        raise ValueError(f"stride {strides} exceeds patch_size {patch_size}: voxels between windows would "
                         "never be predicted; use a stride <= the patch")

    pad_total = [max(patch - size, 0) for size, patch in zip(spatial, patch_size, strict=True)]
    pad_before = [total // 2 for total in pad_total]
    pad_after = [total - before for total, before in zip(pad_total, pad_before, strict=True)]
    if any(pad_total):
        # F.pad lists (before, after) pairs from the last axis backwards.
        pads = [p for before, after in zip(reversed(pad_before), reversed(pad_after), strict=True)
                for p in (before, after)]
        image = F.pad(image, pads, mode="constant", value=0.0)
    padded = tuple(image.shape[1:])

    probs_sum = torch.zeros((num_classes, *padded), dtype=torch.float32, device=image.device)
    axis_starts = [
        window_starts(size, patch, step)
        for size, patch, step in zip(padded, patch_size, strides, strict=True)
    ]
    counts = window_counts(padded, patch_size, axis_starts, image.device)
    windows = [
        tuple(slice(start, start + patch) for start, patch in zip(starts, patch_size, strict=True))
        for starts in itertools.product(*axis_starts)
    ]
    with torch.no_grad():
        for first in range(0, len(windows), batch_size):
            batch_windows = windows[first:first + batch_size]
            batch = torch.stack([image[(slice(None), *window)] for window in batch_windows])
            logits = predict_logits(batch)  # (B, K, *patch)
            expected = (len(batch_windows), num_classes, *patch_size)
            if tuple(logits.shape) != expected:
                raise ValueError(f"predict_logits returned shape {tuple(logits.shape)}, expected {expected} "
                                 "(batch, num_classes, *patch_size)")
            probs = torch.softmax(logits.float(), dim=1).to(image.device)
            for window, window_probs in zip(batch_windows, probs, strict=True):
                probs_sum[(slice(None), *window)] += window_probs

    probs_mean = probs_sum.div_(counts)  # in place: one K x volume buffer less
    crop = tuple(slice(before, before + size) for before, size in zip(pad_before, spatial, strict=True))
    return probs_mean[(slice(None), *crop)].contiguous()


EDGE_MODES = ("constant", "nearest")


def _zoom_nearest(array: np.ndarray, target_shape: tuple[int, int], edge_mode: str) -> np.ndarray:
    """Nearest-neighbour resize with zoom factors target/input, as the official ACDC test.

    scipy derives the output size as round(n * (m / n)); for integer n, m this is m (the relative rounding
    error is ~1e-16), but we check rather than trust it so an off-by-one never reaches the metrics silently.
    """
    factors = tuple(out / size for out, size in zip(target_shape, array.shape, strict=True))
    resized = ndimage.zoom(array, factors, order=0, mode=edge_mode)
    if resized.shape != tuple(target_shape):
        raise RuntimeError(
            f"zoom of {array.shape} by {factors} gave {resized.shape}, expected {target_shape}"
        )
    return resized


def predict_slices_2d(
    predict_logits: PredictLogits,
    volume: np.ndarray,
    output_size: tuple[int, int] = (256, 256),
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    edge_mode: str = "constant",
) -> np.ndarray:
    """Slice-wise label map (S, H, W) int64 of an (S, H, W) volume, as the ACDC test (docs/method.md §4.2).

    Each slice is resized to `output_size` with nearest neighbour (scipy zoom order=0), the slices run through
    `predict_logits` as (B, 1, *output_size) float32 batches on `device`, the argmax over K is taken, and
    each label map is resized back to (H, W) with nearest neighbour. No post-processing. Batching does not
    change the result for a network in eval mode (batch of one in the official script).

    edge_mode: scipy zoom's `mode`. "constant" (scipy's default, what the official script runs) has a quirk:
    when shrinking 256 back to H, the last output row (or column) can map to a coordinate a rounding error
    past the input edge (e.g. 215 * 255/215 > 255), which reads the constant 0 -> that whole row/column is
    predicted background. With scipy 1.17 this happens for 55 of the sizes 100..520 (e.g. 200, 216), never
    when enlarging. "nearest" clamps to the edge instead and differs from "constant" only at those rows.
    """
    if edge_mode not in EDGE_MODES:
        raise ValueError(f"unknown edge_mode {edge_mode!r}; choose from {', '.join(EDGE_MODES)}")
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"volume must be (S, H, W), got shape {volume.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    output_size = (int(output_size[0]), int(output_size[1]))
    slice_shape = volume.shape[1:]
    prediction = np.zeros(volume.shape, dtype=np.int64)
    with torch.no_grad():
        for first in range(0, volume.shape[0], batch_size):
            chunk = volume[first:first + batch_size]
            resized = np.stack([_zoom_nearest(s, output_size, edge_mode) for s in chunk])
            batch = torch.from_numpy(resized.astype(np.float32, copy=False)).unsqueeze(1).to(device)
            logits = predict_logits(batch)  # (B, K, *output_size)
            expected_spatial = (batch.shape[0], *output_size)
            if logits.ndim != 4 or (logits.shape[0], *logits.shape[2:]) != expected_spatial:
                raise ValueError(f"predict_logits returned shape {tuple(logits.shape)}, expected "
                                 f"({batch.shape[0]}, K, {output_size[0]}, {output_size[1]})")
            label_maps = torch.argmax(logits, dim=1).cpu().numpy()
            for offset, label_map in enumerate(label_maps):
                prediction[first + offset] = _zoom_nearest(label_map, slice_shape, edge_mode)
    return prediction
