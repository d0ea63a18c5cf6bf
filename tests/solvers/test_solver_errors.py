"""Every error ``solvers`` raises, with its message; the registry and the tableau self-checks."""

from __future__ import annotations

import math
import re

import pytest
import torch
from problems import ALL_PROBLEMS, empirical_order, fixed_step_methods

import solvers
import solvers._registry

F64 = torch.float64
T01 = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
Y0 = torch.ones(2, dtype=F64)


def decay(t, y):
    return -y


def solve(*args, **kwargs):
    return solvers.solve(*args, **kwargs)


# --- method and option names ---------------------------------------------------------------------


def test_unknown_method_lists_valid_names_and_suggests_the_closest():
    with pytest.raises(ValueError, match=r"unknown method 'rk5'; did you mean 'rk4'\? Valid methods: ") as info:
        solve(decay, Y0, T01, "rk5")
    for name in solvers.available():
        assert name in str(info.value)


def test_unknown_method_without_a_close_match():
    with pytest.raises(ValueError, match=r"unknown method 'zzzzzz'\. Valid methods: adaptive_heun, bosh3"):
        solve(decay, Y0, T01, "zzzzzz")


def test_method_of_the_wrong_type():
    with pytest.raises(TypeError, match=r"method must be a name or a solvers.Solver, got int"):
        solve(decay, Y0, T01, 42)


def test_unknown_option_of_a_fixed_step_method():
    with pytest.raises(
        ValueError, match=r"solvers.solve\(rk4\): unknown option\(s\) 'stepsize'; valid options: max_num_steps$"
    ):
        solve(decay, Y0, T01, "rk4", options={"stepsize": 0.1})


def test_unknown_option_of_an_adaptive_method_lists_the_valid_ones():
    with pytest.raises(
        ValueError,
        match=r"unknown option\(s\) 'max_num_step'; did you mean 'max_num_steps' for 'max_num_step'\? valid options: .*first_step",
    ):
        solve(decay, Y0, T01, "dopri5", options={"max_num_step": 10})


@pytest.mark.parametrize("method", ["euler", "rk4", "scipy-RK45", "scipy-Radau"])
def test_adjoint_on_a_method_without_one(method):
    with pytest.raises(
        ValueError, match=rf"adjoint=True is not supported by {method}; methods with an adjoint: .*dopri5"
    ):
        solve(decay, Y0, T01, method, adjoint=True)


def test_adjoint_params_without_adjoint():
    with pytest.raises(ValueError, match=r"adjoint_params is only used with adjoint=True"):
        solve(decay, Y0, T01, "dopri5", adjoint_params=[torch.ones(1, requires_grad=True)])


@pytest.mark.parametrize("method", [m for m in solvers.available() if not solvers.get(m).differentiable])
def test_requires_grad_input_to_a_scipy_method(method):
    y0 = Y0.clone().requires_grad_()
    with pytest.raises(ValueError, match=rf"{method} is not differentiable but y0 require\(s\) grad; detach"):
        solve(decay, y0, T01, method)
    t = T01.clone().requires_grad_()
    with pytest.raises(ValueError, match=r"not differentiable but t require\(s\) grad"):
        solve(decay, Y0, t, method)
    with torch.no_grad():  # no graph is being built: a reference solve is fine
        sol = solve(decay, y0, T01, method)
    torch.testing.assert_close(sol.ys[-1], torch.exp(-T01[-1]) * Y0, rtol=1e-5, atol=0)


# --- t and y0 -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("t", "where"),
    [
        ([0.0, 1.0, 1.0, 2.0], r"t\[1\]=1, t\[2\]=1"),
        ([0.0, 1.0, 0.5, 2.0], r"t\[1\]=1, t\[2\]=0.5"),
        ([1.0, 0.5, 0.7], r"t\[1\]=0.5, t\[2\]=0.7"),
    ],
)
def test_non_monotone_t(t, where):
    with pytest.raises(ValueError, match=r"t must be strictly increasing or strictly decreasing; " + where):
        solve(decay, Y0, torch.tensor(t, dtype=F64), "rk4")


def test_two_dimensional_t():
    with pytest.raises(ValueError, match=r"t must be a non-empty 1-D tensor, got shape \(2, 2\)"):
        solve(decay, Y0, torch.zeros(2, 2, dtype=F64), "rk4")


def test_empty_t():
    with pytest.raises(ValueError, match=r"t must be a non-empty 1-D tensor, got shape \(0,\)"):
        solve(decay, Y0, torch.zeros(0, dtype=F64), "rk4")


def test_t_not_a_tensor_or_not_floating():
    with pytest.raises(TypeError, match=r"t must be a 1-D torch.Tensor, got list"):
        solve(decay, Y0, [0.0, 1.0], "rk4")
    with pytest.raises(TypeError, match=r"t must be floating point \(float64 recommended\), got torch.int64"):
        solve(decay, Y0, torch.arange(3), "rk4")


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_t(bad):
    with pytest.raises(ValueError, match=r"solvers.solve\(rk4\): t contains NaN or inf"):
        solve(decay, Y0, torch.tensor([0.0, bad], dtype=F64), "rk4")


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_y0(bad):
    with pytest.raises(ValueError, match=r"solvers.solve\(dopri5\): y0 contains NaN or inf"):
        solve(decay, torch.tensor([1.0, bad], dtype=F64), T01, "dopri5")
    state = (Y0, torch.tensor([bad]))
    with pytest.raises(ValueError, match=r"y0\[1\] contains NaN or inf"):
        solve(lambda t, y: y, state, T01, "rk4")


def test_bad_y0_types():
    with pytest.raises(TypeError, match=r"y0 must be floating point, got torch.int64"):
        solve(decay, torch.ones(2, dtype=torch.int64), T01, "rk4")
    with pytest.raises(TypeError, match=r"y0 must be a torch.Tensor, got list"):
        solve(decay, [Y0], T01, "rk4")
    with pytest.raises(TypeError, match=r"y0\[0\] must be a torch.Tensor, got float"):
        solve(decay, (1.0, Y0), T01, "rk4")
    with pytest.raises(ValueError, match=r"y0 must be a tensor or a non-empty tuple of tensors, got an empty tuple"):
        solve(decay, (), T01, "rk4")


@pytest.mark.parametrize("name", ["rtol", "atol"])
@pytest.mark.parametrize("value", [0.0, -1e-6, math.inf, math.nan])
def test_bad_tolerances(name, value):
    with pytest.raises(ValueError, match=rf"{name} must be a positive finite number, got {re.escape(repr(value))}"):
        solve(decay, Y0, T01, "dopri5", **{name: value})


# --- step_size ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["dopri5", "scipy-RK45"])
def test_step_size_given_to_an_adaptive_method(method):
    with pytest.raises(ValueError, match=rf"step_size applies to fixed-step methods; {method} is adaptive"):
        solve(decay, Y0, T01, method, step_size=0.1)


@pytest.mark.parametrize("value", [-0.1, 0.0, math.inf, math.nan])
def test_bad_step_size(value):
    with pytest.raises(ValueError, match=rf"step_size must be a positive finite number, got {re.escape(repr(value))}"):
        solve(decay, Y0, T01, "rk4", step_size=value)


# --- f returning the wrong thing, for each backend ------------------------------------------------

BACKEND_SAMPLES = ["rk4", "dopri5", "scipy-RK45"]
TUPLE_Y0 = (torch.ones(2, dtype=F64), torch.ones(1, dtype=F64))


@pytest.mark.parametrize("method", BACKEND_SAMPLES)
def test_f_returning_a_wrong_shape(method):
    with pytest.raises(
        ValueError, match=rf"{method}: f\(t, y\)\[0\] has shape \(3,\), expected \(2,\) \(the shape of y\)"
    ):
        solve(lambda t, y: torch.ones(3, dtype=F64), Y0, T01, method)
    with pytest.raises(ValueError, match=r"f\(t, y\)\[1\] has shape \(2,\), expected \(1,\)"):
        solve(lambda t, y: (y[0], y[0]), TUPLE_Y0, T01, method)


@pytest.mark.parametrize("method", BACKEND_SAMPLES)
def test_f_returning_a_wrong_tuple_length(method):
    with pytest.raises(
        TypeError, match=r"f\(t, y\) must return the structure of y \(2 tensor\(s\)\), got a tuple of 3"
    ):
        solve(lambda t, y: (y[0], y[1], y[1]), TUPLE_Y0, T01, method)
    with pytest.raises(TypeError, match=r"f\(t, y\) must return the structure of y \(2 tensor\(s\)\), got Tensor"):
        solve(lambda t, y: y[0], TUPLE_Y0, T01, method)


@pytest.mark.parametrize("method", BACKEND_SAMPLES)
def test_f_returning_a_non_float(method):
    with pytest.raises(TypeError, match=r"f\(t, y\)\[0\] must be floating point, got torch.bool"):
        solve(lambda t, y: y > 0, Y0, T01, method)


# --- solves that fail -----------------------------------------------------------------------------


def _blow_up(t, y):
    return y * y  # y' = y^2, y(0) = 1: y = 1 / (1 - t) blows up at t = 1


def _time_in(message: str) -> float:
    found = re.search(r"near t=([-+0-9.e]+)", message)
    assert found, message
    return float(found.group(1))


# dopri5/dopri8 reach the underflow in ~1 s; the low-order torchdiffeq methods take 4-40 s of
# Python stepping to get there, and share the code path tested here.
@pytest.mark.parametrize("method", ["dopri5", "dopri8"])
def test_step_size_underflow_says_where(method):
    with pytest.raises(
        solvers.SolverError, match=rf"{method}: step size underflow near t=.*stiff reference method"
    ) as info:
        solve(_blow_up, torch.ones(1, dtype=F64), torch.tensor([0.0, 2.0], dtype=F64), method)
    assert _time_in(str(info.value)) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("method", [m for m in solvers.available() if solvers.get(m).backend == "scipy"])
def test_scipy_failure_says_where(method):
    # LSODA stops on the first inf derivative (it would otherwise retry forever); the others on
    # their step-size floor.
    with pytest.raises(solvers.SolverError, match=rf"{method}: .*(step size|f\(t, y\) returned inf)") as info:
        solve(_blow_up, torch.ones(1, dtype=F64), torch.tensor([0.0, 2.0], dtype=F64), method)
    message = str(info.value).replace("at t=", "near t=")
    assert _time_in(message) == pytest.approx(1.0, abs=1e-3)


def test_max_num_steps_exceeded():
    with pytest.raises(
        solvers.SolverError,
        match=r"dopri5: max_num_steps=5 reached near t=[0-9.e-]+; loosen rtol/atol, raise options=\{'max_num_steps'.*"
        r"from t=0 to t=100: 5 steps accepted, 0 rejected, the last step size",
    ):
        solve(
            decay,
            Y0,
            torch.tensor([0.0, 100.0], dtype=F64),
            "dopri5",
            rtol=1e-10,
            atol=1e-12,
            options={"max_num_steps": 5},
        )


@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_non_finite_solution_of_a_fixed_step_method_reports_the_time_and_the_step(method):
    t = torch.tensor([0.0, 0.5, 2.0, 3.0], dtype=F64)  # the blow-up at t=1 lies in the second interval
    with pytest.raises(
        solvers.SolverError,
        match=rf"{method}: f\(t, y\) returned inf at t=.*f overflowed.*With steps of 0.001: .*smaller step_size",
    ) as info:
        solve(_blow_up, torch.ones(1, dtype=F64), t, method, step_size=0.001)
    assert float(re.search(r"at t=([-+0-9.e]+)", str(info.value)).group(1)) == pytest.approx(1.0, abs=0.02)


# --- the registry ---------------------------------------------------------------------------------


def test_get_unknown_name():
    with pytest.raises(ValueError, match=r"unknown method 'dopri'; did you mean 'dopri\d'\? Valid methods: "):
        solvers.get("dopri")


def test_get_returns_the_documented_fields():
    entry = solvers.get("dopri5")
    assert (entry.name, entry.order, entry.adaptive, entry.differentiable, entry.supports_adjoint, entry.backend) == (
        "dopri5",
        5,
        True,
        True,
        True,
        "torchdiffeq",
    )
    assert not solvers.get("rk4").adaptive and solvers.get("scipy-BDF").backend == "scipy"


@pytest.fixture
def scratch_registry(monkeypatch):
    """A copy of the registry for the test to register into; the real one is left untouched."""
    monkeypatch.setattr(solvers._registry, "_REGISTRY", dict(solvers._registry._REGISTRY))


def test_register_a_duplicate_name(scratch_registry):
    class Other(solvers.FixedStepSolver):
        tableau = solvers.ButcherTableau(c=[0], a=[[]], b=[1])

    with pytest.raises(ValueError, match=r"register: a solver named 'rk4' is already registered \(RK4\)"):
        solvers.register("rk4", order=1)(Other)


def test_register_bad_arguments():
    with pytest.raises(TypeError, match=r"register: name must be a non-empty str, got ''"):
        solvers.register("", order=1)
    with pytest.raises(ValueError, match=r"register: order must be a positive int, got 0"):
        solvers.register("x", order=0)
    with pytest.raises(ValueError, match=r"cannot support the adjoint without being differentiable"):
        solvers.register("x", order=1, differentiable=False, supports_adjoint=True)


RALSTON = solvers.ButcherTableau(c=[0, 2 / 3], a=[[], [2 / 3]], b=[1 / 4, 3 / 4])


def test_a_custom_solver_is_picked_up_everywhere(scratch_registry):
    @solvers.register("ralston", order=2)
    class Ralston(solvers.FixedStepSolver):
        """Ralston's method: order 2, fixed step, 2 stages, no error estimate, no adjoint."""

        tableau = RALSTON

    assert "ralston" in solvers.available()
    assert "ralston" in fixed_step_methods()  # what test_order.py parametrises over
    entry = solvers.get("ralston")
    assert (entry.order, entry.adaptive, entry.backend, entry.solver) == (2, False, "solvers", Ralston)
    assert entry.description.startswith("Ralston's method")
    # The order machinery measures it like the built-in methods.
    for problem in ALL_PROBLEMS:
        slope, _ = empirical_order("ralston", problem())
        assert slope == pytest.approx(2.0, abs=0.15), problem.__name__
    # By name, class or instance, with exact stats.
    t = torch.tensor([0.0, 1.0], dtype=F64)
    results = [solvers.solve(decay, Y0, t, m, step_size=0.1) for m in ("ralston", Ralston, Ralston())]
    for sol in results:
        torch.testing.assert_close(sol.ys, results[0].ys, rtol=0, atol=0)
        assert sol.stats.nfe == 20 and sol.method == "ralston"
    # Registering the same class again is harmless (a module imported twice).
    solvers.register("ralston", order=2)(Ralston)


def test_an_unregistered_solver_instance_has_no_adjoint():
    class Loose(solvers.FixedStepSolver):
        tableau = RALSTON

    sol = solvers.solve(decay, Y0, T01, Loose(), step_size=0.05)
    torch.testing.assert_close(sol.ys[-1], torch.exp(-T01[-1]) * Y0, rtol=1e-3, atol=0)
    with pytest.raises(ValueError, match=r"adjoint=True is not supported by Loose"):
        solvers.solve(decay, Y0, T01, Loose(), adjoint=True)


# --- ButcherTableau self-checks -------------------------------------------------------------------


def test_tableau_rows_must_sum_to_c():
    with pytest.raises(ValueError, match=r"ButcherTableau: row 1 of a sums to 0.4, expected c\[1\] = 0.5"):
        solvers.ButcherTableau(c=[0, 0.5], a=[[], [0.4]], b=[0, 1])
    with pytest.raises(ValueError, match=r"row 0 of a sums to 0.0, expected c\[0\] = 0.1"):
        solvers.ButcherTableau(c=[0.1], a=[[]], b=[1])


def test_tableau_weights_must_sum_to_one():
    with pytest.raises(ValueError, match=r"ButcherTableau: weights b sum to 1.1, expected 1"):
        solvers.ButcherTableau(c=[0, 0.5], a=[[], [0.5]], b=[0.5, 0.6])


def test_tableau_must_be_explicit_lower_triangular():
    with pytest.raises(ValueError, match=r"ButcherTableau: row 1 of a must have 1 entries \(explicit method\), got 2"):
        solvers.ButcherTableau(c=[0, 0.5], a=[[], [0.25, 0.25]], b=[0, 1])


def test_tableau_stage_counts_must_match():
    with pytest.raises(ValueError, match=r"ButcherTableau: c, a and b need 2 stages, got 2, 1, 2"):
        solvers.ButcherTableau(c=[0, 0.5], a=[[]], b=[0, 1])


@pytest.mark.parametrize("method", fixed_step_methods())
def test_builtin_tableaux_are_consistent(method):
    tab = solvers.get(method).solver.tableau
    assert tab.stages == len(tab.c) == len(tab.a) == len(tab.b)
    assert sum(tab.b) == pytest.approx(1.0, abs=1e-15)
    for i, row in enumerate(tab.a):
        assert len(row) == i and sum(row) == pytest.approx(tab.c[i], abs=1e-15)
    if solvers.get(method).order >= 2:
        assert sum(b * c for b, c in zip(tab.b, tab.c)) == pytest.approx(0.5, abs=1e-15)
