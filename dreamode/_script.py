"""Run a loop function through TorchScript's interpreter, or as Python where that is not possible.

The fast paths' loops (:mod:`._euler_kernel`, :mod:`._rk_kernel`) are written in the subset of
Python that ``torch.jit.script`` compiles. Scripted once per process on first use (tens of
milliseconds), they run with the graph executor's optimisations off: no profiling runs, no shape
specialisation, no code generation, the same operations as eager mode in the same order, without
the Python interpreter between them (docs/performance.md).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

_script: dict[str, Any] = {}
_use_script = True


@contextlib.contextmanager
def interpreted() -> Iterator[None]:
    """Within this context the loops run as ordinary Python (for comparisons and debugging)."""
    global _use_script
    old = _use_script
    _use_script = False
    try:
        yield
    finally:
        _use_script = old


def is_scripted(fn: Callable) -> bool:
    """Whether ``fn`` has been scripted (it has been called, and TorchScript compiled it)."""
    return _script.get(f"{fn.__module__}.{fn.__qualname__}") is not None


def _scripted(fn: Callable) -> Callable | None:
    name = f"{fn.__module__}.{fn.__qualname__}"
    if name not in _script:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit.script is deprecated in favour of compile
                _script[name] = torch.jit.script(fn)
        except Exception:  # noqa: BLE001 - no TorchScript here: the eager function is the fallback
            _script[name] = None
    return _script[name]


def call(fn: Callable, *args: Any) -> Any:
    """``fn(*args)``, through its TorchScript version when there is one."""
    s = _scripted(fn) if _use_script else None
    if s is None:
        return fn(*args)
    with torch.jit.optimized_execution(False):
        return s(*args)
