"""Train SS-Net (or a baseline) on ACDC. Defaults are the official SS-Net settings; see docs/training.md.

    python train_acdc.py --root_path ./data/ACDC --labelnum 7 --select val
"""
from __future__ import annotations

import sys

from training import train_script


def main(argv: list[str] | None = None) -> int:
    return train_script("ACDC", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
