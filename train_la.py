"""Train SS-Net (or a baseline) on LA. Defaults are the official SS-Net settings; see docs/training.md.

    python train_la.py --root_path ./data/LA --labelnum 8 --select val
"""
from __future__ import annotations

import sys

from training import train_script


def main(argv: list[str] | None = None) -> int:
    return train_script("LA", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
