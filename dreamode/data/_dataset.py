"""A ``torch.utils.data.Dataset`` of irregular series and the ``collate_fn`` that pads them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from ._batch import IrregularBatch, pad_series
from ._series import IrregularSeries, as_series_list


class SeriesDataset(Dataset[IrregularSeries]):
    """A list of irregular series as a map-style dataset; pair it with `collate_series`.

    Args:
        series: the series, each an `IrregularSeries` or a ``(times, values[, label])`` tuple;
            they are checked and converted once, here.

    Example::

        loader = DataLoader(SeriesDataset(train), batch_size=32, shuffle=True, collate_fn=collate_series)
        for batch in loader:
            output, state = model(batch.x, times=batch.times, mask=batch.mask, lengths=batch.lengths)
    """

    def __init__(self, series: Sequence[Any]) -> None:
        self.series = as_series_list(series, "SeriesDataset")

    def __len__(self) -> int:
        return len(self.series)

    def __getitem__(self, index: int) -> IrregularSeries:
        return self.series[index]

    @property
    def num_channels(self) -> int:
        """Input channels ``I``."""
        return int(self.series[0].values.shape[1])

    @property
    def labels(self) -> torch.Tensor | None:
        """``(N,)`` int64 labels, or ``None`` if the series are unlabelled."""
        if any(s.label is None for s in self.series):
            return None
        return torch.tensor([s.label for s in self.series], dtype=torch.int64)

    @property
    def num_classes(self) -> int | None:
        """``max(label) + 1``, or ``None`` if the series are unlabelled."""
        labels = self.labels
        return None if labels is None else int(labels.max()) + 1


def collate_series(items: Sequence[Any]) -> IrregularBatch:
    """``collate_fn`` for `torch.utils.data.DataLoader`: pads the items with
    `pad_series` (fully missing rows dropped, default dtype) into an `IrregularBatch`."""
    return pad_series(items)
