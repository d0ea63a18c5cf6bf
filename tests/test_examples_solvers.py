"""examples/solver_study.py runs at a tiny size and writes a plot and tables with sensible slopes."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
from repo_scripts import load_script

import solvers

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "solver_study.py"


def load_example():
    return load_script(EXAMPLE)


def test_exact_solution_matches_the_matrix_exponential():
    import torch

    study = load_example()
    t = torch.linspace(0.0, 10.0, 11, dtype=torch.float64)
    ref = torch.stack([study.Y0 @ torch.linalg.matrix_exp(study.A * ti).T for ti in t])
    torch.testing.assert_close(study.exact(t), ref, rtol=0, atol=1e-13)


def test_tiny_study_writes_plot_and_tables(tmp_path, capsys):
    study = load_example()
    table = study.main(out_dir=tmp_path, levels=3, t_end=2.0, h0=0.1)

    png = (tmp_path / "solver_study.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    md = (tmp_path / "solver_study.md").read_text()
    with open(tmp_path / "solver_study.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    printed = capsys.readouterr().out

    methods = solvers.available()
    assert list(table) == methods  # every registered method, in the registry's order
    assert len(rows) == 3 * len(methods)
    for name in methods:
        assert f"| {name} |" in md and f"| {name} |" in printed
        errors = [float(r["error"]) for r in rows if r["method"] == name]
        assert all(math.isfinite(e) and e >= 0 for e in errors)
        row = table[name]
        if row["adaptive"]:
            # Tightening rtol over the sweep must pay off.
            assert errors[-1] < errors[0], (name, errors)
            assert row["slope_rtol"] > 0.3, (name, row)
        else:
            # h = 0.1, 0.05, 0.025 is already in the asymptotic range on this smooth problem.
            assert row["slope_step"] == pytest.approx(row["order"], abs=0.2), (name, row)
            assert row["slope_nfe"] == pytest.approx(-row["order"], abs=0.2), (name, row)
            nfe = [int(r["nfe"]) for r in rows if r["method"] == name]
            stages = solvers.get(name).solver.tableau.stages
            assert nfe == [stages * 20, stages * 40, stages * 80]  # 2 time units in steps of h


def test_levels_must_allow_a_fit(tmp_path):
    study = load_example()
    with pytest.raises(ValueError, match="levels must be >= 2"):
        study.main(out_dir=tmp_path, levels=1)
