"""Write files so that a crash never leaves a half-written one under the final name."""
from __future__ import annotations

import os
from pathlib import Path

from utils.disk import is_disk_error, write_failed


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write to a hidden temp file in the same folder (created if needed), then rename over `path`.

    A full or read-only disk raises WriteFailed (utils/disk.py) after removing the temp file: `path` keeps its
    previous content."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if is_disk_error(exc):
            raise write_failed(path, exc) from None
        raise


def make_writable_folder(folder: str | Path, what: str, flag: str) -> Path:
    """Create `folder` and prove it takes a file, before any work whose results would then be lost.

    `what` ("run folder", "output folder") and `flag` ("--run_dir") name it in the error.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise OSError(f"cannot write to the {what} {folder} ({exc.strerror}); choose another with {flag}") from None
    return folder
