"""One process per run folder: `<run folder>/train.lock` while a run trains.

A second train_la.py / train_acdc.py / train.py on a run folder that a live process is training is refused at
once (RunFolderBusy names the holder's host, pid and start time). A stale lock (its process is gone from this
host, its batch job ended, or no heartbeat for STALE_AFTER_SECONDS) is taken over with a warning. The lock is the
grid's (utils/folder_lock.py): a heartbeat thread refreshes it every HEARTBEAT_SECONDS, by time, so the training
step never pays for it. Under torchrun rank 0 holds it for the job.
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from utils.atomic import make_writable_folder
from utils.disk import is_disk_error, write_failed
from utils.errors import UserError
from utils.folder_lock import STALE_AFTER_SECONDS, FolderLock, LockHolder

TRAIN_LOCK_FILE = "train.lock"


class RunFolderBusy(UserError):
    """Another live process trains this run folder."""


class TrainingLock(FolderLock):
    file_name = TRAIN_LOCK_FILE

    def busy(self, holder: LockHolder) -> Exception:
        return RunFolderBusy(
            f"run folder {self.run_dir} is being trained by {holder.describe()}; wait for it to end or stop it "
            f"(a stale lock is taken over once that process has ended, or after {STALE_AFTER_SECONDS / 60:.0f} min "
            f"without a heartbeat), or choose another --run_dir")


@contextlib.contextmanager
def hold_run_folder(run_dir: Path, ddp) -> Iterator[None]:
    """Hold the run folder's lock for the duration of a run (rank 0); every rank sees a refusal.

    A folder the lock had to create is removed again when the run wrote nothing else there (bad input)."""
    run_dir = Path(run_dir)
    lock = TrainingLock(run_dir)
    created = [folder for folder in (run_dir, *run_dir.parents) if not folder.exists()]  # innermost first

    def acquire() -> None:
        make_writable_folder(run_dir, "run folder", "--run_dir")  # a file in the way, no permission: one line
        try:
            lock.acquire()
        except OSError as exc:
            if is_disk_error(exc):
                raise write_failed(lock.path, exc) from None
            raise
        if lock.took_over:
            print(f"warning: took over the stale lock of {run_dir} ({lock.took_over})", file=sys.stderr)

    ddp.on_main(acquire)
    try:
        yield
    finally:
        if ddp.is_main:
            lock.release()
            with contextlib.suppress(OSError):
                for folder in created:
                    folder.rmdir()  # only when empty: the first folder holding something ends the walk
