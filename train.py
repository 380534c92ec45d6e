"""Train SS-Net (or a baseline) on your own NIfTI dataset in the nnU-Net raw layout; see docs/own-data.md.

    python train.py --data /data/Dataset001_Heart --mode 3d --target_spacing 1,1,1 --crop_nonzero
    python train.py --data /data/Dataset001_Heart --mode 2d --labelnum 4 --method supervised --batch_size 12

Every flag of train_la.py / train_acdc.py works here; --mode 3d takes the LA defaults (V-Net), 2d the ACDC ones
(U-Net on slices along the coarsest axis). Training images without a label file are the unlabeled pool.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dataloaders.nifti_dataset import NIFTI_MODES
from training import TrainConfig, make_config, train
from training.flags import build_train_parser, config_from_args, explicit_flags, settings_from_args
from utils.cli import ScriptParser, float_list, run_cli
from utils.errors import UserError


def build_parser(mode: str) -> argparse.ArgumentParser:
    p = build_train_parser(f"NIfTI-{mode}", __doc__)
    g = p.add_argument_group("your NIfTI dataset")
    g.add_argument("--data", default="", help="nnU-Net raw folder: dataset.json, imagesTr/, labelsTr/[, imagesTs/]")
    g.add_argument("--mode", choices=NIFTI_MODES, default="3d",
                   help="3d: V-Net on volumes (LA defaults); 2d: U-Net on slices (ACDC defaults)")
    g.add_argument("--normalization", choices=("zscore", "minmax", "none"), default="zscore",
                   help="per-case, per-channel intensity normalisation (the paper: zscore)")
    g.add_argument("--target_spacing", type=float_list, default=None,
                   help="resample every case to this voxel size in mm (per array axis); default: keep each grid")
    g.add_argument("--image_order", type=int, choices=(1, 3), default=3, help="image resampling: 3 cubic, 1 linear")
    g.add_argument("--crop_nonzero", action="store_true", help="crop each case to its non-zero (body) region")
    g.add_argument("--num_val", type=int, default=-1,
                   help="validation cases drawn from the labeled ones; a val.list in --lists_dir gives them "
                        "instead (default: 20%%, at least 1)")
    g.add_argument("--split_seed", type=int, default=None, help="seed of the validation draw (default --seed)")
    return p


def nifti_config_from_args(args: argparse.Namespace, given: set[str]) -> TrainConfig:
    """Resolve the config: classes and channels from dataset.json, the slice axis from the scans' spacing."""
    dataset = f"NIfTI-{args.mode}"
    if args.resume:  # the saved config already holds the dataset description and preprocessing
        return config_from_args(args, dataset, given)
    if not args.data:
        raise UserError("--data is required: the nnU-Net raw folder (dataset.json, imagesTr/, labelsTr/)")
    import nibabel as nib

    from dataloaders.nifti import Preprocessing, choose_slice_axis, read_nifti_dataset

    info = read_nifti_dataset(args.data)
    settings = settings_from_args(args)
    if "exp" not in given:
        settings["exp"] = f"{Path(args.data).resolve().name}_{args.mode}"
    spacings = [nib.load(str(info.image_paths(c)[0])).header.get_zooms()[:3] for c in info.labeled + info.unlabeled]
    preprocessing = Preprocessing(
        normalization=args.normalization,
        target_spacing=tuple(args.target_spacing) if args.target_spacing else None,
        crop_nonzero=args.crop_nonzero,
        image_order=args.image_order,
        slice_axis=choose_slice_axis(spacings, args.target_spacing),
    )
    settings.update(
        root_path=args.data, num_classes=info.num_classes,
        network_kwargs={**settings.get("network_kwargs", {}), "in_channels": info.num_channels,
                        "num_classes": info.num_classes},
        nifti={
            "mode": args.mode,
            "data": str(Path(args.data).resolve()),
            "preprocessing": preprocessing.to_dict(),
            "labels": info.labels,
            "class_names": info.class_names,
            "channel_names": info.channel_names,
            "file_ending": info.file_ending,
            "num_val": args.num_val,
            "split_seed": args.seed if args.split_seed is None else args.split_seed,
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
    mode_parser.add_argument("--mode", choices=NIFTI_MODES, default="3d")
    mode, _ = mode_parser.parse_known_args(argv)
    parser = build_parser(mode.mode)
    args = parser.parse_args(argv)
    return run_cli(lambda: train(nifti_config_from_args(args, explicit_flags(parser, argv))), debug=args.debug,
                   cpu_threads=True)


if __name__ == "__main__":
    sys.exit(main())
