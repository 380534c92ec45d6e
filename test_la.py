"""Evaluate a LA checkpoint (ours or the official release): per-case Dice, Jaccard, 95HD, ASD; table, CSV, JSON.

    python test_la.py --checkpoint model/.../best_model.pth --root_path ./data/LA
"""
from __future__ import annotations

import sys

from engine.cli import run_cli
from engine.presets import LA
from engine.testing import build_test_parser, options_from_args, run_test


def main(argv: list[str] | None = None) -> int:
    args = build_test_parser(LA, __doc__).parse_args(argv)
    return run_cli(lambda: run_test(options_from_args(args, LA)), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
