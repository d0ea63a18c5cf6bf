"""The solver registry: a plain dict filled by the ``@register`` decorator next to each class."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ._errors import unknown_name_message

_REGISTRY: dict[str, SolverEntry] = {}


@dataclass(frozen=True)
class SolverEntry:
    """What the registry knows about one method.

    Attributes:
        name: registry name, e.g. ``"rk4"`` or ``"scipy-Radau"``.
        order: order of accuracy of the propagated solution.
        adaptive: step size chosen by an error estimate (``True``) or fixed by the caller.
        differentiable: gradients flow through the solve by direct backpropagation.
        supports_adjoint: ``adjoint=True`` is accepted (continuous adjoint backward pass).
        backend: ``"solvers"`` (this package), ``"torchdiffeq"`` or ``"scipy"``.
        solver: the class implementing the method (a `solvers.Solver` subclass).
        description: first line of the class docstring.
    """

    name: str
    order: int
    adaptive: bool
    differentiable: bool
    supports_adjoint: bool
    backend: str
    solver: type
    description: str


def register(
    name: str,
    *,
    order: int,
    adaptive: bool = False,
    differentiable: bool = True,
    supports_adjoint: bool = False,
    backend: str = "solvers",
) -> Callable[[type], type]:
    """Class decorator adding a solver to the registry under ``name``.

    Example:
        >>> @register("my-euler", order=1)            # doctest: +SKIP
        ... class MyEuler(FixedStepSolver):
        ...     tableau = ButcherTableau(c=[0], a=[[]], b=[1])
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"register: name must be a non-empty str, got {name!r}")
    if not isinstance(order, int) or order < 1:
        raise ValueError(f"register: order must be a positive int, got {order!r}")
    if supports_adjoint and not differentiable:
        raise ValueError(f"register: {name!r} cannot support the adjoint without being differentiable")

    def decorator(cls: type) -> type:
        if name in _REGISTRY and _REGISTRY[name].solver is not cls:
            raise ValueError(
                f"register: a solver named {name!r} is already registered ({_REGISTRY[name].solver.__name__})"
            )
        doc = (cls.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = SolverEntry(
            name=name,
            order=order,
            adaptive=adaptive,
            differentiable=differentiable,
            supports_adjoint=supports_adjoint,
            backend=backend,
            solver=cls,
            description=doc[0] if doc else "",
        )
        cls.name = name
        return cls

    return decorator


def available() -> list[str]:
    """Names of all registered methods, fixed-step first, then by backend and name."""
    backends = {"solvers": 0, "torchdiffeq": 1, "scipy": 2}
    return [e.name for e in sorted(_REGISTRY.values(), key=lambda e: (backends.get(e.backend, 3), e.order, e.name))]


def get(name: str) -> SolverEntry:
    """The registry entry for ``name``; unknown names raise ``ValueError`` with the nearest match."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(unknown_name_message("method", name, _REGISTRY)) from None
