"""dreamode: the DREAM recurrent cell as a continuous-time vector field, integrated by any ODE solver.

>>> import torch
>>> from dreamode import DREAM
>>> model = DREAM(input_dim=64, hidden_dim=128, rank=8)
>>> output, state = model(torch.randn(32, 50, 64))
"""

from . import baselines, classify, data, datasets, physics
from ._cell import DREAMCell
from ._config import DREAMConfig
from ._field import DREAMField, DrivenField, FieldAux
from ._integrate import SolveStats, StiffStepWarning
from ._model import DREAM, DREAMStack
from ._state import DREAMState
from ._trace import Trace
from .baselines import GRUD, GRUDelta, LSTMForwardFill
from .classify import SequenceClassifier, evaluate, train_classifier

__version__ = "0.1.0"

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
