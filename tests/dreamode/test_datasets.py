"""dreamode.datasets: the shipped JapaneseVowels data, the optional loaders and their errors."""

from __future__ import annotations

import socket
import sys
from collections import Counter

import pytest
import torch

from dreamode.data import pad_series
from dreamode.datasets import (
    FRAME_SHIFT_MS,
    available_datasets,
    load_co2,
    load_dataset,
    load_japanese_vowels,
    load_plaid,
)
from dreamode.datasets._convert_japanese_vowels import read_ts


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a loader tried to open a network connection")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_japanese_vowels_counts(no_network):
    train, test, everything = (load_japanese_vowels(s) for s in ("train", "test", "all"))
    assert (len(train), len(test), len(everything)) == (270, 370, 640)
    lengths = [s.times.shape[0] for s in everything]
    assert min(lengths) == 7 and max(lengths) == 29
    assert {s.values.shape[1] for s in everything} == {12}
    assert sorted({s.label for s in everything}) == list(range(9))
    assert Counter(s.label for s in train) == {k: 30 for k in range(9)}
    test_counts = Counter(s.label for s in test)
    assert min(test_counts.values()) == 24 and max(test_counts.values()) == 88


def test_japanese_vowels_contents():
    everything = load_japanese_vowels("all")
    for s in everything:
        L = s.times.shape[0]
        assert s.times.dtype == torch.float64 and torch.equal(s.times, torch.arange(L, dtype=torch.float64))
        assert s.values.dtype == torch.float32 and torch.isfinite(s.values).all()
    # first frame of the first training utterance, as written in JapaneseVowels_TRAIN.ts
    first = [1.860936, -0.207383, 0.261557, -0.214562, -0.171253, -0.118167]
    assert torch.allclose(everything[0].values[0, :6], torch.tensor(first), atol=1e-6)
    assert everything[0].label == 0 and everything[0].times.shape[0] == 20
    train, test = load_japanese_vowels("train"), load_japanese_vowels("test")
    assert all(torch.equal(a.values, b.values) for a, b in zip(train + test, everything))
    assert FRAME_SHIFT_MS == 6.4


def test_japanese_vowels_returns_fresh_tensors():
    a = load_japanese_vowels("train")
    a[0].values.zero_()
    assert load_japanese_vowels("train")[0].values[0, 0] != 0


def test_japanese_vowels_pads_into_one_batch():
    batch = pad_series(load_japanese_vowels("all"))
    assert batch.x.shape == (640, 29, 12) and batch.labels.shape == (640,)
    assert int(batch.mask.sum()) == 12 * int(batch.lengths.sum())


def test_bad_split():
    with pytest.raises(
        ValueError, match=r"load_japanese_vowels: expected split to be one of \['train', 'test', 'all'\], got 'TRAIN'"
    ):
        load_japanese_vowels("TRAIN")
    with pytest.raises(ValueError, match=r"load_plaid: expected split to be one of"):
        load_plaid("validation")


def test_available_and_load_dataset():
    assert available_datasets() == ["co2", "japanese_vowels", "plaid"]
    assert len(load_dataset("japanese_vowels", split="test")) == 370
    for typo in ("japanese_vowel", "JAPANESE_VOWELS", "japanese-vowels"):
        with pytest.raises(ValueError, match=rf"unknown data set '{typo}'; did you mean 'japanese_vowels'\?"):
            load_dataset(typo)


def test_converter_reads_ts(tmp_path):
    row = ":".join(",".join(str(c + 0.5 * t) for t in range(3)) for c in range(12))
    path = tmp_path / "x.ts"
    path.write_text(f"# comment\n@problemName x\n@timeStamps false\n@missing false\n@data\n{row}:4\n")
    (series,), labels = read_ts(path)
    assert labels == [4] and series.shape == (3, 12)
    assert series[2, 5] == 5 + 0.5 * 2


@pytest.mark.parametrize(
    ("module", "loader", "extra"),
    [("sktime", lambda: load_plaid(), "sktime"), ("statsmodels", lambda: load_co2(), "statsmodels")],
)
def test_optional_loader_missing_package_names_the_extra(monkeypatch, module, loader, extra):
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(ImportError, match=rf"needs the optional package '{module}'.*pip install 'dreamode\[{extra}\]'"):
        loader()


def test_load_plaid(no_network):
    pytest.importorskip("sktime")  # CI does not install sktime: skipped there
    train, test = load_plaid("train"), load_plaid("test")
    everything = load_plaid("all")
    assert (len(train), len(test), len(everything)) == (537, 537, 1074)
    lengths = [s.times.shape[0] for s in everything]
    assert min(lengths) == 100 and max(lengths) == 1344
    assert sorted({s.label for s in everything}) == list(range(11))
    # the UCR split is stratified: every class has (nearly) as many test as training series
    train_counts, test_counts = Counter(s.label for s in train), Counter(s.label for s in test)
    assert train_counts[0] == test_counts[0] == 33 and train_counts[10] == test_counts[10] == 13
    assert all(abs(train_counts[k] - test_counts[k]) <= 1 for k in range(11))
    for s in everything:
        L = s.times.shape[0]
        assert s.times.dtype == torch.float64 and torch.equal(s.times, torch.arange(L, dtype=torch.float64))
        assert s.values.shape == (L, 1) and s.values.dtype == torch.float32 and torch.isfinite(s.values).all()
    assert all(torch.equal(a.values, b.values) and a.label == b.label for a, b in zip(train + test, everything))
    assert everything[0].label == 0 and lengths[0] == 500  # first series of PLAID_TRAIN.ts: air conditioner
    batch = pad_series(train[:4])
    assert batch.x.shape == (4, max(lengths[:4]), 1) and batch.labels.tolist() == [s.label for s in train[:4]]


def test_load_co2(no_network):
    pytest.importorskip("statsmodels")
    (co2,) = load_co2()
    assert co2.times.shape == (2284,) and co2.values.shape == (2284, 1) and co2.label is None
    assert torch.equal(co2.times, torch.arange(2284, dtype=torch.float64))
    assert int(torch.isnan(co2.values).sum()) == 59
    assert abs(float(co2.values[0, 0]) - 316.1) < 1e-4  # ppm, week of 1958-03-29
    batch = pad_series([co2])
    assert int(batch.lengths[0]) == 2284 - 59 and (batch.times.diff(dim=1) > 0).all()
    assert float(batch.times.diff(dim=1).max()) > 1.0  # the gaps remain as gaps in time


def test_loader_refuses_labels_of_one_class(monkeypatch):
    import dreamode.datasets._japanese_vowels as jv

    arrays = dict(jv._arrays())
    arrays["labels"] = arrays["labels"] * 0  # a damaged data file: every utterance by speaker 0
    monkeypatch.setattr(jv, "_arrays", lambda: arrays)
    with pytest.raises(ValueError, match=r"load_japanese_vowels: split 'test': all 370 series have the same label 0"):
        load_dataset("japanese_vowels", split="test")
    for split in ("train", "test", "all"):  # the shipped file: nine speakers in every split
        monkeypatch.undo()
        assert len({s.label for s in load_japanese_vowels(split)}) == 9


def test_misspelt_baseline_gets_a_suggestion():
    from dreamode.baselines import make_baseline

    with pytest.raises(ValueError, match=r"unknown baseline 'GRU-D'; did you mean 'gru-d'\?"):
        make_baseline("GRU-D", 3, 2)
