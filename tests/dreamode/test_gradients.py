"""Gradients of the DREAM paths."""

import torch
from torch.func import functional_call

from dreamode import DREAM

F64 = torch.float64


def test_gradcheck_euler_path_parameters_and_input():
    torch.manual_seed(0)
    model = DREAM(3, 4, rank=2, dtype=F64, base_plasticity=2.0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 3, generator=g, dtype=F64, requires_grad=True)
    dt = torch.tensor([[0.1, 0.2, 0.15, 0.1], [0.2, 0.1, 0.18, 0.05]], dtype=F64)  # within the stability limit 0.2
    mask = (torch.rand(2, 4, 3, generator=g) > 0.3).to(F64)
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in model.parameters())

    def f(x, *ps):
        out, state = functional_call(model, dict(zip(names, ps)), (x,), dict(dt=dt, mask=mask))
        return out, state.U, state.error_var

    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-7, rtol=1e-5)


def _grads(model, x, dt):
    out, state = model(x, dt=dt)
    loss = out.square().sum() + state.U.square().sum() + state.avg_surprise.sum()
    return torch.autograd.grad(loss, (x, *model.parameters()))


def _direct_and_adjoint(hidden, **kw):
    """Two ``DREAM(3, hidden, rank=2)`` with the same weights: dopri5 at rtol 1e-10, direct and adjoint."""
    torch.manual_seed(0)
    kw = dict(solver="dopri5", rtol=1e-10, atol=1e-12, dtype=F64, tau_min=0.01, **kw)
    direct = DREAM(3, hidden, rank=2, **kw)
    adjoint = DREAM(3, hidden, rank=2, adjoint=True, **kw)
    adjoint.load_state_dict(direct.state_dict())
    return direct, adjoint


def _assert_close(names, adjoint, direct, tol=1e-6):
    """Each adjoint gradient within ``tol`` (relative 2-norm) of direct backpropagation's."""
    for name, a, b in zip(names, adjoint, direct, strict=True):
        rel = float((a - b).norm() / b.norm().clamp_min(1e-30))
        assert rel < tol, (name, rel)


def test_adjoint_matches_direct_backprop():
    direct, adjoint = _direct_and_adjoint(5)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 3, generator=g, dtype=F64, requires_grad=True)
    dt = torch.tensor([[0.5, 0.2, 0.3, 0.4], [0.1, 0.6, 0.2, 0.3]], dtype=F64)
    g_direct = _grads(direct, x, dt)
    g_adjoint = _grads(adjoint, x, dt)
    names = ["x"] + [n for n, _ in direct.named_parameters()]
    _assert_close(names, g_adjoint, g_direct)


def test_two_layer_model_trains_with_adjoint():
    torch.manual_seed(0)
    model = DREAM(2, 6, rank=2, num_layers=2, solver="dopri5", adjoint=True, rtol=1e-4, atol=1e-6, ltc_tau_sys=0.5)
    head = torch.nn.Linear(6, 1)
    t = torch.linspace(0, 2, 6)
    x = (
        torch.stack([torch.sin(3 * t), torch.cos(3 * t)], dim=-1).expand(4, 6, 2)
        * torch.tensor([1.0, -1.0, 0.5, 2.0])[:, None, None]
    )
    y = torch.tensor([[1.0], [-1.0], [0.5], [2.0]])
    opt = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=0.1)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        out, _ = model(x)
        loss = (head(out[:, -1]) - y).square().mean()
        loss.backward()
        assert all(p.grad is not None for p in model.fields[1].parameters())
        assert model.fields[0].C.grad.abs().sum() > 0  # gradients reach the first layer through the second
        opt.step()
        losses.append(float(loss.detach()))
    assert min(losses[-3:]) < 0.5 * losses[0], losses


def test_adjoint_over_long_sequences_recomputes_segments_exactly():
    """With ``adjoint=True`` the state is kept every ⌈√T⌉ observations and the rest recomputed in
    the backward; gradients (input, steps, initial state, parameters) still match direct
    backpropagation, with padding inside a segment, and the solve statistics count each solve once."""
    direct, adjoint = _direct_and_adjoint(5, base_plasticity=2.0)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 7, 3, generator=g, dtype=F64)
    dt = 0.05 + 0.3 * torch.rand(2, 7, generator=g, dtype=F64)
    lengths = torch.tensor([7, 5])
    h0 = 0.3 * torch.randn(2, 5, generator=g, dtype=F64)

    def grads(model):
        xi, dti, hi = (t.clone().requires_grad_() for t in (x, dt, h0))
        state0 = model.init_state(2)._replace(h=hi)
        out, state = model(xi, state0, dt=dti, lengths=lengths)
        loss = out.square().sum() + state.U.square().sum() + state.avg_surprise.sum()
        return torch.autograd.grad(loss, (xi, dti, hi, *model.parameters())), model.solve_stats[0]

    (g_direct, s_direct), (g_adjoint, s_adjoint) = grads(direct), grads(adjoint)
    names = ["x", "dt", "h0"] + [n for n, _ in direct.named_parameters()]
    _assert_close(names, g_adjoint, g_direct)
    assert len(s_adjoint.per_step_nfe) == 7
    assert s_adjoint.nfe == sum(s_adjoint.per_step_nfe) == s_direct.nfe


def test_adjoint_segments_with_two_layers_and_a_mask_match_direct_backprop():
    """The second layer's input is the first layer's output (it needs a gradient through the
    segments); the mask reaches the recomputed solves."""
    direct, adjoint = _direct_and_adjoint(4, num_layers=2)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 6, 3, generator=g, dtype=F64)
    dt = 0.1 + 0.2 * torch.rand(2, 6, generator=g, dtype=F64)
    mask = (torch.rand(2, 6, 3, generator=g) > 0.3).to(F64)

    def grads(model):
        xi = x.clone().requires_grad_()
        out, states = model(xi, dt=dt, mask=mask)
        loss = out.square().sum() + sum(s.U.square().sum() for s in states)
        return torch.autograd.grad(loss, (xi, *model.parameters()))

    names = ["x"] + [n for n, _ in direct.named_parameters()]
    _assert_close(names, grads(adjoint), grads(direct))
