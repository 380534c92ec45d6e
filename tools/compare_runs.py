"""Several runs' predictions for the same cases side by side (the paper's Fig. 3 arrangement).

    python -m tools.compare_runs model/LA_8/supervised_seed1337/test_test model/LA_8/ss_net_seed1337/test_test \\
        --root_path ./data/LA --names "V-Net (labeled only)",SS-Net --output figures/la_comparison.png

Each RUN is a test output folder with predictions/ (from test_la.py / test_acdc.py --save_predictions; read,
not recomputed), a checkpoint .pth, or a run folder (its best_model.pth; predicted here with the checkpoint's
inference settings). Rows are cases, columns image | ground truth | one per run: the slice with the most
ground truth (axial for LA, short-axis for ACDC), prediction filled, truth outlined in yellow, volume Dice.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from utils.cli import DocstringHelpFormatter, ScriptParser, run_cli
from utils.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    p = ScriptParser(description=__doc__, formatter_class=DocstringHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN", help="test output folder, checkpoint or run folder")
    p.add_argument("--root_path", required=True, help="dataset root (images and ground truth)")
    p.add_argument("--dataset", default="", choices=("", "LA", "ACDC"),
                   help="default: from the runs (needed only when all are official checkpoints)")
    p.add_argument("--names", default="", help="comma-separated column titles, one per RUN")
    p.add_argument("--cases", default="", help="comma-separated case ids (default: the first --max_cases)")
    p.add_argument("--max_cases", type=int, default=4)
    p.add_argument("--device", default="cpu", help="for checkpoints that must predict")
    p.add_argument("--output", default="comparison.png")
    p.add_argument("--debug", action="store_true", help="full traceback on errors")
    return p


def compare(args: argparse.Namespace) -> Path:
    from dataloaders import get_dataset, read_list
    from viz.io import save_png
    from viz.overlay import DATASET_LAYOUTS, MontageCase, comparison_montage
    from viz.runs import RunPredictions, describe_source, unique_names

    sources = [describe_source(r) for r in args.runs]
    datasets = {s.dataset for s in sources if s.dataset}
    if args.dataset:
        datasets.add(args.dataset)
    if len(datasets) != 1:
        raise UserError(f"the runs are from datasets {sorted(datasets) or 'unknown'}: pass --dataset LA|ACDC "
                         "(and compare runs of one dataset only)")
    task = get_dataset(datasets.pop())
    names = [n.strip() for n in args.names.split(",")] if args.names else unique_names([s.name for s in sources])
    if len(names) != len(sources):
        raise UserError(f"--names gives {len(names)} names for {len(sources)} runs")
    if args.max_cases < 1:
        raise UserError("--max_cases must be >= 1")
    if args.cases:
        cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    else:
        held = [s.cases for s in sources if s.kind == "predictions"]
        candidates = held[0] if held else read_list(task.lists_dir() / "test.list")
        cases = [c for c in candidates if all(c in h for h in held)][: args.max_cases]
        if not cases:
            raise UserError("the test folders share no case; pass --cases")
    predictors = [RunPredictions(s, task, args.device) for s in sources]
    rows = []
    for case in cases:
        image, label = task.load_case(args.root_path, case)
        rows.append(MontageCase(case, image, label, {n: p.labels(case, image) for n, p in zip(names, predictors,
                                                                                               strict=True)}))
    figure = comparison_montage(rows, names, layout=DATASET_LAYOUTS[task.name])
    path = save_png(figure, args.output)
    print(f"comparison of {len(sources)} runs on {len(cases)} cases: {path}")
    return path


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: compare(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
