"""Exact statistics of the fixed-step methods, and how ``step_size`` subdivides the output grid."""

from __future__ import annotations

import math

import pytest
import torch
from problems import allowed_error, fixed_step_methods, forced, max_error, oscillator, tolerances

import solvers

F64 = torch.float64
FIXED = fixed_step_methods()


class Counter:
    """Wraps a field, counting calls and recording their times."""

    def __init__(self, f):
        self.f, self.times = f, []

    def __call__(self, t, y):
        self.times.append(float(t))
        return self.f(t, y)


# A non-uniform grid and the substep counts step_size=0.1 must give: 0.1 -> 1, 0.25 -> 3 (2.5
# rounded up), 0.3 -> 3 (an exact multiple, despite 0.3 / 0.1 = 2.9999999999999996), 0.05 -> 1.
GRID = [0.0, 0.1, 0.35, 0.65, 0.7]
SUBSTEPS = [1, 3, 3, 1]


@pytest.mark.parametrize("method", FIXED)
def test_nfe_without_step_size_is_stages_times_intervals(method):
    p = forced()
    f = Counter(p.f)
    t = torch.tensor(GRID, dtype=F64)
    s = solvers.solve(f, p.y0, t, method).stats
    stages = solvers.get(method).solver.tableau.stages
    assert s.steps == len(GRID) - 1 == s.accepted and s.rejected == 0
    assert s.nfe == stages * s.steps == len(f.times)


@pytest.mark.parametrize("method", FIXED)
def test_nfe_with_step_size_subdivision(method):
    p = oscillator()  # a tuple state: the counts do not depend on the structure
    f = Counter(p.f)
    t = torch.tensor(GRID, dtype=F64)
    s = solvers.solve(f, p.y0, t, method, step_size=0.1).stats
    stages = solvers.get(method).solver.tableau.stages
    assert s.steps == sum(SUBSTEPS) == s.accepted and s.rejected == 0
    assert s.nfe == stages * s.steps == len(f.times)


@pytest.mark.parametrize("direction", [1, -1], ids=["forward", "backward"])
def test_subdivision_hits_every_output_time(direction):
    # Euler on y' = y multiplies by (1 + h) per step, so the output after each interval pins the
    # plan exactly: y(t_k) = prod_j (1 + h_j)^{n_j}, h_j = (t_{j+1} - t_j) / n_j.
    t = torch.tensor(GRID, dtype=F64) * direction
    f = Counter(lambda t, y: y)
    sol = solvers.solve(f, torch.ones(1, dtype=F64), t, "euler", step_size=0.1)
    expected, value = [1.0], 1.0
    for (a, b), n in zip(zip(t.tolist(), t.tolist()[1:]), SUBSTEPS):
        value *= (1 + (b - a) / n) ** n
        expected.append(value)
    torch.testing.assert_close(sol.ys[:, 0], torch.tensor(expected, dtype=F64), rtol=1e-14, atol=0)
    # Euler evaluates at step starts: every output time but the last starts a step, exactly.
    for tk in t.tolist()[:-1]:
        assert min(abs(s - tk) for s in f.times) < 1e-15
    # and the substeps within an interval are equal.
    starts = [0.1, 0.1 + 0.25 / 3, 0.1 + 0.5 / 3]
    for s in starts:
        assert min(abs(x - s * direction) for x in f.times) < 1e-15


@pytest.mark.parametrize("method", FIXED)
def test_step_size_larger_than_intervals_is_one_step_per_interval(method):
    p = forced()
    t = p.grid(5)
    one = solvers.solve(p.f, p.y0, t, method)
    big = solvers.solve(p.f, p.y0, t, method, step_size=10.0)
    assert big.stats.nfe == one.stats.nfe
    torch.testing.assert_close(big.ys, one.ys, rtol=0, atol=0)


@pytest.mark.parametrize("method", FIXED)
def test_outputs_keep_structure_shapes_and_dtypes(method):
    p = oscillator(work_dtype=torch.float32)
    t = p.grid(4)
    sol = solvers.solve(p.f, p.y0, t, method, step_size=0.05)
    assert isinstance(sol.ys, tuple) and len(sol.ys) == 3
    for y, y0 in zip(sol.ys, p.y0):
        assert y.shape == (len(t), *y0.shape) and y.dtype == y0.dtype
        torch.testing.assert_close(y[0], y0, rtol=0, atol=0)
    # The float32 component is as accurate as float32 and the method allow.
    h, order = 0.05, solvers.get(method).order
    exact = p.exact(t)
    assert float((sol.ys[2].double() - exact[2].double()).abs().max()) < max(5 * h**order, 1e-5)
    assert sol.t is t and sol.method == method


@pytest.mark.parametrize("method", [m for m in solvers.available() if solvers.get(m).adaptive])
def test_adaptive_methods_keep_mixed_dtypes(method):
    p = oscillator(work_dtype=torch.float32)
    t = p.grid(2)
    rtol, atol = tolerances(method) if solvers.get(method).backend == "torchdiffeq" else (1e-6, 1e-8)
    sol = solvers.solve(p.f, p.y0, t, method, rtol=rtol, atol=atol)
    assert [y.dtype for y in sol.ys] == [F64, F64, torch.float32]
    exact = p.exact(t)
    # The float32 component's derivative is rounded to float32 (relative 6e-8), nothing worse.
    assert max_error(sol.ys, exact) < max(allowed_error(method, rtol, atol, exact), 1e-5)


def test_substep_count_rounding():
    # The plan for intervals that are, up to rounding, exact multiples of step_size.
    for n in (3, 7, 10, 100):
        for interval in (n * 0.1, 0.3 * n / 3, 1.0):
            h = interval / n
            t = torch.tensor([0.0, interval], dtype=F64)
            steps = solvers.solve(lambda t, y: -y, torch.ones(1, dtype=F64), t, "euler", step_size=h).stats.steps
            assert steps == n, (interval, h)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    assert solvers.solve(lambda t, y: -y, torch.ones(1, dtype=F64), t, "euler", step_size=0.3).stats.steps == math.ceil(
        1 / 0.3
    )


def test_float32_grid_does_not_gain_substeps_to_rounding():
    # linspace(0, 1, 11) in float32 has intervals of 0.10000000149..., which must still take
    # exactly 10 steps of 0.01 each (this read 106 steps before the relative tolerance)
    t = torch.linspace(0, 1, 11)
    sol = solvers.solve(lambda t, y: -y, torch.ones(3), t, "rk4", step_size=0.01)
    assert sol.stats.steps == 100 and sol.stats.nfe == 400
