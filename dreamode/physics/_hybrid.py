"""``HybridField``: known physics plus a learned DREAM correction, as one ``f(t, y)`` for any solver."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from .._config import DREAMConfig
from .._field import DREAMField
from .._state import DREAMState
from ._constraints import PositiveParameters

PhysicsFn = Callable[[Tensor, Tensor], Tensor]
_N_DREAM = len(DREAMState._fields)


class ParametricPhysics(nn.Module):
    """A known vector field ``g(t, x; θ)`` with named positive parameters θ.

    ``fn(t, x, p)`` computes ``dx/dt`` from the time, the physical state ``x`` ``(B, P)`` and
    ``p``, a `PositiveParameters` (read ``p.omega`` etc.); the parameters learn like any other.

    Example:
        >>> pendulum = ParametricPhysics(
        ...     lambda t, x, p: torch.stack([x[..., 1], -p.omega**2 * torch.sin(x[..., 0]) - p.damping * x[..., 1]], -1),
        ...     omega=1.5, damping=0.1)
    """

    def __init__(
        self,
        fn: Callable[[Tensor, Tensor, PositiveParameters], Tensor],
        *,
        transform: str = "log",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        **initial: float | Tensor,
    ) -> None:
        super().__init__()
        if not callable(fn):
            raise TypeError(f"ParametricPhysics: fn must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.params = PositiveParameters(initial, transform=transform, dtype=dtype, device=device)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        return self.fn(t, x, self.params)

    def extra_repr(self) -> str:
        return getattr(self.fn, "__name__", "fn")


class HybridField(nn.Module):
    """``dx/dt = g(t, x; θ) + c(h)``, with ``h`` from a DREAM field driven by ``x``: one ODE for any solver.

    The state is one flat tuple ``(x, h, U, U_target, error_mean, error_var, avg_surprise,
    adaptive_tau)``: the physical state ``x`` ``(B, P)`` followed by the seven tensors of a
    `~dreamode.DREAMState`. ``HybridField`` is an ``f(t, y)`` for `solvers.solve` with every
    registered method (fixed-step, adaptive, adjoint, scipy references); the parameters of the
    physics, the DREAM field and the coupling are all visible to the adjoint.

    - Physics: ``physics(t, x) -> dx/dt`` ``(B, P)``, any callable; an ``nn.Module`` (e.g.
      `ParametricPhysics`, `OneCompartmentOral`) makes its parameters learnable.
    - DREAM part: the DREAM field evolves its state with input ``u = inputs(t, x)`` ``(B, I)``
      (default: ``x`` itself, then ``I = P``). Scale ``u`` to O(1): DREAM predicts its input through
      a ``tanh``. ``inputs`` may also read observations, e.g. ``lambda t, x: path(t)``.
    - Coupling: ``c(h)`` ``(B, len(correct))``, added to the coordinates ``correct`` of ``dx/dt``
      (default all ``P``). The default is a linear map from ``h`` initialised to zero, so training
      starts from the pure physics.
    - ``correction=False`` (or ``dream=None``) gives the pure physics: the state is ``(x,)`` only.

    Args:
        physics: the known vector field ``g(t, x)``.
        dream: a `~dreamode.DREAMField`, a `~dreamode.DREAMConfig` to build one, or ``None``.
        physical_dim: ``P``, the width of ``x``.
        inputs: ``(t, x) -> (B, I)``, what drives DREAM; ``None``: ``x``.
        correct: indices of the coordinates of ``x`` that receive the correction; ``None``: all.
        coupling: module ``h (B, H) -> (B, len(correct))``; ``None``: zero-initialised linear map.
        correction: include the DREAM correction.

    Attributes:
        nfe: evaluations of this field since construction or the last `reset_nfe` (an adjoint's
            backward evaluations included).
    """

    def __init__(
        self,
        physics: PhysicsFn,
        dream: DREAMField | DREAMConfig | None = None,
        *,
        physical_dim: int,
        inputs: Callable[[Tensor, Tensor], Tensor] | None = None,
        correct: Sequence[int] | None = None,
        coupling: nn.Module | None = None,
        correction: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not callable(physics):
            raise TypeError(f"HybridField: physics must be callable, got {type(physics).__name__}")
        if isinstance(physical_dim, bool) or not isinstance(physical_dim, int) or physical_dim < 1:
            raise ValueError(f"HybridField: physical_dim must be a positive int, got {physical_dim!r}")
        if isinstance(dream, DREAMConfig):
            dream = DREAMField(dream, device=device, dtype=dtype)
        if dream is not None and not isinstance(dream, DREAMField):
            raise TypeError(
                f"HybridField: dream must be a DREAMField, a DREAMConfig or None, got {type(dream).__name__}"
            )
        self.physics = physics
        self.dream = dream
        self.physical_dim = physical_dim
        self.inputs = inputs
        if inputs is None and dream is not None and dream.config.input_dim != physical_dim:
            raise ValueError(
                f"HybridField: DREAM is driven by x by default, so input_dim must equal physical_dim; got "
                f"input_dim={dream.config.input_dim}, physical_dim={physical_dim} (or pass inputs=)"
            )
        idx = list(range(physical_dim)) if correct is None else [int(i) for i in correct]
        if not idx or any(not 0 <= i < physical_dim for i in idx) or len(set(idx)) != len(idx):
            raise ValueError(f"HybridField: correct must be distinct indices in [0, {physical_dim}), got {correct!r}")
        self.correct = idx
        self.register_buffer("_index", torch.as_tensor(idx, device=device), persistent=False)
        if coupling is None and dream is not None:
            coupling = nn.Linear(dream.config.hidden_dim, len(idx), bias=False, device=device, dtype=dtype)
            nn.init.zeros_(coupling.weight)
        self.coupling = coupling
        self._correction = False
        self.correction = bool(correction) and dream is not None
        self.nfe = 0

    @property
    def correction(self) -> bool:
        """Whether the DREAM correction is on; switch it off for the pure physics (the state is then ``(x,)``)."""
        return self._correction

    @correction.setter
    def correction(self, on: bool) -> None:
        if on and self.dream is None:
            raise ValueError("HybridField: correction=True needs a DREAM field (this one was built with dream=None)")
        self._correction = bool(on)

    @property
    def state_size(self) -> int:
        """Tensors in the flat state: 1 (pure physics) or 8."""
        return 1 + _N_DREAM if self.correction else 1

    def reset_nfe(self) -> None:
        self.nfe = 0

    def physics_parameters(self) -> list[nn.Parameter]:
        """The parameters of the physics (θ, stored unconstrained)."""
        return list(self.physics.parameters()) if isinstance(self.physics, nn.Module) else []

    def learned_parameters(self) -> list[nn.Parameter]:
        """The parameters of the DREAM field and the coupling (for their own learning rate)."""
        mods = [m for m in (self.dream, self.coupling) if m is not None]
        return [p for m in mods for p in m.parameters()]

    def initial_state(self, x0: Tensor) -> tuple[Tensor, ...]:
        """The flat initial state for the physical state ``x0`` ``(B, P)`` (DREAM's starts at rest)."""
        if not isinstance(x0, Tensor) or x0.dim() != 2 or x0.shape[1] != self.physical_dim:
            shape = tuple(x0.shape) if isinstance(x0, Tensor) else type(x0).__name__
            raise ValueError(f"HybridField: x0 must be a (B, {self.physical_dim}) tensor, got {shape}")
        if not self.correction:
            return (x0,)
        if x0.dtype != self.dream.C.dtype:
            raise TypeError(
                f"HybridField: x0 has dtype {x0.dtype}, but the DREAM field has dtype {self.dream.C.dtype}; "
                f"cast one of them (e.g. HybridField(..., dtype={x0.dtype}))"
            )
        z0 = self.dream.initial_state(x0.shape[0], device=x0.device, dtype=x0.dtype)
        return (x0, *z0)

    def split(self, y: Sequence[Tensor]) -> tuple[Tensor, DREAMState | None]:
        """``(x, z)`` from a flat state or solution (``z`` is ``None`` for the pure physics)."""
        self._check_state(y)
        return y[0], (DREAMState(*y[1:]) if self.correction else None)

    def correction_at(self, y: Sequence[Tensor]) -> Tensor:
        """The correction added to ``dx/dt`` at the states ``y`` (a state or a solution with a time axis).

        Returns ``(..., B, P)`` with zeros in the uncorrected coordinates; all zeros for the pure
        physics. Penalise its size to let the physics explain what it can (as in APHYNITY).
        """
        x, z = self.split(y)
        out = torch.zeros_like(x)
        if z is None:
            return out
        out[..., self.correct] = self.coupling(z.h)
        return out

    def forward(self, t: Tensor, y: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        self.nfe += 1
        self._check_state(y)
        x = y[0]
        dx = self.physics(t, x)
        if not self.correction:
            return (dx,)
        z = DREAMState(*y[1:])
        u = x if self.inputs is None else self.inputs(t, x)
        dz, _ = self.dream.evaluate(z, u)
        c = self.coupling(z.h)
        if len(self.correct) == self.physical_dim:
            dx = dx + c
        else:
            dx = dx.index_add(-1, self._index, c)
        return (dx, *dz)

    def _check_state(self, y: Sequence[Tensor]) -> None:
        if not isinstance(y, (tuple, list)) or len(y) != self.state_size:
            got = f"{len(y)} tensors" if isinstance(y, (tuple, list)) else type(y).__name__
            mode = "x and the 7 DREAM tensors" if self.correction else "x only (correction=False)"
            raise ValueError(
                f"HybridField: expected a state of {self.state_size} tensors ({mode}), got {got}; "
                "build it with initial_state(x0)"
            )

    def extra_repr(self) -> str:
        parts = [f"physical_dim={self.physical_dim}", f"correction={self.correction}"]
        if len(self.correct) != self.physical_dim:
            parts.append(f"correct={self.correct}")
        return ", ".join(parts)


__all__ = ["HybridField", "ParametricPhysics"]
