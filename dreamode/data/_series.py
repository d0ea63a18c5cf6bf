"""One irregularly sampled series: its own observation times, values with NaN for missing, a label."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from .._checks import check_time_precision, time_precision_hint
from ._checks import bad_argument, describe


class IrregularSeries(NamedTuple):
    """One series, unpacking like ``times, values, label = series``.

    Attributes:
        times: ``(L,)`` float64 tensor, strictly increasing observation times (any unit; the
            loaders document theirs).
        values: ``(L, I)`` floating tensor; ``NaN`` marks a missing channel at that time.
        label: class index ``0..K-1``, or ``None`` for unlabelled data.
    """

    times: torch.Tensor
    values: torch.Tensor
    label: int | None = None


def as_series(item: Any, func: str, name: str = "series", *, dtype: torch.dtype | None = None) -> IrregularSeries:
    """Coerce ``item`` — an `IrregularSeries` or a ``(times, values[, label])`` tuple of
    tensors, arrays or lists — into a checked `IrregularSeries`.

    ``values`` may be ``(L,)`` for one channel; it becomes ``(L, 1)``. Times become float64 and must be
    finite and strictly increasing; times given in float32 (or float16) are refused when that dtype's
    rounding may have changed a gap by over 1 % (e.g. Unix times, spaced 128 s apart in float32).
    Errors name ``func`` and ``name`` (e.g. ``"series[3]"``).
    """
    if isinstance(item, IrregularSeries):
        times, values, label = item
    elif isinstance(item, (tuple, list)) and len(item) in (2, 3):
        times, values, label = item[0], item[1], item[2] if len(item) == 3 else None
    else:
        raise bad_argument(func, name, "an IrregularSeries or a (times, values[, label]) tuple", item, error=TypeError)
    raw_dtype = _dtype_of(times)
    try:
        times_t = torch.as_tensor(
            np.asarray(times, dtype=np.float64) if isinstance(times, list | tuple) else times, dtype=torch.float64
        )
        values_t = (
            torch.as_tensor(np.asarray(values, dtype=np.float64), dtype=torch.get_default_dtype())
            if isinstance(values, list | tuple)
            else torch.as_tensor(values)
        )
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"{func}: could not convert {name} to tensors: {exc}") from exc
    if not values_t.is_floating_point():
        values_t = values_t.to(torch.get_default_dtype())
    if dtype is not None:
        values_t = values_t.to(dtype)
    if values_t.ndim == 1:
        values_t = values_t.unsqueeze(-1)
    if times_t.ndim != 1:
        raise bad_argument(func, f"{name} times", "a 1-D tensor of shape (L,)", times_t)
    if values_t.ndim != 2 or values_t.shape[0] != times_t.shape[0]:
        raise bad_argument(
            func, f"{name} values", f"a tensor of shape ({times_t.shape[0]}, I) matching times", values_t
        )
    if not torch.isfinite(times_t).all():
        raise bad_argument(func, f"{name} times", "finite (no NaN or inf)", times_t)
    steps = times_t.diff()
    if raw_dtype is not None and steps.numel():
        derived = torch.ones(1, steps.shape[0] + 1, dtype=torch.bool)
        derived[0, 0] = False
        check_time_precision(
            func, f"{name} times", raw_dtype, times_t.unsqueeze(0), torch.cat([steps[:1], steps]).unsqueeze(0), derived
        )
    if (steps <= 0).any():
        i = int(torch.nonzero(steps <= 0)[0]) + 1
        hint = (
            "" if raw_dtype is None or steps[i - 1] != 0 else time_precision_hint("times", raw_dtype, times_t[i].item())
        )
        raise ValueError(
            f"{func}: expected {name} times to be strictly increasing, got times[{i}] = {times_t[i].item()!r} "
            f"after times[{i - 1}] = {times_t[i - 1].item()!r}{hint}"
        )
    if label is not None:
        if isinstance(label, torch.Tensor | np.ndarray) and label.ndim == 0:
            label = label.item()
        if isinstance(label, bool) or not isinstance(label, int | np.integer):
            raise TypeError(f"{func}: expected {name} label to be an int or None, got {describe(label)}")
        label = int(label)
    return IrregularSeries(times_t, values_t, label)


def _dtype_of(times: Any) -> torch.dtype | None:
    """The torch dtype ``times`` arrived in when it is a tensor or an array (``None`` for lists)."""
    if isinstance(times, torch.Tensor):
        return times.dtype
    if isinstance(times, np.ndarray):
        return {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16}.get(times.dtype)
    return None


def as_series_list(series: Any, func: str, *, dtype: torch.dtype | None = None) -> list[IrregularSeries]:
    """Coerce a non-empty sequence of series (see `as_series`) with one channel count."""
    if isinstance(series, IrregularSeries) or not isinstance(series, Sequence) or isinstance(series, str):
        raise bad_argument(func, "series", "a sequence of series", series, error=TypeError)
    if len(series) == 0:
        raise bad_argument(func, "series", "a non-empty sequence of series", series)
    out = [as_series(s, func, f"series[{k}]", dtype=dtype) for k, s in enumerate(series)]
    channels = out[0].values.shape[1]
    for k, s in enumerate(out):
        if s.values.shape[1] != channels:
            raise ValueError(
                f"{func}: expected every series to have {channels} channels (as series[0]), "
                f"got {s.values.shape[1]} in series[{k}]"
            )
    return out
