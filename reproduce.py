"""Reproduce the paper's tables: train, test and compare a grid of dataset x budget x method x seed.

    python reproduce.py --dataset LA --labelnum 4 8 --methods ss_net supervised --seeds 1337 1338 1339 \\
        --protocol paper honest --root_path /data/LA
    python reproduce.py --dataset LA --dry-run          # the plan, iterations and a time estimate
    python reproduce.py --quick                         # CPU, minutes, synthetic data: NOT a reproduction
    python reproduce.py --dataset LA --root_path /data/LA --launcher local --gpus 0,1,2,3   # one cell per GPU
    python reproduce.py --dataset LA --root_path /data/LA --launcher slurm --partition gpu --time 04:00:00
    python reproduce.py --dataset LA --root_path /data/LA --status   # where every cell stands, and an ETA

Re-running the same command never redoes finished work: finished runs are reused, interrupted ones resume
from their newest checkpoint, tested checkpoints are not tested again; a cell another live launch works on is
skipped. Results: results/<dataset>.md, .csv, _cases.csv, _paired.csv (every method against --reference,
default supervised), _paired_cases.csv, .png and, with several --labelnum, _budgets.png (Dice against the number of
labeled cases), from the finished cells (the missing ones are named). Protocols and launchers: see docs/reproduction.md.
"""
from __future__ import annotations

import argparse
import shlex
import sys

from reproduction.grid import LAUNCHERS, GridOptions, run_grid
from reproduction.launchers import SlurmSettings
from reproduction.plan import PROTOCOL_CHOICES
from utils.cli import DocstringHelpFormatter, default_device, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=DocstringHelpFormatter)
    p.add_argument("--dataset", default="LA", choices=("LA", "ACDC"))
    p.add_argument("--labelnum", nargs="+", default=[], metavar="N|all",
                   help="labeled budgets: LA scans (4 = 5 %%, 8 = 10 %%), ACDC patients (3, 7); 'all' = the fully "
                        "supervised upper bound (default: the paper's two budgets and all)")
    p.add_argument("--methods", nargs="+", default=[],
                   help="registered methods (default: all); 'supervised' at a budget is the labeled-only lower "
                        "bound")
    p.add_argument("--seeds", nargs="+", type=int, default=[1337, 1338, 1339])
    p.add_argument("--protocol", nargs="+", default=["paper", "honest"], choices=PROTOCOL_CHOICES,
                   help="paper = the published checkpoint selection (LA: best on the TEST set); honest = best on "
                        "the validation list, and the last checkpoint")
    p.add_argument("--root_path", default="", help="dataset folder (default ./data/<dataset>; --quick: synthetic)")
    p.add_argument("--lists_dir", default="", help="split lists (default data/<dataset>)")
    p.add_argument("--runs_dir", default="", help="run folders (default model/reproduce, quick: model/reproduce_quick)")
    p.add_argument("--results_dir", default="", help="tables and chart (default results, quick: results/quick)")
    p.add_argument("--device", default=default_device())
    p.add_argument("--num_workers", type=int, default=4)
    p.add_argument("--schedule", default="recipe", choices=("recipe", "shared"),
                   help="recipe = every baseline on its authors' schedule (the published rows); shared = SS-Net's "
                        "schedule for every method (a controlled comparison); every table says which")
    p.add_argument("--max_iteration", type=int, default=None,
                   help="shorten every run (outputs then say: NOT the paper's setting)")
    p.add_argument("--train_args", default="", help="extra flags for every training run, e.g. '--eval_batch_size 8'")
    p.add_argument("--quick", action="store_true", help="tiny CPU grid in minutes (2 seeds): NOT a reproduction")
    p.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                   help="print the plan (runs, iterations, status, time estimate) and exit")
    p.add_argument("--reference", default="supervised",
                   help="the paired comparisons: every method against this one at the same budget, schedule and "
                        "seeds (default supervised: does the unlabeled data help?; e.g. ss_net)")
    p.add_argument("--timing", default="", help='JSON of measured seconds per iteration, e.g. {"device_name": '
                   '"NVIDIA H100", "LA/ss_net": 0.45}; default: the measurements of earlier runs in --runs_dir')
    p.add_argument("--keep_going", action="store_true", help="a failing run is reported, the others go on")
    p.add_argument("--progress", action="store_true", help="tqdm progress bars while training")
    p.add_argument("--status", action="store_true",
                   help="print where every cell stands (finished, running with its iteration and speed, failed "
                        "with its error, queued, stopped, not started) and an ETA, from the run folders; run nothing")
    p.add_argument("--aggregate", action="store_true",
                   help="write the tables from the finished cells (the missing ones are named); run nothing")
    p.add_argument("--debug", action="store_true", help="full traceback on errors")

    launch = p.add_argument_group("launchers (docs/reproduction.md)")
    launch.add_argument("--launcher", default="sequential", choices=LAUNCHERS,
                        help="sequential: every cell in this process; local: one process per cell, --gpus / --jobs "
                             "at a time; slurm: one submitit job per cell (a job array), requeued on preemption or "
                             "timeout; submitit_local: the slurm path on this machine (submitit's local executor)")
    launch.add_argument("--gpus", type=gpu_list, default=[], metavar="0,1,2,3",
                        help="--launcher local: GPUs, one cell on each at a time (CUDA_VISIBLE_DEVICES per cell)")
    launch.add_argument("--jobs", type=int, default=None,
                        help="--launcher local: cells at a time (default: one per --gpus entry, else 1; on CPU the "
                             "cores are shared between them)")
    launch.add_argument("--partition", default="", help="--launcher slurm: the partition (default: the cluster's)")
    launch.add_argument("--time", default="04:00:00",
                        help="--launcher slurm: time limit per job (HH:MM:SS); a job that reaches it is requeued and "
                             "resumes from its newest checkpoint")
    launch.add_argument("--gpus_per_job", type=int, default=None, choices=(0, 1),
                        help="--launcher slurm: GPUs per cell (default: 1, with --device cpu 0: a CPU job)")
    launch.add_argument("--cpus_per_job", type=int, default=0,
                        help="--launcher slurm: CPU cores per cell (default: --num_workers + 1)")
    launch.add_argument("--requeue_timeouts", type=int, default=3,
                        help="--launcher slurm: how often a cell that reaches --time is requeued (preempted jobs "
                             "are always requeued)")
    launch.add_argument("--array_parallelism", type=int, default=0,
                        help="--launcher slurm: at most this many cells at a time (default: as SLURM schedules)")
    launch.add_argument("--slurm_args", nargs="+", default=[], metavar="KEY=VALUE",
                        help="--launcher slurm: more sbatch options, e.g. account=abc qos=high mem=64G "
                             "constraint=a100 (a KEY alone is a flag)")
    launch.add_argument("--wait", action="store_true",
                        help="--launcher slurm: wait for the jobs and write the tables (default: print the job ids "
                             "and return; follow with --status, then --aggregate)")
    return p


def gpu_list(text: str) -> list[str]:
    """`0,1,2,3` -> ["0", "1", "2", "3"] (GPU indices or UUIDs as CUDA_VISIBLE_DEVICES takes them)."""
    gpus = [g.strip() for g in text.split(",") if g.strip()]
    if not gpus:
        raise argparse.ArgumentTypeError(f"expected GPU ids like 0,1,2,3, got {text!r}")
    return gpus


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    seeds = args.seeds
    if args.quick and "--seeds" not in argv:
        seeds = seeds[:2]
    options = GridOptions(
        dataset=args.dataset, budgets=list(args.labelnum), methods=list(args.methods), seeds=seeds,
        protocols=list(args.protocol), root_path=args.root_path, lists_dir=args.lists_dir, runs_dir=args.runs_dir,
        results_dir=args.results_dir, device=args.device, num_workers=args.num_workers,
        max_iteration=args.max_iteration, schedule=args.schedule, train_args=shlex.split(args.train_args),
        quick=args.quick,
        dry_run=args.dry_run, timing=args.timing, keep_going=args.keep_going, progress=args.progress,
        status=args.status, aggregate=args.aggregate, launcher=args.launcher, gpus=args.gpus, jobs=args.jobs,
        wait=args.wait, reference=args.reference,
        slurm=SlurmSettings(partition=args.partition, time=args.time, gpus_per_job=args.gpus_per_job,
                            cpus_per_job=args.cpus_per_job, slurm_args=list(args.slurm_args),
                            requeue_timeouts=args.requeue_timeouts, array_parallelism=args.array_parallelism),
    )
    outcome = {}

    def job():
        outcome["result"] = run_grid(options)

    code = run_cli(job, debug=args.debug)
    if code == 0 and outcome["result"].failed:
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
