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
import sys

from reproduction.grid import GridOptions, run_grid
from utils.cli import DocstringHelpFormatter, ScriptParser, run_cli
from utils.flags import add_flags, explicit_flags, options_from_args


def build_parser() -> argparse.ArgumentParser:
    p = ScriptParser(description=__doc__, formatter_class=DocstringHelpFormatter)
    add_flags(p, GridOptions)
    p.add_argument("--debug", action="store_true", help="full traceback on errors")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    options = options_from_args(GridOptions, args)
    if options.quick and "seeds" not in explicit_flags(parser, argv):
        options.seeds = options.seeds[:2]
    outcome = {}

    def job():
        outcome["result"] = run_grid(options)

    trains = not (args.dry_run or args.status or args.aggregate)
    code = run_cli(job, debug=args.debug, cpu_threads=trains, huge_pages=trains)
    if code == 0 and outcome["result"].failed:
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
