"""The same field through every kind of solver."""

import numpy as np
import pytest
import torch

import solvers
from dreamode import DREAM

F64 = torch.float64
SMOOTH = dict(tau_min=0.01, dtype=F64)  # τ's lower clamp never binds: the field is smooth per step


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    ref = DREAM(3, 4, rank=2, solver="dopri5", rtol=1e-10, atol=1e-12, **SMOOTH)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 3, generator=g, dtype=F64)
    dt = torch.tensor([[0.5] * 5, [0.3, 0.7, 0.2, 0.5, 0.4]], dtype=F64)
    with torch.no_grad():
        out, state = ref(x, dt=dt)
    return ref, x, dt, out, state


def run(ref, x, dt, **kwargs):
    m = DREAM(3, 4, rank=2, **SMOOTH, **kwargs)
    m.load_state_dict(ref.state_dict())
    with torch.no_grad():
        return m(x, dt=dt), m


FIXED = [n for n in solvers.available() if solvers.get(n).backend == "solvers"]


# The coarsest steps pass the stability limit 2·tau_min on purpose (the field is smooth there).
@pytest.mark.filterwarnings("ignore::dreamode.StiffStepWarning")
@pytest.mark.parametrize("method", FIXED)
def test_fixed_step_solutions_converge_to_dopri5_with_their_order(problem, method):
    ref, x, dt, out_ref, state_ref = problem
    order = solvers.get(method).order
    steps = [0.1, 0.05, 0.025, 0.0125] if order < 4 else [0.2, 0.1, 0.05, 0.025]
    errors = []
    for h in steps:
        (out, state), _ = run(ref, x, dt, solver=method, max_step=h)
        errors.append(max(float((out - out_ref).abs().max()), float((state.U - state_ref.U).abs().max())))
    slope = np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert abs(slope - order) < 0.15, (method, errors, slope)


def test_dopri5_agrees_with_scipy_dop853(problem):
    ref, x, dt, out_ref, state_ref = problem
    (out, state), _ = run(ref, x, dt, solver="scipy-DOP853", rtol=1e-11, atol=1e-13)
    torch.testing.assert_close(out, out_ref, rtol=0, atol=1e-9)
    for a, b in zip(state, state_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


def test_hold_input_jumps_are_step_boundaries(problem):
    """One physical-time solve across all observations, told the jump times, equals DREAM's
    per-observation restarts; without the jump times the error estimate straddles the jumps."""
    ref, x, dt, out_ref, _ = problem
    field = ref.fields[0]
    for b in range(2):
        t_obs = torch.cat([torch.zeros(1, dtype=F64), dt[b].cumsum(0)])

        def path(t, b=b, t_obs=t_obs):
            # hold: x(t) = x_i on (t_{i-1}, t_i]
            i = int(torch.searchsorted(t_obs[1:-1], t.detach().reshape(1), right=False)[0])
            return x[b : b + 1, i]

        z0 = field.initial_state(1)
        with torch.no_grad():
            sol = solvers.solve(
                field.driven_by(path),
                tuple(z0),
                t_obs,
                method="dopri5",
                rtol=1e-10,
                atol=1e-12,
                options={"jump_t": t_obs[1:-1]},
            )
        torch.testing.assert_close(sol.ys[0][1:, 0], out_ref[b], rtol=0, atol=1e-8)


@pytest.mark.filterwarnings("ignore::dreamode.StiffStepWarning")
def test_stats_count_every_evaluation(problem):
    ref, x, dt, *_ = problem
    (_, _), m = run(ref, x, dt, solver="rk4", max_step=0.1)
    # per observation: the batch takes the most sub-steps any sample needs; 4 stages each
    n_max = torch.ceil(dt / 0.1 * (1 - 1e-6)).amax(dim=0)
    assert m.solve_stats[0].nfe == int(4 * n_max.sum())
    (_, _), m = run(ref, x, dt, solver="dopri5")
    assert m.solve_stats[0].nfe > 0 and m.solve_stats[0].steps > 0


# --- silent failures of adaptive solves (reliability issue) ---------------------------------------

LONG_GAP = torch.tensor([[0.5, 1000.0]], dtype=F64)  # a gap of 10^4 tau_min: stiff for explicit methods


@pytest.mark.parametrize("method", ["dopri5", "scipy-RK45"])
def test_adaptive_step_budget_names_the_gap(method):
    m = DREAM(3, 4, rank=2, solver=method, solver_options={"max_num_steps": 30}, **SMOOTH)
    x = torch.randn(1, 2, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    with (
        pytest.raises(
            solvers.SolverError,
            match=r"DREAM: the solve of step 1 .*max_num_steps=30 reached near t=.*The longest gap of this step is "
            r"1000 time units, .* times this field's explicit stability limit .*solver='ltc-fused'",
        ),
        torch.no_grad(),
    ):
        m(x, dt=LONG_GAP)


def test_adaptive_solves_get_a_step_budget_by_default(monkeypatch):
    import dreamode._integrate

    monkeypatch.setattr(dreamode._integrate, "MAX_STEPS_PER_OBSERVATION", 30)  # the default, made small
    m = DREAM(3, 4, rank=2, solver="dopri5", **SMOOTH)
    x = torch.randn(1, 2, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    with pytest.raises(solvers.SolverError, match=r"dopri5: max_num_steps=30 reached near t="), torch.no_grad():
        m(x, dt=LONG_GAP)
    with torch.no_grad():  # an ordinary gap stays well within it
        m(x, dt=torch.tensor([[0.5, 0.5]], dtype=F64))


@pytest.mark.parametrize("method", ["dopri5", "scipy-RK45"])
def test_nan_from_the_field_names_the_state_component(method):
    from dreamode._field import DREAMField
    from dreamode._integrate import Integrator, integrate_layer

    m = DREAM(3, 4, rank=2, solver=method, **SMOOTH)
    field: DREAMField = m.fields[0]
    with torch.no_grad():
        field.eta[1] = float("nan")
    x = torch.randn(1, 2, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    with (
        pytest.raises(
            solvers.SolverError,
            match=rf"DREAM: the solve of step 0 .*{method}: f\(t, y\) returned nan at t=0 \(in f\(t, y\)\[\d\], .*"
            r"\(the state's components: \[0\] h, ",
        ),
        torch.no_grad(),
    ):
        integrate_layer(field, Integrator(method), x, torch.full((1, 2), 0.5, dtype=F64), None, field.initial_state(1))


@pytest.mark.parametrize(("wrong", "right"), [("RK4", "rk4"), ("Dopri5", "dopri5"), ("LTC-Fused", "ltc-fused")])
def test_misspelled_solver_gets_a_suggestion(wrong, right):
    with pytest.raises(ValueError, match=rf"unknown solver '{wrong}'; did you mean '{right}'\?"):
        DREAM(3, 4, rank=2, solver=wrong)
