"""The training config: one dataclass, every setting declared once; `make_config` builds a run's config.

    config = make_config("LA", method="ua_mt", labelnum=4, root_path="/data/LA")   # from Python
    python train_la.py --method ua_mt --labelnum 4 --root_path /data/LA            # the same from the shell

TrainConfig extends methods.settings.MethodSettings (the method hyper-parameters) with the run, data, schedule,
evaluation and speed settings; training/flags.py generates every flag from these fields. A value comes from, in
order: what is given, then the method's recipe or the dataset's SS-Net schedule (settings marked `resolved`),
then the dataset preset (training/presets.py), then the declared default. config.json is this dataclass, flat.
"""
from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

from dataloaders import NIFTI_DATASETS, get_dataset
from inference.settings import SPEED, InferenceSettings, slides
from methods import METHODS, check_method_name
from methods.recipe import LR_POLICIES, SCHEDULE_CHOICES, Dice, Recipe, Schedule
from methods.settings import LOSSES, OPTIMISATION, RECIPE, SCHEDULE, SSNET, TEACHERS, MethodSettings
from networks.unet import unet_channels
from utils.cli import int_list
from utils.errors import UserError
from utils.settings import check_settings, declared_default, same_as, setting
from utils.shared_settings import SharedSettings

from .presets import PRESETS, Preset

SELECT_CHOICES = ("val", "test", "last")
PROTOCOLS = {
    "val": "honest: checkpoint selected on the validation list",
    "test": "paper: checkpoint selected on the TEST set (as the published LA numbers)",
    "last": "honest: last checkpoint, no selection",
}
OPTIMIZER_IMPLS = ("default", "foreach", "fused")
RUN = "data and run folder"
SELECTION = "checkpoint selection and evaluation"
MACHINE = "machine and outputs"
MULTI_GPU = "multi-GPU (launch with torchrun; --batch_size and --labeled_bs are the global batch)"
GROUP_ORDER = (RUN, OPTIMISATION, LOSSES, SSNET, TEACHERS, SELECTION, MACHINE, SPEED, MULTI_GPU)


@dataclass(kw_only=True)
class TrainConfig(MethodSettings):
    """Resolved settings of one run (written to config.json and into every checkpoint)."""

    # -- data and run folder
    dataset: str = setting(help="LA | ACDC | NIfTI-3d | NIfTI-2d", flag=False)
    root_path: str = same_as(SharedSettings, "root_path", runtime=True, group=RUN)
    lists_dir: str = setting("", "folder with the split lists (default: data/splits/<dataset>)", group=RUN)
    exp: str = setting("", "experiment name (run folder prefix)", group=RUN)
    run_dir: str = setting("", "run folder (default: model/<exp>_<labelnum>_labeled/<method>_seed<seed>)",
                           runtime=True, group=RUN)
    init_from: str = setting("", "start from the weights of this checkpoint (a two-stage method's second stage: "
                                 "the first stage's best_model.pth)", flag=False, runtime=True)
    resume: str = setting("", "continue the run in RUN_DIR with its saved settings (re-running the same command "
                              "also resumes); only runtime flags such as --device, --num_workers, --max_iteration "
                              "may change", metavar="RUN_DIR", runtime=True, group=RUN)
    nifti: dict = setting(help="train.py --data: mode, preprocessing, labels (empty for LA/ACDC)", factory=dict,
                          flag=False)
    # -- method and labels
    method: str = setting("ss_net", f"one of: {', '.join(sorted(METHODS))}", group=RUN)
    labelnum: int = setting(8, "labeled training cases", group=RUN, minimum=0)
    network: str = setting("vnet", "registered network name (from the dataset)", flag=False)
    network_kwargs: dict = setting(help="network constructor arguments (from the dataset, method and "
                                        "--base_filters)", factory=dict, flag=False)
    # -- optimisation and schedule
    schedule: str = setting(
        "recipe", "recipe = each method's authors' schedule (iterations, LR policy, warm-up; docs/baselines.md); "
                  "shared = SS-Net's schedule of the dataset for every method. Flags marked 'from --schedule' "
                  "override single values", choices=SCHEDULE_CHOICES, group=OPTIMISATION)
    batch_size: int = setting(4, "labeled + unlabeled samples per batch", resolved=RECIPE, group=OPTIMISATION)
    labeled_bs: int = setting(2, "labeled samples per batch", resolved=RECIPE, group=OPTIMISATION)
    patch_size: list[int] = setting(help="training crop (LA) / resize (ACDC) size, comma separated", factory=list,
                                    parse=int_list, group=OPTIMISATION)
    base_lr: float = setting(0.01, "initial SGD learning rate", group=OPTIMISATION)
    lr_policy: str = setting("step", "step = x0.1 every --lr_step iterations, poly = (1 - t/T)^0.9, constant",
                             choices=LR_POLICIES, resolved=SCHEDULE, group=OPTIMISATION)
    lr_step: int = setting(2500, "iterations between x0.1 decays of the step policy; 0 = constant",
                           unit="iterations", resolved=SCHEDULE, group=OPTIMISATION, minimum=0)
    seed: int = setting(1337, "random seed of everything", group=OPTIMISATION, minimum=0)
    deterministic: int = setting(1, "deterministic kernels where PyTorch has them", choices=(0, 1), group=OPTIMISATION)
    # -- checkpoint selection and evaluation
    select: str = setting("val", "checkpoint selection: val (honest), test (the paper's LA protocol), last",
                          choices=SELECT_CHOICES, group=SELECTION)
    track: list[str] = setting(help="also keep the best checkpoint on these lists (best_model_<list>.pth), e.g. "
                                    "--select val --track test gives the honest and the paper selection from one "
                                    "run", factory=list, choices=("val", "test"), nargs="+", group=SELECTION)
    eval_every: int = setting(200, "iterations between evaluations", unit="iterations", group=SELECTION,
                              minimum=1)
    eval_start: int = setting(2000, "first iteration eligible for evaluation", group=SELECTION, minimum=0)
    stride: list[int] = setting(help="sliding-window stride", factory=list, parse=int_list, flag=slides,
                                group=SELECTION)
    eval_batch_size: int = same_as(InferenceSettings, "batch_size", help="sliding windows (3-D) / slices (2-D) per "
                                                                        "forward at evaluation", runtime=True,
                                   group=SELECTION)
    # -- machine and outputs
    device: str = same_as(SharedSettings, "device", runtime=True, group=MACHINE)
    num_workers: int = same_as(SharedSettings, "num_workers", runtime=True, group=MACHINE)
    image_every: int = setting(200, "iterations between TensorBoard image panels; 0 = none", runtime=True,
                               group=MACHINE, minimum=0)
    progress: bool = same_as(SharedSettings, "progress", runtime=True, group=MACHINE)
    save_every: int = setting(500, "iterations between resume checkpoints", unit="iterations", runtime=True,
                              group=MACHINE, minimum=1)
    keep_checkpoints: int = setting(3, "newest resume checkpoints to keep", runtime=True, group=MACHINE, minimum=1)
    # -- speed options (the defaults are the paper's fp32 math)
    amp: str = same_as(InferenceSettings, "amp", help="mixed precision: bf16 (recommended on GPUs that have it), "
                                                      "fp16 (with a grad scaler), off")
    channels_last: bool = same_as(InferenceSettings, "channels_last")
    compile: bool = same_as(InferenceSettings, "compile")
    optimizer_impl: str = setting("default", "SGD kernel: default (PyTorch's choice), foreach or fused; same "
                                             "update", choices=OPTIMIZER_IMPLS, group=SPEED)
    low_memory: bool = setting(True, "memory-saving step: a method backpropagates each part of its loss as soon as "
                                     "it is complete (SS-Net: the main pass before the VAT passes; heads "
                                     "recomputed in backward): the same gradients bit for bit, about half the peak "
                                     "memory; 0 = the official order, one backward", group=SPEED)
    eval_stride: list[int] = setting(help="sliding-window stride of the in-training evaluation only (default: "
                                          "--stride; e.g. 56,56,40: 4.6x fewer windows on LA); checkpoints keep "
                                          "--stride for testing", factory=list, parse=int_list, group=SPEED,
                                     flag=slides)
    # -- multi-process training under torchrun (docs/multi-gpu.md, training/distributed.py)
    sync_bn: bool = setting(False, "synchronise the backbone's BatchNorm statistics across processes (GPUs only)",
                            group=MULTI_GPU)
    allow_world_size_change: bool = setting(False, "resume a run with another number of processes (continues, "
                                                   "but not bitwise exact)", group=MULTI_GPU, runtime=True)

    @property
    def protocol(self) -> str:
        """Label carried by every output: which data chose the checkpoint."""
        return PROTOCOLS[self.select]

    @property
    def preset(self) -> Preset:
        return PRESETS[self.dataset]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


TRAIN_FIELDS = {f.name: f for f in fields(TrainConfig)}
RUNTIME_FIELDS = frozenset(name for name, f in TRAIN_FIELDS.items() if f.metadata.get("runtime"))
RESOLVED_FIELDS = frozenset(name for name, f in TRAIN_FIELDS.items() if f.metadata.get("resolved"))


def defaults(dataset: str) -> dict[str, Any]:
    """Every setting's value for `dataset` before a method is chosen: declared default <- preset <- adapter."""
    if dataset not in PRESETS:
        raise UserError(f"unknown dataset {dataset!r}; choose from: {', '.join(PRESETS)}")
    preset = PRESETS[dataset]
    values = {name: declared_default(f) for name, f in TRAIN_FIELDS.items()}
    values.update(dataset=dataset, root_path=f"./data/{dataset}", exp=f"{dataset}_SSNet")
    values.update(schedule_values(preset.schedule))
    values.update(dice_values(preset))
    values.update(preset.values)
    if dataset not in NIFTI_DATASETS:
        adapter = get_dataset(dataset)
        values.update(network=adapter.network, network_kwargs=dict(adapter.network_kwargs),
                      num_classes=adapter.num_classes)
    else:  # the folder's dataset.json decides classes and channels (train.py)
        from dataloaders.nifti_dataset import NIFTI_NETWORKS

        network, kwargs = NIFTI_NETWORKS[dataset.split("-")[1]]
        values.update(network=network, network_kwargs=dict(kwargs), num_classes=kwargs["num_classes"])
    return values


def schedule_values(schedule: Schedule) -> dict[str, Any]:
    """A schedule as settings: each field of Schedule is the setting of the same name."""
    return {f.name: getattr(schedule, f.name) for f in fields(Schedule)}


def dice_values(source) -> dict[str, Any]:
    """The Dice of a recipe or preset as settings: each field `x` of Dice is the setting `dice_x`."""
    return {f"dice_{f.name}": getattr(source.dice, f.name) for f in fields(Dice)}


def resolve_schedule(name: str, recipe: Recipe | None, preset: Preset) -> Schedule:
    """--schedule recipe: the method's recipe schedule where it has one; shared (or no recipe): the dataset's."""
    if name not in SCHEDULE_CHOICES:
        raise UserError(f"--schedule must be one of {', '.join(SCHEDULE_CHOICES)}, got {name!r}")
    if name == "recipe" and recipe is not None and recipe.schedule is not None:
        return recipe.schedule
    return preset.schedule


def method_schedule(method: str, dataset: str, name: str = "recipe") -> tuple[str, Schedule]:
    """(label, schedule) that `--method method --schedule name` trains with on `dataset`: label "recipe" when the
    method's authors' schedule is used, "SS-Net" when SS-Net's schedule of the dataset is."""
    preset = PRESETS[dataset]
    recipe = METHODS[check_method_name(method)].recipe(len(preset.values["patch_size"]))
    schedule = resolve_schedule(name, recipe, preset)
    own = recipe is not None and recipe.schedule is not None and schedule == recipe.schedule
    return ("recipe" if own and method != "ss_net" else "SS-Net"), schedule


def make_config(dataset: str, **given: Any) -> TrainConfig:
    """The config of a run on `dataset` with the settings `given` (field names; None = not given).

    `network_kwargs` given are merged into the dataset's (e.g. {"base_filters": 8}); the method adds the options
    its network needs; settings marked `resolved` come from the method's recipe / --schedule unless given.
    """
    given = {k: v for k, v in given.items() if v is not None}
    unknown = sorted(set(given) - set(TRAIN_FIELDS))
    if unknown:
        raise UserError(f"unknown setting(s) {', '.join(unknown)}; the settings are the fields of TrainConfig")
    values = defaults(dataset)
    method = check_method_name(given.get("method", values["method"]))
    preset, dims = PRESETS[dataset], len(given.get("patch_size", values["patch_size"]))
    recipe = METHODS[method].recipe(dims)
    schedule = resolve_schedule(given.get("schedule", values["schedule"]), recipe, preset)
    values.update(schedule_values(schedule))
    values["consistency"] = recipe.weight(given.get("labelnum", values["labelnum"])) if recipe else \
        preset.values["consistency"]
    if recipe and recipe.dice:
        values.update(dice_values(recipe))
    if recipe and recipe.batch:
        values["batch_size"], values["labeled_bs"] = recipe.batch
    # a first stage is part of the method: --schedule shared changes the second stage's length only
    values["pretrain_iterations"] = recipe.schedule.pretrain_iterations if recipe and recipe.schedule else 0
    network_kwargs = {**values["network_kwargs"], **given.pop("network_kwargs", {})}
    if values["network"] == "unet" and network_kwargs.get("base_filters") is not None:  # --base_filters: the width
        network_kwargs["channels"] = unet_channels(int(network_kwargs.pop("base_filters")))
    values.update(given)
    values["network_kwargs"] = {**network_kwargs, **METHODS[method].network_options(dims)}
    values["patch_size"], values["stride"] = list(values["patch_size"]), list(values["stride"])
    values["eval_stride"], values["track"] = list(values["eval_stride"]), list(values["track"])
    config = TrainConfig(**values)
    validate_config(config)
    return config


def legacy_settings(saved: dict) -> dict:
    """Settings a run saved before they existed ran with (its behaviour then), for the keys `saved` lacks."""
    preset = PRESETS.get(saved.get("dataset", ""))
    legacy = {"schedule": "shared", "lr_policy": "step", "rampup_zero_based": False, "consistency_off": 0}
    if saved.get("method", "ss_net") == "ss_net":
        legacy["memory_weights"] = "learned"  # before the official prototype weights (beta = 1) became the default
    if preset is not None:  # every method used its dataset's Dice
        legacy.update(dice_values(preset))
    renamed = {"epsilon": "magnitude"}  # MethodSettings names of older configs
    legacy.update({new: saved[old] for old, new in renamed.items() if old in saved and new not in saved})
    return {k: v for k, v in legacy.items() if k not in saved}


def config_from_saved(saved: dict) -> TrainConfig:
    """A config.json (or a checkpoint's config) as a TrainConfig, older ones with the settings they ran with."""
    saved = {**saved, **legacy_settings(saved)}
    try:
        return TrainConfig(**{k: v for k, v in saved.items() if k in TRAIN_FIELDS})
    except TypeError as exc:
        raise UserError(f"not a saved training config ({exc})") from None


def config_differences(saved: dict, current: dict) -> list[str]:
    """'field: saved -> current' for every setting that changes the math of a resumed run.

    A key missing from an older run's config counts as the value it ran with: legacy_settings for settings that
    came later with another default, else that field's declared default."""
    saved = {**saved, **legacy_settings(saved)} if saved else saved
    keys = (set(saved) | set(current)) - RUNTIME_FIELDS

    def value(config: dict, key: str):
        if key in config:
            return config[key]
        return declared_default(TRAIN_FIELDS[key]) if key in TRAIN_FIELDS else MISSING

    return [f"{k}: {value(saved, k)!r} -> {value(current, k)!r}" for k in sorted(keys)
            if value(saved, k) != value(current, k)]


def resumed_config(run_dir: str | Path, given: dict[str, Any]) -> TrainConfig:
    """--resume RUN_DIR: the settings saved in RUN_DIR/config.json, plus the runtime settings given now."""
    run_dir = Path(run_dir)
    saved_path = run_dir / "config.json"
    if not saved_path.is_file():
        raise FileNotFoundError(f"--resume {run_dir}: no config.json there; name a run folder written by a "
                                f"train script")
    try:
        config = config_from_saved(json.loads(saved_path.read_text()))
    except (json.JSONDecodeError, UserError) as exc:
        raise UserError(f"--resume {run_dir}: config.json is not a saved training config ({exc})") from None
    for name, value in given.items():
        if name == "resume" or name not in TRAIN_FIELDS:
            continue
        if name not in RUNTIME_FIELDS and value != getattr(config, name):
            raise UserError(f"--{name} cannot change when resuming (saved {getattr(config, name)!r}); start a new "
                            f"run with another --run_dir instead")
        if name in RUNTIME_FIELDS:
            setattr(config, name, list(value) if isinstance(value, tuple) else value)
    config.resume, config.run_dir = str(run_dir), str(run_dir)
    validate_config(config)
    return config


def validate_config(config: TrainConfig) -> None:
    """Checks that need no data (each setting's declared choices and minimum, then how settings fit together);
    data-dependent checks happen when the split is built."""
    check_settings(config)
    method = METHODS[check_method_name(config.method)]
    if config.labeled_bs < 1 or config.labeled_bs > config.batch_size:
        raise UserError(f"--labeled_bs must be between 1 and --batch_size ({config.batch_size}), got "
                        f"{config.labeled_bs}")
    if method.uses_unlabeled and config.batch_size == config.labeled_bs:
        raise UserError(f"method {config.method} needs unlabeled samples: --batch_size ({config.batch_size}) must "
                        f"exceed --labeled_bs ({config.labeled_bs})")
    if config.pretrain_iterations and "pretrain" not in method.stages:
        two_stage = ", ".join(name for name, cls in METHODS.items() if "pretrain" in cls.stages)
        raise UserError(f"--pretrain_iterations applies to methods with a pre-train stage ({two_stage}), not to "
                        f"{config.method}; leave it at 0")
    if config.base_lr <= 0 or not math.isfinite(config.base_lr):
        raise UserError(f"--base_lr must be a positive number, got {config.base_lr}")
    dims = len(PRESETS[config.dataset].values["patch_size"]) if config.dataset in PRESETS else None
    if dims is not None and len(config.patch_size) != dims:
        raise UserError(f"--patch_size needs {dims} values for {config.dataset}, got {config.patch_size}")
    for size in config.patch_size:
        if size % 16:
            raise UserError(f"--patch_size {config.patch_size}: every size must be divisible by 16 (network stride)")
    for name in ("stride", "eval_stride"):
        stride = getattr(config, name)
        if stride and (len(stride) != len(config.patch_size) or
                       any(s < 1 or s > p for s, p in zip(stride, config.patch_size, strict=False))):
            raise UserError(f"--{name} {stride} needs {len(config.patch_size)} values between 1 and the patch size "
                            f"{config.patch_size} (a larger step would leave voxels between windows unpredicted)")
    if config.network_kwargs.get("base_filters") is not None and config.network != "vnet":
        raise UserError(f"--base_filters sets the width of the V-Net and the U-Net, not of {config.network!r}")
    widths = [config.network_kwargs.get("base_filters", 1), *config.network_kwargs.get("channels", [])]
    if min(widths) < 1:
        raise UserError(f"--base_filters {min(widths)}: give a positive number of channels (official 16)")


def default_run_dir(config: TrainConfig) -> Path:
    if config.run_dir:
        return Path(config.run_dir)
    return Path("model") / f"{config.exp}_{config.labelnum}_labeled" / f"{config.method}_seed{config.seed}"
