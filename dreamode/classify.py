"""Sequence classification on irregular series: a DREAM encoder with a linear head, and a small,
deterministic training loop shared by the examples (and a future ``dreamode fit``/``compare``).

>>> from torch.utils.data import DataLoader
>>> from dreamode.classify import SequenceClassifier, train_classifier, evaluate
>>> from dreamode.data import SeriesDataset, collate_series
>>> loader = DataLoader(SeriesDataset(train), batch_size=32, shuffle=True, collate_fn=collate_series)
>>> model = SequenceClassifier(input_dim=12, num_classes=9, hidden_dim=64, solver="rk4")
>>> history = train_classifier(model, loader, epochs=30, lr=1e-2, seed=0)
>>> accuracy = evaluate(model, test_loader)

Every model here (and in `dreamode.baselines`) has the same interface:
``forward(batch: IrregularBatch) -> logits (B, K)``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

import solvers

from ._model import DREAM
from .data import IrregularBatch


def _param_device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(module.parameters())
    return p.device, p.dtype


def prepare_batch(module: nn.Module, batch: IrregularBatch) -> IrregularBatch:
    """``batch`` on the module's device, with ``x`` and ``mask`` in its floating dtype."""
    if not isinstance(batch, IrregularBatch):
        raise TypeError(f"{type(module).__name__}: expected an IrregularBatch, got {type(batch).__name__}")
    device, dtype = _param_device_dtype(module)
    return batch.to(device=device, dtype=dtype)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class SequenceClassifier(nn.Module):
    """A `~dreamode.DREAM` encoder and a linear head on its final hidden state.

    The head reads ``state.h`` of the last layer at each sample's last real observation (the
    model freezes the state past ``lengths``), so padding never reaches the logits.

    Args:
        input_dim: channels ``I`` of the series.
        num_classes: classes ``K``.
        hidden_dim: DREAM hidden size.
        rank: fast-weight rank (``<= input_dim``).
        use_times: pass ``batch.times`` to the encoder (default). ``False`` feeds the observations
            as if they were ``time_step`` apart (the encoder then ignores the time stamps).
        use_mask: pass ``batch.mask`` to the encoder (default), so missing channels are imputed by
            the model's own prediction and carry no error.
        **dream_kwargs: anything `~dreamode.DREAM` accepts: ``solver``, ``max_step``,
            ``rtol``, ``atol``, ``interpolation``, ``num_layers``, DREAMConfig fields, ...

    Input: an `~dreamode.data.IrregularBatch` ``(x, times, mask, lengths, labels)``.
    Output: logits ``(B, K)``.
    """

    def __init__(
        self,
        input_dim: int,
        num_classes: int,
        hidden_dim: int = 64,
        rank: int = 8,
        *,
        use_times: bool = True,
        use_mask: bool = True,
        **dream_kwargs: Any,
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"SequenceClassifier: num_classes must be a positive int, got {num_classes!r}")
        self.encoder = DREAM(input_dim, hidden_dim, min(rank, input_dim), **dream_kwargs)
        self.head = nn.Linear(hidden_dim, num_classes)
        self.use_times = use_times
        self.use_mask = use_mask

    def forward(self, batch: IrregularBatch) -> Tensor:
        batch = prepare_batch(self, batch)
        _, state = self.encoder(
            batch.x,
            times=batch.times if self.use_times else None,
            mask=batch.mask if self.use_mask else None,
            lengths=batch.lengths,
        )
        if isinstance(state, list):
            state = state[-1]
        return self.head(state.h)


def _labels(batch: IrregularBatch, where: str) -> Tensor:
    if batch.labels is None:
        raise ValueError(f"{where}: the batch has no labels (series without a label cannot train a classifier)")
    return batch.labels


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable[IrregularBatch]) -> tuple[Tensor, Tensor]:
    """``(logits, labels)`` over a whole loader, in its order, with the model in eval mode."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    try:
        for batch in loader:
            logits.append(model(batch).float().cpu())
            labels.append(_labels(batch, "predict").cpu())
    finally:
        model.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def accuracy_from_logits(logits: Tensor, labels: Tensor) -> float:
    """Fraction of rows whose argmax is the label; a row with a non-finite logit counts as wrong."""
    finite = torch.isfinite(logits).all(dim=1)
    correct = (logits.argmax(dim=1) == labels) & finite
    return float(correct.float().mean()) if labels.numel() else float("nan")


def evaluate(model: nn.Module, loader: Iterable[IrregularBatch]) -> float:
    """Classification accuracy of ``model`` on ``loader`` (non-finite logits count as wrong)."""
    return accuracy_from_logits(*predict(model, loader))


class TrainingDivergedError(RuntimeError):
    """An epoch in which no batch gave a finite loss and gradient: nothing was learned, and going on
    would only report NaN losses (too large a learning rate, NaN/inf in the data, or unscaled times)."""


def train_classifier(
    model: nn.Module,
    train_loader: Iterable[IrregularBatch],
    val_loader: Iterable[IrregularBatch] | None = None,
    *,
    epochs: int = 30,
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    grad_clip: float | None = 1.0,
    cosine: bool = True,
    seed: int | None = None,
    keep_best: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train with Adam and cross-entropy; returns a history dict.

    Args:
        model: any module mapping an `~dreamode.data.IrregularBatch` to logits ``(B, K)``.
        train_loader: labelled batches, e.g. a ``DataLoader`` with `dreamode.data.collate_series`.
        val_loader: optional labelled batches evaluated after every epoch.
        epochs, lr, weight_decay: the usual (Adam; ``weight_decay`` as in ``torch.optim.Adam``).
        grad_clip: clip the global gradient norm to this value (``None``: no clipping).
        cosine: anneal the learning rate to 0 along a cosine over the epochs.
        seed: when given, ``torch.manual_seed(seed)`` right before training, which fixes the
            shuffling of a default ``DataLoader`` and any dropout. Seed the model's initialisation
            yourself before building it. With a seed the run is deterministic on a given machine.
        keep_best: restore, at the end, the parameters of the epoch with the best validation
            accuracy (needs ``val_loader``). Off by default: selecting on the test set would be cheating.
        log: called with one line per epoch (e.g. ``print``).

    Returns:
        ``{"loss": [...], "train_acc": [...], "val_acc": [...], "epoch_time": [...], "wall_time": s,
        "nonfinite_batches": n, "best_epoch": i or None}``. ``loss`` and ``train_acc`` are the means
        over the epoch's batches (in training mode); a batch whose forward solve fails
        (``solvers.SolverError``, e.g. DREAM's check for NaN/inf) or whose loss or gradient is not
        finite is skipped (no update) and counted in ``nonfinite_batches``.

    Raises:
        TrainingDivergedError: every batch of an epoch was skipped.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"train_classifier: epochs must be a non-negative int, got {epochs!r}")
    if keep_best and val_loader is None:
        raise ValueError("train_classifier: keep_best=True needs a val_loader")
    if seed is not None:
        torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1)) if cosine else None
    loss_fn = nn.CrossEntropyLoss()
    history: dict[str, Any] = {
        "loss": [],
        "train_acc": [],
        "val_acc": [],
        "epoch_time": [],
        "wall_time": 0.0,
        "nonfinite_batches": 0,
        "best_epoch": None,
    }
    best_acc, best_state = -math.inf, None
    start = time.perf_counter()
    for epoch in range(epochs):
        t_epoch = time.perf_counter()
        model.train()
        total_loss, total_correct, total_seen, finite_seen = 0.0, 0, 0, 0
        for batch in train_loader:
            labels = _labels(batch, "train_classifier")
            try:
                logits = model(batch)
            except solvers.SolverError:  # a solve that blew up (DREAM's finite check) or failed
                history["nonfinite_batches"] += 1
                total_seen += labels.shape[0]
                continue
            labels = labels.to(logits.device)
            loss = loss_fn(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            ok = bool(torch.isfinite(loss))
            if ok:
                loss.backward()
                ok = all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in params)
            if ok:
                if grad_clip is not None:
                    nn.utils.clip_grad_norm_(params, grad_clip)
                optimizer.step()
                total_loss += float(loss.detach()) * labels.shape[0]
                finite_seen += labels.shape[0]
            else:
                history["nonfinite_batches"] += 1
            with torch.no_grad():
                finite = torch.isfinite(logits).all(dim=1)
                total_correct += int(((logits.argmax(dim=1) == labels) & finite).sum())
            total_seen += labels.shape[0]
        if total_seen and not finite_seen:
            raise TrainingDivergedError(
                f"train_classifier: epoch {epoch + 1}: every training batch gave a non-finite output, loss or "
                f"gradient, so no weight was updated; lower lr (now {lr:g}), check the inputs for NaN/inf or "
                "extreme values, or rescale the times so that gaps are about the model's time_step"
            )
        if scheduler is not None and finite_seen:  # (no step before the optimizer's first one)
            scheduler.step()
        history["loss"].append(total_loss / finite_seen if finite_seen else float("nan"))
        history["train_acc"].append(total_correct / max(total_seen, 1))
        line = f"epoch {epoch + 1}/{epochs} loss {history['loss'][-1]:.4f} train acc {history['train_acc'][-1]:.3f}"
        if val_loader is not None:
            acc = evaluate(model, val_loader)
            history["val_acc"].append(acc)
            line += f" val acc {acc:.3f}"
            if keep_best and acc > best_acc:
                best_acc, best_state = acc, copy.deepcopy(model.state_dict())
                history["best_epoch"] = epoch
        history["epoch_time"].append(time.perf_counter() - t_epoch)
        if log is not None:
            log(line + f" ({history['epoch_time'][-1]:.1f} s)")
    if keep_best and best_state is not None:
        model.load_state_dict(best_state)
    history["wall_time"] = time.perf_counter() - start
    return history


__all__ = [
    "SequenceClassifier",
    "TrainingDivergedError",
    "accuracy_from_logits",
    "count_parameters",
    "evaluate",
    "predict",
    "prepare_batch",
    "train_classifier",
]
