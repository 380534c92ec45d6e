"""Progress bars: live on a terminal, throttled in a log file; the default number of data-loading workers."""
from __future__ import annotations

import io
import logging
import os
import re
import sys
import time

import pytest
import torch

from dataloaders import make_synthetic_la
from training import make_config, train
from training.config import TrainConfig
from training.flags import build_train_parser, config_from_args
from training.run_logger import NullWriter, RunLogger
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


@pytest.mark.parametrize(("cuda", "cores", "workers"),
                         [(True, 1, 1), (True, 2, 2), (True, 3, 3), (True, 4, 4), (True, 16, 4), (False, 2, 0),
                          (False, 16, 0)])
def test_num_workers_defaults_to_at_most_the_available_cores_and_none_on_a_cpu(cuda, cores, workers, monkeypatch):
    """On a CPU the default is the background thread (0 worker processes), whatever the cores."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert default_num_workers() == workers
    assert TrainConfig(dataset="LA").num_workers == workers
    for dataset in ("LA", "ACDC"):
        args = build_train_parser(dataset, "").parse_args([])
        assert config_from_args(args, dataset).num_workers == workers
        assert config_from_args(build_train_parser(dataset, "").parse_args(["--num_workers", "3"]),
                                dataset).num_workers == 3


def bar_redraws(text: str) -> list[str]:
    """The redraws of a tqdm bar written to a file (tqdm ends each with a newline where the file is not a terminal)."""
    return [part.strip() for part in re.split(r"[\r\n]", text) if re.search(r"\| *\d+/\d+ \[", part)]


def count_and_loss(redraw: str) -> tuple[int, int, str | None]:
    """(n, total, the postfix's loss) of one redraw such as `ss_net LA:  45%|... | 9/20 [..., loss=9.0000, ...]`."""
    count = re.search(r"\| *(\d+)/(\d+) \[", redraw)
    loss = re.search(r"(?<!\w)loss=([-0-9.na]+)", redraw)
    return int(count.group(1)), int(count.group(2)), loss.group(1) if loss else None


@pytest.mark.parametrize("start", [0, 12])
def test_the_trainer_s_bar_in_a_log_file_redraws_every_30_s_with_the_right_count(start, tmp_path, monkeypatch):
    """Driven as Training.run drives it (RunLogger.progress, then RunLogger.iteration every step), written to a file:
    at most one redraw per 30 s plus the first and the last, each showing the count of the loss it shows."""
    clock = Clock()
    monkeypatch.setattr("tqdm.std.time", clock)
    stop, seconds_per_iteration = 60, 1.75
    with open(tmp_path / "stderr.txt", "w") as stderr:
        monkeypatch.setattr(sys, "stderr", stderr)
        log = RunLogger(logging.getLogger("test.progress"), NullWriter(), show_progress=True, image_every=0,
                        title="ss_net LA")
        for iteration in log.progress(start, stop):
            clock.now += seconds_per_iteration
            # the loss carries the iteration, so a redraw tells which iteration its values came from
            log.iteration(iteration, float(iteration), {"total": float(iteration), "dice": 0.5}, {}, 0.01)
    redraws = bar_redraws((tmp_path / "stderr.txt").read_text())
    assert 2 <= len(redraws) <= (stop - start) * seconds_per_iteration / LOG_INTERVAL_S + 2
    for redraw in redraws:
        n, total, loss = count_and_loss(redraw)
        assert total == stop
        assert loss is None or float(loss) == n, redraw  # the values of iteration n, drawn as n/total
        assert "dice_loss=" in redraw or loss is None
    assert count_and_loss(redraws[-1]) == (stop, stop, f"{stop:.4f}")


def test_a_training_run_with_stderr_in_a_file_draws_its_last_iteration(tmp_path, monkeypatch):
    """train(): a real (tiny) run with its stderr in a file; tqdm's clock runs 100x faster, so the bar redraws
    every ~0.3 s of real time. Every redraw's loss is the loss log.txt holds for the iteration it counts."""
    monkeypatch.setattr("tqdm.std.time", lambda: 100 * time.time())
    root = make_synthetic_la(tmp_path / "data", n_train=4, n_test=1, shape=(24, 24, 20), seed=0, n_val=1)
    config = make_config("LA", root_path=str(root), lists_dir=str(root), labelnum=2, max_iteration=8,
                         patch_size=[16, 16, 16], network_kwargs={"base_filters": 2}, stride=[8, 8, 8],
                         eval_every=100, num_workers=0, device="cpu", progress=True, image_every=0,
                         run_dir=str(tmp_path / "run"))
    with open(tmp_path / "stderr.txt", "w") as stderr:
        monkeypatch.setattr(sys, "stderr", stderr)
        train(config)
    logged = {int(m.group(1)): float(m.group(2)) for m in
              re.finditer(r"iteration (\d+): total ([-0-9.]+)", (tmp_path / "run" / "log.txt").read_text())}
    redraws = bar_redraws((tmp_path / "stderr.txt").read_text())
    assert redraws and count_and_loss(redraws[-1])[:2] == (8, 8)
    for redraw in redraws:
        n, _, loss = count_and_loss(redraw)
        if loss is not None:
            assert float(loss) == pytest.approx(logged[n], abs=1e-4), redraw
