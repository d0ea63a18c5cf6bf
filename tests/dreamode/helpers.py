"""Helpers shared by the tests of the Euler paths (the fused path, the C++ kernels, the reference rule).

Small float64 models and data, the call counters that prove which path ran, and one comparison of
two runs (outputs, final state and every gradient). The numerics under test are never re-used
here: independent expectations come from ``reference.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest
import torch
from reference import STATE_FIELDS, rel_dev
from torch.func import functional_call

from dreamode import DREAM, DREAMState
from dreamode import _fast_euler as fe
from dreamode import _fast_rk as frk

F64 = torch.float64
TOL = 1e-12
I, H, R = 5, 7, 3

# the cell's switches and the edges of its clamps, for the comparisons of two paths
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
# the cases that start from a given state (‖U‖_F above target_norm: the homeostatic bound acts)
WITH_STATE0 = ("default", "tau_clamped", "both_off")


@contextlib.contextmanager
def counting() -> Iterator[dict[str, int]]:
    """Counts the sequences (``seq``), single steps (``step``) and Runge-Kutta sequences (``rk``)
    that go through the fast paths."""
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


# Long steps: Δt up to 3 time units (30 × time_step) with τ >= 5, so that the hidden update
# Δt/τ <= 0.6 stays a convex combination and the explicit rule itself stays finite, while the running
# statistics take rates error_smoothing·Δt/time_step up to 1.5 > 1 (an Euler step of their EMA
# overshoots: error_var may dip below 0 for a step, which the rule reads as max(error_var, 0)).
# Without fast weights: their homeostatic bound (rate up to homeostasis_rate = 10) is stiff at such steps.
LONG_STEPS = dict(tau_min=5.0, ltc_tau_sys=5.0, fast_weights=False)
LONG_DT_MAX = 3.0


def data(
    B: int = 4, T: int = 24, seed: int = 1, dt_max: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x, dt, mask)``: a regime switch half way, steps uniform in [0.02, ``dt_max``], whole
    steps and a whole sample unobserved."""
    g = torch.Generator().manual_seed(seed)
    x = 2 * torch.randn(B, T, I, generator=g, dtype=F64)
    x[:, T // 2 :] += 2 * torch.randn(B, 1, I, generator=g, dtype=F64)  # a regime switch
    dt = 0.02 + (dt_max - 0.02) * torch.rand(B, T, generator=g, dtype=F64)
    mask = (torch.rand(B, T, I, generator=g) > 0.3).to(F64)
    mask[1, 3:6] = 0.0  # whole steps unobserved
    mask[2] = 0.0  # a sample never observed
    return x, dt, mask


def state0(model: DREAM, B: int, seed: int = 9) -> DREAMState:
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


def loss(out: torch.Tensor, state) -> torch.Tensor:
    """A loss that reaches every output and every state component with a different weight."""
    w = torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)
    if isinstance(state, list):  # several layers
        return sum(loss(out, s) for s in state)
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


def run(model: DREAM, x, dt, mask, lengths, s0: DREAMState | None, fast: bool) -> tuple:
    """``(output, final state, gradients of x, dt, the initial state and every parameter)``, through
    the fast path (``fast``; asserted to have run) or the generic one."""
    ctx = contextlib.nullcontext() if fast else fe.disabled()
    with ctx, counting() as calls:
        inputs = [x, dt] + ([] if s0 is None else list(s0))
        inputs = [t.detach().clone().requires_grad_() for t in inputs]
        z0 = None if s0 is None else DREAMState(*inputs[2:])
        out, state = model(inputs[0], z0, dt=inputs[1], mask=mask, lengths=lengths)
        grads = torch.autograd.grad(loss(out, state), (*inputs, *model.parameters()), allow_unused=True)
    assert (calls["seq"] + calls["rk"] > 0) == fast, calls
    state = state[-1] if isinstance(state, list) else state
    return out.detach(), DREAMState(*(c.detach() for c in state)), grads


def assert_same_results(model: DREAM, s0: DREAMState | None, got: tuple, ref: tuple, tol: float = TOL) -> None:
    """Two results of :func:`run`: outputs, final state and every gradient agree to ``tol``."""
    (o1, s1, g1), (o2, s2, g2) = got, ref
    assert rel_dev(o1, o2) <= tol
    for k in STATE_FIELDS:
        assert rel_dev(getattr(s1, k), getattr(s2, k)) <= tol, k
    names = ["x", "dt"] + ([] if s0 is None else [f"state.{k}" for k in STATE_FIELDS])
    names += [n for n, _ in model.named_parameters()]
    for n, a, b in zip(names, g1, g2):
        assert (a is None) == (b is None), n
        if a is not None:
            assert rel_dev(a, b) <= tol, (n, rel_dev(a, b))


def gradcheck_fast_path(solver: str, lengths: list[int], masked: bool, counter: str) -> None:
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


def assert_backward_twice_needs_retain_graph(
    model: DREAM, T: int = 6, path: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
) -> None:
    """A second backward pass gives the same gradient again when the first retained the graph,
    and a clear error when it did not (``path``: the context the forward runs in)."""
    x, dt, _ = data(T=T)
    x.requires_grad_()
    with path():
        out, _ = model(x, dt=dt)
    out.sum().backward(retain_graph=True)
    first = x.grad.clone()
    out.sum().backward()
    assert rel_dev(x.grad, 2 * first) <= TOL
    with pytest.raises(RuntimeError, match="second time"):
        out.sum().backward()
