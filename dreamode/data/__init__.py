"""Irregularly sampled time series: per-sample times, NaN for missing values, padding to batches.

- :class:`IrregularSeries` — one series ``(times (L,), values (L, I), label)``.
- :func:`pad_series` / :func:`unpad` — list of series <-> :class:`IrregularBatch` ``(x, times, mask, lengths, labels)``.
- :class:`SeriesDataset` + :func:`collate_series` — for ``torch.utils.data.DataLoader``.
- :func:`drop_observations` — the Neural CDE "drop p% of the points" protocol, seeded, per series.
- :func:`read_long_csv` — users' own data from a long-format CSV (id, time, features[, label]).
- :class:`Standardizer` / :func:`standardize` — per-channel scaling fitted on the training split.
"""

from ._batch import IrregularBatch, pad_series, unpad
from ._csv import LongData, read_long_csv
from ._dataset import SeriesDataset, collate_series
from ._drop import drop_observations
from ._series import IrregularSeries
from ._standardize import Standardizer, standardize

__all__ = [
    "IrregularBatch",
    "IrregularSeries",
    "LongData",
    "SeriesDataset",
    "Standardizer",
    "collate_series",
    "drop_observations",
    "pad_series",
    "read_long_csv",
    "standardize",
    "unpad",
]
