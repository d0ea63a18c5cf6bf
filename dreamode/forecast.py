"""Next-value forecasting on irregular series: a DREAM encoder and a head that, from the hidden
state at one observation and the time to the next, predicts the next observation's values.

>>> model = Forecaster(input_dim=1, hidden_dim=32)
>>> pred = model(batch)                       # (B, T-1, I): predictions of x[:, 1:]
>>> sse, count = forecast_errors(pred, batch)  # over observed targets only
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ._model import DREAM
from .baselines import forward_fill
from .classify import prepare_batch
from .data import IrregularBatch


class Forecaster(nn.Module):
    """A `~dreamode.DREAM` encoder with a linear head on ``[h(t_i), t_{i+1} - t_i]`` that
    predicts the *change* from the last observed values.

    The prediction of observation ``i + 1`` is ``last_i + head([h(t_i), t_{i+1} - t_i])``, where
    ``last_i`` holds each channel's last observed value up to ``t_i`` (0 before the first). The
    head starts at zero, so the untrained model is the persistence forecast; predicting changes
    lets it follow a series past the range of its training values (a trend). Nothing after
    ``t_i`` reaches the prediction of ``x_{i+1}`` (the encoder is causal).

    Args:
        input_dim: channels ``I``.
        hidden_dim, rank: DREAM sizes (``rank`` is capped at ``input_dim``).
        **dream_kwargs: anything `~dreamode.DREAM` accepts (``solver``, ``num_layers``, ...).

    Input: an `~dreamode.data.IrregularBatch`. Output: ``(B, T-1, I)`` predictions of ``x[:, 1:]``.
    """

    def __init__(self, input_dim: int, hidden_dim: int = 64, rank: int = 8, **dream_kwargs: Any) -> None:
        super().__init__()
        self.encoder = DREAM(input_dim, hidden_dim, min(rank, input_dim), **dream_kwargs)
        self.head = nn.Linear(hidden_dim + 1, input_dim)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, batch: IrregularBatch) -> Tensor:
        batch = prepare_batch(self, batch)
        out, _ = self.encoder(batch.x, times=batch.times, mask=batch.mask, lengths=batch.lengths)
        gap = (batch.times[:, 1:] - batch.times[:, :-1]).to(out.dtype).unsqueeze(-1)
        last = forward_fill(batch.x, batch.mask)[:, :-1]
        return last + self.head(torch.cat([out[:, :-1], gap], dim=-1))


def forecast_errors(pred: Tensor, batch: IrregularBatch) -> tuple[Tensor, Tensor]:
    """``(sum of squared errors, number of observed targets)`` of ``pred`` ``(B, T-1, I)``
    against ``batch.x[:, 1:]``, counting only observed channels (``mask``) before each end."""
    target = batch.x[:, 1:].to(pred)
    weight = batch.mask[:, 1:].to(pred)
    return (weight * (pred - target) ** 2).sum(), weight.sum()


def persistence_errors(batch: IrregularBatch) -> tuple[Tensor, Tensor]:
    """The same for the persistence forecast ``x_{i+1} = x_i``, on targets whose channel is
    observed at both ``i`` and ``i + 1`` (a reference any forecaster should beat)."""
    weight = batch.mask[:, 1:] * batch.mask[:, :-1]
    return (weight * (batch.x[:, 1:] - batch.x[:, :-1]) ** 2).sum(), weight.sum()


__all__ = ["Forecaster", "forecast_errors", "persistence_errors"]
