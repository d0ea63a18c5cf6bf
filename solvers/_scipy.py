"""Reference methods from ``scipy.integrate.solve_ivp``: float64, detached, not differentiable."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import scipy.integrate
import torch
from torch import Tensor

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
from ._errors import SolverError
from ._flat import Flattener
from ._registry import register


class ScipySolver(Solver):
    """Base of the scipy adapters: the batch is flattened into one float64 system.

    ``f`` is called with tensors of ``y0``'s dtypes and device (give it float64 parameters for a
    float64 reference). Error control is over the whole flattened state, so samples of a batch
    share step sizes (results agree to the tolerance, not bit for bit, with solo solves).
    Options: ``first_step``, ``max_step``, ``min_step`` for LSODA, and ``max_num_steps``: the most
    accepted steps of the whole solve (default 100,000 plus one per output interval; more raise
    `SolverError`; scipy's rejected steps are not reported to us).
    """

    method: ClassVar[str] = ""
    options: ClassVar[frozenset[str]] = frozenset({"first_step", "max_step", "max_num_steps"})

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
        if len(t) == 1:  # solve_ivp cannot integrate over an empty span
            return tuple(y.detach()[None] for y in y0), Stats(nfe=0)
        budget = step_budget(self.name, options, ADAPTIVE_MAX_STEPS, t)
        flat = Flattener(y0)
        device = y0[0].device
        checked = False
        last_t = float(t[0])
        calls = 0  # scipy's nfev leaves out the evaluations of its finite-difference Jacobians

        def fun(ti: float, y: np.ndarray) -> np.ndarray:
            nonlocal checked, last_t, calls
            last_t = ti
            calls += 1
            yt = flat.unflatten(torch.from_numpy(y).to(device))
            out = f(torch.tensor(ti, dtype=t.dtype, device=device), yt)
            if not checked:
                check_field_output(self.name, out, yt)
                checked = True
            dy = flat.flatten(out).detach().cpu().double().numpy()
            if not np.isfinite(dy).all():
                # LSODA retries forever on an inf derivative (y' = y**2 past its blow-up hangs), so stop here.
                raise SolverError(
                    nonfinite_field_message(self.name, ti, out, yt) or f"{self.name}: f(t, y) is not finite"
                )
            return dy

        grid = t.detach().cpu().double().numpy()
        y_np = flat.flatten(y0).detach().cpu().double().numpy()
        steps = -1  # solve_ivp evaluates an event once at the start and once after every step

        def count_steps(ti: float, y: np.ndarray) -> float:
            nonlocal steps
            steps += 1
            if steps > budget:
                raise SolverError(budget_spent_message(self.name, budget, ti, (grid[0], grid[-1])))
            return 1.0  # never crosses zero: no event is ever located

        kwargs = {k: v for k, v in options.items() if k != "max_num_steps"}
        with torch.no_grad():
            sol = scipy.integrate.solve_ivp(
                fun,
                (grid[0], grid[-1]),
                y_np,
                method=self.method,
                t_eval=grid,
                rtol=rtol,
                atol=atol,
                events=count_steps,
                **kwargs,
            )
        if sol.status != 0:
            # sol.t holds only the t_eval points passed, so the last time f was called is where it failed.
            raise SolverError(f"{self.name}: {sol.message} near t={last_t:.6g} (integrating to t={grid[-1]:.6g})")
        ys = torch.from_numpy(np.ascontiguousarray(sol.y.T)).to(device)
        return flat.unflatten(ys, lead=(len(grid),)), Stats(nfe=calls)


@register("scipy-RK45", order=5, adaptive=True, differentiable=False, backend="scipy")
class ScipyRK45(ScipySolver):
    """scipy's RK45 (Dormand-Prince 5(4)): order 5, adaptive, 6 stages + FSAL, order-4 estimate, no gradients."""

    method = "RK45"


@register("scipy-DOP853", order=8, adaptive=True, differentiable=False, backend="scipy")
class ScipyDOP853(ScipySolver):
    """scipy's DOP853 (Dormand-Prince 8(5,3)): order 8, adaptive, 12 stages, order-5/3 estimate, no gradients."""

    method = "DOP853"


@register("scipy-Radau", order=5, adaptive=True, differentiable=False, backend="scipy")
class ScipyRadau(ScipySolver):
    """scipy's Radau IIA: order 5, adaptive, implicit (stiff), 3 stages, order-3 estimate, no gradients."""

    method = "Radau"


@register("scipy-BDF", order=5, adaptive=True, differentiable=False, backend="scipy")
class ScipyBDF(ScipySolver):
    """scipy's BDF: variable order 1-5, adaptive, implicit multistep (stiff), no gradients."""

    method = "BDF"


@register("scipy-LSODA", order=12, adaptive=True, differentiable=False, backend="scipy")
class ScipyLSODA(ScipySolver):
    """scipy's LSODA: Adams (order up to 12) / BDF (up to 5) with automatic stiffness switching, no gradients."""

    method = "LSODA"
    options: ClassVar[frozenset[str]] = frozenset({"first_step", "max_step", "min_step", "max_num_steps"})
