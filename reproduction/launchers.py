"""Where the cells of a grid run: existing engines, no scheduler of our own.

* `run_local`: one process per cell (what `python -m reproduction.cell` runs), at most one per slot at a time; a
  slot is a GPU (`CUDA_VISIBLE_DEVICES` set per process) or, on CPU, a share of the cores.
* `submit_cells`: every cell as a submitit job (https://github.com/facebookincubator/submitit), as one SLURM job
  array; preemption or a timeout requeues a job and the requeued cell resumes from its newest checkpoint.
  `cluster="local"` is submitit's local executor: the same path on one machine, no SLURM needed.

Both report each cell as it ends; the tables are written afterwards by the grid, from the run folders.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import multiprocessing.connection
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from reproduction.cell import BUSY_EXIT_CODE, JOB_FILE, JOB_LOG, Cell, CellJob, cell_process, last_error
from utils.atomic import write_text_atomic
from utils.errors import UserError
from utils.machine import usable_cores
from utils.settings import setting

LAUNCHER_FLAGS = "launchers (docs/reproduction.md)"  # reproduce.py's -h section of the launcher settings


@dataclass
class LaunchReport:
    """How each launched cell ended: run folder -> message."""

    finished: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    busy: dict[str, str] = field(default_factory=dict)


# ---- one process per cell on this machine --------------------------------------------------------------------


def local_slots(gpus: list[str], jobs: int | None, device: str) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES of each slot (None: CPU, leave it). `--gpus 0,1 --jobs 4` puts two cells on each GPU."""
    if gpus:
        if device.startswith("cuda:"):
            raise UserError(f"--gpus pins every cell to its own GPU, seen by the cell as 'cuda'; use --device cuda, "
                            f"not {device}")
        if device == "cpu":
            raise UserError("--gpus with --device cpu: leave out --gpus (and use --jobs N) to train on CPU")
        count = jobs or len(gpus)
        return [gpus[i % len(gpus)] for i in range(count)]
    return [None] * (jobs or 1)


def cell_environment(slot: str | None, slots: int) -> dict[str, str]:
    """The environment of a cell's process: this one's, with its GPU pinned or its share of the CPU cores."""
    env = dict(os.environ)
    if slot is not None:
        env["CUDA_VISIBLE_DEVICES"] = slot
    elif "OMP_NUM_THREADS" not in env:  # CPU cells share the cores instead of each taking all of them
        env["OMP_NUM_THREADS"] = str(threads_per_cell(slots))
    return env


def threads_per_cell(cells: int) -> int:
    """CPU threads of each of `cells` cells that run at once on this machine's cores."""
    return max(1, usable_cores() // max(cells, 1))


# Imported once by the fork server instead of by every cell (seconds per cell on a small CPU). Our modules touch no
# CUDA when imported (tests/test_launchers.py checks), so each cell's CUDA_VISIBLE_DEVICES still decides; torch's
# compiler stack (what torch.use_deterministic_algorithms imports, ~2 s) is preloaded for CPU cells only.
PRELOAD = ["reproduction.cell", "training.trainer", "evaluation"]
CPU_PRELOAD = ["torch._inductor.config"]


def process_context(cpu_only: bool):
    """Python's multiprocessing: each cell in a new process, forked from a server that has imported the project
    (the 'forkserver' start method; 'spawn', a fresh interpreter per cell, where there is none)."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD + (CPU_PRELOAD if cpu_only else []))
        return context
    return multiprocessing.get_context("spawn")


def start_cell(context, cell: Cell, slot: str | None, slots: int):
    spec = cell.write()
    log = cell.run_dir / JOB_LOG
    where = f"GPU {slot}" if slot is not None else "CPU"
    with open(log, "a") as f:
        f.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} started by reproduce.py (pid {os.getpid()} on "
                f"{socket.gethostname()}) on {where}\n")
    process = context.Process(target=cell_process, args=(str(spec), cell_environment(slot, slots), os.getcwd(),
                                                          str(log)), name=f"cell {cell.run_dir}")
    process.start()
    return process


def ended(cell: Cell, code: int, report: LaunchReport) -> str:
    key = str(cell.run_dir)
    if code == 0:
        report.finished[key] = "finished"
        return "finished"
    if code == BUSY_EXIT_CODE:
        report.busy[key] = "held by another launch"
        return "skipped: another launch holds it"
    why = last_error(cell.run_dir) or (f"killed by signal {-code}" if code < 0 else f"exit code {code}")
    report.failed[key] = why
    return f"FAILED ({why}); output: {cell.run_dir / JOB_LOG}"


def run_local(cells: list[Cell], slots: list[str | None], keep_going: bool,
              say: Callable[[str], None] = print) -> LaunchReport:
    """Run every cell in its own process, one per slot at a time; without keep_going the first failure stops
    the start of new cells (those running finish)."""
    report = LaunchReport()
    context = process_context(all(slot is None for slot in slots)) if cells else None
    pending = list(enumerate(cells, start=1))
    running: dict[int, tuple[multiprocessing.Process, Cell, int, float]] = {}  # slot -> process, cell, number
    free = list(range(len(slots)))
    stop = False
    try:
        while (pending and not stop) or running:
            while pending and free and not stop:
                number, cell = pending.pop(0)
                index = free.pop(0)
                process = start_cell(context, cell, slots[index], len(slots))
                running[index] = (process, cell, number, time.perf_counter())
                where = f"GPU {slots[index]}" if slots[index] is not None else f"slot {index}"
                say(f"[{number}/{len(cells)}] {cell.label()}: started on {where} (pid {process.pid})")
            multiprocessing.connection.wait([process.sentinel for process, _, _, _ in running.values()])
            for index, (process, cell, number, start) in list(running.items()):
                code = process.exitcode
                if code is None:
                    continue
                process.close()
                del running[index]
                free.append(index)
                message = ended(cell, code, report)
                say(f"[{number}/{len(cells)}] {cell.label()}: {message} after {time.perf_counter() - start:.0f} s")
                if str(cell.run_dir) in report.failed and not keep_going:
                    stop = True
    except BaseException:  # Ctrl-C: the cells release their locks and resume next time
        for process, _, _, _ in running.values():
            process.terminate()  # SIGTERM
        for process, _, _, _ in running.values():
            process.join()
        raise
    if stop and pending:
        say(f"stopped after a failure: {len(pending)} cell(s) not started (--keep_going runs them all)")
    return report


# ---- submitit (SLURM, or its local executor) -----------------------------------------------------------------


def import_submitit():
    try:
        import submitit
    except ImportError:
        raise UserError("--launcher slurm needs submitit: pip install submitit (or pip install '.[cluster]' in the "
                        "checkout)") from None
    return submitit


def minutes(text: str) -> int:
    """SLURM's time formats as minutes: MM, HH:MM:SS, D-HH[:MM[:SS]]."""
    try:
        days, _, clock = text.strip().rpartition("-")
        parts = [int(p) for p in clock.split(":")]
        if days:
            parts += [0] * (3 - len(parts))
            hours, mins, secs = parts
            total = int(days) * 1440 + hours * 60 + mins + secs / 60
        elif len(parts) == 1:
            total = parts[0]
        elif len(parts) == 2:
            total = parts[0] + parts[1] / 60
        else:
            total = parts[0] * 60 + parts[1] + parts[2] / 60
    except ValueError:
        raise UserError(f"--time {text!r}: use HH:MM:SS, MM or D-HH:MM:SS") from None
    if total <= 0:
        raise UserError(f"--time {text!r} must be positive")
    return max(1, round(total))


@dataclass
class SlurmSettings:
    """--launcher slurm / submitit_local: the job of each cell."""

    partition: str = setting("", "--launcher slurm: the partition (default: the cluster's)", group=LAUNCHER_FLAGS)
    time: str = setting("04:00:00", "--launcher slurm: time limit per job (HH:MM:SS); a job that reaches it is "
                                    "requeued and resumes from its newest checkpoint", group=LAUNCHER_FLAGS)
    # 0 or 1, checked with the reason (reproduction.grid.check_launcher)
    gpus_per_job: int | None = setting(None, "--launcher slurm: GPUs per cell (default: 1, with --device cpu 0: a "
                                             "CPU job)", minimum=0, group=LAUNCHER_FLAGS)
    cpus_per_job: int = setting(0, "--launcher slurm: CPU cores per cell (default: --num_workers + 1)", minimum=0,
                                group=LAUNCHER_FLAGS)
    slurm_args: list[str] = setting(help="--launcher slurm: more sbatch options, e.g. account=abc qos=high mem=64G "
                                         "constraint=a100 (a KEY alone is a flag)", factory=list, nargs="+",
                                    metavar="KEY=VALUE", group=LAUNCHER_FLAGS)
    requeue_timeouts: int = setting(3, "--launcher slurm: how often a cell that reaches --time is requeued "
                                       "(preempted jobs are always requeued)", minimum=0, group=LAUNCHER_FLAGS)
    array_parallelism: int = setting(0, "--launcher slurm: at most this many cells at a time (default: as SLURM "
                                        "schedules)", minimum=0, group=LAUNCHER_FLAGS)


def gpu_list(text: str) -> list[str]:
    """`0,1,2,3` -> ["0", "1", "2", "3"] (GPU indices or UUIDs as CUDA_VISIBLE_DEVICES takes them)."""
    gpus = [g.strip() for g in text.split(",") if g.strip()]
    if not gpus:
        raise argparse.ArgumentTypeError(f"expected GPU ids like 0,1,2,3, got {text!r}")
    return gpus


def sbatch_options(items: list[str]) -> dict[str, object]:
    """--slurm_args KEY=VALUE or KEY (a flag) as sbatch options; `cpus-per-task` and `cpus_per_task` are one key
    (submitit writes `_` as `-`), so a given option replaces the one set from reproduce.py's flags."""
    options: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not key or (sep and not value):
            raise UserError(f"--slurm_args {item!r}: write KEY=VALUE or KEY, e.g. account=abc qos=high mem=64G")
        options[key] = value if sep else True
    return options


def executor_for(cluster: str, folder: Path, settings: SlurmSettings, num_workers: int, jobs: int = 1):
    """A submitit executor for `cluster` ("slurm" or "local") with the job parameters of every cell."""
    submitit = import_submitit()
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster,
                                         **{f"{cluster}_max_num_timeout": settings.requeue_timeouts})
    except RuntimeError as exc:  # no srun here: not a SLURM cluster
        raise UserError(f"--launcher slurm: {exc} (--launcher local runs the grid on this machine)") from None
    parameters: dict[str, object] = {"timeout_min": minutes(settings.time), "nodes": 1, "tasks_per_node": 1,
                                     "gpus_per_node": settings.gpus_per_job, "name": "reproduce"}
    if cluster == "slurm":
        parameters["cpus_per_task"] = settings.cpus_per_job or num_workers + 1
        if settings.partition:
            parameters["slurm_partition"] = settings.partition
        if settings.array_parallelism:
            parameters["slurm_array_parallelism"] = settings.array_parallelism
        # requeue: SLURM may also requeue after a node failure; chdir: the cells' paths are relative to here
        parameters["slurm_additional_parameters"] = {"requeue": True, "chdir": os.getcwd(),
                                                     **sbatch_options(settings.slurm_args)}
    elif settings.gpus_per_job == 0 and "OMP_NUM_THREADS" not in os.environ:
        # every local job starts at once: CPU jobs share the cores instead of each taking all of them
        parameters["local_setup"] = [f"export OMP_NUM_THREADS={threads_per_cell(jobs)}"]
    try:
        executor.update_parameters(**parameters)
    except (ValueError, TypeError) as exc:
        raise UserError(f"--launcher slurm: {exc}") from None
    return executor


def submit_cells(cells: list[Cell], cluster: str, folder: Path, settings: SlurmSettings, num_workers: int,
                 say: Callable[[str], None] = print) -> list:
    """Submit every cell (one job array); each run folder records its job in reproduce_job.json."""
    executor = executor_for(cluster, folder, settings, num_workers, len(cells))
    for cell in cells:
        cell.write()
    with executor.batch():
        jobs = [executor.submit(CellJob(cell)) for cell in cells]
    prefix = "slurm" if cluster == "slurm" else f"local:{socket.gethostname()}"
    for number, (cell, job) in enumerate(zip(cells, jobs, strict=True), start=1):
        record = {"launcher": cluster, "job_id": f"{prefix}:{job.job_id}", "submitted": time.time(),
                  "output": str(job.paths.stdout), "submitted_by": f"{socket.gethostname()}:{os.getpid()}"}
        write_text_atomic(cell.run_dir / JOB_FILE, json.dumps(record, indent=2) + "\n")
        say(f"[{number}/{len(cells)}] {cell.label()}: submitted as job {job.job_id} (log {job.paths.stdout})")
    return jobs


def wait_for_jobs(jobs: list, cells: list[Cell], poll_seconds: float, say: Callable[[str], None] = print) \
        -> LaunchReport:
    """Report each job as it ends (finished, failed with its error line, or skipped as held elsewhere)."""
    submitit = import_submitit()
    report = LaunchReport()
    by_id = {job.job_id: (number, cell) for number, (job, cell) in enumerate(zip(jobs, cells, strict=True), 1)}
    for job in submitit.helpers.as_completed(jobs, poll_frequency=poll_seconds):
        number, cell = by_id[job.job_id]
        key = str(cell.run_dir)
        try:
            outcome = job.result()
        except Exception as exc:  # the job failed or ended without a result; the cell says why
            lines = str(exc).strip().splitlines()
            why = last_error(cell.run_dir) or f"{type(exc).__name__}: {lines[-1] if lines else ''}"
            report.failed[key] = why
            say(f"[{number}/{len(cells)}] {cell.label()}: FAILED ({why}); output: {job.paths.stdout}")
            continue
        if "busy" in outcome:
            report.busy[key] = outcome["busy"]
            say(f"[{number}/{len(cells)}] {cell.label()}: skipped ({outcome['busy']})")
        else:
            report.finished[key] = "finished"
            say(f"[{number}/{len(cells)}] {cell.label()}: finished (job {job.job_id})")
    return report
