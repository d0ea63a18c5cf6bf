"""Checks shared by the loaders: split names and optional imports with the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

SPLITS = ("train", "test", "all")


def check_split(func: str, split: str, n_train: int, n_total: int) -> tuple[int, int]:
    """Index range ``[lo, hi)`` of ``split`` in a dataset stored as training series then test series."""
    if split not in SPLITS:
        raise ValueError(f"{func}: expected split to be one of {list(SPLITS)}, got {split!r}")
    return {"train": (0, n_train), "test": (n_train, n_total), "all": (0, n_total)}[split]


def import_optional(module: str, extra: str, func: str, *, alternative: str | None = None) -> ModuleType:
    """Import ``module``, or raise an ImportError that names the pip extra providing it (and ``alternative``)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = module.split(".")[0]
        tail = f"; {alternative}" if alternative else ""
        raise ImportError(
            f"{func} needs the optional package {package!r}, which is not installed; "
            f"install it with: pip install 'dreamode[{extra}]' (or pip install {package}){tail}"
        ) from exc
