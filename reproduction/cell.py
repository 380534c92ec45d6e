"""One cell of the reproduction grid: train (or resume, or reuse) one run, then test its checkpoints.

Every launcher calls `run_cell`, so a cell does the same work wherever it runs: the sequential grid calls it in its
own process, `--launcher local` in one process per cell,

    python -m reproduction.cell <run folder>/reproduce_cell.json

and `--launcher slurm` in a submitit job (`CellJob`). A cell writes only inside its run folder: what the trainer
and the test write there, plus

    reproduce_cell.json    the cell (run, checkpoints to test, shared settings), written by a launcher
    reproduce.lock         held while the cell works (reproduction/lock.py)
    reproduce_error.txt    why its last attempt failed: the error line, then the traceback
    reproduce_job.log      output of the `--launcher local` process
    reproduce_job.json     the batch job it was submitted as (`--launcher slurm`)
    reproduce_timing.json  the measured seconds per iteration (for --dry-run and --status)
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

from reproduction.lock import CellBusy, CellLock
from reproduction.plan import TIMING_FILE, Evaluation, Run, timing_record
from training.config import TrainConfig, make_config
from utils.atomic import write_text_atomic
from utils.cli import USER_ERRORS, ScriptParser
from utils.errors import StoppedBySignal
from utils.settings import same_as, setting
from utils.shared_settings import SharedSettings

CELL_FILE = "reproduce_cell.json"
ERROR_FILE = "reproduce_error.txt"
JOB_LOG = "reproduce_job.log"
JOB_FILE = "reproduce_job.json"
BUSY_EXIT_CODE = 75  # `python -m reproduction.cell`: another live launch holds the cell (EX_TEMPFAIL)


@dataclass
class CellSettings:
    """What every cell of one grid shares (quick mode already resolved into data, lists and training settings)."""

    device: str = same_as(SharedSettings, "device")
    num_workers: int = same_as(SharedSettings, "num_workers")
    root_path: str = same_as(SharedSettings, "root_path")
    lists_dir: str = same_as(TrainConfig, "lists_dir")
    test_list: str = setting("", "the test cases every checkpoint is tested on")
    progress: bool = same_as(SharedSettings, "progress", default=False)
    # TrainConfig settings of every cell (quick mode's, --train_args'), given to make_config
    train_settings: dict = setting(help="training settings of every cell", factory=dict)


@dataclass
class Cell:
    run: Run
    evaluations: list[Evaluation]
    settings: CellSettings

    @property
    def run_dir(self) -> Path:
        return self.run.run_dir

    def label(self) -> str:
        run = self.run
        return (f"{run.dataset} {run.budget} labeled ({run.labelnum}), {run.method}, seed {run.seed}, "
                f"--select {run.select}")

    def to_json(self) -> str:
        run = {**asdict(self.run), "run_dir": str(self.run.run_dir)}
        evaluations = [{"checkpoint": e.checkpoint, "protocols": list(e.protocols)} for e in self.evaluations]
        return json.dumps({"run": run, "evaluations": evaluations, "settings": asdict(self.settings)}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> Cell:
        data = json.loads(text)
        run = Run(**{**data["run"], "run_dir": Path(data["run"]["run_dir"])})
        evaluations = [Evaluation(run, e["checkpoint"], tuple(e["protocols"])) for e in data["evaluations"]]
        return cls(run, evaluations, CellSettings(**data["settings"]))

    def write(self) -> Path:
        """The cell as `reproduce_cell.json` in its run folder (what a cell process or job reads)."""
        path = self.run_dir / CELL_FILE
        write_text_atomic(path, self.to_json() + "\n")
        return path


@dataclass
class CellOutcome:
    trained: bool = False  # trained or resumed in this call (False: a finished run reused)
    seconds: float = 0.0
    iterations: int = 0  # iterations trained in this call
    tested: list[Path] = field(default_factory=list)  # test folders written in this call
    took_over: str = ""  # why a stale lock was taken over


# ---- training and testing ------------------------------------------------------------------------------------


def train_config(run: Run, settings: CellSettings) -> TrainConfig:
    """The config of the cell's run: the grid's settings, then the run's own."""
    given = {**settings.train_settings, "method": run.method, "labelnum": run.labelnum, "seed": run.seed,
             "select": run.select, "run_dir": str(run.run_dir), "max_iteration": run.max_iteration,
             "schedule": run.schedule, "device": settings.device, "num_workers": settings.num_workers,
             "exp": f"{run.dataset}_reproduce", "progress": settings.progress,
             "root_path": settings.root_path or None, "lists_dir": settings.lists_dir or None,  # None: the dataset's
             "pretrain_iterations": run.pretrain_iterations or None}  # a two-stage method's, shortened with the run
    return make_config(run.dataset, **given)


def train_run(run: Run, settings: CellSettings) -> tuple[bool, float, int]:
    """(trained now?, seconds, iterations done now); a finished run is reused, a partial one resumes."""
    from training import train

    if run.status() == "finished":
        return False, 0.0, 0
    config = train_config(run, settings)
    start = time.perf_counter()
    result = train(config)
    seconds = time.perf_counter() - start
    iterations = run.max_iteration - result.resumed_from
    environment = json.loads((run.run_dir / "environment.json").read_text()) \
        if (run.run_dir / "environment.json").is_file() else {}
    record = timing_record(run, iterations, result.seconds, config.device,
                           environment.get("device_name") or config.device)
    if iterations > 0:
        write_text_atomic(run.run_dir / TIMING_FILE, json.dumps(record, indent=2) + "\n")
    return True, seconds, iterations


def test_is_current(evaluation: Evaluation) -> bool:
    checkpoint = evaluation.run.run_dir / evaluation.checkpoint
    summary = evaluation.output_dir / "summary.json"
    return (summary.is_file() and (evaluation.output_dir / "metrics.csv").is_file() and checkpoint.is_file()
            and summary.stat().st_mtime >= checkpoint.stat().st_mtime)


def test_evaluation(evaluation: Evaluation, settings: CellSettings) -> bool:
    """Test the checkpoint on the test list unless an up-to-date result is there; True when tested now."""
    from evaluation import TestOptions, run_test

    if test_is_current(evaluation):
        return False
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # the per-run table goes to a file; the grid prints its own summary
        run_test(TestOptions(dataset=evaluation.run.dataset, checkpoint=str(evaluation.run.run_dir /
                                                                            evaluation.checkpoint),
                             root_path=settings.root_path or f"./data/{evaluation.run.dataset}",
                             list_path=settings.test_list, device=settings.device, progress=False,
                             output_dir=str(evaluation.output_dir)))
    write_text_atomic(evaluation.output_dir / "table.txt", out.getvalue())
    return True


def cell_complete(cell: Cell) -> bool:
    """Trained to its schedule and every checkpoint tested (what the tables read)."""
    return cell.run.status() == "finished" and all(test_is_current(e) for e in cell.evaluations)


# ---- the cell --------------------------------------------------------------------------------------------------


def error_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"error: {text}" if isinstance(exc, USER_ERRORS) else f"{type(exc).__name__}: {text}"


def last_error(run_dir: Path) -> str:
    """The error line of the cell's last failed attempt ('' when it has not failed)."""
    path = Path(run_dir) / ERROR_FILE
    try:
        return path.read_text().splitlines()[0]
    except (OSError, IndexError):
        return ""


def submitted_job(run_dir: Path) -> dict:
    """The batch job the cell was last submitted as ({} when none): launcher, job_id, output, submitted."""
    try:
        return json.loads((Path(run_dir) / JOB_FILE).read_text())
    except (OSError, ValueError):
        return {}


def run_cell(cell: Cell) -> CellOutcome:
    """Train and test one cell under its lock (CellBusy when a live launch holds it).

    A failure leaves `reproduce_error.txt` (its error line, then the traceback) and is raised again; the next
    attempt removes it. An interruption (Ctrl-C, a requeue, SIGTERM) only releases the lock: the run resumes."""
    run_dir = cell.run_dir
    with CellLock(run_dir) as lock:
        (run_dir / ERROR_FILE).unlink(missing_ok=True)
        try:
            trained, seconds, iterations = train_run(cell.run, cell.settings)
            tested = [e.output_dir for e in cell.evaluations if test_evaluation(e, cell.settings)]
        except Exception as exc:
            write_text_atomic(run_dir / ERROR_FILE, f"{error_line(exc)}\n\n{traceback.format_exc()}")
            raise
    return CellOutcome(trained, seconds, iterations, tested, lock.took_over)


class CellJob:
    """A cell as a submitit job. Preemption or a timeout requeues it (submitit calls `checkpoint`), and the
    requeued job simply runs the cell again: the trainer continues from the newest resume checkpoint."""

    def __init__(self, cell: Cell):
        self.cell_json = cell.to_json()  # plain text: the job does not depend on how these classes pickle

    def __call__(self) -> dict:
        cell = Cell.from_json(self.cell_json)
        try:
            outcome = run_cell(cell)
        except CellBusy as exc:
            return {"busy": str(exc)}
        return {"trained": outcome.trained, "seconds": outcome.seconds, "iterations": outcome.iterations,
                "tested": [str(p) for p in outcome.tested], "took_over": outcome.took_over}

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


# ---- python -m reproduction.cell -----------------------------------------------------------------------------


def cell_process(spec: str, environment: dict[str, str], cwd: str, log: str) -> None:
    """The body of a `--launcher local` process: the launcher's folder and environment (the GPU it pins the cell
    to, CPU threads), output appended to the cell's job log, then `main`. The process may be forked from a server
    that imported the project but never touched CUDA, so CUDA_VISIBLE_DEVICES set here still decides."""
    import torch

    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(environment)
    if environment.get("OMP_NUM_THREADS", "").isdigit():
        torch.set_num_threads(int(environment["OMP_NUM_THREADS"]))
    output = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.dup2(output, 1)
    os.dup2(output, 2)
    os.close(output)
    sys.exit(main([spec]))


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds: the lock is released, the run resumes next time


def main(argv: list[str] | None = None) -> int:
    parser = ScriptParser(description="Train and test one cell of a reproduction grid (what "
                                                 "reproduce.py --launcher local runs per cell).")
    parser.add_argument("cell", help=f"the cell's {CELL_FILE}")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    cell = Cell.from_json(Path(args.cell).read_text())
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} cell {cell.label()}", flush=True)
    try:
        outcome = run_cell(cell)
    except CellBusy as exc:
        print(f"skipped: {exc}", flush=True)
        return BUSY_EXIT_CODE
    except USER_ERRORS as exc:
        print(error_line(exc), file=sys.stderr, flush=True)
        return 2
    except StoppedBySignal as exc:  # saved at an iteration boundary: the next launch resumes
        print(exc, file=sys.stderr, flush=True)
        return exc.exit_code
    if outcome.took_over:
        print(f"took over a stale lock ({outcome.took_over})", flush=True)
    what = f"trained {outcome.iterations} iterations in {outcome.seconds:.0f} s" if outcome.trained else "reused"
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} done: {what}, tested {len(outcome.tested)} checkpoint(s)",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
