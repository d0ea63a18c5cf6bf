"""Train a DREAM model on a built-in data set or a long-format CSV: ``dreamode fit``.

Classification (labelled series: cross-entropy on the final state, accuracy) or next-value
forecasting (unlabelled series: squared error of the next observation, RMSE), with a validation
pass every epoch, early stopping on it, a checkpoint every epoch (``last.pt``) and at the best
validation score (``best.pt``), ``metrics.json`` and ``curves.png``.

Resuming is exact: batch order depends only on ``(seed, epoch)``, and ``last.pt`` holds the model,
the optimizer, the learning-rate schedule and the early-stopping counters, so a run stopped after
epoch k and resumed gives bit-identical weights to an uninterrupted one. Run the same command
again with ``--resume OUT/last.pt``; a checkpoint saved with other settings is refused, naming them.

Under ``torchrun`` (``WORLD_SIZE > 1``) each process takes every ``world_size``-th series of each
global batch and `~torch.nn.parallel.DistributedDataParallel` (gloo on CPU) averages gradients;
the loss is normalised by the *global* batch, so the update equals single-process training with
the same ``--batch-size``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from . import _distributed as distributed
from ._progress import progress as progress_bar
from ._rundir import RunLock, check_writable, checkpoint_run_id, foreign_files, new_run_id
from .checkpoint import CheckpointError, config_mismatch, load_checkpoint, read_checkpoint, save_checkpoint
from .classify import SequenceClassifier, TrainingDivergedError, count_parameters
from .data import (
    IrregularBatch,
    IrregularSeries,
    check_classes,
    drop_observations,
    pad_series,
    read_csv_header,
    read_long_csv,
    standardize,
)
from .data._time import median_gap
from .datasets import available_datasets, load_dataset
from .forecast import Forecaster, forecast_errors, persistence_errors

TASKS = ("auto", "classify", "forecast")
PREDEFINED_SPLITS = ("japanese_vowels", "plaid")  # built-in sets with their own train/test split
TEST_FRACTION = 0.15
MIN_SERIES_TO_SPLIT = 10  # fewer series: split each series in time instead (forecasting only)


@dataclass
class FitSettings:
    """Everything a run depends on; saved in every checkpoint and in ``metrics.json``."""

    data: str = "japanese_vowels"
    task: str = "auto"
    label_col: str = "label"
    solver: str = "euler"
    max_step: float | None = None  # fixed-step solvers: sub-step so no step exceeds this (time units)
    hidden_dim: int = 32
    rank: int = 4
    num_layers: int = 1
    epochs: int = 30
    lr: float = 1e-2
    batch_size: int = 32
    patience: int = 10  # epochs without validation improvement before stopping; 0 = never stop early
    val_fraction: float = 0.2
    drop: float = 0.0
    time_scale: float | None = None  # None: median observation gap -> 0.1 (DREAM's time_step)
    window: int = 64  # forecasting: series are cut into windows of this many observations
    max_series: int | None = None  # cap on training series (quick runs)
    grad_clip: float | None = 1.0
    seed: int = 0
    device: str = "cpu"

    def check(self) -> None:
        """Raise ``ValueError`` naming the first bad option."""
        if self.task not in TASKS:
            raise ValueError(f"--task: expected one of {', '.join(TASKS)}, got {self.task!r}")
        positive = {"hidden-dim": self.hidden_dim, "rank": self.rank, "num-layers": self.num_layers}
        positive |= {"batch-size": self.batch_size, "window": self.window}
        for name, v in positive.items():
            if v < 1:
                raise ValueError(f"--{name}: expected a positive integer, got {v}")
        if self.epochs < 0 or self.patience < 0:
            raise ValueError(f"--epochs and --patience: expected >= 0, got {self.epochs} and {self.patience}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"--lr: expected a positive number, got {self.lr}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"--val-fraction: expected a fraction in (0, 1), got {self.val_fraction}")
        if not 0 <= self.drop < 1:
            raise ValueError(f"--drop: expected a fraction in [0, 1), got {self.drop}")
        if self.time_scale is not None and not (self.time_scale > 0 and math.isfinite(self.time_scale)):
            raise ValueError(f"--time-scale: expected a positive number, got {self.time_scale}")
        if self.max_series is not None and self.max_series < 1:
            raise ValueError(f"--max-series: expected a positive integer, got {self.max_series}")
        if self.max_step is not None and not (self.max_step > 0 and math.isfinite(self.max_step)):
            raise ValueError(f"--max-step: expected a positive number, got {self.max_step}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"--grad-clip: expected a positive number, got {self.grad_clip}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device: {self.device!r} requested but CUDA is not available")


@dataclass
class Splits:
    train: list[IrregularSeries]
    val: list[IrregularSeries]
    test: list[IrregularSeries]
    task: str
    input_dim: int
    num_classes: int | None
    time_scale: float


# -- data -----------------------------------------------------------------------------------


_ONE_CLASS_FIX = "use more series (--max-series), or data whose series carry at least two labels"


def _csv_has_column(path: Path, column: str) -> bool:
    return column in read_csv_header(path)


def _load_series(s: FitSettings) -> tuple[list[IrregularSeries], list[IrregularSeries] | None]:
    """``(series, None)``, or ``(train, test)`` for a data set with its own split."""
    path = Path(s.data)
    if path.suffix.lower() == ".csv" or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"--data: no such file {s.data!r}")
        want_labels = s.task == "classify" or (s.task == "auto" and _csv_has_column(path, s.label_col))
        if s.task == "classify" and not _csv_has_column(path, s.label_col):
            raise ValueError(f"--data: {s.data} has no {s.label_col!r} column; --task classify needs labels")
        return read_long_csv(path, label_col=s.label_col if want_labels else None).series, None
    if s.data not in available_datasets():
        raise ValueError(f"--data: expected a CSV file or one of {', '.join(available_datasets())}, got {s.data!r}")
    if s.data in PREDEFINED_SPLITS:
        return load_dataset(s.data, split="train"), load_dataset(s.data, split="test")
    return load_dataset(s.data), None


def _split_in_time(series: list[IrregularSeries], val: float) -> tuple[list, list, list]:
    parts: tuple[list, list, list] = ([], [], [])
    for ser in series:
        n = len(ser.times)
        a, b = int(n * (1 - val - TEST_FRACTION)), int(n * (1 - TEST_FRACTION))
        for part, (lo, hi) in zip(parts, ((0, a), (a, b), (b, n))):
            if hi - lo >= 2:
                part.append(IrregularSeries(ser.times[lo:hi], ser.values[lo:hi], ser.label))
    return parts


def _windows(series: list[IrregularSeries], window: int) -> list[IrregularSeries]:
    """Cut each series into consecutive windows of ``window`` points (the last may be shorter;
    a window of one point has nothing to forecast and is dropped)."""
    out = []
    for ser in series:
        for lo in range(0, len(ser.times), window):
            if len(ser.times[lo : lo + window]) >= 2:
                out.append(IrregularSeries(ser.times[lo : lo + window], ser.values[lo : lo + window], ser.label))
    return out


def load_splits(s: FitSettings) -> Splits:
    """Train, validation and test series: standardised on train, times scaled, windowed for forecasting.

    A data set with its own test split keeps it and draws validation series from its training
    split (seeded); otherwise the series are split ``1 - val - 0.15 / val / 0.15`` (seeded), or,
    with fewer than 10 series, each series is split in time (forecasting only).
    """
    series, test = _load_series(s)
    labelled = all(x.label is not None for x in series + (test or []))
    task = s.task if s.task != "auto" else ("classify" if labelled else "forecast")
    if task == "classify" and not labelled:
        raise ValueError(f"--task classify: the data {s.data!r} has series without a label")
    rng = np.random.default_rng(s.seed)
    if test is not None:
        order = rng.permutation(len(series))
        n_val = max(1, int(round(s.val_fraction * len(series))))
        train, val = [series[i] for i in order[n_val:]], [series[i] for i in order[:n_val]]
    elif len(series) >= MIN_SERIES_TO_SPLIT:
        order = rng.permutation(len(series))
        n_test = max(1, int(round(TEST_FRACTION * len(series))))
        n_val = max(1, int(round(s.val_fraction * len(series))))
        test = [series[i] for i in order[:n_test]]
        val = [series[i] for i in order[n_test : n_test + n_val]]
        train = [series[i] for i in order[n_test + n_val :]]
    elif task == "forecast":
        train, val, test = _split_in_time(series, s.val_fraction)
    else:
        raise ValueError(f"--data: {len(series)} series are too few to split for classification (need 10)")
    if not (train and val and test):
        raise ValueError(f"--data: too little data to form train/validation/test sets from {s.data!r}")
    if s.max_series is not None:
        train = train[: s.max_series]
    if task == "classify":
        check_classes(train, "dreamode fit", f"the training split of {s.data!r}", fix=_ONE_CLASS_FIX)
    if s.drop:
        train, val, test = (drop_observations(p, s.drop, seed=s.seed + k) for k, p in enumerate((train, val, test)))
    train, val, test = standardize(train, val, test)
    scale = s.time_scale
    if scale is None:
        gap = median_gap(train)
        scale = 0.1 / gap if gap else 1.0
    train, val, test = ([x._replace(times=x.times * scale) for x in p] for p in (train, val, test))
    if task == "forecast":
        train, val, test = (_windows(p, s.window) for p in (train, val, test))
    input_dim = int(train[0].values.shape[1])
    num_classes = max(int(x.label) for x in train + val + test) + 1 if task == "classify" else None
    return Splits(train, val, test, task, input_dim, num_classes, float(scale))


# -- model and loss ---------------------------------------------------------------------------


def build_model(s: FitSettings, splits: Splits) -> nn.Module:
    # A non-finite batch is skipped and counted (all processes see the same NaN gradients after
    # the all-reduce, so they skip together) rather than raised by the model's own check.
    kw: dict[str, Any] = {"solver": s.solver, "num_layers": s.num_layers, "max_step": s.max_step, "check_finite": False}
    if splits.task == "classify":
        return SequenceClassifier(splits.input_dim, int(splits.num_classes or 1), s.hidden_dim, s.rank, **kw)
    return Forecaster(splits.input_dim, s.hidden_dim, s.rank, **kw)


def model_spec(s: FitSettings, splits: Splits) -> dict[str, Any]:
    """What a checkpoint must agree on to be loaded into this run's model."""
    return {
        "task": splits.task,
        "input_dim": splits.input_dim,
        "num_classes": splits.num_classes,
        "hidden_dim": s.hidden_dim,
        "rank": min(s.rank, splits.input_dim),
        "num_layers": s.num_layers,
        "solver": s.solver,
        "max_step": s.max_step,
    }


def _loss_terms(model: nn.Module, batch: IrregularBatch, task: str) -> tuple[Tensor, Tensor, Tensor]:
    """``(summed loss, normaliser, summed score)``: per-sample cross-entropy, count and correct
    predictions; or squared error, observed-target count and squared error."""
    out = model(batch)
    if task == "classify":
        labels = batch.labels.to(out.device)
        loss = nn.functional.cross_entropy(out, labels, reduction="sum")
        correct = ((out.argmax(1) == labels) & torch.isfinite(out).all(1)).sum().to(out.dtype)
        return loss, torch.tensor(float(len(labels)), dtype=out.dtype, device=out.device), correct
    sse, count = forecast_errors(out, batch.to(device=out.device, dtype=out.dtype))
    return sse, count.detach(), sse.detach()


@torch.no_grad()
def evaluate_split(model: nn.Module, series: list[IrregularSeries], task: str, batch_size: int) -> dict[str, float]:
    """``{"accuracy"}`` or ``{"rmse", "persistence_rmse"}`` (standardised units) over ``series``."""
    was = model.training
    model.eval()
    total = score = p_sse = p_count = 0.0
    try:
        for lo in range(0, len(series), batch_size):
            batch = pad_series(series[lo : lo + batch_size])
            _, norm, sc = _loss_terms(model, batch, task)
            total, score = total + float(norm), score + float(sc)
            if task == "forecast":
                a, b = persistence_errors(batch)
                p_sse, p_count = p_sse + float(a), p_count + float(b)
    finally:
        model.train(was)
    if task == "classify":
        return {"accuracy": score / max(total, 1.0)}
    return {"rmse": math.sqrt(score / max(total, 1.0)), "persistence_rmse": math.sqrt(p_sse / max(p_count, 1.0))}


def _score(metrics: dict[str, float], task: str) -> float:
    """Higher is better."""
    return metrics["accuracy"] if task == "classify" else -metrics["rmse"]


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The shuffled order of the training series in ``epoch``: a function of ``(seed, epoch)`` only."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


# -- the run ----------------------------------------------------------------------------------


def run_fit(
    settings: FitSettings,
    out_dir: str | os.PathLike[str],
    *,
    resume: str | os.PathLike[str] | None = None,
    stop_after: int | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> dict[str, Any]:
    """Train, validate every epoch, stop early, checkpoint, and write ``metrics.json`` and ``curves.png``.

    Args:
        settings: the run (see `FitSettings`).
        out_dir: folder for ``last.pt``, ``best.pt``, ``metrics.json`` and ``curves.png``. It must be
            writable (checked before training), used by no other running ``fit``, and hold no
            other run's files: a new run refuses a folder with run files in it unless
            ``overwrite``; a resumed run refuses files of any run but its own.
        resume: ``last.pt`` of an earlier run with the same settings (or its folder). Into another
            ``out_dir``, that run's ``best.pt`` is copied along.
        stop_after: stop after this many epochs *of this call* (the run can be resumed), e.g.
            to fit a job into a cluster's time limit.
        overwrite: delete an earlier run's files in ``out_dir`` instead of refusing them.
        log: receives one line per epoch (only on rank 0 under ``torchrun``).
        progress: a progress bar on a terminal.

    Returns:
        The ``metrics.json`` content.

    Raises:
        TrainingDivergedError: an epoch in which no batch gave a finite loss and gradient.
    """
    settings.check()
    out = Path(out_dir)
    check_writable(out)
    world = distributed.setup(settings.device)
    rank0 = world.rank == 0
    say = log if rank0 else (lambda _m: None)
    lock = RunLock(out)
    try:
        run_id = world.on_rank0(lambda: _claim(out, lock, resume, overwrite))
        splits = load_splits(settings)
        if len(splits.train) < world.size:
            raise ValueError(f"--data: {len(splits.train)} training series cannot be shared by {world.size} processes")
        torch.manual_seed(settings.seed)
        model = build_model(settings, splits).to(world.device)
        spec = model_spec(settings, splits)
        optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(settings.epochs, 1))
        run: dict[str, Any] = {"epoch": 0, "history": [], "best_score": -math.inf, "best_epoch": None, "bad_epochs": 0}
        if resume is not None:
            run = _resume(Path(resume), settings, spec, model, optimizer, scheduler)
            say(f"resumed from {resume} after epoch {run['epoch']}")
        run["run_id"] = run_id
        say(
            f"data {settings.data}: {splits.task}, {len(splits.train)} train / {len(splits.val)} validation / "
            f"{len(splits.test)} test series, {splits.input_dim} channels, time scale {splits.time_scale:.4g}; "
            f"{count_parameters(model)} parameters, solver {settings.solver}"
            + (f", {world.size} processes" if world.size > 1 else "")
        )
        trained = world.wrap(model)
        stopped_early = _train(
            settings, splits, model, trained, optimizer, scheduler, run, world, out, spec, say, progress, stop_after
        )
        report = _finish(settings, splits, model, run, world, out, spec, stopped_early, say)
    finally:
        lock.release()
        world.teardown()
    return report


def _resume_path(resume: str | os.PathLike[str]) -> Path:
    path = Path(resume)
    return path / "last.pt" if path.is_dir() else path


def _claim(out: Path, lock: RunLock, resume: str | os.PathLike[str] | None, overwrite: bool) -> str:
    """Lock ``out`` for this run and return the run's identity; refuse another run's files."""
    lock.acquire()
    try:
        if resume is None:
            found = foreign_files(out, None)
            if found and not overwrite:
                raise FileExistsError(
                    f"--out {str(out)!r} already holds a run ({', '.join(found)}): continue it with "
                    f"--resume {out / 'last.pt'}, choose another --out, or pass --overwrite to replace it"
                )
            for name in found:
                (out / name).unlink()
            return new_run_id()
        source = _resume_path(resume)
        run_id = checkpoint_run_id(source) if source.is_file() else None
        if run_id is None:
            return new_run_id()  # unreadable or foreign: _resume names the problem
        found = foreign_files(out, run_id)
        if found:
            raise FileExistsError(
                f"--out {str(out)!r} holds {', '.join(found)} of another run than {str(source)!r}: "
                "resume into the run's own folder or an empty one"
            )
        best = source.parent / "best.pt"
        if not (out / "best.pt").is_file() and best.is_file() and checkpoint_run_id(best) == run_id:
            shutil.copy2(best, out / "best.pt")
        return run_id
    except BaseException:
        lock.release()
        raise


def _resume(path: Path, s: FitSettings, spec: dict, model: nn.Module, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    path = _resume_path(path)
    saved = read_checkpoint(path).get("extra", {}).get("settings", {})
    diff = config_mismatch(saved, asdict(s))
    if diff:
        raise CheckpointError(
            f"--resume {path}: saved with other settings (rerun the same command): " + "; ".join(diff)
        )
    ckpt = load_checkpoint(path, model, optimizer=optimizer, scheduler=scheduler, config=spec)
    run = dict(ckpt.extra["run"])
    run["history"] = [dict(h) for h in run["history"]]
    return run


def _train(
    s: FitSettings,
    splits: Splits,
    model: nn.Module,
    trained: nn.Module,
    optimizer: Any,
    scheduler: Any,
    run: dict[str, Any],
    world: distributed.World,
    out: Path,
    spec: dict[str, Any],
    say: Callable[[str], None],
    progress: bool,
    stop_after: int | None,
) -> bool:
    """The epoch loop; returns whether early stopping ended it."""
    params = [p for p in model.parameters() if p.requires_grad]
    n = len(splits.train)
    epochs_this_call = 0
    while run["epoch"] < s.epochs:
        if s.patience and run["bad_epochs"] >= s.patience:
            return True
        if stop_after is not None and epochs_this_call >= stop_after:
            return False
        epoch, t0 = run["epoch"], time.perf_counter()
        order = epoch_order(n, s.seed, epoch)
        starts = [lo for lo in range(0, n, s.batch_size) if len(order[lo : lo + s.batch_size]) >= world.size]
        loss_sum = norm_sum = score_sum = 0.0
        skipped = 0
        bar = progress_bar(
            total=len(starts),
            desc=f"epoch {epoch + 1}/{s.epochs}",
            unit="batch",
            quiet=not (progress and world.rank == 0),
        )
        for lo in starts:
            idx = order[lo : lo + s.batch_size]
            local = idx[world.rank :: world.size].tolist()
            batch = pad_series([splits.train[i] for i in local])
            loss, norm, score = _loss_terms(trained, batch, splits.task)
            global_norm = world.all_sum(norm)
            optimizer.zero_grad(set_to_none=True)
            # DDP averages gradients over processes; scaling by world.size makes it the global mean.
            (loss * world.size / global_norm.clamp(min=1)).backward()
            total_loss = world.all_sum(loss.detach())  # every rank takes the same decision
            if bool(torch.isfinite(total_loss)) and all(
                p.grad is None or bool(torch.isfinite(p.grad).all()) for p in params
            ):
                if s.grad_clip is not None:
                    nn.utils.clip_grad_norm_(params, s.grad_clip)
                optimizer.step()
            else:
                skipped += 1
            loss_sum += float(total_loss)
            score_sum += float(world.all_sum(score))
            norm_sum += float(global_norm)
            bar.update()
        bar.close()
        if starts and skipped == len(starts):
            raise TrainingDivergedError(
                f"epoch {epoch + 1}: all {skipped} training batches gave a non-finite loss or gradient, so no "
                f"weight was updated; lower --lr (now {s.lr:g}), check the data for NaN/inf or extreme values, "
                f"or check --time-scale (now {splits.time_scale:.4g}: gaps should become about 0.1)"
            )
        scheduler.step()
        val = evaluate_split(model, splits.val, splits.task, s.batch_size)
        score = _score(val, splits.task)
        improved = score > run["best_score"]
        if improved:
            run["best_score"], run["best_epoch"], run["bad_epochs"] = score, epoch + 1, 0
        else:
            run["bad_epochs"] += 1
        train_metric = (
            score_sum / max(norm_sum, 1) if splits.task == "classify" else math.sqrt(score_sum / max(norm_sum, 1))
        )
        entry = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / max(norm_sum, 1),
            ("train_accuracy" if splits.task == "classify" else "train_rmse"): train_metric,
            **{f"val_{k}": v for k, v in val.items()},
            "lr": optimizer.param_groups[0]["lr"],
            "skipped_batches": skipped,
            "time_s": time.perf_counter() - t0,
        }
        run["history"].append(entry)
        run["epoch"] = epoch + 1
        epochs_this_call += 1
        if world.rank == 0:
            extra = {"settings": asdict(s), "run": run}
            if improved:
                save_checkpoint(out / "best.pt", model, config=spec, extra=extra)
            save_checkpoint(out / "last.pt", model, optimizer=optimizer, scheduler=scheduler, config=spec, extra=extra)
        key = "val_accuracy" if splits.task == "classify" else "val_rmse"
        say(
            f"epoch {epoch + 1}/{s.epochs} loss {entry['train_loss']:.4f} {key.replace('_', ' ')} {entry[key]:.4f}"
            + (" *" if improved else "")
            + (f" [{skipped} non-finite batches skipped]" if skipped else "")
            + f" ({entry['time_s']:.1f} s)"
        )
    return bool(s.patience and run["bad_epochs"] >= s.patience)


def _finish(
    s: FitSettings,
    splits: Splits,
    model: nn.Module,
    run: dict[str, Any],
    world: distributed.World,
    out: Path,
    spec: dict[str, Any],
    stopped_early: bool,
    say: Callable[[str], None],
) -> dict[str, Any]:
    spread = world.max_param_spread(model)
    world.barrier()  # rank 0 has written best.pt
    weights = f"last (epoch {run['epoch']})"
    if run["best_epoch"] is not None:
        best = out / "best.pt"
        ckpt = read_checkpoint(best) if best.is_file() else None
        saved = ckpt.get("extra", {}).get("run", {}) if ckpt else {}
        if saved.get("run_id") == run["run_id"] and saved.get("epoch") == run["best_epoch"]:
            load_checkpoint(best, model, config=spec)
            weights = f"best (epoch {run['best_epoch']})"
        else:
            say(
                f"warning: {best} of this run's best epoch {run['best_epoch']} is missing or belongs to another "
                f"run; the test score below is of the {weights} weights"
            )
    test = evaluate_split(model, splits.test, splits.task, s.batch_size)
    report = {
        "run_id": run["run_id"],
        "task": splits.task,
        "settings": asdict(s),
        "model": spec,
        "parameters": count_parameters(model),
        "data": {
            "train": len(splits.train),
            "val": len(splits.val),
            "test": len(splits.test),
            "time_scale": splits.time_scale,
        },
        "history": run["history"],
        "epochs_run": run["epoch"],
        "best_epoch": run["best_epoch"],
        "stopped_early": stopped_early,
        "test": test,
        "test_weights": weights,
        "world_size": world.size,
        "max_param_diff_across_ranks": spread,
        "wall_time_s": sum(h["time_s"] for h in run["history"]),
    }
    if world.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
        if run["history"]:
            _plot(run["history"], splits.task, out / "curves.png")
        name = "accuracy" if splits.task == "classify" else "rmse"
        written = ", ".join(n for n in ("metrics.json", "curves.png", "best.pt", "last.pt") if (out / n).is_file())
        say(f"test {name} {test[name]:.4f} ({weights} weights); wrote {written} in {out}")
    return report


def _plot(history: list[dict[str, Any]], task: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    a.plot(epochs, [h["train_loss"] for h in history], marker="o", ms=3)
    a.set(xlabel="epoch", ylabel="training loss", yscale="log", title="loss")
    if task == "classify":
        b.plot(epochs, [h["train_accuracy"] for h in history], marker="o", ms=3, label="train")
        b.plot(epochs, [h["val_accuracy"] for h in history], marker="o", ms=3, label="validation")
        b.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    else:
        b.plot(epochs, [h["train_rmse"] for h in history], marker="o", ms=3, label="train")
        b.plot(epochs, [h["val_rmse"] for h in history], marker="o", ms=3, label="validation")
        b.axhline(history[-1]["val_persistence_rmse"], color="gray", ls="--", label="persistence (validation)")
        b.set(xlabel="epoch", ylabel="RMSE (standardised)", title="next-value RMSE")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


__all__ = [
    "FitSettings",
    "Splits",
    "build_model",
    "epoch_order",
    "evaluate_split",
    "load_splits",
    "model_spec",
    "run_fit",
]
