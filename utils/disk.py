"""What the disk can refuse: a full, read-only or forbidden folder becomes one error naming the path and the room.

Writes that fail with ENOSPC / EDQUOT (full, over quota), EROFS (read-only) or EACCES / EPERM (no permission) are
the user's to fix, not bugs: `WriteFailed` (a UserError, exit code 2) says which file, why, and how much space is
left on its file system. The writers (utils/atomic.py, utils/checkpoint.py) remove their temp file first, so no
partial file is left and the previous version of the file stays as it was.
"""
from __future__ import annotations

import errno
import logging
import shutil
import sys
from pathlib import Path

from utils.errors import UserError

DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


class WriteFailed(UserError, OSError):
    """A file could not be written because of the disk (full, read-only, no permission)."""


def free_space(folder: str | Path) -> str:
    """'1.2 GB free' for the file system of `folder` (its nearest existing parent); '' when it cannot be told."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return f"{shutil.disk_usage(folder).free / 1e9:.2f} GB free"
    except OSError:
        return ""


def is_disk_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and not isinstance(exc, WriteFailed) and exc.errno in DISK_ERRNOS


def write_failed(path: str | Path, exc: OSError) -> WriteFailed:
    """The one-line error of a write of `path` that the disk refused."""
    path = Path(path)
    room = free_space(path.parent)
    reason = exc.strerror or str(exc)
    fix = ("free some space (or point --run_dir / --output to another disk)" if exc.errno in (errno.ENOSPC,
           errno.EDQUOT) else "make the folder writable (or choose another one)")
    return WriteFailed(f"cannot write {path}: {reason}{f' ({room})' if room else ''}; {fix}")


class LogFileHandler(logging.FileHandler):
    """log.txt: a line the disk refuses stops the run with WriteFailed (logging's default prints a traceback
    and carries on, losing the log silently)."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        exc = sys.exc_info()[1]
        if exc is not None and is_disk_error(exc):
            raise write_failed(self.baseFilename, exc) from None
        super().handleError(record)
