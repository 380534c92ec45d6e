"""Reproduce the paper's tables: train, test and compare a grid of dataset x budget x method x seed.

    python reproduce.py --dataset LA --labelnum 4 8 --methods ss_net supervised --seeds 1337 1338 1339 \\
        --protocol paper honest --root_path /data/LA
    python reproduce.py --dataset LA --dry-run          # the plan, iterations and a time estimate
    python reproduce.py --quick                         # CPU, minutes, synthetic data: NOT a reproduction

Re-running the same command never redoes finished work: finished runs are reused, interrupted ones resume
from their newest checkpoint, tested checkpoints are not tested again. Results: results/<dataset>.md, .csv,
_cases.csv, _paired.csv, .png. Protocols: see docs/reproduction.md.
"""
from __future__ import annotations

import argparse
import shlex
import sys

from reproduction.grid import GridOptions, run_grid
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
    p.add_argument("--timing", default="", help='JSON of measured seconds per iteration, e.g. {"device_name": '
                   '"NVIDIA H100", "LA/ss_net": 0.45}; default: the measurements of earlier runs in --runs_dir')
    p.add_argument("--keep_going", action="store_true", help="a failing run is reported, the others go on")
    p.add_argument("--progress", action="store_true", help="tqdm progress bars while training")
    p.add_argument("--debug", action="store_true", help="full traceback on errors")
    return p


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
