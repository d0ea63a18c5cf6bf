"""One wording for argument errors: ``"<function>: expected <argument> to be <what>, got <value>"``."""

from __future__ import annotations

from typing import Any


def describe(value: Any) -> str:
    """Short description of a received value for an error message (type, and shape or value)."""
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"{type(value).__name__} of shape {tuple(shape)} and dtype {getattr(value, 'dtype', '?')}"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def bad_argument(func: str, name: str, expected: str, got: Any, *, error: type[Exception] = ValueError) -> Exception:
    """Build the error for argument ``name`` of ``func``: what was expected and what was received."""
    return error(f"{func}: expected {name} to be {expected}, got {describe(got)}")
