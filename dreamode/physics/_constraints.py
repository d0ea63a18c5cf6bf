"""Positive physical parameters, stored unconstrained and read back through a transform."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TRANSFORMS = ("log", "softplus")


def _inverse(transform: str, value: Tensor, floor: float) -> Tensor:
    v = value - floor
    if transform == "log":
        return torch.log(v)
    # softplus⁻¹(v) = v + log(1 - e^{-v}), written with expm1 so small v keeps its precision.
    return v + torch.log(-torch.expm1(-v))


def _forward(transform: str, raw: Tensor, floor: float) -> Tensor:
    out = raw.exp() if transform == "log" else F.softplus(raw)
    return out + floor if floor else out


class PositiveParameters(nn.Module):
    """Named learnable parameters kept positive by a reparametrisation.

    Each value ``θ`` is stored as an unconstrained ``nn.Parameter`` ``r`` and read back as
    ``θ = floor + exp(r)`` (``transform="log"``) or ``θ = floor + softplus(r)``
    (``transform="softplus"``), so any gradient step keeps ``θ > floor``. ``log`` makes steps
    relative (a rate of 1e-3 and one of 10 learn alike) and is the usual choice for rates and
    clearances; ``softplus`` is nearly the identity above ~3 and suits parameters that may be
    large. (A float underflows: ``exp(r)`` is exactly 0 below ``r ≈ -745`` in float64; a positive
    ``floor`` bounds θ away from 0 whatever the optimiser does.)

    Read a value as an attribute or item (``p.ka``, ``p["ka"]``): the constrained tensor, in the
    graph. ``p.raw[name]`` is the stored parameter. Values may be tensors of any shape, e.g. one
    rate per subject of a batch ``(B,)``.

    Example:
        >>> p = PositiveParameters({"omega": 1.5, "damping": 0.1})
        >>> float(p.omega)
        1.5
    """

    def __init__(
        self,
        values: Mapping[str, float | Tensor],
        *,
        transform: str = "log",
        floor: float = 0.0,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if transform not in TRANSFORMS:
            raise ValueError(f"PositiveParameters: transform must be one of {list(TRANSFORMS)}, got {transform!r}")
        if not isinstance(floor, (int, float)) or isinstance(floor, bool) or not (math.isfinite(floor) and floor >= 0):
            raise ValueError(f"PositiveParameters: floor must be a finite number >= 0, got {floor!r}")
        if not values:
            raise ValueError("PositiveParameters: expected at least one parameter, got none")
        self.transform = transform
        self.floor = float(floor)
        raw = {}
        for name, value in values.items():
            if not name.isidentifier() or hasattr(nn.Module, name) or name in ("raw", "transform", "floor"):
                raise ValueError(f"PositiveParameters: {name!r} cannot be a parameter name")
            v = torch.as_tensor(value, dtype=dtype or torch.get_default_dtype(), device=device).detach().clone()
            if not v.is_floating_point():
                v = v.to(torch.get_default_dtype())
            if not bool(torch.isfinite(v).all()) or not bool((v > self.floor).all()):
                raise ValueError(
                    f"PositiveParameters: {name} must be finite and > floor={self.floor:g}, got {v.tolist()}"
                )
            raw[name] = nn.Parameter(_inverse(transform, v, self.floor))
        self.raw = nn.ParameterDict(raw)

    @property
    def names(self) -> list[str]:
        return list(self.raw.keys())

    def __getattr__(self, name: str) -> Any:
        modules = self.__dict__.get("_modules", {})
        raw = modules.get("raw")
        if raw is not None and name in raw:
            return _forward(self.transform, raw[name], self.floor)
        return super().__getattr__(name)

    def __getitem__(self, name: str) -> Tensor:
        if name not in self.raw:
            raise KeyError(f"PositiveParameters: no parameter {name!r}; have {self.names}")
        return _forward(self.transform, self.raw[name], self.floor)

    def __contains__(self, name: object) -> bool:
        return name in self.raw

    def as_dict(self) -> dict[str, Tensor]:
        """The constrained values, detached: ``{name: tensor}``."""
        return {name: self[name].detach().clone() for name in self.names}

    def set(self, name: str, value: float | Tensor) -> None:
        """Assign the constrained value of ``name`` (in place; shape broadcast to the stored one)."""
        current = self.raw[name]
        v = torch.as_tensor(value, dtype=current.dtype, device=current.device)
        if not bool(torch.isfinite(v).all()) or not bool((v > self.floor).all()):
            raise ValueError(f"PositiveParameters.set: {name} must be finite and > floor={self.floor:g}")
        with torch.no_grad():
            current.copy_(_inverse(self.transform, v, self.floor).expand_as(current))

    def extra_repr(self) -> str:
        parts = []
        for name in self.names:
            v = self[name].detach()
            parts.append(f"{name}={v.item():.4g}" if v.numel() == 1 else f"{name}=<{tuple(v.shape)}>")
        extra = f", floor={self.floor:g}" if self.floor else ""
        return ", ".join(parts) + f", transform={self.transform!r}{extra}"


__all__ = ["PositiveParameters", "TRANSFORMS"]
