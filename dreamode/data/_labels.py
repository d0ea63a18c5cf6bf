"""Checks on the class labels of a labelled collection of series, shared by every loader."""

from __future__ import annotations

from collections.abc import Sequence

from ._series import IrregularSeries


def check_classes(
    series: Sequence[IrregularSeries],
    func: str,
    where: str,
    *,
    names: Sequence[str] | None = None,
    fix: str = "",
) -> None:
    """Refuse labelled ``series`` that all carry one label: a classifier trained on them has one
    class and scores every test a hit. Unlabelled series (every label ``None``) pass.

    Args:
        series: the loaded series.
        func: the loader, for the message (e.g. ``"read_long_csv"``).
        where: what was read (a file and column, or a data set and split).
        names: class names by index, to name the one class in the message.
        fix: a sentence on what to do instead, appended to the message.

    Raises:
        ValueError: one class among at least one labelled series.
    """
    found = {s.label for s in series if s.label is not None}
    if len(found) != 1:
        return
    (label,) = found
    shown = repr(names[label]) if names is not None and 0 <= label < len(names) else repr(label)
    raise ValueError(
        f"{func}: {where}: all {len(series)} series have the same label {shown}; a classifier needs at least two "
        f"classes (with one, it learns nothing and scores an accuracy of 1.0)" + (f"; {fix}" if fix else "")
    )
