"""examples/irregular_classification.py runs end to end at a tiny size and writes its results."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "irregular_classification.py"


@pytest.fixture(autouse=True)
def restore_threads():
    """main() sets torch to one thread; put the setting back for the other tests."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def load_example():
    spec = importlib.util.spec_from_file_location("irregular_classification", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
