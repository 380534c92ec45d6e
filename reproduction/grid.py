"""Run a reproduction grid: train (or resume, or reuse) every run, test its checkpoints, write the results."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import shlex
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from dataloaders import get_dataset, make_synthetic_la, read_list
from dataloaders.acdc import acdc_slice_path, acdc_volume_path
from dataloaders.la import la_case_path
from reproduction.aggregate import write_results
from reproduction.paper import PAPER_RESULTS, load_paper_results
from reproduction.plan import (
    DEFAULT_BUDGETS,
    TIMING_FILE,
    Evaluation,
    Plan,
    Run,
    format_plan,
    load_timings,
    plan_grid,
    timing_record,
)
from reproduction.rows import FULL_MODE, QUICK_MODE, SHORTENED_MODE
from training.config import TrainConfig
from training.flags import build_train_parser, config_from_args
from utils.atomic import write_text_atomic
from utils.cli import USER_ERRORS
from utils.errors import UserError

QUICK_BANNER = ("*" * 100 + "\n*** QUICK MODE: a tiny schedule on tiny data. It proves the machinery; it is NOT a "
                "reproduction of the paper. ***\n" + "*" * 100)
QUICK_ITERATIONS = 20


@dataclass
class GridOptions:
    dataset: str
    budgets: list[str] = field(default_factory=list)  # empty: the paper's budgets plus 'all'
    methods: list[str] = field(default_factory=list)  # empty: every registered method
    seeds: list[int] = field(default_factory=lambda: [1337, 1338, 1339])
    protocols: list[str] = field(default_factory=lambda: ["paper", "honest"])
    root_path: str = ""
    lists_dir: str = ""
    runs_dir: str = ""  # default model/reproduce (quick: model/reproduce_quick)
    results_dir: str = ""  # default results (quick: results/quick)
    device: str = "cpu"
    num_workers: int = 4
    max_iteration: int | None = None  # None: each method's schedule (see `schedule`)
    schedule: str = "recipe"  # recipe: each baseline on its authors' schedule; shared: SS-Net's for every method
    train_args: list[str] = field(default_factory=list)  # extra train flags for every run (mark the schedule changed)
    quick: bool = False
    dry_run: bool = False
    timing: str = ""
    keep_going: bool = False
    progress: bool = False


@dataclass
class GridResult:
    plan: Plan
    trained: list[Path] = field(default_factory=list)  # run folders trained (or resumed) in this session
    skipped: list[Path] = field(default_factory=list)  # finished runs reused
    tested: list[Path] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
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


def quick_train_flags(dataset: str, synthetic: bool) -> list[str]:
    # Independent of --max_iteration, so a quick run can be extended (resumed) with a longer schedule.
    common = ["--lr_step", "0", "--consistency_rampup", "1", "--eval_start", "1", "--eval_every", "2",
              "--save_every", "2", "--image_every", "0", "--eval_batch_size", "8"]
    if dataset == "LA":
        patch, stride = ("32,32,16", "16,16,8") if synthetic else ("64,64,32", "32,32,16")
        return [*common, "--patch_size", patch, "--stride", stride, "--base_filters", "4"]
    return [*common, "--patch_size", "64,64", "--batch_size", "4", "--labeled_bs", "2"]


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
        if len({s.split("_", 1)[0] for s in slices}) < 2 or not val or not test:
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


def check_train_args(dataset: str, extra: list[str]) -> None:
    """--train_args: only flags of the train script that the grid does not set itself, with valid values."""
    reserved = [f for f in extra if f.split("=")[0] in GRID_FLAGS]
    if reserved:
        raise UserError(f"--train_args: {', '.join(reserved)} is set by reproduce.py for every cell; use "
                         f"reproduce.py's own flags (--methods, --labelnum, --seeds, --protocol, ...)")
    parser = build_train_parser(dataset, "")
    parser.exit_on_error = False
    try:
        _, unknown = parser.parse_known_args(extra)
    except argparse.ArgumentError as exc:
        raise UserError(f"--train_args: {exc}") from None
    if unknown:
        raise UserError(f"--train_args: {' '.join(unknown)} is not a flag of train_{dataset.lower()}.py "
                         f"(python train_{dataset.lower()}.py -h lists them)")


def train_config(run: Run, options: GridOptions, extra_flags: list[str]) -> TrainConfig:
    flags = ["--method", run.method, "--labelnum", str(run.labelnum), "--seed", str(run.seed), "--select", run.select,
             "--run_dir", str(run.run_dir), "--max_iteration", str(run.max_iteration), "--schedule", run.schedule,
             "--device", options.device,
             "--num_workers", str(options.num_workers), "--exp", f"{run.dataset}_reproduce", *extra_flags]
    if options.root_path:
        flags += ["--root_path", options.root_path]
    if options.lists_dir:
        flags += ["--lists_dir", options.lists_dir]
    if not options.progress:
        flags.append("--no_progress")
    return config_from_args(build_train_parser(run.dataset, "").parse_args(flags), run.dataset)


def train_run(run: Run, options: GridOptions, extra_flags: list[str]) -> tuple[bool, float, int]:
    """(trained now?, seconds, iterations done now); a finished run is reused, a partial one resumes."""
    from training import train

    status = run.status()
    if status == "finished":
        return False, 0.0, 0
    config = train_config(run, options, extra_flags)
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


def test_evaluation(evaluation: Evaluation, options: GridOptions, lists_dir: Path) -> bool:
    """Test the checkpoint on the test list unless an up-to-date result is there; True when tested now."""
    from evaluation import TestOptions, run_test

    if test_is_current(evaluation):
        return False
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # the per-run table goes to a file; the grid prints its own summary
        run_test(TestOptions(dataset=evaluation.run.dataset, checkpoint=str(evaluation.run.run_dir /
                                                                            evaluation.checkpoint),
                             root_path=options.root_path or f"./data/{evaluation.run.dataset}",
                             list_path=str(lists_dir / "test.list"), device=options.device, progress=False,
                             output_dir=str(evaluation.output_dir)))
    write_text_atomic(evaluation.output_dir / "table.txt", out.getvalue())
    return True


def case_rows_of(evaluation: Evaluation, mode: str) -> list[dict]:
    import csv

    run = evaluation.run
    with open(evaluation.output_dir / "metrics.csv", newline="") as f:
        metrics = list(csv.DictReader(f))
    rows = []
    for protocol in evaluation.protocols:
        for r in metrics:
            rows.append({**r, "mode": mode, "protocol": protocol, "budget": run.budget, "labelnum": run.labelnum,
                         "method": run.method, "role": run.role, "seed": run.seed,
                         "schedule": run.schedule_label, "iterations": run.max_iteration,
                         "checkpoint": str(run.run_dir / evaluation.checkpoint),
                         **{k: float(r[k]) for k in ("dice", "jaccard", "hd95", "asd", "assd")}})
    return rows


# ---- the grid ------------------------------------------------------------------------------------------------


def shortened(max_iteration: int | None, extra: list[str]) -> str:
    what = [f"{max_iteration:,} iterations per run instead of each method's schedule"] if max_iteration else []
    return "; ".join(what + ([f"extra train flags {shlex.join(extra)}"] if extra else []))


def run_grid(options: GridOptions) -> GridResult:
    options = replace(options, seeds=list(options.seeds), protocols=list(options.protocols))
    dataset = options.dataset
    if dataset not in ("LA", "ACDC"):
        raise UserError(f"unknown --dataset {dataset!r}; choose from: LA, ACDC")
    mode = mode_of(options)
    runs_dir = Path(options.runs_dir or ("model/reproduce_quick" if options.quick else "model/reproduce"))
    results_dir = Path(options.results_dir or ("results/quick" if options.quick else "results"))
    extra = list(options.train_args)
    budgets = list(options.budgets)
    max_iteration = options.max_iteration
    if options.quick:
        synthetic = not options.root_path
        options.root_path, options.lists_dir, quick_budgets = quick_data(dataset, options.root_path, runs_dir)
        budgets = budgets or quick_budgets
        max_iteration = options.max_iteration or QUICK_ITERATIONS
        options.num_workers = 0
        extra = quick_train_flags(dataset, synthetic) + extra
    budgets = budgets or DEFAULT_BUDGETS[dataset]
    methods = list(dict.fromkeys(options.methods or all_methods()))
    check_train_args(dataset, list(options.train_args))
    plan = plan_grid(dataset, budgets, methods, options.seeds, options.protocols, runs_dir, max_iteration,
                     options.lists_dir, options.schedule)
    for run in plan.runs:  # every cell's settings are checked before the first hour of training
        train_config(run, options, extra)
    banner = QUICK_BANNER if options.quick else (f"*** {SHORTENED_MODE} ({shortened(max_iteration, extra)}) ***"
                                                 if mode == SHORTENED_MODE else "")
    timings = load_timings(runs_dir, options.timing)
    result = GridResult(plan, mode=mode)
    if options.dry_run:
        print(format_plan(plan, timings, banner))
        return result
    if banner:
        print(banner, flush=True)
    lists_dir = get_dataset(dataset).lists_dir(options.lists_dir)

    case_rows: list[dict] = []
    for number, run in enumerate(plan.runs, start=1):
        label = (f"[{number}/{len(plan.runs)}] {dataset} {run.budget} labeled ({run.labelnum}), {run.method}, "
                 f"seed {run.seed}, --select {run.select}")
        try:
            status = run.status()
            print(f"{label}: {'finished, reused' if status == 'finished' else status + ', training'}", flush=True)
            trained, seconds, iterations = train_run(run, options, extra)
            (result.trained if trained else result.skipped).append(run.run_dir)
            if trained:
                print(f"{label}: trained {iterations} iterations in {seconds:.0f} s", flush=True)
            note = selection_note(run)
            if note and note not in plan.notes:
                plan.notes.append(note)
            for evaluation in (e for e in plan.evaluations if e.run == run):
                if test_evaluation(evaluation, options, lists_dir):
                    result.tested.append(evaluation.output_dir)
                case_rows += case_rows_of(evaluation, mode)
        except USER_ERRORS as exc:
            if not options.keep_going:
                raise
            result.failed[str(run.run_dir)] = str(exc)
            print(f"{label}: FAILED ({exc}); continuing (--keep_going)", file=sys.stderr, flush=True)

    header = header_lines(options, plan, mode, max_iteration, extra, banner, runs_dir)
    result.outputs = write_results(results_dir, dataset, case_rows, load_paper_results(), header)
    print(result.outputs["md"].read_text())
    print(format_summary(result, banner))
    return result


def selection_note(run: Run) -> str:
    """A run whose schedule ended before the first evaluation has best = last: say so beside its numbers."""
    path = run.run_dir / "result.json"
    if not path.is_file() or json.loads(path.read_text()).get("selections"):
        return ""
    return (f"{run.method} {run.budget} labeled, --select {run.select}: no evaluation ran before iteration "
            f"{run.max_iteration} (evaluations start later), so its best checkpoint is the last one")


def header_lines(options: GridOptions, plan: Plan, mode: str, max_iteration: int | None, extra: list[str],
                 banner: str, runs_dir: Path) -> list[str]:
    lines = []
    if banner:
        lines += [f"> **{banner.strip('*').strip() if not options.quick else QUICK_MODE}**. "
                  + ("Tiny data and schedule: these numbers prove the machinery and say nothing about SS-Net."
                     if options.quick else "A shortened run is never the paper's setting."), ""]
    seeds = sorted({r.seed for r in plan.runs})
    which = ("each baseline on its authors' recipe, SS-Net and the labeled-only bounds on SS-Net's "
             "(`--schedule recipe`; docs/baselines.md)" if options.schedule == "recipe" else
             "SS-Net's schedule for every method (`--schedule shared`), not the baselines' published recipes")
    lengths = ", ".join(f"{m} {n:,}" for m, n in dict.fromkeys((r.method, r.max_iteration) for r in plan.runs))
    published = ("Published numbers: left out (synthetic or tiny data cannot be compared with them)."
                 if options.quick else f"Published numbers: `{PAPER_RESULTS.relative_to(PAPER_RESULTS.parents[1])}` "
                                       f"(source of each row in the CSV).")
    lines += [f"Mode: **{mode}**. Schedules: {which}; iterations per run: {lengths}"
              f"{' (shortened)' if max_iteration else ''}"
              f"{'; extra train flags: ' + shlex.join(extra) if extra else ''}.",
              f"Seeds: {', '.join(map(str, seeds))}. Runs: `{runs_dir}`. {published}",
              f"Files: `{options.dataset}.csv` (this table), `{options.dataset}_cases.csv` (every case, class, "
              f"seed and protocol), `{options.dataset}_paired.csv` (paired statistics), `{options.dataset}.png`."]
    lines += [f"Note: {n}." for n in plan.notes]
    return lines


def format_summary(result: GridResult, banner: str) -> str:
    lines = [f"trained or resumed: {len(result.trained)} run(s); reused finished: {len(result.skipped)}; "
             f"tested now: {len(result.tested)}"]
    lines += [f"{name}: {path}" for name, path in result.outputs.items()]
    lines += [f"FAILED {path}: {message}" for path, message in result.failed.items()]
    if banner:
        lines.append(banner)
    return "\n".join(lines)
