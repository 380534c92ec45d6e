"""What every entry point shares: one-line errors, argument types, help formatting, the device flag."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import torch

from utils.choices import closest, did_you_mean
from utils.errors import StoppedBySignal, UserError

# What a user can cause and fix: bad input (UserError) and the file system (missing files, permissions, disk).
USER_ERRORS = (UserError, OSError)


def run_cli(job: Callable[[], object], debug: bool = False, cpu_threads: bool = False,
            huge_pages: bool = False) -> int:
    """Run job(); a user error prints `error: ...` on stderr and returns 2 (its traceback with --debug).

    A run stopped by a signal after saving its state returns 128 + the signal number (training/signals.py);
    a Ctrl-C that interrupts at once returns 130.

    Anything else is a bug: its traceback is shown, so that it gets reported rather than mistaken for bad input.
    cpu_threads: first set PyTorch's threads to the cores free of other work (utils.machine.use_free_cores), for the
    scripts that train or predict. huge_pages: ask for huge pages for PyTorch's large tensors
    (utils.machine.use_huge_pages), for the scripts that train (it slows the sliding window down: docs/speed.md).
    """
    try:
        if huge_pages:
            from utils.machine import use_huge_pages

            use_huge_pages()
        if cpu_threads:
            from utils.machine import use_free_cores

            use_free_cores()
        job()
    except USER_ERRORS as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StoppedBySignal as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


class ScriptParser(argparse.ArgumentParser):
    """The parser of every script: a mistake on the command line is one `error:` line, as from run_cli, instead of
    the whole usage; a value outside a flag's choices, or an unknown flag, names the closest valid one."""

    def _check_value(self, action: argparse.Action, value) -> None:
        if action.choices is not None and value not in action.choices:
            raise self._invalid_choice(action, value)

    def _get_value(self, action: argparse.Action, text: str):
        try:
            return super()._get_value(action, text)
        except argparse.ArgumentError:
            if action.choices:  # `--low_memory yes`: a choice flag names its choices, not its type
                raise self._invalid_choice(action, text) from None
            raise

    @staticmethod
    def _invalid_choice(action: argparse.Action, value) -> argparse.ArgumentError:
        return argparse.ArgumentError(action, f"invalid choice {value!r}{did_you_mean(value, action.choices) or ';'} "
                                              f"choose from: {', '.join(map(str, action.choices))}")

    def error(self, message: str):
        if message.startswith("unrecognized arguments:"):
            flags = [o for o in self._option_string_actions if o.startswith("--")]
            tokens = [t.split("=")[0] for t in message.split(":", 1)[1].split() if t.startswith("--")]
            hints = [f"{t}: did you mean {closest(t, flags)!r}?" for t in tokens if closest(t, flags)]
            message += f" ({'; '.join(hints)})" if hints else ""
        self.exit(2, f"error: {message} (-h lists the flags)\n")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" only where the help does not state its default already and X says something (not to a
    switch)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default:" in text or action.default in (None, "", [], False) or action.default is argparse.SUPPRESS \
                or action.nargs == 0:  # a switch (--tta, --no_progress): its name says what it does
            return text
        return super()._get_help_string(action)


class DocstringHelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultsHelpFormatter):
    """A script's module docstring as the description, kept as written, plus the defaults of its flags."""


def help_text(text: str) -> str:
    """argparse formats help strings with %: a literal percent sign must be doubled."""
    return text.replace("%", "%%")


def int_list(text: str) -> list[int]:
    """`112,112,80` or `112x112x80` -> [112, 112, 80] (positive integers)."""
    try:
        values = [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 112,112,80, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers like 112,112,80, got {text!r}")
    return values


def float_list(text: str) -> list[float]:
    """`1,1,2.5` -> three positive voxel sizes in mm."""
    try:
        values = [float(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 1.0,1.0,2.5, got {text!r}") from None
    if len(values) != 3 or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected 3 positive spacings in mm like 1.0,1.0,2.5, got {text!r}")
    return values


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(name: str) -> torch.device:
    """--device NAME as a torch.device, refused with the fix when it does not exist here."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device name (use cuda, cuda:0, cpu)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda requested but CUDA is not available here; use --device cpu")
    return device
