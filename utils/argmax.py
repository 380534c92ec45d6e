"""The predicted class of every voxel: torch.argmax over a short class axis, by comparisons.

torch.argmax reduces a strided axis of 2-4 entries slowly on the CPU (0.52 s for the class axis of four LA
crops, 2 x 112 x 112 x 80 voxels each; one comparison pass takes 0.03 s). `argmax_classes` returns the same
indices for every input: the first maximum wins a tie, and a NaN counts as the maximum (the first NaN wins),
as torch.argmax does.
"""
from __future__ import annotations

import torch
from torch import Tensor


def argmax_classes(scores: Tensor, dim: int = 1) -> Tensor:
    """Index (int64) of the largest entry along `dim`, equal to `scores.argmax(dim)`."""
    best = scores.select(dim, 0)
    index = torch.zeros(best.shape, dtype=torch.int64, device=scores.device)
    best_is_nan = best.isnan()
    for c in range(1, scores.shape[dim]):
        candidate = scores.select(dim, c)
        candidate_is_nan = candidate.isnan()
        better = (candidate > best) | (candidate_is_nan & ~best_is_nan)
        best = torch.where(better, candidate, best)
        best_is_nan = best_is_nan | candidate_is_nan
        index.masked_fill_(better, c)
    return index
