"""Irregularly sampled time series: per-sample times, NaN for missing values, padding to batches.

- `IrregularSeries` — one series ``(times (L,), values (L, I), label)``.
- `pad_series` / `unpad` — list of series <-> `IrregularBatch` ``(x, times, mask, lengths, labels)``.
- `SeriesDataset` + `collate_series` — for ``torch.utils.data.DataLoader``.
- `drop_observations` — the Neural CDE "drop p% of the points" protocol, seeded, per series.
- `read_long_csv` — users' own data from a long-format CSV (id, time, features[, label]);
  `read_csv_header` — its column names.
- `check_classes` — refuse labelled series that all carry one label (every loader calls it).
- `Standardizer` / `standardize` — per-channel scaling fitted on the training split.
"""

from ._batch import IrregularBatch, pad_series, unpad
from ._csv import LongData, read_csv_header, read_long_csv
from ._dataset import SeriesDataset, collate_series
from ._drop import drop_observations
from ._labels import check_classes
from ._series import IrregularSeries
from ._standardize import Standardizer, standardize

__all__ = [
    "IrregularBatch",
    "IrregularSeries",
    "LongData",
    "SeriesDataset",
    "Standardizer",
    "check_classes",
    "collate_series",
    "drop_observations",
    "pad_series",
    "read_csv_header",
    "read_long_csv",
    "standardize",
    "unpad",
]
