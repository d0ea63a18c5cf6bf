"""examples/pharmacokinetics.py and examples/hybrid_oscillator.py at a reduced size (seconds)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from repo_scripts import load_script

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(autouse=True)
def restore_threads():
    """main() sets torch to one thread; put the setting back for the other tests."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def load(name: str):
    return load_script(EXAMPLES / f"{name}.py")


def test_pharmacokinetics_quick(tmp_path):
    ex = load("pharmacokinetics")
    r = ex.main(tmp_path, quick=True, command="test")
    (p,) = r["parameters"]
    assert p["subject"] == 1
    # The scipy fit of the closed form reproduces the reference for subject 1 (to its 2 decimals) ...
    for name, want in ex.REFERENCE_SUBJECT_1.items():
        assert abs(p["scipy"][name] - want) < 0.006, name
    # ... and the ODE fitted through the solver registry agrees with it to 1e-4 in every log parameter.
    for name in ("log_ke", "log_ka", "log_cl"):
        assert abs(p["ode"][name] - p["scipy"][name]) < 1e-4, name
    h = r["holdout"]["last2"]
    assert h["n_train"] == 9 and h["n_heldout"] == 2
    assert all(math.isfinite(h[k]) for k in ("physics_heldout_rmse", "hybrid_heldout_rmse", "hybrid_train_rmse"))
    assert json.loads((tmp_path / "pharmacokinetics.json").read_text())["quick"] is True
    assert "Command: `test`" in (tmp_path / "pharmacokinetics.md").read_text()
    assert (tmp_path / "theophylline_last2.png").stat().st_size > 0


def test_hybrid_oscillator_quick(tmp_path):
    ex = load("hybrid_oscillator")
    r = ex.main(tmp_path, quick=True, command="test")
    (s,) = r["solvers"].values()
    # From a start 20% (ω) and 150% (γ) off, noisy θ only: ω within 1%, γ within 10% of the truth.
    assert abs(s["omega"] / ex.OMEGA - 1) < 0.01
    assert abs(s["damping"] / ex.GAMMA - 1) < 0.10
    assert abs(s["physics_only_omega"] / ex.OMEGA - 1) < 0.01
    assert s["extrapolation_rmse"] < 0.1 and s["field_calls"] > 0
    for name in ("hybrid_oscillator.json", "hybrid_oscillator.md", "oscillator_fit.png", "oscillator_solvers.png"):
        assert (tmp_path / name).stat().st_size > 0
