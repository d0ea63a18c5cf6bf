"""Argument types shared by the commands: positive numbers with a message naming what was given."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """``int(text)`` if it is >= 1, else an ``ArgumentTypeError`` quoting ``text``."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def positive_float(text: str) -> float:
    """``float(text)`` if it is > 0 (NaN is not), else an ``ArgumentTypeError`` quoting ``text``."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v
