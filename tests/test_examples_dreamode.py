"""The DREAM examples run end to end at a small size (examples are tests)."""

from pathlib import Path

import pytest
from repo_scripts import load_script

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name: str):
    return load_script(EXAMPLES / f"{name}.py")


def test_quickstart_runs_the_seed_example():
    out_shape, h_shape = load("quickstart").main()
    assert tuple(out_shape) == (32, 50, 128) and tuple(h_shape) == (32, 128)


def test_mechanisms_example_shows_a_surprise_spike(tmp_path):
    summary = load("mechanisms").main(tmp_path, steps=120, seed=0)
    assert (tmp_path / "mechanisms.png").stat().st_size > 10_000
    assert summary["surprise_after_switch"] > summary["surprise_before"] + 0.3
    assert summary["tau_after_switch"] < summary["tau_before"]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_in_context_example_reports_every_variant(tmp_path):
    results = load("in_context").main(tmp_path, hidden=8, length=4, repeats=3, train_steps=2, seeds=(0,))
    assert set(results) == {f"fast_weights={f}, {t}" for f in (True, False) for t in ("trained", "untrained")}
    for r in results.values():
        assert 0 < r["rms_first_repetition"] < 2 and 0 < r["rms_last_repetition"] < 2
    assert (tmp_path / "in_context.json").exists()
