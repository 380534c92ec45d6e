"""The training loader: the batches of a batch sampler, read by worker processes and put on the device.

    batches = training_batches(train_data, sampler, num_workers=2, device=torch.device("cuda"))
    batch = next(batches)   # {"image": (B, C, *spatial), "label": (B, *spatial) int64, "case": [B ids]}

Every sample's augmentation is seeded by the sampler's (index, sample seed) entries, so batch t does not depend
on the number of workers; the workers need no seeding of their own.
"""
from __future__ import annotations

import signal
from collections.abc import Iterable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset


def ignore_stop_signals(worker_id: int) -> None:
    """Workers leave SIGINT / SIGTERM / SIGUSR1 / SIGUSR2 to the main process (a terminal's Ctrl-C and a scheduler
    signal every process): it finishes the iteration, saves and ends them (training/signals.py)."""
    for name in ("SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)


def training_batches(dataset: Dataset, batch_sampler: Iterable[list], num_workers: int, device: torch.device
                     ) -> Iterator[dict]:
    """The endless stream of the sampler's batches on `device` (pinned host memory and non-blocking copies on a
    GPU). Calling it draws a base seed from torch's global generator (DataLoader's rule) at once, not at the
    first batch: a resumed run restores its generators after this call."""
    loader = DataLoader(dataset, batch_sampler=batch_sampler, num_workers=num_workers,
                        pin_memory=device.type == "cuda", persistent_workers=num_workers > 0,
                        worker_init_fn=ignore_stop_signals if num_workers > 0 else None)
    batches = iter(loader)
    return ({"image": batch["image"].to(device, non_blocking=True),
             "label": batch["label"].to(device, non_blocking=True), "case": list(batch["case"])} for batch in batches)
