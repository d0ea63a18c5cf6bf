"""Solve a batch whose samples are observed at their own irregular times, with any registered method."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

import solvers


class _IndexTimeField(nn.Module):
    """``dy/ds = Δt_k · f(t_k + (s − k) Δt_k, y)`` on ``s ∈ [k, k+1]``: every sample's interval ``k`` at once.

    ``offset`` is the index of the first interval when solving one interval at a time (``s`` then
    runs over ``[0, 1]``); with ``offset=None`` ``s`` runs over ``[0, K−1]`` and the interval is
    ``floor(s)``, which is right at the integer jumps only because torchdiffeq's ``jump_t``
    evaluates there just after (or, for a step's last stage, just before) the jump.
    """

    def __init__(self, f: Callable, times: Tensor, offset: int | None) -> None:
        super().__init__()
        self.f = f  # a submodule when f is one, so its parameters reach the adjoint
        self.times = times
        self.dts = times.diff(dim=1)
        self.offset = offset

    def forward(self, s: Tensor, y: Any) -> Any:
        s = s.to(self.times.dtype)
        if self.offset is None:
            k = int(torch.clamp(torch.floor(s), 0, self.dts.shape[1] - 1))
            u = s - k
        else:
            k, u = self.offset, s
        dt = self.dts[:, k]
        out = self.f(self.times[:, k] + u * dt, y)
        if isinstance(out, Tensor):
            return out * dt.to(out.dtype).reshape(-1, *([1] * (out.dim() - 1)))
        return tuple(o * dt.to(o.dtype).reshape(-1, *([1] * (o.dim() - 1))) for o in out)


def solve_at_times(
    f: Callable[[Tensor, Any], Any],
    y0: Tensor | tuple[Tensor, ...],
    times: Tensor,
    method: str = "dopri5",
    *,
    step_size: float | None = None,
    **kwargs: Any,
) -> solvers.Solution:
    """Solve ``dy/dt = f(t, y)`` for a batch whose samples have their own output times.

    Sample ``b`` starts from ``y0[b]`` at ``times[b, 0]`` and is reported at ``times[b, k]``. Each
    interval ``k`` is mapped onto ``s ∈ [0, 1]`` per sample (``t = times[:, k] + s Δt[:, k]``, an
    exact change of variables) and the whole batch is solved with `solvers.solve`, so it never
    steps on the union of everybody's times. torchdiffeq's methods make one solve over ``s ∈ [0,
    K−1]`` with the interval ends as ``jump_t``; the other methods one solve per interval.

    Args:
        f: ``f(t, y)``; every tensor of ``y`` has the batch ``B`` as its first axis. ``t`` is the
            per-sample time ``(B,)``, not a scalar (autonomous fields ignore it).
        y0: the initial state (a tensor or a tuple of tensors, batch first).
        times: ``(B, K)`` output times, strictly increasing along each row (float64 recommended).
        method: any registered method (see `solvers.available`).
        step_size: fixed-step methods only: the longest step in units of ``t``; interval ``k``
            takes ``ceil(max_b Δt[b, k] / step_size)`` steps (every sample the same number).
        **kwargs: passed to `solvers.solve` (``adjoint``, ``rtol``, ``atol``, ``options``, ...).

    Returns:
        A `solvers.Solution`: ``ys`` has ``y0``'s structure with a leading ``K`` axis
        (``ys[k, b]`` at ``times[b, k]``); ``t`` is ``times.T`` ``(K, B)``; ``stats.nfe`` and
        ``stats.steps`` are summed over the intervals (where the method reports them).
    """
    if not isinstance(times, Tensor) or times.dim() != 2 or times.shape[1] < 1 or not times.is_floating_point():
        got = f"shape {tuple(times.shape)}, {times.dtype}" if isinstance(times, Tensor) else type(times).__name__
        raise ValueError(f"solve_at_times: times must be a (B, K) floating tensor, got {got}")
    dts = times.diff(dim=1)
    if not bool((dts > 0).all()):
        raise ValueError("solve_at_times: times must be strictly increasing along each row")
    is_tuple = isinstance(y0, tuple)
    first = y0[0] if is_tuple else y0
    if first.shape[0] != times.shape[0]:
        raise ValueError(f"solve_at_times: y0 has batch {first.shape[0]} but times has {times.shape[0]} rows")
    K = times.shape[1]
    options = dict(kwargs.pop("options", None) or {})
    entry = solvers.get(method) if isinstance(method, str) else None
    if K > 2 and entry is not None and entry.backend == "torchdiffeq" and step_size is None:
        # One solve over s in [0, K-1]: the step-size controller carries over from one interval to
        # the next (one solve per interval restarts it, ~2x the evaluations on the theophylline data).
        if "jump_t" in options or "step_t" in options:
            raise ValueError("solve_at_times: the options jump_t and step_t are set by solve_at_times")
        s = torch.arange(K, dtype=times.dtype, device=times.device)
        options["jump_t"] = s[1:-1]
        sol = solvers.solve(_IndexTimeField(f, times, None), y0, s, method, options=options, **kwargs)
        return solvers.Solution(ys=sol.ys, t=times.T, stats=sol.stats, method=sol.method)
    y = y0
    outs = [y0]
    nfe: int | None = 0
    steps: int | None = 0
    s_unit = torch.tensor([0.0, 1.0], dtype=times.dtype, device=times.device)
    for k in range(K - 1):
        h = None
        if step_size is not None:
            h = 1.0 / math.ceil(float(dts[:, k].max()) / step_size - 1e-9)
        g = _IndexTimeField(f, times, k)
        sol = solvers.solve(g, y, s_unit, method, step_size=h, options=options or None, **kwargs)
        y = tuple(v[-1] for v in sol.ys) if is_tuple else sol.ys[-1]
        outs.append(y)
        nfe = None if nfe is None or sol.stats.nfe is None else nfe + sol.stats.nfe
        steps = None if steps is None or sol.stats.steps is None else steps + sol.stats.steps
    ys = tuple(torch.stack(parts) for parts in zip(*outs)) if is_tuple else torch.stack(outs)
    return solvers.Solution(ys=ys, t=times.T, stats=solvers.Stats(nfe=nfe, steps=steps), method=str(method))


__all__ = ["solve_at_times"]
