"""Numerics at the edges: long explicit steps, NaN/inf arising inside a solve, adaptive failures, dtypes.

Inputs that are non-finite from the start are refused by the argument checks (test_errors.py);
here every input is finite and valid, and the trouble arises inside the solve.
"""

from __future__ import annotations

import math
import re
import warnings

import pytest
import torch

import solvers
from dreamode import DREAM, DREAMState, StiffStepWarning

I, H, R = 3, 5, 2
F32, F64 = torch.float32, torch.float64
FIXED = ["euler", "midpoint", "heun", "rk4", "ltc-fused"]
ALL = [*solvers.available(), "ltc-fused"]
# Up to seconds per forward each even at loose tolerances (Python stepping, Jacobians): the second CI
# step runs them; dopri5 and scipy-RK45 stand for their backends in the quick run.
SLOW = {"adaptive_heun", "fehlberg2", "bosh3", "dopri8", "scipy-Radau", "scipy-BDF", "scipy-DOP853", "scipy-LSODA"}


def _model(solver="euler", dtype=F64, seed=0, **kw) -> DREAM:
    torch.manual_seed(seed)
    return DREAM(I, H, R, solver=solver, dtype=dtype, **kw)


def _x(B, T, dtype=F64, seed=1, scale=1.0):
    return scale * torch.randn(B, T, I, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _first_nonfinite(out: torch.Tensor) -> tuple[int, int]:
    """(step, sample) of the first non-finite output row: an independent search."""
    B, T = out.shape[:2]
    for i in range(T):
        for b in range(B):
            if not all(math.isfinite(v) for v in out[b, i].tolist()):
                return i, b
    raise AssertionError("all finite")


@pytest.fixture
def no_stiff_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", StiffStepWarning)
        yield


# -- long explicit steps: StiffStepWarning ----------------------------------------------------


@pytest.mark.parametrize("solver", ["euler", "rk4", "midpoint"])
@pytest.mark.parametrize("grad", [False, True])
def test_a_gap_beyond_the_stability_limit_warns_and_names_the_fixes(solver, grad):
    model = _model(solver)
    dt = torch.full((2, 6), 0.1, dtype=F64)
    dt[1, 3] = 0.5  # the limit at the defaults is 2·min(tau_min, 1/homeostasis_rate) = 0.2
    with pytest.warns(StiffStepWarning) as rec, torch.set_grad_enabled(grad):
        model(_x(2, 6), dt=dt)
    message = str(rec[0].message)
    assert re.search(rf"explicit '{solver}' steps of up to 0\.5 time units exceed the stability limit 0\.2", message)
    for fix in ("max_step=0.1", "solver='ltc-fused'", "'dopri5'", "rescale the time axis"):
        assert fix in message
    # the warning points at the caller's line, not into the library
    assert rec[0].filename == __file__


def test_no_warning_within_the_limit_or_with_a_fix(no_stiff_warning):
    x = _x(2, 8)
    _model("euler")(x, dt=torch.full((2, 8), 0.2, dtype=F64))  # at the limit
    long = torch.full((2, 8), 1.5, dtype=F64)
    # each suggested fix: sub-steps, the semi-implicit step, an adaptive solver
    for kw in (dict(solver="euler", max_step=0.1), dict(solver="rk4", max_step=0.1), dict(solver="ltc-fused")):
        with torch.no_grad():
            out, _ = _model(**kw)(x, dt=long)
        # with Δt/τ <= 1 (Euler, τ >= tau_min = 0.1) or any Δt (ltc-fused) the h update is a convex
        # combination of h and tanh(u): |h| < 1 always; an unstable explicit step breaks this
        assert float(out.abs().max()) < 1.0, kw
    with torch.no_grad():
        out, _ = _model("dopri5", rtol=1e-4, atol=1e-6)(x[:, :3], dt=long[:, :3])
    assert float(out.abs().max()) < 1.0


def test_the_stiff_result_without_a_fix_is_flagged_not_silent():
    """dt = 2 at the defaults: explicit Euler leaves [-1, 1] (finite garbage); the warning is the signal."""
    model = _model("euler")
    x = _x(2, 20)
    with pytest.warns(StiffStepWarning), torch.no_grad():
        out, _ = model(x, dt=torch.full((2, 20), 2.0, dtype=F64))
    assert float(out.abs().max()) > 1.0  # what the warning is about


# -- NaN/inf arising inside a solve -----------------------------------------------------------


@pytest.mark.filterwarnings("ignore::dreamode.StiffStepWarning")
@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_euler_blow_up_raises_with_step_time_and_sample(grad, dtype):
    B, T = 3, 100
    model = _model("euler", dtype)
    raw = _model("euler", dtype, check_finite=False)
    g = torch.Generator().manual_seed(5)
    steps = 0.05 + 0.1 * torch.rand(B, T, generator=g, dtype=F64)
    # from step 6 on, sample 2 only takes gaps of 100 time units: each explicit step multiplies h by
    # about 1 - Δt/τ, so h grows geometrically until its squares overflow (float32: step 15, float64: 68)
    steps[2, 6:] = 100.0
    times = 100 + torch.cumsum(steps, 1)
    x = _x(B, T, dtype)
    with torch.set_grad_enabled(grad):
        out, _ = raw(x, times=times)
    i, b = _first_nonfinite(out.detach())
    assert b == 2 and i >= 6
    with pytest.raises(solvers.SolverError) as info, torch.set_grad_enabled(grad):
        model(x, times=times)
    msg = str(info.value)
    assert f"non-finite (NaN/inf) at step {i} (t={float(times[b, i]):.6g}) of sample {b};" in msg
    assert re.search(
        r"explicit 'euler' step of 100(\.\d*)? time units \(step 6\), beyond the stability limit 0\.2", msg
    )
    assert "max_step=0.1" in msg and "solver='ltc-fused'" in msg and "check_finite=False" in msg


@pytest.mark.filterwarnings("ignore::dreamode.StiffStepWarning")
def test_blow_up_of_the_generic_fixed_step_path_and_the_time_without_times():
    model = _model("rk4")
    x = _x(2, 30)
    dt = torch.full((2, 30), 40.0, dtype=F64)
    out, _ = _model("rk4", check_finite=False)(x, dt=dt)
    i, b = _first_nonfinite(out)
    with pytest.raises(solvers.SolverError, match=rf"at step {i} \(t={40.0 * (i + 1):.6g} after the start of x\)"):
        model(x, dt=dt)


def test_non_finite_parameter_is_named_with_its_layer():
    model = DREAM(I, H, R, num_layers=2, dtype=F64)
    with torch.no_grad():
        model.fields[1].W[0, 0] = math.inf
    times = 7.0 + 0.1 * torch.arange(5, dtype=F64)
    with pytest.raises(
        solvers.SolverError, match=r"at step 0 \(t=7\) of sample 0 in layer 1; .*parameter\(s\) W in layer 1"
    ):
        model(_x(2, 5), times=times)


def test_float32_overflow_from_huge_inputs():
    model = _model("euler", F32)
    with pytest.raises(solvers.SolverError, match=r"at step 0 .*too large for torch.float32 \(overflow"):
        model(_x(2, 4, F32, scale=1e25))
    out, _ = model.double()(_x(2, 4, F64, scale=1e25))  # the same in float64 is finite
    assert bool(torch.isfinite(out).all())


def test_non_finite_only_in_the_final_state_is_caught():
    """A last step that turns U non-finite leaves every output finite: the final states are checked too."""
    model = DREAM(I, H, R, num_layers=2, dtype=F64)
    B, T = 3, 4
    outs = [torch.zeros(B, T, H, dtype=F64), torch.zeros(B, T, H, dtype=F64)]
    states = [model.fields[0].initial_state(B), model.fields[1].initial_state(B)]
    states[1].U[2, 0, 1] = math.inf
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[2, 3:] = False  # sample 2 has length 3: its last step is 2
    step = torch.full((B, T), 0.1, dtype=F64) * valid
    with pytest.raises(solvers.SolverError, match=r"at step 2 \(t=0\.3 after the start of x\) of sample 2 in layer 1"):
        model._check_solution("DREAM", outs, states, valid, step, None, None)


def test_a_non_finite_state_passed_in_is_named():
    model = _model("euler")
    state = model.init_state(2)
    state.error_var[1, 2] = math.nan
    with pytest.raises(ValueError, match=r"state.error_var contains NaN or inf \(first at index \(1, 2\)\)"):
        model(_x(2, 4), state)


@pytest.mark.filterwarnings("ignore::dreamode.StiffStepWarning")
def test_check_finite_false_returns_the_raw_output():
    model = _model("euler", check_finite=False)
    assert "check_finite=False" in repr(model)
    with pytest.warns(StiffStepWarning):
        out, _ = model(_x(1, 100), dt=torch.full((1, 100), 100.0, dtype=F64))  # geometric growth, as above
    assert not bool(torch.isfinite(out).all())
    with pytest.raises(TypeError, match=r"check_finite must be a bool, got 'yes'"):
        DREAM(I, H, R, check_finite="yes")


def test_an_overflowing_screening_sum_of_finite_values_is_not_an_error():
    model = _model("euler", F32)
    B, T = 2, 4
    huge = torch.full((B, T, H), 3e38, dtype=F32)  # finite; their sum is inf in float32 and float64 alike
    state = model.init_state(B)
    valid = torch.ones(B, T, dtype=torch.bool)
    model._check_solution("DREAM", [huge], [state], valid, torch.full((B, T), 0.1, dtype=F64), None, None)
    huge[1, 2, 3] = math.nan
    with pytest.raises(solvers.SolverError, match=r"at step 2 \(t=0\.3 after the start of x\) of sample 1"):
        model._check_solution("DREAM", [huge], [state], valid, torch.full((B, T), 0.1, dtype=F64), None, None)


def test_solvers_solve_reports_where_the_field_turned_nan():
    """``solvers.solve`` itself: a field that returns NaN after t = 0.5, every registered method."""

    def f(t, y):
        return -y + (math.nan if float(t) > 0.5 else 0.0)

    t = torch.linspace(0, 1, 11, dtype=F64)
    for method in solvers.available():
        with pytest.raises(solvers.SolverError, match=r"t=([0-9.e-]+)") as info:
            solvers.solve(f, torch.ones(2, dtype=F64), t, method)
        where = float(re.search(r"t=([0-9.e+-]+)", str(info.value)).group(1))
        assert 0.5 <= where <= 0.7, (method, str(info.value))


# -- adaptive solvers that cannot meet the tolerance ------------------------------------------


def test_adaptive_max_num_steps_reports_the_solver_and_the_time():
    model = _model("dopri5", rtol=1e-12, atol=1e-14, solver_options={"max_num_steps": 4})
    with pytest.raises(
        solvers.SolverError, match=r"dopri5: max_num_steps=4 reached near t=[0-9.e-]+; loosen rtol/atol, raise options"
    ):
        model(_x(2, 5))


def test_adaptive_failure_names_the_observation_step():
    model = _model("dopri5", rtol=1e-12, atol=1e-14, solver_options={"max_num_steps": 4})
    with pytest.raises(solvers.SolverError, match=r"DREAM: the solve of step 0 .* failed: dopri5: max_num_steps"):
        model(_x(2, 5))


# -- dtypes -----------------------------------------------------------------------------------


def _solver_param(name):
    marks = [pytest.mark.slow] if name in SLOW else []
    return pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("solver", [_solver_param(s) for s in ALL])
def test_float32_and_float64_on_every_solver(solver):
    tol = {} if solver in FIXED else dict(rtol=1e-5, atol=1e-7)
    m64 = _model(solver, F64, **tol)
    m32 = _model(solver, F32, **tol)
    m32.load_state_dict(m64.state_dict())
    x = _x(2, 4)
    times = torch.tensor([[0.1, 0.25, 0.3, 0.42], [0.05, 0.2, 0.38, 0.5]], dtype=F64)
    with torch.no_grad():
        o64, s64 = m64(x, times=times)
        o32, s32 = m32(x.float(), times=times)
    assert o64.dtype == F64 and all(c.dtype == F64 for c in s64)
    assert o32.dtype == F32 and all(c.dtype == F32 for c in s32)
    assert float((o32.double() - o64).abs().max()) < 1e-4
    for a, b in zip(s32, s64):
        assert float((a.double() - b).abs().max()) <= 1e-4 * max(1.0, float(b.abs().max()))


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 3e-2), (torch.float16, 5e-3)])
@pytest.mark.parametrize("solver", FIXED)
def test_half_precision_on_fixed_step_solvers_tracks_float32(solver, dtype, tol):
    """Measured worst case over 6 seeds, 30 irregular steps: bfloat16 7e-3, float16 9e-4 (tol ~4x that)."""
    T = 30 if solver != "ltc-fused" else 15  # ltc-fused runs the generic path: a second a forward+backward
    half = _model(solver, dtype, seed=3)
    ref = _model(solver, F32, seed=3)
    ref.load_state_dict({k: v.float() for k, v in half.state_dict().items()})  # the same rounded parameters
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, T, I, generator=g).to(dtype)
    times = torch.cumsum(0.02 + 0.15 * torch.rand(3, T, generator=g, dtype=F64), 1)
    out, state = half(x, times=times)
    out.float().square().sum().backward()
    with torch.no_grad():
        out32, _ = ref(x.float(), times=times)
    assert out.dtype == dtype and state.U.dtype == dtype
    assert float((out.detach().float() - out32).abs().max()) < tol
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in half.parameters())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_refused_by_adaptive_and_scipy_solvers(dtype):
    msg = rf"solver 'dopri5' does not support dtype {dtype}.*torch.float32 or torch.float64.*fixed-step solver"
    with pytest.raises(TypeError, match=msg):
        DREAM(I, H, R, solver="dopri5", dtype=dtype)
    with pytest.raises(TypeError, match=r"solver 'scipy-RK45' does not support dtype"):
        DREAM(I, H, R, solver="scipy-RK45", dtype=dtype)
    model = DREAM(I, H, R, solver="bosh3").to(dtype)  # cast after construction: refused at forward
    with pytest.raises(TypeError, match=r"solver 'bosh3' does not support dtype"):
        model(torch.zeros(2, 3, I, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.complex64, torch.int32, getattr(torch, "float8_e4m3fn", torch.uint8)])
def test_other_dtypes_are_refused(dtype):
    with pytest.raises(TypeError, match=rf"dtype {dtype} is not supported; use torch.float32 or torch.float64"):
        DREAM(I, H, R, dtype=dtype)


def test_state_round_trip_keeps_dtype_in_half_precision():
    model = _model("euler", torch.bfloat16)
    _, state = model(_x(2, 3, torch.bfloat16))
    back = DREAMState.from_dict({k: v.clone() for k, v in state.as_dict().items()})
    assert all(c.dtype == torch.bfloat16 for c in back)
