"""The DREAM examples run end to end at a small size (examples are tests)."""

import json
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


def test_in_context_example_measures_against_predicting_the_mean(tmp_path, capsys):
    """The patterns have mean 0, so predicting 0 has RMS error rms(x), computed here from the data.
    Untrained, the cell starts at h = 0 and moves by Δt/τ_sys = 0.1/5 of the way to its target a
    step: over the first repetition its prediction stays near 0, its error within 1 % of rms(x).
    Thirty training steps beat that baseline by the last repetition, with and without fast weights."""
    example = load("in_context")
    length, repeats = 4, 3
    results = example.main(tmp_path, hidden=8, length=length, repeats=repeats, train_steps=30, seeds=(0,))
    assert set(results) == {f"fast_weights={f}, {t}" for f in (True, False) for t in ("trained", "untrained")}
    x = example.repeated_patterns(32, length, repeats, 8, seed=0)
    baseline = float(x.square().mean().sqrt())
    for key, r in results.items():
        if key.endswith("untrained"):
            assert r["rms_first_repetition"] == pytest.approx(baseline, rel=0.01), key
        else:
            assert r["rms_last_repetition"] < baseline, (key, r, baseline)
        change = 100 * (r["rms_last_repetition"] / r["rms_first_repetition"] - 1)
        assert r["change_percent_mean"] == pytest.approx(change, abs=1e-3), key  # percent, float32
    saved = json.loads((tmp_path / "in_context.json").read_text())
    assert saved["results"] == results
    # one printed line per variant, with its first and last RMS
    out = capsys.readouterr().out.splitlines()
    for key, r in results.items():
        line = next(ln for ln in out if ln.strip().startswith(key + ":"))
        assert f"{r['rms_first_repetition']:.4f}" in line and f"{r['rms_last_repetition']:.4f}" in line
