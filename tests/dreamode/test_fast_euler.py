"""The fused Euler path (dreamode/_fast_euler.py) against the generic path and against autograd.

* fast == generic: outputs, final state and every gradient (parameters, input, steps, initial
  state) agree to ``rel_dev`` ≤ 1e-12 in float64, for every switch of the cell, masks, irregular
  steps, padding, a given initial state with the homeostatic bound active, the interpolations,
  and with the fast weights recomputed in the backward (long sequences);
* the hand-written backward passes ``torch.autograd.gradcheck`` (float64, tiny model);
* the fast path is really taken, stays one autograd node whatever T (no O(T²) graph), frees its
  intermediates after a backward pass and supports ``retain_graph``.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from reference import STATE_FIELDS, autograd_nodes, rel_dev
from torch.func import functional_call

from dreamode import DREAM, DREAMCell, DREAMState
from dreamode import _fast_euler as fe
from dreamode import _fast_rk as frk

F64 = torch.float64
TOL = 1e-12
# the generic path reads max(dt) with dt requiring grad (its stiff-step check)
pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True:UserWarning")
I, H, R = 5, 7, 3


@contextlib.contextmanager
def counting():
    """Counts the sequences and single steps that go through the fast path."""
    calls = {"seq": 0, "step": 0, "rk": 0}
    run_sequence, step, run_rk = fe.run_sequence, fe.step, frk.run_sequence

    def seq(*a, **k):
        calls["seq"] += 1
        return run_sequence(*a, **k)

    def one(*a, **k):
        calls["step"] += 1
        return step(*a, **k)

    def rk(*a, **k):
        calls["rk"] += 1
        return run_rk(*a, **k)

    fe.run_sequence, fe.step, frk.run_sequence = seq, one, rk
    try:
        yield calls
    finally:
        fe.run_sequence, fe.step, frk.run_sequence = run_sequence, step, run_rk


def _model(seed=0, num_layers=1, **kw) -> DREAM:
    torch.manual_seed(seed)
    return DREAM(I, H, R, num_layers=num_layers, dtype=F64, **kw)


def _data(B=4, T=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = 2 * torch.randn(B, T, I, generator=g, dtype=F64)
    x[:, T // 2 :] += 2 * torch.randn(B, 1, I, generator=g, dtype=F64)  # a regime switch
    dt = 0.02 + 0.18 * torch.rand(B, T, generator=g, dtype=F64)
    mask = (torch.rand(B, T, I, generator=g) > 0.3).to(F64)
    mask[1, 3:6] = 0.0  # whole steps unobserved
    mask[2] = 0.0  # a sample never observed
    return x, dt, mask


def _state0(model: DREAM, B: int, seed=9) -> DREAMState:
    """A given initial state whose ‖U‖_F is above target_norm (the homeostatic bound acts)."""
    g = torch.Generator().manual_seed(seed)
    init = model.init_state(B)
    U = torch.randn(B, H, R, generator=g, dtype=F64)
    U = 1.6 * model.config.target_norm * U / U.flatten(1).norm(dim=1)[:, None, None]
    return DREAMState(
        h=0.5 * torch.randn(B, H, generator=g, dtype=F64),
        U=U,
        U_target=0.2 * torch.randn(B, H, R, generator=g, dtype=F64),
        error_mean=0.2 * torch.randn(B, I, generator=g, dtype=F64),
        error_var=0.5 + torch.rand(B, I, generator=g, dtype=F64),
        avg_surprise=torch.rand(B, generator=g, dtype=F64),
        adaptive_tau=init.adaptive_tau + 0.5 * torch.rand(B, generator=g, dtype=F64),
    )


def _loss(out, state):
    w = torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)
    if isinstance(state, list):  # several layers
        return sum(_loss(out, s) for s in state)
    return (
        (out * w).sum()
        + state.h.sum()
        + state.U.square().sum()
        + 5 * state.U_target.sum()
        + state.error_mean.sum()
        + state.error_var.sum()
        + 3 * state.avg_surprise.sum()
        + 2 * state.adaptive_tau.sum()
    )


def _run(model, x, dt, mask, lengths, state0, fast: bool):
    ctx = contextlib.nullcontext() if fast else fe.disabled()
    with ctx, counting() as calls:
        inputs = [x, dt] + ([] if state0 is None else list(state0))
        inputs = [t.detach().clone().requires_grad_() for t in inputs]
        s0 = None if state0 is None else DREAMState(*inputs[2:])
        out, state = model(inputs[0], s0, dt=inputs[1], mask=mask, lengths=lengths)
        grads = torch.autograd.grad(_loss(out, state), (*inputs, *model.parameters()), allow_unused=True)
    assert (calls["seq"] + calls["rk"] > 0) == fast, calls
    state = state[-1] if isinstance(state, list) else state
    return out.detach(), DREAMState(*(c.detach() for c in state)), grads


CASES = {
    "default": {},
    "ltc_off": dict(ltc_enabled=False),
    "fast_weights_off": dict(fast_weights=False),
    "sleep_off": dict(sleep_enabled=False),
    "both_off": dict(fast_weights=False, sleep_enabled=False),
    "adaptive_forgetting": dict(adaptive_forgetting_scale=3.0, forgetting_rate=0.2),
    "tau_clamped": dict(ltc_tau_sys=2.0, tau_min=0.5, tau_max=1.0, base_plasticity=2.0),
    "habituation_saturates": dict(max_adaptive_tau=1.2, habituation_rate=0.3),
    "linear": dict(interpolation="linear"),
    "cubic": dict(interpolation="cubic"),
}


def _assert_fast_equals_generic(model: DREAM, name: str, masked: bool, padded: bool) -> None:
    """Outputs, final state and every gradient of the fast path equal the generic path's (TOL)."""
    x, dt, mask = _data()
    lengths = torch.tensor([24, 11, 1, 17]) if padded else None
    state0 = _state0(model, 4) if name in ("default", "tau_clamped", "both_off") else None
    fast = _run(model, x, dt, mask if masked else None, lengths, state0, fast=True)
    generic = _run(model, x, dt, mask if masked else None, lengths, state0, fast=False)
    _assert_same_results(model, state0, fast, generic)


def _assert_same_results(model: DREAM, state0: DREAMState | None, run: tuple, ref: tuple) -> None:
    """Two results of :func:`_run`: outputs, final state and every gradient agree to TOL."""
    (o1, s1, g1), (o2, s2, g2) = run, ref
    assert rel_dev(o1, o2) <= TOL
    for k in STATE_FIELDS:
        assert rel_dev(getattr(s1, k), getattr(s2, k)) <= TOL, k
    names = ["x", "dt"] + ([] if state0 is None else [f"state.{k}" for k in STATE_FIELDS])
    names += [n for n, _ in model.named_parameters()]
    for n, a, b in zip(names, g1, g2):
        assert (a is None) == (b is None), n
        if a is not None:
            assert rel_dev(a, b) <= TOL, (n, rel_dev(a, b))


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


@pytest.mark.parametrize("method", ["rk4", "heun"])
def test_fast_runge_kutta_without_gradient_equals_generic(method):
    model = _model(solver=method, base_plasticity=2.0)
    x, dt, mask = _data()
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


def _gradcheck_fast_path(solver: str, lengths: list[int], masked: bool, counter: str) -> None:
    """gradcheck of a fast path with respect to input, steps, initial state and parameters; the
    path's call counter ``counter`` proves the fast path (not the generic one) ran."""
    torch.manual_seed(0)
    model = DREAM(3, 4, rank=2, dtype=F64, solver=solver, base_plasticity=2.0, ltc_tau_sys=1.0)
    g = torch.Generator().manual_seed(1)
    B, T = len(lengths), max(lengths)
    x = 2 * torch.randn(B, T, 3, generator=g, dtype=F64)
    dt = 0.05 + 0.15 * torch.rand(B, T, generator=g, dtype=F64)
    mask = (torch.rand(B, T, 3, generator=g) > 0.3).to(F64) if masked else None
    lengths = torch.tensor(lengths)
    init = model.init_state(B)
    U0 = torch.randn(B, 4, 2, generator=g, dtype=F64)
    U0 = 3.0 * U0 / U0.flatten(1).norm(dim=1)[:, None, None]  # ‖U‖ > target_norm: homeostasis acts
    s0 = (0.3 * torch.randn(B, 4, generator=g, dtype=F64), U0, 0.1 * U0, init.error_mean, init.error_var)
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach().clone() for p in model.parameters())

    def f(x, dt, h0, U0, Ut0, em0, ev0, *ps):
        state = DREAMState(h0, U0, Ut0, em0, ev0, init.avg_surprise, init.adaptive_tau)
        out, st = functional_call(model, dict(zip(names, ps)), (x, state), dict(dt=dt, mask=mask, lengths=lengths))
        return out, st.U, st.U_target, st.error_var, st.avg_surprise, st.adaptive_tau

    inputs = tuple(t.clone().requires_grad_() for t in (x, dt, *s0, *params))
    with counting() as calls:
        assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)
    assert calls[counter] > 0


def _graph_nodes(solver: str, T: int) -> int:
    """Autograd nodes behind the output of a length-``T`` forward."""
    model = _model(solver=solver)
    out, _ = model(torch.randn(2, T, I, dtype=F64, requires_grad=True))
    return autograd_nodes(out)


@pytest.mark.parametrize("masked", [False, True], ids=["plain", "mask"])
def test_gradcheck_through_the_fast_runge_kutta_path(masked):
    """torch.autograd.gradcheck of the hand-written rk4 backward (tiny, float64)."""
    _gradcheck_fast_path("rk4", [4, 2, 3], masked=masked, counter="rk")


def _assert_backward_twice_needs_retain_graph(model: DREAM, T: int = 6, path=contextlib.nullcontext) -> None:
    """A second backward pass gives the same gradient again when the first retained the graph,
    and a clear error when it did not (``path``: the context the forward runs in)."""
    x, dt, _ = _data(T=T)
    x.requires_grad_()
    with path():
        out, _ = model(x, dt=dt)
    out.sum().backward(retain_graph=True)
    first = x.grad.clone()
    out.sum().backward()
    assert rel_dev(x.grad, 2 * first) <= TOL
    with pytest.raises(RuntimeError, match="second time"):
        out.sum().backward()


def test_fast_runge_kutta_is_one_node_and_retains_its_graph_on_request():
    assert _graph_nodes("rk4", 3) == _graph_nodes("rk4", 40)
    _assert_backward_twice_needs_retain_graph(_model(solver="rk4"))


def test_recomputed_fast_weights_in_the_backward(monkeypatch):
    """Long sequences keep U only every few steps; the backward recomputes the rest exactly."""
    monkeypatch.setattr(fe, "_UU_BUDGET", 0)
    monkeypatch.setattr(fe, "_UU_EVERY", 5)
    model = _model(base_plasticity=2.0)
    x, dt, mask = _data(T=23)
    lengths = torch.tensor([23, 9, 1, 14])
    state0 = _state0(model, 4)
    o1, s1, g1 = _run(model, x, dt, mask, lengths, state0, fast=True)
    o2, s2, g2 = _run(model, x, dt, mask, lengths, state0, fast=False)
    assert rel_dev(o1, o2) <= TOL
    for a, b in zip(g1, g2):
        if a is not None:
            assert rel_dev(a, b) <= TOL


@pytest.mark.parametrize("solver", ["euler", "rk4"])
def test_two_layers_with_dropout_match_the_generic_path(solver):
    model = _model(num_layers=2, dropout=0.0, solver=solver)
    x, dt, mask = _data()
    o1, s1, g1 = _run(model, x, dt, mask, None, None, fast=True)
    o2, s2, g2 = _run(model, x, dt, mask, None, None, fast=False)
    assert rel_dev(o1, o2) <= TOL
    for a, b in zip(g1, g2):
        assert rel_dev(a, b) <= TOL


@pytest.mark.parametrize("masked", [False, True], ids=["plain", "mask"])
def test_gradcheck_through_the_fast_path(masked):
    """torch.autograd.gradcheck of input, steps, initial state and parameters (tiny, float64)."""
    _gradcheck_fast_path("euler", [5, 3, 4], masked=masked, counter="seq")


def test_one_autograd_node_whatever_the_length():
    """The whole sequence is one node: the graph does not grow with T (no O(T²) backward)."""

    assert _graph_nodes("euler", 3) == _graph_nodes("euler", 60)


def test_backward_twice_needs_retain_graph():
    _assert_backward_twice_needs_retain_graph(_model())


def test_changing_a_parameter_in_place_before_backward_is_reported():
    model = _model()
    x, dt, _ = _data(T=6)
    out, _ = model(x, dt=dt)
    with torch.no_grad():
        model.fields[0].C.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_no_grad_results_are_ordinary_tensors():
    """A state computed without gradient (warm-up) continues in a training pass."""
    model = _model()
    x, dt, _ = _data(T=8)
    with torch.no_grad():
        out, state = model(x[:, :4], dt=dt[:, :4])
    assert not out.is_inference() and not any(c.is_inference() for c in state)
    out2, _ = model(x[:, 4:], state, dt=dt[:, 4:])
    out2.sum().backward()
    assert model.fields[0].C.grad is not None


def test_streaming_cell_uses_the_fast_step_and_equals_the_generic_step():
    torch.manual_seed(3)
    cell = DREAMCell(I, H, R, dtype=F64, base_plasticity=2.0)
    x, dt, mask = _data(T=10)
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
    x, dt, mask = _data(T=12)
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
    x, dt, mask = _data()
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
    x, dt, _ = _data(T=4)
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
    x, dt, mask = _data()
    lengths = torch.tensor([24, 11, 1, 17])
    state0 = _state0(model, 4)
    m = mask if masked else None
    scripted = _run(model, x, dt, m, lengths, state0, fast=True)
    from dreamode import _euler_kernel as ek

    assert _script.is_scripted(ek.forward_loop) and _script.is_scripted(ek.backward_loop)
    with _script.interpreted():
        _assert_identical(scripted, _run(model, x, dt, m, lengths, state0, fast=True))


@pytest.mark.parametrize("masked", [False, True], ids=["plain", "mask"])
@pytest.mark.parametrize("method", ["rk4", "midpoint"])
@pytest.mark.parametrize("name", ["default", "both_off", "sleep_off"])
def test_scripted_runge_kutta_loops_equal_the_python_loops(name, method, masked):
    """The Runge-Kutta loops (dreamode/_rk_kernel.py) run through TorchScript by default; as plain
    Python they give the same bits, with and without a gradient."""
    from dreamode import _rk_kernel, _script

    model = _model(solver=method, **CASES[name])
    x, dt, mask = _data()
    lengths = torch.tensor([24, 11, 1, 17])
    state0 = _state0(model, 4)
    m = mask if masked else None
    with torch.no_grad(), counting() as calls:
        o1, s1 = model(x, state0, dt=dt, mask=m, lengths=lengths)
    assert calls["rk"] == 1 and _script.is_scripted(_rk_kernel.forward_loop)
    with torch.no_grad(), _script.interpreted():
        o2, s2 = model(x, state0, dt=dt, mask=m, lengths=lengths)
    assert torch.equal(o1, o2)
    for a, b in zip(s1, s2):
        assert torch.equal(a, b)

    scripted = _run(model, x, dt, m, lengths, state0, fast=True)
    assert _script.is_scripted(_rk_kernel.backward_loop)
    with _script.interpreted():
        _assert_identical(scripted, _run(model, x, dt, m, lengths, state0, fast=True))


@pytest.mark.parametrize("masked", [False, True], ids=["plain", "mask"])
def test_runge_kutta_backward_over_several_chunks_equals_generic(masked, monkeypatch):
    """The reverse loop runs over chunks of steps (freeing each after use): chunk edges inside
    the sequence, with padding, change nothing."""
    monkeypatch.setattr(frk, "_CHUNK", 5)
    _assert_fast_equals_generic(_model(solver="rk4", base_plasticity=2.0), "default", masked, padded=True)
