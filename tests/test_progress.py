"""Progress bars: live on a terminal, throttled in a log file; the default number of data-loading workers."""
from __future__ import annotations

import io
import os

import pytest

from training.config import TrainConfig
from training.flags import build_train_parser, config_from_args
from utils.machine import default_num_workers
from utils.progress import LOG_INTERVAL_S, progress_bar


class Clock:
    """tqdm's clock, advanced by the loop below."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def redraws(stream: io.StringIO) -> int:
    return stream.getvalue().count("\r")


@pytest.mark.parametrize("terminal", [False, True])
def test_a_bar_in_a_log_file_redraws_every_30_s_not_every_iteration(terminal, monkeypatch):
    clock = Clock()
    monkeypatch.setattr("tqdm.std.time", clock)
    stream = Terminal() if terminal else io.StringIO()
    for _ in progress_bar(range(300), file=stream, desc="training"):
        clock.now += 1.75  # s per iteration, as SS-Net in demo.py on 2 CPU cores
    if terminal:
        assert redraws(stream) >= 300  # live: every iteration
    else:
        assert redraws(stream) <= 300 * 1.75 / LOG_INTERVAL_S + 3  # first, one per 30 s, last
    assert "300/300" in stream.getvalue()


def test_a_disabled_bar_writes_nothing():
    stream = io.StringIO()
    for _ in progress_bar(range(5), enabled=False, file=stream):
        pass
    assert stream.getvalue() == ""


@pytest.mark.parametrize(("cores", "workers"), [(1, 1), (2, 2), (3, 3), (4, 4), (16, 4)])
def test_num_workers_defaults_to_at_most_the_available_cores(cores, workers, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert default_num_workers() == workers
    assert TrainConfig(dataset="LA").num_workers == workers
    for dataset in ("LA", "ACDC"):
        args = build_train_parser(dataset, "").parse_args([])
        assert config_from_args(args, dataset).num_workers == workers
        assert config_from_args(build_train_parser(dataset, "").parse_args(["--num_workers", "3"]),
                                dataset).num_workers == 3
