"""Training configuration: one dataclass, filled from flags whose defaults are the dataset preset."""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from engine.presets import PRESETS, Preset
from methods import METHODS, MethodSettings, check_method_name
from utils.losses import LDS_DISCREPANCIES
from utils.prototype_memory import KEEP_CHOICES

SELECT_CHOICES = ("val", "test", "last")


@dataclass
class TrainConfig:
    """Resolved settings of one run (written to config.json and into every checkpoint).

    Dataset-dependent values have no default here: they come from the flags, whose defaults are the preset.
    """

    dataset: str
    root_path: str
    exp: str
    network: str
    network_kwargs: dict
    num_classes: int
    labelnum: int
    patch_size: list[int]
    max_iteration: int
    batch_size: int
    labeled_bs: int
    lr_step: int
    consistency: float
    consistency_rampup: float
    magnitude: float
    lds_discrepancy: str
    eval_every: int
    eval_start: int
    stride: list[int]
    method: str = "ss_net"
    base_lr: float = 0.01
    seed: int = 1337
    deterministic: int = 1
    xi: float = 10.0
    power_iterations: int = 1
    separation_weight: float = 0.1
    memory_size: int = 32
    memory_keep: str = "lowest"
    ce_weight: float = 0.0
    select: str = "val"
    eval_batch_size: int = 4
    device: str = "cpu"
    num_workers: int = 2
    run_dir: str = ""
    lists_dir: str = ""
    image_every: int = 200
    progress: bool = True
    nifti: dict = field(default_factory=dict)  # train.py --data: mode, preprocessing, labels (empty for LA/ACDC)

    @property
    def preset(self) -> Preset:
        return PRESETS[self.dataset]

    def method_settings(self) -> MethodSettings:
        p = self.preset
        return MethodSettings(
            num_classes=self.num_classes,
            dice_include_background=p.dice_include_background,
            dice_squared_denominator=p.dice_squared_denominator,
            dice_smooth=p.dice_smooth,
            ce_weight=self.ce_weight,
            consistency=self.consistency,
            consistency_rampup=self.consistency_rampup,
            lds_discrepancy=self.lds_discrepancy,
            xi=self.xi,
            epsilon=self.magnitude,
            power_iterations=self.power_iterations,
            separation_weight=self.separation_weight,
            memory_size=self.memory_size,
            memory_keep=self.memory_keep,
        )

    @property
    def protocol(self) -> str:
        """Label carried by every output: which data chose the checkpoint."""
        return {
            "val": "honest: checkpoint selected on the validation list",
            "test": "paper: checkpoint selected on the TEST set (as the published LA numbers)",
            "last": "honest: last checkpoint, no selection",
        }[self.select]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 112,112,80, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers like 112,112,80, got {text!r}")
    return values


def build_train_parser(preset: Preset, description: str) -> argparse.ArgumentParser:
    """Official flag names and defaults, plus ours (--device, --method, --select, ...)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    root_help = {
        "LA": "folder holding '2018LA_Seg_Training Set/' (see README 'Data')",
        "ACDC": "folder holding 'data/' with the ACDC h5 volumes and 'data/slices/' (see README 'Data')",
    }.get(preset.dataset, "dataset folder")
    p.add_argument("--root_path", default=f"./data/{preset.dataset}", help=root_help)
    p.add_argument("--exp", default=f"{preset.dataset}_SSNet", help="experiment name (run folder prefix)")
    p.add_argument("--method", default="ss_net", help=f"one of: {', '.join(sorted(METHODS))}")
    p.add_argument("--labelnum", type=int, default=preset.labelnum, help=preset.labelnum_meaning)
    p.add_argument("--max_iteration", type=int, default=preset.max_iteration)
    p.add_argument("--batch_size", type=int, default=preset.batch_size, help="labeled + unlabeled per batch")
    p.add_argument("--labeled_bs", type=int, default=preset.labeled_bs, help="labeled samples per batch")
    p.add_argument("--base_lr", type=float, default=0.01)
    p.add_argument("--lr_step", type=int, default=preset.lr_step, help="x0.1 every N iterations; 0 = constant")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--deterministic", type=int, default=1, choices=(0, 1))
    p.add_argument("--consistency", type=float, default=preset.consistency, help="max warm-up weight")
    p.add_argument("--consistency_rampup", type=float, default=preset.consistency_rampup,
                   help="ramp length in 'epochs' of 150 iterations")
    p.add_argument("--magnitude", type=float, default=preset.magnitude, help="VAT perturbation norm epsilon")
    p.add_argument("--lds_discrepancy", default=preset.lds_discrepancy, choices=sorted(LDS_DISCREPANCIES),
                   help="pooled_dice = the official 3D LDS (one Dice over all classes pooled); class_mean_dice = "
                        "per-class soft Dice averaged (official 2D; the paper's text for both)")
    p.add_argument("--xi", type=float, default=10.0, help="VAT probe step (official 10)")
    p.add_argument("--power_iterations", type=int, default=1)
    p.add_argument("--separation_weight", type=float, default=0.1, help="class-separation weight relative to w(t)")
    p.add_argument("--memory_size", type=int, default=32, help="prototypes kept per class")
    p.add_argument("--memory_keep", default="lowest", choices=KEEP_CHOICES,
                   help="lowest = official code; highest = the paper's 'highest-ranked' text")
    p.add_argument("--ce_weight", type=float, default=0.0,
                   help="cross-entropy weight in the supervised loss (official: computed, weight 0)")
    p.add_argument("--patch_size", type=int_list, default=list(preset.patch_size),
                   help="training crop (LA) / resize (ACDC) size, comma separated")
    p.add_argument("--base_filters", type=int, default=None, help="network width (V-Net only; official 16)")
    p.add_argument("--select", default="val", choices=SELECT_CHOICES,
                   help="checkpoint selection: val (honest), test (the paper's LA protocol), last")
    p.add_argument("--eval_every", type=int, default=preset.eval_every, help="iterations between evaluations")
    p.add_argument("--eval_start", type=int, default=preset.eval_start, help="first iteration eligible for evaluation")
    if preset.stride:
        p.add_argument("--stride", type=int_list, default=list(preset.stride), help="sliding-window stride")
    p.add_argument("--eval_batch_size", type=int, default=4, help="patches/slices per forward at evaluation")
    p.add_argument("--device", default=default_device(), help="cuda, cuda:1, cpu, ...")
    p.add_argument("--num_workers", type=int, default=4, help="data-loading worker processes")
    p.add_argument("--run_dir", default="",
                   help="run folder (default: model/<exp>_<labelnum>_labeled/<method>_seed<seed>)")
    p.add_argument("--lists_dir", default="", help=f"folder with the split lists (default: data/{preset.dataset})")
    p.add_argument("--image_every", type=int, default=200, help="iterations between TensorBoard image panels")
    p.add_argument("--no_progress", action="store_true", help="no tqdm progress bar")
    return p


def config_from_args(args: argparse.Namespace, preset: Preset) -> TrainConfig:
    check_method_name(args.method)
    network_kwargs = dict(preset.network_kwargs)
    if args.base_filters is not None:
        if preset.network != "vnet":
            raise ValueError("--base_filters applies to the V-Net (LA) only")
        network_kwargs["base_filters"] = args.base_filters
    if len(args.patch_size) != len(preset.patch_size):
        raise ValueError(
            f"--patch_size needs {len(preset.patch_size)} values for {preset.dataset}, got {args.patch_size}"
        )
    config = TrainConfig(
        dataset=preset.dataset,
        root_path=args.root_path,
        exp=args.exp,
        method=args.method,
        labelnum=args.labelnum,
        max_iteration=args.max_iteration,
        batch_size=args.batch_size,
        labeled_bs=args.labeled_bs,
        base_lr=args.base_lr,
        lr_step=args.lr_step,
        seed=args.seed,
        deterministic=args.deterministic,
        consistency=args.consistency,
        consistency_rampup=args.consistency_rampup,
        magnitude=args.magnitude,
        lds_discrepancy=args.lds_discrepancy,
        xi=args.xi,
        power_iterations=args.power_iterations,
        separation_weight=args.separation_weight,
        memory_size=args.memory_size,
        memory_keep=args.memory_keep,
        ce_weight=args.ce_weight,
        patch_size=list(args.patch_size),
        network=preset.network,
        network_kwargs=network_kwargs,
        num_classes=preset.num_classes,
        select=args.select,
        eval_every=args.eval_every,
        eval_start=args.eval_start,
        stride=list(getattr(args, "stride", []) or []),
        eval_batch_size=args.eval_batch_size,
        device=args.device,
        num_workers=args.num_workers,
        run_dir=args.run_dir,
        lists_dir=args.lists_dir,
        image_every=args.image_every,
        progress=not args.no_progress,
    )
    validate_config(config)
    return config


def validate_config(config: TrainConfig) -> None:
    """Checks that need no data; data-dependent checks happen when the split is built."""
    if config.labeled_bs < 1 or config.labeled_bs > config.batch_size:
        raise ValueError(
            f"--labeled_bs must be between 1 and --batch_size ({config.batch_size}), got {config.labeled_bs}"
        )
    if METHODS[config.method].uses_unlabeled and config.batch_size == config.labeled_bs:
        raise ValueError(
            f"method {config.method} needs unlabeled samples: --batch_size ({config.batch_size}) must exceed "
            f"--labeled_bs ({config.labeled_bs})"
        )
    if config.max_iteration < 1:
        raise ValueError(f"--max_iteration must be >= 1, got {config.max_iteration}")
    if config.select not in SELECT_CHOICES:
        raise ValueError(f"--select must be one of {', '.join(SELECT_CHOICES)}, got {config.select!r}")
    if config.eval_every < 1:
        raise ValueError(f"--eval_every must be >= 1, got {config.eval_every}")
    for size in config.patch_size:
        if size % 16:
            raise ValueError(f"--patch_size {config.patch_size}: every size must be divisible by 16 (network stride)")


def default_run_dir(config: TrainConfig) -> Path:
    if config.run_dir:
        return Path(config.run_dir)
    return Path("model") / f"{config.exp}_{config.labelnum}_labeled" / f"{config.method}_seed{config.seed}"
