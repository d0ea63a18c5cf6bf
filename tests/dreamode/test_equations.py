"""Each equation of docs/dream-cell.md, one step at a time, on states chosen so that every branch acts.

The long comparisons of ``test_euler_rule.py`` start from the initial state, where several terms
are zero or never reach their bounds. Here a batch of six hand-made states puts every clamp on
both sides of its bound, the norm bound on and off, a sample with no observed channel, and a
configuration whose rates all differ (so that exchanging two of them changes the result). The
expectations come from ``reference.py`` (NumPy, written from the math page) and, where it has no
such function, from the equations written out again below:

* the field ``dz/dt``, its aux values and the self-decay rates ``c`` of the ``ltc-fused`` step;
* one Euler step of every path that computes it (the fused sequence loop with and without a
  gradient, ``DREAMCell``'s single steps, the generic field);
* one ``ltc-fused`` step, ``z + Δt·dz/(1 + Δt·c)``;
* one step of ``rk4``, ``midpoint`` and ``heun`` (fused and generic), including a stage whose
  ``error_var`` undershoots below zero and is read as 0.

``tests/mutation_check.py`` mutates the equations of the library one at a time and runs these
tests first.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch
from reference import STATE_FIELDS, euler_step, field_quantities, params_from_field

from dreamode import DREAM, DREAMCell, DREAMState, StiffStepWarning
from dreamode import _fast_euler as fe
from dreamode import _fast_rk as frk

F64 = torch.float64
I, H, R, B = 6, 5, 3, 6
# every rate differs from the others and from its default; the explicit stability limit is
# 2·min(tau_min, 1/homeostasis_rate) = 0.2
CONFIG = dict(
    time_step=0.1,
    forgetting_rate=0.2,
    adaptive_forgetting_scale=1.5,
    base_plasticity=0.8,
    base_threshold=0.8,
    entropy_influence=0.4,
    surprise_temperature=0.3,
    error_smoothing=0.3,
    surprise_smoothing=0.15,
    habituation_rate=0.05,
    max_adaptive_tau=1.5,
    target_norm=1.2,
    homeostasis_rate=3.0,
    kappa=-0.6,
    ltc_tau_sys=1.0,
    ltc_surprise_scale=20.0,
    tau_min=0.1,
    tau_max=0.8,
    sleep_rate=0.4,
    min_surprise_for_sleep=0.5,
)
DT = [0.2, 0.05, 0.13, 0.17, 0.1, 0.08]  # per sample, within the stability limit
RTOL, ATOL = 1e-10, 1e-12


def _model(solver: str = "euler", **overrides) -> DREAM:
    torch.manual_seed(0)
    model = DREAM(I, H, R, solver=solver, dtype=F64, **{**CONFIG, **overrides})
    with torch.no_grad():  # plasticity differs per unit
        model.fields[0].eta.copy_(torch.linspace(0.3, 1.4, H, dtype=F64))
    return model


def _state() -> DREAMState:
    """Six samples, each with its own regime (see the assertions of :func:`test_the_states_reach_every_branch`)."""
    g = torch.Generator().manual_seed(4)
    N = CONFIG["target_norm"]
    U = torch.randn(B, H, R, generator=g, dtype=F64)
    norms = torch.tensor([0.0, 0.7, 1.5, 3.0, 0.3, 2.0], dtype=F64) * N  # ‖U‖_F: off, below, above the bound
    U = U * (norms / U.flatten(1).norm(dim=1))[:, None, None]
    error_var = 0.5 + torch.rand(B, I, generator=g, dtype=F64)
    error_var[1] = 10.0  # ½ log(2πe·var) above 2: the entropy's upper clamp
    error_var[2] = 1e-3  # below 0: the lower clamp, and a large z-score (n above θ_max)
    error_var[4] = 4e-3  # below 0 too; with no channel observed, n = 0 and S stays inside (0, 1)
    error_var[5, :3] = 0.0
    return DREAMState(
        h=0.6 * torch.randn(B, H, generator=g, dtype=F64),
        U=U,
        U_target=0.4 * torch.randn(B, H, R, generator=g, dtype=F64),
        error_mean=0.3 * torch.randn(B, I, generator=g, dtype=F64),
        error_var=error_var,
        avg_surprise=torch.tensor([0.2, 0.45, 0.9, 0.6, 0.05, 0.5], dtype=F64),
        adaptive_tau=torch.tensor([3.0, 0.3, 0.6, 2.2, 0.2, 1.4], dtype=F64),
    )


def _input() -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` ``(B, I)`` and a mask: all observed, partly observed, and sample 4 never observed."""
    g = torch.Generator().manual_seed(5)
    x = 1.5 * torch.randn(B, I, generator=g, dtype=F64)
    mask = (torch.rand(B, I, generator=g) > 0.4).to(F64)
    mask[0] = mask[1] = 1.0
    mask[3, :2] = 0.0
    mask[4] = 0.0
    return x, mask


def _np_state(z: DREAMState, b: int) -> dict[str, np.ndarray]:
    return {k: getattr(z, k)[b].detach().numpy().copy() for k in STATE_FIELDS}


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def _derivative(p: dict, cfg, z: dict, x: np.ndarray, m: np.ndarray | None) -> tuple[dict, dict, dict]:
    """``(dz/dt, quantities, self-decay rates c)`` of one sample, from the math page.

    A negative ``error_var`` (a trial stage of an explicit method can undershoot) is read as 0 by
    the z-score and the entropy; its own rate uses the value itself.
    """
    zc = dict(z, error_var=np.maximum(z["error_var"], 0.0))
    q = field_quantities(p, cfg, zc, x, m)
    r_e = cfg.error_smoothing / cfg.time_step
    r_s = cfg.surprise_smoothing / cfg.time_step
    r_h = cfg.habituation_rate / cfg.time_step
    dev = q["e"] - z["error_mean"]
    d = {
        "h": (q["h_target"] - z["h"]) / q["tau"],
        "U": q["dU"],
        "U_target": q["dU_target"],
        "error_mean": r_e * dev,
        "error_var": r_e * (dev**2 - z["error_var"]),
        "avg_surprise": r_s * (q["S"] - float(z["avg_surprise"])),
        "adaptive_tau": r_h * (min(q["n"], cfg.max_adaptive_tau) - float(z["adaptive_tau"])),
    }
    # the linear self-decay -c·z of each component (the ltc-fused step takes it implicitly)
    norm_U = q["norm_U"]
    if cfg.fast_weights:
        forget = cfg.forgetting_rate * (1.0 + cfg.adaptive_forgetting_scale * q["S"])
        homeo = cfg.homeostasis_rate * max(1.0 - cfg.target_norm / norm_U, 0.0) if norm_U > 0 else 0.0
        c_U = forget + homeo
    else:
        c_U = 0.0
    gamma = float(p["gamma"])
    sleep = cfg.sleep_rate * _sigmoid((cfg.min_surprise_for_sleep - float(z["avg_surprise"])) / gamma)
    c = {
        "h": 1.0 / q["tau"],
        "U": c_U,
        "U_target": sleep if cfg.sleep_enabled else 0.0,
        "error_mean": r_e,
        "error_var": r_e,
        "avg_surprise": r_s,
        "adaptive_tau": r_h,
    }
    return d, q, c


def _close(got, want, what: str) -> None:
    got = got.detach().numpy() if isinstance(got, torch.Tensor) else np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    assert np.isfinite(want).all(), what
    err = np.abs(got - want)
    bound = ATOL + RTOL * np.abs(want)
    assert (err <= bound).all(), f"{what}: deviation {err.max():.3e} (got {got.ravel()[:4]}, want {want.ravel()[:4]})"


def _assert_state(got: DREAMState, want: list[dict], what: str) -> None:
    for b, wb in enumerate(want):
        for k in STATE_FIELDS:
            _close(getattr(got, k)[b], wb[k], f"{what}: sample {b}, {k}")


MASKS = pytest.mark.parametrize("masked", [False, True], ids=["plain", "mask"])


def test_the_states_reach_every_branch():
    """The hand-made batch really puts every clamp and switch of the math page on both sides."""
    model = _model()
    p, cfg = params_from_field(model.fields[0]), model.config
    z, (x, mask) = _state(), _input()
    qs = [_derivative(p, cfg, _np_state(z, b), x[b].numpy(), mask[b].numpy())[1] for b in range(B)]
    tau = np.array([q["tau"] for q in qs])
    assert (tau == cfg.tau_min).any() and (tau == cfg.tau_max).any()
    assert ((tau > cfg.tau_min) & (tau < cfg.tau_max)).any()
    H_e = 0.5 * np.log(2 * np.pi * np.e * z.error_var.numpy().mean(1) + 1e-6)
    S = np.array([q["S"] for q in qs])
    inside = (S > 0.05) & (S < 0.95)  # where S depends visibly on H_e and n
    assert (inside & (H_e > 2)).any() and (inside & (H_e < -1)).any() and (inside & (H_e > 0) & (H_e < 2)).any()
    n = np.array([q["n"] for q in qs])
    assert (n > cfg.max_adaptive_tau).any() and (n < cfg.max_adaptive_tau).any() and (n == 0).any()
    norm = np.array([q["norm_U"] for q in qs])
    N = cfg.target_norm
    assert (norm == 0).any() and ((norm > N / 2) & (norm < N)).any() and (norm > N).any()


@MASKS
def test_field_is_the_math(masked):
    """``DREAMField.evaluate``: every derivative, the aux values and the self-decay rates."""
    model = _model()
    f, cfg = model.fields[0], model.config
    p = params_from_field(f)
    z, (x, mask) = _state(), _input()
    m = mask if masked else None
    with torch.no_grad():
        dz, aux = f.evaluate(z, x, m)
    for b in range(B):
        d, q, c = _derivative(p, cfg, _np_state(z, b), x[b].numpy(), None if m is None else m[b].numpy())
        for k in STATE_FIELDS:
            _close(getattr(dz, k)[b], d[k], f"d{k}/dt, sample {b}")
        _close(aux.surprise[b], q["S"], f"S, sample {b}")
        _close(aux.tau[b], q["tau"], f"tau, sample {b}")
        _close(aux.prediction[b], q["x_hat"], f"prediction, sample {b}")
        _close(aux.error_norm[b], q["n"], f"n, sample {b}")
        for k, dec in zip(STATE_FIELDS, aux.decay):
            rate = dec[b] if isinstance(dec, torch.Tensor) and dec.dim() > 0 else dec
            _close(torch.as_tensor(rate).reshape(-1)[0], c[k], f"decay of {k}, sample {b}")


SWITCHES = ["ltc_enabled", "fast_weights", "sleep_enabled"]


@pytest.mark.parametrize("switch", SWITCHES)
def test_each_switch_removes_its_mechanism(switch):
    """With one mechanism switched off, the field and a fused Euler step are the math without it:
    τ = τ_sys; ``U`` frozen (no Hebbian term, forgetting or norm bound); ``U_target`` frozen."""
    model = _model(**{switch: False})
    f, cfg = model.fields[0], model.config
    p = params_from_field(f)
    z, (x, mask) = _state(), _input()
    with torch.no_grad():
        dz, _ = f.evaluate(z, x, mask)
        _, state = model(x.unsqueeze(1), z, dt=torch.tensor(DT, dtype=F64).unsqueeze(1), mask=mask.unsqueeze(1))
    for b in range(B):
        d = _derivative(p, cfg, _np_state(z, b), x[b].numpy(), mask[b].numpy())[0]
        for k in STATE_FIELDS:
            _close(getattr(dz, k)[b], d[k], f"d{k}/dt, sample {b}")
    _assert_state(state, _euler_reference(model, z, x, mask, DT), f"euler, {switch}=False")


def test_a_negative_error_var_is_read_as_zero():
    """A trial stage of an explicit method can undershoot ``error_var`` below 0: the z-score and
    the entropy read it as 0 (no NaN), and its own rate still uses the value."""
    model = _model()
    f, cfg = model.fields[0], model.config
    p = params_from_field(f)
    z, (x, _) = _state(), _input()
    ev = z.error_var.clone()
    ev[0, :2] = -0.4
    ev[3] = -0.2  # mean(error_var) < 0: the entropy's log would be NaN without the clamp
    z = z._replace(error_var=ev)
    with torch.no_grad():
        dz, _ = f.evaluate(z, x)
    for b in (0, 3):
        d = _derivative(p, cfg, _np_state(z, b), x[b].numpy(), None)[0]
        for k in STATE_FIELDS:
            _close(getattr(dz, k)[b], d[k], f"d{k}/dt, sample {b}")


def _euler_reference(model: DREAM, z: DREAMState, x, m, dt) -> list[dict]:
    p, cfg = params_from_field(model.fields[0]), model.config
    return [
        euler_step(p, cfg, _np_state(z, b), x[b].numpy(), None if m is None else m[b].numpy(), dt[b])[0]
        for b in range(B)
    ]


@contextlib.contextmanager
def _fast(on: bool):
    with contextlib.nullcontext() if on else fe.disabled():
        yield


@MASKS
@pytest.mark.parametrize("fast", [True, False], ids=["fused", "generic"])
@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
def test_one_euler_step_of_the_sequence_module_is_the_seed_rule(masked, fast, grad):
    """``DREAM(solver="euler")`` over one observation: ``h + (Δt/τ)(h_target − h)`` and the EMAs."""
    model = _model()
    z, (x, mask) = _state(), _input()
    m = mask if masked else None
    dt = torch.tensor(DT, dtype=F64)
    xs = x.unsqueeze(1).clone().requires_grad_(grad)
    with _fast(fast), torch.set_grad_enabled(grad):
        _, state = model(xs, z, dt=dt.unsqueeze(1), mask=None if m is None else m.unsqueeze(1))
    _assert_state(state, _euler_reference(model, z, x, m, DT), "DREAM euler")


@MASKS
@pytest.mark.parametrize("fast", [True, False], ids=["fused", "generic"])
def test_one_cell_step_is_the_seed_rule(masked, fast):
    """``DREAMCell``: its scripted single step (no mask), the fused loop (mask) and the generic field."""
    model = _model()
    cell = DREAMCell(model.config, dtype=F64)
    cell.field.load_state_dict(model.fields[0].state_dict())
    z, (x, mask) = _state(), _input()
    m = mask if masked else None
    with _fast(fast), torch.no_grad():
        h, state = cell(x, z, torch.tensor(DT, dtype=F64), m)
    assert torch.equal(h, state.h)
    _assert_state(state, _euler_reference(model, z, x, m, DT), "DREAMCell")


@pytest.mark.parametrize("dt", [0.1, None], ids=["float", "default"])
def test_a_cell_step_of_a_scalar_or_default_length(dt):
    """A float Δt is that step for every sample; ``None`` is ``time_step``."""
    model = _model()
    cell = DREAMCell(model.config, dtype=F64)
    cell.field.load_state_dict(model.fields[0].state_dict())
    z, (x, _) = _state(), _input()
    with torch.no_grad():
        _, state = cell(x, z, 0.07 if dt is not None else None)
    step = 0.07 if dt is not None else model.config.time_step
    _assert_state(state, _euler_reference(model, z, x, None, [step] * B), "DREAMCell scalar dt")


@MASKS
def test_one_ltc_fused_step_takes_each_decay_implicitly(masked):
    """``ltc-fused``: ``z + Δt·dz/(1 + Δt·c)`` per component, with ``c`` its linear self-decay rate."""
    model = _model("ltc-fused")
    p, cfg = params_from_field(model.fields[0]), model.config
    z, (x, mask) = _state(), _input()
    m = mask if masked else None
    dt = [0.2, 0.7, 1.5, 0.05, 3.0, 0.4]  # stable for any step: beyond the explicit limit too
    with torch.no_grad():
        _, state = model(
            x.unsqueeze(1), z, dt=torch.tensor(dt, dtype=F64).unsqueeze(1), mask=None if m is None else m.unsqueeze(1)
        )
    want = []
    for b in range(B):
        zb = _np_state(z, b)
        d, _, c = _derivative(p, cfg, zb, x[b].numpy(), None if m is None else m[b].numpy())
        want.append({k: zb[k] + dt[b] * d[k] / (1.0 + dt[b] * c[k]) for k in STATE_FIELDS})
    _assert_state(state, want, "ltc-fused")


# Butcher tableaux written out (a, b), independent of the solvers package
TABLEAUX = {
    "midpoint": ([[], [0.5]], [0.0, 1.0]),
    "heun": ([[], [1.0]], [0.5, 0.5]),
    "rk4": ([[], [0.5], [0.0, 0.5], [0.0, 0.0, 1.0]], [1 / 6, 1 / 3, 1 / 3, 1 / 6]),
}


def _rk_reference(p, cfg, z: dict, x, m, dt: float, method: str) -> tuple[dict, float]:
    """One step of ``method`` from ``z`` (one sample, input held): ``(z_next, min stage error_var)``."""
    a, bw = TABLEAUX[method]
    ks: list[dict] = []
    lowest = np.inf
    for row in a:
        zi = {k: z[k] + dt * sum(aij * kj[k] for aij, kj in zip(row, ks)) for k in STATE_FIELDS}
        lowest = min(lowest, float(zi["error_var"].min()))
        ks.append(_derivative(p, cfg, zi, x, m)[0])
    return {k: z[k] + dt * sum(bj * kj[k] for bj, kj in zip(bw, ks)) for k in STATE_FIELDS}, lowest


@MASKS
@pytest.mark.parametrize("fast", [True, False], ids=["fused", "generic"])
@pytest.mark.parametrize("method", ["rk4", "midpoint", "heun"])
def test_one_runge_kutta_step_is_its_tableau_over_the_field(method, fast, masked):
    """One fixed step of the tableau over the field; sample 1's long step makes a stage's
    ``error_var`` undershoot below zero (read as 0 by the z-score and the entropy)."""
    model = _model(method)
    p, cfg = params_from_field(model.fields[0]), model.config
    z, (x, mask) = _state(), _input()
    m = mask if masked else None
    dt = [0.1, 0.9, 0.05, 0.15, 0.2, 0.12]
    with _fast(fast), torch.no_grad(), pytest.warns(StiffStepWarning):
        calls = {"n": 0}
        run = frk.run_sequence

        def counted(*a, **k):
            calls["n"] += 1
            return run(*a, **k)

        frk.run_sequence = counted
        try:
            _, state = model(
                x.unsqueeze(1),
                z,
                dt=torch.tensor(dt, dtype=F64).unsqueeze(1),
                mask=None if m is None else m.unsqueeze(1),
            )
        finally:
            frk.run_sequence = run
    assert (calls["n"] == 1) == fast
    want, lowest = [], np.inf
    for b in range(B):
        zb, low = _rk_reference(
            p, cfg, _np_state(z, b), x[b].numpy(), None if m is None else m[b].numpy(), dt[b], method
        )
        want.append(zb)
        lowest = min(lowest, low)
    assert lowest < 0  # the clamp of a negative variance was exercised
    _assert_state(state, want, method)


def _gradients(model: DREAM, z: DREAMState, x, m, dt, fast: bool) -> list[torch.Tensor]:
    """Gradients of a weighted sum of two steps' outputs and final state, with respect to the input,
    the steps, the initial state and the parameters."""
    inputs = [t.detach().clone().requires_grad_() for t in (x, dt, *z)]
    with _fast(fast):
        out, state = model(inputs[0], DREAMState(*inputs[2:]), dt=inputs[1], mask=m)
    w = torch.linspace(-1, 1, H, dtype=F64)
    weights = (1.0, 0.5, -2.0, 1.5, 0.7, 3.0, -1.2)
    loss = (out * w).sum() + sum(c * (s * s if k == "U" else s).sum() for k, c, s in zip(STATE_FIELDS, weights, state))
    return list(torch.autograd.grad(loss, (*inputs, *model.parameters())))


# the generic path reads max(dt) with dt requiring grad (its stiff-step check), as in test_fast_euler.py
@MASKS
def test_the_fused_backward_equals_autograd_of_the_field(masked):
    """The hand-written backward of the fused Euler loop against autograd through the generic
    field (itself checked against the math above), per sample, from the hand-made states: every
    clamp's derivative is taken on both sides of its bound."""
    model = _model()
    z, (x, mask) = _state(), _input()
    xs = torch.stack([x, 0.5 * x], 1)  # two steps
    ms = torch.stack([mask, mask], 1) if masked else None
    dt = torch.tensor([DT, DT[::-1]], dtype=F64).t()
    fused = _gradients(model, z, xs, ms, dt, fast=True)
    generic = _gradients(model, z, xs, ms, dt, fast=False)
    names = ["x", "dt", *STATE_FIELDS, *(n for n, _ in model.named_parameters())]
    for name, a, b in zip(names, fused, generic):
        rows = zip(a, b) if name in ("x", "dt", *STATE_FIELDS) else [(a, b)]  # per sample where per sample
        for i, (ai, bi) in enumerate(rows):
            scale = float(bi.abs().max())
            assert float((ai - bi).abs().max()) <= 1e-10 * scale + 1e-12, (name, i)
