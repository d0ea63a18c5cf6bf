"""The "drop a fraction p of the observations" protocol of the Neural CDE paper (Kidger et al., 2020)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real
from typing import Any

import torch

from ._checks import bad_argument
from ._series import IrregularSeries, as_series_list


def drop_observations(series: Sequence[Any], p: float, seed: int = 0) -> list[IrregularSeries]:
    """Remove a fraction ``p`` of each series' time points at random, keeping the rest at their
    original times, so every series gets its own irregular time grid.

    For each series in order, with one ``torch.Generator`` seeded once with ``seed``:
    ``n_drop = floor(p * L)`` rows (whole time points, all channels) are drawn uniformly without
    replacement by ``torch.randperm(L)[:n_drop]`` and removed. This is the protocol of the Neural
    CDE code for CharacterTrajectories, which there marks those rows ``NaN`` instead of removing them
    (the same thing once `pad_series` drops fully missing rows). Since ``p < 1`` at least one
    point of every series survives.

    Args:
        series: the series (`IrregularSeries` or ``(times, values[, label])`` tuples).
        p: fraction to drop, ``0 <= p < 1``.
        seed: seed of the generator; the same ``seed``, ``p`` and series give the same result.

    Returns:
        New `IrregularSeries`, in order, each with ``L - floor(p * L)`` points and its label.
    """
    if isinstance(p, bool) or not isinstance(p, Real) or not 0.0 <= float(p) < 1.0:
        raise bad_argument("drop_observations", "p", "a number in [0, 1)", p)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise bad_argument("drop_observations", "seed", "an int", seed, error=TypeError)
    items = as_series_list(series, "drop_observations")
    generator = torch.Generator().manual_seed(seed)
    out = []
    for s in items:
        L = s.times.shape[0]
        # The tolerance keeps floor(0.29 * 100) at 29 despite 0.29 * 100 == 28.999999999999996.
        n_drop = math.floor(float(p) * L + 1e-9)
        keep = torch.ones(L, dtype=torch.bool)
        keep[torch.randperm(L, generator=generator)[:n_drop]] = False
        out.append(IrregularSeries(s.times[keep], s.values[keep], s.label))
    return out
