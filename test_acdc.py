"""Evaluate a ACDC checkpoint (ours or the official release): per-case Dice, Jaccard, 95HD, ASD; table, CSV, JSON.

    python test_acdc.py --checkpoint model/.../best_model.pth --root_path ./data/ACDC
"""
from __future__ import annotations

import sys

from engine.cli import run_cli
from engine.presets import ACDC
from engine.testing import build_test_parser, options_from_args, run_test


def main(argv: list[str] | None = None) -> int:
    args = build_test_parser(ACDC, __doc__).parse_args(argv)
    return run_cli(lambda: run_test(options_from_args(args, ACDC)), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
