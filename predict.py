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

from inference.predict import PredictOptions, run_predict
from inference.settings import add_fold_bn_argument
from utils.cli import DocstringHelpFormatter, ScriptParser, default_device, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = ScriptParser(description=__doc__, formatter_class=DocstringHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="best_model.pth / last_model.pth, or an official .pth")
    p.add_argument("--input", required=True, help="a .nii/.nii.gz/.h5 file or a folder of them")
    p.add_argument("--output", required=True, help="folder for the label NIfTI files")
    p.add_argument("--device", default=default_device(), help="cuda, cuda:1, cpu, ...")
    p.add_argument("--largest_component", type=int, choices=(0, 1), default=None,
                   help="keep the largest connected component per class (default: as the model was evaluated)")
    p.add_argument("--tta", action="store_true", help="average over flips of every spatial axis (2^dims passes)")
    p.add_argument("--batch_size", type=int, default=4, help="windows / slices per forward")
    p.add_argument("--dataset", choices=("LA", "ACDC"), default="",
                   help="for official state dicts only (default: guessed from the weights)")
    p.add_argument("--labels", default="", help="folder of reference <case>.nii.gz: score the predictions in mm")
    p.add_argument("--skip_input_checks", action="store_true",
                   help="predict inputs whose intensities or voxel size do not look like the model's training data "
                        "(inputs of the wrong dimensionality or channel count stay refused)")
    add_fold_bn_argument(p)
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="full traceback on errors")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = PredictOptions(
        checkpoint=args.checkpoint, input=args.input, output=args.output, device=args.device,
        largest_component=None if args.largest_component is None else bool(args.largest_component), tta=args.tta,
        batch_size=args.batch_size, dataset=args.dataset, labels=args.labels, progress=not args.no_progress,
        skip_input_checks=args.skip_input_checks,
        fold_bn=bool(args.fold_bn),
    )
    return run_cli(lambda: run_predict(options), debug=args.debug, cpu_threads=True)


if __name__ == "__main__":
    sys.exit(main())
