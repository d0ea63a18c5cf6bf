"""Read users' own irregular series from a long-format CSV: one row per (id, time) observation."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TextIO

import torch

from ._checks import bad_argument
from ._series import IrregularSeries

DEFAULT_NA = ("", "NA", "NaN", "nan")


@dataclass(frozen=True)
class LongData:
    """What `read_long_csv` found.

    Attributes:
        series: one `IrregularSeries` per id, in order of first appearance; ``values`` is
            ``(L, I)`` in the default dtype with ``NaN`` for missing cells; ``times`` as written.
        ids: the id of each series (the cell text).
        features: the ``I`` feature column names, in channel order.
        classes: with ``label_col``, the label text of class ``k`` at index ``k`` (sorted numerically
            when every label is a number, else as text); ``None`` without labels.
    """

    series: list[IrregularSeries]
    ids: list[str]
    features: list[str]
    classes: list[str] | None = None


def read_long_csv(
    path: str | os.PathLike[str] | TextIO,
    id_col: str = "id",
    time_col: str = "time",
    label_col: str | None = None,
    feature_cols: Sequence[str] | None = None,
    *,
    delimiter: str = ",",
    na_values: Collection[str] = DEFAULT_NA,
) -> LongData:
    """Read a long-format CSV (a header row, then one row per observation) into irregular series.

    Rows of one id may be interleaved with other ids but must come in strictly increasing time.
    Cells in ``na_values`` (by default empty, ``NA``, ``NaN``, ``nan``) are missing (``NaN``).

    Args:
        path: a file path, or an open text file.
        id_col: column naming the series each row belongs to.
        time_col: column with the observation time (a finite number; any unit).
        label_col: optional column with the series' class; it must be the same on every row of an id.
        feature_cols: the value columns, in channel order (default: every other column).
        delimiter: the field separator.
        na_values: cell texts that mean "missing" in feature columns.

    Returns:
        A `LongData` with the series, their ids, the feature names and the class names.

    Raises:
        ValueError: naming the line and column, for a missing column, a non-numeric cell, an
            unsorted or duplicate time within an id, a label that changes within an id, or a row
            with the wrong number of cells.
    """
    if isinstance(path, str | os.PathLike):
        name = os.fspath(path)
        with open(path, newline="", encoding="utf-8") as f:
            return _read(f, name, id_col, time_col, label_col, feature_cols, delimiter, set(na_values))
    if hasattr(path, "read"):
        return _read(
            path,
            getattr(path, "name", "<stream>"),
            id_col,
            time_col,
            label_col,
            feature_cols,
            delimiter,
            set(na_values),
        )
    raise bad_argument("read_long_csv", "path", "a path or an open text file", path, error=TypeError)


def _read(
    f: TextIO,
    name: str,
    id_col: str,
    time_col: str,
    label_col: str | None,
    feature_cols: Sequence[str] | None,
    delimiter: str,
    na_values: set[str],
) -> LongData:
    reader = csv.reader(f, delimiter=delimiter)
    header = next((row for row in reader if row), None)
    if header is None:
        raise ValueError(f"read_long_csv: {name} is empty; expected a header row naming the columns")
    header = [h.strip() for h in header]
    where = f"{name} line {reader.line_num}"
    seen: set[str] = set()
    for h in header:
        if h in seen:
            raise ValueError(f"read_long_csv: {where}: column {h!r} appears twice in the header")
        seen.add(h)
    roles = {"id_col": id_col, "time_col": time_col} | ({"label_col": label_col} if label_col is not None else {})
    for role, col in roles.items():
        if col not in seen:
            raise ValueError(f"read_long_csv: {where}: column {col!r} ({role}) not found in the header {header}")
    if feature_cols is None:
        features = [h for h in header if h not in roles.values()]
    else:
        if isinstance(feature_cols, str):
            raise bad_argument(
                "read_long_csv", "feature_cols", "a sequence of column names", feature_cols, error=TypeError
            )
        features = list(feature_cols)
        for col in features:
            if col not in seen:
                raise ValueError(
                    f"read_long_csv: {where}: column {col!r} (feature_cols) not found in the header {header}"
                )
            if col in roles.values():
                raise ValueError(
                    f"read_long_csv: column {col!r} is in feature_cols and is also the id, time or label column"
                )
    if not features:
        raise ValueError(
            f"read_long_csv: {where}: no feature columns; the header {header} holds only id, time and label"
        )

    col_index = {h: i for i, h in enumerate(header)}
    i_id, i_time = col_index[id_col], col_index[time_col]
    i_label = None if label_col is None else col_index[label_col]
    i_feat = [col_index[c] for c in features]

    times: dict[str, list[float]] = {}
    values: dict[str, list[list[float]]] = {}
    last_line: dict[str, int] = {}
    labels: dict[str, tuple[str, int]] = {}
    for row in reader:
        if not row:
            continue
        line = reader.line_num
        if len(row) != len(header):
            raise ValueError(
                f"read_long_csv: {name} line {line}: expected {len(header)} cells as in the header, got {len(row)}"
            )
        key = row[i_id].strip()
        if not key:
            raise ValueError(f"read_long_csv: {name} line {line}, column {id_col!r}: expected an id, got an empty cell")
        t = _number(row[i_time], name, line, time_col, na_values=set())
        if key in times:
            prev = times[key][-1]
            if t == prev:
                raise ValueError(
                    f"read_long_csv: {name} line {line}, column {time_col!r}: duplicate time {t!r} for id {key!r} "
                    f"(also on line {last_line[key]})"
                )
            if t < prev:
                raise ValueError(
                    f"read_long_csv: {name} line {line}, column {time_col!r}: times of id {key!r} are not sorted; "
                    f"got {t!r} after {prev!r} on line {last_line[key]} (sort the rows of each id by time)"
                )
        else:
            times[key], values[key] = [], []
        times[key].append(t)
        values[key].append([_number(row[i], name, line, c, na_values) for i, c in zip(i_feat, features)])
        last_line[key] = line
        if i_label is not None:
            text = row[i_label].strip()
            if not text:
                raise ValueError(
                    f"read_long_csv: {name} line {line}, column {label_col!r}: expected a label, got an empty cell"
                )
            first = labels.setdefault(key, (text, line))
            if first[0] != text:
                raise ValueError(
                    f"read_long_csv: {name} line {line}, column {label_col!r}: id {key!r} has label {text!r} here "
                    f"but {first[0]!r} on line {first[1]}; a series has one label"
                )
    if not times:
        raise ValueError(f"read_long_csv: {name} has a header but no data rows")

    classes = None
    class_of: dict[str, int] = {}
    if label_col is not None:
        classes = _sorted_classes({text for text, _ in labels.values()})
        class_of = {text: k for k, text in enumerate(classes)}
    dtype = torch.get_default_dtype()
    series = [
        IrregularSeries(
            torch.tensor(times[key], dtype=torch.float64),
            torch.tensor(values[key], dtype=dtype),
            class_of[labels[key][0]] if label_col is not None else None,
        )
        for key in times
    ]
    return LongData(series, list(times), features, classes)


def _number(cell: str, name: str, line: int, column: str, na_values: set[str]) -> float:
    text = cell.strip()
    if text in na_values:
        return math.nan
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or math.isinf(value) or (math.isnan(value) and not na_values):
        what = "a finite number" if not na_values else "a finite number or a missing-value marker"
        raise ValueError(f"read_long_csv: {name} line {line}, column {column!r}: expected {what}, got {cell!r}")
    return value


def _sorted_classes(texts: set[str]) -> list[str]:
    try:
        return sorted(texts, key=float)
    except ValueError:
        return sorted(texts)
