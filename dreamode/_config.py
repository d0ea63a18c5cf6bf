"""``DREAMConfig``: every hyper-parameter of the cell, under the names of the original ``dreamnn``."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class DREAMConfig:
    """Sizes, rates and switches of one DREAM layer (see ``docs/dream-cell.md`` for the symbols).

    Field names follow ``dreamnn``'s ``DREAMConfig``. Times are in the units of the data's
    timestamps; ``time_step`` is the nominal step Δt_ref at which each running-statistics rate
    equals its EMA coefficient. Validated on construction: a bad value raises ``ValueError``
    naming the field.
    """

    input_dim: int
    hidden_dim: int
    rank: int = 8
    time_step: float = 0.1
    forgetting_rate: float = 0.005
    adaptive_forgetting_scale: float = 0.0
    base_plasticity: float = 0.5
    base_threshold: float = 1.0
    entropy_influence: float = 0.1
    surprise_temperature: float = 0.2
    error_smoothing: float = 0.05
    surprise_smoothing: float = 0.05
    habituation_rate: float = 0.001
    max_adaptive_tau: float = 3.0
    target_norm: float = 2.0
    homeostasis_rate: float = 10.0
    kappa: float = 0.5
    ltc_enabled: bool = True
    ltc_tau_sys: float = 5.0
    ltc_surprise_scale: float = 5.0
    tau_min: float | None = None
    tau_max: float = 50.0
    sleep_rate: float = 0.005
    min_surprise_for_sleep: float = 0.2
    fast_weights: bool = True
    sleep_enabled: bool = True

    def __post_init__(self) -> None:
        if self.tau_min is None:
            self.tau_min = self.time_step
        for name in ("input_dim", "hidden_dim", "rank"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"DREAMConfig: {name} must be a positive int, got {v!r}")
        if self.rank > self.input_dim:
            raise ValueError(
                f"DREAMConfig: rank must be <= input_dim (V has orthonormal columns in R^input_dim), "
                f"got rank={self.rank}, input_dim={self.input_dim}"
            )
        for name in ("ltc_enabled", "fast_weights", "sleep_enabled"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"DREAMConfig: {name} must be a bool, got {getattr(self, name)!r}")
        positive = (
            "time_step",
            "base_threshold",
            "surprise_temperature",
            "max_adaptive_tau",
            "target_norm",
            "ltc_tau_sys",
            "ltc_surprise_scale",
            "tau_min",
            "tau_max",
        )
        nonnegative = (
            "forgetting_rate",
            "adaptive_forgetting_scale",
            "homeostasis_rate",
            "sleep_rate",
            "entropy_influence",
            "base_plasticity",
        )
        fractions = ("error_smoothing", "surprise_smoothing", "habituation_rate", "min_surprise_for_sleep")
        for name in positive + nonnegative + fractions + ("kappa",):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"DREAMConfig: {name} must be a finite number, got {v!r}")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"DREAMConfig: {name} must be > 0, got {getattr(self, name)!r}")
        for name in nonnegative:
            if getattr(self, name) < 0:
                raise ValueError(f"DREAMConfig: {name} must be >= 0, got {getattr(self, name)!r}")
        for name in fractions:
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"DREAMConfig: {name} must be in [0, 1], got {getattr(self, name)!r}")
        if self.tau_min > self.tau_max:
            raise ValueError(f"DREAMConfig: tau_min ({self.tau_min}) must be <= tau_max ({self.tau_max})")

    def as_dict(self) -> dict[str, Any]:
        """Plain dict of all fields (JSON- and ``torch.save``-friendly)."""
        return asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
