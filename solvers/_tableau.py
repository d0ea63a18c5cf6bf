"""Butcher tableaux for explicit Runge-Kutta methods, checked on construction."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

Number = float | int | Fraction


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge-Kutta tableau ``(c, a, b)``.

    ``a`` is lower triangular and given as rows: ``a[i]`` has ``i`` entries (row 0 is empty).
    Coefficients are stored as Python floats (float64); solvers cast them to the state's dtype
    when they combine stages. Construction checks consistency: ``len(a[i]) == i``,
    ``sum(a[i]) == c[i]`` and ``sum(b) == 1``.
    """

    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]

    def __init__(self, c: list[Number], a: list[list[Number]], b: list[Number]) -> None:
        stages = len(b)
        if len(c) != stages or len(a) != stages:
            raise ValueError(f"ButcherTableau: c, a and b need {stages} stages, got {len(c)}, {len(a)}, {stages}")
        for i, row in enumerate(a):
            if len(row) != i:
                raise ValueError(
                    f"ButcherTableau: row {i} of a must have {i} entries (explicit method), got {len(row)}"
                )
            if abs(float(sum(row)) - float(c[i])) > 1e-14:
                raise ValueError(
                    f"ButcherTableau: row {i} of a sums to {float(sum(row))}, expected c[{i}] = {float(c[i])}"
                )
        if abs(float(sum(b)) - 1.0) > 1e-14:
            raise ValueError(f"ButcherTableau: weights b sum to {float(sum(b))}, expected 1")
        object.__setattr__(self, "c", tuple(float(v) for v in c))
        object.__setattr__(self, "a", tuple(tuple(float(v) for v in row) for row in a))
        object.__setattr__(self, "b", tuple(float(v) for v in b))

    @property
    def stages(self) -> int:
        """Number of vector-field evaluations per step."""
        return len(self.b)
