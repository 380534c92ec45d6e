"""Faults a cluster user meets (issue 24): a stop signal, a second launch on a run folder, a full disk, a case
damaged mid-run, an unreadable newest checkpoint. Each ends with a clear message, the newest checkpoint intact,
and a re-run of the same command that ends bitwise equal to an uninterrupted run (CPU)."""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_resume import (
    ITERATIONS,
    assert_same_weights,
    crash,
    flags,
    iteration_lines,
    reference,
    same_threads_env,
    synthetic,
)

import train_la
import utils.checkpoint as checkpoint_io
from training.checkpoints import list_checkpoints
from training.run_lock import TRAIN_LOCK_FILE
from utils.atomic import write_text_atomic
from utils.disk import LogFileHandler, WriteFailed
from utils.folder_lock import read_holder, this_host

__all__ = ["reference", "synthetic"]  # the fixtures of tests/test_resume.py, used here too

REPO = Path(__file__).resolve().parents[1]


def start(point: str, n: int, data: Path, run_dir: Path, *extra: str) -> subprocess.Popen:
    """train_la.py in a child process through tests/crash_runner.py (which may signal itself at iteration n), in a
    process group of its own (with its loader workers), as a terminal or a batch job runs it."""
    cmd = [sys.executable, str(REPO / "tests" / "crash_runner.py"), point, str(n), "--", *flags(data, run_dir, *extra)]
    return subprocess.Popen(cmd, cwd=REPO, env=same_threads_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=timeout)
    return process.returncode, stderr


def assert_ends_like_the_reference(data: Path, run_dir: Path, reference: Path) -> None:
    """The same command again continues the run; it ends bitwise equal to the uninterrupted one."""
    assert train_la.main(flags(data, run_dir)) == 0
    for name in ("last_model.pth", "best_model.pth", "best_model_test.pth"):
        assert_same_weights(reference / name, run_dir / name)
    final = torch.load(list_checkpoints(run_dir)[-1][1], weights_only=True)
    expected = torch.load(list_checkpoints(reference)[-1][1], weights_only=True)
    assert final["losses"] == expected["losses"] and len(final["losses"]) == ITERATIONS
    assert iteration_lines(run_dir) == list(range(1, ITERATIONS + 1))
    assert not list(run_dir.rglob("*.tmp")) and not (run_dir / TRAIN_LOCK_FILE).exists()


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# ---- signals ------------------------------------------------------------------------------------------------
def test_sigterm_finishes_the_iteration_saves_and_the_rerun_ends_bitwise_equal(synthetic, reference, tmp_path,
                                                                                 capsys):
    run_dir = tmp_path / "run"
    code, stderr = finish(start("signal:SIGTERM", 8, synthetic, run_dir))
    assert code == 128 + signal.SIGTERM, stderr[-2000:]
    assert "stopped by signal 15 (SIGTERM) at iteration 8" in (run_dir / "log.txt").read_text()
    assert "stopped by signal 15 (SIGTERM) at iteration 8" in stderr
    assert list_checkpoints(run_dir)[-1][0] == 8  # written for the stop (--save_every 3)
    assert not (run_dir / "result.json").exists() and not (run_dir / TRAIN_LOCK_FILE).exists()
    # the lock a SIGKILLed launch would leave behind (its process is gone): taken over with a warning
    (run_dir / TRAIN_LOCK_FILE).write_text(json.dumps({"host": this_host(), "pid": dead_pid(), "job_id": "",
                                                       "token": "killed", "started": time.time()}))
    assert_ends_like_the_reference(synthetic, run_dir, reference)
    assert "took over the stale lock" in capsys.readouterr().err


@pytest.mark.slow
def test_sigusr2_from_outside_while_a_second_launch_is_refused(synthetic, reference, tmp_path, capsys):
    """SLURM's --signal=USR2 reaches every process of the job (the loader's workers too); meanwhile the same
    command started again refuses at once."""
    run_dir = tmp_path / "run"
    process = start("slow:0.5", 1, synthetic, run_dir, "--num_workers", "2")
    deadline = time.monotonic() + 240
    while "] iteration 3:" not in ((run_dir / "log.txt").read_text() if (run_dir / "log.txt").exists() else ""):
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before the signal"
        time.sleep(0.1)

    started = time.monotonic()
    assert train_la.main(flags(synthetic, run_dir)) == 2
    assert time.monotonic() - started < 30  # at once: no data read, no model built
    error = capsys.readouterr().err
    assert f"run folder {run_dir} is being trained by process {process.pid} on {this_host()}" in error
    assert "(since 20" in error  # the start time

    os.killpg(process.pid, signal.SIGUSR2)  # the whole process group: the trainer and its workers
    code, stderr = finish(process)
    assert code == 128 + signal.SIGUSR2, stderr[-2000:]
    stopped_at = list_checkpoints(run_dir)[-1][0]
    assert 3 <= stopped_at < ITERATIONS
    assert f"stopped by signal 12 (SIGUSR2) at iteration {stopped_at}" in (run_dir / "log.txt").read_text()
    assert_ends_like_the_reference(synthetic, run_dir, reference)


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_and_keeps_the_newest_checkpoint(synthetic, reference, tmp_path):
    run_dir = tmp_path / "run"
    code, stderr = finish(start("signal:SIGINT:2", 8, synthetic, run_dir))
    assert code == 130 and "interrupted" in stderr, stderr[-2000:]
    assert "Ctrl-C again to stop at once" in stderr
    assert list_checkpoints(run_dir)[-1][0] == 6  # iteration 8 never finished; 6 is the newest periodic one
    assert "stopped by signal" not in (run_dir / "log.txt").read_text()
    assert_ends_like_the_reference(synthetic, run_dir, reference)


def test_the_handler_that_was_there_before_gets_the_signal_after_the_stop():
    """submitit requeues on SIGUSR2, a grid cell releases its lock on SIGTERM: they react after the checkpoint."""
    from training.signals import StopSignals

    calls = []
    previous = signal.signal(signal.SIGUSR1, lambda number, frame: calls.append(number))
    try:
        with StopSignals() as stop:
            os.kill(os.getpid(), signal.SIGUSR1)
            os.kill(os.getpid(), signal.SIGUSR1)  # repeated: not escalated
            assert stop.received == signal.SIGUSR1 and calls == []
        assert calls == [signal.SIGUSR1]  # once, after the run stopped
        with StopSignals():  # Python's own Ctrl-C handler is not called again: the run has stopped already
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        signal.signal(signal.SIGUSR1, previous)


# ---- one process per run folder -----------------------------------------------------------------------------
def test_a_live_holder_elsewhere_refuses_at_once_and_nothing_is_written(synthetic, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    since = time.time() - 3600
    (run_dir / TRAIN_LOCK_FILE).write_text(json.dumps({"host": "node-7", "pid": 4242, "job_id": "slurm:99",
                                                       "token": "another", "started": since}))
    assert train_la.main(flags(synthetic, run_dir)) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "is being trained by process 4242 on node-7, job 99 (since " in error[0]
    assert "choose another --run_dir" in error[0]
    assert sorted(p.name for p in run_dir.iterdir()) == [TRAIN_LOCK_FILE]
    assert read_holder(run_dir / TRAIN_LOCK_FILE).token == "another"


def test_bad_input_leaves_no_folder_behind_for_the_lock(synthetic, tmp_path):
    run_dir = tmp_path / "new" / "run"
    assert train_la.main([*flags(synthetic, run_dir), "--labelnum", "99"]) == 2
    assert not (tmp_path / "new").exists()


# ---- a full or read-only disk ---------------------------------------------------------------------------------
@pytest.mark.parametrize("failing", ["resume", "best"])
def test_a_full_disk_while_writing_a_checkpoint_fails_cleanly_and_the_rerun_continues(failing, synthetic, reference,
                                                                                      tmp_path, monkeypatch, capsys):
    """The resume checkpoint of iteration 9, or the second best_model.pth (its resume checkpoint is written first,
    so the re-run rebuilds the best file from it)."""
    run_dir = tmp_path / "run"
    real_save = torch.save
    best_writes = []

    def disk_fills(obj, f, *args, **kwargs):
        if failing == "best" and Path(f.name).name.startswith(".best_model.pth."):
            best_writes.append(obj["iteration"])
        if (failing == "resume" and obj.get("kind") == "resume" and obj["iteration"] == 9) or len(best_writes) == 2:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_io.torch, "save", disk_fills)
    assert train_la.main(flags(synthetic, run_dir)) == 2
    monkeypatch.undo()
    error = capsys.readouterr().err.strip().splitlines()[-1]
    target = run_dir / "checkpoints" / "iter_0000009.pth" if failing == "resume" else run_dir / "best_model.pth"
    assert error.startswith(f"error: cannot write {target}: No space left on device (") and \
        " GB free); free some space" in error
    saved = list_checkpoints(run_dir)
    assert f"newest good checkpoint, {saved[-1][1]} (iteration {saved[-1][0]})" in error
    assert saved[-1][0] < 9 if failing == "resume" else saved[-1][0] == best_writes[-1]
    for _, path in saved:  # intact, and no partial file
        assert torch.load(path, weights_only=True)["kind"] == "resume"
    if failing == "best":  # the first best file stays as it was
        assert torch.load(target, weights_only=True)["iteration"] == best_writes[0]
    assert not list(run_dir.rglob("*.tmp")) and not (run_dir / TRAIN_LOCK_FILE).exists()
    assert_ends_like_the_reference(synthetic, run_dir, reference)


def test_a_read_only_disk_at_the_result_file_fails_cleanly_and_the_rerun_writes_it(synthetic, tmp_path, monkeypatch,
                                                                                   capsys):
    run_dir = tmp_path / "run"
    short = flags(synthetic, run_dir)
    short[short.index("--max_iteration") + 1] = "3"
    real_write_text = Path.write_text

    def read_only(self, *args, **kwargs):
        if self.name.startswith(".result.json"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", read_only)
    assert train_la.main(short) == 2
    monkeypatch.undo()
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"cannot write {run_dir / 'result.json'}: Read-only file system" in error
    assert "make the folder writable" in error
    assert not (run_dir / "result.json").exists() and not list(run_dir.rglob("*.tmp"))
    assert train_la.main(short) == 0
    assert json.loads((run_dir / "result.json").read_text())["finished"]


def test_the_atomic_writers_keep_the_previous_file_on_a_full_disk(tmp_path, monkeypatch):
    path = tmp_path / "result.json"
    write_text_atomic(path, "old\n")
    monkeypatch.setattr(Path, "write_text", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    with pytest.raises(WriteFailed, match=r"cannot write .*result.json: full \(.* GB free\)"):
        write_text_atomic(path, "new\n")
    monkeypatch.undo()
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]

    target = tmp_path / "model.pth"
    checkpoint_io.atomic_torch_save({"a": 1}, target)
    monkeypatch.setattr(checkpoint_io.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EDQUOT, "quota")))
    with pytest.raises(WriteFailed, match="cannot write .*model.pth: quota"):
        checkpoint_io.atomic_torch_save({"a": 2}, target)
    assert torch.load(target, weights_only=True) == {"a": 1} and len(list(tmp_path.iterdir())) == 2


def test_a_log_line_the_disk_refuses_stops_the_run(tmp_path):
    logger = logging.getLogger("test_faults.log")
    handler = LogFileHandler(tmp_path / "log.txt")
    logger.addHandler(handler)
    try:
        handler.stream.write = lambda text: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device"))
        with pytest.raises(WriteFailed, match=r"cannot write .*log.txt: No space left on device"):
            logger.warning("iteration 1")
    finally:
        logger.removeHandler(handler)
        handler.stream.write = lambda text: len(text)
        handler.close()


# ---- a case damaged mid-run ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_case_damaged_mid_run_names_the_case_keeps_the_checkpoint_and_no_worker_hangs(synthetic, reference,
                                                                                        tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synthetic, data)
    case = data / "2018LA_Seg_Training Set" / "SYN006" / "mri_norm2.h5"  # the test case, read at each evaluation
    intact = case.read_bytes()
    run_dir = tmp_path / "run"
    code, stderr = finish(start(f"corrupt:{case}", 3, data, run_dir, "--num_workers", "2"), timeout=300)
    assert code == 2, stderr[-2000:]
    error = stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: LA case SYN006: {case} is not a readable h5 file"), error
    assert list_checkpoints(run_dir)[-1][0] == 3  # the newest checkpoint before the damage stays
    case.write_bytes(intact)  # restored from a backup
    assert_ends_like_the_reference(data, run_dir, reference)


def test_a_transient_read_error_is_retried_with_a_warning(synthetic, monkeypatch, capsys):
    import dataloaders.cases as cases
    from dataloaders.la import load_la_case

    monkeypatch.setattr(cases, "READ_RETRY_DELAYS_S", (0.0, 0.0))
    real = cases.h5py.File
    failures = {"left": 2}

    def flaky(*args, **kwargs):
        if failures["left"]:
            failures["left"] -= 1
            raise OSError(errno.EIO, "Input/output error")
        return real(*args, **kwargs)

    monkeypatch.setattr(cases.h5py, "File", flaky)
    image, label = load_la_case(synthetic, "SYN000")
    assert image.shape == label.shape
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 2 and "LA case SYN000: reading" in warnings[0] and "attempt 2 of 3" in warnings[0]

    failures["left"] = 3  # more failures than attempts: the error names the case, the file and the attempts
    with pytest.raises(ValueError, match=r"LA case SYN000: .*mri_norm2.h5 is not a readable h5 file \(after 3 "
                                         r"attempts\)"):
        load_la_case(synthetic, "SYN000")


# ---- an unreadable newest checkpoint --------------------------------------------------------------------------
def test_a_truncated_newest_checkpoint_is_named_and_the_run_still_ends_bitwise_equal(synthetic, reference, tmp_path,
                                                                                    capsys):
    run_dir = tmp_path / "run"
    crash("step", 8, synthetic, run_dir)
    (skipped_iteration, newest), (previous_iteration, previous) = list_checkpoints(run_dir)[::-1][:2]
    newest.write_bytes(newest.read_bytes()[:1000])  # e.g. a disk that filled up during a copy
    assert_ends_like_the_reference(synthetic, run_dir, reference)
    warning = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:") and
               "checkpoint" in line]  # (the killed run's lock is taken over with a warning too)
    assert len(warning) == 1 and str(newest) in warning[0], warning
    assert f"resuming from {previous} (iteration {previous_iteration})" in warning[0]
    assert f"{newest}" in (run_dir / "log.txt").read_text()
    assert f"resumed from iteration {previous_iteration} instead" in (run_dir / "log.txt").read_text()
