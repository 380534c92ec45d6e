"""Train SS-Net (or a baseline) on LA. Defaults are the official SS-Net settings; see README.

    python train_la.py --root_path ./data/LA --labelnum 8 --select val
"""
from __future__ import annotations

import sys

from engine.cli import run_cli
from engine.config import build_train_parser, config_from_args, explicit_flags
from engine.presets import LA
from engine.trainer import train


def main(argv: list[str] | None = None) -> int:
    parser = build_train_parser(LA, __doc__)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    return run_cli(lambda: train(config_from_args(args, LA, explicit_flags(parser, argv))), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
