"""``solve``: validate, pack a tensor or tuple state, dispatch to a registered method."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ._base import Solution, Solver, first_nonfinite
from ._errors import SolverError, closest_name
from ._registry import SolverEntry, get

Field = Callable[[Tensor, Any], Any]


def solve(
    f: Field,
    y0: Tensor | tuple[Tensor, ...],
    t: Tensor,
    method: str | Solver | type[Solver] = "dopri5",
    *,
    adjoint: bool = False,
    rtol: float = 1e-6,
    atol: float = 1e-8,
    step_size: float | None = None,
    options: Mapping[str, Any] | None = None,
    adjoint_params: Sequence[Tensor] = (),
) -> Solution:
    """Solve ``dy/dt = f(t, y)``, ``y(t[0]) = y0``, and return ``y`` at every time of ``t``.

    Args:
        f: vector field ``f(t, y) -> dy/dt`` with the structure of ``y``; ``t`` is a 0-dim tensor.
        y0: initial state, a floating tensor or a tuple of floating tensors of any shapes.
        t: 1-D strictly increasing or strictly decreasing output times, ``(T,)``; ``t[0]`` is the
            initial time. Time arithmetic is done in ``t``'s dtype (use float64).
        method: a registered name (see `available`), a `Solver` instance or class.
        adjoint: backpropagate with the continuous adjoint (memory O(1) in the number of steps).
        rtol: relative tolerance of adaptive methods.
        atol: absolute tolerance of adaptive methods.
        step_size: fixed-step methods only: the longest step; each interval of ``t`` is split into
            the fewest equal substeps not longer than it. ``None``: one step per interval.
        options: method-specific options; unknown names are an error. Every method takes
            ``max_num_steps``, the most steps of the solve (default: 100,000 for adaptive methods,
            1,000,000 for fixed-step ones, plus one per output interval); more raise `SolverError`.
        adjoint_params: with ``adjoint=True``, tensors ``f`` closes over that need gradients
            (the parameters of ``f`` are included automatically when ``f`` is an ``nn.Module``).

    Returns:
        `Solution` with ``ys`` (structure of ``y0``, each ``(T, *y0.shape)``) and ``stats``.

    Raises:
        ValueError, TypeError: invalid arguments (the message names the argument).
        SolverError: the solve failed (step-size underflow, too many steps, NaN/inf), with the time;
            a NaN/inf returned by ``f`` is reported with its time and entry.

    Warns:
        StiffStepWarning: a fixed-step solution grew more than a million-fold and halving the
            step changes it: the step is too long (unstable) for the problem.
    """
    entry, solver = _resolve(method)
    name = entry.name if entry else type(solver).__name__
    where = f"solvers.solve({name})"
    is_tuple = isinstance(y0, tuple)
    state = _check_y0(where, y0)
    _check_t(where, t)
    opts = dict(options or {})
    unknown = sorted(set(opts) - set(solver.options))
    if unknown:
        valid = ", ".join(sorted(solver.options)) or "none"
        hints = {n: closest_name(n, solver.options) for n in unknown}
        hint = "; ".join(f"did you mean {c!r} for {n!r}?" for n, c in hints.items() if c is not None)
        raise ValueError(
            f"{where}: unknown option(s) {', '.join(map(repr, unknown))}; {hint + ' ' if hint else ''}valid options: {valid}"
        )
    _check_tolerances(where, rtol, atol)
    adaptive = entry.adaptive if entry else False
    if step_size is not None:
        if adaptive:
            raise ValueError(
                f"{where}: step_size applies to fixed-step methods; {name} is adaptive (use rtol/atol, or options={{'first_step': ...}})"
            )
        if not isinstance(step_size, (int, float)) or not step_size > 0 or step_size == float("inf"):
            raise ValueError(f"{where}: step_size must be a positive finite number, got {step_size!r}")
    if adjoint and not (entry and entry.supports_adjoint):
        able = [n for n in _adjoint_methods()]
        raise ValueError(
            f"{where}: adjoint=True is not supported by {name}; methods with an adjoint: {', '.join(able)}"
        )
    if not adjoint and adjoint_params:
        raise ValueError(f"{where}: adjoint_params is only used with adjoint=True")
    if entry is not None and not entry.differentiable:
        grads = [n for n, v in (("y0", state), ("t", (t,))) if any(x.requires_grad for x in v)]
        if grads and torch.is_grad_enabled():
            raise ValueError(
                f"{where}: {name} is not differentiable but {' and '.join(grads)} require(s) grad; "
                "detach the inputs, or use a differentiable method such as 'dopri5'"
            )

    def tuple_f(ti: Tensor, y: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        out = f(ti, y if is_tuple else y[0])
        return out if is_tuple else (out,)

    field: Any = _TensorField.wrap(f, tuple_f)
    ys, stats = solver.integrate(
        field,
        state,
        t,
        rtol=rtol,
        atol=atol,
        step_size=step_size,
        options=opts,
        adjoint=adjoint,
        adjoint_params=tuple(adjoint_params),
    )
    bad = first_nonfinite(ys, t)
    if bad is not None:
        raise SolverError(f"{where}: the solution is not finite (NaN/inf) at output {bad[0]}, t={bad[1]:.6g}")
    return Solution(ys=ys if is_tuple else ys[0], t=t, stats=stats, method=name)


class _TensorField(torch.nn.Module):
    """Keeps an ``nn.Module`` field's parameters visible (for the adjoint) behind the tuple wrapper."""

    def __init__(self, module: torch.nn.Module, fn: Callable) -> None:
        super().__init__()
        self.module = module
        self.fn = fn

    def forward(self, t: Tensor, y: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return self.fn(t, y)

    @classmethod
    def wrap(cls, f: Field, fn: Callable) -> Any:
        return cls(f, fn) if isinstance(f, torch.nn.Module) else fn


def _resolve(method: str | Solver | type[Solver]) -> tuple[SolverEntry | None, Solver]:
    if isinstance(method, str):
        entry = get(method)
        return entry, entry.solver()
    cls = method if isinstance(method, type) else type(method)
    if not issubclass(cls, Solver):
        raise TypeError(f"solvers.solve: method must be a name or a solvers.Solver, got {type(method).__name__}")
    name = getattr(cls, "name", "")
    entry = None
    if name:
        try:
            entry = get(name)
        except ValueError:
            entry = None
    return entry, method() if isinstance(method, type) else method


def _adjoint_methods() -> list[str]:
    from ._registry import _REGISTRY

    return [n for n, e in _REGISTRY.items() if e.supports_adjoint]


def _check_y0(where: str, y0: object) -> tuple[Tensor, ...]:
    state = y0 if isinstance(y0, tuple) else (y0,)
    if not state:
        raise ValueError(f"{where}: y0 must be a tensor or a non-empty tuple of tensors, got an empty tuple")
    for i, y in enumerate(state):
        label = f"y0[{i}]" if isinstance(y0, tuple) else "y0"
        if not isinstance(y, Tensor):
            raise TypeError(f"{where}: {label} must be a torch.Tensor, got {type(y).__name__}")
        if not y.is_floating_point():
            raise TypeError(f"{where}: {label} must be floating point, got {y.dtype}")
        if not bool(torch.isfinite(y).all()):
            raise ValueError(f"{where}: {label} contains NaN or inf")
    devices = {y.device for y in state}
    if len(devices) > 1:
        raise ValueError(f"{where}: all tensors of y0 must be on one device, got {sorted(map(str, devices))}")
    return state


def _check_t(where: str, t: object) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{where}: t must be a 1-D torch.Tensor, got {type(t).__name__}")
    if t.dim() != 1 or len(t) < 1:
        raise ValueError(f"{where}: t must be a non-empty 1-D tensor, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{where}: t must be floating point (float64 recommended), got {t.dtype}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{where}: t contains NaN or inf")
    if len(t) > 1:
        d = t[1:] - t[:-1]
        if not (bool((d > 0).all()) or bool((d < 0).all())):
            k = int(((d <= 0) if bool(d[0] > 0) else (d >= 0)).nonzero()[0, 0]) if bool(d[0] != 0) else 0
            raise ValueError(
                f"{where}: t must be strictly increasing or strictly decreasing; t[{k}]={float(t[k]):.6g}, t[{k + 1}]={float(t[k + 1]):.6g}"
            )


def _check_tolerances(where: str, rtol: float, atol: float) -> None:
    for label, v in (("rtol", rtol), ("atol", atol)):
        if not isinstance(v, (int, float)) or not v > 0 or v == float("inf"):
            raise ValueError(f"{where}: {label} must be a positive finite number, got {v!r}")


__all__ = ["solve", "SolverError"]
