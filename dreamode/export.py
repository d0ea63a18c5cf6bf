"""Export the Euler rule of a `DREAM` model for deployment with ``torch.export``.

``DREAM.forward`` validates its arguments with data-dependent checks (one host sync each) and
runs the Euler rule through a fused kernel with a hand-written backward; neither traces.
`EulerProgram` computes the same function — the generic field of docs/dream-cell.md and one
explicit Euler step ``z + Δt·f(z)`` per observation, the very operations of the library's generic
Euler path — as a pure tensor program, and `export_euler` exports it:

    >>> model = DREAM(4, 16, rank=2).eval()
    >>> program = export_euler(model, torch.randn(2, 10, 4))
    >>> out, state = program.module()(x, dt, as_tuples(model.init_state(3)))  # any batch size, length

With ``dynamic=True`` (the default) the time loop is one ``torch._higher_order_ops.scan``, so the
exported program takes any batch size and any sequence length; ``dynamic=False`` unrolls the loop
for the example's shapes (for PyTorch versions without ``scan``).

The program does no argument checks: validate inputs upstream (``dt > 0``, finite values, shapes).
It computes inference only (no dropout).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ._field import DREAMField
from ._model import DREAMStack
from ._state import DREAMState

try:  # PyTorch >= 2.6
    from torch._higher_order_ops.scan import scan as _scan
except ImportError:  # pragma: no cover - depends on the installed PyTorch
    _scan = None


def _euler_step(f: DREAMField, z: tuple[Tensor, ...], x: Tensor, dt: Tensor, mask: Tensor | None) -> tuple[Tensor, ...]:
    """``z + Δt·f(z; x, m)`` per sample; a sample with ``Δt = 0`` (padding) keeps its state exactly."""
    state = DREAMState(*z)
    dz = f(None, state, x, mask)
    out = []
    for c, d in zip(state, dz):
        dtv = dt.view(-1, *([1] * (c.dim() - 1)))
        out.append(torch.where(dtv == 0, c, torch.addcmul(c, dtv, d)))
    return tuple(out)


class EulerProgram(nn.Module):
    """The reference Euler rule of a `DREAMStack`'s layers as a traceable tensor program.

    Shares the model's fields (and so its parameters). Layout is batch-major whatever the
    model's ``batch_first``.

    Args:
        model: a `DREAM` or `DREAMStack` with ``solver="euler"`` and no ``max_step``.
        dynamic: loop over time with ``scan`` (any length) rather than unrolling it.

    Inputs: ``x, dt, state, mask=None``
        - **x** ``(B, T, I)``.
        - **dt** ``(B, T)``: positive step lengths in the model's dtype (0 = padding: frozen).
        - **state**: the seven state tensors as a tuple (a `DREAMState` will do; a list of them
          for several layers), e.g. ``as_tuples(model.init_state(B))``.
        - **mask** ``(B, T, I)`` of 0/1 in the model's dtype, or ``None``.

    Outputs: ``output (B, T, H_last), state``, the state as plain tuples (see `as_tuples`). Padded
    steps (``Δt = 0``) repeat the last real ``h`` (`DREAMStack` zeroes them when given ``lengths``).
    """

    def __init__(self, model: DREAMStack, *, dynamic: bool = True) -> None:
        super().__init__()
        if not isinstance(model, DREAMStack):
            raise TypeError(f"EulerProgram: model must be a DREAM or DREAMStack, got {type(model).__name__}")
        integ = model.integrator
        if integ.method != "euler" or integ.max_step is not None:
            extra = f", max_step={integ.max_step}" if integ.max_step is not None else ""
            raise ValueError(
                "EulerProgram: exports the Euler rule (one step per observation), but the model integrates "
                f"with solver={integ.method!r}{extra}; build the model with solver='euler' and no max_step"
            )
        if dynamic and _scan is None:
            raise RuntimeError(
                "EulerProgram: dynamic=True needs torch._higher_order_ops.scan (PyTorch >= 2.6); "
                "use dynamic=False (shapes fixed at export)"
            )
        self.fields = model.fields
        self.interpolation = model.interpolation
        self.dynamic = dynamic

    def _layer(
        self, f: DREAMField, x: Tensor, dt: Tensor, mask: Tensor | None, z: tuple[Tensor, ...]
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        if self.interpolation != "hold":
            # the Euler step reads the path at the start of its interval: x_{i-1} (x_1 on the first)
            # (an index rather than cat([x[:, :1], x[:, :-1]]), which export would specialise on T)
            x = x[:, (torch.arange(x.shape[1], device=x.device) - 1).clamp_min(0)]
        xs, dts = x.transpose(0, 1), dt.transpose(0, 1)
        ms = None if mask is None else mask.transpose(0, 1)
        if self.dynamic:

            def step(carry: tuple[Tensor, ...], inp: tuple[Tensor, ...]) -> tuple[tuple[Tensor, ...], Tensor]:
                new = _euler_step(f, carry, inp[0], inp[1], inp[2] if len(inp) > 2 else None)
                return new, new[0].clone()

            inputs = (xs, dts) if ms is None else (xs, dts, ms)
            z, hs = _scan(step, tuple(z), inputs)
            return hs.transpose(0, 1), tuple(z)
        outs = []
        for i in range(xs.shape[0]):
            z = _euler_step(f, z, xs[i], dts[i], None if ms is None else ms[i])
            outs.append(z[0])
        return torch.stack(outs, 1), z

    def forward(self, x: Tensor, dt: Tensor, state: Any, mask: Tensor | None = None) -> tuple[Tensor, Any]:
        states = [state] if len(self.fields) == 1 else list(state)
        out = x
        new: list[tuple[Tensor, ...]] = []
        for k, f in enumerate(self.fields):
            out, z = self._layer(f, out, dt, mask if k == 0 else None, tuple(states[k]))
            new.append(z)
        return out, new[0] if len(self.fields) == 1 else new


def as_tuples(state: DREAMState | list[DREAMState]) -> tuple[Tensor, ...] | list[tuple[Tensor, ...]]:
    """A model's state in the exported program's form: plain tuples (a list of them for several layers)."""
    return tuple(state) if isinstance(state, DREAMState) else [tuple(s) for s in state]


def export_euler(
    model: DREAMStack,
    x: Tensor,
    dt: Tensor | None = None,
    state: DREAMState | list[DREAMState] | None = None,
    mask: Tensor | None = None,
    *,
    dynamic: bool = True,
) -> torch.export.ExportedProgram:
    """Export ``model``'s Euler rule with ``torch.export``; call it as ``.module()(x, dt, state[, mask])``.

    Args:
        model: a `DREAM` or `DREAMStack` with ``solver="euler"`` and no ``max_step``.
        x: example input ``(B, T, I)`` in the model's dtype and device.
        dt: example steps ``(B, T)`` (default: ``time_step`` everywhere).
        state: example state (default: ``model.init_state(B)``).
        mask: example mask ``(B, T, I)``; give one to export a program that takes a mask.
        dynamic: any batch size and length (via ``scan``); ``False``: the example's shapes only.

    Returns:
        A ``torch.export.ExportedProgram`` computing ``(output (B, T, H_last), state)``, the state as
        plain tuples of the seven `DREAMState` tensors (`as_tuples`; ``DREAMState(*s)`` turns one back).
        Save it with ``torch.export.save`` and load it with ``torch.export.load``: no ``dreamode`` needed.
    """
    if not isinstance(x, Tensor) or x.dim() != 3:
        raise ValueError(f"export_euler: expected an example x of shape (B, T, I), got {getattr(x, 'shape', x)!r}")
    B, T, _ = x.shape
    ref = model.fields[0].C
    if dt is None:
        dt = torch.full((B, T), model.config.time_step, dtype=ref.dtype, device=ref.device)
    if state is None:
        state = model.init_state(B)
    program = EulerProgram(model, dynamic=dynamic)
    st = as_tuples(state)
    args: tuple[Any, ...] = (x, dt, st) if mask is None else (x, dt, st, mask)
    shapes: tuple[Any, ...] | None = None
    if dynamic:
        batch, time = torch.export.Dim("batch", min=1), torch.export.Dim("time", min=1)
        per_layer = tuple({0: batch} for _ in DREAMState._fields)
        st_shapes = per_layer if isinstance(st, tuple) else [per_layer] * len(st)
        shapes = ({0: batch, 1: time}, {0: batch, 1: time}, st_shapes)
        if mask is not None:
            shapes += ({0: batch, 1: time},)
    with torch.no_grad():
        return torch.export.export(program, args, dynamic_shapes=shapes)


__all__ = ["EulerProgram", "as_tuples", "export_euler"]
