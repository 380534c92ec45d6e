"""Error messages for names chosen from a fixed set (methods, networks, policies)."""
from __future__ import annotations

import difflib
from collections.abc import Iterable

from utils.errors import UserError


def unknown_choice(kind: str, name: str, choices: Iterable[str]) -> UserError:
    """UserError("unknown method 'ssnet'; did you mean 'ss_net'? choose from: ss_net, supervised")."""
    options = sorted(choices)
    close = difflib.get_close_matches(name, options, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ";"
    return UserError(f"unknown {kind} {name!r}{hint} choose from: {', '.join(options)}")
