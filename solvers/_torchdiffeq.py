"""Adaptive, differentiable methods from torchdiffeq, with optional adjoint backpropagation."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torchdiffeq
from torch import Tensor, nn

from ._base import (
    ADAPTIVE_MAX_STEPS,
    Solver,
    State,
    Stats,
    TupleField,
    budget_spent_message,
    check_field_output,
    nonfinite_field_message,
    step_budget,
)
from ._errors import SolverError, unknown_name_message
from ._flat import Flattener
from ._registry import register

# torchdiffeq's method names (its public ``method=`` values, 0.2.x), for ``adjoint_method``; the
# adaptive Runge-Kutta ones take ``max_num_steps``. Listed here rather than read from torchdiffeq's
# private module.
_TORCHDIFFEQ_ADAPTIVE = ("dopri8", "dopri5", "bosh3", "fehlberg2", "adaptive_heun")
_TORCHDIFFEQ_METHODS = (
    *_TORCHDIFFEQ_ADAPTIVE,
    *("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams", "fixed_adams"),
)
_ADJOINT_OPTIONS = frozenset({"adjoint_rtol", "adjoint_atol", "adjoint_method", "adjoint_options"})


class _FlatField(nn.Module):
    """``f`` seen by torchdiffeq: one flat tensor in and out; counts evaluations and steps."""

    def __init__(self, f: TupleField, flat: Flattener, name: str, budget: int, span: tuple[float, float]) -> None:
        super().__init__()
        # Registering f as a submodule (when it is one) keeps its parameters visible to the adjoint.
        self.f = f
        self.flat = flat
        self.name = name
        self.budget = budget
        self.span = span
        self.nfe = 0
        self.accepted = 0
        self.rejected = 0
        # The last evaluations (t, y, f(t, y)), looked at only when the solve fails: no host sync
        # per evaluation. 32 spans the last two step attempts of every method here.
        self.recent: deque[tuple[Tensor, State, State]] = deque(maxlen=32)
        self._checked = False

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        self.nfe += 1
        yt = self.flat.unflatten(y)
        out = self.f(t, yt)
        if not self._checked:
            check_field_output(self.name, out, yt)
            self._checked = True
        self.recent.append((t.detach(), yt, out))
        return self.flat.flatten(out)

    @property
    def last_t(self) -> float:
        """Time of the last evaluation of ``f`` (NaN before the first)."""
        return float(self.recent[-1][0]) if self.recent else float("nan")

    def nonfinite(self) -> str | None:
        """Where ``f`` first returned NaN/inf among the recent evaluations, or ``None``."""
        for t, y, out in self.recent:
            msg = nonfinite_field_message(self.name, float(t), out, y)
            if msg is not None:
                return msg
        return None

    def callback_step(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        """Called before every step attempt: stop when the step budget is spent."""
        if self.accepted + self.rejected >= self.budget:
            counts = f": {self.accepted} steps accepted, {self.rejected} rejected, the last step size {abs(float(dt.detach())):.3g}"
            raise SolverError(budget_spent_message(self.name, self.budget, float(t0.detach()), self.span, counts))

    def callback_accept_step(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self.accepted += 1

    def callback_reject_step(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self.rejected += 1


class TorchdiffeqSolver(Solver):
    """Base of the torchdiffeq adapters; the registry name is torchdiffeq's method name.

    Every output time of ``t`` is a step end (passed as torchdiffeq's ``step_t`` unless given),
    so outputs never come from torchdiffeq's dense interpolant.

    Options: ``max_num_steps``, the most steps (accepted + rejected) of the whole solve (default
    100,000 plus one per output interval; more raise `SolverError`), torchdiffeq's adaptive
    options (``first_step``, ``min_step``, ``max_step``, ``safety``, ``ifactor``, ``dfactor``, ``jump_t``,
    ``step_t``, ``norm``) and, with ``adjoint=True``, ``adjoint_rtol``, ``adjoint_atol``,
    ``adjoint_method``, ``adjoint_options``.
    """

    options: ClassVar[frozenset[str]] = (
        frozenset(
            {
                "first_step",
                "max_num_steps",
                "min_step",
                "max_step",
                "safety",
                "ifactor",
                "dfactor",
                "jump_t",
                "step_t",
                "norm",
            }
        )
        | _ADJOINT_OPTIONS
    )

    def integrate(
        self,
        f: TupleField,
        y0: State,
        t: Tensor,
        *,
        rtol: float,
        atol: float,
        step_size: float | None,
        options: Mapping[str, Any],
        adjoint: bool,
        adjoint_params: Sequence[Tensor],
    ) -> tuple[State, Stats]:
        flat = Flattener(y0)
        budget = step_budget(self.name, options, ADAPTIVE_MAX_STEPS, t)
        adjoint_method = options.get("adjoint_method", self.name)
        if adjoint_method not in _TORCHDIFFEQ_METHODS:
            raise ValueError(
                f"{self.name}: options['adjoint_method']: "
                + unknown_name_message("method", adjoint_method, _TORCHDIFFEQ_METHODS)
            )
        t0, t1 = t[[0, -1]].tolist()
        func = _FlatField(f, flat, self.name, budget, (t0, t1))
        solver_options = {k: v for k, v in options.items() if k not in _ADJOINT_OPTIONS}
        # The budget counts steps over the whole solve (func.callback_step); torchdiffeq's own
        # count restarts at every output time and only backs it up (and bounds the adjoint's solve).
        solver_options["max_num_steps"] = budget + 1
        if "step_t" not in solver_options and len(t) > 1:
            # Make every output time a step end, the last one included (torchdiffeq otherwise steps
            # past t[-1] and interpolates back): its dense output is of low order for several
            # tableaux (dopri8 at rtol=1e-6 on y' = -y over [0, 1] is off by 1e-5 without this).
            # t[0] too: the adjoint's backward pass inherits these options and ends there (without it
            # dopri8's adjoint gradients are off by 3e-6 relative at rtol=1e-8).
            jumps = solver_options.get("jump_t")
            inner = t
            if jumps is not None:
                inner = inner[~torch.isin(inner, torch.as_tensor(jumps, dtype=t.dtype, device=t.device))]
            solver_options["step_t"] = inner
        kwargs: dict[str, Any] = dict(rtol=rtol, atol=atol, method=self.name, options=solver_options)
        if adjoint:
            params = tuple(f.parameters()) if isinstance(f, nn.Module) else ()
            # A tensor listed twice (a module parameter also passed in adjoint_params) would get its
            # gradient twice, once per occurrence.
            kwargs["adjoint_params"] = tuple({id(p): p for p in params + tuple(adjoint_params)}.values())
            kwargs.update({k: v for k, v in options.items() if k in _ADJOINT_OPTIONS})
            if "adjoint_options" not in kwargs and adjoint_method != self.name:
                adaptive = adjoint_method in _TORCHDIFFEQ_ADAPTIVE
                kwargs["adjoint_options"] = {"max_num_steps": budget + 1} if adaptive else {}
            odeint = torchdiffeq.odeint_adjoint
        else:
            odeint = torchdiffeq.odeint
        try:
            ys_flat = odeint(func, flat.flatten(y0), t, **kwargs)
        except AssertionError as err:  # torchdiffeq signals solver failure with assert
            # A NaN/inf from f makes torchdiffeq reject the step and then fail on a NaN step size.
            raise SolverError(
                func.nonfinite() or _explain(self.name, str(err), func.last_t, budget, func.span)
            ) from None
        steps = func.accepted + func.rejected
        stats = Stats(nfe=func.nfe, steps=steps, accepted=func.accepted, rejected=func.rejected)
        return flat.unflatten(ys_flat, lead=(len(t),)), stats


def _explain(name: str, message: str, t: float, max_steps: int, span: tuple[float, float]) -> str:
    if "underflow" in message:
        return (
            f"{name}: step size underflow near t={t:.6g}: the solution may blow up or the problem is stiff there; "
            "try a stiff reference method ('scipy-Radau', 'scipy-BDF') or check f for a singularity"
        )
    if "max_num_steps" in message:
        return budget_spent_message(name, max_steps, t, span)
    if "non-finite" in message:
        return f"{name}: the state became non-finite (NaN/inf) near t={t:.6g}"
    return f"{name}: solver failed near t={t:.6g}: {message}"


@register("dopri5", order=5, adaptive=True, supports_adjoint=True, backend="torchdiffeq")
class Dopri5(TorchdiffeqSolver):
    """Dormand-Prince 5(4): order 5, adaptive, 7 stages (FSAL), embedded order-4 estimate, adjoint."""


@register("dopri8", order=8, adaptive=True, supports_adjoint=True, backend="torchdiffeq")
class Dopri8(TorchdiffeqSolver):
    """Dormand-Prince 8(7): order 8, adaptive, 14 stages (13 new per step), embedded order-7 estimate, adjoint."""


@register("bosh3", order=3, adaptive=True, supports_adjoint=True, backend="torchdiffeq")
class Bosh3(TorchdiffeqSolver):
    """Bogacki-Shampine 3(2): order 3, adaptive, 4 stages (FSAL), embedded order-2 estimate, adjoint."""


@register("adaptive_heun", order=2, adaptive=True, supports_adjoint=True, backend="torchdiffeq")
class AdaptiveHeun(TorchdiffeqSolver):
    """Heun-Euler 2(1): order 2, adaptive, 2 stages, embedded order-1 estimate, adjoint."""


@register("fehlberg2", order=2, adaptive=True, supports_adjoint=True, backend="torchdiffeq")
class Fehlberg2(TorchdiffeqSolver):
    """Runge-Kutta-Fehlberg 2(1): order 2, adaptive, 3 stages, embedded order-1 estimate, adjoint."""
