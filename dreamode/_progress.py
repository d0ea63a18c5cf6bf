"""Progress bars for the command line: ``tqdm`` on a terminal, nothing elsewhere.

Every long job (``fit``, ``compare``, ``bench``) reports progress through :func:`progress`, so that
a person at a terminal sees a bar with an estimate of the time left, while logs, pipes and
``--quiet`` runs stay clean.
"""

from __future__ import annotations

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
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, file=sys.stderr, disable=not interactive(quiet), **kwargs)


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
