"""Per-sample independence, irregular time, streaming; state round trips.

All in float64; "equal" means ``max|a − b| / max|b|`` ≤ 1e-12 per tensor (``reference.rel_dev``).
"""

from __future__ import annotations

import io

import pytest
import torch
from reference import STATE_FIELDS, rel_dev

from dreamode import DREAM, DREAMState

TOL = 1e-12
I, H, R = 5, 8, 3
F64 = torch.float64

SOLVERS = [
    pytest.param("euler", None, id="euler"),
    pytest.param("rk4", None, id="rk4"),
    pytest.param("euler", 0.04, id="euler-max_step"),
    pytest.param("ltc-fused", None, id="ltc-fused"),
]


def _model(solver="euler", max_step=None, seed=0, **kw) -> DREAM:
    torch.manual_seed(seed)
    return DREAM(I, H, R, solver=solver, max_step=max_step, dtype=F64, **kw)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _x(B, T, seed=1, scale=2.0):
    g = _gen(seed)
    x = scale * torch.randn(B, T, I, generator=g, dtype=F64)
    x[:, T // 2 :] += scale * torch.randn(B, 1, I, generator=g, dtype=F64)
    return x


def _dt(B, T, seed=2):
    return 0.02 + 0.18 * torch.rand(B, T, generator=_gen(seed), dtype=F64)


def _times(B, T, seed=3):
    # Different grids and different origins per sample.
    g = _gen(seed)
    return 10 * torch.rand(B, 1, generator=g, dtype=F64) + torch.cumsum(_dt(B, T, seed + 100), dim=1)


def _mask(B, T, seed=4):
    m = (torch.rand(B, T, I, generator=_gen(seed)) > 0.3).to(F64)
    m[0, 3:6] = 0.0  # whole steps unobserved
    return m


def _assert_state_equal(a: DREAMState, b: DREAMState, tol=TOL):
    for k in STATE_FIELDS:
        d = rel_dev(getattr(a, k), getattr(b, k))
        assert d <= tol, (k, d)


def _clone_into(model: DREAM, **kw) -> DREAM:
    """A model with other constructor arguments and the same parameters."""
    other = DREAM(I, model.hidden_dim, R, num_layers=model.num_layers, dtype=F64, **kw)
    other.load_state_dict(model.state_dict())
    return other


# -- item 3: per-sample independence ----------------------------------------------------------


@pytest.mark.parametrize("solver,max_step", SOLVERS)
def test_sample_alone_equals_sample_in_batch(solver, max_step):
    B, T = 4, 20
    model = _model(solver, max_step)
    x, times, mask = _x(B, T), _times(B, T), _mask(B, T)
    lengths = torch.tensor([T, 13, 7, 18])
    with torch.no_grad():
        out, state = model(x, times=times, mask=mask, lengths=lengths)
        for b in range(B):
            L = int(lengths[b])
            alone, s_alone = model(x[b : b + 1, :L], times=times[b : b + 1, :L], mask=mask[b : b + 1, :L])
            assert rel_dev(out[b : b + 1, :L], alone) <= TOL, b
            assert torch.all(out[b, L:] == 0)
            _assert_state_equal(state.select(b), s_alone)
            # The same sample among other companions (another batch order and size) again.
            idx = [b, (b + 1) % B]
            out2, _ = model(x[idx], times=times[idx], mask=mask[idx], lengths=lengths[idx])
            assert rel_dev(out2[:1, :L], alone) <= TOL, b


# -- item 4: irregular time -----------------------------------------------------------------


@pytest.mark.parametrize("solver,max_step", SOLVERS[:2])
def test_uniform_times_equal_no_times(solver, max_step):
    B, T = 3, 15
    model = _model(solver, max_step)
    x = _x(B, T)
    step = model.config.time_step
    times = 2.0 + step * torch.arange(T, dtype=F64)
    with torch.no_grad():
        ref, s_ref = model(x)
        for tt in (times, times.expand(B, T)):
            out, s = model(x, times=tt)
            assert rel_dev(out, ref) <= TOL
            _assert_state_equal(s, s_ref)
        out, s = model(x, dt=torch.full((T,), step, dtype=F64))
        assert rel_dev(out, ref) <= TOL


@pytest.mark.parametrize("solver,max_step", SOLVERS)
def test_times_equal_equivalent_dt(solver, max_step):
    B, T = 3, 15
    model = _model(solver, max_step)
    x, times, mask = _x(B, T), _times(B, T), _mask(B, T)
    step = model.config.time_step
    dt = torch.cat([torch.full((B, 1), step, dtype=F64), times.diff(dim=1)], dim=1)
    t0 = times[:, 0] - 0.15  # a first step within the explicit stability limit (0.2): no StiffStepWarning
    dt0 = torch.cat([(times[:, 0] - t0)[:, None], times.diff(dim=1)], dim=1)
    with torch.no_grad():
        out_t, s_t = model(x, times=times, mask=mask)
        out_d, s_d = model(x, dt=dt, mask=mask)
        assert rel_dev(out_t, out_d) <= TOL
        _assert_state_equal(s_t, s_d)
        out_t, s_t = model(x, times=times, mask=mask, t0=t0)
        out_d, s_d = model(x, dt=dt0, mask=mask)
        assert rel_dev(out_t, out_d) <= TOL
        _assert_state_equal(s_t, s_d)


def test_lengths_equal_truncated_runs_and_frozen_padding():
    B, T = 4, 16
    model = _model()
    x, dt = _x(B, T), _dt(B, T)
    lengths = [16, 1, 9, 12]
    garbage = x.clone()
    for b, L in enumerate(lengths):
        garbage[b, L:] = 1e3  # what lies past a length must not matter
    with torch.no_grad():
        out, state = model(garbage, dt=dt, lengths=torch.tensor(lengths))
        for b, L in enumerate(lengths):
            o, s = model(x[b : b + 1, :L], dt=dt[b : b + 1, :L])
            assert rel_dev(out[b : b + 1, :L], o) <= TOL
            assert torch.all(out[b, L:] == 0)
            _assert_state_equal(state.select(b), s)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_unbatched_equals_batch_of_one(num_layers):
    T = 12
    model = _model(num_layers=num_layers)
    x, dt, mask = _x(1, T), _dt(1, T), _mask(1, T)
    with torch.no_grad():
        out_b, s_b = model(x, dt=dt, mask=mask)
        out_u, s_u = model(x[0], dt=dt[0], mask=mask[0])
        assert out_u.shape == (T, H)
        assert rel_dev(out_u, out_b[0]) <= TOL
        s_b = [s_b] if num_layers == 1 else s_b
        s_u = [s_u] if num_layers == 1 else s_u
        for sb, su in zip(s_b, s_u):
            assert su.h.shape == (H,) and su.U.shape == (H, R)
            for k in STATE_FIELDS:
                assert rel_dev(getattr(su, k), getattr(sb, k)[0]) <= TOL
        # An unbatched state continues an unbatched sequence.
        st = s_u[0] if num_layers == 1 else s_u
        cont_u, _ = model(x[0], st, dt=dt[0])
        stb = s_b[0] if num_layers == 1 else s_b
        cont_b, _ = model(x, stb, dt=dt)
        assert rel_dev(cont_u, cont_b[0]) <= TOL


def test_batch_first_false_equals_transposed():
    B, T = 3, 12
    model = _model(num_layers=2)
    other = _clone_into(model, batch_first=False)
    x, dt, mask = _x(B, T), _dt(B, T), _mask(B, T)
    with torch.no_grad():
        out, states = model(x, dt=dt, mask=mask, lengths=torch.tensor([12, 5, 9]))
        out_t, states_t = other(
            x.transpose(0, 1), dt=dt.transpose(0, 1), mask=mask.transpose(0, 1), lengths=torch.tensor([12, 5, 9])
        )
    assert out_t.shape == (T, B, H)
    assert rel_dev(out_t.transpose(0, 1), out) <= TOL
    for s, st in zip(states, states_t):
        _assert_state_equal(st, s)  # states stay batch-major, as nn.LSTM's are layer-major


# -- item 7: streaming ------------------------------------------------------------------------


def _chunks(T):
    return [(0, 5), (5, 6), (6, 13), (13, T)]


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("solver,max_step", SOLVERS)
def test_streaming_with_dt_equals_one_pass(solver, max_step, num_layers):
    B, T = 3, 18
    model = _model(solver, max_step, num_layers=num_layers)
    x, dt, mask = _x(B, T), _dt(B, T), _mask(B, T)
    with torch.no_grad():
        full, s_full = model(x, dt=dt, mask=mask)
        state, parts = None, []
        for a, b in _chunks(T):
            o, state = model(x[:, a:b], state, dt=dt[:, a:b], mask=mask[:, a:b])
            parts.append(o)
    assert rel_dev(torch.cat(parts, dim=1), full) <= TOL
    for s, sf in zip(state if num_layers > 1 else [state], s_full if num_layers > 1 else [s_full]):
        _assert_state_equal(s, sf)


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("solver,max_step", [SOLVERS[0], SOLVERS[2]])
def test_streaming_with_times_equals_one_pass(solver, max_step, num_layers):
    B, T = 3, 18
    model = _model(solver, max_step, num_layers=num_layers)
    x, times = _x(B, T), _times(B, T)
    with torch.no_grad():
        full, s_full = model(x, times=times)
        state, parts, t0 = None, [], None
        for a, b in _chunks(T):
            o, state = model(x[:, a:b], state, times=times[:, a:b], t0=t0)
            t0 = times[:, b - 1]
            parts.append(o)
    assert rel_dev(torch.cat(parts, dim=1), full) <= TOL
    for s, sf in zip(state if num_layers > 1 else [state], s_full if num_layers > 1 else [s_full]):
        _assert_state_equal(s, sf)


def test_streaming_with_shared_times_and_scalar_t0():
    T = 14
    model = _model()
    x = _x(2, T)
    times = torch.cumsum(_dt(1, T)[0], dim=0)
    with torch.no_grad():
        full, _ = model(x, times=times)
        o1, s = model(x[:, :6], times=times[:6])
        o2, _ = model(x[:, 6:], s, times=times[6:], t0=float(times[5]))
    assert rel_dev(torch.cat([o1, o2], dim=1), full) <= TOL
    # Without t0 the continuing chunk's first step is time_step, not the real gap: t0 matters here.
    with torch.no_grad():
        o2_default, _ = model(x[:, 6:], s, times=times[6:])
    assert rel_dev(o2_default, o2) > 1e-8


# -- state round trips --------------------------------------------------------------------------


def test_state_save_load_round_trip_continues_identically():
    B, T = 3, 10
    model = _model()
    x, dt = _x(B, 2 * T), _dt(B, 2 * T)
    with torch.no_grad():
        _, state = model(x[:, :T], dt=dt[:, :T])
        buf = io.BytesIO()
        torch.save(state.as_dict(), buf)
        buf.seek(0)
        loaded = DREAMState.from_dict(torch.load(buf, weights_only=True))
        for k in STATE_FIELDS:
            assert torch.equal(getattr(loaded, k), getattr(state, k))
        a, sa = model(x[:, T:], state, dt=dt[:, T:])
        b, sb = model(x[:, T:], loaded, dt=dt[:, T:])
    assert torch.equal(a, b)
    for k in STATE_FIELDS:
        assert torch.equal(getattr(sa, k), getattr(sb, k))


def test_two_layer_state_list_round_trip():
    B, T = 2, 8
    model = _model(num_layers=2)
    x = _x(B, 2 * T)
    with torch.no_grad():
        _, states = model(x[:, :T])
        assert isinstance(states, list) and len(states) == 2
        buf = io.BytesIO()
        torch.save([s.as_dict() for s in states], buf)
        buf.seek(0)
        loaded = [DREAMState.from_dict(d) for d in torch.load(buf, weights_only=True)]
        a, _ = model(x[:, T:], states)
        b, _ = model(x[:, T:], loaded)
    assert torch.equal(a, b)


def test_state_select_cat_detach_to():
    B, T = 4, 10
    model = _model()
    x, dt = _x(B, 2 * T), _dt(B, 2 * T)
    _, state = model(x[:, :T], dt=dt[:, :T])  # with autograd on: the state carries a graph
    assert state.h.requires_grad
    det = state.detach()
    assert not any(t.requires_grad for t in det)
    for k in STATE_FIELDS:
        assert torch.equal(getattr(det, k), getattr(state, k))

    with torch.no_grad():
        full, _ = model(x[:, T:], det, dt=dt[:, T:])
        # select keeps a batch axis; continuing a selection equals those rows of the full run.
        for idx in ([2], [3, 0], 1, torch.tensor([1, 2])):
            sub = det.select(idx)
            rows = [idx] if isinstance(idx, int) else list(torch.as_tensor(idx).tolist())
            assert sub.h.shape == (len(rows), H)
            o, _ = model(x[rows, T:], sub, dt=dt[rows, T:])
            assert rel_dev(o, full[rows]) <= TOL
        # cat inverts a split.
        joined = DREAMState.cat([det.select(slice(0, 1)), det.select(slice(1, 4))])
        for k in STATE_FIELDS:
            assert torch.equal(getattr(joined, k), getattr(det, k))

    s32 = det.to(torch.float32)
    assert all(t.dtype == torch.float32 for t in s32)
    model32 = _model().float()
    model32.load_state_dict(model.state_dict())
    with torch.no_grad():
        o32, _ = model32(x[:, T:].float(), s32, dt=dt[:, T:])
    assert rel_dev(o32.double(), full) < 1e-4


# -- an empty batch ------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_empty_batch_gives_empty_outputs_like_lstm(batch_first, num_layers):
    T = 4
    model = _model(num_layers=num_layers, batch_first=batch_first)
    lstm = torch.nn.LSTM(I, H, num_layers=num_layers, batch_first=batch_first, dtype=F64)
    x = torch.zeros((0, T, I) if batch_first else (T, 0, I), dtype=F64)
    out, states = model(x)
    expected, _ = lstm(x)
    assert out.shape == expected.shape == ((0, T, H) if batch_first else (T, 0, H))
    states = [states] if num_layers == 1 else states
    assert len(states) == num_layers and all(c.shape[0] == 0 for s in states for c in s)
    out.sum().backward()  # an empty loss still back-propagates, as with nn.LSTM
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters() if p.requires_grad)


def test_empty_batch_with_times_state_and_trace():
    model = _model()
    x, times = torch.zeros(0, 3, I, dtype=F64), torch.zeros(0, 3, dtype=F64)
    _, state = model(x)
    out, state2, trace = model(x, state, times=times, return_trace=True)
    _, _, one = model(_x(1, 3), times=_times(1, 3), return_trace=True)
    assert out.shape == (0, 3, H) and state2.h.shape == (0, H)
    assert [t.shape[1:] for t in trace] == [t.shape[1:] for t in one] and all(t.shape[0] == 0 for t in trace)
