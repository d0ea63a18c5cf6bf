"""``DREAMCell``: one step of the reference Euler rule, for streaming one observation at a time."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from . import _fast_euler
from ._checks import check_finite, check_like, check_state, check_tensor
from ._config import DREAMConfig
from ._field import DREAMField
from ._integrate import Integrator, _fixed_step
from ._path import StepPath
from ._state import DREAMState

_EULER = Integrator("euler")


class DREAMCell(nn.Module):
    """One explicit Euler step of the DREAM field: ``h, state = cell(x_t, state, dt)``.

    ``h_next = (1 - Δt/τ) h + (Δt/τ) h_target`` and the other updates of docs/dream-cell.md.

    Args:
        config: a `DREAMConfig`, or ``input_dim`` followed by ``hidden_dim``, ``rank`` and
            any config field as keywords.

    Inputs: ``x, state=None, dt=None, mask=None``
        - **x** ``(B, I)`` or ``(I,)``.
        - **state**: `DREAMState` (``None``: the initial state).
        - **dt**: step length: ``None`` (``time_step``), a positive float, or ``(B,)``.
        - **mask** ``(B, I)``: observed channels.

    Outputs: ``h, state`` with ``h`` ``(B, H)`` the new hidden state.
    """

    def __init__(
        self,
        config: DREAMConfig | int,
        hidden_dim: int | None = None,
        rank: int = 8,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **config_fields: Any,
    ) -> None:
        super().__init__()
        if not isinstance(config, DREAMConfig):
            if hidden_dim is None:
                raise TypeError("DREAMCell: give a DREAMConfig, or input_dim and hidden_dim")
            config = DREAMConfig(input_dim=config, hidden_dim=hidden_dim, rank=rank, **config_fields)
        elif hidden_dim is not None or config_fields:
            raise TypeError("DREAMCell: give either a DREAMConfig or sizes and fields, not both")
        self.config = config
        self.field = DREAMField(config, device=device, dtype=dtype)

    def init_state(self, batch_size: int) -> DREAMState:
        """The deterministic initial state of ``batch_size`` samples."""
        return self.field.initial_state(batch_size)

    def reset_parameters(self) -> None:
        self.field.reset_parameters()

    def extra_repr(self) -> str:
        c = self.config
        return f"{c.input_dim}, {c.hidden_dim}, rank={c.rank}"

    def forward(
        self,
        x: Tensor,
        state: DREAMState | None = None,
        dt: Tensor | float | None = None,
        mask: Tensor | None = None,
    ) -> tuple[Tensor, DREAMState]:
        where = "DREAMCell"
        ref = self.field.C
        x = check_tensor(where, "x", x)
        if x.dim() not in (1, 2):
            raise ValueError(
                f"{where}: expected x of 1 (unbatched) or 2 dimensions, got {x.dim()} with shape {tuple(x.shape)}"
            )
        unbatched = x.dim() == 1
        xb = x.unsqueeze(0) if unbatched else x
        if xb.shape[-1] != self.config.input_dim:
            raise ValueError(f"{where}: expected x with input_dim={self.config.input_dim} features, got {xb.shape[-1]}")
        check_like(where, "x", x, ref)
        check_finite(where, "x", x)
        B = xb.shape[0]
        if state is None:
            z = self.field.initial_state(B)
        else:
            if unbatched and isinstance(state, tuple):
                state = DREAMState(*(c.unsqueeze(0) if isinstance(c, Tensor) else c for c in state))
            c = self.config
            z = check_state(where, state, DREAMState.shapes(B, c.input_dim, c.hidden_dim, c.rank), ref)
        step = self._dt(where, dt, B, ref)
        m = None
        if mask is not None:
            mask = check_tensor(where, "mask", mask)
            mb = mask.unsqueeze(0) if unbatched else mask
            if mb.shape != xb.shape:
                raise ValueError(f"{where}: expected mask of the shape of x {tuple(x.shape)}, got {tuple(mask.shape)}")
            if mb.dtype != torch.bool and not bool(((mb == 0) | (mb == 1)).all()):
                raise ValueError(f"{where}: mask must hold 0/1 (or bool) values, got other values")
            m = mb.to(ref.dtype)
        if _fast_euler.step_applies(self.field, z, xb, m, step):
            z, _ = _fast_euler.step(self.field, z, xb, m, step, aux=False)
        else:
            z, _ = _fixed_step(self.field, _EULER, z, StepPath("hold", xb), m, step, None, 1)
        if unbatched:
            z = DREAMState(*(c.squeeze(0) for c in z))
        return z.h, z

    def _dt(self, where: str, dt: Tensor | float | None, B: int, ref: Tensor) -> Tensor:
        if dt is None:
            return self._constant_dt(self.config.time_step, B, ref)
        if isinstance(dt, (int, float)) and not isinstance(dt, bool):
            if not dt > 0 or dt == float("inf"):
                raise ValueError(f"{where}: dt must be a positive finite number, got {dt!r}")
            return self._constant_dt(float(dt), B, ref)
        dt = check_tensor(where, "dt", dt)
        if dt.shape not in ((), (B,)):
            raise ValueError(f"{where}: expected dt as a scalar or of shape ({B},), got {tuple(dt.shape)}")
        check_finite(where, "dt", dt.to(torch.float64))
        if bool((dt <= 0).any()):
            raise ValueError(f"{where}: dt must be positive, got min {float(dt.min()):.6g}")
        return dt.to(ref).expand(B)

    def _constant_dt(self, value: float, B: int, ref: Tensor) -> Tensor:
        """``(B,)`` copies of ``value``; the last one is reused (streaming repeats it; nothing writes it)."""
        key = (value, B, ref.dtype, ref.device, torch.is_inference_mode_enabled())
        hit = self.__dict__.get("_dt_cache")
        if hit is not None and hit[0] == key:
            return hit[1]
        t = torch.full((B,), value, dtype=ref.dtype, device=ref.device)
        self.__dict__["_dt_cache"] = (key, t)
        return t
