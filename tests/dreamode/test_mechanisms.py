"""The seed's four mechanisms do what it says, on constructed signals (issue 3, item 6)."""

import pytest
import torch

from dreamode import DREAM, DREAMState


@pytest.fixture(autouse=True, scope="module")
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def regime_switch(seed: int, T1: int = 150, T2: int = 150, I: int = 8) -> torch.Tensor:
    """A familiar noisy pattern for T1 steps, then an abrupt switch to a different one."""
    g = torch.Generator().manual_seed(seed)
    pattern = 0.5 * torch.randn(I, generator=g)
    a = pattern + 0.05 * torch.randn(T1, I, generator=g)
    b = -2 * pattern + 0.05 * torch.randn(T2, I, generator=g)
    return torch.cat([a, b]).unsqueeze(0)


@pytest.fixture(scope="module")
def switch_traces(float64):
    runs = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = DREAM(8, 32, rank=4)
        with torch.no_grad():
            _, state, trace = model(regime_switch(seed), return_trace=True)
        runs.append((model, state, trace))
    return runs


def window(v: torch.Tensor, a: int, b: int) -> float:
    return float(v[0, a:b].mean())


def test_surprise_spikes_at_a_regime_switch_and_habituates(switch_traces):
    for _, _, tr in switch_traces:
        before = window(tr.surprise, 120, 150)
        spike = window(tr.surprise, 150, 155)
        later = window(tr.surprise, 200, 250)
        assert spike > 0.9, spike
        assert spike > before + 0.4, (before, spike)
        # habituation: the same new input keeps arriving and surprise falls back
        assert later < 0.6 * spike, (spike, later)


def test_tau_falls_when_surprise_rises(switch_traces):
    for model, _, tr in switch_traces:
        tau_before = window(tr.tau, 120, 150)
        tau_spike = window(tr.tau, 150, 155)
        assert tau_spike < 0.6 * tau_before, (tau_before, tau_spike)
        # and τ is exactly the liquid law of the surprise
        f = model.fields[0]
        expected = torch.clamp(f.tau_sys / (1 + tr.surprise * f.surprise_scale), f.config.tau_min, f.config.tau_max)
        torch.testing.assert_close(tr.tau, expected, rtol=1e-12, atol=0)


def test_fast_weights_change_during_inference_without_an_optimizer(switch_traces):
    for model, state, tr in switch_traces:
        assert all(p.grad is None for p in model.parameters())
        assert float(state.U.norm()) > 1e-2
        assert tr.fast_weight_norm[0, -1] > tr.fast_weight_norm[0, 10]


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
