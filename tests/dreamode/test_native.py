"""The opt-in C++ kernels (dreamode.native) against the generic path and the default path.

* native == generic (the field plus ``z + Δt·f(z)``): outputs, final state and every gradient
  (parameters, input, steps, initial state) to ``rel_dev`` ≤ 1e-12 in float64, for every switch of
  the cell, masks, irregular steps, padding, a given initial state with the homeostatic bound
  active, the interpolations, two layers, and ``DREAMCell`` streaming; and with long steps (Δt up
  to 3 time units, ``helpers.LONG_STEPS``, where the kernels step aside for the generic path);
* ``torch.autograd.gradcheck`` of the C++ backward; sequences longer than the 16-step segments in
  which the backward recomputes the fast weights; ``retain_graph``;
* float32 close to the default fast path; no sample depends on the others in its batch.

The kernels are compiled once per machine (about 20-30 s; torch caches the build). Without a C++
compiler these tests are skipped: the default path needs none.
"""

from __future__ import annotations

import contextlib
import os
import shutil

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
    data,
    gradcheck_fast_path,
    run,
    state0,
)
from reference import STATE_FIELDS, rel_dev

from dreamode import DREAM, DREAMCell, DREAMState, native
from dreamode import _fast_euler as fe


@pytest.fixture(scope="module", autouse=True)
def kernel():
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("no C++ compiler: dreamode.native cannot be built here")
    native.build()  # a failure with a compiler present is a real failure
    yield
    native.disable()


def _count_native(monkeypatch) -> dict[str, int]:
    """Counts the calls into the C++ kernels (sequences and streaming steps)."""
    calls = {"n": 0}
    for name in ("_native_forward", "_native_cell"):
        real = getattr(fe, name)

        def counted(*a, _real=real, **k):
            calls["n"] += 1
            return _real(*a, **k)

        monkeypatch.setattr(fe, name, counted)
    return calls


def _assert_states_close(a: DREAMState, b: DREAMState, tol: float) -> None:
    for k in STATE_FIELDS:
        assert rel_dev(getattr(a, k), getattr(b, k)) <= tol, (k, rel_dev(getattr(a, k), getattr(b, k)))


@pytest.mark.parametrize("masked", [False, True], ids=["plain", "mask"])
@pytest.mark.parametrize("padded", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("name", list(CASES))
def test_native_equals_generic(name, masked, padded, monkeypatch):
    torch.manual_seed(0)
    model = DREAM(I, H, R, dtype=F64, **CASES[name])
    x, dt, mask = data()
    kw = dict(dt=dt, mask=mask if masked else None, lengths=torch.tensor([24, 11, 1, 17]) if padded else None)
    s0 = state0(model, 4) if name in WITH_STATE0 else None
    calls = _count_native(monkeypatch)
    with torch.no_grad():
        with native.enabled():
            out, state = model(x, s0, **kw)
        with fe.disabled():
            ref, ref_state = model(x, s0, **kw)
    assert calls["n"] == 1
    assert rel_dev(out, ref) <= TOL
    _assert_states_close(state, ref_state, TOL)


@pytest.mark.parametrize("masked", [False, True], ids=["plain", "mask"])
def test_native_equals_generic_with_long_steps(masked, monkeypatch):
    """Steps up to 3 time units: the kernel, which reads error_var unclamped, steps aside for the
    generic path (error_var may dip below 0 there), so the result is the generic path's."""
    torch.manual_seed(0)
    model = DREAM(I, H, R, dtype=F64, **LONG_STEPS)
    x, dt, mask = data(dt_max=LONG_DT_MAX)
    kw = dict(dt=dt, mask=mask if masked else None, lengths=torch.tensor([24, 11, 1, 17]))
    calls = _count_native(monkeypatch)
    with torch.no_grad():
        with fe.disabled():
            ref, ref_state = model(x, **kw)
        assert bool(torch.isfinite(ref).all())
        with native.enabled():
            out, state = model(x, **kw)
    assert calls["n"] == 0
    assert rel_dev(out, ref) <= TOL
    _assert_states_close(state, ref_state, TOL)


def test_native_training_equals_generic_with_long_steps(monkeypatch):
    torch.manual_seed(0)
    model = DREAM(I, H, R, dtype=F64, **LONG_STEPS)
    x, dt, mask = data(dt_max=LONG_DT_MAX)
    _assert_native_equals_generic(model, x, dt, mask, torch.tensor([24, 11, 1, 17]), None, monkeypatch, kernel_calls=0)


def test_native_streaming_cell_with_long_steps(monkeypatch):
    """The cell's kernel step: long steps leave it for the generic step (error_var may dip below 0)."""
    torch.manual_seed(3)
    cell = DREAMCell(I, H, R, dtype=F64, **LONG_STEPS)
    x, dt, mask = data(T=10, dt_max=LONG_DT_MAX)
    runs = []
    for ctx in (fe.disabled, native.enabled):
        with ctx(), torch.no_grad():
            z = None
            for i in range(10):
                h, z = cell(x[:, i], z, dt[:, i], mask[:, i])
                assert bool(torch.isfinite(h).all()), f"non-finite h at step {i} ({ctx.__name__})"
        runs.append(z)
    _assert_states_close(runs[1], runs[0], TOL)


def test_two_layers_equal_generic(monkeypatch):
    torch.manual_seed(1)
    model = DREAM(I, H, R, num_layers=2, dtype=F64)
    x, dt, mask = data()
    calls = _count_native(monkeypatch)
    with torch.no_grad():
        with native.enabled():
            out, states = model(x, dt=dt, mask=mask)
        with fe.disabled():
            ref, ref_states = model(x, dt=dt, mask=mask)
    assert calls["n"] == 2
    assert rel_dev(out, ref) <= TOL
    for s, r in zip(states, ref_states):
        _assert_states_close(s, r, TOL)


@pytest.mark.parametrize("unbatched", [False, True], ids=["batched", "unbatched"])
def test_streaming_cell_equals_generic(unbatched, monkeypatch):
    torch.manual_seed(3)
    cell = DREAMCell(I, H, R, dtype=F64, base_plasticity=2.0)
    x, dt, mask = data(T=12)
    if unbatched:
        x, dt, mask = x[1], dt[1], mask[1]
    calls = _count_native(monkeypatch)
    runs = []
    for ctx in (native.enabled(), fe.disabled()):
        with ctx, torch.no_grad():
            z, hs = None, []
            for i in range(12):
                # a mask on every other step, a float step on every third, else the dt tensor
                m = mask[..., i, :] if i % 2 else None
                step = 0.05 if i % 3 == 0 else dt[..., i]
                h, z = cell(x[..., i, :], z, step, m)
                hs.append(h)
        runs.append((torch.stack(hs), z))
    assert calls["n"] == 12
    (h1, z1), (h2, z2) = runs
    assert h1.shape == h2.shape
    assert rel_dev(h1, h2) <= TOL
    _assert_states_close(z1, z2, TOL)


def test_float32_close_to_the_default_path():
    torch.manual_seed(2)
    model = DREAM(16, 32, rank=4)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(8, 100, 16, generator=g)
    mask = (torch.rand(8, 100, 16, generator=g) > 0.2).float()
    with torch.no_grad():
        with native.enabled():
            out, state = model(x, mask=mask)
        ref, ref_state = model(x, mask=mask)
    # float32 rounding of two different operation orders over 100 steps
    assert rel_dev(out, ref) <= 1e-5
    _assert_states_close(state, ref_state, 1e-5)


def test_no_sample_depends_on_its_batch():
    torch.manual_seed(4)
    model = DREAM(I, H, R, dtype=F64)
    x, dt, mask = data(B=5)
    lengths = torch.tensor([24, 9, 24, 3, 16])
    with torch.no_grad(), native.enabled():
        out, state = model(x, dt=dt, mask=mask, lengths=lengths)
        for b in range(5):
            o, s = model(x[b : b + 1], dt=dt[b : b + 1], mask=mask[b : b + 1], lengths=lengths[b : b + 1])
            assert rel_dev(o[0], out[b]) <= TOL
            assert rel_dev(s.U[0], state.U[b]) <= TOL


def _assert_native_equals_generic(model, x, dt, mask, lengths, s0, monkeypatch, kernel_calls=None) -> None:
    """Outputs, final state and every gradient through the C++ kernels equal the generic path's;
    the kernels run once a layer (``kernel_calls`` times if given)."""
    calls = _count_native(monkeypatch)
    with native.enabled():
        got = run(model, x, dt, mask, lengths, s0, fast=True)
    assert calls["n"] == (model.num_layers if kernel_calls is None else kernel_calls)
    assert_same_results(model, s0, got, run(model, x, dt, mask, lengths, s0, fast=False))


@pytest.mark.parametrize("masked", [False, True], ids=["plain", "mask"])
@pytest.mark.parametrize("padded", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("name", list(CASES))
def test_native_training_equals_generic(name, masked, padded, monkeypatch):
    """T = 24: two of the backward's 16-step segments, the second one partial."""
    torch.manual_seed(0)
    model = DREAM(I, H, R, dtype=F64, **CASES[name])
    x, dt, mask = data()
    lengths = torch.tensor([24, 11, 1, 17]) if padded else None
    s0 = state0(model, 4) if name in WITH_STATE0 else None
    _assert_native_equals_generic(model, x, dt, mask if masked else None, lengths, s0, monkeypatch)


def test_native_training_over_many_segments(monkeypatch):
    """T = 53: four segments, padding crossing their boundaries, two layers."""
    torch.manual_seed(6)
    model = DREAM(I, H, R, num_layers=2, dtype=F64, base_plasticity=2.0)
    x, dt, mask = data(T=53)
    lengths = torch.tensor([53, 16, 33, 2])
    _assert_native_equals_generic(model, x, dt, mask, lengths, None, monkeypatch)


@pytest.mark.parametrize("masked", [False, True], ids=["plain", "mask"])
def test_two_layers_sharing_dt_without_padding(masked, monkeypatch):
    """Both layers return a gradient for the same ``dt``: autograd adds them (regression: the
    kernel's gradient was an inference-mode tensor, which autograd cannot add to in place)."""
    torch.manual_seed(12)
    model = DREAM(I, H, R, num_layers=2, dtype=F64)
    x, dt, mask = data()
    _assert_native_equals_generic(model, x, dt, mask if masked else None, None, None, monkeypatch)


@pytest.mark.parametrize("masked", [False, True], ids=["plain", "mask"])
def test_gradcheck_through_the_native_backward(masked, monkeypatch):
    calls = _count_native(monkeypatch)
    with native.enabled():
        gradcheck_fast_path("euler", [5, 3, 4], masked=masked, counter="seq")
    assert calls["n"] > 0


def test_float32_training_close_to_the_default_path():
    torch.manual_seed(7)
    model = DREAM(16, 32, rank=4)
    g = torch.Generator().manual_seed(8)
    x = torch.randn(8, 60, 16, generator=g)
    grads = []
    for use in (True, False):
        model.zero_grad()
        with native.enabled() if use else contextlib.nullcontext():
            out, _ = model(x)
            out.square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    # float32 rounding of two different operation orders over 60 steps and back
    for a, b in zip(*grads):
        assert rel_dev(a, b) <= 1e-4


def test_backward_twice_needs_retain_graph():
    torch.manual_seed(9)
    model = DREAM(I, H, R, dtype=F64)
    assert_backward_twice_needs_retain_graph(model, T=20, path=native.enabled)


@pytest.mark.parametrize(("B", "T"), [(1, 5), (3, 1), (1, 1)])
def test_training_outputs_are_ordinary_tensors_at_every_size(B, T):
    """Outputs and states of a training call can be changed in place (regression: with B = 1 or
    T = 1 the output was the kernel's inference-mode tensor itself)."""
    torch.manual_seed(13)
    model = DREAM(I, H, R, dtype=F64)
    x = torch.randn(B, T, I, dtype=F64, requires_grad=True)
    with native.enabled():
        out, state = model(x)
    assert not out.is_inference() and not any(c.is_inference() for c in state)
    (out.sum() + state.h.sum()).backward()
    out.detach().add_(1.0)
    state.h.detach().add_(1.0)
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_inference_results_continue_in_training():
    """The results of a call without gradient are ordinary tensors: a training call can use them."""
    torch.manual_seed(5)
    model = DREAM(I, H, R, dtype=F64)
    x, dt, _ = data()
    with torch.no_grad(), native.enabled():
        _, state = model(x[:, :5], dt=dt[:, :5])
    assert not any(c.is_inference() for c in state)
    with native.enabled():
        out, _ = model(x[:, 5:], state, dt=dt[:, 5:])
    out.sum().backward()
    assert model.fields[0].C.grad is not None


def test_traces_through_the_native_single_steps_equal_generic_traces(monkeypatch):
    """A trace runs the per-step loop; each step (with its trace quantities) goes through the kernel."""
    torch.manual_seed(11)
    model = DREAM(I, H, R, dtype=F64, base_plasticity=2.0)
    x, dt, mask = data(T=12)
    calls = _count_native(monkeypatch)
    runs = []
    for ctx in (native.enabled(), fe.disabled()):
        with ctx, torch.no_grad():
            runs.append(model(x, dt=dt, mask=mask, lengths=torch.tensor([12, 5, 1, 9]), return_trace=True))
    assert calls["n"] == 12
    (o1, s1, t1), (o2, s2, t2) = runs
    assert rel_dev(o1, o2) <= TOL
    _assert_states_close(s1, s2, TOL)
    for a, b in zip(t1, t2):
        assert rel_dev(a, b) <= TOL


def test_same_bits_twice():
    torch.manual_seed(10)
    model = DREAM(I, H, R, dtype=F64)
    x, dt, mask = data()
    runs = []
    for _ in range(2):
        model.zero_grad()
        with native.enabled():
            out, state = model(x, dt=dt, mask=mask)
        (out.sum() + state.U.sum()).backward()
        runs.append((out.detach(), *(p.grad.clone() for p in model.parameters())))
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_switches():
    assert not native.is_enabled()
    with native.enabled():
        assert native.is_enabled()
    assert not native.is_enabled()
    native.enable()
    assert native.is_enabled()
    native.disable()
    assert not native.is_enabled()
    assert native.build_seconds is not None and native.build_seconds >= 0
