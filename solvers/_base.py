"""The solver interface, the solution object and the statistics every backend reports."""

from __future__ import annotations

import math
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


def _first_bad(parts: State) -> tuple[int, tuple[int, ...], float] | None:
    """``(component, index, value)`` of the first NaN/inf entry of ``parts``, or ``None``."""
    for i, p in enumerate(parts):
        bad = ~torch.isfinite(p.detach())
        if bool(bad.any()):
            idx = tuple(int(v) for v in bad.nonzero()[0].tolist())
            return i, idx, float(p.detach()[idx]) if idx else float(p.detach())
    return None


def _label(name: str, parts: State, comp: int, idx: tuple[int, ...]) -> str:
    """``"f(t, y)[1] ... index (0, 3)"`` pieces: the component (when a tuple) and the entry."""
    label = name if len(parts) == 1 else f"{name}[{comp}]"
    return f"{label}, first at index {idx}," if idx else f"{label},"


def largest_abs(parts: State) -> float:
    """Largest ``|value|`` over a tuple of tensors (one host sync); 0 for empty tensors."""
    sizes = [p.detach().abs().max().double() for p in parts if p.numel()]
    return float(torch.stack(sizes).max()) if sizes else 0.0


def nonfinite_field_message(name: str, t: float, out: State, y: State, advice: str = "") -> str | None:
    """Why ``f(t, y) -> out`` is not finite, naming the time and the first bad entry; ``None`` if it is.

    A finite ``y`` means ``f`` itself produced the NaN/inf (an inf: usually overflow of a solution
    that blows up); otherwise the state had already overflowed. ``advice`` ends the message.
    """
    bad_out = _first_bad(out)
    if bad_out is None:
        return None
    bad_y = _first_bad(y)
    if bad_y is None:
        comp, idx, value = bad_out
        where = f"in {_label('f(t, y)', out, comp, idx)} while the state y was finite, largest |y| {largest_abs(y):.3g}"
        if math.isnan(value):
            cause = "check f for an invalid operation there (0/0, inf - inf, log or sqrt of a negative number)"
        else:
            cause = "f overflowed: the solution may blow up near there (or check f for a division by zero)"
        return f"{name}: f(t, y) returned {value} at t={t:.6g} ({where}): {cause}{advice}"
    comp, idx, value = bad_y
    return (
        f"{name}: the state became {value} near t={t:.6g} (in {_label('y', y, comp, idx)} where f was called): "
        f"the solution blows up there{advice or '; if the exact solution is finite, the steps are unstable: use a stiff method (scipy-Radau, scipy-BDF)'}"
    )


ADAPTIVE_MAX_STEPS = 100_000
FIXED_MAX_STEPS = 1_000_000


def budget_spent_message(name: str, budget: int, t: float, span: tuple[float, float], detail: str = "") -> str:
    """The `SolverError` message of a solve that spent its ``max_num_steps`` near ``t``."""
    a, b = span
    return (
        f"{name}: max_num_steps={budget} reached near t={t:.6g}; loosen rtol/atol, raise "
        "options={'max_num_steps': ...}, or use a stiff method ('scipy-Radau', 'scipy-BDF') if the problem "
        f"is stiff there (integrating from t={a:.6g} to t={b:.6g}{detail})"
    )


def step_budget(name: str, options: Mapping[str, Any], default: int, t: Tensor) -> int:
    """The ``max_num_steps`` of a solve: the option, else ``default`` plus one per output interval."""
    value = options.get("max_num_steps", default + max(len(t) - 1, 0))
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: options['max_num_steps'] must be a positive int, got {value!r}")
    return value


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
