"""Predict label maps for new scans with a checkpoint from train.py, train_la.py, train_acdc.py (or official weights).

    python predict.py --checkpoint model/.../best_model.pth --input scans/ --output predictions/
    python predict.py --checkpoint best_model.pth --input imagesTs/ --output out/ --tta --labels labelsTs/

Input: a NIfTI file, an h5 file (the LA / ACDC layout), or a folder of them (nnU-Net channel files
`<case>_0000.nii.gz, <case>_0001.nii.gz, ...` are grouped). Output: `<output>/<case>.nii.gz` with the input's
affine, header and shape; with --labels, per-case metrics in mm (metrics.csv, summary.json) too. Inputs that
cannot match what the checkpoint was trained on (dimensionality, channels, the intensities of h5 arrays, voxel
size) are refused, naming the reason, before anything is written.
"""
from __future__ import annotations

import argparse
import sys

from inference.prediction_job import PredictOptions, run_predict
from utils.cli import DocstringHelpFormatter, ScriptParser, run_cli
from utils.flags import add_flags, options_from_args


def build_parser() -> argparse.ArgumentParser:
    p = ScriptParser(description=__doc__, formatter_class=DocstringHelpFormatter)
    add_flags(p, PredictOptions)
    p.add_argument("--debug", action="store_true", help="full traceback on errors")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: run_predict(options_from_args(PredictOptions, args)), debug=args.debug, cpu_threads=True)


if __name__ == "__main__":
    sys.exit(main())
