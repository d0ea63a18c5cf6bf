"""dreamode: the DREAM recurrent cell as a continuous-time vector field, integrated by any ODE solver.

>>> import torch
>>> from dreamode import DREAM
>>> model = DREAM(input_dim=64, hidden_dim=128, rank=8)
>>> output, state = model(torch.randn(32, 50, 64))

``import dreamode`` loads the model only; the submodules ``baselines``, ``classify``, ``data``,
``datasets`` and ``physics`` (and the names taken from them) load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._cell import DREAMCell
from ._config import DREAMConfig
from ._field import DREAMField, DrivenField, FieldAux
from ._integrate import SolveStats, StiffStepWarning
from ._model import DREAM, DREAMStack
from ._state import DREAMState
from ._trace import Trace

if TYPE_CHECKING:  # for type checkers and IDEs; at run time these load on first use (__getattr__)
    from . import baselines, classify, data, datasets, physics
    from .baselines import GRUD, GRUDelta, LSTMForwardFill
    from .classify import SequenceClassifier, evaluate, train_classifier

__version__ = "0.1.0"

# Submodules, and names defined in a submodule, that load on first access (PEP 562).
_LAZY_MODULES = ("baselines", "classify", "data", "datasets", "physics")
_LAZY_NAMES = {
    "GRUD": "baselines",
    "GRUDelta": "baselines",
    "LSTMForwardFill": "baselines",
    "SequenceClassifier": "classify",
    "evaluate": "classify",
    "train_classifier": "classify",
}

__all__ = [
    "DREAM",
    "DREAMCell",
    "DREAMConfig",
    "DREAMField",
    "DREAMStack",
    "DREAMState",
    "DrivenField",
    "GRUD",
    "GRUDelta",
    "LSTMForwardFill",
    "SequenceClassifier",
    "FieldAux",
    "SolveStats",
    "StiffStepWarning",
    "Trace",
    "__version__",
    "baselines",
    "classify",
    "data",
    "datasets",
    "physics",
    "evaluate",
    "train_classifier",
]


def __getattr__(name: str) -> Any:
    """Import a lazily exposed submodule or name on first access and keep it in the module."""
    if name in _LAZY_MODULES:
        value: Any = importlib.import_module(f".{name}", __name__)
    elif name in _LAZY_NAMES:
        value = getattr(importlib.import_module(f".{_LAZY_NAMES[name]}", __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
