"""Writing figures: fixed pixel size, atomic rename, figure closed afterwards."""
from __future__ import annotations

import os
import struct
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.figure import Figure


def save_png(figure: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write `figure` to `path` as PNG (temp file + rename) and close it.

    No bbox_inches="tight": the PNG is exactly figsize x dpi pixels, so callers and tests know its size.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        figure.savefig(tmp, format="png", dpi=dpi)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        plt.close(figure)
    return path


def png_size(path: str | Path) -> tuple[int, int]:
    """(width, height) in pixels read from the PNG header."""
    with open(path, "rb") as f:
        header = f.read(24)
    if len(header) < 24 or header[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path} is not a PNG file")
    width, height = struct.unpack(">II", header[16:24])
    return width, height
