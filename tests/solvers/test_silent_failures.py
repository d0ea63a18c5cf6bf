"""Solves that used to return a wrong answer (or hang) without a word; each now warns or raises.

One section per case of the reliability issue: gradients to ``t`` of fixed-step methods, explicit
steps that blow up, a step budget for every method, NaN/inf returned by ``f``, and misspelled names.
"""

from __future__ import annotations

import re
import time
import warnings

import pytest
import torch
from problems import fixed_step_methods

import solvers

F64 = torch.float64
ADAPTIVE = [m for m in solvers.available() if solvers.get(m).adaptive]
TORCHDIFFEQ = [m for m in ADAPTIVE if solvers.get(m).backend == "torchdiffeq"]
SCIPY = [m for m in ADAPTIVE if solvers.get(m).backend == "scipy"]


def _time_in(message: str) -> float:
    found = re.search(r"at t=([-+0-9.e]+)", message)
    assert found, message
    return float(found.group(1))


# --- 1. gradients reach t through fixed-step methods ----------------------------------------------


def _forced(t, y):
    return -y * t + torch.sin(t)


# Not multiples of the step, so nudging t changes no substep count (the solve is smooth in t).
T_GRAD = torch.tensor([0.0, 0.7049, 1.5163], dtype=F64)
Y_GRAD = torch.tensor([1.0, -0.5], dtype=F64)
W_GRAD = torch.tensor([[0.0, 0.0], [1.0, 2.0], [-1.0, 0.5]], dtype=F64)


def _loss(t, method, **kwargs):
    return (solvers.solve(_forced, Y_GRAD, t, method, **kwargs).ys * W_GRAD).sum()


def _grad_t(method, **kwargs):
    t = T_GRAD.clone().requires_grad_()
    _loss(t, method, **kwargs).backward()
    assert t.grad is not None, method
    return t.grad


@pytest.mark.parametrize("method", fixed_step_methods())
def test_fixed_step_gradient_reaches_t(method):
    h = 0.01
    got = _grad_t(method, step_size=h)
    # Against central differences of the same discrete solve ...
    eps = 1e-6
    fd = torch.stack(
        [
            (_loss(T_GRAD + eps * e, method, step_size=h) - _loss(T_GRAD - eps * e, method, step_size=h)) / (2 * eps)
            for e in torch.eye(3, dtype=F64)
        ]
    )
    torch.testing.assert_close(got, fd, rtol=0, atol=1e-8)
    # ... and against dopri5's gradient, to the method's order in h.
    ref = _grad_t("dopri5", rtol=1e-12, atol=1e-12)
    order = solvers.get(method).order
    torch.testing.assert_close(got, ref, rtol=0, atol=3 * h**order)
    assert float(got[1].abs()) > 1  # not a trivially small gradient


def test_fixed_step_gradient_to_t_with_one_step_per_interval():
    t = torch.tensor([0.0, 0.1, 0.25], dtype=F64, requires_grad=True)
    sol = solvers.solve(lambda t, y: -y, Y_GRAD, t, "rk4")
    sol.ys[-1].sum().backward()
    # y(t2) = y0 exp(-(t2 - t0)): the rk4 gradient to t2 is -y(t2) up to the local error.
    torch.testing.assert_close(t.grad[2], -sol.ys[-1].sum().detach(), rtol=1e-4, atol=0)
    torch.testing.assert_close(t.grad[0], -t.grad[2], rtol=1e-4, atol=0)


# --- 2. explicit fixed steps that blow up ---------------------------------------------------------


def _stiff(t, y):
    return -1e4 * y


@pytest.mark.parametrize("method", fixed_step_methods())
def test_unstable_fixed_step_warns_naming_the_step(method):
    # h·λ = -100: every explicit method here is far outside its stability region; the solution
    # should decay to ~0 but grows by tens of orders of magnitude in 20 steps.
    t = torch.tensor([0.0, 0.2], dtype=F64)
    with pytest.warns(solvers.StiffStepWarning, match=rf"{method}: with steps of up to 0.01, the solution grew"):
        sol = solvers.solve(_stiff, torch.ones(1, dtype=F64), t, method, step_size=0.01)
    assert float(sol.ys[-1].abs()) > 1e30  # the (wrong) result is still returned


@pytest.mark.parametrize("method", fixed_step_methods())
def test_unstable_fixed_step_that_overflows_raises_naming_the_step(method):
    t = torch.tensor([0.0, 0.5, 5.0], dtype=F64)
    with pytest.raises(solvers.SolverError, match=r"With steps of 0.01: .*smaller step_size.*'scipy-Radau'"):
        solvers.solve(_stiff, torch.ones(1, dtype=F64), t, method, step_size=0.01)


@pytest.mark.parametrize(
    ("f", "y0", "t1", "step"),
    [
        (lambda t, y: y, torch.ones(3, dtype=F64), 20.0, 0.01),  # grows 4.9e8, resolved
        (lambda t, y: torch.full_like(y, 1e8), torch.zeros(2, dtype=F64), 1.0, 0.1),  # from 0 to 1e8
        (lambda t, y: 2 * t * y, torch.tensor([1e-3], dtype=F64), 4.5, 0.001),  # exp(t²): grows 6e8
    ],
)
def test_legitimately_growing_solutions_do_not_warn(f, y0, t1, step):
    t = torch.tensor([0.0, t1], dtype=F64)
    for method in fixed_step_methods():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            sol = solvers.solve(f, y0, t, method, step_size=step)
        assert float(sol.ys[-1].abs().max()) > 1e5


def test_growth_a_halved_step_does_not_reproduce_warns():
    # y' = y with h = 0.5: Euler grows 1.5x a step where e^0.5 = 1.65x; by t=40 it is off by 50x.
    with pytest.warns(solvers.StiffStepWarning, match=r"halving the step changes it by"):
        solvers.solve(
            lambda t, y: y, torch.ones(1, dtype=F64), torch.tensor([0.0, 40.0], dtype=F64), "euler", step_size=0.5
        )


# --- 3. a step budget for every method ------------------------------------------------------------


@pytest.mark.parametrize("method", fixed_step_methods())
def test_fixed_step_budget_refuses_before_stepping(method):
    calls = []

    def f(t, y):
        calls.append(1)
        return -y

    start = time.perf_counter()
    with pytest.raises(
        solvers.SolverError,
        match=rf"{method}: this solve needs 1000000000000 steps \(step_size=1e-12 from t=0 to t=1\), more than "
        r"max_num_steps=1000001: use a larger step_size",
    ):
        solvers.solve(f, torch.ones(1, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), method, step_size=1e-12)
    assert time.perf_counter() - start < 1 and not calls
    with pytest.raises(solvers.SolverError, match=r"needs 100 steps .* more than max_num_steps=99"):
        solvers.solve(
            f,
            torch.ones(1, dtype=F64),
            torch.tensor([0.0, 1.0], dtype=F64),
            method,
            step_size=0.01,
            options={"max_num_steps": 99},
        )
    sol = solvers.solve(
        f,
        torch.ones(1, dtype=F64),
        torch.tensor([0.0, 1.0], dtype=F64),
        method,
        step_size=0.01,
        options={"max_num_steps": 100},
    )
    assert sol.stats.steps == 100


@pytest.mark.parametrize("method", TORCHDIFFEQ)
def test_adaptive_budget_counts_the_whole_solve(method):
    # 20 output intervals: torchdiffeq's own count restarts at each output time, so a budget of
    # half the steps of the solve, far more than any one interval takes, used to let it finish.
    t = torch.linspace(0, 20, 21, dtype=F64)
    y0 = torch.ones(1, dtype=F64)
    rtol = {2: 1e-5, 3: 1e-7, 5: 1e-8, 8: 1e-11}[solvers.get(method).order]  # >= 40 steps, quickly
    tol = dict(rtol=rtol, atol=rtol / 100)
    free = solvers.solve(lambda t, y: -y, y0, t, method, **tol)
    budget = free.stats.steps // 2
    assert budget >= 20
    with pytest.raises(
        solvers.SolverError,
        match=rf"{method}: max_num_steps={budget} reached near t=.*from t=0 to t=20: \d+ steps accepted",
    ) as info:
        solvers.solve(lambda t, y: -y, y0, t, method, **tol, options={"max_num_steps": budget})
    assert 0 < _time_in(str(info.value).replace("near t=", "at t=")) < 20


@pytest.mark.parametrize("method", SCIPY)
def test_scipy_methods_take_a_step_budget(method):
    t = torch.tensor([0.0, 10.0], dtype=F64)
    with pytest.raises(solvers.SolverError, match=rf"{method}: max_num_steps=5 reached near t=.*from t=0 to t=10"):
        solvers.solve(
            lambda t, y: torch.cos(t) * y,
            torch.ones(1, dtype=F64),
            t,
            method,
            rtol=1e-10,
            atol=1e-12,
            options={"max_num_steps": 5},
        )
    sol = solvers.solve(lambda t, y: -y, torch.ones(1, dtype=F64), t, method, options={"max_num_steps": 10_000})
    torch.testing.assert_close(sol.ys[-1], torch.exp(-t[-1:]), rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("method", ["rk4", "dopri5", "scipy-RK45"])
@pytest.mark.parametrize("value", [0, -3, 2.5, True, "10"])
def test_bad_step_budget(method, value):
    with pytest.raises(
        ValueError, match=rf"options\['max_num_steps'\] must be a positive int, got {re.escape(repr(value))}"
    ):
        solvers.solve(
            lambda t, y: -y,
            torch.ones(1, dtype=F64),
            torch.tensor([0.0, 1.0], dtype=F64),
            method,
            options={"max_num_steps": value},
        )


def test_adjoint_with_another_method_keeps_a_budget():
    y0 = torch.ones(1, dtype=F64, requires_grad=True)
    sol = solvers.solve(
        lambda t, y: -y,
        y0,
        torch.tensor([0.0, 1.0], dtype=F64),
        "dopri5",
        adjoint=True,
        options={"adjoint_method": "bosh3"},
    )
    sol.ys[-1].sum().backward()
    torch.testing.assert_close(y0.grad, torch.exp(torch.tensor([-1.0], dtype=F64)), rtol=1e-3, atol=0)


# --- 4. NaN/inf returned by f ---------------------------------------------------------------------


def _nan_after_half(t, y):
    a, b = y
    db = -b
    bad = torch.zeros_like(b)
    bad[2] = 1.0
    db = torch.where((bad > 0) & (t > 0.5), torch.full_like(b, float("nan")), db)
    return -a, db


NAN_Y0 = (torch.ones(2, dtype=F64), torch.ones(4, dtype=F64))


@pytest.mark.parametrize("method", fixed_step_methods() + ADAPTIVE)
def test_nan_from_f_names_the_time_and_the_entry(method):
    kwargs = {"step_size": 0.05} if method in fixed_step_methods() else {}
    t = torch.tensor([0.0, 0.4, 1.0], dtype=F64)
    with pytest.raises(
        solvers.SolverError,
        match=rf"{method}: f\(t, y\) returned nan at t=.* \(in f\(t, y\)\[1\], first at index \(2,\), while the state "
        r"y was finite.*\): check f for an invalid operation",
    ) as info:
        solvers.solve(_nan_after_half, NAN_Y0, t, method, **kwargs)
    # the first stage past t=0.5 (fixed steps of 0.05), or the adaptive step that crossed it
    assert 0.5 < _time_in(str(info.value)) <= (0.55 if kwargs else 1.0)


@pytest.mark.parametrize("method", ["rk4", "dopri5", "dopri8", "scipy-DOP853"])
def test_inf_from_f_is_reported_as_such(method):
    def f(t, y):
        return torch.where(t > 0.25, torch.full_like(y, float("inf")), -y)

    kwargs = {"step_size": 0.1} if method == "rk4" else {}
    with pytest.raises(
        solvers.SolverError,
        match=rf"{method}: f\(t, y\) returned inf at t=0\.[23]\d* \(in f\(t, y\), first at index \(0, 0\),",
    ):
        solvers.solve(f, torch.ones(1, 3, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), method, **kwargs)


# --- 5. misspelled names get a suggestion ---------------------------------------------------------


def _variants(name: str) -> list[str]:
    swapped = name.replace("-", "#").replace("_", "-").replace("#", "_")
    return sorted({name.upper(), name.capitalize(), swapped, name.lower()} - {name})


@pytest.mark.parametrize("name", solvers.available())
def test_every_method_name_misspelled_gets_a_suggestion(name):
    for wrong in _variants(name):
        with pytest.raises(
            ValueError, match=rf"unknown method {re.escape(repr(wrong))}; did you mean {re.escape(repr(name))}\?"
        ):
            solvers.get(wrong)


@pytest.mark.parametrize(
    ("wrong", "right"),
    [
        ("RK4", "rk4"),
        ("Euler", "euler"),
        ("rk-4", "rk4"),
        ("dopri 5", "dopri5"),
        ("eulr", "euler"),
        ("scipy_radau", "scipy-Radau"),
        ("SCIPY-BDF", "scipy-BDF"),
        ("adaptive-heun", "adaptive_heun"),
        ("rk5", "rk4"),
    ],
)
def test_misspelled_method_through_solve(wrong, right):
    with pytest.raises(ValueError, match=rf"unknown method '{wrong}'; did you mean '{right}'\? Valid methods: "):
        solvers.solve(lambda t, y: -y, torch.ones(1, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), wrong)


def test_misspelled_adjoint_method_gets_a_suggestion():
    with pytest.raises(
        ValueError, match=r"dopri5: options\['adjoint_method'\]: unknown method 'RK4'; did you mean 'rk4'\?"
    ):
        solvers.solve(
            lambda t, y: -y,
            torch.ones(1, dtype=F64, requires_grad=True),
            torch.tensor([0.0, 1.0], dtype=F64),
            "dopri5",
            adjoint=True,
            options={"adjoint_method": "RK4"},
        )


def test_misspelled_option_gets_a_suggestion():
    with pytest.raises(
        ValueError, match=r"unknown option\(s\) 'First_Step'; did you mean 'first_step' for 'First_Step'\?"
    ):
        solvers.solve(
            lambda t, y: -y,
            torch.ones(1, dtype=F64),
            torch.tensor([0.0, 1.0], dtype=F64),
            "scipy-RK45",
            options={"First_Step": 0.1},
        )
