"""The solver interface, the solution object and the statistics every backend reports."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

State = tuple[Tensor, ...]
TupleField = Callable[[Tensor, State], State]


@dataclass
class Stats:
    """Counters of one solve; ``None`` where the backend does not report a quantity.

    Attributes:
        nfe: vector-field evaluations in the forward solve.
        steps: steps attempted.
        accepted: steps accepted by the error control (all steps, for fixed-step methods).
        rejected: steps rejected by the error control (0 for fixed-step methods).
    """

    nfe: int | None = None
    steps: int | None = None
    accepted: int | None = None
    rejected: int | None = None

    def as_dict(self) -> dict[str, int | None]:
        return {"nfe": self.nfe, "steps": self.steps, "accepted": self.accepted, "rejected": self.rejected}


@dataclass
class Solution:
    """Result of `solvers.solve`.

    Attributes:
        ys: the solution at every time of ``t``; same structure as ``y0`` (a tensor or a tuple of
            tensors), each with a leading ``len(t)`` axis.
        t: the output times, as given.
        stats: `Stats` of the solve.
        method: name of the method used.
    """

    ys: Tensor | tuple[Tensor, ...]
    t: Tensor
    stats: Stats = field(default_factory=Stats)
    method: str = ""


class Solver:
    """Base class of every registered method.

    A subclass sets ``options`` (the option names it accepts) and implements `integrate`
    over a *tuple* state; `solvers.solve` does validation and packing, so ``integrate``
    sees well-formed input only.
    """

    name: ClassVar[str] = ""
    options: ClassVar[frozenset[str]] = frozenset()

    def integrate(
        self,
        f: TupleField,
        y0: State,
        t: Tensor,
        *,
        rtol: float,
        atol: float,
        step_size: float | None,
        options: Mapping[str, Any],
        adjoint: bool,
        adjoint_params: Sequence[Tensor],
    ) -> tuple[State, Stats]:
        """Integrate ``dy/dt = f(t, y)`` from ``y0`` at ``t[0]``; return ``ys`` (leading ``len(t)`` axis) and stats."""
        raise NotImplementedError


def check_field_output(name: str, out: object, y: State) -> None:
    """Raise a clear error when ``f`` returned something that is not ``dy/dt`` for ``y``."""
    if not isinstance(out, tuple) or len(out) != len(y):
        got = f"a tuple of {len(out)}" if isinstance(out, tuple) else type(out).__name__
        raise TypeError(f"{name}: f(t, y) must return the structure of y ({len(y)} tensor(s)), got {got}")
    for i, (o, yi) in enumerate(zip(out, y)):
        if not isinstance(o, Tensor):
            raise TypeError(f"{name}: f(t, y)[{i}] must be a tensor, got {type(o).__name__}")
        if o.shape != yi.shape:
            raise ValueError(
                f"{name}: f(t, y)[{i}] has shape {tuple(o.shape)}, expected {tuple(yi.shape)} (the shape of y)"
            )
        if not o.is_floating_point():
            raise TypeError(f"{name}: f(t, y)[{i}] must be floating point, got {o.dtype}")


def first_nonfinite(ys: State, t: Tensor) -> tuple[int, float] | None:
    """``(index, time)`` of the first output time holding a NaN/inf, or ``None`` (one host sync)."""
    bad = None
    for y in ys:
        rows = ~torch.isfinite(y.reshape(y.shape[0], -1)).all(dim=1)
        bad = rows if bad is None else bad | rows
    if bad is None or not bool(bad.any()):
        return None
    k = int(bad.nonzero()[0, 0])
    return k, float(t[k])
