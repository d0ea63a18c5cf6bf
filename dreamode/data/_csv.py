"""Read users' own irregular series from a long-format CSV: one row per (id, time) observation."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import TextIO

import torch

from ._checks import bad_argument
from ._labels import check_classes
from ._series import IrregularSeries

DEFAULT_NA = ("", "NA", "NaN", "nan")
MISSING_LABELS = ("error", "drop")
_BOM = "\ufeff"


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
    missing_labels: str = "error",
) -> LongData:
    """Read a long-format CSV (a header row, then one row per observation) into irregular series.

    The file is UTF-8 (a leading byte-order mark, as some spreadsheet programs write, is accepted).
    Rows of one id may be interleaved with other ids but must come in strictly increasing time.
    Cells in ``na_values`` (by default empty, ``NA``, ``NaN``, ``nan``) are missing (``NaN``).

    With ``label_col``, a label cell in ``na_values`` or that reads as a NaN number (what pandas
    writes for a missing label) is a missing label, never a class; the classes are numbered in
    sorted order (numerically when every label is a number), the same on every run.

    Args:
        path: a file path, or an open text file.
        id_col: column naming the series each row belongs to.
        time_col: column with the observation time (a finite number; any unit).
        label_col: optional column with the series' class; it must be the same on every row of an id.
        feature_cols: the value columns, in channel order (default: every other column).
        delimiter: the field separator.
        na_values: cell texts that mean "missing" in feature and label columns.
        missing_labels: with ``label_col``, what a series without a label does: ``"error"``
            (default: a ValueError naming the lines) or ``"drop"`` (the series is left out).

    Returns:
        A `LongData` with the series, their ids, the feature names and the class names.

    Raises:
        ValueError: naming the file, line and column, for a missing column, a non-numeric cell, an
            unsorted or duplicate time within an id, a missing label, a label that changes within an
            id, labels of only one class, a row with the wrong number of cells, a file that is not
            UTF-8 or that the CSV reader cannot parse (e.g. a cell beyond its size limit).
    """
    if missing_labels not in MISSING_LABELS:
        raise bad_argument("read_long_csv", "missing_labels", f"one of {list(MISSING_LABELS)}", missing_labels)
    args = (id_col, time_col, label_col, feature_cols, delimiter, set(na_values), missing_labels)
    if isinstance(path, str | os.PathLike):
        name = os.fspath(path)
        with open(path, newline="", encoding="utf-8-sig") as f:
            return _read(f, name, *args)
    if hasattr(path, "read"):
        return _read(path, getattr(path, "name", "<stream>"), *args)
    raise bad_argument("read_long_csv", "path", "a path or an open text file", path, error=TypeError)


def read_csv_header(path: str | os.PathLike[str], *, delimiter: str = ",") -> list[str]:
    """The column names in the first non-empty row of the CSV file at ``path`` (stripped), read
    as `read_long_csv` reads them (UTF-8 with or without a byte-order mark; the same errors)."""
    name = os.fspath(path)
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = _rows(csv.reader(f, delimiter=delimiter), name, delimiter)
        header = next((row for _, row in rows if row), [])
    return [h.strip() for h in header]


def _rows(reader: Iterator[list[str]], name: str, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """``(first line, cells)`` of each row of a ``csv.reader``, turning decoding and CSV errors into
    ValueErrors that name the file, the line and the fix."""
    while True:
        start = reader.line_num + 1  # type: ignore[attr-defined]
        try:
            row = next(reader)
        except StopIteration:
            return
        except UnicodeDecodeError as exc:
            line = _undecodable_line(name, start)
            base = os.path.basename(name)
            stem = os.path.splitext(base)[0]
            raise ValueError(
                f"read_long_csv: {name} {line}: the file is not UTF-8 ({exc.reason}: byte "
                f"{exc.object[exc.start : exc.start + 1]!r}); re-encode it as UTF-8, e.g. for a Latin-1 "
                f"(ISO-8859-1) file: iconv -f latin1 -t utf-8 {base} > {stem}-utf8.csv, or pass a file opened "
                f"with its encoding: read_long_csv(open(path, encoding='latin-1', newline=''), ...)"
            ) from exc
        except csv.Error as exc:
            text = str(exc)
            if "field larger than field limit" in text:
                fix = (
                    f"a cell starting on this line runs past the CSV reader's limit of {csv.field_size_limit()} "
                    f'characters: usually a quote (") without its closing quote, or a file whose delimiter is not '
                    f"{delimiter!r}; fix the quoting on that line, or pass the file's delimiter (e.g. delimiter=';')"
                )
            elif "NUL" in text:
                fix = "the file holds NUL bytes: is it a CSV text file (not a spreadsheet or a compressed file)?"
            else:
                fix = "check the quoting and the delimiter on that line"
            raise ValueError(f"read_long_csv: {name} line {start}: the CSV reader failed ({text}); {fix}") from exc
        if start == 1 and row and row[0].startswith(_BOM):  # an open stream decoded as plain utf-8
            row[0] = row[0][len(_BOM) :]
        yield start, row


def _undecodable_line(name: str, start: int) -> str:
    """``"line N"`` of the first line of the file ``name`` that is not UTF-8 (``"line >= start"`` when
    the file cannot be read again, e.g. a stream)."""
    try:
        with open(name, "rb") as f:
            for n, raw in enumerate(f, start=1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError:
                    return f"line {n}"
    except OSError:
        pass
    return f"line {start} or after"


def _read(
    f: TextIO,
    name: str,
    id_col: str,
    time_col: str,
    label_col: str | None,
    feature_cols: Sequence[str] | None,
    delimiter: str,
    na_values: set[str],
    missing_labels: str,
) -> LongData:
    rows = _rows(csv.reader(f, delimiter=delimiter), name, delimiter)
    found = next(((line, row) for line, row in rows if row), None)
    if found is None:
        raise ValueError(f"read_long_csv: {name} is empty; expected a header row naming the columns")
    header = [h.strip() for h in found[1]]
    where = f"{name} line {found[0]}"
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
    unlabelled: dict[str, list[int]] = {}  # id -> lines with a missing label
    for line, row in rows:
        if not row:
            continue
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
            if _missing_label(text, na_values):
                unlabelled.setdefault(key, []).append(line)
                continue
            first = labels.setdefault(key, (text, line))
            if first[0] != text:
                raise ValueError(
                    f"read_long_csv: {name} line {line}, column {label_col!r}: id {key!r} has label {text!r} here "
                    f"but {first[0]!r} on line {first[1]}; a series has one label"
                )
    if not times:
        raise ValueError(f"read_long_csv: {name} has a header but no data rows")

    keys = list(times)
    classes = None
    class_of: dict[str, int] = {}
    if label_col is not None:
        keys = _labelled_keys(keys, labels, unlabelled, name, label_col, missing_labels)
        classes = _sorted_classes({text for text, _ in labels.values()})
        class_of = {text: k for k, text in enumerate(classes)}
    dtype = torch.get_default_dtype()
    series = [
        IrregularSeries(
            torch.tensor(times[key], dtype=torch.float64),
            torch.tensor(values[key], dtype=dtype),
            class_of[labels[key][0]] if label_col is not None else None,
        )
        for key in keys
    ]
    if label_col is not None:
        check_classes(
            series,
            "read_long_csv",
            f"{name}, column {label_col!r}",
            names=classes,
            fix="to read the series without labels (e.g. for forecasting) leave out label_col (dreamode fit: --task forecast)",
        )
    return LongData(series, keys, features, classes)


def _missing_label(text: str, na_values: set[str]) -> bool:
    """A label cell that means "no label": a missing-value marker, or a number that is NaN."""
    if text in na_values or not text:
        return True
    try:
        return math.isnan(float(text))
    except ValueError:
        return False


def _lines(lines: list[int], most: int = 10) -> str:
    shown = ", ".join(map(str, lines[:most]))
    return f"{shown}, ... ({len(lines)} rows)" if len(lines) > most else shown


def _labelled_keys(
    keys: list[str],
    labels: dict[str, tuple[str, int]],
    unlabelled: dict[str, list[int]],
    name: str,
    label_col: str,
    missing_labels: str,
) -> list[str]:
    """The ids that keep their series: every id has one label; with ``missing_labels="drop"`` the
    ids without any label are left out."""
    for key, lines in unlabelled.items():
        if key in labels:
            text, line = labels[key]
            raise ValueError(
                f"read_long_csv: {name} line {lines[0]}, column {label_col!r}: id {key!r} has no label here but "
                f"{text!r} on line {line}; a series has one label (fill in the missing cells)"
            )
    if unlabelled and missing_labels == "error":
        lines = sorted(line for ls in unlabelled.values() for line in ls)
        ids = list(unlabelled)
        some = ", ".join(map(repr, ids[:5])) + (f", ... ({len(ids)} ids)" if len(ids) > 5 else "")
        raise ValueError(
            f"read_long_csv: {name}, column {label_col!r}: missing labels (empty, a missing-value marker or NaN) "
            f"on {'line' if len(lines) == 1 else 'lines'} {_lines(lines)}, for id(s) {some}; fill them in, or pass missing_labels='drop' to leave "
            f"those series out"
        )
    kept = [key for key in keys if key in labels]
    if not kept:
        raise ValueError(f"read_long_csv: {name}, column {label_col!r}: no series has a label")
    return kept


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
    """Class names in an order that depends only on the names (never on set order): by number when
    all are numbers (ties such as ``"1"`` and ``"1.0"`` by text), else by text."""
    try:
        return sorted(texts, key=lambda t: (float(t), t))
    except ValueError:
        return sorted(texts)
