"""The lock of one grid cell: two launches of a grid never train the same run folder at the same time.

A cell holds `<run folder>/reproduce.lock` while it trains and tests: a FolderLock (utils/folder_lock.py, shared
with the training run's own lock) whose heartbeat lets any machine on the file system tell a live holder from a
dead one. A stale lock is taken over; a live one makes the cell `CellBusy`.
"""
from __future__ import annotations

from pathlib import Path

from utils import folder_lock
from utils.errors import UserError
from utils.folder_lock import (
    HEARTBEAT_SECONDS,
    STALE_AFTER_SECONDS,
    FolderLock,
    LockHolder,
    current_job_id,
    job_active,
    process_exists,
    short_job_id,
    slurm_job_active,
    this_host,
)

__all__ = ["HEARTBEAT_SECONDS", "LOCK_FILE", "STALE_AFTER_SECONDS", "CellBusy", "CellLock", "LockHolder",
           "current_job_id", "job_active", "live_holder", "process_exists", "read_holder", "short_job_id",
           "slurm_job_active", "this_host"]

LOCK_FILE = "reproduce.lock"


class CellBusy(UserError):
    """Another live launch holds the cell."""

    def __init__(self, run_dir: Path, holder: LockHolder):
        self.holder = holder
        super().__init__(f"{run_dir} is being worked on by {holder.describe()}; skipped")


def read_holder(run_dir: Path) -> LockHolder | None:
    """The holder named by the lock file of `run_dir`, or None when there is no lock."""
    return folder_lock.read_holder(Path(run_dir) / LOCK_FILE)


def live_holder(run_dir: Path) -> LockHolder | None:
    """The holder of the lock of `run_dir` when it is alive; None when the cell is free (no lock or a stale one)."""
    holder = read_holder(run_dir)
    return holder if holder is not None and not holder.stale_reason() else None


class CellLock(FolderLock):
    """`with CellLock(run_dir):` holds the cell's lock (CellBusy when a live holder has it), with a heartbeat."""

    file_name = LOCK_FILE

    def busy(self, holder: LockHolder) -> Exception:
        return CellBusy(self.run_dir, holder)
