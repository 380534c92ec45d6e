"""Declare a setting once: a dataclass field whose metadata carries its help text, unit and command-line form.

    magnitude: float = setting(10.0, "VAT perturbation norm epsilon", unit="input intensity units")

Every script's options are such dataclasses (training's TrainConfig, the test scripts' TestOptions, predict.py's
PredictOptions, reproduce.py's GridOptions, ...); utils/flags.py turns their fields into flags, so a setting's name,
default, help, unit and choices live in one place. A class that shares an option with another takes its
declaration with `same_as` instead of writing a second one; a class made of others nests them (`nested`).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

from utils.errors import UserError


def setting(default: Any = dataclasses.MISSING, help: str = "", *, factory: Callable[[], Any] | None = None,
            unit: str = "", choices: tuple | None = None, parse: Callable[[str], Any] | None = None,
            flag: bool | str | Callable[[Any], bool] = True, inverse_flag: str = "", switch: bool = False,
            aliases: tuple[str, ...] = (), runtime: bool = False, group: str = "", nargs: str | None = None,
            metavar: str | None = None, resolved: str = "", minimum: float | None = None) -> Any:
    """A dataclass field with its command-line description.

    flag: True = `--<name>`, a string = that flag name (a name without dashes is positional), False = not a flag
    (derived or set by a script), a callable = True/False from the script's context (e.g. its dataset).
    Bools are 0/1 flags, unless `switch` (`--tta` sets True) or `inverse_flag` (`--no_progress` sets False).
    aliases: more names of the same flag (`--nms` for `--largest_component`).
    parse: argparse `type` (e.g. utils.cli.int_list). minimum: the smallest valid value (check_settings).
    runtime: may change when a run is resumed (moves the run, does not change its math).
    group: the flag's section in -h. resolved: how an unset value is filled ("the method's recipe"); its flag
    defaults to None.
    A setting without a default is a required flag (or positional argument).
    """
    metadata = {"help": help, "unit": unit, "choices": choices, "parse": parse, "flag": flag,
                "inverse_flag": inverse_flag, "switch": switch, "aliases": tuple(aliases), "runtime": runtime,
                "group": group, "nargs": nargs, "metavar": metavar, "resolved": resolved, "minimum": minimum}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def same_as(owner: type, name: str, **changes: Any) -> Any:
    """The declaration of `owner.name` for another options class: the same default, help, unit and choices, with
    `changes` (any `setting` argument, e.g. another help text or group, or `default`). The field records where it
    was declared (`declared_in`), which is how tests/test_config.py tells one declaration from two."""
    source = _field(owner, name)
    metadata = {**source.metadata, "declared_in": declared_in(owner, name)}
    if "default" in changes or "factory" in changes:
        default, factory = changes.pop("default", dataclasses.MISSING), changes.pop("factory", None)
    else:
        default, factory = source.default, (None if source.default_factory is dataclasses.MISSING
                                            else source.default_factory)
    unknown = set(changes) - set(metadata)
    if unknown:
        raise TypeError(f"same_as({owner.__name__}, {name!r}): not setting arguments: {', '.join(sorted(unknown))}")
    metadata.update(changes)
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def nested(options: type, help: str = "") -> Any:
    """A field holding another options dataclass: its settings are flags of the same script, built back into it."""
    return dataclasses.field(default_factory=options, metadata={"nested": options, "help": help, "flag": False})


def declared_in(owner: type, name: str) -> str:
    """Where the setting `owner.name` is declared: `module.Class.name` of the original declaration (through
    `same_as` and through inheritance: TrainConfig's max_iteration is MethodSettings')."""
    derived = _field(owner, name).metadata.get("declared_in")
    if derived:
        return derived
    base = next(cls for cls in reversed(owner.__mro__) if name in cls.__dict__.get("__annotations__", {}))
    return f"{base.__module__}.{base.__qualname__}.{name}"


def _field(owner: type, name: str) -> dataclasses.Field:
    found = {f.name: f for f in dataclasses.fields(owner)}
    if name not in found:
        raise TypeError(f"{owner.__name__} has no setting {name!r}")
    return found[name]


def declared_default(f: dataclasses.Field) -> Any:
    """The field's default (a fresh value of its factory); None when it has none (a required setting)."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def leaf_fields(options: type) -> Iterator[tuple[type, dataclasses.Field]]:
    """(declaring class, field) of every setting of `options`, those of nested options classes included."""
    for f in dataclasses.fields(options):
        if f.metadata.get("nested"):
            yield from leaf_fields(f.metadata["nested"])
        else:
            yield options, f


def check_settings(options: Any, flag_names: dict[str, str] | None = None) -> None:
    """Refuse values outside a setting's declared choices or below its minimum (nested options included), naming
    the flag: `--amp must be one of off, bf16, fp16, got 'fp8'`. flag_names: flag of a field named otherwise."""
    names = flag_names or {}
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if f.metadata.get("nested"):
            check_settings(value, flag_names)
            continue
        flag = names.get(f.name) or _flag_name(f)
        choices, minimum = f.metadata.get("choices"), f.metadata.get("minimum")
        values = value if isinstance(value, list | tuple) else [value]
        if choices and any((int(v) if isinstance(v, bool) else v) not in choices for v in values if v is not None):
            raise UserError(f"{flag} must be one of {', '.join(map(str, choices))}, got {value!r}")
        if minimum is not None and value is not None and not isinstance(value, list | tuple) and \
                not (isinstance(value, int | float) and math.isfinite(value) and value >= minimum):
            raise UserError(f"{flag} must be >= {minimum}, got {value}")


def _flag_name(f: dataclasses.Field) -> str:
    flag = f.metadata.get("flag", True)
    return flag if isinstance(flag, str) else f"--{f.name}"
