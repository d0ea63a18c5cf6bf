"""`dreamode fit` never reports a number computed from another run's weights, never mixes two runs
in one folder, and stops loudly when training produces nothing finite."""

import json
import os
import subprocess
import sys

import pytest
import torch

from dreamode import StiffStepWarning, classify
from dreamode._rundir import RunLock, check_writable
from dreamode.checkpoint import CheckpointError, save_checkpoint
from dreamode.data import IrregularBatch
from dreamode.fit import FitSettings, build_model, evaluate_split, load_splits, model_spec, run_fit

TINY = dict(hidden_dim=8, rank=2, max_series=40, batch_size=16)
QUIET = dict(log=lambda m: None, progress=False)


def dreamode(*args):
    return subprocess.run([sys.executable, "-m", "dreamode", *args], capture_output=True, text=True, timeout=600)


def one_line_error(proc, *words):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("dreamode fit: error: ") and "Traceback" not in proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_a_new_run_refuses_a_folder_that_holds_a_run(tmp_path):
    first = run_fit(FitSettings(**TINY, epochs=1), tmp_path, **QUIET)
    before = (tmp_path / "best.pt").read_bytes()
    with pytest.raises(FileExistsError, match=r"already holds a run \(last\.pt, best\.pt, metrics\.json.*--resume"):
        run_fit(FitSettings(**TINY, epochs=1, seed=1), tmp_path, **QUIET)
    assert (tmp_path / "best.pt").read_bytes() == before  # refused before anything was written
    second = run_fit(FitSettings(**TINY, epochs=1, seed=1), tmp_path, overwrite=True, **QUIET)
    assert second["run_id"] != first["run_id"]
    assert json.loads((tmp_path / "metrics.json").read_text())["run_id"] == second["run_id"]


def test_resume_into_a_folder_with_another_runs_files_is_refused(tmp_path):
    run_fit(FitSettings(**TINY, epochs=2), tmp_path / "a", stop_after=1, **QUIET)
    run_fit(FitSettings(**TINY, epochs=2), tmp_path / "b", **QUIET)
    with pytest.raises(FileExistsError, match=r"holds last\.pt, best\.pt, metrics\.json of another run"):
        run_fit(FitSettings(**TINY, epochs=2), tmp_path / "b", resume=tmp_path / "a", **QUIET)


def test_resume_into_a_new_folder_scores_the_runs_own_best_weights(tmp_path):
    settings = dict(TINY, epochs=3, patience=0)
    run_fit(FitSettings(**settings), tmp_path / "a", stop_after=2, **QUIET)
    resumed = run_fit(FitSettings(**settings), tmp_path / "c", resume=tmp_path / "a" / "last.pt", **QUIET)
    straight = run_fit(FitSettings(**settings), tmp_path / "d", **QUIET)
    assert resumed["best_epoch"] == straight["best_epoch"]
    assert resumed["test_weights"] == straight["test_weights"] == f"best (epoch {straight['best_epoch']})"
    assert resumed["test"] == straight["test"]


def test_a_missing_best_checkpoint_scores_the_last_weights_and_says_so(tmp_path):
    # a learning rate of 1e-12 leaves validation accuracy flat, so epoch 1 stays the best epoch
    settings = dict(TINY, epochs=2, patience=0, lr=1e-12)
    run_fit(FitSettings(**settings), tmp_path, stop_after=1, **QUIET)
    (tmp_path / "best.pt").unlink()
    lines = []
    report = run_fit(FitSettings(**settings), tmp_path, resume=tmp_path, log=lines.append, progress=False)
    assert report["best_epoch"] == 1 and report["test_weights"] == "last (epoch 2)"
    assert any("missing or belongs to another run" in line for line in lines)
    s = FitSettings(**settings)
    splits = load_splits(s)
    model = build_model(s, splits)
    model.load_state_dict(torch.load(tmp_path / "last.pt", weights_only=True)["model"])
    assert report["test"] == evaluate_split(model, splits.test, splits.task, s.batch_size)


def test_a_second_writer_to_the_same_folder_is_refused(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(BlockingIOError, match=rf"another dreamode fit \(pid {os.getpid()}\) is writing there"):
            run_fit(FitSettings(**TINY, epochs=1), tmp_path, **QUIET)
    assert not (tmp_path / "last.pt").exists()


@pytest.mark.parametrize("where", ["file", "below-a-file", "read-only"])
def test_an_unwritable_out_is_refused_before_training(tmp_path, where):
    target = {"file": tmp_path / "f", "below-a-file": tmp_path / "f" / "run", "read-only": "/sys/dreamode-test"}[where]
    (tmp_path / "f").write_text("x")
    with pytest.raises(OSError, match=r"--out '.*': (is a file|cannot write there)"):
        check_writable(type(tmp_path)(target))


def test_cli_out_that_is_a_file_is_one_line_before_any_epoch(tmp_path):
    (tmp_path / "f").write_text("x")
    one_line_error(dreamode("fit", "--epochs", "1", "--out", str(tmp_path / "f")), "is a file")


def test_training_that_produces_nothing_finite_stops_with_the_cause(tmp_path):
    # at lr 1e3 the first update makes the weights huge: every batch after it is non-finite
    with pytest.raises(classify.TrainingDivergedError, match=r"epoch \d: all \d+ training batches.*--lr \(now 1000\)"):
        run_fit(FitSettings(**TINY, epochs=3, lr=1e3), tmp_path, **QUIET)


def test_cli_training_that_diverges_exits_2_with_the_cause(tmp_path):
    proc = dreamode(
        *("fit", "--hidden-dim", "8", "--rank", "2", "--max-series", "40", "--batch-size", "16"),
        *("--epochs", "3", "--lr", "1e3", "--out", str(tmp_path)),
    )
    one_line_error(proc, "non-finite", "--lr")


def test_train_classifier_raises_when_every_batch_fails():
    torch.manual_seed(0)
    model = classify.SequenceClassifier(3, 2, 8, 2)
    # times in seconds given to a model whose time step is 0.1: each Euler step of 1e4 multiplies h
    # by about 1e4 (|1 - Δt/τ|), so ten of them overflow float32
    times = torch.arange(1, 11, dtype=torch.float64).expand(4, 10) * 1e4
    x = torch.randn(4, 10, 3)
    batch = IrregularBatch(x, times, torch.ones(4, 10, 3), torch.full((4,), 10), torch.tensor([0, 1, 0, 1]))
    with (
        pytest.warns(StiffStepWarning, match="stability limit"),
        pytest.raises(classify.TrainingDivergedError, match=r"epoch 1: every training batch.*rescale the times"),
    ):
        classify.train_classifier(model, [batch], epochs=2)


def test_resuming_a_checkpoint_with_nan_weights_is_refused(tmp_path):
    run_fit(FitSettings(**TINY, epochs=2), tmp_path, stop_after=1, **QUIET)
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    name = next(iter(ckpt["model"]))
    ckpt["model"][name].view(-1)[0] = float("nan")
    torch.save(ckpt, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match=rf"holds NaN or inf in model\.{name}.*diverged run"):
        run_fit(FitSettings(**TINY, epochs=2), tmp_path, resume=tmp_path, **QUIET)


def test_a_failed_save_leaves_the_old_checkpoint_and_no_temporary_file(tmp_path, monkeypatch):
    model = torch.nn.Linear(2, 2)
    path = save_checkpoint(tmp_path / "last.pt", model, config={})
    before = path.read_bytes()

    def full_disk(obj, f, *a, **k):  # what torch.save raises when the disk fills mid-write
        open(f, "wb").write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0: file write failed")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match=r"could not be written \(.*file write failed\); the file is unchanged"):
        save_checkpoint(path, model, config={})
    assert path.read_bytes() == before and not (tmp_path / "last.pt.tmp").exists()


def test_model_spec_and_settings_carry_no_run_identity():
    # the identity lives beside the settings, so that resuming compares settings only
    s = FitSettings(**TINY, epochs=1)
    assert "run_id" not in model_spec(s, load_splits(s))


def _long_csv(path, labels, encoding="utf-8", text_label=False):
    """A long-format CSV of ``len(labels)`` series of 4 observations each."""
    lines = ["id,time,x,label"]
    for i, lab in enumerate(labels):
        lines += [f"{i},{t * 0.5},{(i + t) % 3 - 1.0},{lab}" for t in range(4)]
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


def test_a_training_split_of_one_class_is_refused(tmp_path):
    data = _long_csv(tmp_path / "d.csv", ["a", "b"] * 10)
    with pytest.raises(ValueError, match=r"training split.*same label|one class"):  # one series: one class
        load_splits(FitSettings(data=str(data), task="classify", max_series=1))


def test_a_file_of_one_class_is_refused(tmp_path):
    data = _long_csv(tmp_path / "d.csv", ["a"] * 20)
    with pytest.raises(ValueError, match=r"all 20 series have the same label 'a'.*at least two classes"):
        load_splits(FitSettings(data=str(data), task="classify"))


def test_fit_reads_a_csv_with_a_byte_order_mark(tmp_path):
    data = _long_csv(tmp_path / "d.csv", ["a", "b"] * 10, encoding="utf-8-sig")
    splits = load_splits(FitSettings(data=str(data), task="auto"))
    assert splits.task == "classify" and splits.num_classes == 2


def test_cli_fit_on_a_latin1_csv_is_one_line_naming_file_line_and_fix(tmp_path):
    data = _long_csv(tmp_path / "d.csv", ["a", "é"] * 10, encoding="latin-1")
    one_line_error(dreamode("fit", "--data", str(data), "--out", str(tmp_path / "o")), "d.csv", "not UTF-8", "iconv")
