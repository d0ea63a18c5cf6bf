"""The Euler path is the original DREAM-NN update rule (and ``ltc-fused`` the semi-implicit step).

``DREAM(solver="euler")`` and ``DREAMCell`` in float64 are compared with an independent NumPy
float64 re-computation of docs/dream-cell.md (``reference.py``). Criterion: for every compared tensor
(outputs and each of the seven state components), ``max|library − reference| / max|reference|``
≤ 1e-12 (∞-norm relative deviation; see ``reference.rel_dev``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import LONG_DT_MAX, LONG_STEPS
from reference import STATE_FIELDS, euler_step, initial_state, params_from_field, reference_euler, rel_dev

from dreamode import DREAM, DREAMCell, DREAMState
from dreamode import _fast_euler as fe

TOL = 1e-12
I, H = 6, 10


def _compare(out, state, ref_out, ref_state) -> None:
    """Outputs and each of the seven state components within TOL of the reference."""
    devs = {"output": rel_dev(out, ref_out)}
    for k in STATE_FIELDS:
        devs[k] = rel_dev(getattr(state, k), ref_state[k])
    assert max(devs.values()) <= TOL, devs


def _model(seed: int = 0, rank: int = 4, **config) -> DREAM:
    torch.manual_seed(seed)
    return DREAM(I, H, rank, solver="euler", dtype=torch.float64, **config)


def _inputs(B: int, T: int, scale: float, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # A regime switch half way: the surprise gate sees familiar and unfamiliar stretches.
    x = scale * torch.randn(B, T, I, generator=g, dtype=torch.float64)
    x[:, T // 2 :] += 1.5 * scale * torch.randn(B, 1, I, generator=g, dtype=torch.float64)
    return x


def _irregular_dt(B: int, T: int, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # Per-sample steps between 0.02 and 0.2 (up to twice time_step). Much longer gaps make the
    # explicit Euler rule itself diverge (the homeostatic term is stiff), for the library and the
    # reference alike: a property of the rule, not something this comparison is about.
    return 0.02 + 0.18 * torch.rand(B, T, generator=g, dtype=torch.float64)


def _random_mask(B: int, T: int, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(B, T, I, generator=g) > 0.3).to(torch.float64)
    mask[1, 10:15] = 0.0  # every channel missing for five steps
    mask[2] = 0.0  # a sample with no observed channel at all
    return mask


CASES = {
    "default": dict(config={}, dt="none"),
    "adaptive_forgetting": dict(config=dict(adaptive_forgetting_scale=3.0, forgetting_rate=0.2), dt="none"),
    "perturbed_scalars": dict(
        config=dict(entropy_influence=0.7, kappa=-0.4, surprise_temperature=0.35, ltc_surprise_scale=2.0),
        dt="irregular",
    ),
    "irregular_dt": dict(config={}, dt="irregular"),
    "times": dict(config={}, dt="times"),
    "mask": dict(config={}, dt="irregular", mask=True),
    "lengths": dict(config={}, dt="irregular", lengths=[40, 25, 1, 37]),
    "mask_lengths_state": dict(config={}, dt="irregular", mask=True, lengths=[33, 40, 12, 5], state0=True),
    "ltc_disabled": dict(config=dict(ltc_enabled=False), dt="irregular"),
    "fast_weights_off": dict(config=dict(fast_weights=False), dt="irregular"),
    "sleep_off": dict(config=dict(sleep_enabled=False), dt="irregular"),
    "tau_clamped": dict(config=dict(ltc_tau_sys=2.0, tau_min=0.5, tau_max=1.0), dt="none", tau_clamped=True),
    "homeostasis": dict(config=dict(base_plasticity=1.0), rank=6, T=60, scale=3.0, dt="none", homeostasis=True),
    "habituation_saturates": dict(
        config=dict(max_adaptive_tau=1.2, habituation_rate=0.3), dt="none", saturation=True, scale=3.0
    ),
}


def _run_case(name: str, spec: dict):
    B, T = 4, spec.get("T", 40)
    model = _model(rank=spec.get("rank", 4), **spec["config"])
    cfg = model.config
    x = _inputs(B, T, spec.get("scale", 2.0))
    kwargs = {}
    if spec["dt"] == "none":
        dt = torch.full((B, T), cfg.time_step, dtype=torch.float64)
    elif spec["dt"] == "irregular":
        dt = _irregular_dt(B, T)
        kwargs["dt"] = dt
    else:  # times: the first step is time_step, then the differences
        dt = _irregular_dt(B, T)
        times = 3.0 + torch.cumsum(dt, dim=1)
        kwargs["times"] = times
        # The steps the rule sees are the differences of the times (not the rounded-away dt).
        dt = torch.cat([torch.full((B, 1), cfg.time_step, dtype=torch.float64), times.diff(dim=1)], dim=1)
    mask = _random_mask(B, T) if spec.get("mask") else None
    lengths = spec.get("lengths")
    state0 = None
    if spec.get("state0"):
        g = torch.Generator().manual_seed(9)
        init = model.init_state(B)
        state0 = DREAMState(
            h=0.5 * torch.randn(B, H, generator=g, dtype=torch.float64),
            U=0.3 * torch.randn(B, H, cfg.rank, generator=g, dtype=torch.float64),
            U_target=0.1 * torch.randn(B, H, cfg.rank, generator=g, dtype=torch.float64),
            error_mean=0.2 * torch.randn(B, I, generator=g, dtype=torch.float64),
            error_var=0.5 + torch.rand(B, I, generator=g, dtype=torch.float64),
            avg_surprise=torch.rand(B, generator=g, dtype=torch.float64),
            adaptive_tau=init.adaptive_tau + 0.5 * torch.rand(B, generator=g, dtype=torch.float64),
        )
    with torch.no_grad():
        out, state = model(
            x,
            state0,
            mask=mask,
            lengths=None if lengths is None else torch.tensor(lengths),
            **kwargs,
        )
    ref_out, ref_state, diag = reference_euler(
        params_from_field(model.fields[0]),
        cfg,
        x.numpy(),
        dt.numpy(),
        None if mask is None else mask.numpy(),
        None if lengths is None else np.array(lengths),
        None if state0 is None else {k: v.numpy() for k, v in state0.as_dict().items()},
        return_diag=True,
    )
    return model, (x, dt, mask, lengths), out, state, ref_out, ref_state, diag


@pytest.mark.parametrize("name", list(CASES))
def test_euler_path_equals_reference(name):
    spec = CASES[name]
    model, (x, dt, mask, lengths), out, state, ref_out, ref_state, diag = _run_case(name, spec)
    cfg = model.config

    _compare(out, state, ref_out, ref_state)

    # The test exercises the gate: surprise varies over the sequence, it is not a constant.
    S = diag["S"][~np.isnan(diag["S"])]
    assert S.max() - S.min() > 0.3, (S.min(), S.max())
    if lengths is not None:
        for b, L in enumerate(lengths):
            assert torch.all(out[b, L:] == 0)
    if cfg.ltc_enabled:
        tau = diag["tau"][~np.isnan(diag["tau"])]
        assert tau.max() - tau.min() > 0.1 * cfg.tau_min
    if not cfg.fast_weights:
        assert torch.all(state.U == 0) and torch.all(state.U_target == 0)
    elif not cfg.sleep_enabled:
        assert torch.all(state.U_target == 0) and state.U.abs().max() > 0
    else:
        assert state.U_target.abs().max() > 0
    if spec.get("tau_clamped"):
        # Both ends of the clamp were reached.
        assert np.nanmin(diag["tau"]) == cfg.tau_min and np.nanmax(diag["tau"]) == cfg.tau_max
    if spec.get("homeostasis"):
        # The soft bound really acted: ‖U‖_F went above target_norm before some steps.
        assert np.nanmax(diag["norm_U"]) > 1.05 * cfg.target_norm
    if spec.get("saturation"):
        # n rose above θ_max, so the saturated habituation target differs from n ...
        assert np.nanmax(diag["n"]) > 1.5 * cfg.max_adaptive_tau
        assert torch.all(state.adaptive_tau <= cfg.max_adaptive_tau)
        # ... and visibly so: the unsaturated reading gives another path.
        other_out, _ = reference_euler(
            params_from_field(model.fields[0]), cfg, x.numpy(), dt.numpy(), saturate_target=False
        )
        assert rel_dev(other_out, ref_out) > 1e-6


def _cell_from(model: DREAM) -> DREAMCell:
    cell = DREAMCell(model.config, dtype=torch.float64)
    cell.field.load_state_dict(model.fields[0].state_dict())
    return cell


def test_cell_steps_equal_reference_and_sequence_module():
    """A hand loop over DREAMCell equals DREAM step by step, and both equal the reference."""
    B, T = 4, 30
    model = _model(seed=5)
    cell = _cell_from(model)
    x = _inputs(B, T, 2.0, seed=6)
    dt = _irregular_dt(B, T, seed=7)
    mask = _random_mask(B, T, seed=8)
    with torch.no_grad():
        out, state = model(x, dt=dt, mask=mask)
        z = None
        steps = []
        for i in range(T):
            h, z = cell(x[:, i], z, dt[:, i], mask[:, i])
            assert torch.equal(h, z.h)
            steps.append(h)
    hand = torch.stack(steps, dim=1)
    assert rel_dev(hand, out) <= TOL
    for k in STATE_FIELDS:
        assert rel_dev(getattr(z, k), getattr(state, k)) <= TOL, k
    ref_out, ref_state = reference_euler(
        params_from_field(cell.field), cell.config, x.numpy(), dt.numpy(), mask.numpy()
    )
    _compare(hand, z, ref_out, ref_state)


def test_cell_scalar_and_default_dt_equal_reference():
    B, T = 3, 20
    model = _model(seed=11, rank=3)
    cell = _cell_from(model)
    x = _inputs(B, T, 2.0, seed=12)
    p = params_from_field(cell.field)
    for dt_arg, dt_val in ((None, cell.config.time_step), (0.37, 0.37)):
        z = None
        ref_z = initial_state(cell.config, B)
        with torch.no_grad():
            for i in range(T):
                h, z = cell(x[:, i], z, dt_arg)
                ref_out, ref_z = reference_euler(
                    p, cell.config, x[:, i : i + 1].numpy(), np.full((B, 1), dt_val), state0=ref_z
                )
                assert rel_dev(h, ref_out[:, 0]) <= TOL
        _compare(h, z, ref_out[:, 0], ref_z)


def test_cell_unbatched_equals_batched():
    model = _model(seed=13, rank=3)
    cell = _cell_from(model)
    x = _inputs(1, 8, 2.0, seed=14)
    zb = zu = None
    with torch.no_grad():
        for i in range(8):
            hb, zb = cell(x[:, i], zb, 0.2)
            hu, zu = cell(x[0, i], zu, 0.2)
            assert hu.shape == (H,)
            assert torch.equal(hu, hb[0])
    for k in STATE_FIELDS:
        assert torch.equal(getattr(zu, k), getattr(zb, k)[0])


def _long_steps(B: int, T: int, seed: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.02 + (LONG_DT_MAX - 0.02) * torch.rand(B, T, generator=g, dtype=torch.float64)


def test_generic_path_with_long_steps_equals_reference():
    """Steps up to 3 time units with τ >= 5 (``helpers.LONG_STEPS``): the rule stays finite, and the
    generic path follows it, running statistics overshooting included. (The fused paths against it:
    ``test_fast_euler.test_fast_equals_generic_with_long_steps``.)"""
    B, T = 4, 40
    model = _model(**LONG_STEPS)
    x, dt, mask = _inputs(B, T, 2.0), _long_steps(B, T), _random_mask(B, T)
    with torch.no_grad(), fe.disabled():
        out, state = model(x, dt=dt, mask=mask)
    p = params_from_field(model.fields[0])
    ref_out, ref_state = reference_euler(p, model.config, x, dt, mask)
    assert np.isfinite(ref_out).all()
    _compare(out, state, ref_out, ref_state)
    # the case reaches the overshoot: along the never-observed sample error_var dips below 0
    z, lowest = initial_state(model.config, 1), np.inf
    z = {k: v[0] for k, v in z.items()}
    for i in range(T):
        z, _ = euler_step(p, model.config, z, x[2, i].numpy(), mask[2, i].numpy(), float(dt[2, i]))
        lowest = min(lowest, float(z["error_var"].min()))
    assert lowest < 0


@pytest.mark.parametrize(
    "config",
    [{}, dict(sleep_enabled=False), dict(fast_weights=False), dict(adaptive_forgetting_scale=3.0, forgetting_rate=0.2)],
    ids=["default", "sleep_off", "fast_weights_off", "adaptive_forgetting"],
)
def test_ltc_fused_solver_equals_reference_semi_implicit_step(config):
    """``solver="ltc-fused"`` is the semi-implicit step of docs/dream-cell.md (its solver table), written out
    independently in ``reference.ltc_fused_step``; steps up to 3 time units, where it is meant to be used."""
    B, T = 3, 30
    torch.manual_seed(0)
    model = DREAM(I, H, 4, solver="ltc-fused", dtype=torch.float64, base_plasticity=2.0, **config)
    x, dt, mask = _inputs(B, T, 2.0, seed=5), _long_steps(B, T, seed=6), _random_mask(B, T, seed=7)
    with torch.no_grad():
        out, state = model(x, dt=dt, mask=mask)
    p = params_from_field(model.fields[0])
    ref_out, ref_state = reference_euler(p, model.config, x, dt, mask, rule="ltc-fused")
    _compare(out, state, ref_out, ref_state)
