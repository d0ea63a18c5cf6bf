"""The mutation check of the cell's equations (tests/mutation_check.py).

The fast test checks that every mutant still applies to the current code (each snippet found
exactly once, the mutated file compiles), so that a change to an equation's code shows up in the
ordinary test run. The slow test (``python -m pytest -m slow``) runs every mutant: each must be
killed by the tests that cover the cell, or carry the reason why no test can tell it apart.
"""

from __future__ import annotations

import collections
import subprocess
import sys
from pathlib import Path

import mutation_check as mc
import pytest

SCRIPT = Path(mc.__file__)


def test_every_mutant_applies_to_the_current_code():
    assert mc.validate() == []
    real = [m for m in mc.MUTANTS if m.equivalent is None]
    assert len(real) >= 30
    # every equation of the math page and every step has mutants, in every engine that computes it
    per_equation = collections.Counter(m.equation for m in real)
    for eq in (mc.E1, mc.E2, mc.E3, mc.E4, mc.E5, mc.E6, mc.E8, mc.E8H, mc.E9, mc.E10, mc.EU, mc.LF, mc.RKS):
        assert per_equation[eq] > 0, eq
    assert {m.file for m in real} == {mc.FIELD, mc.EK, mc.FE, mc.RK, mc.FRK, mc.CELL}


def test_a_snippet_that_moved_is_reported(tmp_path):
    m = mc.MUTANTS[0]
    (tmp_path / m.file).parent.mkdir(parents=True)
    (tmp_path / m.file).write_text("nothing of the original here\n")
    problems = mc.validate([m, m._replace(file="dreamode/missing.py")], root=tmp_path)
    assert f"mutant {m.name}: the snippet" in problems[0] and "occurs 0 times" in problems[0]
    assert problems[1] == f"mutant {m.name}: the name is used twice"
    assert problems[2] == f"mutant {m.name}: no file dreamode/missing.py"


def test_list_names_every_mutant():
    out = subprocess.run([sys.executable, str(SCRIPT), "--list"], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith(f"{len(mc.MUTANTS)} mutants")
    assert all(m.name in out.stdout for m in mc.MUTANTS)


def test_only_an_unknown_name_is_refused():
    out = subprocess.run([sys.executable, str(SCRIPT), "--only", "no-such-mutant"], capture_output=True, text=True)
    assert out.returncode != 0 and "matches no mutant" in out.stderr


@pytest.mark.slow
def test_every_mutant_of_the_equations_is_killed():
    """All mutants, two at a time: none survives unless it is marked equivalent (minutes)."""
    out = subprocess.run([sys.executable, str(SCRIPT), "-j", "2", "-q"], capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert " 0 survived" in out.stdout
