"""reproduce.py's launchers: the cell lock, --status, one process per cell (--launcher local), submitit (SLURM and
its local executor). The fast tests use hand-made run folders or a fake SLURM; the end-to-end ones are slow."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import reproduce
from reproduction.cell import ERROR_FILE, JOB_FILE, Cell, CellSettings
from reproduction.launchers import cell_environment, local_slots, minutes, sbatch_options
from reproduction.lock import LOCK_FILE, STALE_AFTER_SECONDS, CellBusy, CellLock, read_holder, this_host
from reproduction.plan import Evaluation, Run
from reproduction.status import log_progress
from training.checkpoints import list_checkpoints

REPO = Path(__file__).resolve().parents[1]


def grid_args(tmp_path: Path, *more: str) -> list[str]:
    """The quick grid of the supervised method at budget 2 (and whatever `more` adds): small and fast."""
    return ["--quick", "--methods", "supervised", "--seeds", "1337", "--device", "cpu",
            "--runs_dir", str(tmp_path / "runs"), "--results_dir", str(tmp_path / "results"), *more]


def cell_dir(tmp_path: Path, budget: str = "2", select: str = "val", method: str = "supervised",
             seed: int = 1337) -> Path:
    return tmp_path / "runs" / "LA" / f"{budget}_labeled" / method / f"seed{seed}_select_{select}"


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write_lock(run_dir: Path, **fields) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"host": this_host(), "pid": os.getpid(), "job_id": "", "token": "someone-else", "started": time.time(),
              **fields}
    path = run_dir / LOCK_FILE
    path.write_text(json.dumps(record))
    return path


# ---- the lock -------------------------------------------------------------------------------------------------


def test_lock_excludes_a_second_holder_and_is_removed_on_exit(tmp_path):
    with CellLock(tmp_path) as lock:
        holder = read_holder(tmp_path)
        assert (holder.pid, holder.host, holder.token) == (os.getpid(), this_host(), lock.token)
        with pytest.raises(CellBusy, match=f"being worked on by process {os.getpid()} on"):
            CellLock(tmp_path).acquire()
    assert not (tmp_path / LOCK_FILE).exists()
    with pytest.raises(RuntimeError), CellLock(tmp_path):
        raise RuntimeError("a failing cell")
    assert not (tmp_path / LOCK_FILE).exists()  # released on an error too
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary files left


def test_stale_locks_are_taken_over_live_ones_are_not(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.delenv("SUBMITIT_LOCAL_JOB_ID", raising=False)
    pid = dead_pid()
    write_lock(tmp_path / "dead", pid=pid)  # its process has ended on this host
    with CellLock(tmp_path / "dead") as lock:
        assert lock.took_over == f"process {pid} no longer runs on {this_host()}"
        assert read_holder(tmp_path / "dead").token == lock.token

    write_lock(tmp_path / "alive_elsewhere", host="node-7", pid=1)  # another host, heartbeat fresh: alive
    with pytest.raises(CellBusy, match="process 1 on node-7"):
        CellLock(tmp_path / "alive_elsewhere").acquire()
    assert read_holder(tmp_path / "alive_elsewhere").token == "someone-else"  # left alone

    silent = write_lock(tmp_path / "silent", host="node-7", pid=1)  # another host, no heartbeat for too long
    old = time.time() - STALE_AFTER_SECONDS - 60
    os.utime(silent, (old, old))
    with CellLock(tmp_path / "silent") as lock:
        assert lock.took_over.startswith("no heartbeat for 11 min")

    monkeypatch.setenv("SLURM_JOB_ID", "777")  # a requeued job finds the lock of its own earlier attempt
    write_lock(tmp_path / "requeued", host="node-7", pid=1, job_id="slurm:777")
    with CellLock(tmp_path / "requeued") as lock:
        assert lock.took_over == "an earlier attempt of this job (requeued)"
        assert read_holder(tmp_path / "requeued").job_id == "slurm:777"


def test_lock_heartbeat_and_release_keep_to_their_own_lock(tmp_path):
    lock = CellLock(tmp_path, heartbeat_seconds=0.05)
    lock.acquire()
    old = time.time() - 1000
    os.utime(tmp_path / LOCK_FILE, (old, old))
    time.sleep(0.5)
    assert read_holder(tmp_path).heartbeat > old + 900  # touched again by the heartbeat thread
    write_lock(tmp_path, token="taken-over-by-another-launch")
    lock.release()
    assert read_holder(tmp_path).token == "taken-over-by-another-launch"  # not ours any more: not removed


def test_a_second_launch_skips_a_held_cell_and_takes_over_a_stale_lock(tmp_path, capsys):
    args = grid_args(tmp_path, "--labelnum", "2", "--protocol", "honest", "--max_iteration", "2")  # one cell
    run_dir = cell_dir(tmp_path)
    other_launch = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        write_lock(run_dir, pid=other_launch.pid)
        assert reproduce.main(args) == 0
        out = capsys.readouterr().out
        assert f"being worked on by process {other_launch.pid} on {this_host()}" in out and "skipped" in out
        assert "no finished cell yet (1 missing): no tables written" in out
        assert not (run_dir / "log.txt").exists()  # not trained while the other launch holds it
    finally:
        other_launch.kill()
        other_launch.wait()
    assert reproduce.main(args) == 0  # the holder is gone: its lock is stale
    out = capsys.readouterr().out
    assert f"took over a stale lock (process {other_launch.pid} no longer runs on {this_host()})" in out
    assert json.loads((run_dir / "result.json").read_text())["finished"]
    assert "cells in the tables: 1 of 1" in out and not (run_dir / LOCK_FILE).exists()


# ---- --status -------------------------------------------------------------------------------------------------


def finish_by_hand(run_dir: Path, iterations: int) -> None:
    """What a finished, tested cell leaves: result.json, the checkpoints, then the test outputs."""
    run_dir.mkdir(parents=True)
    (run_dir / "result.json").write_text(json.dumps({"finished": True, "max_iteration": iterations}))
    for name in ("best_model.pth", "last_model.pth"):
        (run_dir / name).write_bytes(b"")
    for name in ("test_best_model", "test_last_model"):
        (run_dir / name).mkdir()
        (run_dir / name / "metrics.csv").write_text("case,class,dice\n")
        (run_dir / name / "summary.json").write_text("{}")


def log_lines(run_dir: Path, lines: list[tuple[str, str]]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "log.txt").write_text("".join(f"[{stamp}] {message}\n" for stamp, message in lines))


def test_status_from_hand_made_run_folders(tmp_path, capsys):
    args = grid_args(tmp_path, "--labelnum", "2", "all", "--protocol", "honest", "paper", "--status")  # 4 cells
    finish_by_hand(cell_dir(tmp_path, "2", "val"), 20)
    running = cell_dir(tmp_path, "2", "test")
    log_lines(running, [("2030-01-01 10:00:00", f"run folder {running}"),
                        ("2030-01-01 10:00:05", "iteration 1: dice 0.5 | lr 1.00e-02"),
                        ("2030-01-01 10:00:10", "iteration 6: dice 0.4 | lr 1.00e-02"),
                        ("2030-01-01 10:00:10", "iteration 6: val mean Dice 0.3 (best 0.3 @ 6)"),
                        ("2030-01-01 10:00:15", "iteration 11: dice 0.3 | lr 1.00e-02")])
    failed = cell_dir(tmp_path, "all", "val")
    failed.mkdir(parents=True)
    (failed / ERROR_FILE).write_text("error: non-finite loss at iteration 3: total = nan\n\nTraceback ...\n")
    stopped = cell_dir(tmp_path, "all", "test")
    (stopped / "checkpoints").mkdir(parents=True)
    (stopped / "checkpoints" / "iter_0000008.pth").write_bytes(b"")
    write_lock(stopped, pid=dead_pid())
    with CellLock(running):  # this test process is the live launch training it
        assert reproduce.main(args) == 0
    rows = {}
    for line in capsys.readouterr().out.splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[1] == "supervised":
            rows[(fields[0], fields[3])] = line
    assert re.search(r"finished\s+20/20\s+-$", rows[("2", "val")])
    assert re.search(rf"running\s+11/20\s+1\.00  training: process {os.getpid()} on ", rows[("2", "test")])
    assert re.search(r"failed\s+0/20\s+-  error: non-finite loss at iteration 3: total = nan$", rows[("all", "val")])
    assert re.search(r"stopped\s+8/20\s+-  stale lock \(process \d+ no longer runs on .*\); the next launch resumes",
                     rows[("all", "test")])
    assert reproduce.main(args) == 0  # the holder has left: the running cell is now a stopped one
    out = capsys.readouterr().out
    assert "4 cells: 1 finished, 1 failed, 2 stopped" in out
    assert "interrupted; resumes from iteration 0" in out


def test_status_eta_from_the_measured_speed(tmp_path, capsys):
    args = grid_args(tmp_path, "--labelnum", "2", "--protocol", "honest", "paper", "--status")  # 2 cells
    running = cell_dir(tmp_path, "2", "test")
    log_lines(running, [("2030-01-01 10:00:00", "resumed from checkpoints/iter_0000004.pth (iteration 4)"),
                        ("2030-01-01 10:00:03", "iteration 5: dice 0.5 | lr 1.00e-02"),
                        ("2030-01-01 10:00:13", "iteration 10: dice 0.4 | lr 1.00e-02")])
    with CellLock(running):
        assert reproduce.main(args) == 0
    out = capsys.readouterr().out
    # 2.0 s/iteration (the resumed session only); left: 10 iterations of the running cell, 20 of the new one
    assert re.search(r"running\s+10/20\s+2\.00", out) and "not started" in out
    assert "training left: 60 s of measured iteration time; ETA about 60 s with 1 cell(s) at a time" in out


def test_status_counts_both_stages_of_a_two_stage_method(tmp_path, capsys):
    """BCP: the quick grid's cell is 20 pre-train + 20 main-stage iterations; the pre-train logs in RUN_DIR/pretrain,
    the main stage in RUN_DIR from its own iteration 1."""
    args = ["--quick", "--methods", "bcp", "--seeds", "1337", "--device", "cpu", "--labelnum", "2", "--protocol",
            "honest", "paper", "--runs_dir", str(tmp_path / "runs"), "--results_dir", str(tmp_path / "results"),
            "--status"]  # 2 cells
    running = cell_dir(tmp_path, "2", "test", method="bcp")
    log_lines(running / "pretrain", [("2030-01-01 10:00:00", f"run folder {running / 'pretrain'}"),
                                     ("2030-01-01 10:00:01", "iteration 1: loss 0.5"),
                                     ("2030-01-01 10:00:09", "iteration 5: loss 0.4")])
    with CellLock(running):
        assert reproduce.main(args) == 0
    out = capsys.readouterr().out
    assert re.search(r"running\s+5/40\s+2\.00", out)  # in its pre-train: 2 s/iteration
    # left: 35 of the running cell and 40 of the other, at the running cell's 2 s
    assert "training left: 2 min of measured iteration time" in out  # 150 s
    (running / "pretrain" / "result.json").write_text(json.dumps({"finished": True, "max_iteration": 20}))
    log_lines(running, [("2030-01-01 11:00:00", f"run folder {running}"),
                        ("2030-01-01 11:00:01", "iteration 1: loss 0.3"),
                        ("2030-01-01 11:00:11", "iteration 11: loss 0.2")])
    with CellLock(running):
        assert reproduce.main(args) == 0
    out = capsys.readouterr().out
    assert re.search(r"running\s+31/40\s+1\.00", out)  # 20 pre-train + 11 of the main stage, at 1 s/iteration
    assert "training left: 49 s of measured iteration time" in out  # 9 + 40


def test_log_progress_reads_the_current_session(tmp_path):
    log_lines(tmp_path, [("2030-01-01 10:00:00", "run folder x"), ("2030-01-01 10:00:01", "iteration 1: a"),
                         ("2030-01-01 10:01:41", "iteration 101: a"), ("2030-01-01 11:00:00", "resumed from y"),
                         ("2030-01-01 11:00:10", "iteration 101: a"), ("2030-01-01 11:00:20", "iteration 121: a")])
    assert log_progress(tmp_path) == (121, 0.5)
    assert log_progress(tmp_path / "missing") == (0, None)


# ---- --launcher local: the pieces -----------------------------------------------------------------------------


def test_local_slots_pin_cells_to_gpus_or_share_the_cores(monkeypatch):
    assert local_slots(["0", "1", "2", "3"], None, "cuda") == ["0", "1", "2", "3"]
    assert local_slots(["0", "1"], 4, "cuda") == ["0", "1", "0", "1"]  # two cells on each GPU
    assert local_slots([], 2, "cpu") == [None, None]
    with pytest.raises(ValueError, match="use --device cuda"):
        local_slots(["0"], None, "cuda:1")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("SSNET_MARKER", "kept")
    env = cell_environment("2", 4)
    assert env["CUDA_VISIBLE_DEVICES"] == "2" and "OMP_NUM_THREADS" not in env  # a GPU cell: torch decides
    assert env["SSNET_MARKER"] == "kept"  # the rest of this process's environment goes along
    # a machine with 8 usable cores, however the launcher counts them
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(os, "process_cpu_count", lambda: 8, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    threads = {cells: cell_environment(None, cells)["OMP_NUM_THREADS"] for cells in (1, 2, 3, 8, 12)}
    assert threads == {1: "8", 2: "4", 3: "2", 8: "1", 12: "1"}  # whole cores each, at least one
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cell_environment(None, 2)["OMP_NUM_THREADS"] == "3"  # the user's choice wins


def test_cell_round_trips_through_its_json(tmp_path):
    run = Run("LA", "4", 4, "ss_net", 1337, "val", 15000, tmp_path / "run", "recipe", "SS-Net")
    cell = Cell(run, [Evaluation(run, "best_model.pth", ("honest-val",)),
                      Evaluation(run, "last_model.pth", ("honest-last",))],
                CellSettings(device="cuda", num_workers=4, root_path="/data/LA", test_list="data/LA/test.list",
                             train_settings={"amp": "bf16"}))
    assert Cell.from_json(cell.to_json()) == cell
    assert Cell.from_json(cell.write().read_text()) == cell


def test_launcher_flags_are_checked(tmp_path, capsys):
    base = ["--dry-run", "--runs_dir", str(tmp_path)]
    assert reproduce.main([*base, "--gpus", "0,1"]) == 2
    assert "add --launcher local" in capsys.readouterr().err
    assert reproduce.main([*base, "--launcher", "local", "--gpus", "0", "--device", "cpu"]) == 2
    assert "leave out --gpus" in capsys.readouterr().err
    assert reproduce.main([*base, "--wait"]) == 2
    assert "--wait is for --launcher slurm" in capsys.readouterr().err
    assert minutes("02:00:00") == 120 and minutes("90") == 90 and minutes("1-00:30") == 1470
    with pytest.raises(ValueError, match="--time"):
        minutes("two hours")
    assert sbatch_options(["account=abc", "cpus-per-task=8", "exclusive"]) == {
        "account": "abc", "cpus_per_task": "8", "exclusive": True}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        sbatch_options(["mem="])


# ---- --launcher slurm without a cluster: a fake sbatch ----------------------------------------------------------


def fake_slurm(tmp_path: Path, monkeypatch, squeue: str) -> Path:
    """srun, sbatch and squeue stand-ins on PATH; sbatch records its calls and answers like SLURM."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    calls = tmp_path / "sbatch_calls"
    scripts = {"srun": "exit 0\n", "sbatch": f'echo "$@" >> {calls}\necho "Submitted batch job 4242"\n',
               "squeue": squeue}
    for name, body in scripts.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return calls


def test_slurm_submission_as_a_job_array_with_a_fake_sbatch(tmp_path, monkeypatch, capsys):
    pytest.importorskip("submitit", reason="--launcher slurm needs submitit (pip install submitit)")
    calls = fake_slurm(tmp_path, monkeypatch, squeue="echo PENDING\n")
    args = grid_args(tmp_path, "--labelnum", "2", "--protocol", "honest", "paper")  # 2 cells
    submit = [*args, "--launcher", "slurm", "--partition", "gpu", "--time", "02:00:00", "--gpus_per_job", "1",
              "--slurm_args", "account=abc", "mem=32G"]
    assert reproduce.main(submit) == 0
    out = capsys.readouterr().out
    assert "submitted as job 4242_0" in out and "submitted as job 4242_1" in out and "--aggregate" in out
    (call,) = calls.read_text().splitlines()
    script = Path(call.split()[-1]).read_text()
    for line in ("--partition=gpu", "--time=120", "--gpus-per-node=1", "--array=0-1%2", "--requeue",
                 "--signal=USR2@90", "--account=abc", "--mem=32G", f"--chdir={os.getcwd()}", "--cpus-per-task=1"):
        assert f"#SBATCH {line}\n" in script, line
    records = [json.loads((cell_dir(tmp_path, "2", s) / JOB_FILE).read_text()) for s in ("val", "test")]
    assert [r["job_id"] for r in records] == ["slurm:4242_0", "slurm:4242_1"]

    assert reproduce.main([*args, "--status"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"val\s+queued\s+0/20\s+-  job 4242_0", out) and "2 cells: 2 queued" in out
    assert reproduce.main(submit) == 0  # a second launch: the jobs are still queued, nothing is submitted twice
    out = capsys.readouterr().out
    assert "submitted as job 4242_0, which has not ended; skipped" in out and "nothing to submit" in out
    assert len(calls.read_text().splitlines()) == 1
    assert reproduce.main([*args, "--launcher", "local"]) == 0  # nor trained here while they wait
    assert "which has not ended; skipped" in capsys.readouterr().out
    assert not (cell_dir(tmp_path, "2", "val") / "log.txt").exists()

    # the jobs have left the queue (squeue: invalid job id); a lock of one of them is then stale on any host
    fake_slurm(tmp_path, monkeypatch, squeue="echo 'slurm_load_jobs error: Invalid job id specified' >&2\nexit 1\n")
    write_lock(cell_dir(tmp_path, "2", "val"), host="node-3", pid=1, job_id="slurm:4242_0")
    assert reproduce.main([*args, "--status"]) == 0
    out = capsys.readouterr().out
    assert "stale lock (job 4242_0 has ended); the next launch resumes" in out and "not started" in out


def test_slurm_launcher_needs_a_cluster(tmp_path, monkeypatch, capsys):
    pytest.importorskip("submitit", reason="--launcher slurm needs submitit (pip install submitit)")
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun
    code = reproduce.main([*grid_args(tmp_path, "--labelnum", "2", "--protocol", "honest"), "--launcher", "slurm"])
    assert code == 2 and "are you indeed on a slurm cluster" in capsys.readouterr().err


# ---- end to end (slow) ----------------------------------------------------------------------------------------


def normalised(results: Path, runs: Path) -> dict[str, str]:
    """The tables, with the run folder's path (in the checkpoint column and the header) taken out."""
    return {name: (results / name).read_text().replace(str(runs), "RUNS")
            for name in ("LA.md", "LA.csv", "LA_cases.csv", "LA_paired.csv")}


@pytest.mark.slow
def test_local_jobs_give_the_tables_of_the_sequential_grid(tmp_path, monkeypatch, capsys):
    import torch

    # CPU numbers depend on the number of threads (reductions split differently): one per process, both ways
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)  # conftest restores it
    common = ["--quick", "--methods", "ss_net", "supervised", "--max_iteration", "4", "--device", "cpu"]
    timings = {}
    for name, launch in (("sequential", []), ("local", ["--launcher", "local", "--jobs", "2"])):
        start = time.perf_counter()
        assert reproduce.main([*common, *launch, "--runs_dir", str(tmp_path / name / "runs"),
                               "--results_dir", str(tmp_path / name / "results")]) == 0
        timings[name] = time.perf_counter() - start
    out = capsys.readouterr().out
    assert "12 of 12 cells to run, 2 at a time (CPU)" in out and out.count(": finished after") == 12
    sequential = normalised(tmp_path / "sequential" / "results", tmp_path / "sequential" / "runs")
    local = normalised(tmp_path / "local" / "results", tmp_path / "local" / "runs")
    assert local == sequential
    print(f"quick grid wall time: sequential {timings['sequential']:.0f} s, --jobs 2 {timings['local']:.0f} s",
          file=sys.stderr)


@pytest.mark.slow
def test_local_cell_killed_mid_run_resumes_under_the_next_launch(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny networks: more threads only wait for each other
    args = grid_args(tmp_path, "--labelnum", "2", "--protocol", "honest", "--max_iteration", "60",
                     "--launcher", "local")
    run_dir = cell_dir(tmp_path)
    launch = subprocess.Popen([sys.executable, "reproduce.py", *args], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not list_checkpoints(run_dir) and time.time() < deadline:
        time.sleep(0.05)
    holder = read_holder(run_dir)
    assert holder is not None and list_checkpoints(run_dir)
    os.kill(holder.pid, signal.SIGKILL)  # what a lost machine or the OOM killer does: no cleanup at all
    out, _ = launch.communicate(timeout=120)
    assert launch.returncode == 2 and "FAILED (killed by signal 9)" in out
    assert read_holder(run_dir).pid == holder.pid  # the lock stays behind, stale
    killed_at = list_checkpoints(run_dir)[-1][0]
    assert killed_at < 60

    assert reproduce.main(args) == 0
    assert f"resumed from {run_dir / 'checkpoints'}" in (run_dir / "log.txt").read_text()
    assert json.loads((run_dir / "result.json").read_text())["max_iteration"] == 60
    assert not (run_dir / LOCK_FILE).exists()
    assert "1 of 1 cells to run" in capsys.readouterr().out


@pytest.mark.slow
def test_submitit_local_executor_requeues_resumes_and_reports_a_failed_cell(tmp_path, capsys):
    pytest.importorskip("submitit", reason="--launcher submitit_local needs submitit (pip install submitit)")
    args = grid_args(tmp_path, "--labelnum", "2", "all", "--protocol", "honest", "paper", "--max_iteration", "100")
    preempted, broken = cell_dir(tmp_path, "2", "val"), cell_dir(tmp_path, "all", "test")
    broken.mkdir(parents=True)
    (broken / "best_model.pth").write_bytes(b"left over")  # a result without a resume checkpoint: refused
    assert reproduce.main([*args, "--launcher", "submitit_local", "--time", "00:30:00"]) == 0  # returns at once
    assert "submitted 4 job(s)" in capsys.readouterr().out

    deadline = time.time() + 300
    while not list_checkpoints(preempted) and time.time() < deadline:
        time.sleep(0.05)
    holder = read_holder(preempted)
    assert holder is not None and holder.job_id.startswith("local:")
    assert reproduce.main([*args, "--status"]) == 0
    assert re.search(r"2  supervised\s+1337  val\s+running .* job local", capsys.readouterr().out)
    os.kill(holder.pid, signal.SIGUSR2)  # submitit's preemption / timeout signal: checkpoint and requeue

    def states() -> str:
        assert reproduce.main([*args, "--status"]) == 0
        return capsys.readouterr().out

    while time.time() < deadline and not re.search(r"4 cells: 3 finished, 1 failed$", states(), re.M):
        time.sleep(1)
    out = states()
    assert "4 cells: 3 finished, 1 failed" in out, out
    assert "failed" in out and "holds best_model.pth but no resume checkpoint" in out
    log = (preempted / "log.txt").read_text()
    assert log.count("resumed from") == 1 and json.loads((preempted / "result.json").read_text())["finished"]
    job_logs = "".join(p.read_text() for p in (tmp_path / "runs" / "submitit").glob("*_log.*"))
    assert f"Requeued job {holder.job_id.rsplit(':', 1)[1]}" in job_logs

    assert reproduce.main([*args, "--aggregate"]) == 0
    out = capsys.readouterr().out
    assert "cells in the tables: 3 of 4" in out
    assert "**Missing: 1 of 4 cells are not finished" in (tmp_path / "results" / "LA.md").read_text()


def test_the_fork_server_imports_nothing_that_touches_cuda():
    """Cells are forked from a server that imported PRELOAD: had it initialised CUDA, a cell could not pick its
    GPU (CUDA_VISIBLE_DEVICES is read when CUDA starts) nor use CUDA at all after the fork."""
    probe = """
import importlib, torch
calls = []
def record(*args, **kwargs):
    calls.append(1)
    return 0
if hasattr(torch._C, "_cuda_getDeviceCount"):  # a CUDA build: whatever asks the driver
    torch._C._cuda_getDeviceCount = record
torch.cuda.is_available = torch.cuda.device_count = torch.cuda.init = torch.cuda._lazy_init = record
from reproduction.launchers import PRELOAD
for name in PRELOAD:
    importlib.import_module(name)
print(len(calls), torch.cuda.is_initialized())
"""
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "False"]
