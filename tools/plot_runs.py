"""Training curves of one or more run folders in one PNG: every loss term, warm-up weight, LR, selection Dice.

    python -m tools.plot_runs model/LA_SSNet_8_labeled/ss_net_seed1337 model/LA_SSNet_8_labeled/supervised_seed1337
    python -m tools.plot_runs RUN --output curves.png --smoothing 0.95

Reads tensorboard/ event files and log.txt (whichever is further along per curve), so it works while a run is
still training: rerun it to refresh.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from utils.cli import DocstringHelpFormatter, ScriptParser, run_cli
from utils.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    p = ScriptParser(description=__doc__, formatter_class=DocstringHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folder (holds log.txt and/or tensorboard/)")
    p.add_argument("--names", default="", help="comma-separated legend names (default: folder names)")
    p.add_argument("--output", default="", help="default: RUN/curves.png for one run, ./curves.png for several")
    p.add_argument("--smoothing", type=float, default=0.9, help="EMA weight for loss curves, 0 = raw")
    p.add_argument("--debug", action="store_true", help="full traceback on errors")
    return p


def plot(args: argparse.Namespace) -> Path:
    from viz.curves import curves_figure, read_run_scalars
    from viz.io import save_png
    from viz.runs import unique_names

    if not 0 <= args.smoothing < 1:
        raise UserError(f"--smoothing must be in [0, 1), got {args.smoothing}")
    names = [n.strip() for n in args.names.split(",")] if args.names else \
        unique_names([Path(r).resolve().name for r in args.runs])
    if len(names) != len(args.runs):
        raise UserError(f"--names gives {len(names)} names for {len(args.runs)} runs")
    runs = {name: read_run_scalars(r) for name, r in zip(names, args.runs, strict=True)}
    output = Path(args.output) if args.output else \
        (Path(args.runs[0]) / "curves.png" if len(args.runs) == 1 else Path("curves.png"))
    path = save_png(curves_figure(runs, smoothing=args.smoothing), output)
    latest = max(int(s[0][-1]) for scalars in runs.values() for s in scalars.values())
    print(f"curves of {len(runs)} run(s), up to iteration {latest}: {path}")
    return path


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: plot(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
