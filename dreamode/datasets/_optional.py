"""Loaders for data sets that other packages ship: PLAID (sktime) and Mauna Loa CO2 (statsmodels)."""

from __future__ import annotations

import numpy as np
import torch

from ..data import IrregularSeries, check_classes
from ._splits import SPLITS, import_optional


def load_plaid(split: str = "train") -> list[IrregularSeries]:
    """Load PLAID (Plug Load Appliance Identification) from sktime's bundled copy; needs the
    ``sktime`` extra. Nothing is downloaded.

    1074 univariate series of appliance current (sampled at 30 kHz in the original recordings),
    ``L`` = 100..1344, 11 appliance classes.

    Args:
        split: ``"train"`` (537 series), ``"test"`` (537) or ``"all"`` (1074: train, then test).

    Returns:
        A list of `~dreamode.data.IrregularSeries`: ``times`` ``(L,)`` float64 sample index
        ``0..L-1``; ``values`` ``(L, 1)`` float32; ``label`` the appliance class ``0..10`` (air
        conditioner 0, ..., washing machine 10, as in the archive).

    Raises:
        ImportError: sktime is not installed (``pip install 'dreamode[sktime]'``).
        ValueError: an unknown split, or (a damaged copy) labels of only one class.
    """
    if split not in SPLITS:
        raise ValueError(f"load_plaid: expected split to be one of {list(SPLITS)}, got {split!r}")
    sk_datasets = import_optional("sktime.datasets", "sktime", "load_plaid")
    X, y = sk_datasets.load_plaid(split=None if split == "all" else split.upper(), return_X_y=True)
    out = []
    for k in range(len(y)):
        values = np.asarray(X.iloc[k, 0], dtype=np.float32)
        times = torch.arange(values.shape[0], dtype=torch.float64)
        out.append(IrregularSeries(times, torch.from_numpy(values).unsqueeze(-1), int(y[k])))
    check_classes(out, "load_plaid", f"split {split!r}")
    return out


def load_co2() -> list[IrregularSeries]:
    """Load the weekly Mauna Loa atmospheric CO2 record from statsmodels; needs the ``statsmodels``
    extra. Nothing is downloaded.

    One series of 2284 weeks, 1958-03-29 to 2001-12-29, in ppm; 59 weeks have no measurement and
    are kept as ``NaN`` (``pad_series`` drops them by default, leaving genuine gaps in time).

    Returns:
        A one-element list ``[IrregularSeries(times, values, None)]``: ``times`` ``(2284,)`` float64
        weeks since 1958-03-29 (``0, 1, ..., 2283``); ``values`` ``(2284, 1)`` float32 CO2 in ppm.

    Raises:
        ImportError: statsmodels is not installed (``pip install 'dreamode[statsmodels]'``).
    """
    co2 = import_optional("statsmodels.datasets.co2", "statsmodels", "load_co2")
    frame = co2.load().data
    if not hasattr(frame, "index"):  # statsmodels < 0.13 returned a record array from load()
        frame = co2.load_pandas().data
    dates = np.asarray(frame.index.values)
    weeks = (dates - dates[0]) / np.timedelta64(7, "D")
    values = np.asarray(frame["co2"], dtype=np.float32)
    return [IrregularSeries(torch.from_numpy(weeks.astype(np.float64)), torch.from_numpy(values).unsqueeze(-1), None)]
