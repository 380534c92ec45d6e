"""The training loader: the batches of a batch sampler, read by worker processes or a background thread and put on
the device.

    batches = training_batches(train_data, sampler, num_workers=2, device=torch.device("cuda"))
    batch = next(batches)   # {"image": (B, C, *spatial), "label": (B, *spatial) int64, "case": [B ids]}

Every sample's augmentation is seeded by the sampler's (index, sample seed) entries, so batch t does not depend
on the number of workers, nor on which thread reads it; the workers need no seeding of their own.

Who loads (docs/speed.md, "Data loading"): `num_workers` > 0 worker processes (DataLoader's); 0 a background thread
of the training process that prepares the next batch while the step runs. The default (utils/machine.py,
`default_num_workers`) is the thread where the default device is a CPU: there the step's intra-op threads use every
core, and worker processes would take cores (and memory) from it for work that a thread overlaps with the step.
"""
from __future__ import annotations

import queue
import signal
import threading
import weakref
from collections.abc import Iterable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset


def ignore_stop_signals(worker_id: int) -> None:
    """Workers leave SIGINT / SIGTERM / SIGUSR1 / SIGUSR2 to the main process (a terminal's Ctrl-C and a scheduler
    signal every process): it finishes the iteration, saves and ends them (training/signals.py)."""
    for name in ("SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)


class BackgroundBatches(Iterator):
    """`source`'s items computed `ahead` items in advance by a daemon thread, in order; an exception in the thread is
    raised by the `next()` that would have returned the item. The thread stops once this iterator is garbage."""

    def __init__(self, source: Iterator, ahead: int = 1):
        self._queue: queue.Queue = queue.Queue(maxsize=ahead)
        # the thread holds only a weak reference to this object, so that dropping the iterator ends the thread
        self._thread = threading.Thread(target=_fill, args=(source, self._queue, weakref.ref(self)),
                                        name="training-batches", daemon=True)
        self._thread.start()

    def __next__(self):
        item, error = self._queue.get()
        if error is not None:
            raise error
        return item


def _fill(source: Iterator, out: queue.Queue, consumer: weakref.ref) -> None:
    try:
        for item in source:
            while True:
                try:
                    out.put((item, None), timeout=0.5)
                    break
                except queue.Full:
                    if consumer() is None:
                        return
    except BaseException as error:  # noqa: BLE001 - handed to the consumer, which raises it
        out.put((None, error))


def training_batches(dataset: Dataset, batch_sampler: Iterable[list], num_workers: int, device: torch.device
                     ) -> Iterator[dict]:
    """The endless stream of the sampler's batches on `device` (pinned host memory and non-blocking copies on a
    GPU). `num_workers` worker processes; 0 = a background thread.

    Calling it draws a base seed from torch's global generator (DataLoader's rule) at once, in the calling thread,
    not at the first batch: a resumed run restores its generators after this call."""
    pin = device.type == "cuda"
    loader = DataLoader(dataset, batch_sampler=batch_sampler, num_workers=num_workers,
                        pin_memory=pin and num_workers > 0, persistent_workers=num_workers > 0,
                        worker_init_fn=ignore_stop_signals if num_workers > 0 else None)
    batches: Iterator[dict] = iter(loader)
    if num_workers == 0:
        batches = BackgroundBatches(_pinned(batches) if pin else batches)
    return ({"image": batch["image"].to(device, non_blocking=True),
             "label": batch["label"].to(device, non_blocking=True), "case": list(batch["case"])} for batch in batches)


def _pinned(batches: Iterator[dict]) -> Iterator[dict]:
    for batch in batches:
        yield {**batch, "image": batch["image"].pin_memory(), "label": batch["label"].pin_memory()}
