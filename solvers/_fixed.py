"""Fixed-step explicit Runge-Kutta methods: our own fast path over tuple states.

Each method is a tableau. The state stays a tuple of tensors in its own dtypes (no flattening),
the grid is built once on the host before the first step, and the loop does nothing but stage
evaluations and their linear combinations: no per-step host syncs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from ._base import Solver, State, Stats, TupleField, check_field_output
from ._registry import register
from ._tableau import ButcherTableau


def substeps(interval: float, step_size: float | None) -> int:
    """Fewest equal substeps of ``interval`` none longer than ``step_size`` (1 when ``None``)."""
    if step_size is None:
        return 1
    # The relative tolerance keeps an interval that is a multiple of step_size up to rounding
    # (0.3 / 0.1 = 2.9999999999999996; a float32 grid's 0.1 is 0.10000000149) from gaining a step.
    return max(1, math.ceil(abs(interval) / step_size * (1 - 1e-6)))


def rk_step(tableau: ButcherTableau, f: TupleField, stage_times: Sequence[Tensor], h: float, y: State) -> State:
    """One explicit RK step of length ``h`` from ``y``; ``stage_times[i]`` is ``t + c[i] h``."""
    ks: list[State] = []
    for i, ti in enumerate(stage_times):
        yi = y
        for a_il, k in zip(tableau.a[i], ks):
            if a_il != 0.0:
                yi = tuple(torch.add(yj, kj, alpha=h * a_il) for yj, kj in zip(yi, k))
        ks.append(f(ti, yi))
    y_next = y
    for b_i, k in zip(tableau.b, ks):
        if b_i != 0.0:
            y_next = tuple(torch.add(yj, kj, alpha=h * b_i) for yj, kj in zip(y_next, k))
    return y_next


class FixedStepSolver(Solver):
    """Base of the explicit fixed-step methods; a subclass only sets ``tableau``.

    Without ``step_size`` it takes one step per interval of ``t``; with ``step_size`` it splits
    each interval into the fewest equal substeps no longer than ``step_size``, so every output
    time is hit exactly (no interpolation). ``nfe`` is exactly ``stages * steps``.
    """

    tableau: ClassVar[ButcherTableau]
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
        tab = self.tableau
        grid = t.tolist()  # the one host sync of the solve
        plan = []  # (substep count, substep length) per interval
        stage_t = []
        for t0, t1 in zip(grid[:-1], grid[1:]):
            n = substeps(t1 - t0, step_size)
            h = (t1 - t0) / n
            plan.append((n, h))
            for j in range(n):
                start = t0 + j * h
                stage_t.extend(start + c * h for c in tab.c)
        times = torch.tensor(stage_t, dtype=t.dtype, device=t.device).unbind() if stage_t else ()

        checked = False

        def first_call(ti: Tensor, yi: State) -> State:
            nonlocal checked
            out = f(ti, yi)
            if not checked:
                check_field_output(self.name, out, yi)
                checked = True
            return out

        out: list[State] = [y0]
        y, s, steps = y0, 0, 0
        for n, h in plan:
            for _ in range(n):
                y = rk_step(tab, first_call if not checked else f, times[s : s + tab.stages], h, y)
                s += tab.stages
                steps += 1
            out.append(y)
        ys = tuple(torch.stack([o[i] for o in out]) for i in range(len(y0)))
        return ys, Stats(nfe=steps * tab.stages, steps=steps, accepted=steps, rejected=0)


@register("euler", order=1)
class Euler(FixedStepSolver):
    """Explicit Euler: order 1, fixed step, 1 stage, no error estimate, no adjoint."""

    tableau = ButcherTableau(c=[0], a=[[]], b=[1])


@register("midpoint", order=2)
class Midpoint(FixedStepSolver):
    """Explicit midpoint: order 2, fixed step, 2 stages, no error estimate, no adjoint."""

    tableau = ButcherTableau(c=[0, 0.5], a=[[], [0.5]], b=[0, 1])


@register("heun", order=2)
class Heun(FixedStepSolver):
    """Heun's method (explicit trapezoid): order 2, fixed step, 2 stages, no error estimate, no adjoint."""

    tableau = ButcherTableau(c=[0, 1], a=[[], [1]], b=[0.5, 0.5])


@register("rk4", order=4)
class RK4(FixedStepSolver):
    """Classic Runge-Kutta: order 4, fixed step, 4 stages, no error estimate, no adjoint."""

    tableau = ButcherTableau(
        c=[0, 0.5, 0.5, 1],
        a=[[], [0.5], [0, 0.5], [0, 0, 1]],
        b=[1 / 6, 1 / 3, 1 / 3, 1 / 6],
    )
