"""The train scripts' flags, generated from the fields of TrainConfig (utils/flags.py: their help, choices, defaults).

Every field with a `flag` becomes `--<name>`; bool settings are 0/1 flags, except `progress` (`--no_progress`).
A flag's default is the dataset's value of the setting (training.config.defaults); settings the method's recipe
or --schedule decide default to None and say so in -h. Two flags are not settings: --base_filters (the V-Net's
or U-Net's width, into network_kwargs) and --debug (tracebacks).
"""
from __future__ import annotations

import argparse
from typing import Any

from dataloaders import NIFTI_DATASETS, get_dataset
from utils.cli import DocstringHelpFormatter, ScriptParser
from utils.flags import add_flags, explicit_flags, section, values_from_args

from .config import GROUP_ORDER, RUN, TrainConfig, defaults, make_config, resumed_config

__all__ = ["build_train_parser", "config_from_args", "explicit_flags", "settings_from_args"]
NETWORK_WIDTH_HELP = {  # --base_filters: a narrower network (e.g. 4) for CPU trials
    "vnet": "V-Net width: channels of the first level, doubled at each level (official 16)",
    "unet": "U-Net width: channels of the first of its 5 levels, doubled at each level (official 16: 16..256)",
}


def build_train_parser(dataset: str, description: str) -> argparse.ArgumentParser:
    """The parser of train_la.py (dataset "LA"), train_acdc.py ("ACDC") and train.py ("NIfTI-3d" / "NIfTI-2d")."""
    p = ScriptParser(description=description, formatter_class=DocstringHelpFormatter)
    values = defaults(dataset)
    adapter = None if dataset in NIFTI_DATASETS else get_dataset(dataset)
    for title in GROUP_ORDER:  # the -h sections in this order
        section(p, title)
    helps = {"root_path": "the nnU-Net raw folder (default: --data)"} if adapter is None else \
        {"labelnum": adapter.labelnum_meaning, "root_path": adapter.root_help}
    add_flags(p, TrainConfig, context=adapter, values=values, helps=helps, resolved_example=f"ss_net on {dataset}")
    if values["network"] in NETWORK_WIDTH_HELP:
        section(p, RUN).add_argument("--base_filters", type=int, default=None,
                                     help=NETWORK_WIDTH_HELP[values["network"]])
    p.add_argument("--debug", action="store_true", help="full traceback on errors")
    return p


def settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed flags as TrainConfig settings; a setting left out (None) is decided by the recipe, --schedule or
    the dataset (make_config)."""
    values = values_from_args(TrainConfig, args)  # script-only flags stay out
    if getattr(args, "base_filters", None) is not None:
        values["network_kwargs"] = {"base_filters": args.base_filters}
    return values


def config_from_args(args: argparse.Namespace, dataset: str, given: set[str] | None = None) -> TrainConfig:
    """The run's config from parsed flags; `given` (explicit_flags) names what the command line said, which is
    what may override a saved config with --resume."""
    settings = settings_from_args(args)
    if settings.get("resume"):
        names = given if given is not None else set()
        return resumed_config(settings["resume"], {k: v for k, v in settings.items() if k in names})
    return make_config(dataset, **settings)
