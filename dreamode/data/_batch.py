"""A padded batch of irregular series (plain tensors), built from a list of series and taken apart again."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from ._checks import bad_argument
from ._series import IrregularSeries, as_series_list


class IrregularBatch(NamedTuple):
    """A batch of ``B`` series padded to a common length ``T``: plain tensors, ready for the model.

    Attributes:
        x: ``(B, T, I)`` values; missing channels and padding hold ``0.0``.
        times: ``(B, T)`` float64 observation times, strictly increasing in every row. Past a
            series' end (``t >= lengths[b]``) the times continue ``last + 1, last + 2, ...`` so the
            row stays a valid time grid; use ``lengths`` to know where the real data stop.
        mask: ``(B, T, I)`` 1.0 where a channel was observed, 0.0 where missing or padding
            (same dtype as ``x``).
        lengths: ``(B,)`` int64 number of real time points per series (at least 1).
        labels: ``(B,)`` int64 class indices, or ``None`` when the series carry no labels.
    """

    x: torch.Tensor
    times: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor
    labels: torch.Tensor | None = None

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> IrregularBatch:
        """Move every tensor to ``device``; ``dtype`` (floating) applies to ``x`` and ``mask`` only,
        ``times`` stays float64 and ``lengths``/``labels`` stay int64."""
        return IrregularBatch(
            self.x.to(device=device, dtype=dtype),
            self.times.to(device=device),
            self.mask.to(device=device, dtype=dtype),
            self.lengths.to(device=device),
            None if self.labels is None else self.labels.to(device=device),
        )


def pad_series(
    series: Sequence[Any], *, drop_missing_rows: bool = True, dtype: torch.dtype | None = None
) -> IrregularBatch:
    """Pad a list of variable-length series into one `IrregularBatch`.

    Args:
        series: ``B`` series, each an `IrregularSeries` or a ``(times, values[, label])``
            tuple with ``times`` ``(L,)`` strictly increasing and ``values`` ``(L, I)`` (``NaN`` =
            missing). Lengths may differ; the channel count ``I`` may not.
        drop_missing_rows: drop time points where every channel is ``NaN`` (default). Pass ``False``
            to keep them as rows with an all-zero mask.
        dtype: floating dtype of ``x`` and ``mask`` (default: ``torch.get_default_dtype()``).

    Returns:
        An `IrregularBatch` with ``T`` the longest (kept) length. ``labels`` is set when every
        series has a label and ``None`` when none has.

    Raises:
        ValueError: a series is empty (after dropping fully missing rows), times are not strictly
            increasing, channel counts differ, or only some series carry labels.
    """
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if not dtype.is_floating_point:
        raise bad_argument("pad_series", "dtype", "a floating torch.dtype", dtype, error=TypeError)
    items = as_series_list(series, "pad_series", dtype=dtype)
    if drop_missing_rows:
        items = [_drop_missing_rows(s) for s in items]
    for k, s in enumerate(items):
        if s.times.shape[0] == 0:
            why = " after dropping time points where every channel is NaN" if drop_missing_rows else ""
            raise ValueError(f"pad_series: expected series[{k}] to have at least one time point, got none{why}")
    labelled = [s.label is not None for s in items]
    if any(labelled) and not all(labelled):
        k = labelled.index(not labelled[0])
        raise ValueError(
            f"pad_series: expected all series or none to carry a label, got series[0] label {items[0].label!r} "
            f"and series[{k}] label {items[k].label!r}"
        )
    lengths = torch.tensor([s.times.shape[0] for s in items], dtype=torch.int64)
    B, T, I = len(items), int(lengths.max()), items[0].values.shape[1]
    x = torch.zeros(B, T, I, dtype=dtype)
    mask = torch.zeros(B, T, I, dtype=dtype)
    times = torch.empty(B, T, dtype=torch.float64)
    for b, s in enumerate(items):
        L = s.times.shape[0]
        observed = ~torch.isnan(s.values)
        x[b, :L] = torch.where(observed, s.values, torch.zeros((), dtype=dtype))
        mask[b, :L] = observed.to(dtype)
        times[b, :L] = s.times
        # Padding keeps the row strictly increasing, so any consumer that checks times accepts it.
        times[b, L:] = s.times[-1] + torch.arange(1, T - L + 1, dtype=torch.float64)
    labels = torch.tensor([s.label for s in items], dtype=torch.int64) if labelled[0] else None
    return IrregularBatch(x, times, mask, lengths, labels)


def unpad(batch: IrregularBatch) -> list[IrregularSeries]:
    """Split a batch back into its series: ``times[:L]``, ``values[:L]`` with ``NaN`` where
    ``mask == 0``, and the label. ``unpad(pad_series(s))`` returns ``s`` (less any fully missing
    rows that ``pad_series`` dropped)."""
    if not isinstance(batch, IrregularBatch):
        raise bad_argument("unpad", "batch", "an IrregularBatch", batch, error=TypeError)
    x, times, mask, lengths, labels = batch
    nan = torch.full((), float("nan"), dtype=x.dtype, device=x.device)
    out = []
    for b in range(x.shape[0]):
        L = int(lengths[b])
        values = torch.where(mask[b, :L] > 0, x[b, :L], nan)
        label = None if labels is None else int(labels[b])
        out.append(IrregularSeries(times[b, :L].clone(), values, label))
    return out


def _drop_missing_rows(s: IrregularSeries) -> IrregularSeries:
    keep = ~torch.isnan(s.values).all(dim=1)
    if bool(keep.all()):
        return s
    return IrregularSeries(s.times[keep], s.values[keep], s.label)
