"""Evaluate an ACDC checkpoint (ours or the official release): per class RV / Myo / LV and their mean.

    python test_acdc.py --checkpoint model/.../best_model.pth --root_path ./data/ACDC
"""
from __future__ import annotations

import sys

from evaluation import test_script


def main(argv: list[str] | None = None) -> int:
    return test_script("ACDC", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
