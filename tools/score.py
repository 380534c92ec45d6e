"""Score predicted label maps made by any tool against references, with the test scripts' metrics.

    python -m tools.score PRED_DIR GT_DIR [--csv scores.csv] [--labels 1 2 3] [--spacing voxel|mm] [--nms]
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

from evaluation.scoring import SPACING_CHOICES, ScoreOptions, score_folders
from utils.cli import DocstringHelpFormatter, ScriptParser, run_cli
from utils.metrics import EMPTY_POLICIES


def build_parser() -> argparse.ArgumentParser:
    p = ScriptParser(description=__doc__, formatter_class=DocstringHelpFormatter)
    p.add_argument("predictions", help="folder of predicted label maps")
    p.add_argument("references", help="folder of reference label maps")
    p.add_argument("--csv", default="", help="per-case CSV (case,class,class_name,dice,jaccard,hd95,asd,assd,...)")
    p.add_argument("--json", default="", help="summary JSON")
    p.add_argument("--labels", nargs="+", type=int, default=[], help="classes to score (default: those present in "
                   "each reference)")
    p.add_argument("--spacing", default="voxel", choices=SPACING_CHOICES,
                   help="distance units: voxel (as the paper) or mm from the NIfTI header")
    p.add_argument("--nms", action="store_true", help="keep the largest connected component per class first")
    p.add_argument("--empty_policy", default="official", choices=EMPTY_POLICIES,
                   help="official: an empty prediction scores 0 on every metric; nan: distances NaN")
    p.add_argument("--cases", nargs="+", default=[], metavar="CASE",
                   help="score only these case ids (default: every reference)")
    p.add_argument("--list", default="", help="score only the case ids of this split list (one per line)")
    p.add_argument("--debug", action="store_true", help="full traceback on errors")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    options = ScoreOptions(predictions=a.predictions, references=a.references, labels=a.labels, spacing=a.spacing,
                           nms=a.nms, empty_policy=a.empty_policy, csv=a.csv, json=a.json, cases=a.cases,
                           list_path=a.list)
    return run_cli(lambda: score_folders(options), debug=a.debug)


if __name__ == "__main__":
    sys.exit(main())
