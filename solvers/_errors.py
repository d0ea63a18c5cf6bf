"""Error helpers: one wording for every message the package raises."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def unknown_name_message(kind: str, name: object, valid: Iterable[str]) -> str:
    """``"unknown method 'rk5'; did you mean 'rk4'? Valid: euler, rk4, ..."``."""
    valid = sorted(valid)
    msg = f"unknown {kind} {name!r}"
    close = difflib.get_close_matches(str(name), valid, n=1)
    if close:
        msg += f"; did you mean {close[0]!r}?"
    else:
        msg += "."
    return msg + f" Valid {kind}s: {', '.join(valid)}"


class SolverError(RuntimeError):
    """A solve that could not finish: step-size underflow, too many steps, non-finite state."""
