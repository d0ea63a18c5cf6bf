"""Time-axis statistics of a collection of series."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._series import IrregularSeries


def median_gap(series: Sequence[IrregularSeries]) -> float | None:
    """Median time between consecutive observations over all series (``None`` when no series
    has two points). Dividing DREAM's ``time_step`` (0.1) by it gives the time scale that makes a
    typical gap one nominal step."""
    diffs = [np.diff(np.asarray(s.times, dtype=np.float64)) for s in series if len(s.times) > 1]
    return float(np.median(np.concatenate(diffs))) if diffs else None
