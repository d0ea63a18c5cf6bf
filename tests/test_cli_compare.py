"""`dreamode compare` as a user runs it: one real subprocess on a tiny configuration, and the
command line's errors and options in process (``dreamode.cli.main``)."""

import json
import subprocess
import sys

import pytest
import torch

from dreamode.cli import main

TINY = ["--hidden-dim", "8", "--rank", "2", "--epochs", "1", "--max-series", "8", "--substeps", "2", "4"]
FAST = [*TINY, "--no-smooth-sweep"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp")
    proc = subprocess.run(
        [sys.executable, "-m", "dreamode", "compare", *FAST, "--solvers", "euler", "rk4", "dopri5", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    return out, proc


def test_exit_zero_summary_table_and_files(run):
    out, proc = run
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.lstrip().startswith("data japanese_vowels")
    assert "The Euler rule the model was trained with deviates" in proc.stdout
    assert "max Δh vs ref" in proc.stdout and "empirical order" in proc.stdout
    # not a terminal: no progress bars on stderr
    assert "\r" not in proc.stderr and "it/s" not in proc.stderr and "batch/s" not in proc.stderr
    for name in ("compare.json", "compare.md", "error_vs_step.png", "traces.png", "accuracy_vs_cost.png", "model.pt"):
        assert (out / name).stat().st_size > 0, name


def test_json_schema(run):
    out, _ = run
    rep = json.loads((out / "compare.json").read_text())
    assert {"settings", "methods", "sweep", "reference", "wall_s", "summary", "load_average"} <= set(rep)
    assert rep["smooth"] is None
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


def test_checkpoint_of_a_run_is_reused_and_quiet_prints_only_the_result(run, tmp_path, capsys):
    out, _ = run
    argv = ["compare", *FAST, "--solvers", "euler", "--checkpoint", str(out / "model.pt"), "--out", str(tmp_path)]
    assert main([*argv, "--quiet"]) == 0
    printed = capsys.readouterr()
    assert printed.err == "" and "loaded" not in printed.out and "epoch" not in printed.out
    assert printed.out.startswith("The Euler rule")
    first = json.loads((out / "compare.json").read_text())["methods"][0]
    again = json.loads((tmp_path / "compare.json").read_text())["methods"][0]
    assert again["max_dev_ref"] == first["max_dev_ref"]


def _error_line(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dreamode compare: error:"), captured.err
    assert "Traceback" not in captured.err
    return lines[0]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--data", "no_such.csv"], "no such file"),
        (["--data", "no_such_set"], "no_such_set"),
        (["--solvers", "rk5"], "rk5"),
        (["--drop", "1.5"], "--drop"),
        (["--checkpoint", "missing.pt"], "--checkpoint: no such file"),
        (["--hidden-dim", "0"], "--hidden-dim"),
        (["--chunk", "0"], "--chunk"),
        (["--threads", "x"], "--threads"),
    ],
)
def test_user_error_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, args, fragment):
    monkeypatch.chdir(tmp_path)
    line = _error_line(["compare", *FAST, *args, "--out", str(tmp_path / "o")], capsys)
    assert fragment in line


@pytest.mark.parametrize(
    "kind, fragment",
    [
        ("garbage", "is not a checkpoint torch.load can read"),
        ("empty", "is not a checkpoint torch.load can read"),
        ("tensor", "holds no model weights"),
        ("folder", "is a folder"),
    ],
)
def test_bad_checkpoint_is_one_line_and_exit_2(tmp_path, capsys, kind, fragment):
    path = tmp_path / "model.pt"
    if kind == "garbage":
        path.write_bytes(bytes(range(256)) * 4)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "tensor":
        torch.save(torch.zeros(3), path)
    else:
        path.mkdir()
    line = _error_line(["compare", *FAST, "--checkpoint", str(path), "--out", str(tmp_path / "o")], capsys)
    assert line.startswith("dreamode compare: error: --checkpoint:") and fragment in line
    assert not (tmp_path / "o").exists()  # refused before anything ran


def test_csv_without_label_column_is_one_line(tmp_path, capsys):
    csv = tmp_path / "d.csv"
    csv.write_text("id,time,a\n" + "".join(f"{i},{t},{t * 0.5}\n" for i in range(3) for t in range(4)))
    line = _error_line(["compare", *FAST, "--data", str(csv), "--out", str(tmp_path / "o")], capsys)
    assert "label" in line


def test_help_describes_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["compare", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split()).split(" options: ", 1)[1]
    for option, default in [
        ("--seed", "0"),
        ("--hidden-dim", "32"),
        ("--rank", "4"),
        ("--lr", "0.01"),
        ("--drop", "0.0"),
        ("--substeps", "[1, 2, 4, 8, 16]"),
        ("--epochs", "12"),
        ("--threads", "1"),
        ("--chunk", "40"),
    ]:
        assert f"{option} " in text and f"(default: {default})" in text.split(f"{option} ", 1)[1][:400], option
    assert "--quiet" in text


@pytest.mark.parametrize("where", ["file", "below-a-file"])
def test_an_out_that_cannot_be_a_folder_is_one_line_before_any_work(tmp_path, capsys, where):
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" if where == "file" else tmp_path / "f" / "run"
    line = _error_line(["compare", *FAST, "--out", str(out)], capsys)
    assert "--out" in line and ("is a file" in line or "cannot write there" in line)
