"""The ``dreamode`` command line: ``bench`` at a tiny size, ``solvers``, and bad options."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import pytest

from dreamode.cli import main

TINY = ["--batch", "2", "--steps", "4", "--input-dim", "3", "--hidden-dim", "4", "--rank", "2", "--repeats", "1"]
ADAPTIVE = ["--adaptive-steps", "2", "--slow-steps", "3"]


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dreamode", *args], capture_output=True, text=True, timeout=timeout)


def _per_step_ratio(row: dict, base: dict, col: str) -> float:
    """The documented ratio recomputed from the reported times: time per observation step over the
    baseline's time per observation step (rows carry times rounded to 0.01 ms, ratios to 0.001)."""
    return (row[col] / row["steps"]) / (base[col] / base["steps"])


def _assert_ratios_follow_the_times(rows: dict[str, dict]) -> None:
    """Every ×LSTM and ×euler ratio in the report is the quotient of its reported times."""
    for name, r in rows.items():
        base = rows.get("lstm-cell" if "cell" in name else "lstm")
        for key in ("forward", "train"):
            for col in (f"{key}_ms", f"{key}_cpu_ms"):
                if r[col] is not None:
                    assert math.isfinite(r[col]) and r[col] > 0, (name, col)
            for suffix, col in (("", f"{key}_ms"), ("_cpu", f"{key}_cpu_ms")):
                ratio = r[f"{key}_ratio{suffix}"]
                if base is None or r[col] is None:
                    assert ratio is None, (name, key)
                else:
                    assert ratio == pytest.approx(_per_step_ratio(r, base, col), abs=1.5e-3), (name, key, suffix)
                euler = rows.get("dream-euler")
                if name.startswith("dream-") and euler is not None and r[col] is not None:
                    vs = r[f"{key}_vs_euler{suffix}"]
                    assert vs == pytest.approx(_per_step_ratio(r, euler, col), abs=1.5e-3), (name, key, suffix)


def test_bench_tiny_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    res = _run("bench", *TINY, *ADAPTIVE, "--models", "dream-euler", "lstm", "gru", "--out", str(out))
    assert res.returncode == 0, res.stderr
    report = json.loads(out.read_text())
    assert {"command", "machine", "config", "timing_method", "memory_method", "results", "adjoint_memory"} <= set(
        report
    )
    assert report["config"]["batch"] == 2 and report["config"]["steps"] == 4
    rows = {r["model"]: r for r in report["results"]}
    assert set(rows) == {"dream-euler", "lstm", "gru"}
    # each model ran the requested length once per repeat, with its peak memory probed
    assert all(r["steps"] == 4 and r["repeats"] == 1 for r in rows.values())
    assert all(r["peak_mb"] is not None and r["peak_mb"] >= 0 for r in rows.values())  # an RSS delta: may be 0
    _assert_ratios_follow_the_times(rows)
    # the printed table shows each row's times and ratios, to its rounding; progress goes to stderr
    clock = report["config"]["clock"]
    lines = {ln.split()[0]: ln.split() for ln in res.stdout.splitlines() if ln.split() and ln.split()[0] in rows}
    assert set(lines) == set(rows)
    fw, tr = ("forward_ms", "train_ms") if clock == "wall" else ("forward_cpu_ms", "train_cpu_ms")
    for name, r in rows.items():
        shown = [f"{r[fw]:.1f}", f"{r[tr]:.1f}", f"{r['forward_ratio_shown']:.2f}", f"{r['train_ratio_shown']:.2f}"]
        assert lines[name][2:6] == shown, (name, lines[name])
    assert "×LSTM" in res.stdout
    assert "[1/3]" in res.stderr


def test_bench_all_solvers_quick(tmp_path, capsys):
    out = tmp_path / "b.json"
    argv = ["bench", *TINY, *ADAPTIVE, "--quick", "--quiet", "--out", str(out)]
    argv += [
        "--models",
        "dream-euler",
        "dream-rk4",
        "dream-rk4-generic",
        "dream-dopri5",
        "dream-dopri5-adjoint",
        "lstm",
    ]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    rows = {r["model"]: r for r in report["results"]}
    # rk4 has a fast path: full length; the generic (unfused) variant runs --slow-steps
    assert rows["dream-dopri5"]["steps"] == 2 and rows["dream-rk4"]["steps"] == 4
    assert rows["dream-rk4-generic"]["steps"] == 3
    _assert_ratios_follow_the_times(rows)
    assert rows["lstm"]["forward_vs_euler"] is None
    assert all(r["peak_mb"] is None for r in rows.values())  # --quick skips the memory probes
    assert "dream-dopri5-adjoint" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler for dreamode.native")
def test_bench_native_adds_the_compiled_inference_models(tmp_path):
    out = tmp_path / "n.json"
    argv = ["bench", *TINY, "--quick", "--quiet", "--native", "--models", "dream-euler", "lstm", "lstm-cell"]
    assert main([*argv, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = {r["model"]: r for r in report["results"]}
    assert set(rows) == {
        "dream-euler",
        "lstm",
        "lstm-cell",
        "dream-euler-native",
        "dream-euler-native-all",
        "dream-cell-native",
    }
    assert report["native_build_seconds"] >= 0
    # the sequence model trains too; the streaming cell is compared with nn.LSTMCell
    assert rows["dream-euler-native"]["train_ms"] > 0 and rows["dream-cell-native"]["train_ms"] is None
    _assert_ratios_follow_the_times(rows)


def test_adjoint_memory_study(tmp_path):
    out = tmp_path / "a.json"
    argv = ["bench", *TINY, "--skip-timing", "--adjoint-memory", "3", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    study = json.loads(out.read_text())["adjoint_memory"]
    assert [(a["model"], a["steps"]) for a in study] == [("dream-dopri5", 3), ("dream-dopri5-adjoint", 3)]
    assert all(a["peak_mb"] is not None for a in study)
    assert all(a["outputs_mb"] > 0 for a in study)


def test_adjoint_memory_direct_max_skips_the_long_direct_probe(tmp_path, capsys):
    out = tmp_path / "a.json"
    argv = ["bench", *TINY, "--skip-timing", "--adjoint-memory", "2", "3", "--adjoint-memory-direct-max", "2"]
    assert main([*argv, "--out", str(out)]) == 0
    study = {(a["model"], a["steps"]): a for a in json.loads(out.read_text())["adjoint_memory"]}
    assert study[("dream-dopri5", 2)]["peak_mb"] is not None
    assert study[("dream-dopri5", 3)]["peak_mb"] is None and study[("dream-dopri5", 3)]["note"] == "skipped"
    assert study[("dream-dopri5-adjoint", 3)]["peak_mb"] is not None
    assert "skipped" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["bench", "--batch", "x"], "argument --batch: expected a positive integer, got 'x'"),
        (["bench", "--steps", "0"], "argument --steps: expected a positive integer, got '0'"),
        (["bench", "--models", "transformer"], "argument --models: invalid choice: 'transformer'"),
        (["bench", "--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["bench", "--rank", "9", "--input-dim", "4"], "--rank (9) must be <= --input-dim (4)"),
        (["nosuchcommand"], "invalid choice: 'nosuchcommand'"),
    ],
)
def test_bad_option_is_one_clear_line(args, fragment, capsys):
    try:
        code = main(args)
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("dreamode") and "error:" in lines[0]
    assert fragment in lines[0]
    assert captured.out == ""


def test_bad_option_exit_status_of_the_console_command():
    res = _run("bench", "--batch", "-3", timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "dreamode bench: error: argument --batch: expected a positive integer, got '-3' (see dreamode bench --help)"
    ]


def test_solvers_table(capsys):
    assert main(["solvers"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["name", "order", "adaptive", "differentiable", "adjoint", "backend"]
    rows = {ln.split()[0]: ln.split() for ln in out[2:]}
    assert rows["dopri5"] == ["dopri5", "5", "yes", "yes", "yes", "torchdiffeq"]
    assert rows["euler"] == ["euler", "1", "no", "yes", "no", "solvers"]
    assert "ltc-fused" in rows


def test_solvers_json(capsys):
    assert main(["solvers", "--json"]) == 0
    items = json.loads(capsys.readouterr().out)
    assert {"name", "order", "adaptive", "differentiable", "adjoint", "backend"} <= set(items[0])


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "bench" in capsys.readouterr().err
