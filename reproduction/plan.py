"""The grid of a reproduction: which training runs, which checkpoints are tested under which protocol.

Protocols (every number written says which one produced it):

* ``paper``: the published selection. LA: the checkpoint with the best Dice on the **test** set, scored every
  200 iterations from 2,000, with the validation cases in the unlabeled pool (a run with ``--select test``).
  ACDC: the best mean Dice on the validation set (``--select val``).
* ``honest-val``: the best checkpoint on the validation list only; on LA the validation cases (last 8 ids of
  train.list) are held out of training (a run with ``--select val``). The test set is touched once, at the end.
* ``honest-last``: the final weights of that same run, no selection.

So LA trains two runs per cell (``select_test`` for paper, ``select_val`` for honest) and ACDC one, whose best
checkpoint is both the paper's and the honest-val number (tested once, reported under both names).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from dataloaders import get_dataset, read_list
from dataloaders.splits import patient_of
from training.checkpoints import list_checkpoints
from training.config import method_schedule
from utils.errors import UserError

PROTOCOL_CHOICES = ("paper", "honest")
REPORTS = {  # protocol asked on the command line -> reported protocols
    "paper": ("paper",),
    "honest": ("honest-val", "honest-last"),
}
PAPER_SELECTION = {"LA": "test", "ACDC": "val"}  # which list chose the published checkpoints
CHECKPOINTS = {"paper": "best_model.pth", "honest-val": "best_model.pth", "honest-last": "last_model.pth"}
DEFAULT_BUDGETS = {"LA": ["4", "8", "all"], "ACDC": ["3", "7", "all"]}
ALL = "all"
TIMING_FILE = "reproduce_timing.json"
# Measured seconds per iteration published in docs/speed.md (tests/test_reproduce.py keeps them equal): the
# estimate's starting point until a run of this grid (or --timing FILE) measures the machine it runs on.
DOCUMENTED_TIMES = {
    ("LA", "ss_net"): (26.7, "the default SS-Net step at 112x112x80, batch 4, median of three quiet runs"),
    ("ACDC", "ss_net"): (39.1, "the default SS-Net step at 256x256, batch 24, measured while the machine was busy"),
}
DOCUMENTED_MACHINE = "the CPU machine of docs/speed.md (2 cores, AMD EPYC, torch 2.13 CPU, 2 threads)"


def describe_protocol(protocol: str, dataset: str) -> str:
    if protocol == "paper":
        if PAPER_SELECTION[dataset] == "test":
            return ("paper: best Dice on the TEST set (the published protocol; validation cases in the unlabeled "
                    "pool) -- test-set selection, optimistic by construction")
        return "paper: best mean Dice on the validation set (the published protocol; same checkpoint as honest-val)"
    if protocol == "honest-val":
        held = " (held out of training)" if dataset == "LA" else ""
        return f"honest-val: best Dice on the validation list{held}; test set used once"
    if protocol == "honest-last":
        return "honest-last: final weights, no selection; test set used once"
    raise UserError(f"unknown protocol {protocol!r}")


@dataclass(frozen=True)
class Run:
    """One training run of the grid."""

    dataset: str
    budget: str  # "4", "8", ... or "all" (the fully supervised upper bound)
    labelnum: int  # cases (LA) / patients (ACDC) labeled
    method: str
    seed: int
    select: str  # "test" or "val": the --select of the run
    max_iteration: int
    run_dir: Path
    schedule: str = "recipe"  # --schedule of the run
    schedule_label: str = "SS-Net"  # "recipe" (the method's authors' schedule) or "SS-Net" (SS-Net's)
    pretrain_iterations: int = 0  # a two-stage method's first stage (BCP), run before max_iteration

    @property
    def total_iterations(self) -> int:
        """Both stages' iterations: what the run costs."""
        return self.pretrain_iterations + self.max_iteration

    @property
    def role(self) -> str:
        if self.budget == ALL:
            return "upper_bound"
        return "lower_bound" if self.method == "supervised" else "method"

    def status(self) -> str:
        """finished | partial (resume checkpoints or a shorter finished run) | new."""
        result = self.run_dir / "result.json"
        if result.is_file():
            try:
                done = json.loads(result.read_text())
            except json.JSONDecodeError:
                done = {}
            finished_at = done.get("max_iteration")
            if done.get("finished") and finished_at == self.max_iteration:
                return "finished"
            if isinstance(finished_at, int) and finished_at > self.max_iteration:
                raise UserError(f"{self.run_dir} holds a finished run of {finished_at} iterations, longer than the "
                                 f"{self.max_iteration} asked; raise --max_iteration or use another --runs_dir")
        return "partial" if list_checkpoints(self.run_dir) else "new"

    def training_log(self) -> tuple[Path, int]:
        """(the folder whose log.txt the training writes now, the iterations done before that log's first): a
        two-stage run logs its first stage in RUN_DIR/pretrain, then its main stage in RUN_DIR, whose iteration
        numbers start again at 1 after the pretrain_iterations."""
        if self.pretrain_iterations and not (self.run_dir / "pretrain" / "result.json").is_file():
            return self.run_dir / "pretrain", 0
        return self.run_dir, self.pretrain_iterations

    def done_iterations(self) -> int:
        """Iterations trained so far, both stages of a two-stage run counted."""
        if self.status() == "finished":
            return self.total_iterations
        saved = list_checkpoints(self.run_dir)
        pretrain = 0
        if self.pretrain_iterations:  # training/stages.py: the first stage runs in RUN_DIR/pretrain
            first = self.run_dir / "pretrain"
            first_saved = list_checkpoints(first) if first.is_dir() else []
            pretrain = self.pretrain_iterations if (first / "result.json").is_file() else \
                (first_saved[-1][0] if first_saved else 0)
        return pretrain + (saved[-1][0] if saved else 0)


@dataclass(frozen=True)
class Evaluation:
    """A checkpoint of a run, tested on the test list and reported under one or more protocols."""

    run: Run
    checkpoint: str  # best_model.pth | last_model.pth
    protocols: tuple[str, ...]

    @property
    def output_dir(self) -> Path:
        return self.run.run_dir / f"test_{Path(self.checkpoint).stem}"


@dataclass
class Plan:
    dataset: str
    runs: list[Run]
    evaluations: list[Evaluation]
    notes: list[str] = field(default_factory=list)


def parse_budget(text: str) -> str:
    text = str(text).strip().lower()
    if text == ALL:
        return ALL
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"--labelnum takes positive integers or 'all', got {text!r}")
    return str(int(text))


def all_labels(dataset: str, select: str, lists_dir: Path) -> int:
    """Labeled cases of the upper bound: every training case the split allows (LA honest: minus val.list)."""
    if dataset == "LA":
        train = read_list(lists_dir / "train.list")
        if select == "val":
            val = set(read_list(lists_dir / "val.list"))
            return len([c for c in train if c not in val])
        return len(train)
    slices = read_list(lists_dir / "train_slices.list")
    return len(dict.fromkeys(patient_of(s) for s in slices))


def plan_grid(dataset: str, budgets: list[str], methods: list[str], seeds: list[int], protocols: list[str],
              runs_dir: str | Path, max_iteration: int | None, lists_dir: str | Path = "",
              schedule: str = "recipe") -> Plan:
    """Runs and evaluations, in a fixed order (budget, method, seed, selection).

    `schedule` recipe: each method trains with its authors' schedule (the published baseline rows), shared: with
    SS-Net's; `max_iteration` (not None) overrides every run's length. A baseline on SS-Net's schedule gets its
    own run folders (suffix `_shared`), so both schedules of a method can sit side by side."""
    from methods import check_method_name

    lists = get_dataset(dataset).lists_dir(lists_dir)
    for name in methods:
        check_method_name(name)
    for protocol in protocols:
        if protocol not in PROTOCOL_CHOICES:
            raise UserError(f"unknown --protocol {protocol!r}; choose from: {', '.join(PROTOCOL_CHOICES)}")
    if not seeds or not methods or not budgets or not protocols:
        raise UserError("the grid is empty: give at least one --labelnum, --methods, --seeds and --protocol")
    budgets = list(dict.fromkeys(parse_budget(b) for b in budgets))

    # selection of each run -> the reported protocols it serves, and which checkpoint each one tests
    serves: dict[str, list[str]] = {}
    for protocol in dict.fromkeys(protocols):
        for report in REPORTS[protocol]:
            select = PAPER_SELECTION[dataset] if report == "paper" else "val"
            serves.setdefault(select, []).append(report)

    notes = []
    runs, evaluations = [], []
    for budget in budgets:
        budget_methods = methods if budget != ALL else ["supervised"]
        if budget == ALL and "supervised" not in methods:
            notes.append("budget 'all' is the fully supervised upper bound: it runs the supervised method only")
        for method in dict.fromkeys(budget_methods):
            for seed in dict.fromkeys(seeds):
                for select, reports in serves.items():
                    labelnum = all_labels(dataset, select, lists) if budget == ALL else int(budget)
                    label, method_plan = method_schedule(method, dataset, schedule)
                    _, recipe_plan = method_schedule(method, dataset, "recipe")
                    suffix = "_shared" if method_plan != recipe_plan else ""
                    run_dir = (Path(runs_dir) / dataset / f"{budget}_labeled" / method
                               / f"seed{seed}_select_{select}{suffix}")
                    iterations = max_iteration if max_iteration is not None else method_plan.max_iteration
                    # a first stage keeps its recipe length, shortened with the run (never longer than it)
                    pretrain = recipe_plan.pretrain_iterations
                    if max_iteration is not None:
                        pretrain = min(pretrain, max_iteration)
                    run = Run(dataset, budget, labelnum, method, seed, select, iterations, run_dir, schedule, label,
                              pretrain)
                    runs.append(run)
                    by_checkpoint: dict[str, list[str]] = {}
                    for report in reports:
                        by_checkpoint.setdefault(CHECKPOINTS[report], []).append(report)
                    evaluations += [Evaluation(run, ckpt, tuple(r)) for ckpt, r in by_checkpoint.items()]
    if dataset == "LA" and ALL in budgets and "honest" in protocols:
        notes.append(f"LA upper bound under the honest protocols: {all_labels(dataset, 'val', lists)} labeled "
                     f"(train.list minus the held-out val.list)")
    return Plan(dataset, runs, evaluations, notes)


# ---- the data the grid needs ----------------------------------------------------------------------------------


def check_grid_data(dataset: str, root_path: str | Path, lists_dir: str | Path = "") -> tuple[bool, str]:
    """(every case of the grid's lists is under the root, one line saying so or what is missing and the fix)."""
    task = get_dataset(dataset)
    lists = task.lists_dir(lists_dir)
    if dataset == "LA":  # val.list is the tail of train.list
        train, evaluated = read_list(lists / "train.list"), read_list(lists / "test.list")
    else:
        train = read_list(lists / "train_slices.list")
        evaluated = read_list(lists / "val.list") + read_list(lists / "test.list")
    try:
        task.check_data(root_path, train, evaluated)
    except FileNotFoundError as exc:
        download = (f"; to get the data: python -m data.download {dataset.lower()} {root_path} (docs/data.md)"
                    if not Path(root_path).is_dir() else "")
        return False, f"{exc}{download}"
    return True, (f"every case of the lists in {lists} is under {root_path} ({task.describe_items(train)} to "
                  f"train, {len(evaluated)} to evaluate)")


# ---- measured iteration times and the GPU-hour estimate ----------------------------------------------------


def timing_record(run: Run, iterations: int, seconds: float, device: str, device_name: str) -> dict:
    return {"dataset": run.dataset, "method": run.method, "select": run.select, "iterations": iterations,
            "seconds": round(seconds, 2), "seconds_per_iteration": seconds / max(iterations, 1),
            "device": device, "device_name": device_name, "run_dir": str(run.run_dir)}


def load_timings(runs_dir: str | Path, timing_file: str | Path = "", documented: bool = False
                 ) -> dict[tuple[str, str], dict]:
    """{(dataset, method): {"seconds_per_iteration", "device_name", "source"}} from a --timing file, else from
    the timing records earlier grid sessions wrote in their run folders (longest measurement wins), else (with
    `documented`) from docs/speed.md's measurements, on the machine they name."""
    found: dict[tuple[str, str], dict] = {}
    if timing_file:
        path = Path(timing_file)
        if not path.is_file():
            raise FileNotFoundError(f"--timing {path} not found; write a JSON like "
                                    '{"device_name": "NVIDIA H100", "LA/ss_net": 0.45} (seconds per iteration)')
        data = json.loads(path.read_text())
        if "bench" in data and isinstance(data["bench"], dict):  # benchmarks/gpu_check.sh's gpu_check.json
            data = data["bench"]
        if "train" in data and "test" in data:  # a benchmarks/bench.py report: step and window costs
            return timings_from_bench(data, str(path))
        device_name = data.get("device_name", "unknown device")
        for key, value in data.items():
            if "/" in key:
                dataset, method = key.split("/", 1)
                found[(dataset, method)] = {"seconds_per_iteration": float(value), "device_name": device_name,
                                            "source": str(path), "iterations": None}
        return found
    root = Path(runs_dir)
    for path in sorted(root.glob(f"*/*/*/*/{TIMING_FILE}")) if root.is_dir() else []:
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
        key = (record["dataset"], record["method"])
        if key not in found or record["iterations"] > (found[key]["iterations"] or 0):
            found[key] = {**record, "source": f"{path}, evaluations included"}
    for key, (seconds, what) in DOCUMENTED_TIMES.items() if documented else ():
        found.setdefault(key, {"seconds_per_iteration": seconds, "device_name": DOCUMENTED_MACHINE,
                               "source": f"docs/speed.md: {what}; training steps only, until a run here measures "
                                         f"its own", "iterations": None, "documented": True})
    return found


def timings_from_bench(report: dict, source: str) -> dict[tuple[str, str], dict]:
    """SS-Net's seconds per iteration from a benchmark report (`python -m benchmarks.bench`), in its fastest
    measured mode: LA's includes the paper's in-training evaluations (the report's projected full run, step and
    window costs, divided by its iterations); ACDC's is the step alone (the benchmark has no ACDC window cost)."""
    found = {}
    projection = report.get("projection_LA_full_run", {})
    for mode in ("fast", "default", "official"):
        if f"{mode}_s" in projection:
            found[("LA", "ss_net")] = {"seconds_per_iteration": projection[f"{mode}_s"] / projection["iterations"],
                                       "device_name": report.get("device_name", "unknown device"),
                                       "source": f"{source}, {mode} mode: step + evaluations", "iterations": None}
            break
    acdc = report.get("train", {}).get("ACDC", {})
    for mode in ("fast", "default", "official"):
        if mode in acdc:
            found[("ACDC", "ss_net")] = {"seconds_per_iteration": acdc[mode]["seconds_per_iteration"],
                                         "device_name": report.get("device_name", "unknown device"),
                                         "source": f"{source}, {mode} mode: step only", "iterations": None}
            break
    return found


def estimate_hours(plan: Plan, timings: dict[tuple[str, str], dict]) -> tuple[float, list[str], list[str]]:
    """(hours for the remaining iterations of the measured methods, unmeasured methods, measurement sources)."""
    seconds, unknown, sources = 0.0, [], []
    for run in plan.runs:
        remaining = run.total_iterations - run.done_iterations()
        timing = timings.get((run.dataset, run.method))
        if timing is None:
            if remaining and run.method not in unknown:
                unknown.append(run.method)
            continue
        seconds += remaining * timing["seconds_per_iteration"]
        line = (f"{run.dataset} {run.method}: {timing['seconds_per_iteration']:.3f} s/iteration on "
                f"{timing['device_name']} ({timing['source']})")
        if line not in sources:
            sources.append(line)
    return seconds / 3600.0, unknown, sources


def format_plan(plan: Plan, timings: dict[tuple[str, str], dict], banner: str = "") -> str:
    lines = [banner] if banner else []
    lines.append(f"{plan.dataset}: {len(plan.runs)} training runs, {len(plan.evaluations)} test evaluations")
    lines.append(f"{'budget':>7s} {'labeled':>7s}  {'method':14s}{'seed':>6s}  {'select':7s}{'schedule':9s}"
                 f"{'iterations':>11s}{'done':>8s}  status    reported as")
    reports = {}
    for e in plan.evaluations:
        reports.setdefault(e.run.run_dir, []).extend(f"{p} ({e.checkpoint})" for p in e.protocols)
    total = remaining = 0
    for run in plan.runs:
        done = run.done_iterations()
        total += run.total_iterations
        remaining += run.total_iterations - done
        stages = f" ({run.pretrain_iterations:,} pre-train + {run.max_iteration:,})" if run.pretrain_iterations else ""
        lines.append(f"{run.budget:>7s} {run.labelnum:>7d}  {run.method:14s}{run.seed:>6d}  {run.select:7s}"
                     f"{run.schedule_label:9s}{run.total_iterations:>11,d}{done:>8,d}  {run.status():9s} "
                     f"{', '.join(reports[run.run_dir])}{stages}")
    lines.append(f"iterations: {total:,} in all, {remaining:,} still to train")
    hours, unknown, sources = estimate_hours(plan, timings)
    if sources:
        lines.append(f"estimated time for the remaining iterations: {hours:.2f} h "
                     f"{' (a lower bound: ' + ', '.join(unknown) + ' unmeasured)' if unknown else ''}, from "
                     f"measured iteration times:")
        lines += [f"  {s}" for s in sources]
        if any(timings[k].get("documented") for k in {(r.dataset, r.method) for r in plan.runs} if k in timings):
            lines.append("  (docs/speed.md's figures come from another machine and leave out the evaluations; the "
                         "first cell trained here replaces them with this machine's own)")
    else:
        lines.append("estimated GPU hours: unknown -- no measured iteration time yet (run one cell, or pass "
                     "--timing FILE with seconds per iteration)")
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)

