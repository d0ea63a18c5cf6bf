"""The fused Euler path (dreamode/_fast_euler.py) against the generic path and against autograd.

* fast == generic: outputs, final state and every gradient (parameters, input, steps, initial
  state) agree to ``rel_dev`` ≤ 1e-12 in float64, for every switch of the cell, masks, irregular
  steps, padding, a given initial state with the homeostatic bound active, the interpolations,
  and with the fast weights recomputed in the backward (long sequences); and with long steps
  (Δt up to 3 time units, ``helpers.LONG_STEPS``);
* the hand-written backward passes ``torch.autograd.gradcheck`` (float64, tiny model);
* the fast path is really taken, stays one autograd node whatever T (no O(T²) graph), frees its
  intermediates after a backward pass and supports ``retain_graph``.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from helpers import (
    CASES,
    F64,
    LONG_DT_MAX,
    LONG_STEPS,
    TOL,
    WITH_STATE0,
    H,
    I,
    R,
    assert_backward_twice_needs_retain_graph,
    assert_same_results,
    counting,
    data,
    gradcheck_fast_path,
    run,
    state0,
)
from reference import STATE_FIELDS, autograd_nodes, rel_dev

from dreamode import DREAM, DREAMCell
from dreamode import _fast_euler as fe
from dreamode import _fast_rk as frk


def _model(seed=0, num_layers=1, **kw) -> DREAM:
    torch.manual_seed(seed)
    return DREAM(I, H, R, num_layers=num_layers, dtype=F64, **kw)


def _assert_fast_equals_generic(model: DREAM, name: str, masked: bool, padded: bool) -> None:
    """Outputs, final state and every gradient of the fast path equal the generic path's (TOL)."""
    x, dt, mask = data()
    lengths = torch.tensor([24, 11, 1, 17]) if padded else None
    s0 = state0(model, 4) if name in WITH_STATE0 else None
    fast = run(model, x, dt, mask if masked else None, lengths, s0, fast=True)
    generic = run(model, x, dt, mask if masked else None, lengths, s0, fast=False)
    assert_same_results(model, s0, fast, generic)


@pytest.mark.parametrize("masked", [False, True], ids=["plain", "mask"])
@pytest.mark.parametrize("padded", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("name", list(CASES))
def test_fast_equals_generic_values_and_gradients(name, masked, padded):
    _assert_fast_equals_generic(_model(**CASES[name]), name, masked, padded)


RK_CASES = {k: CASES[k] for k in ("default", "ltc_off", "both_off", "sleep_off", "tau_clamped", "linear", "cubic")}


@pytest.mark.parametrize("masked", [False, True], ids=["plain", "mask"])
@pytest.mark.parametrize("padded", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("name", list(RK_CASES))
@pytest.mark.parametrize("method", ["rk4", "midpoint", "heun"])
def test_fast_runge_kutta_equals_generic_values_and_gradients(method, name, masked, padded):
    """The fused fixed-step Runge-Kutta path (dreamode/_fast_rk.py) against the generic one."""
    _assert_fast_equals_generic(_model(solver=method, **RK_CASES[name]), name, masked, padded)


@pytest.mark.parametrize("masked", [False, True], ids=["plain", "mask"])
@pytest.mark.parametrize("padded", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("method", ["euler", "rk4", "midpoint", "heun"])
def test_fast_equals_generic_with_long_steps(method, masked, padded):
    """Steps up to 3 time units: outputs, final state and every gradient equal the generic path's."""
    model = _model(solver=method, **LONG_STEPS)
    x, dt, mask = data(dt_max=LONG_DT_MAX)
    lengths = torch.tensor([24, 11, 1, 17]) if padded else None
    m = mask if masked else None
    generic = run(model, x, dt, m, lengths, None, fast=False)
    assert bool(torch.isfinite(generic[0]).all())
    assert_same_results(model, None, run(model, x, dt, m, lengths, None, fast=True), generic)


def test_long_steps_leave_the_fused_loop_when_training():
    """The fused backward takes d max(error_var, 0)/d error_var = 1, so training runs the fused loop
    only while an Euler step of the running statistics is a convex combination: weight
    Δt·error_smoothing/time_step <= 1 (Δt <= 2 at the defaults 0.05 and 0.1), from error_var >= 0.
    Inference runs it for every step: its forward reads max(error_var, 0) as the rule does."""
    model = _model(**LONG_STEPS)
    x, _, _ = data()
    for longest, fused in {2.0: 1, 2.0001: 0}.items():
        dt = torch.full(x.shape[:2], 0.1, dtype=F64)
        dt[1, 5] = longest
        with counting() as calls:
            model(x, dt=dt)[0].sum().backward()
        assert calls["seq"] == fused, (longest, calls)
        with counting() as calls, torch.no_grad():
            model(x, dt=dt)
        assert calls["seq"] == 1, (longest, calls)
    z = model.init_state(x.shape[0])
    z = z._replace(error_var=z.error_var.clone())
    z.error_var[2, 0] = -1e-3  # e.g. a state saved by a run whose long steps overshot
    with counting() as calls:
        model(x, state=z, dt=torch.full(x.shape[:2], 0.1, dtype=F64))[0].sum().backward()
    assert calls["seq"] == 0


def test_inference_from_a_negative_error_variance_equals_the_generic_path():
    """The fused loop reads max(error_var, 0) as the rule does (here from a state whose variance
    overshot below 0, where reading it as it is would take the square root of a negative number)."""
    model = _model(**LONG_STEPS)
    x, dt, mask = data(dt_max=LONG_DT_MAX)
    z = model.init_state(x.shape[0])
    z = z._replace(error_var=z.error_var - 1.5)  # every entry below 0
    with torch.no_grad():
        with counting() as calls:
            fast = model(x, state=z, dt=dt, mask=mask)
        with fe.disabled():
            generic = model(x, state=z, dt=dt, mask=mask)
    assert calls["seq"] == 1
    assert bool(torch.isfinite(fast[0]).all())
    assert rel_dev(fast[0], generic[0]) <= TOL
    for k in STATE_FIELDS:
        assert rel_dev(getattr(fast[1], k), getattr(generic[1], k)) <= TOL, k


def test_streaming_cell_with_long_steps_equals_the_generic_step():
    """The cell's single step: long steps leave the fused step for the generic one (error_var may dip below 0)."""
    torch.manual_seed(3)
    cell = DREAMCell(I, H, R, dtype=F64, **LONG_STEPS)
    x, dt, mask = data(T=10, dt_max=LONG_DT_MAX)
    results = []
    for ctx in (fe.disabled, contextlib.nullcontext):
        with ctx(), torch.no_grad():
            z = None
            for i in range(10):
                h, z = cell(x[:, i], z, dt[:, i], mask[:, i])
                assert bool(torch.isfinite(h).all()), f"non-finite h at step {i} ({ctx.__name__})"
        results.append(z)
    for k in STATE_FIELDS:
        assert rel_dev(getattr(results[1], k), getattr(results[0], k)) <= TOL, k


@pytest.mark.parametrize("method", ["rk4", "heun"])
def test_fast_runge_kutta_without_gradient_equals_generic(method):
    model = _model(solver=method, base_plasticity=2.0)
    x, dt, mask = data()
    lengths = torch.tensor([24, 11, 1, 17])
    res = []
    for fast in (True, False):
        ctx = contextlib.nullcontext() if fast else fe.disabled()
        with ctx, counting() as calls, torch.no_grad():
            out, state = model(x, dt=dt, mask=mask, lengths=lengths)
        assert (calls["rk"] == 1) == fast
        assert not out.is_inference() and not any(c.is_inference() for c in state)
        res.append((out, state))
    (o1, s1), (o2, s2) = res
    assert rel_dev(o1, o2) <= TOL
    for k in STATE_FIELDS:
        assert rel_dev(getattr(s1, k), getattr(s2, k)) <= TOL, k


def _graph_nodes(solver: str, T: int) -> int:
    """Autograd nodes behind the output of a length-``T`` forward."""
    model = _model(solver=solver)
    out, _ = model(torch.randn(2, T, I, dtype=F64, requires_grad=True))
    return autograd_nodes(out)


@pytest.mark.parametrize("masked", [False, True], ids=["plain", "mask"])
def test_gradcheck_through_the_fast_runge_kutta_path(masked):
    """torch.autograd.gradcheck of the hand-written rk4 backward (tiny, float64)."""
    gradcheck_fast_path("rk4", [4, 2, 3], masked=masked, counter="rk")


def test_fast_runge_kutta_is_one_node_and_retains_its_graph_on_request():
    assert _graph_nodes("rk4", 3) == _graph_nodes("rk4", 40)
    assert_backward_twice_needs_retain_graph(_model(solver="rk4"))


def test_recomputed_fast_weights_in_the_backward(monkeypatch):
    """Long sequences keep U only every few steps; the backward recomputes the rest exactly."""
    monkeypatch.setattr(fe, "_UU_BUDGET", 0)
    monkeypatch.setattr(fe, "_UU_EVERY", 5)
    model = _model(base_plasticity=2.0)
    x, dt, mask = data(T=23)
    lengths = torch.tensor([23, 9, 1, 14])
    s0 = state0(model, 4)
    o1, s1, g1 = run(model, x, dt, mask, lengths, s0, fast=True)
    o2, s2, g2 = run(model, x, dt, mask, lengths, s0, fast=False)
    assert rel_dev(o1, o2) <= TOL
    for a, b in zip(g1, g2):
        if a is not None:
            assert rel_dev(a, b) <= TOL


@pytest.mark.parametrize("solver", ["euler", "rk4"])
def test_two_layers_with_dropout_match_the_generic_path(solver):
    model = _model(num_layers=2, dropout=0.0, solver=solver)
    x, dt, mask = data()
    o1, s1, g1 = run(model, x, dt, mask, None, None, fast=True)
    o2, s2, g2 = run(model, x, dt, mask, None, None, fast=False)
    assert rel_dev(o1, o2) <= TOL
    for a, b in zip(g1, g2):
        assert rel_dev(a, b) <= TOL


@pytest.mark.parametrize("masked", [False, True], ids=["plain", "mask"])
def test_gradcheck_through_the_fast_path(masked):
    """torch.autograd.gradcheck of input, steps, initial state and parameters (tiny, float64)."""
    gradcheck_fast_path("euler", [5, 3, 4], masked=masked, counter="seq")


def test_one_autograd_node_whatever_the_length():
    """The whole sequence is one node: the graph does not grow with T (no O(T²) backward)."""

    assert _graph_nodes("euler", 3) == _graph_nodes("euler", 60)


def test_backward_twice_needs_retain_graph():
    assert_backward_twice_needs_retain_graph(_model())


def test_changing_a_parameter_in_place_before_backward_is_reported():
    model = _model()
    x, dt, _ = data(T=6)
    out, _ = model(x, dt=dt)
    with torch.no_grad():
        model.fields[0].C.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_no_grad_results_are_ordinary_tensors():
    """A state computed without gradient (warm-up) continues in a training pass."""
    model = _model()
    x, dt, _ = data(T=8)
    with torch.no_grad():
        out, state = model(x[:, :4], dt=dt[:, :4])
    assert not out.is_inference() and not any(c.is_inference() for c in state)
    out2, _ = model(x[:, 4:], state, dt=dt[:, 4:])
    out2.sum().backward()
    assert model.fields[0].C.grad is not None


def test_streaming_cell_uses_the_fast_step_and_equals_the_generic_step():
    torch.manual_seed(3)
    cell = DREAMCell(I, H, R, dtype=F64, base_plasticity=2.0)
    x, dt, mask = data(T=10)
    results = []
    for fast in (True, False):
        ctx = contextlib.nullcontext() if fast else fe.disabled()
        with ctx, counting() as calls, torch.no_grad():
            z = None
            hs = []
            for i in range(10):
                h, z = cell(x[:, i], z, dt[:, i], mask[:, i])
                hs.append(h)
        assert (calls["step"] == 10) == fast
        results.append((torch.stack(hs, 1), z))
    (h1, z1), (h2, z2) = results
    assert rel_dev(h1, h2) <= TOL
    for k in STATE_FIELDS:
        assert rel_dev(getattr(z1, k), getattr(z2, k)) <= TOL, k


def test_cell_trains_after_a_call_in_inference_mode():
    """The cell reuses its default Δt tensor between calls, but never one made in inference mode
    for a call that records a gradient."""
    torch.manual_seed(4)
    cell = DREAMCell(I, H, R, dtype=F64)
    x = torch.randn(3, I, dtype=F64)
    with torch.inference_mode():
        cell(x)
    h, _ = cell(x)
    h.sum().backward()
    assert cell.field.C.grad is not None


def test_traces_from_fast_steps_equal_generic_traces():
    model = _model(base_plasticity=2.0)
    x, dt, mask = data(T=12)
    traces = []
    for fast in (True, False):
        ctx = contextlib.nullcontext() if fast else fe.disabled()
        with ctx, torch.no_grad():
            traces.append(model(x, dt=dt, mask=mask, lengths=torch.tensor([12, 5, 1, 9]), return_trace=True))
    (o1, s1, t1), (o2, s2, t2) = traces
    assert rel_dev(o1, o2) <= TOL
    for a, b in zip(t1, t2):
        assert rel_dev(a, b) <= TOL


def test_float32_close_to_float64_generic():
    model64 = _model()
    model32 = DREAM(I, H, R, dtype=torch.float32)
    model32.load_state_dict({k: v.float() for k, v in model64.state_dict().items()})
    x, dt, mask = data()
    with torch.no_grad():
        o32, _ = model32(x.float(), dt=dt.float(), mask=mask.float())
        with fe.disabled():
            o64, _ = model64(x, dt=dt, mask=mask)
    assert rel_dev(o32.double(), o64) < 1e-4


def test_thread_count_is_restored():
    n = torch.get_num_threads()
    with fe._serial(torch.device("cpu"), 1):
        pass
    assert torch.get_num_threads() == n
    model = _model()
    x, dt, _ = data(T=4)
    model(x, dt=dt)[0].sum().backward()
    assert torch.get_num_threads() == n


def _assert_identical(run: tuple, ref: tuple) -> None:
    """Two results of :func:`_run`: outputs, final state and every gradient, bit for bit."""
    (o1, s1, g1), (o2, s2, g2) = run, ref
    assert torch.equal(o1, o2)
    for k in STATE_FIELDS:
        assert torch.equal(getattr(s1, k), getattr(s2, k)), k
    for a, b in zip(g1, g2):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.equal(a, b)


@pytest.mark.parametrize("masked", [False, True], ids=["plain", "mask"])
@pytest.mark.parametrize("name", ["default", "ltc_off", "both_off"])
def test_scripted_loops_equal_the_python_loops(name, masked):
    """The loops run through TorchScript by default; as plain Python they give the same bits."""
    from dreamode import _script

    model = _model(**CASES[name])
    x, dt, mask = data()
    lengths = torch.tensor([24, 11, 1, 17])
    s0 = state0(model, 4)
    m = mask if masked else None
    scripted = run(model, x, dt, m, lengths, s0, fast=True)
    from dreamode import _euler_kernel as ek

    assert _script.is_scripted(ek.forward_loop) and _script.is_scripted(ek.backward_loop)
    with _script.interpreted():
        _assert_identical(scripted, run(model, x, dt, m, lengths, s0, fast=True))


@pytest.mark.parametrize("masked", [False, True], ids=["plain", "mask"])
@pytest.mark.parametrize("method", ["rk4", "midpoint"])
@pytest.mark.parametrize("name", ["default", "both_off", "sleep_off"])
def test_scripted_runge_kutta_loops_equal_the_python_loops(name, method, masked):
    """The Runge-Kutta loops (dreamode/_rk_kernel.py) run through TorchScript by default; as plain
    Python they give the same bits, with and without a gradient."""
    from dreamode import _rk_kernel, _script

    model = _model(solver=method, **CASES[name])
    x, dt, mask = data()
    lengths = torch.tensor([24, 11, 1, 17])
    s0 = state0(model, 4)
    m = mask if masked else None
    with torch.no_grad(), counting() as calls:
        o1, s1 = model(x, s0, dt=dt, mask=m, lengths=lengths)
    assert calls["rk"] == 1 and _script.is_scripted(_rk_kernel.forward_loop)
    with torch.no_grad(), _script.interpreted():
        o2, s2 = model(x, s0, dt=dt, mask=m, lengths=lengths)
    assert torch.equal(o1, o2)
    for a, b in zip(s1, s2):
        assert torch.equal(a, b)

    scripted = run(model, x, dt, m, lengths, s0, fast=True)
    assert _script.is_scripted(_rk_kernel.backward_loop)
    with _script.interpreted():
        _assert_identical(scripted, run(model, x, dt, m, lengths, s0, fast=True))


@pytest.mark.parametrize("masked", [False, True], ids=["plain", "mask"])
def test_runge_kutta_backward_over_several_chunks_equals_generic(masked, monkeypatch):
    """The reverse loop runs over chunks of steps (freeing each after use): chunk edges inside
    the sequence, with padding, change nothing."""
    monkeypatch.setattr(frk, "_CHUNK", 5)
    _assert_fast_equals_generic(_model(solver="rk4", base_plasticity=2.0), "default", masked, padded=True)
