"""Physics-informed modelling: known dynamics plus a learned DREAM part, and physics residuals.

Two ways to put a known ODE ``dx/dt = g(t, x; θ)`` into a model (``docs/physics.md`` says when
to prefer each):

- `HybridField`: integrate ``dx/dt = g(t, x; θ) + c(h)`` with a DREAM correction ``c(h)``, by
  any method of the `solvers` registry; θ learnable and positive (`PositiveParameters`).
- `collocation_loss`: penalise ``‖dx/dt − g(t, x)‖²`` of a differentiable trajectory model at
  collocation times (PINN-style), no ODE solve.

Also the one-compartment oral-absorption model (`OneCompartmentOral`), the theophylline data of
the pharmacokinetics example (`load_theophylline`, R's ``Theoph`` through the optional ``pk``
extra) and a study generated from the model with known parameters (`synthetic_theophylline`),
and `solve_at_times` for a batch whose samples are observed at their own irregular times.
"""

from ._constraints import PositiveParameters
from ._hybrid import HybridField, ParametricPhysics
from ._pk import OneCompartmentOral, oral_concentration
from ._residual import collocation_loss, collocation_times, physics_residual, time_derivative
from ._theophylline import SyntheticSubject, TheophyllineSubject, load_theophylline, synthetic_theophylline
from ._times import solve_at_times

__all__ = [
    "HybridField",
    "OneCompartmentOral",
    "ParametricPhysics",
    "PositiveParameters",
    "SyntheticSubject",
    "TheophyllineSubject",
    "collocation_loss",
    "collocation_times",
    "load_theophylline",
    "oral_concentration",
    "physics_residual",
    "solve_at_times",
    "synthetic_theophylline",
    "time_derivative",
]
