"""Training configuration: one dataclass, filled from flags whose defaults are the dataset preset."""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from engine.precision import PRECISION_MODES
from engine.presets import PRESETS, Preset
from engine.speed import OPTIMIZER_IMPLS
from methods import METHODS, MethodSettings, check_method_name
from methods.recipe import LR_POLICIES, SCHEDULE_CHOICES, Recipe, Schedule
from utils.losses import LDS_DISCREPANCIES, MEMORY_WEIGHTS
from utils.prototype_memory import KEEP_CHOICES

SELECT_CHOICES = ("val", "test", "last")
PROTOCOLS = {
    "val": "honest: checkpoint selected on the validation list",
    "test": "paper: checkpoint selected on the TEST set (as the published LA numbers)",
    "last": "honest: last checkpoint, no selection",
}


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
    # schedule (methods/recipe.py): "recipe" = the method's authors' schedule, "shared" = SS-Net's of the dataset;
    # the values below are resolved from it unless given as flags
    schedule: str = "recipe"
    lr_policy: str = "step"  # step (x0.1 every lr_step) | poly | constant
    rampup_zero_based: bool = False  # w(t) on the 0-based counter (the script evaluates it before incrementing)
    consistency_off: int = 0  # first iterations with the unlabeled term switched off
    # the method's supervised Dice (its recipe's variant)
    dice_include_background: bool = False
    dice_squared_denominator: bool = False
    dice_smooth: float = 1e-8
    base_lr: float = 0.01
    seed: int = 1337
    deterministic: int = 1
    xi: float = 10.0
    power_iterations: int = 1
    separation_weight: float = 0.1
    memory_size: int = 32
    memory_keep: str = "lowest"
    memory_weights: str = "ones"
    ce_weight: float = 0.0
    ema_decay: float = 0.99  # Mean Teacher / UA-MT teacher
    select: str = "val"
    eval_batch_size: int = 4
    device: str = "cpu"
    num_workers: int = 2
    run_dir: str = ""
    lists_dir: str = ""
    image_every: int = 200
    progress: bool = True
    track: list[str] = field(default_factory=list)  # more lists to keep a best checkpoint for (best_model_<list>.pth)
    save_every: int = 500  # iterations between resume checkpoints
    keep_checkpoints: int = 3  # newest resume checkpoints kept
    resume: str = ""  # run folder to continue (its config.json gives the settings)
    # --- speed options (README "Speed"); the defaults are the paper's fp32 math ---
    amp: str = "off"  # off | bf16 | fp16: autocast for training and in-training evaluation
    channels_last: bool = False
    compile: bool = False
    optimizer_impl: str = "default"  # default | foreach | fused (same SGD update)
    eval_stride: list[int] = field(default_factory=list)  # in-training sliding-window stride; empty = stride
    nifti: dict = field(default_factory=dict)  # train.py --data: mode, preprocessing, labels (empty for LA/ACDC)
    # --- multi-process training under torchrun (README "Multi-GPU (torchrun)", engine/distributed.py) ---
    sync_bn: bool = False  # SyncBatchNorm in the backbone (GPUs only)
    allow_world_size_change: bool = False  # resume with another number of processes (not bitwise exact)

    @property
    def preset(self) -> Preset:
        return PRESETS[self.dataset]

    def method_settings(self) -> MethodSettings:
        return MethodSettings(
            num_classes=self.num_classes,
            dice_include_background=self.dice_include_background,
            dice_squared_denominator=self.dice_squared_denominator,
            dice_smooth=self.dice_smooth,
            ce_weight=self.ce_weight,
            consistency=self.consistency,
            consistency_rampup=self.consistency_rampup,
            rampup_zero_based=self.rampup_zero_based,
            consistency_off=self.consistency_off,
            lds_discrepancy=self.lds_discrepancy,
            xi=self.xi,
            epsilon=self.magnitude,
            power_iterations=self.power_iterations,
            separation_weight=self.separation_weight,
            memory_size=self.memory_size,
            memory_keep=self.memory_keep,
            memory_weights=self.memory_weights,
            ema_decay=self.ema_decay,
            max_iterations=self.max_iteration,
        )

    @property
    def protocol(self) -> str:
        """Label carried by every output: which data chose the checkpoint."""
        return PROTOCOLS[self.select]

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


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" only where the help does not state its default already and X says something."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default:" in text or action.default in (None, "", [], False) or action.default is argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


def help_text(text: str) -> str:
    """argparse formats help strings with %: a literal percent sign must be doubled."""
    return text.replace("%", "%%")


def build_train_parser(preset: Preset, description: str) -> argparse.ArgumentParser:
    """Official flag names and defaults, plus ours (--device, --method, --select, ...)."""
    p = argparse.ArgumentParser(description=description, formatter_class=DefaultsHelpFormatter)
    root_help = {
        "LA": "folder holding '2018LA_Seg_Training Set/' (see README 'Data')",
        "ACDC": "folder holding 'data/' with the ACDC h5 volumes and 'data/slices/' (see README 'Data')",
    }.get(preset.dataset, "dataset folder")
    p.add_argument("--root_path", default=f"./data/{preset.dataset}", help=root_help)
    p.add_argument("--exp", default=f"{preset.dataset}_SSNet", help="experiment name (run folder prefix)")
    p.add_argument("--method", default="ss_net", help=f"one of: {', '.join(sorted(METHODS))}")
    p.add_argument("--labelnum", type=int, default=preset.labelnum, help=help_text(preset.labelnum_meaning))
    p.add_argument("--schedule", default="recipe", choices=SCHEDULE_CHOICES,
                   help="recipe = each method's authors' schedule (iterations, LR policy, warm-up; README "
                        "'Baselines'); shared = SS-Net's schedule of the dataset for every method. The flags "
                        "below marked 'from --schedule' override single values")
    p.add_argument("--max_iteration", type=int, default=None,
                   help=f"iterations (default: from --schedule; ss_net {preset.max_iteration})")
    p.add_argument("--batch_size", type=int, default=preset.batch_size, help="labeled + unlabeled per batch")
    p.add_argument("--labeled_bs", type=int, default=preset.labeled_bs, help="labeled samples per batch")
    p.add_argument("--base_lr", type=float, default=0.01)
    p.add_argument("--lr_policy", default=None, choices=LR_POLICIES,
                   help=f"step = x0.1 every --lr_step iterations, poly = (1 - t/T)^0.9, constant (default: from "
                        f"--schedule; ss_net {preset.lr_policy})")
    p.add_argument("--lr_step", type=int, default=None,
                   help="iterations between x0.1 decays of the step policy; 0 = constant (default: from --schedule)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--deterministic", type=int, default=1, choices=(0, 1))
    p.add_argument("--consistency", type=float, default=None,
                   help=f"max warm-up weight (default: the method's recipe; ss_net {preset.consistency})")
    p.add_argument("--ema_decay", type=float, default=0.99, help="teacher EMA decay (mean_teacher, ua_mt)")
    p.add_argument("--consistency_rampup", type=float, default=None,
                   help=f"ramp length in 'epochs' of 150 iterations (default: from --schedule; ss_net "
                        f"{preset.consistency_rampup:g})")
    p.add_argument("--rampup_zero_based", type=int, default=None, choices=(0, 1),
                   help="1: the warm-up (and UA-MT's threshold) sees the iteration counter before the official "
                        "script increments it (default: from --schedule)")
    p.add_argument("--consistency_off", type=int, default=None,
                   help="first iterations with the unlabeled term switched off (default: from --schedule)")
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
    p.add_argument("--memory_weights", default="ones", choices=MEMORY_WEIGHTS,
                   help="prototype weights in the separation loss: ones = official code (each learned weight is "
                        "divided by itself, so the memory selectors never learn); learned = the paper's learned "
                        "weights, rescaled to mean 1")
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
    p.add_argument("--track", nargs="+", default=[], choices=("val", "test"),
                   help="also keep the best checkpoint on these lists (best_model_<list>.pth), e.g. --select val "
                        "--track test gives the honest and the paper selection from one run")
    p.add_argument("--save_every", type=int, default=500, help="iterations between resume checkpoints")
    p.add_argument("--keep_checkpoints", type=int, default=3, help="newest resume checkpoints to keep")
    p.add_argument("--resume", default="", metavar="RUN_DIR",
                   help="continue the run in RUN_DIR with its saved settings (re-running the same command "
                        "also resumes); only runtime flags such as --device, --num_workers, --max_iteration "
                        "may change")
    p.add_argument("--debug", action="store_true", help="full traceback on errors")
    add_speed_arguments(p, train=True, has_stride=bool(preset.stride))
    add_distributed_arguments(p)
    return p


def add_distributed_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of multi-process runs; the launch itself (processes, nodes, rendezvous) is torchrun's."""
    g = p.add_argument_group("multi-GPU (launch with torchrun; --batch_size and --labeled_bs are the global batch)")
    g.add_argument("--sync_bn", type=int, default=0, choices=(0, 1),
                   help="synchronise the backbone's BatchNorm statistics across processes (GPUs only)")
    g.add_argument("--allow_world_size_change", type=int, default=0, choices=(0, 1),
                   help="resume a run with another number of processes (continues, but not bitwise exact)")


def add_speed_arguments(p: argparse.ArgumentParser, *, train: bool, has_stride: bool) -> None:
    """The opt-in speed flags shared by the train and test scripts (README "Speed")."""
    g = p.add_argument_group("speed (opt-in; the defaults are the paper's fp32 math)")
    g.add_argument("--amp", default="off", choices=PRECISION_MODES,
                   help="mixed precision: bf16 (recommended on GPUs that have it), fp16 (with a grad scaler), off")
    g.add_argument("--channels_last", type=int, default=0, choices=(0, 1),
                   help="channels-last memory format for the convolutions (helps with --amp on GPUs)")
    g.add_argument("--compile", type=int, default=0, choices=(0, 1),
                   help="torch.compile the network (minutes of compilation first; pays off on long runs)")
    if train:
        g.add_argument("--optimizer_impl", default="default", choices=OPTIMIZER_IMPLS,
                       help="SGD kernel: default (PyTorch's choice), foreach or fused; same update")
        if has_stride:
            g.add_argument("--eval_stride", type=int_list, default=[],
                           help="sliding-window stride of the in-training evaluation only (default: --stride; "
                                "e.g. 56,56,40: 4.6x fewer windows on LA); checkpoints keep --stride for testing")


def explicit_flags(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """Destinations of the options written on the command line (as opposed to defaults)."""
    given = set()
    for action in parser._actions:
        for option in action.option_strings:
            if any(token == option or token.startswith(option + "=") for token in argv):
                given.add(action.dest)
    return given


def resumed_config(args: argparse.Namespace, given: set[str]) -> TrainConfig:
    """--resume RUN_DIR: the settings saved in RUN_DIR/config.json, plus the runtime flags given now."""
    from engine.resume import RUNTIME_FIELDS

    run_dir = Path(args.resume)
    saved_path = run_dir / "config.json"
    if not saved_path.is_file():
        raise FileNotFoundError(f"--resume {run_dir}: no config.json there; name a run folder written by a "
                                f"train script")
    try:
        saved = json.loads(saved_path.read_text())
        saved = {**saved, **legacy_settings(saved)}
        known = {f.name for f in fields(TrainConfig)}
        config = TrainConfig(**{k: v for k, v in saved.items() if k in known})
    except (json.JSONDecodeError, TypeError) as exc:
        raise ValueError(f"--resume {run_dir}: config.json is not a saved training config ({exc})") from None
    cli = {"progress": not args.no_progress, **{k: v for k, v in vars(args).items() if k in given}}
    for name, value in cli.items():
        if name in ("resume", "debug") or name not in known:
            continue
        if name not in RUNTIME_FIELDS and value != getattr(config, name):
            raise ValueError(f"--{name} cannot change when resuming (saved {getattr(config, name)!r}); start a new "
                             f"run with another --run_dir instead")
        if name in RUNTIME_FIELDS:
            setattr(config, name, list(value) if isinstance(value, tuple) else value)
    config.resume, config.run_dir = str(run_dir), str(run_dir)
    validate_config(config)
    return config


def config_from_args(args: argparse.Namespace, preset: Preset, given: set[str] | None = None) -> TrainConfig:
    """The run's config from parsed flags; `given` (explicit_flags) is needed with --resume."""
    if getattr(args, "resume", ""):
        return resumed_config(args, given or set())
    check_method_name(args.method)
    network_kwargs = dict(preset.network_kwargs)
    if args.base_filters is not None:
        if preset.network != "vnet":
            raise ValueError("--base_filters applies to the V-Net (LA) only")
        network_kwargs["base_filters"] = args.base_filters
    # baselines: network options the method needs (an SDF head, pyramid outputs, a second decoder) and its
    # recipe's consistency weight unless --consistency is given
    method_cls, spatial_dims = METHODS[args.method], len(preset.patch_size)
    network_kwargs.update(method_cls.network_options(spatial_dims))
    recipe = method_cls.recipe(spatial_dims)
    schedule = resolve_schedule(args.schedule, recipe, preset)
    consistency = args.consistency if args.consistency is not None else (
        recipe.weight(args.labelnum) if recipe else preset.consistency)
    dice = recipe.dice if recipe and recipe.dice else preset.dice
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
        schedule=args.schedule,
        max_iteration=given_or(args.max_iteration, schedule.max_iterations),
        batch_size=args.batch_size,
        labeled_bs=args.labeled_bs,
        base_lr=args.base_lr,
        lr_policy=given_or(args.lr_policy, schedule.lr_policy),
        lr_step=given_or(args.lr_step, schedule.lr_step),
        seed=args.seed,
        deterministic=args.deterministic,
        consistency=consistency,
        ema_decay=args.ema_decay,
        consistency_rampup=given_or(args.consistency_rampup, schedule.consistency_rampup),
        rampup_zero_based=bool(given_or(args.rampup_zero_based, schedule.rampup_zero_based)),
        consistency_off=given_or(args.consistency_off, schedule.consistency_off),
        dice_include_background=dice.include_background,
        dice_squared_denominator=dice.squared_denominator,
        dice_smooth=dice.smooth,
        magnitude=args.magnitude,
        lds_discrepancy=args.lds_discrepancy,
        xi=args.xi,
        power_iterations=args.power_iterations,
        separation_weight=args.separation_weight,
        memory_size=args.memory_size,
        memory_keep=args.memory_keep,
        memory_weights=args.memory_weights,
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
        track=list(args.track),
        save_every=args.save_every,
        keep_checkpoints=args.keep_checkpoints,
        amp=args.amp,
        channels_last=bool(args.channels_last),
        compile=bool(args.compile),
        optimizer_impl=args.optimizer_impl,
        eval_stride=list(getattr(args, "eval_stride", []) or []),
        sync_bn=bool(getattr(args, "sync_bn", 0)),
        allow_world_size_change=bool(getattr(args, "allow_world_size_change", 0)),
    )
    validate_config(config)
    return config


def given_or(value, default):
    """A flag's value when it was given (not None), else the schedule's."""
    return default if value is None else value


def resolve_schedule(name: str, recipe: Recipe | None, preset: Preset) -> Schedule:
    """--schedule recipe: the method's recipe schedule where it has one; shared (or no recipe): the dataset's."""
    if name not in SCHEDULE_CHOICES:
        raise ValueError(f"--schedule must be one of {', '.join(SCHEDULE_CHOICES)}, got {name!r}")
    if name == "recipe" and recipe is not None and recipe.schedule is not None:
        return recipe.schedule
    return preset.schedule


def method_schedule(method: str, preset: Preset, name: str = "recipe") -> tuple[str, Schedule]:
    """(label, schedule) that `--method method --schedule name` trains with on `preset`: label "recipe" when the
    method's authors' schedule is used, "SS-Net" when SS-Net's schedule of the dataset is."""
    recipe = METHODS[check_method_name(method)].recipe(len(preset.patch_size))
    schedule = resolve_schedule(name, recipe, preset)
    own = recipe is not None and recipe.schedule is not None and schedule == recipe.schedule
    return ("recipe" if own and method != "ss_net" else "SS-Net"), schedule


def legacy_settings(saved: dict) -> dict:
    """Settings a run saved before they existed ran with (its behaviour then), for the keys `saved` lacks."""
    preset = PRESETS.get(saved.get("dataset", ""))
    legacy = {"schedule": "shared", "lr_policy": "step", "rampup_zero_based": False, "consistency_off": 0}
    if saved.get("method", "ss_net") == "ss_net":
        legacy["memory_weights"] = "learned"  # before the official prototype weights (beta = 1) became the default
    if preset is not None:  # every method used its dataset's Dice
        legacy.update(dice_include_background=preset.dice_include_background,
                      dice_squared_denominator=preset.dice_squared_denominator, dice_smooth=preset.dice_smooth)
    return {k: v for k, v in legacy.items() if k not in saved}


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
    if config.save_every < 1 or config.keep_checkpoints < 1:
        raise ValueError(f"--save_every ({config.save_every}) and --keep_checkpoints ({config.keep_checkpoints}) "
                         f"must be >= 1")
    if config.lr_policy not in LR_POLICIES:
        raise ValueError(f"--lr_policy must be one of {', '.join(LR_POLICIES)}, got {config.lr_policy!r}")
    if config.lr_step < 0 or config.consistency_off < 0:
        raise ValueError(f"--lr_step ({config.lr_step}) and --consistency_off ({config.consistency_off}) must be "
                         f">= 0")
    if config.base_lr <= 0 or not math.isfinite(config.base_lr):
        raise ValueError(f"--base_lr must be a positive number, got {config.base_lr}")
    for name in config.track:
        if name not in ("val", "test"):
            raise ValueError(f"--track takes val and/or test, got {name!r}")
    for size in config.patch_size:
        if size % 16:
            raise ValueError(f"--patch_size {config.patch_size}: every size must be divisible by 16 (network stride)")


def default_run_dir(config: TrainConfig) -> Path:
    if config.run_dir:
        return Path(config.run_dir)
    return Path("model") / f"{config.exp}_{config.labelnum}_labeled" / f"{config.method}_seed{config.seed}"
