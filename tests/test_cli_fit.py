"""`dreamode fit`: training, early stopping, exact resume, forecasting, user errors, and two
processes under torchrun (DistributedDataParallel over gloo) against one process."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from dreamode.checkpoint import CheckpointError
from dreamode.fit import FitSettings, epoch_order, run_fit

TINY = dict(hidden_dim=8, rank=2, max_series=40, batch_size=16)
CLI_TINY = ["--hidden-dim", "8", "--rank", "2", "--max-series", "40", "--batch-size", "16"]


def dreamode(*args, cwd=None, env=None):
    return subprocess.run(
        [sys.executable, "-m", "dreamode", *args], capture_output=True, text=True, cwd=cwd, timeout=600, env=env
    )


def weights(path):
    return torch.load(path, weights_only=True)["model"]


def test_cli_fit_writes_metrics_plots_and_checkpoints(tmp_path):
    proc = dreamode("fit", *CLI_TINY, "--epochs", "2", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "epoch 2/2" in proc.stdout and "test accuracy" in proc.stdout
    for name in ("metrics.json", "curves.png", "best.pt", "last.pt"):
        assert (tmp_path / name).stat().st_size > 0, name
    rep = json.loads((tmp_path / "metrics.json").read_text())
    assert rep["task"] == "classify" and rep["epochs_run"] == 2 and rep["world_size"] == 1
    assert {"settings", "model", "parameters", "data", "history", "best_epoch", "test", "wall_time_s"} <= set(rep)
    assert [h["epoch"] for h in rep["history"]] == [1, 2]
    assert {"train_loss", "train_accuracy", "val_accuracy", "lr", "time_s"} <= set(rep["history"][0])
    assert 0.0 <= rep["test"]["accuracy"] <= 1.0
    # checkpoints load with weights_only=True (no code execution) and hold the optimizer state
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ckpt["format"] == "dreamode-checkpoint" and ckpt["optimizer"]["state"]


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler for dreamode.native")
def test_cli_fit_with_the_native_kernels(tmp_path):
    proc = dreamode("fit", *CLI_TINY, "--epochs", "1", "--native", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "dreamode.native: C++ kernels ready" in proc.stdout and "test accuracy" in proc.stdout
    assert json.loads((tmp_path / "metrics.json").read_text())["epochs_run"] == 1


def test_resume_is_exact(tmp_path):
    settings = dict(TINY, epochs=4, patience=0)
    run_fit(FitSettings(**settings), tmp_path / "a", stop_after=2, log=lambda m: None, progress=False)
    first = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert first["epochs_run"] == 2
    resumed = run_fit(FitSettings(**settings), tmp_path / "a", resume=tmp_path / "a", log=lambda m: None)
    straight = run_fit(FitSettings(**settings), tmp_path / "b", log=lambda m: None)
    a, b = weights(tmp_path / "a" / "last.pt"), weights(tmp_path / "b" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in b)
    oa = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["optimizer"]["state"]
    ob = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["optimizer"]["state"]
    assert all(torch.equal(oa[i]["exp_avg_sq"], ob[i]["exp_avg_sq"]) for i in ob)
    strip = lambda hs: [{k: v for k, v in h.items() if k != "time_s"} for h in hs]  # noqa: E731
    assert strip(resumed["history"]) == strip(straight["history"])
    assert resumed["test"] == straight["test"]


def test_resume_with_other_settings_is_refused_naming_them(tmp_path):
    run_fit(FitSettings(**TINY, epochs=1), tmp_path, log=lambda m: None)
    with pytest.raises(CheckpointError, match=r"hidden_dim: saved 8, expected 16"):
        run_fit(FitSettings(**dict(TINY, hidden_dim=16), epochs=2), tmp_path, resume=tmp_path / "last.pt")


def test_early_stopping_stops_after_patience_epochs(tmp_path):
    # a learning rate of 1e-12 leaves validation accuracy flat: epoch 1 is best, 2 and 3 do not improve
    rep = run_fit(FitSettings(**TINY, epochs=10, lr=1e-12, patience=2), tmp_path, log=lambda m: None)
    assert rep["stopped_early"] and rep["epochs_run"] == 3 and rep["best_epoch"] == 1


def test_epoch_order_depends_on_seed_and_epoch_only():
    assert torch.equal(epoch_order(50, 3, 7), epoch_order(50, 3, 7))
    assert not torch.equal(epoch_order(50, 3, 7), epoch_order(50, 3, 8))
    assert sorted(epoch_order(50, 3, 7).tolist()) == list(range(50))


def _forecast_csv(path, n_series=12):
    """Irregularly sampled damped sines, one frequency per series, no labels."""
    rng = np.random.default_rng(0)
    lines = ["id,time,y"]
    for i in range(n_series):
        t = np.cumsum(rng.uniform(0.3, 0.7, size=60))  # irregular gaps, all within Euler's stable step
        y = np.sin((0.4 + 0.05 * i) * t) * np.exp(-0.01 * t)
        lines += [f"s{i},{a:.2f},{b:.6f}" for a, b in zip(t, y)]
    path.write_text("\n".join(lines) + "\n")


def test_forecasting_on_an_unlabelled_csv(tmp_path):
    csv = tmp_path / "sines.csv"
    _forecast_csv(csv)
    args = ["--epochs", "12", "--hidden-dim", "16", "--window", "30", "--batch-size", "4", "--lr", "0.03"]
    proc = dreamode("fit", "--data", str(csv), *args, "--out", str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stderr
    rep = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert rep["task"] == "forecast" and rep["model"]["num_classes"] is None
    hist = rep["history"]
    assert hist[-1]["train_loss"] < 0.8 * hist[0]["train_loss"]  # it learns
    assert "StiffStepWarning" not in proc.stderr
    # on smooth sines the learned forecast beats "the next value equals this one" (measured 0.23 vs 0.35)
    assert rep["test"]["rmse"] < 0.8 * rep["test"]["persistence_rmse"]


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    """A CSV without labels and a checkpoint cut in half."""
    d = tmp_path_factory.mktemp("user")
    (d / "nolabel.csv").write_text("id,time,y\n" + "".join(f"{i},{t},{t}\n" for i in range(12) for t in range(3)))
    run_fit(FitSettings(**TINY, epochs=1), d / "good", log=lambda m: None)
    data = (d / "good" / "last.pt").read_bytes()
    (d / "truncated.pt").write_bytes(data[: len(data) // 2])
    return d


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--data", "missing.csv"], "no such file"),
        (["--data", "jv"], "japanese_vowels"),
        (["--solver", "rk5"], "rk5"),
        (["--hidden-dim", "0"], "--hidden-dim"),
        (["--task", "classify", "--data", "nolabel.csv"], "label"),
        (["--resume", "truncated.pt"], "truncated"),
    ],
)
def test_user_error_is_one_line_and_exit_2(user_files, args, fragment):
    proc = dreamode("fit", *CLI_TINY, "--epochs", "1", *args, "--out", str(user_files / "o"), cwd=user_files)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dreamode fit: error:"), proc.stderr
    assert fragment in lines[0] and "Traceback" not in proc.stderr


TORCHRUN = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
needs_torchrun = pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun not installed")


def _assert_two_processes_match_one(tmp_path, *extra: str, env: dict | None = None) -> dict:
    """`torchrun --nproc_per_node 2 -m dreamode fit` on this machine: the ranks end with identical
    parameters, and the result equals one process with the same global batch to float32 rounding
    (the two gradients are summed in another order: measured 3e-8). Returns the ranks' output."""
    args = ["fit", *CLI_TINY, "--max-series", "64", "--epochs", "3", "--patience", "0", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    two = subprocess.run(
        [TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "dreamode", *args, "--out", str(tmp_path / "two")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    one = dreamode(*args, "--out", str(tmp_path / "one"), env=env)
    assert one.returncode == 0, one.stderr
    rep = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert rep["world_size"] == 2
    assert rep["max_param_diff_across_ranks"] == 0.0  # gathered from both ranks after training
    a, b = weights(tmp_path / "two" / "last.pt"), weights(tmp_path / "one" / "last.pt")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
    single = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert [h["epoch"] for h in rep["history"]] == [1, 2, 3]
    for h2, h1 in zip(rep["history"], single["history"]):
        assert h2["train_loss"] == pytest.approx(h1["train_loss"], rel=1e-5)
    return two.stdout


@needs_torchrun
def test_two_processes_match_one_process(tmp_path):
    _assert_two_processes_match_one(tmp_path)


@pytest.mark.slow
@needs_torchrun
@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler for dreamode.native")
def test_two_processes_build_and_use_the_native_kernels(tmp_path):
    """Both ranks of a torchrun launch enable `dreamode.native` on an empty build cache at once:
    torch's build lock lets one compile while the other waits, and both train with the kernels."""
    cache = tmp_path / "torch_extensions"
    out = _assert_two_processes_match_one(tmp_path, "--native", env={"TORCH_EXTENSIONS_DIR": str(cache)})
    assert out.count("dreamode.native: C++ kernels ready") == 2, out
    assert [p.name for p in cache.iterdir()] in (["dreamode_native_avx2"], ["dreamode_native_sse"])  # one build
