"""Progress bars that suit where they are written: live on a terminal, a line every 30 s in a log file.

tqdm redraws a bar up to ten times a second; on a terminal each redraw replaces the last, but written to a file
or a pipe (`python train_la.py ... 2> log`, CI, nohup) every redraw stays, one line per iteration of a slow loop.
"""
from __future__ import annotations

import sys
from collections.abc import Iterable

from tqdm import tqdm

TERMINAL_INTERVAL_S = 0.1  # tqdm's own default
LOG_INTERVAL_S = 30.0  # not on a terminal: at most one redraw per this many seconds (plus the last one)


def is_terminal(stream) -> bool:
    return bool(getattr(stream, "isatty", None)) and stream.isatty()


def progress_bar(iterable: Iterable | None = None, *, enabled: bool = True, file=None, **options) -> tqdm:
    """tqdm(iterable, **options), throttled to one redraw per LOG_INTERVAL_S when `file` (default stderr) is not a
    terminal."""
    stream = file if file is not None else sys.stderr
    terminal = is_terminal(stream)
    interval = TERMINAL_INTERVAL_S if terminal else LOG_INTERVAL_S
    # maxinterval >= mininterval: tqdm's monitor would otherwise lower the redraw threshold on slow loops
    return tqdm(iterable, disable=not enabled, file=stream, mininterval=interval, maxinterval=max(interval, 10.0),
                dynamic_ncols=terminal, **options)
