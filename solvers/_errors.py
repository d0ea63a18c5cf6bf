"""Error helpers: one wording for every message the package raises."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable


def _normal(name: str) -> str:
    """``name`` lower-cased without dashes, underscores or spaces: ``"Scipy_radau"`` -> ``"scipyradau"``."""
    return re.sub(r"[-_\s]+", "", name.lower())


def closest_name(name: object, valid: Iterable[str]) -> str | None:
    """The valid name ``name`` most likely misspells, or ``None``.

    Case, dashes, underscores and spaces are ignored first (``"RK4"``, ``"scipy_radau"``), then
    small typos are matched (``"rk5"`` -> ``"rk4"``, ``"dopri"`` -> ``"dopri5"``).
    """
    by_normal: dict[str, str] = {}
    for v in sorted(valid):
        by_normal.setdefault(_normal(v), v)
    key = _normal(str(name))
    if key in by_normal:
        return by_normal[key]
    close = difflib.get_close_matches(key, list(by_normal), n=1)
    return by_normal[close[0]] if close else None


def unknown_name_message(kind: str, name: object, valid: Iterable[str]) -> str:
    """``"unknown method 'rk5'; did you mean 'rk4'? Valid methods: euler, rk4, ..."``."""
    valid = sorted(valid)
    msg = f"unknown {kind} {name!r}"
    close = closest_name(name, valid)
    if close is not None and close != name:
        msg += f"; did you mean {close!r}?"
    else:
        msg += "."
    return msg + f" Valid {kind}s: {', '.join(valid)}"


class SolverError(RuntimeError):
    """A solve that could not finish: step-size underflow, too many steps, non-finite state."""


class StiffStepWarning(UserWarning):
    """An explicit fixed step too long for the problem: the solution grew in a way a shorter step does not reproduce."""
