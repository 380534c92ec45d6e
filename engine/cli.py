"""Shared entry-point behaviour: bad input gives one clear line and a non-zero exit, not a traceback."""
from __future__ import annotations

import sys
from collections.abc import Callable

# OSError covers missing files, folders and permissions; FloatingPointError a non-finite training loss.
USER_ERRORS = (ValueError, OSError, KeyError, FloatingPointError)


def run_cli(job: Callable[[], object], debug: bool = False) -> int:
    """Run job(); user errors print `error: ...` on stderr and return 2 (full traceback with --debug)."""
    try:
        job()
    except USER_ERRORS as exc:
        if debug:
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
