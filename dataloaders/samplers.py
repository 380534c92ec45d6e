"""Two-stream batch sampler: every batch = `labeled_bs` labeled indices, then unlabeled ones.

Batch t is a pure function of (seed, t) (`batch_at`), so resuming at any iteration is exact and the
batches do not depend on the number of DataLoader workers. Each entry is `(index, sample_seed)`; the
datasets seed the augmentation of that sample with `sample_seed`.

Difference from the official code (docs/method.md §3.1): it restarts the unlabeled permutation chain at every
labeled epoch, so with few labeled cases (2 iterations per epoch on LA-4) mostly the head of each fresh
permutation is used. We read one endless chain of permutations continuously, so the unlabeled pool is
visited uniformly. The labeled stream is as the official code: one permutation per epoch, cut into
consecutive groups of `labeled_bs`, trailing partial group dropped.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from utils.errors import UserError

_LABELED_STREAM = 0
_UNLABELED_STREAM = 1
_SAMPLE_SEEDS = 2


class TwoStreamBatchSampler:
    """Infinite iterable of batches `[(index, sample_seed), ...]`, labeled entries first.

    Pass it as `batch_sampler=` to a DataLoader and stop after the iteration budget; it has no `__len__`
    (use `iterations_per_epoch`). `batch_size == labeled_bs` gives labeled-only batches (supervised or
    fully labeled runs) and then `unlabeled_indices` may be empty.
    """

    def __init__(self, labeled_indices: Sequence[int], unlabeled_indices: Sequence[int], batch_size: int,
                 labeled_bs: int, seed: int, start_iteration: int = 0):
        self.labeled_indices = [int(i) for i in labeled_indices]
        self.unlabeled_indices = [int(i) for i in unlabeled_indices]
        self.batch_size = int(batch_size)
        self.labeled_bs = int(labeled_bs)
        self.seed = int(seed)
        self.start_iteration = int(start_iteration)
        if self.labeled_bs < 1:
            raise UserError(f"--labeled_bs must be >= 1, got {self.labeled_bs}")
        if self.labeled_bs > self.batch_size:
            raise UserError(f"--labeled_bs {self.labeled_bs} exceeds --batch_size {self.batch_size}")
        if len(self.labeled_indices) < self.labeled_bs:
            raise UserError(
                f"{len(self.labeled_indices)} labeled samples cannot fill --labeled_bs {self.labeled_bs}; "
                f"raise --labelnum or lower --labeled_bs"
            )
        if self.unlabeled_bs > 0 and not self.unlabeled_indices:
            raise UserError(
                f"no unlabeled samples for --batch_size {self.batch_size} > --labeled_bs {self.labeled_bs}; "
                f"lower --labelnum or set --batch_size equal to --labeled_bs (labeled-only training)"
            )
        overlap = set(self.labeled_indices) & set(self.unlabeled_indices)
        if overlap:
            raise UserError(f"indices {sorted(overlap)[:5]} are both labeled and unlabeled")
        if self.seed < 0 or self.start_iteration < 0:
            raise UserError(f"seed ({self.seed}) and start_iteration ({self.start_iteration}) must be >= 0")
        self._permutations: dict[tuple[int, int], np.ndarray] = {}

    @property
    def unlabeled_bs(self) -> int:
        return self.batch_size - self.labeled_bs

    @property
    def iterations_per_epoch(self) -> int:
        """Batches per pass over the labeled list: floor(N_labeled / labeled_bs)."""
        return len(self.labeled_indices) // self.labeled_bs

    def _permutation(self, stream: int, number: int, length: int) -> np.ndarray:
        key = (stream, number)
        if key not in self._permutations:
            if len(self._permutations) > 8:  # only the current and next permutations are ever needed
                self._permutations.clear()
            self._permutations[key] = np.random.default_rng([self.seed, stream, number]).permutation(length)
        return self._permutations[key]

    def labeled_at(self, t: int) -> list[int]:
        epoch, step = divmod(t, self.iterations_per_epoch)
        order = self._permutation(_LABELED_STREAM, epoch, len(self.labeled_indices))
        return [self.labeled_indices[i] for i in order[step * self.labeled_bs:(step + 1) * self.labeled_bs]]

    def unlabeled_at(self, t: int) -> list[int]:
        n = len(self.unlabeled_indices)
        picked = []
        for position in range(t * self.unlabeled_bs, (t + 1) * self.unlabeled_bs):
            chain_number, offset = divmod(position, n)
            order = self._permutation(_UNLABELED_STREAM, chain_number, n)
            picked.append(self.unlabeled_indices[order[offset]])
        return picked

    def batch_at(self, t: int) -> list[tuple[int, int]]:
        """Batch of iteration t (0-based): labeled_bs labeled (index, seed) pairs, then the unlabeled ones."""
        if t < 0:
            raise ValueError(f"iteration must be >= 0, got {t}")
        indices = self.labeled_at(t) + (self.unlabeled_at(t) if self.unlabeled_bs else [])
        seeds = np.random.SeedSequence([self.seed, _SAMPLE_SEEDS, t]).generate_state(len(indices), np.uint64)
        return [(index, int(s)) for index, s in zip(indices, seeds, strict=True)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        t = self.start_iteration
        while True:
            yield self.batch_at(t)
            t += 1
