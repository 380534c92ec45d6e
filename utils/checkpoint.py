"""Checkpoint files: written atomically, read with weights_only=True, refused with a message that says what to do.

Our checkpoints are dicts with "format": CHECKPOINT_FORMAT (weights + network settings + config + metadata);
the released official SS-Net weights are plain state dicts. Building a network from either is
networks.loading.load_network's job.
"""
from __future__ import annotations

import os
import pickle
import re
import tempfile
from pathlib import Path

import torch

from utils.disk import is_disk_error, write_failed
from utils.errors import UserError

CHECKPOINT_FORMAT = "ssnet-toolkit-checkpoint/1"
def atomic_torch_save(obj, path: str | Path) -> None:
    """Write to a temp file in the same folder, then rename: a crash never leaves a half-written checkpoint.

    A full or read-only disk raises WriteFailed (utils/disk.py) after removing the temp file: `path` keeps its
    previous content."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise write_failed(path, exc) if is_disk_error(exc) else exc from None
    os.close(fd)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if is_disk_error(exc):
            raise write_failed(path, exc) from None
        raise


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (train one with train_la.py / train_acdc.py)")
    try:
        # weights_only: nothing we read can execute code.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if not found:
            raise UserError(f"{path} is truncated or not a PyTorch checkpoint (cannot unpickle it); copy it "
                             f"again or point to another file") from None
        what = f" (found {found.group(1)})"
        raise UserError(f"{path} was refused: it holds pickled Python objects{what}; checkpoints are read with "
                         f"weights_only=True so that no file can execute code. Save a plain state dict "
                         f"(tensors, numbers, strings) instead") from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        detail = str(exc).split(". ")[0][:160]
        raise UserError(f"{path} is truncated or not a PyTorch checkpoint ({type(exc).__name__}: {detail}); "
                         f"copy it again or point to another file") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} does not hold a state dict or a checkpoint dict (found {type(obj).__name__})")
    return obj
