"""Error messages for names chosen from a fixed set (methods, networks, policies)."""
from __future__ import annotations

import difflib
from collections.abc import Iterable

from utils.errors import UserError


def closest(name: object, choices: Iterable) -> str | None:
    """The choice closest to `name` (compared as text), None when none is close."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1)
    return close[0] if close else None


def did_you_mean(name: object, choices: Iterable) -> str:
    """"; did you mean 'ss_net'?" for the closest choice, "" when none is close."""
    close = closest(name, choices)
    return f"; did you mean {close!r}?" if close else ""


def unknown_choice(kind: str, name: str, choices: Iterable[str]) -> UserError:
    """UserError("unknown method 'ssnet'; did you mean 'ss_net'? choose from: ss_net, supervised")."""
    options = sorted(choices)
    return UserError(f"unknown {kind} {name!r}{did_you_mean(name, options) or ';'} choose from: {', '.join(options)}")
