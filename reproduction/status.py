"""`reproduce.py --status`: where every cell of a grid stands, read from the run folders alone.

Nothing here asks a scheduler or a launcher: a cell's state follows from what it wrote (reproduction/cell.py
lists the files), so the table is right on any machine that shares the run folders, also while cells run
elsewhere. States:

* finished:    trained to its schedule and every checkpoint tested;
* running:     a live holder has its lock: the last logged iteration and the seconds per iteration of this
               session (from log.txt's time stamps, evaluations included; a two-stage run's current stage);
* failed:      its last attempt left reproduce_error.txt: the error line;
* queued:      submitted as a batch job that has not started it yet;
* stopped:     interrupted (resume checkpoints, a stale lock, or trained but not tested): the next launch resumes;
* not started.

Iterations count both stages of a two-stage method (BCP: pre-train + main stage). The ETA divides the measured
seconds of the iterations still to train by the number of cells running now.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from reproduction.cell import Cell, cell_complete, last_error, submitted_job
from reproduction.lock import job_active, read_holder, short_job_id
from utils.errors import UserError

STATES = ("finished", "running", "failed", "queued", "stopped", "not started")
_LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\] (.*)$")
_ITERATION = re.compile(r"^iteration (\d+):")
_SESSION_START = ("run folder ", "resumed from ")  # the first line a training session logs (training/trainer.py)


@dataclass
class CellState:
    cell: Cell
    state: str
    iteration: int = 0  # iterations done, both stages (last logged while running; else the newest checkpoint)
    seconds_per_iteration: float | None = None  # measured in the current (or last) training session
    detail: str = ""


def log_progress(run_dir: Path) -> tuple[int, float | None]:
    """(last iteration logged, seconds per iteration since the session started) from log.txt."""
    path = Path(run_dir) / "log.txt"
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return 0, None
    points: list[tuple[float, int]] = []
    for line in lines:
        match = _LOG_LINE.match(line)
        if not match:
            continue
        stamp, message = match.groups()
        if message.startswith(_SESSION_START):
            points = []  # a new session: its own speed
            continue
        iteration = _ITERATION.match(message)
        if iteration:
            points.append((time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")), int(iteration.group(1))))
    if not points:
        return 0, None
    (t0, i0), (t1, i1) = points[0], points[-1]
    # the first logged iteration carries the start-up; time stamps have 1 s resolution
    rate = (t1 - t0) / (i1 - i0) if i1 > i0 and t1 > t0 else None
    return i1, rate


def cell_state(cell: Cell) -> CellState:
    run_dir = cell.run_dir
    try:
        if cell_complete(cell):
            return CellState(cell, "finished", cell.run.total_iterations)
        trained = cell.run.status() == "finished"
        done = cell.run.done_iterations()
    except UserError as exc:
        return CellState(cell, "failed", 0, None, f"error: {exc}")
    holder = read_holder(run_dir)
    stale = holder.stale_reason() if holder else ""
    log_dir, before = cell.run.training_log()
    logged, rate = log_progress(log_dir)
    if holder is not None and not stale:
        doing = "testing" if trained else "training"
        iteration = before + logged if logged else 0
        return CellState(cell, "running", max(iteration, done), rate, f"{doing}: {holder.describe()}")
    error = last_error(run_dir)
    if error:
        return CellState(cell, "failed", done, rate, error)
    job_id = submitted_job(run_dir).get("job_id", "")
    if job_id and holder is None and not (run_dir / "log.txt").is_file() and job_active(job_id) is not False:
        return CellState(cell, "queued", done, None, f"job {short_job_id(job_id)}")
    if holder is not None:
        return CellState(cell, "stopped", done, rate, f"stale lock ({stale}); the next launch resumes")
    if trained:
        return CellState(cell, "stopped", done, rate, "trained, not tested yet")
    if done or (run_dir / "log.txt").is_file():
        return CellState(cell, "stopped", done, rate, f"interrupted; resumes from iteration {done}")
    return CellState(cell, "not started")


def estimate(states: list[CellState], timings: dict[tuple[str, str], dict]) -> tuple[float, list[str], int]:
    """(seconds of training left, methods without a measured speed, cells running now)."""
    measured: dict[tuple[str, str], list[float]] = {}
    for s in states:
        if s.seconds_per_iteration:
            measured.setdefault((s.cell.run.dataset, s.cell.run.method), []).append(s.seconds_per_iteration)
    seconds, unknown = 0.0, []
    for s in states:
        run = s.cell.run
        remaining = run.total_iterations - s.iteration if s.state != "finished" else 0
        if remaining <= 0:
            continue
        key = (run.dataset, run.method)
        rate = (s.seconds_per_iteration if s.state == "running" else None) \
            or (sum(measured[key]) / len(measured[key]) if key in measured else None) \
            or (timings[key]["seconds_per_iteration"] if key in timings else None)
        if rate is None:
            if run.method not in unknown:
                unknown.append(run.method)
            continue
        seconds += remaining * rate
    return seconds, unknown, sum(s.state == "running" for s in states)


def format_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def format_status(states: list[CellState], timings: dict[tuple[str, str], dict], banner: str = "") -> str:
    lines = [banner] if banner else []
    lines.append(f"{'budget':>7s}  {'method':14s}{'seed':>6s}  {'select':7s}{'state':12s}{'iteration':>15s}"
                 f"{'s/it':>8s}  detail")
    for s in states:
        run = s.cell.run
        rate = f"{s.seconds_per_iteration:.2f}" if s.seconds_per_iteration else "-"
        lines.append(f"{run.budget:>7s}  {run.method:14s}{run.seed:>6d}  {run.select:7s}{s.state:12s}"
                     f"{f'{s.iteration:,}/{run.total_iterations:,}':>15s}{rate:>8s}  {s.detail}".rstrip())
    counts = {state: sum(s.state == state for s in states) for state in STATES}
    lines.append(f"{len(states)} cells: " + ", ".join(f"{n} {state}" for state, n in counts.items() if n))
    seconds, unknown, running = estimate(states, timings)
    if seconds > 0:
        workers = max(running, 1)
        lines.append(f"training left: {format_duration(seconds)} of measured iteration time"
                     f"{' (lower bound: ' + ', '.join(unknown) + ' unmeasured)' if unknown else ''}; ETA about "
                     f"{format_duration(seconds / workers)} with {workers} cell(s) at a time (as many as run now)")
    elif unknown:
        lines.append(f"ETA unknown: no measured iteration time for {', '.join(unknown)} yet")
    elif counts["finished"] == len(states):
        lines.append("every cell is finished: run the same command without --status to write the tables")
    return "\n".join(lines)
