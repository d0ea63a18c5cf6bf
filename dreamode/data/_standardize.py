"""Per-channel standardisation fitted on the training split only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ._checks import bad_argument
from ._series import IrregularSeries, as_series_list


@dataclass(frozen=True)
class Standardizer:
    """``(values - mean) / std`` per channel; ``NaN`` (missing) stays ``NaN``.

    Attributes:
        mean: ``(I,)`` float64 per-channel mean of the observed training values.
        std: ``(I,)`` float64 per-channel population standard deviation (``ddof=0``); a channel
            that is constant, or never observed, in the training data gets ``std = 1`` (and an
            unobserved one ``mean = 0``), so it passes through shifted but not blown up.
    """

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def fit(cls, series: Sequence[Any]) -> Standardizer:
        """Compute the per-channel statistics over every observed value of ``series`` (ignoring ``NaN``)."""
        items = as_series_list(series, "Standardizer.fit")
        values = torch.cat([s.values.to(torch.float64) for s in items])
        observed = ~torch.isnan(values)
        count = observed.sum(0)
        filled = torch.where(observed, values, torch.zeros((), dtype=torch.float64))
        mean = filled.sum(0) / count.clamp(min=1)
        var = torch.where(observed, (values - mean) ** 2, torch.zeros((), dtype=torch.float64)).sum(0)
        std = (var / count.clamp(min=1)).sqrt()
        std = torch.where(std > 0, std, torch.ones_like(std))
        return cls(mean, std)

    def transform(self, series: Sequence[Any]) -> list[IrregularSeries]:
        """Standardise every series (values keep their dtype; times and labels are unchanged)."""
        items = as_series_list(series, "Standardizer.transform")
        if items[0].values.shape[1] != self.mean.shape[0]:
            raise bad_argument(
                "Standardizer.transform",
                "series",
                f"series with {self.mean.shape[0]} channels (as fitted)",
                items[0].values,
            )
        return [IrregularSeries(s.times, self._apply(s.values), s.label) for s in items]

    def inverse(self, values: torch.Tensor) -> torch.Tensor:
        """Undo the scaling on ``(..., I)`` values, e.g. a model's predictions."""
        return (values.to(torch.float64) * self.std + self.mean).to(values.dtype)

    def _apply(self, values: torch.Tensor) -> torch.Tensor:
        return ((values.to(torch.float64) - self.mean) / self.std).to(values.dtype)


def standardize(train: Sequence[Any], *others: Sequence[Any]) -> tuple[list[IrregularSeries], ...]:
    """Fit a `Standardizer` on ``train`` only and apply it to ``train`` and each of ``others``.

    Returns ``(train_std, *others_std)``, e.g. ``train, test = standardize(train, test)``. Use
    `Standardizer.fit` directly to keep the statistics.
    """
    scaler = Standardizer.fit(train)
    return tuple(scaler.transform(s) for s in (train, *others))
