"""Declare a setting once: a dataclass field whose metadata carries its help text, unit and command-line form.

    magnitude: float = setting(10.0, "VAT perturbation norm epsilon", unit="input intensity units")

training/flags.py turns every field of the training config into a flag from this metadata, so a setting's name,
default, help and choices live in one place; presets and recipes only assign values.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


def setting(default: Any = dataclasses.MISSING, help: str = "", *, factory: Callable[[], Any] | None = None,
            unit: str = "", choices: tuple | None = None, parse: Callable[[str], Any] | None = None,
            flag: bool | str = True, inverse_flag: str = "", runtime: bool = False, group: str = "",
            nargs: str | None = None, metavar: str | None = None, resolved: str = "") -> Any:
    """A dataclass field with its command-line description.

    flag: True = `--<name>`, a string = that flag name, False = not a flag (derived or set by a script).
    inverse_flag: a store_true flag that sets a bool setting to False (`--no_progress`).
    parse: argparse `type` (e.g. utils.cli.int_list); bools are 0/1 flags unless inverse_flag.
    runtime: may change when a run is resumed (moves the run, does not change its math).
    group: the flag's section in -h. resolved: how an unset value is filled ("the method's recipe").
    """
    metadata = {"help": help, "unit": unit, "choices": choices, "parse": parse, "flag": flag,
                "inverse_flag": inverse_flag, "runtime": runtime, "group": group, "nargs": nargs,
                "metavar": metavar, "resolved": resolved}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)
