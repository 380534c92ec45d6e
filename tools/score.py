"""Score predicted label maps made by any tool against references, with the test scripts' metrics.

    python -m tools.score PRED_DIR GT_DIR [--csv scores.csv] [--labels 1 2 3] [--spacing voxel|mm]
        [--largest_component]
    python -m tools.score PRED_DIR GT_DIR --list lists/test.list      # only the cases of a list
    python -m tools.score PRED_DIR GT_DIR --cases CASE_A CASE_B       # only these cases

Files: NIfTI (.nii / .nii.gz) or h5 with a 'label' dataset, matched by case id (file name without extension;
for LA's <ID>/mri_norm2.h5 the folder name), searched recursively, symbolic links followed. Every reference
needs a prediction unless --cases / --list name the cases to score. Per case and class: Dice, Jaccard, 95HD,
ASD (medpy semantics, the official empty-prediction rule unless --empty_policy nan), and their mean. Classes:
--labels, else the non-zero classes present in each reference (a class absent from a reference is then not
scored for that case).
"""
from __future__ import annotations

import argparse
import sys

from evaluation.scoring import ScoreOptions, score_folders
from utils.cli import DocstringHelpFormatter, ScriptParser, run_cli
from utils.flags import add_flags, options_from_args


def build_parser() -> argparse.ArgumentParser:
    p = ScriptParser(description=__doc__, formatter_class=DocstringHelpFormatter)
    add_flags(p, ScoreOptions)
    p.add_argument("--debug", action="store_true", help="full traceback on errors")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: score_folders(options_from_args(ScoreOptions, args)), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
