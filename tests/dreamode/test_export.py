"""Export: ``dreamode.export.export_euler`` gives a ``torch.export`` program of the Euler rule that
computes what the eager model computes, for new inputs, other batch sizes and other lengths.

References: the eager ``DREAM`` on its default fast path (a rearranged kernel: equal to rounding,
≤ 1e-6 in float32) and on its generic Euler path (the same operations: equal bit for bit).
"""

from __future__ import annotations

import io

import pytest
import torch

from dreamode import DREAM, DREAMState, _fast_euler
from dreamode.export import EulerProgram, as_tuples, export_euler

I, H, R = 3, 5, 2
F32, F64 = torch.float32, torch.float64


def _inputs(B, T, dtype=F32, seed=0, masked=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, I, generator=g, dtype=F64).to(dtype)
    dt = (0.02 + 0.15 * torch.rand(B, T, generator=g, dtype=F64)).to(dtype)
    mask = (torch.rand(B, T, I, generator=g) > 0.3).to(dtype) if masked else None
    return x, dt, mask


def _eager(model, x, dt, state, mask=None, generic=False):
    with torch.no_grad():
        if generic:
            with _fast_euler.disabled():
                return model(x, state, dt=dt, mask=mask)
        return model(x, state, dt=dt, mask=mask)


@pytest.fixture(scope="module")
def exported():
    torch.manual_seed(0)
    model = DREAM(I, H, R).eval()
    x, dt, _ = _inputs(2, 8)
    return model, export_euler(model, x, dt)


@pytest.mark.parametrize("B,T", [(2, 8), (3, 17), (1, 1)])
def test_exported_program_equals_the_eager_model(exported, B, T):
    model, program = exported
    x, dt, _ = _inputs(B, T, seed=B * 100 + T)  # new inputs, other shapes than the example's
    state = model.init_state(B)
    with torch.no_grad():
        out, st = program.module()(x, dt, as_tuples(state))
    ref, ref_state = _eager(model, x, dt, state)
    gen, gen_state = _eager(model, x, dt, state, generic=True)
    assert out.shape == (B, T, H)
    assert float((out - ref).abs().max()) <= 1e-6
    assert torch.equal(out, gen)
    for name, a, b, c in zip(DREAMState._fields, st, ref_state, gen_state):
        assert float((a - b).abs().max()) <= 1e-6 * max(1.0, float(b.abs().max())), name
        assert torch.equal(a, c), name


def test_exported_program_streams(exported):
    model, program = exported
    x, dt, _ = _inputs(2, 12, seed=7)
    run = program.module()
    with torch.no_grad():
        a, s = run(x[:, :5], dt[:, :5], as_tuples(model.init_state(2)))
        b, s = run(x[:, 5:], dt[:, 5:], s)
    gen, gen_state = _eager(model, x, dt, None, generic=True)
    assert torch.equal(torch.cat([a, b], 1), gen)
    assert all(torch.equal(u, v) for u, v in zip(s, gen_state))


@pytest.mark.slow
def test_saved_and_loaded_program_gives_the_same_outputs(exported):
    model, program = exported
    buf = io.BytesIO()
    torch.export.save(program, buf)
    buf.seek(0)
    loaded = torch.export.load(buf)
    x, dt, _ = _inputs(4, 9, seed=3)
    st = as_tuples(model.init_state(4))
    with torch.no_grad():
        assert torch.equal(loaded.module()(x, dt, st)[0], program.module()(x, dt, st)[0])


@pytest.mark.slow
@pytest.mark.parametrize("dynamic", [True, False])
def test_export_float64_two_layers_mask_and_linear_input(dynamic):
    torch.manual_seed(1)
    model = DREAM(I, H, R, num_layers=2, interpolation="linear", dtype=F64).eval()
    x, dt, mask = _inputs(2, 6, F64, masked=True)
    program = export_euler(model, x, dt, mask=mask, dynamic=dynamic)
    shapes = [(2, 6), (3, 11)] if dynamic else [(2, 6)]
    for B, T in shapes:
        x, dt, mask = _inputs(B, T, F64, seed=T, masked=True)
        state = model.init_state(B)
        with torch.no_grad():
            out, st = program.module()(x, dt, as_tuples(state), mask)
        gen, gen_state = _eager(model, x, dt, state, mask, generic=True)
        ref, _ = _eager(model, x, dt, state, mask)
        assert torch.equal(out, gen)
        assert float((out - ref).abs().max()) <= 1e-12
        for layer, layer_ref in zip(st, gen_state):
            assert all(torch.equal(a, b) for a, b in zip(layer, layer_ref))


def test_eager_program_is_the_reference_rule_and_refuses_other_solvers():
    """EulerProgram run eagerly (no export) equals the generic path; other solvers are refused."""
    torch.manual_seed(2)
    model = DREAM(I, H, R, dtype=F64)
    x, dt, _ = _inputs(2, 5, F64)
    with torch.no_grad():
        out, _ = EulerProgram(model, dynamic=False)(x, dt, as_tuples(model.init_state(2)))
    assert torch.equal(out, _eager(model, x, dt, None, generic=True)[0])
    with pytest.raises(ValueError, match=r"exports the Euler rule .* solver='rk4'"):
        EulerProgram(DREAM(I, H, R, solver="rk4"))
    with pytest.raises(ValueError, match=r"solver='euler', max_step=0.05"):
        EulerProgram(DREAM(I, H, R, max_step=0.05))
