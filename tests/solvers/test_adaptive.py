"""Adaptive methods against exact solutions, scipy against torchdiffeq, stiff problems, decreasing time."""

from __future__ import annotations

import itertools

import pytest
import torch
from problems import ALL_PROBLEMS, TENSOR_PROBLEMS, allowed_error, forced, max_error, rotation, tolerances

import solvers

F64 = torch.float64
TORCHDIFFEQ = [m for m in solvers.available() if solvers.get(m).backend == "torchdiffeq"]
SCIPY = [m for m in solvers.available() if solvers.get(m).backend == "scipy"]


def test_backends_are_registered():
    assert {"dopri5", "dopri8", "bosh3", "adaptive_heun", "fehlberg2"} <= set(TORCHDIFFEQ)
    assert {"scipy-RK45", "scipy-DOP853", "scipy-Radau", "scipy-BDF", "scipy-LSODA"} <= set(SCIPY)
    for m in TORCHDIFFEQ + SCIPY:
        assert solvers.get(m).adaptive


@pytest.mark.parametrize("problem", ALL_PROBLEMS, ids=lambda p: p.__name__)
@pytest.mark.parametrize("method", TORCHDIFFEQ)
def test_adaptive_within_tolerance_of_exact(method, problem):
    p = problem()
    t = p.grid(4)
    rtol, atol = tolerances(method)
    sol = solvers.solve(p.f, p.y0, t, method, rtol=rtol, atol=atol)
    exact = p.exact(t)
    err = max_error(sol.ys, exact)
    assert err <= allowed_error(method, rtol, atol, exact), f"{method}: error {err:.3g} at rtol={rtol}"


@pytest.mark.parametrize("method", TORCHDIFFEQ)
def test_error_shrinks_with_tolerance(method):
    # Three decades of rtol must buy at least one decade of accuracy (measured: 15x for dopri8,
    # which is already near exact at the loose level, 400-2300x for the others).
    p = rotation()
    t = p.grid(1)
    loose = 1e-3 if solvers.get(method).order > 2 else 1e-2
    errors = []
    for rtol in (loose, loose / 1000):
        sol = solvers.solve(p.f, p.y0, t, method, rtol=rtol, atol=rtol / 100)
        errors.append(max_error(sol.ys, p.exact(t)))
    assert errors[1] < errors[0] / 10, errors


# scipy's BDF needs a tighter rtol than the others to be within 1e-9 of the exact solution.
AGREEMENT_RTOL = {"scipy-BDF": 1e-12}


@pytest.mark.parametrize("problem", [rotation, forced], ids=lambda p: p.__name__)
def test_scipy_and_torchdiffeq_agree_to_1e_8(problem):
    p = problem()
    t = p.grid(4)
    exact = p.exact(t)
    methods = SCIPY + ["dopri5", "dopri8"]
    ys = {}
    for m in methods:
        ys[m] = solvers.solve(p.f, p.y0, t, m, rtol=AGREEMENT_RTOL.get(m, 1e-10), atol=1e-12).ys
        assert ys[m].dtype == F64 and ys[m].shape == exact.shape
        assert max_error(ys[m], exact) < 5e-9, m
    for a, b in itertools.combinations(methods, 2):
        assert max_error(ys[a], ys[b]) < 1e-8, (a, b)


def _stiff_linear():
    """``y' = A y`` with eigenvalues -1 and -1e4 (stiffness ratio 1e4); exact via the matrix exponential."""
    V = torch.tensor([[1.0, 1.0], [1.0, -2.0]], dtype=F64)
    A = V @ torch.diag(torch.tensor([-1.0, -1.0e4], dtype=F64)) @ torch.linalg.inv(V)
    y0 = torch.tensor([[1.0, 0.0], [0.2, 0.7]], dtype=F64)

    def f(t, y):
        return y @ A.T

    def exact(t):
        return torch.stack([y0 @ torch.linalg.matrix_exp(A * ti).T for ti in t])

    return f, y0, exact


STIFF = ["scipy-Radau", "scipy-BDF", "scipy-LSODA"]


@pytest.mark.parametrize("method", STIFF)
def test_stiff_linear_system(method):
    f, y0, exact = _stiff_linear()
    t = torch.tensor([0.0, 0.01, 1.0, 10.0], dtype=F64)
    sol = solvers.solve(f, y0, t, method, rtol=1e-6, atol=1e-8)
    assert max_error(sol.ys, exact(t)) < 1e-5
    # Stability limits an explicit method to h ~ 3/1e4 here (scipy-RK45 spends 211,490 evaluations
    # at these tolerances); the implicit ones need a few hundred (measured 290 to 850).
    assert 0 < sol.stats.nfe < 1500, sol.stats


def test_stiff_problem_defeats_an_explicit_method():
    # The contrast that makes the test above meaningful: dopri5 hits its step budget.
    f, y0, _ = _stiff_linear()
    t = torch.tensor([0.0, 10.0], dtype=F64)
    with pytest.raises(solvers.SolverError, match="max_num_steps=100 reached"):
        solvers.solve(f, y0, t, "dopri5", rtol=1e-8, atol=1e-10, options={"max_num_steps": 100})


def _robertson(t, y):
    y1, y2, y3 = y.unbind(-1)
    return torch.stack([-0.04 * y1 + 1e4 * y2 * y3, 0.04 * y1 - 1e4 * y2 * y3 - 3e7 * y2**2, 3e7 * y2**2], -1)


# Robertson's chemical kinetics at t = 40, the reference solution of Hairer & Wanner, "Solving ODEs
# II" (scipy-Radau at rtol=1e-10, atol=1e-14 reproduces it to 2e-14).
ROBERTSON_T40 = (0.7158270687193941, 9.185534764557338e-06, 0.2841637457458413)


@pytest.mark.parametrize("method", STIFF)
def test_robertson(method):
    t = torch.tensor([0.0, 40.0], dtype=F64)
    sol = solvers.solve(_robertson, torch.tensor([1.0, 0.0, 0.0], dtype=F64), t, method, rtol=1e-6, atol=1e-10)
    end = sol.ys[-1]
    torch.testing.assert_close(end, torch.tensor(ROBERTSON_T40, dtype=F64), rtol=1e-4, atol=0.0)
    assert float(end.sum()) == pytest.approx(1.0, abs=1e-9)  # the reactions conserve mass
    assert sol.stats.nfe < 1500, sol.stats  # measured 380 to 710


@pytest.mark.parametrize("method", solvers.available())
def test_decreasing_time(method):
    p = forced()  # integrating backwards, the decay becomes growth by e^1.5
    t = torch.tensor([1.5, 0.75, 0.0], dtype=F64)
    exact = p.exact(t)
    entry = solvers.get(method)
    if not entry.adaptive:
        h = 0.01
        errors = [max_error(solvers.solve(p.f, p.y0, t, method, step_size=s).ys, exact) for s in (h, h / 2)]
        # Error constants here are below 10 (measured <= 5 for euler), and halving h must gain ~2^order.
        assert errors[0] < 10 * h**entry.order
        assert errors[0] / errors[1] > 0.8 * 2**entry.order
        return
    if entry.backend == "torchdiffeq":
        rtol, atol = tolerances(method)
        bound = allowed_error(method, rtol, atol, exact)
    else:
        # scipy's methods: 100 x tol (BDF, a variable-order multistep method, is the worst at 17x).
        rtol, atol = 1e-8, 1e-10
        bound = 100 * (atol + rtol * float(exact.abs().max()))
    sol = solvers.solve(p.f, p.y0, t, method, rtol=rtol, atol=atol)
    assert max_error(sol.ys, exact) < bound


@pytest.mark.parametrize("problem", TENSOR_PROBLEMS, ids=lambda p: p.__name__)
def test_single_output_time_returns_y0(problem):
    p = problem()
    t = torch.tensor([0.25], dtype=F64)
    for m in solvers.available():
        sol = solvers.solve(p.f, p.y0, t, m)
        assert sol.ys.shape == (1, *p.y0.shape)
        torch.testing.assert_close(sol.ys[0], p.y0, rtol=0, atol=0)


class _Counter:
    def __init__(self, f):
        self.f, self.calls = f, 0

    def __call__(self, t, y):
        self.calls += 1
        return self.f(t, y)


@pytest.mark.parametrize("method", TORCHDIFFEQ)
def test_torchdiffeq_stats(method):
    p = rotation()
    f = _Counter(p.f)
    # A first step of the whole interval (2 time units of a rotation) is certain to be rejected.
    rtol, atol = tolerances(method)
    sol = solvers.solve(f, p.y0, p.grid(1), method, rtol=rtol, atol=atol, options={"first_step": 2.0})
    s = sol.stats
    assert s.nfe == f.calls
    assert s.accepted >= 1 and s.rejected >= 1
    assert s.steps == s.accepted + s.rejected
    assert s.nfe >= s.steps  # at least one new evaluation per attempted step (FSAL reuses one)


@pytest.mark.parametrize("method", SCIPY)
def test_scipy_stats(method):
    p = rotation()
    f = _Counter(p.f)
    sol = solvers.solve(f, p.y0, p.grid(2), method, rtol=1e-6, atol=1e-9)
    # Every call of f counts, those of the implicit methods' finite-difference Jacobians included.
    assert sol.stats.nfe == f.calls > 0
    assert sol.stats.steps is None and sol.stats.accepted is None and sol.stats.rejected is None
