"""The train scripts' flags, generated from the fields of TrainConfig (their help, choices and defaults).

Every field with a `flag` becomes `--<name>`; bool settings are 0/1 flags, except `progress` (`--no_progress`).
A flag's default is the dataset's value of the setting (training.config.defaults); settings the method's recipe
or --schedule decide default to None and say so in -h. Two flags are not settings: --base_filters (the V-Net's
or U-Net's width, into network_kwargs) and --debug (tracebacks).
"""
from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any

from dataloaders import NIFTI_DATASETS, get_dataset
from utils.cli import DocstringHelpFormatter, ScriptParser, help_text

from .config import GROUP_ORDER, RESOLVED_FIELDS, TrainConfig, defaults, make_config, resumed_config


def _bool_flag(field) -> bool:
    return field.type in (bool, "bool")


def _describe_default(name: str, value: Any, dataset: str) -> str:
    if name in RESOLVED_FIELDS:
        shown = ",".join(map(str, value)) if isinstance(value, list) else value
        return f"from {TRAIN_FIELD_META[name]['resolved']}; ss_net on {dataset}: {shown}"
    return ""


TRAIN_FIELD_META = {f.name: f.metadata for f in fields(TrainConfig)}
NETWORK_WIDTH_HELP = {  # --base_filters: a narrower network (e.g. 4) for CPU trials
    "vnet": "V-Net width: channels of the first level, doubled at each level (official 16)",
    "unet": "U-Net width: channels of the first of its 5 levels, doubled at each level (official 16: 16..256)",
}


def build_train_parser(dataset: str, description: str) -> argparse.ArgumentParser:
    """The parser of train_la.py (dataset "LA"), train_acdc.py ("ACDC") and train.py ("NIfTI-3d" / "NIfTI-2d")."""
    p = ScriptParser(description=description, formatter_class=DocstringHelpFormatter)
    values = defaults(dataset)
    adapter = None if dataset in NIFTI_DATASETS else get_dataset(dataset)
    groups = {name: p.add_argument_group(name) for name in GROUP_ORDER}
    for f in fields(TrainConfig):
        meta = f.metadata
        flag = meta.get("flag", True)
        if callable(flag):
            flag = flag(adapter) if adapter is not None else True
        if not flag:
            continue
        target = groups[meta["group"]] if meta.get("group") else p
        help_parts = [meta.get("help", "")]
        if f.name == "labelnum" and adapter is not None:
            help_parts = [adapter.labelnum_meaning]
        if f.name == "root_path" and adapter is not None:
            help_parts = [adapter.root_help]
        if meta.get("unit"):
            help_parts.append(f"[{meta['unit']}]")
        resolved = _describe_default(f.name, values[f.name], dataset)
        if resolved:
            help_parts.append(f"(default: {resolved})")
        help_string = help_text(" ".join(part for part in help_parts if part))
        names = [flag if isinstance(flag, str) else f"--{f.name}"]
        default = None if f.name in RESOLVED_FIELDS else values[f.name]
        if meta.get("inverse_flag"):
            target.add_argument(meta["inverse_flag"], dest=f.name, action="store_false", default=default,
                                help=help_text(f"no {meta.get('help', f.name)}"))
        elif _bool_flag(f):
            target.add_argument(*names, dest=f.name, type=int, choices=(0, 1),
                                default=None if default is None else int(default), help=help_string)
        else:
            kwargs: dict[str, Any] = {"dest": f.name, "default": default, "help": help_string}
            if meta.get("choices"):
                kwargs["choices"] = meta["choices"]
            if meta.get("nargs"):
                kwargs["nargs"] = meta["nargs"]
            if meta.get("metavar"):
                kwargs["metavar"] = meta["metavar"]
            if meta.get("parse"):
                kwargs["type"] = meta["parse"]
            elif f.type in (int, "int"):
                kwargs["type"] = int
            elif f.type in (float, "float"):
                kwargs["type"] = float
            target.add_argument(*names, **kwargs)
    if values["network"] in NETWORK_WIDTH_HELP:
        groups[GROUP_ORDER[0]].add_argument("--base_filters", type=int, default=None,
                                            help=NETWORK_WIDTH_HELP[values["network"]])
    p.add_argument("--debug", action="store_true", help="full traceback on errors")
    return p


def explicit_flags(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """Destinations of the options written on the command line (as opposed to defaults)."""
    given = set()
    for action in parser._actions:
        for option in action.option_strings:
            if any(token == option or token.startswith(option + "=") for token in argv):
                given.add(action.dest)
    return given


def settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed flags as TrainConfig settings (None = not given: the recipe or --schedule decides)."""
    train_fields = {f.name: f for f in fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in train_fields}  # script-only flags stay out
    for name, value in values.items():
        if value is not None and _bool_flag(train_fields[name]):
            values[name] = bool(value)
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
