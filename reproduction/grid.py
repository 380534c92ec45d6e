"""Run a reproduction grid: train (or resume, or reuse) every run, test its checkpoints, write the results."""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dataloaders import get_dataset, make_synthetic_la, read_list
from dataloaders.acdc import acdc_slice_path, acdc_volume_path
from dataloaders.la import la_case_path
from dataloaders.splits import patient_of
from reproduction.aggregate import write_results
from reproduction.cell import (
    JOB_LOG,
    Cell,
    CellSettings,
    cell_complete,
    run_cell,
    submitted_job,
    test_is_current,
    train_config,
)
from reproduction.launchers import (
    LAUNCHER_FLAGS,
    LaunchReport,
    SlurmSettings,
    gpu_list,
    local_slots,
    run_local,
    submit_cells,
    wait_for_jobs,
)
from reproduction.lock import CellBusy, job_active, live_holder, short_job_id
from reproduction.paper import PAPER_RESULTS, load_paper_results
from reproduction.plan import (
    DEFAULT_BUDGETS,
    PROTOCOL_CHOICES,
    Evaluation,
    Plan,
    Run,
    check_grid_data,
    format_plan,
    load_timings,
    plan_grid,
)
from reproduction.rows import FULL_MODE, QUICK_MODE, SHORTENED_MODE
from reproduction.status import cell_state, format_status
from training.config import TrainConfig
from training.flags import build_train_parser, explicit_flags, settings_from_args
from utils.atomic import write_text_atomic
from utils.cli import USER_ERRORS
from utils.errors import UserError
from utils.settings import check_settings, nested, same_as, setting
from utils.shared_settings import SharedSettings

QUICK_BANNER = ("*" * 100 + "\n*** QUICK MODE: a tiny schedule on tiny data. It proves the machinery; it is NOT a "
                "reproduction of the paper. ***\n" + "*" * 100)
QUICK_ITERATIONS = 20
LAUNCHERS = ("sequential", "local", "slurm", "submitit_local")
SUBMITIT_LAUNCHERS = ("slurm", "submitit_local")


@dataclass
class GridOptions:
    """reproduce.py's settings (its flags are generated from these fields)."""

    dataset: str = setting("LA", "the paper's dataset to reproduce", choices=("LA", "ACDC"))
    budgets: list[str] = setting(help="labeled budgets: LA scans (4 = 5 %, 8 = 10 %), ACDC patients (3, 7); 'all' = "
                                      "the fully supervised upper bound (default: the paper's two budgets and all)",
                                 factory=list, flag="--labelnum", nargs="+", metavar="N|all")
    methods: list[str] = setting(help="registered methods (default: all); 'supervised' at a budget is the "
                                      "labeled-only lower bound", factory=list, nargs="+")
    seeds: list[int] = setting(help="one run per seed (--quick: the first two)", factory=lambda: [1337, 1338, 1339],
                               nargs="+", parse=int)
    protocols: list[str] = setting(help="paper = the published checkpoint selection (LA: best on the TEST set); "
                                        "honest = best on the validation list, and the last checkpoint",
                                   factory=lambda: ["paper", "honest"], flag="--protocol", nargs="+",
                                   choices=PROTOCOL_CHOICES)
    root_path: str = same_as(SharedSettings, "root_path",
                             help="dataset folder (default: ./data/<dataset>; --quick: synthetic)")
    lists_dir: str = same_as(TrainConfig, "lists_dir", group="")
    runs_dir: str = setting("", "run folders (default: model/reproduce, quick: model/reproduce_quick)")
    results_dir: str = setting("", "tables and chart (default: results, quick: results/quick)")
    device: str = same_as(SharedSettings, "device")
    num_workers: int = same_as(SharedSettings, "num_workers")
    max_iteration: int | None = same_as(TrainConfig, "max_iteration", default=None, group="",
                                        help="shorten every run (outputs then say: NOT the paper's setting)")
    schedule: str = same_as(TrainConfig, "schedule", group="",
                            help="recipe = every baseline on its authors' schedule (the published rows); shared = "
                                 "SS-Net's schedule for every method (a controlled comparison); every table says "
                                 "which")
    train_args: list[str] = setting(help="extra flags for every training run, e.g. '--eval_batch_size 8' (outputs "
                                         "then say the schedule changed)", factory=list, parse=shlex.split)
    quick: bool = setting(False, "tiny CPU grid in minutes (2 seeds): NOT a reproduction", switch=True)
    dry_run: bool = setting(False, "print the plan (runs, iterations, status, time estimate) and exit", switch=True,
                            flag="--dry-run", aliases=("--dry_run",))
    timing: str = setting("", 'JSON of measured seconds per iteration, e.g. {"device_name": "NVIDIA H100", '
                              '"LA/ss_net": 0.45}; default: the measurements of earlier runs in --runs_dir')
    keep_going: bool = setting(False, "a failing run is reported, the others go on", switch=True)
    progress: bool = same_as(SharedSettings, "progress", default=False, switch=True, inverse_flag="",
                             help="progress bars while training")
    status: bool = setting(False, "print where every cell stands (finished, running with its iteration and speed, "
                                  "failed with its error, queued, stopped, not started) and an ETA, from the run "
                                  "folders; run nothing", switch=True)
    aggregate: bool = setting(False, "write the tables from the finished cells (the missing ones are named); run "
                                     "nothing", switch=True)
    launcher: str = setting("sequential", "sequential: every cell in this process; local: one process per cell, "
                                          "--gpus / --jobs at a time; slurm: one submitit job per cell (a job "
                                          "array), requeued on preemption or timeout; submitit_local: the slurm "
                                          "path on this machine (submitit's local executor)",
                            choices=LAUNCHERS, group=LAUNCHER_FLAGS)
    gpus: list[str] = setting(help="--launcher local: GPUs, one cell on each at a time (CUDA_VISIBLE_DEVICES per "
                                   "cell)", factory=list, parse=gpu_list, metavar="0,1,2,3", group=LAUNCHER_FLAGS)
    jobs: int | None = setting(None, "--launcher local: cells at a time (default: one per --gpus entry, else 1; on "
                                     "CPU the cores are shared between them)", minimum=1, group=LAUNCHER_FLAGS)
    slurm: SlurmSettings = nested(SlurmSettings)  # --launcher slurm / submitit_local
    wait: bool = setting(False, "--launcher slurm: wait for the jobs and write the tables (default: print the job "
                                "ids and return; follow with --status, then --aggregate)", switch=True,
                         group=LAUNCHER_FLAGS)
    reference: str = setting("supervised", "the paired comparisons: every method against this one at the same "
                                           "budget, schedule and seeds (default supervised: does the unlabeled "
                                           "data help?; e.g. ss_net)")


@dataclass
class GridResult:
    plan: Plan
    trained: list[Path] = field(default_factory=list)  # run folders trained (or resumed) in this session
    skipped: list[Path] = field(default_factory=list)  # finished runs reused
    tested: list[Path] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    busy: dict[str, str] = field(default_factory=dict)  # cells another live launch holds: skipped
    missing: list[str] = field(default_factory=list)  # cells left out of the tables (not finished)
    jobs: dict[str, str] = field(default_factory=dict)  # run folder -> submitted batch job id
    outputs: dict[str, Path] = field(default_factory=dict)
    mode: str = FULL_MODE


def all_methods() -> list[str]:
    from methods import METHODS

    return sorted(METHODS, key=lambda m: (m != "ss_net", m))


def mode_of(options: GridOptions) -> str:
    if options.quick:
        return QUICK_MODE
    if options.max_iteration is not None or options.train_args:
        return SHORTENED_MODE
    return FULL_MODE


# ---- quick mode: tiny data and a tiny schedule ---------------------------------------------------------------


def quick_train_settings(dataset: str, synthetic: bool) -> dict[str, Any]:
    """The training settings of every quick cell (TrainConfig fields)."""
    # Independent of --max_iteration, so a quick run can be extended (resumed) with a longer schedule.
    common = {"lr_step": 0, "consistency_rampup": 1.0, "eval_start": 1, "eval_every": 2, "save_every": 2,
              "image_every": 0, "eval_batch_size": 8}
    if dataset == "LA":
        patch, stride = ([32, 32, 16], [16, 16, 8]) if synthetic else ([64, 64, 32], [32, 32, 16])
        return {**common, "patch_size": patch, "stride": stride, "network_kwargs": {"base_filters": 4},
                # batch 4 (2 labeled) for every method: a recipe's larger batch (BCP's 8) needs more cases
                "batch_size": 4, "labeled_bs": 2}
    return {**common, "patch_size": [64, 64], "batch_size": 4, "labeled_bs": 2}


def quick_data(dataset: str, root_path: str, work: Path) -> tuple[str, str, list[str]]:
    """(root, lists folder, budgets) for --quick: synthetic LA-like cases, or a few real cases found on disk."""
    lists = work / "lists"
    if not root_path:
        if dataset != "LA":
            raise UserError("--quick without --root_path writes synthetic LA-like data; for ACDC pass --root_path "
                             "with a few real cases")
        data = work / "data"
        if not (data / "test.list").is_file():
            make_synthetic_la(data, n_train=5, n_test=2, shape=(40, 40, 24), seed=0, n_val=1)
        return str(data), str(data), ["2", "all"]
    task = get_dataset(dataset)
    source = task.lists_dir()
    if dataset == "LA":
        present = [c for c in read_list(source / "train.list") if la_case_path(root_path, c).is_file()]
        test = [c for c in read_list(source / "test.list") if la_case_path(root_path, c).is_file()][:2]
        if len(present) < 3 or not test:
            raise UserError(f"--quick --root_path {root_path}: need >= 3 training and 1 test LA case there, "
                             f"found {len(present)} and {len(test)}")
        contents = {"train.list": present, "val.list": present[-1:], "test.list": test}
        budgets = ["2", "all"]
    else:
        slices = [s for s in read_list(source / "train_slices.list") if acdc_slice_path(root_path, s).is_file()]
        val = [v for v in read_list(source / "val.list") if acdc_volume_path(root_path, v).is_file()][:2]
        test = [v for v in read_list(source / "test.list") if acdc_volume_path(root_path, v).is_file()][:2]
        if len({patient_of(s) for s in slices}) < 2 or not val or not test:
            raise UserError(f"--quick --root_path {root_path}: need the slices of >= 2 training patients and 1 "
                             f"val and 1 test ACDC volume there")
        contents = {"train_slices.list": slices, "val.list": val, "test.list": test}
        budgets = ["1", "all"]
    for name, ids in contents.items():
        write_text_atomic(lists / name, "".join(f"{i}\n" for i in ids))
    return root_path, str(lists), budgets


# ---- one run, one evaluation ---------------------------------------------------------------------------------


GRID_FLAGS = ("--method", "--labelnum", "--seed", "--select", "--run_dir", "--max_iteration", "--schedule", "--device",
              "--num_workers", "--exp", "--root_path", "--lists_dir", "--resume", "--track", "--no_progress")


def train_args_settings(dataset: str, extra: list[str]) -> dict[str, Any]:
    """--train_args as the training settings they give: only flags of the train script that the grid does not set
    itself, with valid values (a value out of range is refused with the cells' configs, before any training)."""
    reserved = [f for f in extra if f.split("=")[0] in GRID_FLAGS]
    if reserved:
        raise UserError(f"--train_args: {', '.join(reserved)} is set by reproduce.py for every cell; use "
                         f"reproduce.py's own flags (--methods, --labelnum, --seeds, --protocol, ...)")
    parser = build_train_parser(dataset, "")
    parser.exit_on_error = False
    try:
        args, unknown = parser.parse_known_args(extra)
    except argparse.ArgumentError as exc:
        raise UserError(f"--train_args: {exc}") from None
    if unknown:
        raise UserError(f"--train_args: {' '.join(unknown)} is not a flag of train_{dataset.lower()}.py "
                         f"(python train_{dataset.lower()}.py -h lists them)")
    given = explicit_flags(parser, extra)
    return {name: value for name, value in settings_from_args(args).items()
            if name in given or (name == "network_kwargs" and "base_filters" in given)}


def settings_text(settings: dict[str, Any]) -> str:
    """`lr_step=0 patch_size=32,32,16 ...`: training settings as one line of the tables' header."""
    def text(value: Any) -> str:
        if isinstance(value, dict):
            return ",".join(f"{k}={text(v)}" for k, v in value.items())
        return ",".join(map(str, value)) if isinstance(value, list) else str(value)

    return " ".join(f"{name}={text(value)}" for name, value in settings.items())


def case_rows_of(evaluation: Evaluation, mode: str) -> list[dict]:
    run = evaluation.run
    with open(evaluation.output_dir / "metrics.csv", newline="") as f:
        metrics = list(csv.DictReader(f))
    rows = []
    for protocol in evaluation.protocols:
        for r in metrics:
            rows.append({**r, "mode": mode, "protocol": protocol, "budget": run.budget, "labelnum": run.labelnum,
                         "method": run.method, "role": run.role, "seed": run.seed,
                         "schedule": run.schedule_label, "iterations": run.total_iterations,
                         "checkpoint": str(run.run_dir / evaluation.checkpoint),
                         **{k: float(r[k]) for k in ("dice", "jaccard", "hd95", "asd", "assd")}})
    return rows


# ---- the grid ------------------------------------------------------------------------------------------------


def shortened(max_iteration: int | None, extra: list[str]) -> str:
    what = [f"{max_iteration:,} iterations per run instead of each method's schedule"] if max_iteration else []
    return "; ".join(what + ([f"extra train flags {shlex.join(extra)}"] if extra else []))


def run_grid(options: GridOptions) -> GridResult:
    options = replace(options, seeds=list(options.seeds), protocols=list(options.protocols))
    check_settings(options)  # each setting's declared choices and minimum
    dataset = options.dataset
    check_launcher(options)
    mode = mode_of(options)
    runs_dir = Path(options.runs_dir or ("model/reproduce_quick" if options.quick else "model/reproduce"))
    results_dir = Path(options.results_dir or ("results/quick" if options.quick else "results"))
    extra = list(options.train_args)
    train_settings = train_args_settings(dataset, extra)
    budgets = list(options.budgets)
    max_iteration = options.max_iteration
    if options.quick:
        synthetic = not options.root_path
        options.root_path, options.lists_dir, quick_budgets = quick_data(dataset, options.root_path, runs_dir)
        budgets = budgets or quick_budgets
        max_iteration = options.max_iteration or QUICK_ITERATIONS
        options.num_workers = 0
        train_settings = {**quick_train_settings(dataset, synthetic), **train_settings}
    budgets = budgets or DEFAULT_BUDGETS[dataset]
    methods = list(dict.fromkeys(options.methods or all_methods()))
    check_reference(options.reference)
    plan = plan_grid(dataset, budgets, methods, options.seeds, options.protocols, runs_dir, max_iteration,
                     options.lists_dir, options.schedule)
    lists_dir = get_dataset(dataset).lists_dir(options.lists_dir)
    settings = CellSettings(device=options.device, num_workers=options.num_workers, root_path=options.root_path,
                            lists_dir=options.lists_dir, test_list=str(lists_dir / "test.list"),
                            progress=options.progress, train_settings=train_settings)
    cells = [Cell(run, [e for e in plan.evaluations if e.run == run], settings) for run in plan.runs]
    for cell in cells:  # every cell's settings are checked before the first hour of training
        train_config(cell.run, settings)
    banner = QUICK_BANNER if options.quick else (f"*** {SHORTENED_MODE} ({shortened(max_iteration, extra)}) ***"
                                                 if mode == SHORTENED_MODE else "")
    # docs/speed.md's times are of the full shapes: not for --quick's tiny ones
    timings = load_timings(runs_dir, options.timing, documented=not options.quick)
    result = GridResult(plan, mode=mode)
    data_ready, data_line = (True, "") if options.quick or options.status or options.aggregate else \
        check_grid_data(dataset, options.root_path or f"./data/{dataset}", options.lists_dir)
    if options.dry_run:
        print(format_plan(plan, timings, banner))
        if data_line:
            print(f"data: {data_line}" if data_ready else f"data: NOT READY: {data_line}")
        return result
    if not data_ready:  # before the first cell, not at it
        raise FileNotFoundError(data_line)
    if options.status:
        print(format_status([cell_state(cell) for cell in cells], timings, banner))
        return result
    if banner:
        print(banner, flush=True)

    if options.aggregate:
        pass
    elif options.launcher == "sequential":
        run_sequential(cells, options.keep_going, result)
    elif options.launcher == "local":
        run_in_processes(cells, options, result)
    elif not submit_grid(cells, options, runs_dir, result):
        return result  # submitted without --wait: the tables come from a later --aggregate
    header = header_lines(options, plan, mode, max_iteration, train_settings, banner, runs_dir)
    if options.reference not in methods:
        header.append(f"Note: no paired comparison: the reference method {options.reference} is not in --methods "
                      f"(add it, or choose another with --reference).")
    write_tables(cells, results_dir, dataset, mode, header, result, options.reference)
    print(format_summary(result, banner))
    return result


# ---- the launchers -------------------------------------------------------------------------------------------


def check_launcher(options: GridOptions) -> None:
    """Flags of one launcher given to another are refused rather than ignored."""
    launcher = options.launcher
    if (options.gpus or options.jobs is not None) and launcher != "local":
        raise UserError("--gpus and --jobs set how many cells --launcher local runs at a time; add --launcher local")
    if launcher == "local":
        local_slots(options.gpus, options.jobs, options.device)  # refuses what cannot work (--gpus on CPU, ...)
    if options.wait and launcher not in SUBMITIT_LAUNCHERS:
        raise UserError("--wait is for --launcher slurm (the other launchers always wait)")
    if options.slurm.gpus_per_job is None:
        options.slurm = replace(options.slurm, gpus_per_job=0 if options.device == "cpu" else 1)
    if options.slurm.gpus_per_job not in (0, 1):
        raise UserError(f"--gpus_per_job {options.slurm.gpus_per_job}: a cell trains in one process on one GPU "
                        f"(0 = a CPU job); to train one run on several GPUs use torchrun (docs/multi-gpu.md)")


def claimed_elsewhere(cell: Cell) -> str:
    """Why another launch has this cell ('' when it is free): a live lock, or a batch job that has not ended."""
    holder = live_holder(cell.run_dir)
    if holder is not None:
        return f"being worked on by {holder.describe()}"
    job = submitted_job(cell.run_dir)
    if job and job_active(job.get("job_id", "")) and not cell_complete(cell):
        return f"submitted as job {short_job_id(job['job_id'])}, which has not ended"
    return ""


@contextlib.contextmanager
def cell_output(log: Path):
    """What a cell prints (its log lines, progress bar, test table) goes to its job log, as with --launcher local;
    the grid's own lines stay on the terminal."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} started by reproduce.py (sequential, pid {os.getpid()})\n")
        f.flush()
        with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            yield


def run_sequential(cells: list[Cell], keep_going: bool, result: GridResult) -> None:
    """Every cell in this process, one after another (the default launcher)."""
    for number, cell in enumerate(cells, start=1):
        label = f"[{number}/{len(cells)}] {cell.label()}"
        try:
            claimed = claimed_elsewhere(cell)
            if claimed:
                result.busy[str(cell.run_dir)] = claimed
                print(f"{label}: {claimed}; skipped", flush=True)
                continue
            status = cell.run.status()
            print(f"{label}: {'finished, reused' if status == 'finished' else status + ', training'} (output: "
                  f"{cell.run_dir / JOB_LOG})", flush=True)
            with cell_output(cell.run_dir / JOB_LOG):
                outcome = run_cell(cell)
            (result.trained if outcome.trained else result.skipped).append(cell.run_dir)
            if outcome.took_over:
                print(f"{label}: took over a stale lock ({outcome.took_over})", flush=True)
            if outcome.trained:
                print(f"{label}: trained {outcome.iterations} iterations in {outcome.seconds:.0f} s", flush=True)
            result.tested += outcome.tested
        except CellBusy as exc:
            result.busy[str(cell.run_dir)] = str(exc)
            print(f"{label}: {exc}", flush=True)
        except USER_ERRORS as exc:
            if not keep_going:
                raise
            result.failed[str(cell.run_dir)] = str(exc)
            print(f"{label}: FAILED ({exc}); continuing (--keep_going)", file=sys.stderr, flush=True)


def cells_to_launch(cells: list[Cell], result: GridResult, keep_going: bool) -> list[Cell]:
    """The cells that still need work and that no other launch has; the finished ones count as reused."""
    todo = []
    for number, cell in enumerate(cells, start=1):
        try:
            complete = cell_complete(cell)
        except UserError as exc:  # e.g. its folder holds a longer finished run
            if not keep_going:
                raise
            result.failed[str(cell.run_dir)] = str(exc)
            print(f"[{number}/{len(cells)}] {cell.label()}: FAILED ({exc}); continuing (--keep_going)",
                  file=sys.stderr, flush=True)
            continue
        if complete:
            result.skipped.append(cell.run_dir)
            continue
        claimed = claimed_elsewhere(cell)
        if claimed:
            result.busy[str(cell.run_dir)] = claimed
            print(f"[{number}/{len(cells)}] {cell.label()}: {claimed}; skipped", flush=True)
            continue
        todo.append(cell)
    return todo


def collect(cells: list[Cell], report: LaunchReport, before: dict[Path, tuple[bool, set[Path]]],
            result: GridResult) -> None:
    """What the launched cells did, from their run folders (trained, tested) and the launcher's report."""
    for cell in cells:
        key = str(cell.run_dir)
        if key in report.failed:
            result.failed[key] = report.failed[key]
        elif key in report.busy:
            result.busy[key] = report.busy[key]
        elif key in report.finished:
            was_trained, was_tested = before[cell.run_dir]
            (result.skipped if was_trained else result.trained).append(cell.run_dir)
            result.tested += [e.output_dir for e in cell.evaluations if e.output_dir not in was_tested]


def state_before(cells: list[Cell]) -> dict[Path, tuple[bool, set[Path]]]:
    return {cell.run_dir: (cell.run.status() == "finished",
                           {e.output_dir for e in cell.evaluations if test_is_current(e)}) for cell in cells}


def run_in_processes(cells: list[Cell], options: GridOptions, result: GridResult) -> None:
    """--launcher local: one process per cell, as many at a time as there are slots (GPUs or --jobs)."""
    slots = local_slots(options.gpus, options.jobs, options.device)
    todo = cells_to_launch(cells, result, options.keep_going)
    print(f"{len(todo)} of {len(cells)} cells to run, {len(slots)} at a time "
          f"({'GPUs ' + ','.join(map(str, slots)) if options.gpus else 'CPU'}); each cell's output: "
          f"<run folder>/{JOB_LOG}", flush=True)
    before = state_before(todo)
    report = run_local(todo, slots, options.keep_going)
    collect(todo, report, before, result)
    if report.failed and not options.keep_going:
        raise UserError(f"{len(report.failed)} cell(s) failed, e.g. {next(iter(report.failed))}: "
                        f"{next(iter(report.failed.values()))} (--keep_going writes the tables of the others)")


def submit_grid(cells: list[Cell], options: GridOptions, runs_dir: Path, result: GridResult) -> bool:
    """--launcher slurm (or submitit_local): submit every cell that needs work; True when the jobs were waited
    for (then the tables follow)."""
    todo = cells_to_launch(cells, result, options.keep_going)
    if not todo:
        print("nothing to submit: every cell is finished or held by another launch", flush=True)
        return True
    cluster = "slurm" if options.launcher == "slurm" else "local"
    folder = runs_dir / "submitit"
    before = state_before(todo)
    jobs = submit_cells(todo, cluster, folder, options.slurm, options.num_workers)
    result.jobs = {str(cell.run_dir): job.job_id for cell, job in zip(todo, jobs, strict=True)}
    if not options.wait:
        print(f"submitted {len(jobs)} job(s); job logs: {folder}. Follow them with the same command plus --status "
              f"(on any machine that sees {runs_dir}); when every cell is finished, the same command plus "
              f"--aggregate writes the tables.", flush=True)
        return False
    report = wait_for_jobs(jobs, todo, poll_seconds=30.0 if cluster == "slurm" else 1.0)
    collect(todo, report, before, result)
    return True


# ---- the tables ----------------------------------------------------------------------------------------------


def check_reference(reference: str) -> None:
    from methods import check_method_name

    try:
        check_method_name(reference)
    except UserError as exc:
        raise UserError(f"--reference: {exc}") from None


def write_tables(cells: list[Cell], results_dir: Path, dataset: str, mode: str, header: list[str],
                 result: GridResult, reference: str = "supervised") -> None:
    """The tables from the finished cells only; the cells still missing are named in the header."""
    case_rows: list[dict] = []
    notes: list[str] = []
    for cell in cells:
        try:
            complete = cell_complete(cell)
        except UserError:
            complete = False
        if not complete:
            result.missing.append(str(cell.run_dir))
            continue
        note = selection_note(cell.run)
        if note and note not in notes:
            notes.append(note)
        for evaluation in cell.evaluations:
            case_rows += case_rows_of(evaluation, mode)
    header = header + [f"Note: {n}." for n in notes]
    if result.missing:
        header.append(f"**Missing: {len(result.missing)} of {len(cells)} cells are not finished and are left out "
                      f"of these tables** (`reproduce.py ... --status` lists them).")
    if not case_rows:
        print(f"no finished cell yet ({len(cells)} missing): no tables written", flush=True)
        return
    result.outputs = write_results(results_dir, dataset, case_rows, load_paper_results(), header,
                                   reference=reference)
    print(result.outputs["md"].read_text())


def selection_note(run: Run) -> str:
    """A run whose schedule ended before the first evaluation has best = last: say so beside its numbers."""
    path = run.run_dir / "result.json"
    if not path.is_file() or json.loads(path.read_text()).get("selections"):
        return ""
    return (f"{run.method} {run.budget} labeled, --select {run.select}: no evaluation ran before iteration "
            f"{run.max_iteration} (evaluations start later), so its best checkpoint is the last one")


def header_lines(options: GridOptions, plan: Plan, mode: str, max_iteration: int | None,
                 train_settings: dict[str, Any], banner: str, runs_dir: Path) -> list[str]:
    lines = []
    if banner:
        lines += [f"> **{banner.strip('*').strip() if not options.quick else QUICK_MODE}**. "
                  + ("Tiny data and schedule: these numbers prove the machinery and say nothing about SS-Net."
                     if options.quick else "A shortened run is never the paper's setting."), ""]
    seeds = sorted({r.seed for r in plan.runs})
    which = ("each baseline on its authors' recipe, SS-Net and the labeled-only bounds on SS-Net's "
             "(`--schedule recipe`; docs/baselines.md)" if options.schedule == "recipe" else
             "SS-Net's schedule for every method (`--schedule shared`), not the baselines' published recipes")
    lengths = ", ".join(f"{m} {n:,}" + (f" (after a {p:,}-iteration pre-train)" if p else "")
                        for m, n, p in dict.fromkeys((r.method, r.max_iteration, r.pretrain_iterations)
                                                     for r in plan.runs))
    published = ("Published numbers: left out (synthetic or tiny data cannot be compared with them)."
                 if options.quick else f"Published numbers: `{PAPER_RESULTS.relative_to(PAPER_RESULTS.parents[1])}` "
                                       f"(source of each row in the CSV).")
    changed = f"; training settings of every run: {settings_text(train_settings)}" if train_settings else ""
    lines += [f"Mode: **{mode}**. Schedules: {which}; iterations per run: {lengths}"
              f"{' (shortened)' if max_iteration else ''}{changed}.",
              f"Seeds: {', '.join(map(str, seeds))}. Runs: `{runs_dir}`. {published}",
              f"Files: `{options.dataset}.csv` (this table), `{options.dataset}_cases.csv` (every case, class, "
              f"seed and protocol), `{options.dataset}_paired.csv` (paired statistics against {options.reference}), "
              f"`{options.dataset}_paired_cases.csv` (their per-case differences), `{options.dataset}.png` and, with "
              f"several budgets, `{options.dataset}_budgets.png`."]
    lines += [f"Note: {n}." for n in plan.notes]
    return lines


def format_summary(result: GridResult, banner: str) -> str:
    lines = [f"trained or resumed: {len(result.trained)} run(s); reused finished: {len(result.skipped)}; "
             f"tested now: {len(result.tested)}"]
    lines += [f"{name}: {path}" for name, path in result.outputs.items()]
    lines += [f"FAILED {path}: {message}" for path, message in result.failed.items()]
    lines += [f"SKIPPED {path}: {message}" for path, message in result.busy.items()]
    cells = len(result.plan.runs)
    lines.append(f"cells in the tables: {cells - len(result.missing)} of {cells}"
                 f"{' (the others are not finished: --status lists them)' if result.missing else ''}")
    if banner:
        lines.append(banner)
    return "\n".join(lines)
