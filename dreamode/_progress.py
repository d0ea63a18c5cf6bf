"""Progress bars for the command line: ``tqdm`` on a terminal, nothing elsewhere.

Every long job (``fit``, ``compare``, ``bench``) reports progress through :func:`progress`, so that
a person at a terminal sees a bar with an estimate of the time left, while logs, pipes and
``--quiet`` runs stay clean.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def interactive(quiet: bool = False) -> bool:
    """Whether progress should be drawn: not ``quiet`` and standard error is a terminal."""
    return not quiet and sys.stderr.isatty()


def progress(iterable: Iterable[T] | None = None, *, quiet: bool = False, **kwargs: Any) -> Any:
    """A ``tqdm`` bar over ``iterable`` (or a manual one with ``total=``), on standard error.

    Disabled when ``quiet`` is true or standard error is not a terminal; the bar disappears when
    done (``leave=False``) unless told otherwise, so the job's own result lines stay readable.
    """
    kwargs.setdefault("leave", False)
    show = interactive(quiet)
    if show and "ncols" not in kwargs:
        if _terminal_columns() > 0:
            kwargs.setdefault("dynamic_ncols", True)
        else:  # a terminal that reports no size (e.g. a bare pseudo-terminal): tqdm would draw nothing
            size = shutil.get_terminal_size()  # $COLUMNS/$LINES, else 80 x 24
            kwargs["ncols"] = size.columns
            kwargs.setdefault("nrows", size.lines)
    return tqdm(iterable, file=sys.stderr, disable=not show, **kwargs)


def _terminal_columns() -> int:
    """The width standard error's terminal reports (0 when it reports none)."""
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError):
        return 0


def write(line: str, quiet: bool = False) -> None:
    """Print one status line without breaking a bar that is being drawn."""
    if not quiet:
        tqdm.write(line, file=sys.stdout)


def iterate(iterable: Iterable[T], *, quiet: bool = False, **kwargs: Any) -> Iterator[T]:
    """:func:`progress` as a plain generator (for loops that ``break`` early)."""
    bar = progress(iterable, quiet=quiet, **kwargs)
    try:
        yield from bar
    finally:
        bar.close()
