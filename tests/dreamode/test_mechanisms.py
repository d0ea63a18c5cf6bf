"""The four mechanisms of the DREAM cell do what its description says, on constructed signals.

The regime-switch properties hold for every one of 4 initialisations × 32 patterns; their bounds
follow from the equations (docs/dream-cell.md, "The vector field") and the default configuration
(whose values the parameters start at), as each test says.
"""

import math

import numpy as np
import pytest
import torch
from reference import params_from_field, reference_euler, rel_dev

from dreamode import DREAM, DREAMState


@pytest.fixture(autouse=True, scope="module")
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


MODELS, PATTERNS, SWITCH = 4, 32, 150


def regime_switch(seed: int, B: int = 1, T1: int = SWITCH, T2: int = 150, I: int = 8) -> torch.Tensor:
    """``(B, T1 + T2, I)``: per sample a familiar noisy pattern for T1 steps, then an abrupt switch
    to a different one (the pattern p, noise 0.05, then −2p: a jump of 3p, |p| ~ 0.5 per channel)."""
    g = torch.Generator().manual_seed(seed)
    pattern = 0.5 * torch.randn(B, 1, I, generator=g)
    a = pattern + 0.05 * torch.randn(B, T1, I, generator=g)
    b = -2 * pattern + 0.05 * torch.randn(B, T2, I, generator=g)
    return torch.cat([a, b], dim=1)


@pytest.fixture(scope="module")
def switch_traces(float64):
    """MODELS initialisations, each on its own batch of PATTERNS regime switches (samples are
    independent of their batch: test_batching)."""
    runs = []
    for seed in range(MODELS):
        torch.manual_seed(seed)
        model = DREAM(8, 32, rank=4)
        x = regime_switch(seed, PATTERNS)
        with torch.no_grad():
            _, state, trace = model(x, return_trace=True)
        runs.append((model, x, state, trace))
    return runs


def window(v: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """Per-sample mean of ``v[:, a:b]``: ``(B,)``."""
    return v[:, a:b].mean(dim=1)


def _largest_tau_eff(cfg) -> float:
    """An upper bound of the gate's threshold τ_eff = 0.3·τ_0(1 + α·H_e) + 0.7·adaptive_tau (item 4):
    H_e ≤ 2, and adaptive_tau starts at τ_0 and relaxes toward min(n, θ_max)."""
    tau_0, alpha = cfg.base_threshold, cfg.entropy_influence
    return 0.3 * tau_0 * (1 + 2 * alpha) + 0.7 * max(tau_0, cfg.max_adaptive_tau)


def test_surprise_spikes_at_a_regime_switch_and_habituates(switch_traces):
    """At the switch the error jumps by about 3|p| while the error statistics were learnt on the
    familiar stretch (noise 0.05): the z-score n clears the largest possible threshold by
    γ·ln 99, so S = σ((n − τ_eff)/γ) > 0.99. The statistics are EMAs of rate β = error_smoothing
    per step: 50 steps after the switch the old regime weighs (1 − β)^50 ≈ 0.08 in them, the
    persistent new error is no longer surprising and S averages below 1/2 (n below τ_eff)."""
    for model, _, _, tr in switch_traces:
        cfg = model.config
        needed = _largest_tau_eff(cfg) + cfg.surprise_temperature * math.log(99)
        assert bool((tr.error_norm[:, SWITCH] > needed).all()), tr.error_norm[:, SWITCH].min()
        spike = tr.surprise[:, SWITCH]
        assert bool((spike > 0.99).all()), spike.min()
        # the switch is the most surprising of the last 30 familiar steps
        assert bool((spike > tr.surprise[:, SWITCH - 30 : SWITCH].amax(dim=1)).all())
        assert (1 - cfg.error_smoothing) ** 50 < 0.1
        later = window(tr.surprise, SWITCH + 50, SWITCH + 100)
        assert bool((later < 0.5).all()), later.max()


def test_tau_falls_when_surprise_rises(switch_traces):
    """τ = clamp(τ_sys / (1 + κ_s·S)) (item 5): with S > 0.99 at the switch, τ is below
    τ_sys / (1 + 0.99·κ_s) and below every τ of the familiar steps before it."""
    for model, _, _, tr in switch_traces:
        cfg = model.config
        tau_switch = tr.tau[:, SWITCH]
        assert bool((tau_switch < cfg.ltc_tau_sys / (1 + 0.99 * cfg.ltc_surprise_scale)).all())
        assert bool((tau_switch < tr.tau[:, SWITCH - 30 : SWITCH].amin(dim=1)).all())


def test_traced_surprise_and_tau_equal_the_reference(switch_traces):
    """The traced n, S and τ are those of an independent NumPy re-computation of the rule
    (reference.py) along the same inputs, to 1e-12."""
    model, x, _, tr = switch_traces[0]
    field = model.fields[0]
    dt = np.full((2, x.shape[1]), model.config.time_step)
    _, _, diag = reference_euler(params_from_field(field), field.config, x[:2].numpy(), dt, return_diag=True)
    for name, key in (("error_norm", "n"), ("surprise", "S"), ("tau", "tau")):
        assert rel_dev(getattr(tr, name)[:2], diag[key]) <= 1e-12, name


def test_fast_weights_change_during_inference_without_an_optimizer(switch_traces):
    for model, _, state, tr in switch_traces:
        assert all(p.grad is None for p in model.parameters())
        assert bool((state.U.flatten(1).norm(dim=1) > 1e-2).all())
        assert bool((tr.fast_weight_norm[:, -1] > tr.fast_weight_norm[:, 10]).all())


def test_sleep_consolidates_only_while_average_surprise_is_low():
    torch.manual_seed(0)
    model = DREAM(6, 10, rank=3)
    f = model.fields[0]
    base = f.initial_state(2)
    U = 0.3 * torch.randn(1, 10, 3).expand(2, 10, 3)
    # identical samples but for the running average of surprise: quiet (0.02) vs alert (0.9)
    z = base._replace(U=U.clone(), avg_surprise=torch.tensor([0.02, 0.9]))
    with torch.no_grad():
        dz, _ = f.evaluate(z, torch.zeros(2, 6))
    quiet, alert = dz.U_target.flatten(1).norm(dim=1)
    assert quiet > 10 * alert, (quiet, alert)
    # the direction is toward U
    assert float((dz.U_target[0] * (U[0] - z.U_target[0])).sum()) > 0


@pytest.mark.parametrize("switch", ["ltc_enabled", "fast_weights", "sleep_enabled"])
def test_each_ablation_switch_removes_its_mechanism(switch):
    torch.manual_seed(1)
    model = DREAM(8, 32, rank=4, **{switch: False})
    with torch.no_grad():
        _, state, tr = model(regime_switch(0), return_trace=True)
    f = model.fields[0]
    if switch == "ltc_enabled":
        assert torch.equal(tr.tau, f.tau_sys.expand_as(tr.tau))
        assert float(tr.surprise.max() - tr.surprise.min()) > 0.5  # surprise itself still varies
    elif switch == "fast_weights":
        assert torch.count_nonzero(state.U) == 0
        assert torch.count_nonzero(tr.fast_weight_norm) == 0
    else:
        assert torch.count_nonzero(state.U_target) == 0
        assert float(state.U.norm()) > 0


def test_state_is_deterministic_and_per_sample():
    model = DREAM(4, 6, rank=2)
    s = model.init_state(3)
    assert isinstance(s, DREAMState)
    assert torch.count_nonzero(s.h) == 0 and torch.equal(s.error_var, torch.ones(3, 4))
    assert torch.equal(s.adaptive_tau, torch.full((3,), model.config.base_threshold))
