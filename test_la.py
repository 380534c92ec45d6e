"""Evaluate a LA checkpoint (ours or the official release): per-case Dice, Jaccard, 95HD, ASD; table, CSV, JSON.

    python test_la.py --checkpoint model/.../best_model.pth --root_path ./data/LA
"""
from __future__ import annotations

import sys

from evaluation import test_script


def main(argv: list[str] | None = None) -> int:
    return test_script("LA", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
