"""Named sections of a training step ("main forward", "VAT probe", ...) for benchmarks/profile_step.py.

    with section("VAT probe"):
        ...

A section costs one global lookup unless a recorder is installed (`recording(recorder)`): the recorder is a
function name -> context manager, e.g. one that times the section and reads the peak memory inside it. Every
section is also a torch.profiler `record_function`, so it shows in profiler traces while one is recording.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import torch

Recorder = Callable[[str], AbstractContextManager]
_recorder: Recorder | None = None


@contextlib.contextmanager
def section(name: str) -> Iterator[None]:
    if _recorder is None:
        yield
        return
    with _recorder(name), torch.profiler.record_function(name):
        yield


@contextlib.contextmanager
def recording(recorder: Recorder) -> Iterator[None]:
    """Install `recorder` for the sections run inside this block (one recorder at a time)."""
    global _recorder
    previous, _recorder = _recorder, recorder
    try:
        yield
    finally:
        _recorder = previous
