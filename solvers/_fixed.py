"""Fixed-step explicit Runge-Kutta methods: our own fast path over tuple states.

Each method is a tableau. The state stays a tuple of tensors in its own dtypes (no flattening),
the grid is built once on the host before the first step, and the loop does nothing but stage
evaluations and their linear combinations: no per-step host syncs (one check of the outputs
follows the loop).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from ._base import (
    FIXED_MAX_STEPS,
    Solver,
    State,
    Stats,
    TupleField,
    check_field_output,
    largest_abs,
    nonfinite_field_message,
    step_budget,
)
from ._errors import SolverError, StiffStepWarning
from ._registry import register
from ._tableau import ButcherTableau


def substeps(interval: float, step_size: float | None) -> int:
    """Fewest equal substeps of ``interval`` none longer than ``step_size`` (1 when ``None``)."""
    if step_size is None:
        return 1
    ratio = abs(interval) / step_size
    # An interval that is a multiple of step_size up to rounding (0.3 / 0.1 = 2.9999999999999996;
    # a float32 grid's 0.1 is 0.10000000149) gains no step: within 1e-6 relative, round instead.
    nearest = round(ratio)
    if abs(ratio - nearest) <= 1e-6 * ratio:
        return max(1, nearest)
    return max(1, math.ceil(ratio))


def rk_step(
    tableau: ButcherTableau, f: TupleField, stage_times: Sequence[Tensor], h: float | Tensor, y: State
) -> State:
    """One explicit RK step of length ``h`` from ``y``; ``stage_times[i]`` is ``t + c[i] h``.

    ``h`` is a float, or a 0-dim tensor when the step length must carry a gradient (to ``t``).
    """
    if isinstance(h, Tensor):

        def axpy(yj: Tensor, kj: Tensor, a: float) -> Tensor:
            return yj + kj * (h * a)
    else:

        def axpy(yj: Tensor, kj: Tensor, a: float) -> Tensor:
            return torch.add(yj, kj, alpha=h * a)

    ks: list[State] = []
    for i, ti in enumerate(stage_times):
        yi = y
        for a_il, k in zip(tableau.a[i], ks):
            if a_il != 0.0:
                yi = tuple(axpy(yj, kj, a_il) for yj, kj in zip(yi, k))
        ks.append(f(ti, yi))
    y_next = y
    for b_i, k in zip(tableau.b, ks):
        if b_i != 0.0:
            y_next = tuple(axpy(yj, kj, b_i) for yj, kj in zip(y_next, k))
    return y_next


# A solution whose largest |y| grows past GROWTH_CHECK times max(1, largest |y0|) is solved again
# up to there with half the step; if that changes it by more than HALVING_CHANGE of its size, the
# step is too long for the problem (StiffStepWarning).
GROWTH_CHECK = 1e6
HALVING_CHANGE = 0.5


class _Found(Exception):
    """Raised inside a diagnostic replay at the first non-finite value."""


class FixedStepSolver(Solver):
    """Base of the explicit fixed-step methods; a subclass only sets ``tableau``.

    Without ``step_size`` it takes one step per interval of ``t``; with ``step_size`` it splits
    each interval into the fewest equal substeps no longer than ``step_size``, so every output
    time is hit exactly (no interpolation). ``nfe`` is exactly ``stages * steps``.

    The grid is built from ``t`` differentiably when ``t`` requires grad, so gradients reach the
    output times. Option ``max_num_steps`` (default 1,000,000 plus one per output interval): a
    solve needing more steps is refused before the first one (`SolverError`). After the solve,
    a non-finite solution raises `SolverError` naming where it arose (``f`` returned NaN/inf, or
    the state overflowed with the given step), and a solution that grew more than ``GROWTH_CHECK``
    times and changes when the step is halved warns with `StiffStepWarning`.
    """

    tableau: ClassVar[ButcherTableau]
    options: ClassVar[frozenset[str]] = frozenset({"max_num_steps"})

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
        grid = t.tolist()  # the one host sync before the loop
        counts = [substeps(t1 - t0, step_size) for t0, t1 in zip(grid[:-1], grid[1:])]
        budget = step_budget(self.name, options, FIXED_MAX_STEPS, t)
        steps = sum(counts)
        if steps > budget:
            size = "one step per interval" if step_size is None else f"step_size={step_size:g}"
            raise SolverError(
                f"{self.name}: this solve needs {steps} steps ({size} from t={grid[0]:.6g} to t={grid[-1]:.6g}), "
                f"more than max_num_steps={budget}: use a larger step_size (or an adaptive method), or pass "
                f"options={{'max_num_steps': {steps}}} if that many steps are intended"
            )
        lengths = [(t1 - t0) / n for t0, t1, n in zip(grid[:-1], grid[1:], counts)]
        if t.requires_grad and torch.is_grad_enabled():
            times, hs = self._stage_times_from(t, counts)
        else:
            times, hs = self._stage_times(grid, counts, t), lengths

        checked = False

        def first_call(ti: Tensor, yi: State) -> State:
            nonlocal checked
            out = f(ti, yi)
            if not checked:
                check_field_output(self.name, out, yi)
                checked = True
            return out

        out = self._march(first_call, y0, times, counts, hs)
        ys = tuple(torch.stack([o[i] for o in out]) for i in range(len(y0)))
        self._check(f, y0, ys, out, t, grid, counts, lengths, times)
        stages = self.tableau.stages
        return ys, Stats(nfe=steps * stages, steps=steps, accepted=steps, rejected=0)

    def _march(
        self, f: TupleField, y0: State, times: Sequence[Tensor], counts: list[int], hs: Sequence[float | Tensor]
    ) -> list[State]:
        """The state at ``y0`` and at the end of each interval: ``counts[i]`` steps of length ``hs[i]``,
        whose stage times are consecutive in ``times``."""
        out = [y0]
        y, s, stages = y0, 0, self.tableau.stages
        for n, h in zip(counts, hs):
            for _ in range(n):
                y = rk_step(self.tableau, f, times[s : s + stages], h, y)
                s += stages
            out.append(y)
        return out

    def _stage_times(self, grid: list[float], counts: list[int], t: Tensor) -> Sequence[Tensor]:
        """Stage times computed on the host in float64, then one tensor of ``t``'s dtype."""
        stage_t = []
        for t0, t1, n in zip(grid[:-1], grid[1:], counts):
            h = (t1 - t0) / n
            for j in range(n):
                start = t0 + j * h
                stage_t.extend(start + c * h for c in self.tableau.c)
        return torch.tensor(stage_t, dtype=t.dtype, device=t.device).unbind() if stage_t else ()

    def _stage_times_from(self, t: Tensor, counts: list[int]) -> tuple[Sequence[Tensor], list[Tensor]]:
        """Stage times and step lengths as functions of ``t`` (so they carry its gradient)."""
        dev, dt = t.device, t.dtype
        n = torch.tensor(counts, device=dev)
        h = (t[1:] - t[:-1]) / n.to(dt)  # (T-1,) step length of each interval
        interval = torch.repeat_interleave(torch.arange(len(counts), device=dev), n)  # (steps,)
        first = torch.cumsum(n, 0) - n  # index of each interval's first step
        j = (torch.arange(len(interval), device=dev) - first[interval]).to(dt)  # step within its interval
        c = torch.tensor(self.tableau.c, dtype=dt, device=dev)
        k = interval.repeat_interleave(len(c))
        offsets = (j[:, None] + c[None, :]).reshape(-1)  # (steps * stages,) in units of h
        return (t[k] + h[k] * offsets).unbind(), list(h.unbind())

    def _check(
        self,
        f: TupleField,
        y0: State,
        ys: State,
        out: list[State],
        t: Tensor,
        grid: list[float],
        counts: list[int],
        lengths: list[float],
        times: Sequence[Tensor],
    ) -> None:
        """Raise on a non-finite solution, warn on a blow-up; one host sync, plus replays on failure."""
        if len(grid) < 2:
            return
        sizes = [y.detach().abs().reshape(len(grid), -1).amax(1).double() for y in ys if y.numel()]
        if not sizes:
            return
        largest = torch.stack(sizes).amax(0).tolist()  # (T,) largest |y| at each output; NaN propagates
        bad = next((k for k, v in enumerate(largest) if not math.isfinite(v)), None)
        scale = max(1.0, largest[0])
        if bad is not None:
            s0 = self.tableau.stages * sum(counts[: bad - 1])
            h = lengths[bad - 1]
            raise SolverError(self._replay(f, out[bad - 1], times[s0:], counts[bad - 1], h, grid, bad, scale))
        k = max(range(len(largest)), key=lambda i: largest[i])
        growth = largest[k] / scale
        if growth <= GROWTH_CHECK:
            return
        with torch.no_grad():
            half = [2 * n for n in counts[:k]]
            times_half = self._stage_times(grid[: k + 1], half, t)
            y = self._march(f, y0, times_half, half, [h / 2 for h in lengths[:k]])[-1]
            change = max(float((a.detach() - b[k].detach()).abs().max()) for a, b in zip(y, ys) if a.numel())
        if not change <= HALVING_CHANGE * largest[k]:  # NaN/inf included
            halved = (
                f"halving the step changes it by {change / largest[k]:.3g} times its size"
                if math.isfinite(change)
                else "with half the step it overflows to NaN/inf"
            )
            warnings.warn(
                f"{self.name}: with steps of up to {max(map(abs, lengths[:k])):.4g}, the solution grew by a factor "
                f"{growth:.3g} by t={grid[k]:.6g} (largest |y| {largest[k]:.3g}), and {halved}: the step is too long for this problem (an explicit step "
                "beyond its stability limit grows geometrically). Use a smaller step_size, or an adaptive ('dopri5') "
                "or implicit ('scipy-Radau', 'scipy-BDF') method.",
                StiffStepWarning,
                stacklevel=4,
            )

    def _replay(
        self,
        f: TupleField,
        y: State,
        times: Sequence[Tensor],
        n: int,
        h: float,
        grid: list[float],
        k: int,
        scale: float,
    ) -> str:
        """Step interval ``k - 1`` again from its finite start, checking every value; the reason it failed."""
        stages = self.tableau.stages

        advice = (
            f". With steps of {abs(h):.4g}: if the exact solution stays finite, the step is too long (unstable) "
            "for this problem; use a smaller step_size, or an adaptive ('dopri5') or implicit ('scipy-Radau', "
            "'scipy-BDF') method"
        )

        def overflowed(at: float) -> _Found:
            return _Found(
                f"{self.name}: the solution overflowed to NaN/inf near t={at:.6g} (before output {k}, t={grid[k]:.6g}){advice}"
            )

        def checked(ti: Tensor, yi: State) -> State:
            if not all(bool(torch.isfinite(c).all()) for c in yi):
                raise overflowed(float(ti.detach()))
            o = f(ti, yi)
            grown = largest_abs(yi) > GROWTH_CHECK * scale
            msg = nonfinite_field_message(self.name, float(ti.detach()), o, yi, advice if grown else "")
            if msg is not None:
                raise _Found(msg)
            return o

        try:
            with torch.no_grad():
                for j in range(n):
                    y = rk_step(self.tableau, checked, times[j * stages : (j + 1) * stages], h, y)
                    if not all(bool(torch.isfinite(c).all()) for c in y):
                        raise overflowed(grid[k - 1] + (j + 1) * h)
        except _Found as found:
            return str(found)
        return (
            f"{self.name}: the solution is not finite (NaN/inf) at output {k}, t={grid[k]:.6g} (steps of "
            f"{abs(h):.4g}; a replay of that interval stayed finite, so f is not deterministic)"
        )


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
