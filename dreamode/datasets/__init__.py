"""Built-in data sets, offline: JapaneseVowels ships with the package; PLAID and Mauna Loa CO2 load
from the copies that sktime and statsmodels ship (optional extras). Nothing is downloaded.

Every loader returns a list of `dreamode.data.IrregularSeries` ``(times, values, label)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._errors import unknown_name_message
from ..data import IrregularSeries
from ._japanese_vowels import FRAME_SHIFT_MS, load_japanese_vowels
from ._optional import load_co2, load_plaid

_LOADERS: dict[str, Callable[..., list[IrregularSeries]]] = {
    "co2": load_co2,
    "japanese_vowels": load_japanese_vowels,
    "plaid": load_plaid,
}


def available_datasets() -> list[str]:
    """Names accepted by `load_dataset`: ``"japanese_vowels"`` (built in), ``"plaid"`` (needs
    the ``sktime`` extra) and ``"co2"`` (needs the ``statsmodels`` extra)."""
    return sorted(_LOADERS)


def load_dataset(name: str, **kwargs: Any) -> list[IrregularSeries]:
    """Load a data set by name; ``kwargs`` go to its loader (e.g. ``split="test"``).

    Raises:
        ValueError: unknown name (the message lists the valid ones and the nearest match).
    """
    if name not in _LOADERS:
        raise ValueError("load_dataset: " + unknown_name_message("data set", name, _LOADERS))
    return _LOADERS[name](**kwargs)


__all__ = [
    "FRAME_SHIFT_MS",
    "available_datasets",
    "load_co2",
    "load_dataset",
    "load_japanese_vowels",
    "load_plaid",
]
