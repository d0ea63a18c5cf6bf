"""Input paths between observations (docs/dream-cell.md): hold, linear, cubic Hermite.

Step ``i`` integrates over ``(t_{i-1}, t_i]``; on it the path is written in the local variable
``u = (t - t_{i-1}) / Δt_i`` in ``[0, 1]``, which may differ per sample (per-sample sub-steps).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

INTERPOLATIONS = ("hold", "linear", "cubic")


@dataclass
class SequencePath:
    """The input path of a whole sequence, precomputed once (``(B, T, I)`` tensors).

    ``hold``: ``x(u) = x_i``. ``linear``: from ``x_{i-1}`` to ``x_i``. ``cubic``: the C¹ Hermite
    cubic through the observations with backward-difference slopes (``x'(t_i) = (x_i -
    x_{i-1}) / Δt_i``, causal: step ``i`` never sees ``x_{i+1}``; as torchcde's Hermite cubic
    with backward differences). The first step has no ``x_0`` and holds ``x_1``; the second
    cubic step has no earlier slope and uses its own (it is linear).
    """

    kind: str
    end: Tensor  # x_i, (B, T, I)
    start: Tensor | None = None  # x_{i-1}
    tangent0: Tensor | None = None  # x'(t_{i-1}) Δt_i, in u units
    tangent1: Tensor | None = None  # x'(t_i) Δt_i

    @classmethod
    def build(cls, kind: str, x: Tensor, dt: Tensor) -> SequencePath:
        """Path of ``x`` ``(B, T, I)`` with steps ``dt`` ``(B, T)``."""
        if kind == "hold":
            return cls(kind, x)
        start = torch.cat([x[:, :1], x[:, :-1]], dim=1)
        if kind == "linear":
            return cls(kind, x, start)
        delta = x - start  # x_i - x_{i-1} = x'(t_i) Δt_i; zero at i = 1
        prev_delta = torch.cat([delta[:, :1], delta[:, :-1]], dim=1)
        prev_dt = torch.cat([dt[:, :1], dt[:, :-1]], dim=1)
        ratio = torch.where(prev_dt > 0, dt / torch.where(prev_dt > 0, prev_dt, torch.ones_like(prev_dt)), 0.0)
        tangent0 = prev_delta * ratio.unsqueeze(-1)
        # Step 2 has no slope before x_1: use its own, which makes that piece linear.
        if x.shape[1] > 1:
            tangent0 = torch.cat([delta[:, :2], tangent0[:, 2:]], dim=1)
        return cls(kind, x, start, tangent0, delta)

    def step(self, i: int) -> StepPath:
        """The path on step ``i`` (0-based): ``(t_{i-1}, t_i]``."""
        pick = lambda a: None if a is None else a[:, i]  # noqa: E731
        return StepPath(self.kind, self.end[:, i], pick(self.start), pick(self.tangent0), pick(self.tangent1))


@dataclass
class StepPath:
    """The input path on one step, for every sample: ``at(u)`` gives ``(B, I)``."""

    kind: str
    end: Tensor
    start: Tensor | None = None
    tangent0: Tensor | None = None
    tangent1: Tensor | None = None

    def at(self, u: Tensor | float) -> Tensor:
        """``x`` at local time ``u`` in [0, 1] (a float, or ``(B,)`` per sample)."""
        if self.kind == "hold":
            return self.end
        if isinstance(u, Tensor):
            u = u.unsqueeze(-1)
        if self.kind == "linear":
            return self.start + u * (self.end - self.start)
        u2 = u * u
        u3 = u2 * u
        return (
            (2 * u3 - 3 * u2 + 1) * self.start
            + (u3 - 2 * u2 + u) * self.tangent0
            + (3 * u2 - 2 * u3) * self.end
            + (u3 - u2) * self.tangent1
        )

    def tensors(self) -> tuple[Tensor, ...]:
        """The tensors the path is made of (listed for the adjoint's gradients)."""
        return tuple(a for a in (self.end, self.start, self.tangent0, self.tangent1) if a is not None)
