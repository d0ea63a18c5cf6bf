"""Gradients through the solvers: gradcheck for the fixed-step methods, adjoint vs direct backprop."""

from __future__ import annotations

import pytest
import torch
from problems import fixed_step_methods
from torch import nn
from torch.func import functional_call

import solvers

F64 = torch.float64
ADJOINT = [m for m in solvers.available() if solvers.get(m).supports_adjoint]

# rtol (= atol) at which adjoint and direct gradients agree to 1e-6 relative on the field below.
# The discrepancy is ~K * rtol; measured K: dopri8 < 0.1, dopri5 3, adaptive_heun 3, bosh3 6,
# fehlberg2 300 (its error estimate under-reads, see problems.TOL_FACTOR). Others get 1e-9.
ADJOINT_RTOL = {"bosh3": 1e-8, "fehlberg2": 1e-9, "adaptive_heun": 3e-8}
# The two low-order methods need thousands of steps at those tolerances (10-60 s each on 2 cores):
# they run in the slow tier (pytest -m slow).
SLOW_ADJOINT = {"fehlberg2", "adaptive_heun"}


def adjoint_params(methods):
    return [pytest.param(m, marks=pytest.mark.slow) if m in SLOW_ADJOINT else m for m in methods]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


class Field(nn.Module):
    """A small nonlinear field with a matrix and a scalar parameter; depends on t."""

    def __init__(self, dim: int = 3):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.lin = nn.Linear(dim, dim, dtype=F64)
        with torch.no_grad():
            self.lin.weight.copy_(0.6 * torch.randn(dim, dim, generator=g, dtype=F64))
            self.lin.bias.copy_(0.1 * torch.randn(dim, generator=g, dtype=F64))
        self.a = nn.Parameter(torch.tensor(0.7, dtype=F64))

    def forward(self, t, y):
        return self.a * torch.tanh(self.lin(y)) - 0.5 * y + 0.1 * torch.sin(3 * t)


class TupleField(nn.Module):
    """The same dynamics over a tuple state ``(y, q)``, with ``q`` accumulating ``|y|^2``."""

    def __init__(self):
        super().__init__()
        self.inner = Field()

    def forward(self, t, state):
        y, _ = state
        return self.inner(t, y), (y * y).sum(-1)


# --- gradcheck through the fixed-step methods -------------------------------------------------


@pytest.mark.parametrize("method", fixed_step_methods())
def test_gradcheck_wrt_y0_and_module_parameter(method):
    field = Field(dim=2)
    t = torch.tensor([0.0, 0.3, 0.7], dtype=F64)
    y0 = torch.tensor([[0.5, -0.3]], dtype=F64, requires_grad=True)
    w = field.lin.weight.detach().clone().requires_grad_()

    def run(y0, w):
        # functional_call swaps the module's parameter for the tensor gradcheck perturbs.
        def f(t, y):
            return functional_call(field, {"lin.weight": w}, (t, y))

        return solvers.solve(f, y0, t, method, step_size=0.1).ys

    assert torch.autograd.gradcheck(run, (y0, w))


@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_gradcheck_tuple_state_and_closed_over_tensor(method):
    t = torch.tensor([0.0, 0.25, 0.5], dtype=F64)
    x0 = torch.tensor([0.3, -0.2], dtype=F64, requires_grad=True)
    v0 = torch.tensor([[1.0], [0.5]], dtype=F64, requires_grad=True)
    k = torch.tensor(2.0, dtype=F64, requires_grad=True)

    def run(x0, v0, k):
        def f(t, y):
            x, v = y
            return v[:, 0], -(k**2) * x[:, None] - 0.1 * v

        ys = solvers.solve(f, (x0, v0), t, method, step_size=0.05).ys
        return ys[0], ys[1]

    assert torch.autograd.gradcheck(run, (x0, v0, k))


# --- adjoint vs direct backpropagation ----------------------------------------------------------


def _grads(f, y0, t, method, adjoint, rtol, wrt, **kw):
    sol = solvers.solve(f, y0, t, method, adjoint=adjoint, rtol=rtol, atol=rtol, **kw)
    ys = sol.ys if isinstance(sol.ys, tuple) else (sol.ys,)
    # Weight every output time and component differently so that no gradient is a symmetric sum.
    loss = sum((torch.linspace(1.0, 2.0, y.numel(), dtype=F64).reshape(y.shape) * y**2).sum() for y in ys)
    return torch.autograd.grad(loss, wrt)


T_GRID = torch.tensor([0.0, 0.25, 0.5], dtype=F64)


@pytest.mark.parametrize("method", adjoint_params(ADJOINT))
def test_adjoint_matches_direct_for_module_parameters(method):
    field = Field()
    y0 = torch.tensor([[0.5, -1.0, 0.3], [1.2, 0.1, -0.4]], dtype=F64, requires_grad=True)
    wrt = [y0, *field.parameters()]
    rtol = ADJOINT_RTOL.get(method, 1e-9)
    adj = _grads(field, y0, T_GRID, method, True, rtol, wrt)
    direct = _grads(field, y0, T_GRID, method, False, rtol, wrt)
    for name, a, d in zip(["y0", "lin.weight", "lin.bias", "a"], adj, direct):
        assert rel_err(a, d) < 1e-6, name


@pytest.mark.parametrize("method", adjoint_params(ADJOINT))
def test_adjoint_matches_direct_for_closed_over_tensors(method):
    # One layer's output driving the next: u comes from an upstream encoder and f closes over it
    # (and over a plain weight tensor W). Listing them in adjoint_params makes the adjoint return
    # their gradients, which autograd carries on into the encoder.
    g = torch.Generator().manual_seed(1)
    encoder = nn.Linear(4, 3, dtype=F64)
    x = torch.randn(2, 4, generator=g, dtype=F64)
    W = (0.5 * torch.randn(3, 3, generator=g, dtype=F64)).requires_grad_()
    rtol = ADJOINT_RTOL.get(method, 1e-9)
    wrt = [W, *encoder.parameters()]

    def run(adjoint):
        u = encoder(x)

        def f(t, y):
            return torch.tanh(y @ W + u) - 0.5 * y

        kw = {"adjoint_params": (u, W)} if adjoint else {}
        return _grads(f, torch.tanh(u), T_GRID, method, adjoint, rtol, wrt, **kw)

    adj, direct = run(True), run(False)
    for name, a, d in zip(["W", "encoder.weight", "encoder.bias"], adj, direct):
        assert rel_err(a, d) < 1e-6, name


def test_adjoint_with_tuple_state_sees_module_parameters():
    field = TupleField()
    y0 = (torch.tensor([[0.5, -1.0, 0.3]], dtype=F64), torch.zeros(1, dtype=F64))
    wrt = list(field.parameters())
    adj = _grads(field, y0, T_GRID, "dopri5", True, 1e-9, wrt)
    direct = _grads(field, y0, T_GRID, "dopri5", False, 1e-9, wrt)
    for a, d in zip(adj, direct):
        assert rel_err(a, d) < 1e-6


def test_listing_module_parameters_again_does_not_double_their_gradient():
    field = Field()
    y0 = torch.tensor([[0.5, -1.0, 0.3]], dtype=F64)
    wrt = list(field.parameters())
    plain = _grads(field, y0, T_GRID, "dopri5", True, 1e-9, wrt)
    listed = _grads(field, y0, T_GRID, "dopri5", True, 1e-9, wrt, adjoint_params=wrt)
    for a, b in zip(plain, listed):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0.0)


def test_adjoint_gradient_matches_finite_differences():
    # An independent check of the adjoint itself (not just agreement with direct backprop):
    # central differences of the loss in the scalar parameter, solved at a tight tolerance.
    field = Field()
    y0 = torch.tensor([[0.5, -1.0, 0.3]], dtype=F64)
    (grad,) = _grads(field, y0, T_GRID, "dopri5", True, 1e-10, [field.a])

    def loss(a: float) -> float:
        with torch.no_grad():
            f = lambda t, y: functional_call(field, {"a": torch.tensor(a, dtype=F64)}, (t, y))  # noqa: E731
            ys = solvers.solve(f, y0, T_GRID, "dopri8", rtol=1e-13, atol=1e-13).ys
            return float((torch.linspace(1.0, 2.0, ys.numel(), dtype=F64).reshape(ys.shape) * ys**2).sum())

    eps = 1e-5
    fd = (loss(0.7 + eps) - loss(0.7 - eps)) / (2 * eps)
    assert float(grad) == pytest.approx(fd, rel=1e-7)


@pytest.mark.parametrize("method", fixed_step_methods())
def test_fixed_step_backprop_through_float32_state(method):
    # Gradients keep the state's dtype: a float32 state gives float32 gradients.
    field = Field().float()
    y0 = torch.randn(2, 3, requires_grad=True)
    ys = solvers.solve(field, y0, torch.tensor([0.0, 0.5], dtype=F64), method, step_size=0.1).ys
    assert ys.dtype == torch.float32
    ys.sum().backward()
    assert y0.grad.dtype == torch.float32 and torch.isfinite(y0.grad).all()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in field.parameters())
