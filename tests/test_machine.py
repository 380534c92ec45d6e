"""utils.machine: PyTorch's threads from the cores free of other work at start-up, huge pages for large tensors,
and the scripts that use them."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import demo
import predict
import reproduce
import test_acdc
import test_la
import train_acdc
import train_la
from utils import machine

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("usable", "busy", "threads"), [
    (2, 0.0, 2), (2, 0.1, 2), (2, 1.0, 1), (2, 0.5, 1), (2, 2.0, 1), (2, 7.0, 1), (1, 0.0, 1),
    (16, 3.0, 13), (16, None, 16),
])
def test_threads_are_the_free_cores_at_least_one(usable, busy, threads):
    assert machine.threads_for(usable, busy) == threads


def test_busy_cores_is_measured_between_none_and_every_core():
    busy = machine.busy_cores(window_s=0.05)
    assert busy is None or 0.0 <= busy <= machine.usable_cores() + 1e-6


def test_use_free_cores_sets_and_says_the_choice_once_per_process(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(machine, "_chosen", [])
    monkeypatch.setattr(machine, "usable_cores", lambda: 2)
    said = []
    assert machine.use_free_cores(said.append, measure=lambda: 1.1) == 1
    assert torch.get_num_threads() == 1
    assert said == ["CPU threads: 1 of 2 core(s) (1.1 busy with other work at start-up; set OMP_NUM_THREADS to "
                    "choose)"]
    torch.set_num_threads(2)
    # a second run in the same process (the demo's second model, a grid's next cell): the same count, said once
    assert machine.use_free_cores(said.append, measure=lambda: 0.0) == 1 and torch.get_num_threads() == 1
    assert len(said) == 1


def test_an_explicit_omp_num_threads_is_obeyed(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(machine, "_chosen", [])
    torch.set_num_threads(1)
    said = []
    assert machine.use_free_cores(said.append, measure=lambda: 0.0) == 1 and said == []


@pytest.mark.parametrize(("script", "argv"), [
    (train_la, ["--root_path", "/nonexistent/LA", "--device", "cpu"]),
    (train_acdc, ["--root_path", "/nonexistent/ACDC", "--device", "cpu"]),
    (test_la, ["--checkpoint", "/nonexistent/best_model.pth", "--device", "cpu"]),
    (test_acdc, ["--checkpoint", "/nonexistent/best_model.pth", "--device", "cpu"]),
    (predict, ["--checkpoint", "/nonexistent/best_model.pth", "--input", "/nonexistent", "--output", "/tmp/x"]),
    (reproduce, ["--methods", "ssnet"]),
    (demo, ["--methods", "ssnet"]),
])
def test_the_scripts_that_train_or_predict_pick_their_threads_first(script, argv, monkeypatch, capsys, tmp_path):
    calls = []
    monkeypatch.setattr(machine, "use_free_cores", lambda: calls.append(1) or 1)
    if script is demo:
        argv = [*argv, "--out", str(tmp_path / "demo")]
    assert script.main(argv) == 2  # a user error, after the thread choice
    assert calls == [1]
    assert not (tmp_path / "demo").exists()  # the demo checks its methods before writing its data
    capsys.readouterr()


def test_huge_pages_are_asked_for_only_where_the_kernel_gives_them_on_request(tmp_path, monkeypatch):
    setting = tmp_path / "enabled"
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    setting.write_text("always madvise [never]\n")
    assert not machine.use_huge_pages(str(setting)) and "THP_MEM_ALLOC_ENABLE" not in os.environ
    setting.write_text("always [madvise] never\n")
    assert machine.use_huge_pages(str(setting)) and os.environ["THP_MEM_ALLOC_ENABLE"] == "1"
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0")  # the user's choice is kept
    assert not machine.use_huge_pages(str(setting)) and os.environ["THP_MEM_ALLOC_ENABLE"] == "0"
    assert not machine.huge_pages_on_request(str(tmp_path / "absent"))


HUGE_KIB_AFTER_64_MIB = (
    "import torch\nfrom utils.cli import run_cli\n"
    "def huge_kib():\n"
    "    for line in open('/proc/self/smaps_rollup'):\n"
    "        if line.startswith('AnonHugePages:'):\n"
    "            return int(line.split()[1])\n"
    "before = huge_kib()\n"
    "keep = []\n"
    "run_cli(lambda: keep.append(torch.ones(16 * 2 ** 20)), cpu_threads=True, huge_pages={huge_pages})\n"
    "print(huge_kib() - before)\n")


@pytest.mark.skipif(not machine.huge_pages_on_request(), reason="this kernel gives transparent huge pages only "
                    "unasked (mode always) or never, so asking changes nothing")
@pytest.mark.parametrize("huge_pages", [True, False], ids=["training script", "predicting script"])
def test_only_a_training_process_backs_its_large_tensors_with_huge_pages(huge_pages):
    """run_cli(huge_pages=True), as train_*.py, demo.py and reproduce.py start, asks before torch's first large
    allocation: a 64 MiB tensor then lies on huge pages (AnonHugePages of the process grows). test_*.py and
    predict.py do not ask (huge pages slowed their sliding window, docs/speed.md)."""
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    done = subprocess.run([sys.executable, "-c", HUGE_KIB_AFTER_64_MIB.format(huge_pages=huge_pages)], cwd=REPO,
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    huge_kib = int(done.stdout.split()[-1])
    if huge_pages:
        assert huge_kib >= 32 * 1024, done.stdout  # at least half of the 64 MiB on 2 MiB pages
    else:
        assert huge_kib < 32 * 1024, done.stdout


def test_the_scripts_ask_for_huge_pages_where_they_train():
    import inspect

    import demo
    import evaluation
    import predict
    import reproduce
    import training

    for trains in (training, demo, reproduce):
        assert "huge_pages=" in inspect.getsource(trains), trains.__name__
    for predicts in (evaluation, predict):
        assert "huge_pages" not in inspect.getsource(predicts), predicts.__name__
