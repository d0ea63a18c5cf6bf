"""``Trace``: the mechanisms' quantities per observation step, returned on request."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ._field import FieldAux


class Trace(NamedTuple):
    """Per-step quantities of one layer, evaluated at the start of each step ``(t_{i-1}, t_i]``.

    For the Euler rule these are exactly the values the step used. Shapes ``(B, T)`` unless noted.

    Attributes:
        surprise: ``S`` in (0, 1).
        tau: liquid time constant τ (time units).
        prediction: ``x̂``, ``(B, T, I)``.
        error_norm: RMS z-score ``n`` of the prediction error.
        fast_weight_norm: ``‖U‖_F`` after the step.
    """

    surprise: Tensor
    tau: Tensor
    prediction: Tensor
    error_norm: Tensor
    fast_weight_norm: Tensor

    @classmethod
    def stack(cls, auxes: list[FieldAux], u_norms: list[Tensor]) -> Trace:
        return cls(
            surprise=torch.stack([a.surprise for a in auxes], dim=1),
            tau=torch.stack([a.tau for a in auxes], dim=1),
            prediction=torch.stack([a.prediction for a in auxes], dim=1),
            error_norm=torch.stack([a.error_norm for a in auxes], dim=1),
            fast_weight_norm=torch.stack(u_norms, dim=1),
        )
