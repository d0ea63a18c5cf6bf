"""A registry of ODE solvers over torch tensors and tuples of tensors.

    >>> import torch, solvers
    >>> sol = solvers.solve(lambda t, y: -y, torch.ones(3), torch.linspace(0, 1, 5), method="rk4")
    >>> sol.ys.shape
    torch.Size([5, 3])

Generic over any vector field ``f(t, y)``; it knows nothing about DREAM.
"""

from . import _fixed, _scipy, _torchdiffeq  # noqa: F401  (importing registers the methods)
from ._base import Solution, Solver, Stats
from ._errors import SolverError, StiffStepWarning
from ._fixed import FixedStepSolver, rk_step
from ._registry import SolverEntry, available, get, register
from ._scipy import ScipySolver
from ._solve import solve
from ._tableau import ButcherTableau
from ._torchdiffeq import TorchdiffeqSolver

__all__ = [
    "ButcherTableau",
    "FixedStepSolver",
    "ScipySolver",
    "Solution",
    "Solver",
    "SolverEntry",
    "SolverError",
    "Stats",
    "StiffStepWarning",
    "TorchdiffeqSolver",
    "available",
    "get",
    "register",
    "rk_step",
    "solve",
]
