"""Train SS-Net (or a baseline) on your own NIfTI dataset (nnU-Net raw or Decathlon layout); see docs/own-data.md.

    python train.py --data /data/Dataset001_Heart --mode 3d --target_spacing 1,1,1 --crop_nonzero
    python train.py --data /data/Task02_Heart --mode 3d      # a Medical Segmentation Decathlon task as downloaded
    python train.py --data /data/Dataset001_Heart --mode 2d --labelnum 4 --method supervised --batch_size 12

Every flag of train_la.py / train_acdc.py works here; --mode 3d takes the LA defaults (V-Net), 2d the ACDC ones
(U-Net on slices along the coarsest axis). Training images without a label file are the unlabeled pool.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from dataloaders.nifti_dataset import NIFTI_MODES, NiftiOptions
from training import TrainConfig, make_config, train
from training.flags import build_train_parser, config_from_args, explicit_flags, settings_from_args
from utils.cli import ScriptParser, run_cli
from utils.errors import UserError
from utils.flags import add_flags, options_from_args


def build_parser(mode: str) -> argparse.ArgumentParser:
    p = build_train_parser(f"NIfTI-{mode}", __doc__)
    add_flags(p, NiftiOptions)
    return p


def nifti_config_from_args(args: argparse.Namespace, given: set[str]) -> TrainConfig:
    """Resolve the config: classes and channels from dataset.json, the slice axis from the scans' spacing."""
    if args.window is not None and "normalization" not in given:
        args.normalization = "window"  # --window alone chooses the fixed-window normalisation
    options = options_from_args(NiftiOptions, args)
    dataset = f"NIfTI-{options.mode}"
    if args.resume:  # the saved config already holds the dataset description and preprocessing
        return config_from_args(args, dataset, given)
    if not options.data:
        raise UserError("--data is required: the nnU-Net raw folder (dataset.json, imagesTr/, labelsTr/)")
    import nibabel as nib

    from dataloaders.nifti import choose_slice_axis, read_nifti_dataset
    from dataloaders.nifti_dataset import labeled_training_cases, resolve_preprocessing

    info = read_nifti_dataset(options.data)
    print(f"data: {info.describe()}", file=sys.stderr)
    settings = settings_from_args(args)
    if "exp" not in given:
        settings["exp"] = f"{Path(options.data).resolve().name}_{options.mode}"
    spacings = [nib.load(str(info.image_paths(c)[0])).header.get_zooms()[:3] for c in info.labeled + info.unlabeled]
    preprocessing = replace(options.preprocessing,
                            slice_axis=choose_slice_axis(spacings, options.preprocessing.target_spacing))
    split_seed = args.seed if options.split_seed is None else options.split_seed
    preprocessing, chosen = resolve_preprocessing(
        preprocessing, info, "normalization" in given,
        lambda: labeled_training_cases(info, args.labelnum, args.select, args.lists_dir, options.num_val,
                                       split_seed))
    print(chosen, file=sys.stderr)
    settings.update(
        root_path=options.data, num_classes=info.num_classes,
        network_kwargs={**settings.get("network_kwargs", {}), "in_channels": info.num_channels,
                        "num_classes": info.num_classes},
        nifti={
            "mode": options.mode,
            "data": str(Path(options.data).resolve()),
            "preprocessing": preprocessing.to_dict(),
            "labels": info.labels,
            "class_names": info.class_names,
            "channel_names": info.channel_names,
            "file_ending": info.file_ending,
            "layout": info.layout,
            "num_val": options.num_val,
            "split_seed": split_seed,
        })
    config = make_config(dataset, **settings)
    if not config.stride:
        config.stride = [max(p // 2, 1) for p in config.patch_size]
    if len(config.stride) != len(config.patch_size):
        raise UserError(f"--stride needs {len(config.patch_size)} values, got {config.stride}")
    return config


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    mode_parser = ScriptParser(add_help=False)
    mode_parser.add_argument("--mode", choices=NIFTI_MODES, default=NiftiOptions.mode)
    mode, _ = mode_parser.parse_known_args(argv)
    parser = build_parser(mode.mode)
    args = parser.parse_args(argv)
    return run_cli(lambda: train(nifti_config_from_args(args, explicit_flags(parser, argv))), debug=args.debug,
                   cpu_threads=True)


if __name__ == "__main__":
    sys.exit(main())
