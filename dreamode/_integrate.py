"""Advance one DREAM layer over a sequence with any registered solver (docs/dream-cell.md).

Step ``i`` integrates over ``(t_{i-1}, t_i]`` and restarts the solver at every observation, so the
jumps of a ``hold`` input never sit inside a step. Fixed-step methods step every sample with its
own ``Δt`` (and, with ``max_step``, its own number of sub-steps), which keeps samples independent;
adaptive and scipy methods go through `solvers.solve` on the local variable ``u`` in [0, 1]
with ``dz/du = Δt · f(z; x(u))``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

import solvers

from . import _fast_euler, _fast_rk
from ._field import DREAMField, FieldAux
from ._path import SequencePath, StepPath
from ._state import DREAMState
from ._trace import Trace

LTC_FUSED = "ltc-fused"


class StiffStepWarning(solvers.StiffStepWarning):
    """An explicit fixed step longer than the field's stability limit: the result may blow up."""


# The most steps one observation's adaptive solve may take unless solver_options sets
# max_num_steps: dopri5 needs ~15 steps per time unit of gap at tau_min=0.1 (14,614 steps over a
# gap of 1000 in one measurement), about 6.5 ms each for a small layer on a CPU.
MAX_STEPS_PER_OBSERVATION = 10_000


def explicit_step_limit(f: DREAMField) -> float:
    """Longest stable explicit step (time units): ``2·min(tau_min, 1/homeostasis_rate)``.

    τ never drops below ``tau_min``, and the fast weights' norm bound relaxes at rate up to
    ``homeostasis_rate``; explicit Euler on ``-c·z`` is stable for ``Δt·c <= 2``.
    """
    cfg = f.config
    fastest = 1 / cfg.tau_min
    if cfg.fast_weights:
        fastest = max(fastest, cfg.homeostasis_rate)
    return 2 / fastest


@dataclass
class SolveStats:
    """Totals over a sequence: field evaluations and steps (sub-steps of fixed-step methods)."""

    nfe: int = 0
    steps: int = 0
    rejected: int = 0
    per_step_nfe: list[int] = field(default_factory=list)


@dataclass
class Integrator:
    """How a layer is integrated: a solver name plus its settings."""

    method: str = "euler"
    max_step: float | None = None
    rtol: float = 1e-6
    atol: float = 1e-8
    adjoint: bool = False
    options: dict | None = None

    @property
    def tableau(self) -> solvers.ButcherTableau | None:
        if self.method == LTC_FUSED:
            return None
        cls = solvers.get(self.method).solver
        return cls.tableau if issubclass(cls, solvers.FixedStepSolver) else None

    @property
    def fixed_step(self) -> bool:
        return self.method == LTC_FUSED or self.tableau is not None


def _views(h: Tensor, z: DREAMState) -> list[Tensor]:
    """``h`` ``(B,)`` shaped to broadcast against each state component."""
    return [h.view(-1, *([1] * (c.dim() - 1))) for c in z]


def _masks(keep: Tensor, z: DREAMState) -> list[Tensor]:
    """``keep`` ``(B,)`` shaped to broadcast against each state component."""
    return [keep.view(-1, *([1] * (c.dim() - 1))) for c in z]


def _axpy(z: tuple[Tensor, ...], hv: list[Tensor], k: tuple[Tensor, ...], a: float) -> DREAMState:
    if a == 1.0:
        return DREAMState(*(torch.addcmul(zc, hc, kc) for zc, hc, kc in zip(z, hv, k)))
    return DREAMState(*(torch.addcmul(zc, hc, kc, value=a) for zc, hc, kc in zip(z, hv, k)))


def _fixed_step(
    f: DREAMField,
    integ: Integrator,
    z: DREAMState,
    path: StepPath,
    mask: Tensor | None,
    dt: Tensor,
    n_sub: Tensor | None,
    n_max: int,
) -> tuple[DREAMState, FieldAux]:
    """One observation step with a fixed-step method; ``n_sub`` ``(B,)`` sub-steps per sample."""
    if integ.method == "euler" and n_sub is None and n_max == 1 and _fast_euler.step_applies(f, z, path.end, mask, dt):
        return _fast_euler.step(f, z, path.at(0.0), mask, dt)
    tab = integ.tableau
    aux0 = None
    for j in range(n_max):
        if n_sub is None:
            h, u0, du = dt, 0.0, 1.0
        else:
            # Samples with fewer sub-steps take zero-length steps once done: exact, and independent.
            h = torch.where(j < n_sub, dt / n_sub, torch.zeros_like(dt))
            du = 1.0 / n_sub
            u0 = torch.clamp(j * du, max=1.0)
        hv = _views(h, z)
        if tab is None:
            # ltc-fused: every component's linear self-decay -c·z is taken implicitly,
            # z + Δt·dz / (1 + Δt·c); for h that is (h + (Δt/τ) h_target) / (1 + Δt/τ).
            dz, aux = f.evaluate(z, path.at(u0), mask)
            damped = tuple(d / (1 + hc * c) for d, hc, c in zip(dz, hv, aux.decay))
            z = _axpy(z, hv, damped, 1.0)
        else:
            ks: list[DREAMState] = []
            for i, c in enumerate(tab.c):
                zi = z
                for a_il, k in zip(tab.a[i], ks):
                    if a_il != 0.0:
                        zi = _axpy(zi, hv, k, a_il)
                k, aux = f.evaluate(zi, path.at(u0 + c * du if c else u0), mask)
                if aux0 is None:
                    aux0 = aux
                ks.append(k)
            for b_i, k in zip(tab.b, ks):
                if b_i != 0.0:
                    z = _axpy(z, hv, k, b_i)
        if aux0 is None:
            aux0 = aux
    return z, aux0


class _StepODE(nn.Module):
    """``dz/du = Δt · f(z; x(u))`` on one observation step, for `solvers.solve`."""

    def __init__(self, f: DREAMField, path: StepPath, mask: Tensor | None, dt: Tensor) -> None:
        super().__init__()
        self.f = f
        self.path = path
        self.mask = mask
        self.dt = dt

    def forward(self, u: Tensor, z: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        u = u.to(self.dt.dtype)
        dz, _ = self.f.evaluate(DREAMState(*z), self.path.at(u), self.mask)
        return tuple(d * v for d, v in zip(dz, _views(self.dt, dz)))


def _adaptive_step(
    f: DREAMField,
    integ: Integrator,
    z: DREAMState,
    step_path: StepPath,
    m: Tensor | None,
    dt: Tensor,
    unit: Tensor,
    i: int,
) -> tuple[DREAMState, int, int, int]:
    """One observation step with an adaptive or scipy solver: ``(state, nfe, steps, rejected)``."""
    ode = _StepODE(f, step_path, m, dt)
    extra = tuple(a for a in (*step_path.tensors(), dt) if a.requires_grad) if integ.adjoint else ()
    options = {"max_num_steps": MAX_STEPS_PER_OBSERVATION, **(integ.options or {})}
    try:
        sol = solvers.solve(
            ode,
            tuple(z),
            unit,
            method=integ.method,
            adjoint=integ.adjoint,
            rtol=integ.rtol,
            atol=integ.atol,
            options=options,
            adjoint_params=extra,
        )
    except solvers.SolverError as err:
        msg = str(err)
        gap, limit = float(dt.detach().max()), explicit_step_limit(f)
        if "max_num_steps" in msg and gap > limit:
            msg += (
                f". The longest gap of this step is {gap:.4g} time units, {gap / limit:.3g} times this field's "
                f"explicit stability limit {limit:.4g} (2·min(tau_min, 1/homeostasis_rate)); long gaps are stiff "
                "for explicit methods. Use solver='ltc-fused' (stable for any step) or 'scipy-Radau', rescale "
                "the time axis, or raise solver_options={'max_num_steps': ...}"
            )
        if "f(t, y)[" in msg or "in y[" in msg:
            msg += f" (the state's components: {', '.join(f'[{k}] {n}' for k, n in enumerate(DREAMState._fields))})"
        raise solvers.SolverError(
            f"DREAM: the solve of step {i} (into observation {i}; its t is the fraction u in [0, 1] "
            f"of each sample's interval) failed: {msg}"
        ) from None
    z = DREAMState(*(y[-1] for y in sol.ys))
    return z, sol.stats.nfe or 0, sol.stats.steps or 0, sol.stats.rejected or 0


class _AdjointSegment(torch.autograd.Function):
    """Observations ``lo .. hi-1`` of an adjoint solve, kept as their start state only.

    The forward receives what was computed without a graph (outputs and final state); the backward
    solves the segment again from its start state with the graph on (the adjoint solver inside)
    and differentiates it. Inputs: ``recompute``, ``lo``, ``hi``, the outputs ``(B, n, H)``, ``x``,
    ``dt``, the 7 final state components, the 7 start components, then the trainable parameters.
    """

    @staticmethod
    def forward(ctx, recompute, lo, hi, out, x, dt, *rest):  # noqa: D102
        n = len(DREAMState._fields)
        ctx.recompute, ctx.lo, ctx.hi = recompute, lo, hi
        ctx.save_for_backward(x, dt, *rest[n:])
        return (out.clone(), *(c.clone() for c in rest[:n]))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_out, *g_end):  # noqa: D102
        n = len(DREAMState._fields)
        x, dt, *rest = ctx.saved_tensors
        z0, params = rest[:n], rest[n:]
        need = ctx.needs_input_grad
        with torch.enable_grad():
            xd = x.detach().requires_grad_(need[4])
            dtd = dt.detach().requires_grad_(need[5])
            z0d = [c.detach().requires_grad_(need[6 + n + j]) for j, c in enumerate(z0)]
            outs, z_end = ctx.recompute(ctx.lo, ctx.hi, xd, dtd, DREAMState(*z0d))
            ys, gs = [torch.stack(outs, 1)], [g_out]
            for c, g in zip(z_end, g_end):
                if c.requires_grad:
                    ys.append(c)
                    gs.append(g)
            wrt = [t for t in (xd, dtd, *z0d, *params) if t.requires_grad]
            got = iter(torch.autograd.grad(ys, wrt, gs, allow_unused=True)) if wrt else iter(())
        grads = [next(got) if t.requires_grad else None for t in (xd, dtd, *z0d, *params)]
        gx, gdt, gz, gp = grads[0], grads[1], grads[2 : 2 + n], grads[2 + n :]
        return (None, None, None, None, gx, gdt, *([None] * n), *gz, *gp)


def _warn_if_stiff(f: DREAMField, integ: Integrator, substep: Tensor) -> None:
    """`StiffStepWarning` when an explicit method's longest sub-step passes the stability limit."""
    if integ.tableau is None:
        return
    longest = float(substep.detach().max())  # one host sync per sequence
    limit = explicit_step_limit(f)
    if longest > limit:
        warnings.warn(
            f"DREAM: explicit {integ.method!r} steps of up to {longest:.4g} time units exceed the "
            f"stability limit {limit:.4g} of this field (2·min(tau_min, 1/homeostasis_rate)); the "
            f"state may blow up. Use max_step={limit / 2:.4g}, solver='ltc-fused' (stable for any "
            "step) or an adaptive solver such as 'dopri5', or rescale the time axis.",
            StiffStepWarning,
            stacklevel=6,
        )


def integrate_layer(
    f: DREAMField,
    integ: Integrator,
    x: Tensor,
    dt: Tensor,
    mask: Tensor | None,
    z: DREAMState,
    *,
    interpolation: str = "hold",
    trace: bool = False,
) -> tuple[Tensor, DREAMState, Trace | None, SolveStats]:
    """Run one layer over ``x`` ``(B, T, I)`` with steps ``dt`` ``(B, T)`` (0 = padding, frozen).

    Returns ``h(t_i)`` stacked as ``(B, T, H)``, the final state, the per-step field quantities
    at the start of each step as a `Trace` (when ``trace``), and solve statistics.
    """
    T = x.shape[1]
    if integ.method == "euler" and integ.max_step is None:
        _warn_if_stiff(f, integ, dt)
    if (
        integ.method == "euler"
        and integ.max_step is None
        and not trace
        and _fast_euler.sequence_applies(f, mask)
        and _fast_euler.sequence_is_exact(f, z, x, mask, dt)
    ):
        out, z = _fast_euler.run_sequence(f, x, dt, mask, z, interpolation)
        return out, z, None, SolveStats(nfe=T, steps=T, per_step_nfe=[1] * T)
    tab = integ.tableau
    if tab is not None and integ.max_step is None and not trace and _fast_rk.applies(f, mask):
        _warn_if_stiff(f, integ, dt)
        out, z = _fast_rk.run_sequence(f, tab, x, dt, mask, z, interpolation)
        return out, z, None, SolveStats(nfe=tab.stages * T, steps=T, per_step_nfe=[tab.stages] * T)
    path = SequencePath.build(interpolation, x, dt)
    stats = SolveStats()
    if integ.fixed_step:
        if integ.max_step is None:
            n_sub, n_max = None, [1] * T
        else:
            n_sub = torch.clamp(torch.ceil(dt / integ.max_step * (1 - 1e-6)), min=1).to(dt.dtype)
            n_max = n_sub.amax(dim=0).long().tolist()  # one host sync for the whole sequence
        stages = 1 if integ.tableau is None else integ.tableau.stages
        _warn_if_stiff(f, integ, dt if n_sub is None else dt / n_sub)
    # Padding (dt = 0) must leave the state exactly as it was even if the field is not finite
    # on the padded inputs: select rather than multiply by zero.
    frozen = (dt == 0).any(dim=0).tolist()
    outputs: list[Tensor] = []
    auxes: list[FieldAux] = []
    u_norms: list[Tensor] = []
    unit = torch.tensor([0.0, 1.0], dtype=torch.float64, device=x.device)

    def steps(
        lo: int, hi: int, z: DREAMState, record: bool, path: SequencePath = path, dt: Tensor = dt
    ) -> tuple[list[Tensor], DREAMState]:
        """Steps ``lo .. hi-1`` from ``z``; ``record``: count them in ``stats`` and the trace."""
        outs = []
        for i in range(lo, hi):
            step_path = path.step(i)
            z_prev = z
            m = None if mask is None else mask[:, i]
            if integ.fixed_step:
                n_i = None if n_sub is None else n_sub[:, i]
                z, aux = _fixed_step(f, integ, z, step_path, m, dt[:, i], n_i, n_max[i])
                nfe, n_steps, rejected = stages * n_max[i], n_max[i], 0
            else:
                if trace:
                    aux = f.evaluate(z, step_path.at(0.0), m)[1]
                z, nfe, n_steps, rejected = _adaptive_step(f, integ, z, step_path, m, dt[:, i], unit, i)
            if frozen[i]:
                keep = dt[:, i] == 0
                z = DREAMState(*(torch.where(v, old, new) for v, old, new in zip(_masks(keep, z), z_prev, z)))
            outs.append(z.h)
            if record:
                stats.nfe += nfe
                stats.steps += n_steps
                stats.rejected += rejected
                stats.per_step_nfe.append(nfe)
                if trace:
                    auxes.append(aux)
                    u_norms.append(z.U.detach().flatten(1).norm(dim=1))
        return outs, z

    if integ.adjoint and not trace and torch.is_grad_enabled() and T > 1:
        # The adjoint keeps no solver intermediates, but autograd would still hold every
        # observation's solve (its state and its node). Keep the state every ~√T observations
        # instead and redo the solves in between, with the adjoint, during the backward.
        def recompute(lo: int, hi: int, xs: Tensor, dts: Tensor, z: DREAMState) -> tuple[list[Tensor], DREAMState]:
            return steps(lo, hi, z, False, SequencePath.build(interpolation, xs, dts), dts)

        seg = math.isqrt(T - 1) + 1
        params = tuple(p for p in f.parameters() if p.requires_grad)
        for lo in range(0, T, seg):
            hi = min(lo + seg, T)
            with torch.no_grad():
                outs, z_next = steps(lo, hi, z, True)
            res = _AdjointSegment.apply(recompute, lo, hi, torch.stack(outs, 1), x, dt, *z_next, *z, *params)
            outputs.extend(res[0].unbind(1))
            z = DREAMState(*res[1:])
    else:
        outputs, z = steps(0, T, z, True)
    return torch.stack(outputs, dim=1), z, Trace.stack(auxes, u_norms) if trace else None, stats
