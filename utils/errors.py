"""The one exception type for problems with what the user gave: a flag, a file, a dataset, a checkpoint.

Entry points (utils.cli.run_cli) print a UserError as one `error: ...` line and exit 2; every other exception
is a bug and shows its traceback. UserError subclasses ValueError, so callers that catch ValueError still do.
"""
from __future__ import annotations


class UserError(ValueError):
    """Bad input; the message names the file or flag and what to do about it."""


class TrainingDiverged(UserError, FloatingPointError):
    """The training loss became NaN / Inf; the message names the last good checkpoint and how to resume."""
