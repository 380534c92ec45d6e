"""The one exception type for problems with what the user gave: a flag, a file, a dataset, a checkpoint.

Entry points (utils.cli.run_cli) print a UserError as one `error: ...` line and exit 2; every other exception
is a bug and shows its traceback. UserError subclasses ValueError, so callers that catch ValueError still do.
"""
from __future__ import annotations


class UserError(ValueError):
    """Bad input; the message names the file or flag and what to do about it."""


class TrainingDiverged(UserError, FloatingPointError):
    """The training loss became NaN / Inf; the message names the last good checkpoint and how to resume."""


class StoppedBySignal(BaseException):  # noqa: N818 - it is a stop, not an error
    """A run stopped on request (SIGTERM, SIGINT, SIGUSR1/2) after saving its state; exit code 128 + signal number,
    as a shell reports a process ended by that signal (training/signals.py). Like KeyboardInterrupt it is no
    Exception: `except Exception` (a grid cell's error record) lets it pass."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.signal_number = signal_number

    @property
    def exit_code(self) -> int:
        return 128 + self.signal_number
