"""`dreamode compare` as a user runs it: a real subprocess on a tiny configuration."""

import json
import subprocess
import sys

import pytest

TINY = ["--hidden-dim", "8", "--rank", "2", "--epochs", "1", "--max-series", "8", "--substeps", "2", "4"]


def dreamode(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "dreamode", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp")
    proc = dreamode("compare", *TINY, "--solvers", "euler", "rk4", "dopri5", "--out", str(out))
    return out, proc


def test_exit_zero_table_and_files(run):
    out, proc = run
    assert proc.returncode == 0, proc.stderr
    assert "max |h-h_ref|" in proc.stdout and "empirical order" in proc.stdout
    for name in ("compare.json", "compare.md", "error_vs_step.png", "traces.png", "accuracy_vs_cost.png", "model.pt"):
        assert (out / name).stat().st_size > 0, name


def test_json_schema(run):
    out, _ = run
    rep = json.loads((out / "compare.json").read_text())
    assert {"settings", "methods", "sweep", "reference", "wall_s"} <= set(rep)
    assert [m["name"] for m in rep["methods"]] == ["euler", "rk4", "dopri5"]
    for m in rep["methods"]:
        assert isinstance(m["nfe"], int) and m["nfe"] > 0
        assert 0.0 <= m["accuracy"] <= 1.0
        assert m["max_dev_ref"] >= m["mean_dev_ref"] >= 0.0
    assert set(rep["sweep"]) == {"euler", "midpoint", "heun", "rk4"}
    # the Euler rule is first order: its sweep error halves with the step (slope about 1)
    assert 0.8 < rep["sweep"]["euler"]["order"] < 1.3
    for sw in rep["sweep"].values():
        assert len(sw["max_error"]) == len(sw["mean_error"]) == len(sw["nfe"]) == 2
        assert all(m <= e for m, e in zip(sw["mean_error"], sw["max_error"]))


def test_checkpoint_of_a_run_is_reused(run, tmp_path):
    out, _ = run
    proc = dreamode(
        "compare", *TINY, "--solvers", "euler", "--checkpoint", str(out / "model.pt"), "--out", str(tmp_path)
    )
    assert proc.returncode == 0, proc.stderr
    assert "loaded" in proc.stdout and "epoch 1/1" not in proc.stdout
    first = json.loads((out / "compare.json").read_text())["methods"][0]
    again = json.loads((tmp_path / "compare.json").read_text())["methods"][0]
    assert again["max_dev_ref"] == first["max_dev_ref"]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--data", "no_such.csv"], "no such file"),
        (["--data", "no_such_set"], "no_such_set"),
        (["--solvers", "rk5"], "rk5"),
        (["--drop", "1.5"], "--drop"),
        (["--checkpoint", "missing.pt"], "--checkpoint"),
    ],
)
def test_user_error_is_one_line_and_exit_2(tmp_path, args, fragment):
    proc = dreamode("compare", *TINY, *args, "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dreamode compare: error:"), proc.stderr
    assert fragment in lines[0] and "Traceback" not in proc.stderr


def test_csv_without_label_column_is_one_line(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("id,time,a\n" + "".join(f"{i},{t},{t * 0.5}\n" for i in range(3) for t in range(4)))
    proc = dreamode("compare", *TINY, "--data", str(csv), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "label" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
