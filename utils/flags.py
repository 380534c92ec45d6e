"""Command-line flags generated from options dataclasses (utils/settings.py), and the namespace mapped back.

    parser = ScriptParser(description=__doc__, formatter_class=DocstringHelpFormatter)
    add_flags(parser, PredictOptions)                                   # every setting becomes a flag
    options = options_from_args(PredictOptions, parser.parse_args(argv))

A setting's flag is `--<name>` with its help, `[unit]`, choices and default; bools are 0/1 flags, switches
(`--tta`) or inverse switches (`--no_progress`); a setting without a default is required; nested options classes
(`utils.settings.nested`) add their flags to the same parser and are built back from them.
"""
from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from typing import Any

from utils.cli import ScriptParser, help_text
from utils.settings import declared_default


def add_flags(parser: argparse.ArgumentParser, options: type, *, context: Any = None,
              values: Mapping[str, Any] | None = None, helps: Mapping[str, str] | None = None,
              resolved_example: str = "") -> list[str]:
    """Add a flag for every setting of `options` (nested options included); returns their destinations.

    values: this script's defaults where they differ from the declared ones (a dataset's preset).
    helps: this script's help of a setting (e.g. the dataset's text for --root_path).
    context: what a callable `flag` is asked (the dataset adapter of the script).
    resolved_example: names the example shown with a `resolved` setting's value from `values` ("ss_net on LA").
    """
    if not isinstance(parser, ScriptParser):  # its choice flags would answer a typo with the whole usage
        raise TypeError(f"add_flags({options.__name__}): build the parser with utils.cli.ScriptParser (one-line "
                        f"errors, 'did you mean' for choices)")
    values, helps = values or {}, helps or {}
    taken = {action.dest for action in parser._actions}
    added = []
    for f in dataclasses.fields(options):
        if f.metadata.get("nested"):
            added += add_flags(parser, f.metadata["nested"], context=context, values=values, helps=helps,
                               resolved_example=resolved_example)
            continue
        names = flag_names(f, context)
        if not names:
            continue
        if f.name in taken:
            raise ValueError(f"{options.__name__}.{f.name}: a flag of this parser already sets {f.name!r}")
        meta = f.metadata
        value = values[f.name] if f.name in values else declared_default(f)
        target = section(parser, meta["group"]) if meta.get("group") else parser
        kwargs: dict[str, Any] = {"help": _help(f, value, helps.get(f.name), resolved_example)}
        positional = not names[0].startswith("-")
        if not positional:
            kwargs["dest"] = f.name
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and not positional:
            kwargs["required"] = True
        elif not required:
            kwargs["default"] = flag_default(f, value)
        if meta.get("inverse_flag"):
            kwargs.update(action="store_false", help=help_text(f"no {meta['help']}"))
            names = [meta["inverse_flag"]]
        elif meta.get("switch"):
            kwargs["action"] = "store_true"
        else:
            if is_bool(f):
                kwargs.update(type=int, choices=(0, 1))
            elif meta.get("parse") or _scalar_type(f):
                kwargs["type"] = meta.get("parse") or _scalar_type(f)
            for key in ("choices", "nargs", "metavar"):
                if meta.get(key):
                    kwargs[key] = meta[key]
        target.add_argument(*names, **kwargs)
        taken.add(f.name)
        added.append(f.name)
    return added


def flag_names(f: dataclasses.Field, context: Any = None) -> list[str]:
    """The option strings of a setting ([] when it is not a flag in this context)."""
    flag = f.metadata.get("flag", True)
    if callable(flag):
        flag = flag(context) if context is not None else True
    if not flag:
        return []
    return [flag if isinstance(flag, str) else f"--{f.name}", *f.metadata.get("aliases", ())]


def flag_default(f: dataclasses.Field, value: Any) -> Any:
    """What the parser holds when the flag is not given: None for a `resolved` setting (decided later), 0/1 for a
    bool 0/1 flag, else the value."""
    meta = f.metadata
    if meta.get("resolved"):
        return None
    if is_bool(f) and not (meta.get("switch") or meta.get("inverse_flag")) and value is not None:
        return int(value)
    return value


def is_bool(f: dataclasses.Field) -> bool:
    return _base_type(f) == "bool"


def section(parser: argparse.ArgumentParser, title: str) -> argparse._ArgumentGroup:
    """The parser's -h section `title`, made on first use (sections keep the order they were made in)."""
    for group in parser._action_groups:
        if group.title == title:
            return group
    return parser.add_argument_group(title)


def values_from_args(options: type, args: argparse.Namespace) -> dict[str, Any]:
    """The settings of `options` that the parsed flags hold (not None), as the field types want them (0/1 ->
    bool, lists for list fields, tuples for tuple fields); nested options classes are built."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(options):
        if f.metadata.get("nested"):
            values[f.name] = options_from_args(f.metadata["nested"], args)
            continue
        value = getattr(args, f.name, None)
        if value is None:
            continue
        if is_bool(f):
            value = bool(value)
        elif isinstance(value, list | tuple):
            value = tuple(value) if _base_type(f).startswith("tuple") else list(value)
        values[f.name] = value
    return values


def options_from_args(options: type, args: argparse.Namespace, **fixed: Any) -> Any:
    """An `options` instance from parsed flags; `fixed` gives the settings the script decides (e.g. the dataset).
    A flag left at None keeps the declared default."""
    return options(**{**values_from_args(options, args), **fixed})


def explicit_flags(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """Destinations of the options written on the command line (as opposed to defaults)."""
    given = set()
    for action in parser._actions:
        for option in action.option_strings:
            if any(token == option or token.startswith(option + "=") for token in argv):
                given.add(action.dest)
    return given


def _help(f: dataclasses.Field, value: Any, override: str | None, resolved_example: str) -> str:
    meta = f.metadata
    parts = [override if override is not None else meta.get("help", "")]
    if meta.get("unit"):
        parts.append(f"[{meta['unit']}]")
    if meta.get("resolved"):
        shown = ",".join(map(str, value)) if isinstance(value, list | tuple) else \
            int(value) if isinstance(value, bool) else value  # as the 0/1 flag is written
        example = f"; {resolved_example}: {shown}" if resolved_example and value is not None else ""
        parts.append(f"(default: from {meta['resolved']}{example})")
    return help_text(" ".join(part for part in parts if part))


def _base_type(f: dataclasses.Field) -> str:
    """The annotation without `| None` ("int | None" -> "int"); annotations are strings here (PEP 563)."""
    text = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    return text.replace(" | None", "").replace("None | ", "").strip()


def _scalar_type(f: dataclasses.Field):
    return {"int": int, "float": float}.get(_base_type(f))
