"""Baselines for irregular series that users know, with the interface of
`dreamode.classify.SequenceClassifier`: ``forward(batch: IrregularBatch) -> logits (B, K)``.

- `GRUDelta` (``"gru-dt"``): ``nn.GRU`` on ``[x·m, m, Δt]`` — the time since the previous
  observation as an extra input channel.
- `GRUD` (``"gru-d"``): the decay GRU of Che et al. (2018), *Recurrent Neural Networks for
  Multivariate Time Series with Missing Values*, Scientific Reports 8:6085: missing inputs decay
  from the last observation toward the empirical mean, and the hidden state decays between
  observations, both with learned rates of the per-channel time since the last observation.
- `LSTMForwardFill` (``"lstm-ffill"``): ``nn.LSTM`` on forward-filled values; it sees
  neither times nor masks (the "ignore the irregularity" baseline).

Every model reads its final hidden state at each sample's last real observation, so a sample's
logits do not depend on the padding, nor on the other samples of the batch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ._errors import unknown_name_message
from .classify import prepare_batch
from .data import IrregularBatch


def time_deltas(times: Tensor, lengths: Tensor) -> Tensor:
    """``(B, T)`` time since the previous observation: ``0`` at the first one and past ``lengths``."""
    dt = torch.cat([torch.zeros_like(times[:, :1]), times[:, 1:] - times[:, :-1]], dim=1)
    valid = torch.arange(times.shape[1], device=times.device).unsqueeze(0) < lengths.unsqueeze(1)
    return torch.where(valid, dt, torch.zeros_like(dt))


def last_valid(output: Tensor, lengths: Tensor) -> Tensor:
    """``output[b, lengths[b] - 1]`` for every ``b``: ``(B, T, H) -> (B, H)``."""
    index = (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, output.shape[-1])
    return output.gather(1, index).squeeze(1)


def forward_fill(x: Tensor, mask: Tensor) -> Tensor:
    """Replace each missing value by the last observed value of its channel (``0`` before the first)."""
    T = x.shape[1]
    steps = torch.arange(T, device=x.device).view(1, T, 1).expand_as(x)
    last = torch.where(mask > 0, steps, torch.zeros_like(steps)).cummax(dim=1).values
    observed = torch.where(mask > 0, x, torch.zeros_like(x))
    filled = observed.gather(1, last)
    seen = (mask > 0).to(torch.int64).cummax(dim=1).values > 0
    return torch.where(seen, filled, torch.zeros_like(filled))


class GRUDelta(nn.Module):
    """GRU-Δt: ``nn.GRU`` over ``[x·m, m, Δt]`` (``2I + 1`` inputs), a linear head on the last state.

    Args:
        input_dim: channels ``I``.
        num_classes: classes ``K``.
        hidden_dim: GRU hidden size.
        num_layers: GRU layers.
    """

    def __init__(self, input_dim: int, num_classes: int, hidden_dim: int = 64, *, num_layers: int = 1) -> None:
        super().__init__()
        self.rnn = nn.GRU(2 * input_dim + 1, hidden_dim, num_layers=num_layers, batch_first=True)
        self.head = nn.Linear(hidden_dim, num_classes)

    def forward(self, batch: IrregularBatch) -> Tensor:
        x, times, mask, lengths, _ = prepare_batch(self, batch)
        dt = time_deltas(times, lengths).to(x.dtype).unsqueeze(-1)
        out, _ = self.rnn(torch.cat([x * mask, mask, dt], dim=-1))
        return self.head(last_valid(out, lengths))


class LSTMForwardFill(nn.Module):
    """``nn.LSTM`` on forward-filled values (no times, no mask), a linear head on the last state."""

    def __init__(self, input_dim: int, num_classes: int, hidden_dim: int = 64, *, num_layers: int = 1) -> None:
        super().__init__()
        self.rnn = nn.LSTM(input_dim, hidden_dim, num_layers=num_layers, batch_first=True)
        self.head = nn.Linear(hidden_dim, num_classes)

    def forward(self, batch: IrregularBatch) -> Tensor:
        x, _, mask, lengths, _ = prepare_batch(self, batch)
        out, _ = self.rnn(forward_fill(x, mask))
        return self.head(last_valid(out, lengths))


class GRUD(nn.Module):
    """GRU-D (Che et al., 2018), one layer, a linear head on the last state.

    With ``δ_t`` the per-channel time since that channel was last observed (``δ_1 = 0``;
    ``δ_t = s_t − s_{t−1} + (1 − m_{t−1}) δ_{t−1}``), ``x'`` the last observed value and ``x̄``
    the empirical mean, each step computes

    - input decay ``γ_x = exp(−relu(w_x ⊙ δ + b_x))`` (one rate per channel) and
      ``x̂ = m ⊙ x + (1 − m) ⊙ (γ_x ⊙ x' + (1 − γ_x) ⊙ x̄)``;
    - hidden decay ``γ_h = exp(−relu(W_h δ + b_h))`` and ``h ← γ_h ⊙ h``;
    - a GRU update with inputs ``[x̂, m]`` (the mask enters every gate, as in the paper).

    The GRU update is ``nn.GRUCell``, whose reset gate multiplies ``U h + b`` rather than ``h``
    (PyTorch's variant of the paper's candidate state); everything else follows the paper.

    Args:
        input_dim: channels ``I``.
        num_classes: classes ``K``.
        hidden_dim: hidden size.
        x_mean: ``(I,)`` empirical mean of each channel over the training data. Default zeros,
            which is the mean of inputs standardised on the training split
            (`dreamode.data.standardize`).
    """

    def __init__(self, input_dim: int, num_classes: int, hidden_dim: int = 64, *, x_mean: Tensor | None = None) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        mean = torch.zeros(input_dim) if x_mean is None else torch.as_tensor(x_mean, dtype=torch.float32)
        if mean.shape != (input_dim,):
            raise ValueError(f"GRUD: expected x_mean of shape ({input_dim},), got {tuple(mean.shape)}")
        self.register_buffer("x_mean", mean.clone())
        self.w_x = nn.Parameter(torch.zeros(input_dim))  # diagonal input decay
        self.b_x = nn.Parameter(torch.zeros(input_dim))
        self.decay_h = nn.Linear(input_dim, hidden_dim)
        self.cell = nn.GRUCell(2 * input_dim, hidden_dim)
        self.head = nn.Linear(hidden_dim, num_classes)
        with torch.no_grad():
            self.w_x.uniform_(0.0, 1.0)

    def forward(self, batch: IrregularBatch) -> Tensor:
        x, times, mask, lengths, _ = prepare_batch(self, batch)
        B, T, _ = x.shape
        gap = time_deltas(times, lengths).to(x.dtype)  # (B, T)
        mean = self.x_mean.to(x.dtype).expand(B, -1)
        h = x.new_zeros(B, self.hidden_dim)
        x_last = mean
        delta = torch.zeros_like(mean)
        m_prev = torch.ones_like(mean)
        for t in range(T):
            m = mask[:, t]
            delta = gap[:, t : t + 1] + (1 - m_prev) * delta if t > 0 else torch.zeros_like(mean)
            gamma_x = torch.exp(-torch.relu(self.w_x * delta + self.b_x))
            x_hat = m * x[:, t] + (1 - m) * (gamma_x * x_last + (1 - gamma_x) * mean)
            gamma_h = torch.exp(-torch.relu(self.decay_h(delta)))
            h_new = self.cell(torch.cat([x_hat, m], dim=-1), gamma_h * h)
            active = (t < lengths).unsqueeze(-1)
            h = torch.where(active, h_new, h)
            x_last = torch.where(m > 0, x[:, t], x_last)
            m_prev = m
        return self.head(h)


BASELINES: dict[str, type[nn.Module]] = {"gru-dt": GRUDelta, "gru-d": GRUD, "lstm-ffill": LSTMForwardFill}


def make_baseline(name: str, input_dim: int, num_classes: int, hidden_dim: int = 64, **kwargs: Any) -> nn.Module:
    """Build a baseline by name: ``"gru-dt"``, ``"gru-d"`` or ``"lstm-ffill"``."""
    if name not in BASELINES:
        raise ValueError("make_baseline: " + unknown_name_message("baseline", name, BASELINES))
    return BASELINES[name](input_dim, num_classes, hidden_dim, **kwargs)


__all__ = [
    "BASELINES",
    "GRUD",
    "GRUDelta",
    "LSTMForwardFill",
    "forward_fill",
    "last_valid",
    "make_baseline",
    "time_deltas",
]
