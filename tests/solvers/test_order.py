"""Empirical convergence order of every registered fixed-step method, and its stage times."""

from __future__ import annotations

import pytest
import torch
from problems import TENSOR_PROBLEMS, TUPLE_PROBLEMS, empirical_order, fitted_slope, fixed_step_methods

import solvers

FIXED = fixed_step_methods()


def test_the_builtin_fixed_step_methods_are_registered():
    # The parametrisations below read the registry; make sure they are not silently empty.
    assert {"euler", "midpoint", "heun", "rk4"} <= set(FIXED)
    assert [solvers.get(m).order for m in ("euler", "midpoint", "heun", "rk4")] == [1, 2, 2, 4]


def test_fitted_slope_recovers_a_known_power():
    hs = [0.1, 0.05, 0.025, 0.0125]
    assert fitted_slope(hs, [3.0 * h**2.5 for h in hs]) == pytest.approx(2.5, abs=1e-12)


@pytest.mark.parametrize("problem", TENSOR_PROBLEMS + TUPLE_PROBLEMS, ids=lambda p: p.__name__)
@pytest.mark.parametrize("method", FIXED)
def test_convergence_order(method, problem):
    order = solvers.get(method).order
    slope, errors = empirical_order(method, problem())
    assert slope == pytest.approx(order, abs=0.15), f"{method} on {problem.__name__}: errors {errors}"
    assert errors[-1] < errors[0]


@pytest.mark.parametrize("method", FIXED)
def test_grid_stepping_equals_step_size_stepping(method):
    # One step per output interval on an n-interval grid is the same computation as step_size=h on
    # [t0, t1]; the two code paths must give the same final state (up to time round-off).
    problem = TENSOR_PROBLEMS[2]()  # forced: depends on t
    n = 16
    grid = problem.grid(n)
    h = (problem.t1 - problem.t0) / n
    by_grid = solvers.solve(problem.f, problem.y0, grid, method).ys[-1]
    by_step = solvers.solve(problem.f, problem.y0, grid[[0, -1]], method, step_size=h).ys[-1]
    torch.testing.assert_close(by_grid, by_step, rtol=1e-13, atol=1e-14)


class _TimeRecorder:
    """A field that records the time of every call (and is otherwise y' = -y)."""

    def __init__(self):
        self.times: list[float] = []

    def __call__(self, t, y):
        assert t.dim() == 0 and t.dtype == torch.float64
        self.times.append(float(t))
        return -y


@pytest.mark.parametrize("direction", [1.0, -1.0], ids=["forward", "backward"])
@pytest.mark.parametrize("method", FIXED)
def test_stage_times_are_t0_plus_c_h(method, direction):
    tab = solvers.get(method).solver.tableau
    t0, h = 0.3, 0.25 * direction
    f = _TimeRecorder()
    solvers.solve(f, torch.ones(2, dtype=torch.float64), torch.tensor([t0, t0 + h], dtype=torch.float64), method)
    assert f.times == pytest.approx([t0 + c * h for c in tab.c], abs=1e-15)


@pytest.mark.parametrize("method", FIXED)
def test_stage_times_with_substeps(method):
    tab = solvers.get(method).solver.tableau
    t = torch.tensor([0.0, 0.5, 0.6], dtype=torch.float64)
    f = _TimeRecorder()
    solvers.solve(f, torch.ones(1, dtype=torch.float64), t, method, step_size=0.2)
    # [0, 0.5] splits into 3 substeps of 1/6; [0.5, 0.6] is one step of 0.1.
    starts = [(0.0, 0.5 / 3), (0.5 / 3, 0.5 / 3), (1.0 / 3, 0.5 / 3), (0.5, 0.1)]
    expected = [s + c * h for s, h in starts for c in tab.c]
    assert f.times == pytest.approx(expected, abs=1e-15)
