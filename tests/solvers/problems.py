"""Shared test problems with exact solutions, and the empirical-order machinery.

Every problem is built in a requested dtype (float64 by default) and knows its exact solution at
any time ``t`` for an arbitrary start time ``t[0]``, so decreasing grids and subintervals work too.
All of them have a log-norm <= 0 (decay, rotation, forced decay), so local errors are not amplified
along the trajectory; tests that bound a global error by a sum of local errors rely on that.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

import solvers

State = Tensor | tuple[Tensor, ...]


@dataclass(frozen=True)
class Problem:
    """``dy/dt = f(t, y)``, ``y(t[0]) = y0``, with ``exact(t) -> ys`` (leading ``len(t)`` axis)."""

    name: str
    f: Callable[[Tensor, State], State]
    y0: State
    exact: Callable[[Tensor], State]
    t0: float
    t1: float

    def grid(self, n: int, dtype: torch.dtype = torch.float64) -> Tensor:
        """``n + 1`` equally spaced output times over ``[t0, t1]``."""
        return torch.linspace(self.t0, self.t1, n + 1, dtype=dtype)


def decay(dtype: torch.dtype = torch.float64) -> Problem:
    """Scalar linear decay ``y' = -k y``, a batch of three rates."""
    k = torch.tensor([0.5, 1.0, 2.0], dtype=dtype)
    y0 = torch.tensor([1.0, -2.0, 0.5], dtype=dtype)

    def f(t: Tensor, y: Tensor) -> Tensor:
        return -k * y

    def exact(t: Tensor) -> Tensor:
        dt = (t - t[0]).to(dtype)[:, None]
        return y0 * torch.exp(-k * dt)

    return Problem("decay", f, y0, exact, 0.0, 1.0)


def rotation(dtype: torch.dtype = torch.float64, omega: float = 1.5) -> Problem:
    """2-D rotation ``y' = omega J y`` (an isometry: errors neither grow nor decay), batch of two."""
    J = torch.tensor([[0.0, -omega], [omega, 0.0]], dtype=dtype)
    y0 = torch.tensor([[1.0, 0.0], [0.5, -2.0]], dtype=dtype)

    def f(t: Tensor, y: Tensor) -> Tensor:
        return y @ J.T

    def exact(t: Tensor) -> Tensor:
        th = (omega * (t - t[0])).to(dtype)
        c, s = torch.cos(th)[:, None], torch.sin(th)[:, None]
        x, v = y0[:, 0], y0[:, 1]
        return torch.stack([c * x - s * v, s * x + c * v], dim=-1)

    return Problem("rotation", f, y0, exact, 0.0, 2.0)


def forced(dtype: torch.dtype = torch.float64) -> Problem:
    """Non-autonomous ``y' = -y + sin(t)``: ``y = (y0 - p(t0)) e^{-(t-t0)} + p(t)``, ``p = (sin - cos) / 2``.

    Depends on ``t``, so a wrong stage time ``c_i`` shows up as a lost order.
    """
    y0 = torch.tensor([2.0, -1.0], dtype=dtype)

    def f(t: Tensor, y: Tensor) -> Tensor:
        return -y + torch.sin(t).to(y.dtype)

    def p(t: Tensor) -> Tensor:
        return (torch.sin(t) - torch.cos(t)) / 2

    def exact(t: Tensor) -> Tensor:
        t = t.to(dtype)
        return (y0 - p(t[0])) * torch.exp(-(t - t[0]))[:, None] + p(t)[:, None]

    return Problem("forced", f, y0, exact, 0.0, 1.5)


def oscillator(dtype: torch.dtype = torch.float64, work_dtype: torch.dtype | None = None) -> Problem:
    """Tuple state: a 2-D isotropic oscillator ``x'' = -w^2 x`` with a quadrature riding along.

    State ``(x, v, q)``: position ``(2, 2)`` and velocity ``(2, 2)`` for a batch of two, and
    ``q = integral of |x|^2 dt`` of shape ``(2,)`` (an accumulated cost, as in neural-ODE training).
    ``work_dtype`` gives ``q`` its own float dtype (mixing float kinds within one state).
    """
    w = 2.0
    work_dtype = work_dtype or dtype
    x0 = torch.tensor([[1.0, 0.0], [0.3, -0.7]], dtype=dtype)
    v0 = torch.tensor([[0.0, 1.0], [1.2, 0.4]], dtype=dtype)
    q0 = torch.zeros(2, dtype=work_dtype)

    def f(t: Tensor, y: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        x, v, _ = y
        return v, -(w**2) * x, (x * x).sum(-1).to(work_dtype)

    def exact(t: Tensor) -> tuple[Tensor, ...]:
        s = (t - t[0]).to(torch.float64)[:, None, None]
        a, b = x0.double(), v0.double() / w  # x(s) = a cos(ws) + b sin(ws)
        c, sn = torch.cos(w * s), torch.sin(w * s)
        x = a * c + b * sn
        v = -a * w * sn + b * w * c
        s2 = torch.sin(2 * w * s)
        # integral_0^s (a cos + b sin)^2 = a^2 (s/2 + sin2ws/4w) + b^2 (s/2 - sin2ws/4w) + ab (1 - cos2ws)/2w
        q = a**2 * (s / 2 + s2 / (4 * w)) + b**2 * (s / 2 - s2 / (4 * w)) + a * b * (1 - torch.cos(2 * w * s)) / (2 * w)
        return x.to(dtype), v.to(dtype), (q0.double() + q.sum(-1)).to(work_dtype)

    return Problem("oscillator", f, (x0, v0, q0), exact, 0.0, 1.0)


TENSOR_PROBLEMS = (decay, rotation, forced)
TUPLE_PROBLEMS = (oscillator,)
ALL_PROBLEMS = TENSOR_PROBLEMS + TUPLE_PROBLEMS


def max_error(ys: State, ref: State) -> float:
    """Largest absolute difference over every component and output time (computed in float64)."""
    ys = ys if isinstance(ys, tuple) else (ys,)
    ref = ref if isinstance(ref, tuple) else (ref,)
    assert len(ys) == len(ref)
    return max(float((a.double() - b.double()).abs().max()) for a, b in zip(ys, ref))


def fixed_step_methods() -> list[str]:
    """Every registered fixed-step method, read from the registry at call time."""
    return [name for name in solvers.available() if not solvers.get(name).adaptive]


def fitted_slope(hs: list[float], errors: list[float]) -> float:
    """Least-squares slope of ``log(error)`` against ``log(h)``."""
    x = torch.tensor([math.log(h) for h in hs], dtype=torch.float64)
    y = torch.tensor([math.log(e) for e in errors], dtype=torch.float64)
    xc = x - x.mean()
    return float((xc * (y - y.mean())).sum() / (xc * xc).sum())


# Steps over the problem's interval, halving h each level. Coarse enough to stay clear of float64
# round-off for rk4 (error ~1e-11 at the finest level), fine enough to be in the asymptotic range.
LEVELS = (8, 16, 32, 64, 128)


def empirical_order(method: str, problem: Problem, levels: tuple[int, ...] = LEVELS) -> tuple[float, list[float]]:
    """Solve with ``step_size = (t1 - t0) / n`` for each ``n``; return the fitted slope and the errors.

    The error is the largest error at the final time; the output grid is just ``[t0, t1]``, so the
    solver's own subdivision does the stepping.
    """
    t = torch.tensor([problem.t0, problem.t1], dtype=torch.float64)
    exact = problem.exact(t)
    final = tuple(e[-1:] for e in exact) if isinstance(exact, tuple) else exact[-1:]
    hs, errors = [], []
    for n in levels:
        h = (problem.t1 - problem.t0) / n
        sol = solvers.solve(problem.f, problem.y0, t, method, step_size=h)
        assert sol.stats.steps == n
        ys = tuple(y[-1:] for y in sol.ys) if isinstance(sol.ys, tuple) else sol.ys[-1:]
        hs.append(h)
        errors.append(max_error(ys, final))
    return fitted_slope(hs, errors), errors


# How far past the requested tolerance a global error may go. torchdiffeq controls the error *per
# step* (each accepted step's estimated local error <= atol + rtol |y| in an RMS norm), so on the
# non-expansive problems above the global error is bounded by the sum of the local errors
# over the steps taken, and in practice lands within a small multiple of the tolerance: measured
# err / tol <= 2.4 for dopri5, dopri8, bosh3 and adaptive_heun on every problem here (rotation,
# which never damps an error, is the worst), hence 10.
# fehlberg2 propagates its order-2 solution but estimates the error of its order-1 companion,
# whose error constant is tiny (1/512 weights), so it under-estimates the error it commits: on
# these problems err / tol is 10 to 230 whatever rtol is (e.g. 2.6e-5 at rtol=1e-6 on exp decay
# over [0, 1]); it gets 300.
TOL_FACTOR = {"fehlberg2": 300.0}
DEFAULT_TOL_FACTOR = 10.0


def tolerances(method: str) -> tuple[float, float]:
    """rtol, atol for testing an adaptive method, loose enough to keep its step count modest."""
    rtol = 1e-6 if solvers.get(method).order > 2 else 1e-4
    return rtol, rtol / 100


def allowed_error(method: str, rtol: float, atol: float, exact: State) -> float:
    """The largest global error accepted from ``method`` at ``rtol``, ``atol`` (see TOL_FACTOR)."""
    parts = exact if isinstance(exact, tuple) else (exact,)
    scale = max(float(p.abs().max()) for p in parts)
    return TOL_FACTOR.get(method, DEFAULT_TOL_FACTOR) * (atol + rtol * scale)
