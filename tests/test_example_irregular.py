"""examples/irregular_classification.py runs end to end at a tiny size and writes its results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from repo_scripts import load_script

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "irregular_classification.py"


@pytest.fixture(autouse=True)
def restore_threads():
    """main() sets torch to one thread; put the setting back for the other tests."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def load_example():
    return load_script(EXAMPLE)


def test_quick_run_writes_table_and_json(tmp_path):
    example = load_example()
    models = ("dream-euler", "gru-d", "lstm-ffill")
    record = example.main(
        drop_rates=(0.0, 0.5), seeds=(0, 1), models=models, out_dir=tmp_path, quick=True, hidden=4, command="test"
    )
    md = (tmp_path / "irregular_japanese_vowels.md").read_text()
    data = json.loads((tmp_path / "irregular_japanese_vowels.json").read_text())
    assert record["complete"] and data["complete"]
    assert len(data["runs"]) == 2 * 2 * len(models)
    assert {r["model"] for r in data["runs"]} == set(models)
    assert all(0.0 <= r["test_acc"] <= 1.0 and r["params"] > 0 for r in data["runs"])
    assert len(data["summary"]) == 2 * len(models)
    for name in models:
        assert example.MODELS[name][0] in md
    assert "0% dropped" in md and "50% dropped" in md and "±" in md
    assert "FCN" in md and "Neural CDE" in md
    assert "Command: `test`" in md


def test_restrict_and_resume(tmp_path):
    example = load_example()
    kw = dict(drop_rates=(0.0, 0.3), seeds=(0, 1), models=("gru-dt", "lstm-ffill"), out_dir=tmp_path, quick=True)
    restrict = {"lstm-ffill": {"rates": [0.3], "seeds": [1]}}
    first = example.main(**kw, restrict=restrict)
    assert len(first["runs"]) == 4 + 1
    assert [(r["drop"], r["seed"]) for r in first["runs"] if r["model"] == "lstm-ffill"] == [(0.3, 1)]
    again = example.main(**kw, restrict=restrict, resume=True)
    assert again["runs"] == first["runs"]  # nothing re-run
    md = (tmp_path / "irregular_japanese_vowels.md").read_text()
    assert "(n=1)" in md
    assert "LSTM, forward-filled: 0% not run; 30% seeds [1]" in md


class _Raising(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, batch):
        raise RuntimeError("solver gave up")


def test_failed_runs_are_recorded_and_merge(tmp_path, monkeypatch):
    example = load_example()
    kw = dict(drop_rates=(0.5,), seeds=(0,), out_dir=tmp_path / "a", quick=True, command="part a")
    example.main(models=("lstm-ffill",), **kw)
    monkeypatch.setattr(example, "make_baseline", lambda *args, **kwargs: _Raising())
    kw.update(out_dir=tmp_path / "b", command="part b")
    failed = example.main(models=("gru-dt",), **kw)
    (run,) = failed["runs"]
    assert run["test_acc"] is None and run["failed"].startswith("RuntimeError in epoch 1: solver gave up")
    merged = example.merge_results(
        [tmp_path / d / "irregular_japanese_vowels.json" for d in "ab"], tmp_path / "m", command="merge"
    )
    assert [r["model"] for r in merged["runs"]] == ["lstm-ffill", "gru-dt"]
    md = (tmp_path / "m" / "irregular_japanese_vowels.md").read_text()
    assert "failed (1/1)" in md and "`part a`" in md and "`part b`" in md and "`merge`" in md


def test_merge_replaces_reruns_and_keeps_earlier_parts(tmp_path):
    example = load_example()
    kw = dict(drop_rates=(0.5,), seeds=(0,), quick=True)
    example.main(models=("lstm-ffill", "gru-dt"), out_dir=tmp_path / "a", command="part a", **kw)
    first = example.merge_results([tmp_path / "a" / "irregular_japanese_vowels.json"], tmp_path / "m", command="m1")
    example.main(models=("gru-dt",), out_dir=tmp_path / "b", command="rerun", **kw)
    merged = example.merge_results(
        [tmp_path / "m" / "irregular_japanese_vowels.json", tmp_path / "b" / "irregular_japanese_vowels.json"],
        tmp_path / "m2",
        command="m2",
        note="second note",
    )
    assert len(first["runs"]) == 2 and len(merged["runs"]) == 2
    assert [part["command"] for part in merged["parts"]] == ["part a", "rerun"]
    assert merged["earlier_merges"] == ["m1"]
    (replaced,) = merged["superseded"]
    assert replaced.startswith("GRU-Δt, 50% dropped, seed 0 (")
    md = (tmp_path / "m2" / "irregular_japanese_vowels.md").read_text()
    assert "replaced by a later rerun" in md and "`m1`" in md and "`m2`" in md and "second note" in md


def test_block_mean_znorm_and_validation_split():
    example = load_example()
    from dreamode.data import IrregularSeries

    s = IrregularSeries(torch.arange(5, dtype=torch.float64), torch.tensor([[1.0], [3.0], [5.0], [7.0], [9.0]]), 2)
    (out,) = example.block_mean([s], 2)
    assert torch.equal(out.times, torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64))
    assert torch.equal(out.values, torch.tensor([[2.0], [6.0], [9.0]])) and out.label == 2
    assert example.block_mean([s], 1)[0] is s
    with pytest.raises(ValueError, match="positive int"):
        example.block_mean([s], 0)
    (z,) = example.znorm([IrregularSeries(torch.arange(3.0), torch.tensor([[1.0, 5.0], [3.0, 5.0], [5.0, 5.0]]), 0)])
    assert torch.allclose(z.values, torch.tensor([[-1.2247449, 0.0], [0.0, 0.0], [1.2247449, 0.0]]))
    series = [IrregularSeries(torch.zeros(1), torch.full((1, 1), float(i)), i % 3) for i in range(30)]
    rest, held = example.split_validation(series, 0.2)
    assert len(rest) == 24 and len(held) == 6
    assert sorted(float(s.values) for s in rest + held) == list(range(30))
    assert [sum(s.label == k for s in held) for k in range(3)] == [2, 2, 2]
    assert example.split_validation(series, 0.2)[1] == held  # fixed seed


def test_validation_mode_never_uses_the_test_set(tmp_path, monkeypatch):
    example = load_example()
    real = example.DATASETS["japanese_vowels"]["load"]

    def load(split):
        assert split == "train", "the validation mode loaded the test set"
        return real(split)

    monkeypatch.setitem(example.DATASETS["japanese_vowels"], "load", load)
    record = example.main(
        drop_rates=(0.0,), seeds=(0,), models=("gru-dt",), out_dir=tmp_path, quick=True, validation=0.2, command="v"
    )
    assert record["config"]["sizes"]["train"] == record["config"]["sizes"]["test"] == 18
    md = (tmp_path / "irregular_japanese_vowels_validation.md").read_text()
    assert "Validation accuracy" in md and "test set is not used" in md and "FCN" in md


def test_quick_plaid(tmp_path):
    pytest.importorskip("sktime")  # PLAID comes from sktime, which CI does not install
    example = load_example()
    models = ("dream-euler", "gru-dt")
    record = example.cli(
        ["--data", "plaid", "--quick", "--drop-rates", "0", "0.5", "--seeds", "0", "--models", *models]
        + ["--out-dir", str(tmp_path)]
    )
    cfg = record["config"]
    assert cfg["dataset"] == "plaid" and cfg["downsample"] == 8 and cfg["transform"] == "znorm"
    assert cfg["sizes"] == {"train": 22, "test": 22, "channels": 1, "lengths": cfg["sizes"]["lengths"]}
    assert all(0.0 <= r["test_acc"] <= 1.0 for r in record["runs"]) and len(record["runs"]) == 4
    md = (tmp_path / "irregular_plaid.md").read_text()
    assert md.startswith("# PLAID with dropped observations") and "blocks of 8 samples" in md
    assert "z-normalisation" in md
    assert "DREAM rank 1" in md and "FCN" not in md
