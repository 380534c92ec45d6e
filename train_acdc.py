"""Train SS-Net (or a baseline) on ACDC. Defaults are the official SS-Net settings; see README.

    python train_acdc.py --root_path ./data/ACDC --labelnum 7 --select val
"""
from __future__ import annotations

import sys

from engine.cli import run_cli
from engine.config import build_train_parser, config_from_args, explicit_flags
from engine.presets import ACDC
from engine.trainer import train


def main(argv: list[str] | None = None) -> int:
    parser = build_train_parser(ACDC, __doc__)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    return run_cli(lambda: train(config_from_args(args, ACDC, explicit_flags(parser, argv))), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
