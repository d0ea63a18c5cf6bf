"""dreamode.data: padding, the Dataset/collate pair, the drop protocol, the CSV reader, scaling."""

from __future__ import annotations

import io
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dreamode.data import (
    IrregularBatch,
    IrregularSeries,
    SeriesDataset,
    Standardizer,
    check_classes,
    collate_series,
    drop_observations,
    pad_series,
    read_csv_header,
    read_long_csv,
    standardize,
    unpad,
)

NAN = math.nan


def series_equal(a: IrregularSeries, b: IrregularSeries) -> bool:
    """Equal times, labels, and values including the NaN positions."""
    return (
        torch.equal(a.times, b.times)
        and a.label == b.label
        and a.values.shape == b.values.shape
        and torch.equal(torch.isnan(a.values), torch.isnan(b.values))
        and torch.equal(torch.nan_to_num(a.values), torch.nan_to_num(b.values))
    )


def random_series(n: int, channels: int = 3, seed: int = 0, nan_rate: float = 0.2) -> list[IrregularSeries]:
    g = np.random.default_rng(seed)
    out = []
    for k in range(n):
        L = int(g.integers(1, 12))
        times = np.cumsum(g.uniform(0.1, 2.0, L))
        values = g.normal(size=(L, channels)).astype(np.float32)
        values[g.uniform(size=values.shape) < nan_rate] = np.nan
        values[np.isnan(values).all(axis=1), 0] = 1.0  # no fully missing rows: those are dropped by pad_series
        out.append(IrregularSeries(torch.from_numpy(times), torch.from_numpy(values), k % 4))
    return out


# --- pad_series / unpad -------------------------------------------------------------------------


def test_pad_series_hand_computed():
    a = ([0.0, 0.5, 2.0], [[1.0, NAN], [2.0, 3.0], [NAN, 4.0]], 1)
    b = ([1.0], [[5.0, 6.0]], 0)
    batch = pad_series([a, b])
    assert isinstance(batch, IrregularBatch)
    assert batch.x.dtype == torch.float32 and batch.mask.dtype == torch.float32
    assert batch.times.dtype == torch.float64 and batch.lengths.dtype == torch.int64
    expected_x = [[[1, 0], [2, 3], [0, 4]], [[5, 6], [0, 0], [0, 0]]]
    expected_mask = [[[1, 0], [1, 1], [0, 1]], [[1, 1], [0, 0], [0, 0]]]
    assert torch.equal(batch.x, torch.tensor(expected_x, dtype=torch.float32))
    assert torch.equal(batch.mask, torch.tensor(expected_mask, dtype=torch.float32))
    # padding continues the time grid by +1 per step past the last real time
    assert torch.equal(batch.times, torch.tensor([[0.0, 0.5, 2.0], [1.0, 2.0, 3.0]], dtype=torch.float64))
    assert batch.lengths.tolist() == [3, 1]
    assert batch.labels.tolist() == [1, 0]


def test_padded_times_strictly_increasing():
    batch = pad_series(random_series(20))
    assert (batch.times.diff(dim=1) > 0).all()


def test_round_trip_pad_unpad():
    series = random_series(25)
    back = unpad(pad_series(series))
    assert len(back) == len(series)
    assert all(series_equal(s, r) for s, r in zip(series, back))


def test_round_trip_unlabelled_numpy_input():
    series = [(np.arange(4.0), np.ones((4, 2))), (np.array([0.0, 3.0]), np.zeros((2, 2)))]
    batch = pad_series(series)
    assert batch.labels is None
    back = unpad(batch)
    assert back[1].times.tolist() == [0.0, 3.0] and back[1].label is None
    assert back[0].values.dtype == torch.float32 and back[0].values.shape == (4, 2)


def test_one_dimensional_values_are_one_channel():
    batch = pad_series([([0.0, 1.0], [3.0, NAN])], drop_missing_rows=False)
    assert batch.x.shape == (1, 2, 1)
    assert batch.mask[0, :, 0].tolist() == [1.0, 0.0]


def test_fully_missing_rows_dropped_by_default():
    s = ([0.0, 1.0, 2.0], [[1.0, 2.0], [NAN, NAN], [3.0, NAN]])
    batch = pad_series([s])
    assert batch.lengths.tolist() == [2]
    assert batch.times[0].tolist() == [0.0, 2.0]
    kept = pad_series([s], drop_missing_rows=False)
    assert kept.lengths.tolist() == [3]
    assert kept.mask[0, 1].tolist() == [0.0, 0.0]
    assert kept.times[0].tolist() == [0.0, 1.0, 2.0]


def test_pad_dtype_and_to():
    batch = pad_series(random_series(3), dtype=torch.float64)
    assert batch.x.dtype == torch.float64 and batch.mask.dtype == torch.float64
    moved = batch.to("cpu", dtype=torch.float32)
    assert moved.x.dtype == torch.float32 and moved.times.dtype == torch.float64
    assert moved.labels.dtype == torch.int64


@pytest.mark.parametrize(
    ("series", "error", "match"),
    [
        (
            [([0.0, 2.0, 1.0], [[1.0], [2.0], [3.0]])],
            ValueError,
            r"series\[0\] times to be strictly increasing.*times\[2\] = 1\.0",
        ),
        ([([0.0, 0.0], [[1.0], [2.0]])], ValueError, r"strictly increasing"),
        ([([0.0, 1.0], [[1.0], [2.0]]), ([0.0], [[1.0, 2.0]])], ValueError, r"1 channels.*got 2 in series\[1\]"),
        ([([0.0], [[1.0]], 0), ([0.0], [[1.0]])], ValueError, r"all series or none to carry a label"),
        (
            [([0.0, 1.0], [[NAN], [NAN]])],
            ValueError,
            r"series\[0\] to have at least one time point.*every channel is NaN",
        ),
        ([([0.0, 1.0], [[1.0], [2.0], [3.0]])], ValueError, r"series\[0\] values to be a tensor of shape \(2, I\)"),
        ([([0.0, NAN], [[1.0], [2.0]])], ValueError, r"series\[0\] times to be finite"),
        ([], ValueError, r"pad_series: expected series to be a non-empty sequence"),
        ([42], TypeError, r"series\[0\] to be an IrregularSeries or a \(times, values\[, label\]\) tuple, got int 42"),
        ([([0.0], [[1.0]], "cat")], TypeError, r"label to be an int or None, got str 'cat'"),
    ],
)
def test_pad_series_errors(series, error, match):
    with pytest.raises(error, match=match):
        pad_series(series)


def test_pad_series_rejects_integer_dtype():
    with pytest.raises(TypeError, match=r"expected dtype to be a floating torch.dtype, got dtype torch.int64"):
        pad_series([([0.0], [[1.0]])], dtype=torch.int64)


def test_unpad_rejects_other_types():
    with pytest.raises(TypeError, match=r"unpad: expected batch to be an IrregularBatch, got tuple"):
        unpad((1, 2))


# --- Dataset and DataLoader -----------------------------------------------------------------------


def test_dataloader_with_collate():
    series = random_series(10)
    dataset = SeriesDataset(series)
    assert len(dataset) == 10 and dataset.num_channels == 3 and dataset.num_classes == 4
    loader = DataLoader(dataset, batch_size=4, shuffle=False, collate_fn=collate_series)
    batches = list(loader)
    assert [b.x.shape[0] for b in batches] == [4, 4, 2]
    for k, batch in enumerate(batches):
        expected = pad_series(series[4 * k : 4 * k + 4])
        for got, want in zip(batch, expected):
            assert torch.equal(got, want)
    assert torch.cat([b.labels for b in batches]).tolist() == [s.label for s in series]


def test_dataloader_shuffled_covers_everything():
    series = random_series(9)
    loader = DataLoader(
        SeriesDataset(series),
        batch_size=4,
        shuffle=True,
        collate_fn=collate_series,
        generator=torch.Generator().manual_seed(0),
    )
    back = [s for batch in loader for s in unpad(batch)]
    assert sorted(float(s.times[0]) for s in back) == sorted(float(s.times[0]) for s in series)


def test_dataset_unlabelled():
    dataset = SeriesDataset([([0.0, 1.0], [[1.0], [2.0]])])
    assert dataset.labels is None and dataset.num_classes is None


# --- drop_observations ----------------------------------------------------------------------------


def uniform_series(n: int, L: int, channels: int = 2) -> list[IrregularSeries]:
    return [
        IrregularSeries(
            torch.arange(L, dtype=torch.float64),
            torch.arange(L * channels, dtype=torch.float32).reshape(L, channels) + k,
            k,
        )
        for k in range(n)
    ]


@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 0.7, 0.99])
def test_drop_exact_fraction_and_kept_rows(p):
    series = uniform_series(8, 20) + uniform_series(2, 7)
    dropped = drop_observations(series, p, seed=1)
    for s, d in zip(series, dropped):
        L = s.times.shape[0]
        assert d.times.shape[0] == L - math.floor(p * L + 1e-9)
        assert d.label == s.label
        idx = d.times.long()  # times were the row indices
        assert (d.times.diff() > 0).all()
        assert torch.equal(d.values, s.values[idx])  # kept rows keep their values and original times


def test_drop_deterministic_and_seed_dependent():
    series = uniform_series(5, 30)
    a = drop_observations(series, 0.5, seed=123)
    b = drop_observations(series, 0.5, seed=123)
    c = drop_observations(series, 0.5, seed=124)
    assert all(series_equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x.times, y.times) for x, y in zip(a, c))


def test_drop_gives_per_sample_times():
    dropped = drop_observations(uniform_series(10, 25), 0.5, seed=0)
    grids = {tuple(d.times.tolist()) for d in dropped}
    assert len(grids) == 10  # identical inputs, ten distinct irregular grids


def test_drop_matches_neural_cde_reference_loop():
    # The Neural CDE code: one generator, per series randperm(L)[:int(L * p)] removed.
    series = uniform_series(6, 16)
    g = torch.Generator().manual_seed(56789)
    expected = []
    for s in series:
        removed = torch.randperm(16, generator=g)[: int(16 * 0.5)]
        keep = torch.ones(16, dtype=torch.bool)
        keep[removed] = False
        expected.append(s.times[keep])
    got = drop_observations(series, 0.5, seed=56789)
    assert all(torch.equal(e, d.times) for e, d in zip(expected, got))


def test_drop_float_rounding():
    (d,) = drop_observations(uniform_series(1, 100), 0.29, seed=0)
    assert d.times.shape[0] == 71  # 0.29 * 100 == 28.999999999999996 in floating point


def test_drop_p_zero_is_identity():
    series = random_series(5)
    assert all(series_equal(s, d) for s, d in zip(series, drop_observations(series, 0.0, seed=0)))


@pytest.mark.parametrize("p", [1.0, -0.1, 1.5, "0.3", True, None, float("nan")])
def test_drop_rejects_bad_p(p):
    with pytest.raises(ValueError, match=r"drop_observations: expected p to be a number in \[0, 1\), got"):
        drop_observations(uniform_series(1, 5), p, seed=0)


def test_drop_rejects_bad_seed():
    with pytest.raises(TypeError, match=r"expected seed to be an int, got float 1.5"):
        drop_observations(uniform_series(1, 5), 0.3, seed=1.5)


# --- read_long_csv --------------------------------------------------------------------------------

GOOD_CSV = """id,time,x1,x2,label
a,0.0,1.0,2.0,cat
b,0.5,5.0,,dog
a,1.5,3.0,NA,cat
a,2.0,,4.0,cat
b,3.0,6.0,7.0,dog
"""


def test_read_long_csv_values_times_labels(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text(GOOD_CSV)
    data = read_long_csv(path, label_col="label")
    assert data.ids == ["a", "b"] and data.features == ["x1", "x2"] and data.classes == ["cat", "dog"]
    a, b = data.series
    assert a.times.dtype == torch.float64 and a.times.tolist() == [0.0, 1.5, 2.0]
    assert series_equal(a, IrregularSeries(a.times, torch.tensor([[1.0, 2.0], [3.0, NAN], [NAN, 4.0]]), 0))
    assert series_equal(
        b, IrregularSeries(torch.tensor([0.5, 3.0], dtype=torch.float64), torch.tensor([[5.0, NAN], [6.0, 7.0]]), 1)
    )
    batch = pad_series(data.series)
    assert batch.x.shape == (2, 3, 2) and batch.labels.tolist() == [0, 1]


def test_read_long_csv_feature_selection_and_stream():
    data = read_long_csv(io.StringIO(GOOD_CSV), feature_cols=["x2"])
    assert data.features == ["x2"] and data.classes is None
    assert data.series[0].values.shape == (3, 1) and data.series[0].label is None


def test_read_long_csv_numeric_labels_sorted_numerically():
    text = "id,time,x,y\n1,0,1,10\n2,0,1,2\n3,0,1,9\n"
    data = read_long_csv(io.StringIO(text), label_col="y")
    assert data.classes == ["2", "9", "10"]
    assert [s.label for s in data.series] == [2, 0, 1]


@pytest.mark.parametrize(
    ("text", "kwargs", "match"),
    [
        (
            "id,time,x\na,1,1\na,0,2\n",
            {},
            r"line 3, column 'time': times of id 'a' are not sorted; got 0\.0 after 1\.0 on line 2",
        ),
        (
            "id,time,x\na,1,1\nb,1,1\na,1,2\n",
            {},
            r"line 4, column 'time': duplicate time 1\.0 for id 'a' \(also on line 2\)",
        ),
        (
            "id,time,x\na,0,1\na,1,abc\n",
            {},
            r"line 3, column 'x': expected a finite number or a missing-value marker, got 'abc'",
        ),
        ("id,time,x\na,zero,1\n", {}, r"line 2, column 'time': expected a finite number, got 'zero'"),
        ("id,time,x\na,,1\n", {}, r"line 2, column 'time': expected a finite number, got ''"),
        ("id,time,x\na,0,inf\n", {}, r"line 2, column 'x': expected a finite number"),
        ("id,t,x\na,0,1\n", {}, r"line 1: column 'time' \(time_col\) not found in the header \['id', 't', 'x'\]"),
        ("id,time,x\na,0,1\n", {"label_col": "y"}, r"column 'y' \(label_col\) not found"),
        ("id,time,x\na,0,1\n", {"feature_cols": ["x", "z"]}, r"column 'z' \(feature_cols\) not found"),
        (
            "id,time,x,y\na,0,1,p\na,1,1,q\n",
            {"label_col": "y"},
            r"line 3, column 'y': id 'a' has label 'q' here but 'p' on line 2",
        ),
        (
            "id,time,x,y\na,0,1,\nb,0,1,q\n",
            {"label_col": "y"},
            r"column 'y': missing labels .* on line 2, for id\(s\) 'a'",
        ),
        ("id,time,x\na,0\n", {}, r"line 2: expected 3 cells as in the header, got 2"),
        ("id,time,x\n,0,1\n", {}, r"line 2, column 'id': expected an id, got an empty cell"),
        ("id,time,x,x\na,0,1,1\n", {}, r"column 'x' appears twice"),
        ("id,time\na,0\n", {}, r"no feature columns"),
        ("id,time,x\n", {}, r"header but no data rows"),
        ("", {}, r"is empty; expected a header row"),
    ],
)
def test_read_long_csv_errors(text, kwargs, match):
    with pytest.raises(ValueError, match=match):
        read_long_csv(io.StringIO(text), **kwargs)


def test_read_long_csv_error_names_the_file(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("id,time,x\na,0,1\na,0,2\n")
    with pytest.raises(ValueError, match=r"bad\.csv line 3, column 'time': duplicate time"):
        read_long_csv(str(path))


def test_read_long_csv_rejects_bad_path_type():
    with pytest.raises(TypeError, match=r"expected path to be a path or an open text file, got int 3"):
        read_long_csv(3)


# --- read_long_csv: missing labels, class numbering, one class, encodings, CSV errors --------------

# what pandas' DataFrame.to_csv(na_rep="nan") writes for a missing label (the default na_rep writes "")
PANDAS_CSV = """id,time,x,label
1,0,1.0,a
1,1,2.0,a
2,0,3.0,nan
2,1,4.0,nan
3,0,5.0,b
4,0,6.0,
"""


def test_read_long_csv_nan_label_is_an_error_naming_the_rows():
    with pytest.raises(
        ValueError,
        match=r"<stream>, column 'label': missing labels .* on lines 4, 5, 7, for id\(s\) '2', '4'.*"
        r"missing_labels='drop'",
    ):
        read_long_csv(io.StringIO(PANDAS_CSV), label_col="label")


def test_read_long_csv_missing_labels_drop():
    data = read_long_csv(io.StringIO(PANDAS_CSV), label_col="label", missing_labels="drop")
    assert data.ids == ["1", "3"] and data.classes == ["a", "b"]
    assert [s.label for s in data.series] == [0, 1] and data.series[0].times.tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match=r"expected missing_labels to be one of \['error', 'drop'\], got str 'skip'"):
        read_long_csv(io.StringIO(PANDAS_CSV), label_col="label", missing_labels="skip")


def test_read_long_csv_label_missing_on_some_rows_of_an_id():
    text = "id,time,x,y\na,0,1,p\na,1,1,NaN\nb,0,1,q\n"
    for missing in ("error", "drop"):
        with pytest.raises(ValueError, match=r"line 3, column 'y': id 'a' has no label here but 'p' on line 2"):
            read_long_csv(io.StringIO(text), label_col="y", missing_labels=missing)


def test_read_long_csv_one_class_refused():
    text = "id,time,x,y\na,0,1,p\nb,0,1,p\n"
    with pytest.raises(ValueError, match=r"column 'y': all 2 series have the same label 'p'.*leave out label_col"):
        read_long_csv(io.StringIO(text), label_col="y")
    with pytest.raises(ValueError, match=r"all 2 series have the same label 'p'"):  # one class left after dropping
        read_long_csv(io.StringIO(text + "c,0,1,\n"), label_col="y", missing_labels="drop")
    unlabelled = read_long_csv(io.StringIO(text), feature_cols=["x"])  # the remedy: read without labels
    assert unlabelled.classes is None and [s.label for s in unlabelled.series] == [None, None]


NUMBERING = """
import sys
from dreamode.data import read_long_csv
data = read_long_csv(sys.argv[1], label_col="y")
print(data.classes, [s.label for s in data.series])
"""


def test_read_long_csv_class_numbering_independent_of_hash_order(tmp_path):
    # equal numbers written differently ("1", "1.0", "01") used to be ordered by set iteration,
    # which changes with PYTHONHASHSEED
    labels = ["1.0", "10", "01", "2", "1", "2.0", "02", "1.00"]
    path = tmp_path / "numbers.csv"
    path.write_text("id,time,x,y\n" + "".join(f"s{k},0,1,{y}\n" for k, y in enumerate(labels)))
    expected_classes = ["01", "1", "1.0", "1.00", "02", "2", "2.0", "10"]  # by value, then by text
    runs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        done = subprocess.run(
            [sys.executable, "-c", NUMBERING, str(path)], env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        runs.append(done.stdout)
    assert runs[0] == runs[1]
    data = read_long_csv(path, label_col="y")
    assert data.classes == expected_classes
    assert [data.classes[s.label] for s in data.series] == labels
    assert runs[0].strip() == f"{data.classes} {[s.label for s in data.series]}"


def test_read_long_csv_accepts_a_utf8_byte_order_mark(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbfid,time,x,label\na,0,1,p\nb,0,2,q\n")
    data = read_long_csv(path, label_col="label")
    assert data.ids == ["a", "b"] and data.features == ["x"] and data.classes == ["p", "q"]
    assert read_csv_header(path) == ["id", "time", "x", "label"]
    with open(path, encoding="utf-8", newline="") as f:  # a stream decoded without removing the mark
        assert read_long_csv(f, label_col="label").ids == ["a", "b"]


def test_read_long_csv_latin1_file_names_file_line_and_fix(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("id,time,x,label\na,0,1,caf\u00e9\nb,0,1,th\u00e9\n".encode("latin-1"))
    with pytest.raises(
        ValueError,
        match=r"latin\.csv line 2: the file is not UTF-8 .*b'\\xe9'.*iconv -f latin1 -t utf-8 latin\.csv > latin-utf8\.csv",
    ):
        read_long_csv(path, label_col="label")
    with (
        open(path, encoding="utf-8", newline="") as f,
        pytest.raises(ValueError, match=r"latin\.csv line 2: the file is not UTF-8"),
    ):
        read_long_csv(f, label_col="label")
    with open(path, encoding="latin-1", newline="") as f:  # the remedy the message names
        assert read_long_csv(f, label_col="label").classes == ["caf\u00e9", "th\u00e9"]


def test_read_long_csv_oversized_field_names_file_line_and_fix(tmp_path):
    path = tmp_path / "quote.csv"
    path.write_text('id,time,x\na,0,1\nb,0,"' + "9" * 200_000 + "\nc,0,1\n")
    with pytest.raises(
        ValueError,
        match=r"quote\.csv line 3: the CSV reader failed \(field larger than field limit \(131072\)\); .*"
        r"without its closing quote",
    ):
        read_long_csv(path)


def test_check_classes():
    one = [IrregularSeries(torch.zeros(1, dtype=torch.float64), torch.zeros(1, 1), 3)] * 2
    with pytest.raises(
        ValueError, match=r"loader: here: all 2 series have the same label 'd'; .*two classes .*; do this"
    ):
        check_classes(one, "loader", "here", names=["a", "b", "c", "d"], fix="do this")
    check_classes([s._replace(label=None) for s in one], "loader", "here")  # unlabelled: nothing to check
    check_classes(one + [one[0]._replace(label=0)], "loader", "here")


# --- standardize ------------------------------------------------------------------------------------


def test_standardize_hand_computed_train_only():
    train = [([0.0, 1.0], [[1.0, NAN], [3.0, 2.0]]), ([0.0], [[5.0, 2.0]])]
    test = [([0.0, 1.0], [[7.0, 4.0], [NAN, 0.0]])]
    scaler = Standardizer.fit(train)
    assert torch.allclose(scaler.mean, torch.tensor([3.0, 2.0], dtype=torch.float64))
    # channel 0: population std of (1, 3, 5) = sqrt(8/3); channel 1 is constant, so std = 1
    assert torch.allclose(scaler.std, torch.tensor([math.sqrt(8 / 3), 1.0], dtype=torch.float64))
    train_s, test_s = standardize(train, test)
    s = math.sqrt(8 / 3)
    assert torch.allclose(
        torch.nan_to_num(train_s[0].values, nan=99.0), torch.tensor([[-2 / s, 99.0], [0.0, 0.0]], dtype=torch.float32)
    )
    assert torch.allclose(
        torch.nan_to_num(test_s[0].values, nan=99.0), torch.tensor([[4 / s, 2.0], [99.0, -2.0]], dtype=torch.float32)
    )
    assert test_s[0].values.dtype == torch.float32
    assert torch.allclose(scaler.inverse(test_s[0].values)[0], torch.tensor([7.0, 4.0]))


def test_standardize_training_statistics():
    train, test = standardize(random_series(30, seed=1), random_series(5, seed=2))
    values = torch.cat([s.values for s in train]).double()
    for c in range(values.shape[1]):
        col = values[:, c][~torch.isnan(values[:, c])]
        assert abs(col.mean().item()) < 1e-6 and abs(col.std(correction=0).item() - 1.0) < 1e-6
    assert len(test) == 5


def test_standardize_channel_mismatch():
    scaler = Standardizer.fit([([0.0], [[1.0, 2.0]])])
    with pytest.raises(ValueError, match=r"Standardizer.transform: expected series to be series with 2 channels"):
        scaler.transform([([0.0], [[1.0]])])
