"""Physics residuals at collocation times (the PINN-style penalty ``‖dx/dt − g(t, x)‖²``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def _check_times(where: str, t: object) -> Tensor:
    if not isinstance(t, Tensor) or t.dim() != 1 or len(t) < 1 or not t.is_floating_point():
        got = f"shape {tuple(t.shape)}, {t.dtype}" if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"{where}: t must be a non-empty 1-D floating tensor of collocation times, got {got}")
    return t


def time_derivative(model: Callable[[Tensor], Tensor], t: Tensor) -> tuple[Tensor, Tensor]:
    """``(x, dx/dt)`` of a differentiable trajectory model at the times ``t``, by autograd.

    Args:
        model: ``t (N,) -> x (N, D)`` (or ``(N,)``), pointwise in time: ``x[n]`` may depend on
            ``t[n]`` only (an MLP of ``t`` applied row by row is; a model mixing rows is not).
        t: collocation times ``(N,)``; it need not require grad (a differentiable copy is made).

    Returns:
        ``x`` and ``dx/dt``, both of ``model``'s output shape, in the autograd graph
        (``create_graph``), so a loss of them trains ``model``'s parameters.
    """
    t = _check_times("time_derivative", t).detach().requires_grad_(True)
    with torch.enable_grad():
        x = model(t)
        if not isinstance(x, Tensor) or x.shape[:1] != t.shape or x.dim() > 2:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"time_derivative: model(t) must return (N,) or (N, D) for N={len(t)} times, got {shape}")
        cols = x.unsqueeze(-1) if x.dim() == 1 else x
        # Rows are independent, so the gradient of a column's sum is that column's derivative at every time.
        grads = []
        for d in range(cols.shape[1]):
            (g,) = torch.autograd.grad(cols[:, d].sum(), t, create_graph=True, allow_unused=True)
            grads.append(torch.zeros_like(t) if g is None else g)
        dxdt = torch.stack(grads, dim=-1)
    return x, dxdt.reshape(x.shape)


def physics_residual(
    model: Callable[[Tensor], Tensor],
    g: Callable[[Tensor, Tensor], Tensor],
    t: Tensor,
) -> Tensor:
    """``dx/dt − g(t, x)`` at the collocation times ``t``, for the trajectory model ``x = model(t)``.

    Args:
        model: differentiable ``t (N,) -> x (N, D)``, pointwise in time (see `time_derivative`).
        g: the known ODE, called once as ``g(t, x)`` with ``t`` ``(N,)`` and ``x`` ``(N, D)``,
            returning ``(N, D)``; e.g. a `ParametricPhysics` (its θ then learn from the residual too).
        t: collocation times ``(N,)``.

    Returns:
        The residual ``(N, D)`` (``(N,)`` when ``model`` returns ``(N,)``).
    """
    x, dxdt = time_derivative(model, t)
    rhs = g(t.detach(), x)
    if not isinstance(rhs, Tensor) or rhs.shape != x.shape:
        shape = tuple(rhs.shape) if isinstance(rhs, Tensor) else type(rhs).__name__
        raise ValueError(f"physics_residual: g(t, x) must return the shape of x {tuple(x.shape)}, got {shape}")
    return dxdt - rhs


def collocation_loss(
    model: Callable[[Tensor], Tensor],
    g: Callable[[Tensor, Tensor], Tensor],
    t: Tensor,
    *,
    scale: Tensor | float | None = None,
) -> Tensor:
    """The PINN penalty ``mean_n ‖(dx/dt − g(t_n, x_n)) / scale‖²`` at the collocation times ``t``.

    Zero exactly when the model's trajectory satisfies the ODE at every ``t_n``. Add it, with a
    weight, to a data loss on the observations: the model is then fitted to the data *and* pulled
    toward the physics between them.

    Args:
        model: differentiable ``t (N,) -> x (N, D)``, pointwise in time.
        g: the known ODE ``g(t (N,), x (N, D)) -> (N, D)``.
        t: collocation times ``(N,)``; see `collocation_times`.
        scale: per-component scale ``(D,)`` or a number, dividing the residual so that components
            of different units weigh alike; ``None``: 1.

    Returns:
        A scalar tensor.
    """
    r = physics_residual(model, g, t)
    if r.dim() == 1:
        r = r.unsqueeze(-1)
    if scale is not None:
        r = r / torch.as_tensor(scale, dtype=r.dtype, device=r.device)
    return r.square().sum(-1).mean()


def collocation_times(
    t0: float,
    t1: float,
    n: int,
    *,
    random: bool = False,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """``n`` collocation times in ``[t0, t1]``: evenly spaced, or stratified random (one per cell).

    Redraw the random ones every iteration (a new ``generator`` state) to cover the interval.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"collocation_times: n must be a positive int, got {n!r}")
    if not t1 > t0:
        raise ValueError(f"collocation_times: expected t0 < t1, got t0={t0!r}, t1={t1!r}")
    if not random:
        return torch.linspace(t0, t1, n, dtype=dtype)
    edges = torch.linspace(t0, t1, n + 1, dtype=dtype)
    u = torch.rand(n, generator=generator, dtype=dtype)
    return edges[:-1] + u * (edges[1:] - edges[:-1])


__all__ = ["collocation_loss", "collocation_times", "physics_residual", "time_derivative"]
