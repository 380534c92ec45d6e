"""The paper's toy study (Fig. 1): two moons, few labels, noise gamma; a four-layer MLP trained with labels only
and with SS-Net's two ideas (adversarial smoothness on unlabeled points, prototype class separation).

    python -m tools.toy_two_moons                                   # 3 x 3 grid, 3 seeds: a few minutes on one CPU core
    python -m tools.toy_two_moons --labels 10 --gammas 0.1 --seeds 1 --output_dir figures/toy

Writes two_moons.png (per row: labeled points + decision boundary and t-SNE of the deep features, for each
model), two_moons.md (test accuracy table) and two_moons.json into --output_dir.
"""
from __future__ import annotations

import argparse
import sys
import time

from utils.cli import DocstringHelpFormatter, ScriptParser, run_cli
from utils.errors import UserError


def float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = ScriptParser(description=__doc__, formatter_class=DocstringHelpFormatter)
    p.add_argument("--labels", type=int_list, default=[4, 10, 30], help="labeled points (even: half per class)")
    p.add_argument("--gammas", type=float_list, default=[0.1, 0.2, 0.3], help="noise levels (sd of the jitter)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per cell for the table (the figure shows seed 0)")
    p.add_argument("--iterations", type=int, default=800)
    p.add_argument("--discrepancy", default="kl", choices=("kl", "pooled_dice"),
                   help="LDS discrepancy: VAT's KL (default) or SS-Net's pooled Dice")
    p.add_argument("--output_dir", default="figures/toy")
    p.add_argument("--debug", action="store_true", help="full traceback on errors")
    return p


def run(args: argparse.Namespace) -> dict:
    import torch

    from toy.study import run_study, write_study
    from toy.two_moons import ToySettings

    if args.seeds < 1 or args.iterations < 1:
        raise UserError("--seeds and --iterations must be >= 1")
    if not args.labels or not args.gammas:
        raise UserError("--labels and --gammas need at least one value each")
    torch.set_num_threads(1)  # tiny matrices: threads only add overhead
    settings = ToySettings(iterations=args.iterations, discrepancy=args.discrepancy)
    started = time.perf_counter()
    cells = run_study(args.labels, args.gammas, seeds=args.seeds, settings=settings)
    written = write_study(cells, args.output_dir, args.seeds, settings, time.perf_counter() - started)
    print("\n" + written["table"])
    for name, path in written["paths"].items():
        print(f"{name}: {path}")
    return written


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: run(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
