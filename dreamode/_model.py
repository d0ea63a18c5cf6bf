"""``DREAMStack`` and ``DREAM``: sequence modules that drop in where ``nn.LSTM`` is used."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

import solvers

from ._checks import (
    check_finite,
    check_like,
    check_state,
    check_tensor,
    check_time_precision,
    oversized,
    time_precision_hint,
)
from ._config import DREAMConfig
from ._errors import unknown_name_message
from ._field import DREAMField
from ._integrate import LTC_FUSED, Integrator, SolveStats, explicit_step_limit, integrate_layer
from ._path import INTERPOLATIONS
from ._state import DREAMState
from ._trace import Trace

StateArg = DREAMState | Sequence[DREAMState] | None

_FULL = (torch.float32, torch.float64)
_HALF = (torch.float16, torch.bfloat16)


def _check_dtype(where: str, dtype: torch.dtype, integ: Integrator) -> None:
    """float32/float64 on every solver; float16/bfloat16 on the fixed-step ones only."""
    if dtype in _FULL or (dtype in _HALF and integ.fixed_step):
        return
    fixed = [n for n in solvers.available() if issubclass(solvers.get(n).solver, solvers.FixedStepSolver)]
    fixed = ", ".join([*fixed, LTC_FUSED])
    if dtype not in _HALF:
        raise TypeError(
            f"{where}: dtype {dtype} is not supported; use torch.float32 or torch.float64 "
            f"(torch.float16 and torch.bfloat16 with the fixed-step solvers {fixed})"
        )
    raise TypeError(
        f"{where}: solver {integ.method!r} does not support dtype {dtype} (an adaptive solver's error estimate "
        f"drowns in its rounding; scipy computes in float64); use torch.float32 or torch.float64, or a "
        f"fixed-step solver ({fixed}) in {dtype}"
    )


class DREAMStack(nn.Module):
    """Stacked DREAM layers of possibly different widths, integrated by any registered solver.

    Args:
        input_dim: features ``I`` of the input.
        hidden_dims: hidden size of each layer, e.g. ``[128, 64]``.
        rank: fast-weight rank ``R`` (each layer: ``R <= its input size``).
        dropout: dropout on the outputs of every layer but the last (as ``nn.LSTM``).
        batch_first: ``x`` is ``(B, T, I)`` (default) or ``(T, B, I)``; ``times``, ``dt`` and
            ``mask`` follow the same layout.
        solver: a name of `solvers.available`, or ``"ltc-fused"`` (semi-implicit LTC step).
            ``"euler"`` with one step per observation is the original DREAM-NN update rule.
        adjoint: backpropagate with the continuous adjoint (adaptive torchdiffeq solvers).
        rtol: relative tolerance of adaptive solvers.
        atol: absolute tolerance of adaptive solvers.
        max_step: fixed-step solvers: split each observation interval of each sample into the
            fewest equal sub-steps not longer than ``max_step`` (time units).
        interpolation: input path between observations: ``"hold"``, ``"linear"`` or ``"cubic"``.
        solver_options: extra options passed to `solvers.solve` (adaptive/scipy solvers).
        check_finite: after each forward, check the output and final state once (one host sync)
            and raise `solvers.SolverError` naming the first non-finite step, sample and time.
            ``False`` returns whatever the solve produced (e.g. to study a diverging solver).
        dtype: float32 or float64 on every solver; float16 and bfloat16 with the fixed-step
            solvers only (an adaptive solver's error control needs float32 or float64).
        **config_fields: any `DREAMConfig` field (``time_step``, ``ltc_tau_sys``, ...).

    Inputs: ``x, state=None, *, times=None, dt=None, mask=None, lengths=None, t0=None, return_trace=False``
        - **x** ``(B, T, I)``, or ``(T, I)`` unbatched.
        - **state**: a `DREAMState` per layer (a list when there are several layers).
        - **times** ``(B, T)`` or ``(T,)``: strictly increasing observation times; or
        - **dt** ``(B, T)`` or ``(T,)``: positive time since the previous observation.
          Neither: ``dt = time_step``. ``dt[:, 0]`` is the step into the first observation.
        - **mask** ``(B, T, I)``: 1 where a channel is observed, 0 where missing.
        - **lengths** ``(B,)``: real lengths of a padded batch; steps past them have ``dt = 0``.
        - **t0** ``(B,)`` or scalar: time of the previous observation when ``times`` is given
          (streaming); default ``times[:, 0] - time_step``.

    Outputs: ``output, state`` (and ``trace`` when ``return_trace=True``)
        - **output** ``(B, T, H_last)``: ``h(t_i)`` of the last layer; zero past ``lengths``
          (as ``nn.utils.rnn.pad_packed_sequence``).
        - **state**: final `DREAMState` (list for several layers), at each sample's last
          real observation.
        - **trace**: a `Trace` per layer (list for several layers).
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dims: Sequence[int],
        rank: int = 8,
        *,
        dropout: float = 0.0,
        batch_first: bool = True,
        solver: str = "euler",
        adjoint: bool = False,
        rtol: float = 1e-6,
        atol: float = 1e-8,
        max_step: float | None = None,
        interpolation: str = "hold",
        solver_options: dict[str, Any] | None = None,
        check_finite: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **config_fields: Any,
    ) -> None:
        super().__init__()
        where = type(self).__name__
        hidden_dims = list(hidden_dims)
        if not hidden_dims:
            raise ValueError(f"{where}: hidden_dims must name at least one layer, got []")
        if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"{where}: dropout must be in [0, 1), got {dropout!r}")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(where + ": " + unknown_name_message("interpolation", interpolation, INTERPOLATIONS))
        if solver != LTC_FUSED:
            try:
                entry = solvers.get(solver)
            except ValueError:
                raise ValueError(
                    where + ": " + unknown_name_message("solver", solver, [*solvers.available(), LTC_FUSED])
                ) from None
            if adjoint and not entry.supports_adjoint:
                able = [n for n in solvers.available() if solvers.get(n).supports_adjoint]
                raise ValueError(
                    f"{where}: adjoint=True needs a solver with an adjoint ({', '.join(able)}), got {solver!r}"
                )
            fixed = issubclass(entry.solver, solvers.FixedStepSolver)
        else:
            fixed = True
            if adjoint:
                raise ValueError(f"{where}: adjoint=True needs an adaptive torchdiffeq solver, got 'ltc-fused'")
        if max_step is not None:
            if not fixed:
                raise ValueError(
                    f"{where}: max_step applies to fixed-step solvers; {solver!r} is adaptive (use rtol/atol)"
                )
            if not isinstance(max_step, (int, float)) or not max_step > 0:
                raise ValueError(f"{where}: max_step must be a positive number, got {max_step!r}")
        if solver_options and fixed:
            raise ValueError(f"{where}: solver_options apply to adaptive and scipy solvers, not {solver!r}")
        unknown = set(config_fields) - set(DREAMConfig.field_names())
        if unknown:
            raise TypeError(
                f"{where}: unexpected keyword argument(s) {sorted(unknown)}; DREAMConfig fields are "
                f"{', '.join(DREAMConfig.field_names()[3:])}"
            )
        self.integrator = Integrator(solver, max_step, rtol, atol, adjoint, dict(solver_options or {}))
        if dtype is not None:
            _check_dtype(where, dtype, self.integrator)
        self.configs = []
        sizes = [input_dim, *hidden_dims]
        for i, h in enumerate(hidden_dims):
            self.configs.append(DREAMConfig(input_dim=sizes[i], hidden_dim=h, rank=rank, **config_fields))
        self.fields = nn.ModuleList(DREAMField(c, device=device, dtype=dtype) for c in self.configs)
        self.input_dim = input_dim
        self.hidden_dims = hidden_dims
        self.rank = rank
        self.dropout = float(dropout)
        self.batch_first = batch_first
        self.interpolation = interpolation
        if not isinstance(check_finite, bool):
            raise TypeError(f"{where}: check_finite must be a bool, got {check_finite!r}")
        self.check_finite = check_finite
        self.solve_stats: list[SolveStats] = []

    @property
    def config(self) -> DREAMConfig:
        """Configuration of the first layer."""
        return self.configs[0]

    @property
    def num_layers(self) -> int:
        return len(self.fields)

    @property
    def hidden_dim(self) -> int:
        """Hidden size of the last layer (the width of ``output``)."""
        return self.hidden_dims[-1]

    def reset_parameters(self) -> None:
        for f in self.fields:
            f.reset_parameters()

    def init_state(self, batch_size: int) -> DREAMState | list[DREAMState]:
        """The deterministic initial state (a list for several layers)."""
        states = [f.initial_state(batch_size) for f in self.fields]
        return states[0] if self.num_layers == 1 else states

    def _repr_head(self) -> str:
        return f"{self.input_dim}, {self.hidden_dims}, rank={self.rank}"

    def extra_repr(self) -> str:
        parts = [self._repr_head()]
        integ = self.integrator
        if integ.method != "euler":
            parts.append(f"solver={integ.method!r}")
        if integ.adjoint:
            parts.append("adjoint=True")
        if integ.max_step is not None:
            parts.append(f"max_step={integ.max_step}")
        if self.interpolation != "hold":
            parts.append(f"interpolation={self.interpolation!r}")
        if self.dropout:
            parts.append(f"dropout={self.dropout}")
        if not self.check_finite:
            parts.append("check_finite=False")
        if not self.batch_first:
            parts.append("batch_first=False")
        defaults = DREAMConfig(self.input_dim, self.hidden_dims[0], self.rank)
        for name in DREAMConfig.field_names()[3:]:
            if getattr(self.config, name) != getattr(defaults, name):
                parts.append(f"{name}={getattr(self.config, name)!r}")
        return ", ".join(parts)

    def forward(
        self,
        x: Tensor,
        state: StateArg = None,
        *,
        times: Tensor | None = None,
        dt: Tensor | None = None,
        mask: Tensor | None = None,
        lengths: Tensor | Sequence[int] | None = None,
        t0: Tensor | float | None = None,
        return_trace: bool = False,
    ) -> tuple[Tensor, Any] | tuple[Tensor, Any, Any]:
        where = type(self).__name__
        ref = self.fields[0].C
        x = check_tensor(where, "x", x)
        unbatched = x.dim() == 2
        if x.dim() not in (2, 3):
            raise ValueError(
                f"{where}: expected x of 2 (unbatched) or 3 dimensions, got {x.dim()} with shape {tuple(x.shape)}"
            )
        if x.shape[-1] != self.input_dim:
            raise ValueError(
                f"{where}: expected x with input_dim={self.input_dim} features (last axis), got {x.shape[-1]}"
            )
        check_like(where, "x", x, ref)
        _check_dtype(where, ref.dtype, self.integrator)
        check_finite(where, "x", x)

        def to_batch_major(name: str, v: Tensor | None, feature_axis: bool) -> Tensor | None:
            if v is None:
                return None
            if unbatched:
                return v.unsqueeze(0)
            if not self.batch_first and v.dim() == 2 + feature_axis:
                return v.transpose(0, 1)
            return v

        xb = to_batch_major("x", x, True)
        B, T = xb.shape[0], xb.shape[1]
        if T == 0:
            raise ValueError(f"{where}: x has no time steps (T = 0)")
        valid, lengths_t = self._valid(where, lengths, B, T, unbatched, x.device)
        step64 = self._steps(where, times, dt, t0, valid, B, T, unbatched, to_batch_major, x.device)
        step64 = torch.where(valid, step64, torch.zeros_like(step64))
        step = step64.to(ref.dtype)
        maskb = self._mask(where, mask, xb, unbatched, to_batch_major)
        states = self._states(where, state, B, unbatched)
        if B == 0:  # as nn.LSTM: an empty batch gives empty outputs (the solvers need a sample)
            return self._empty(xb, states, return_trace)

        out = xb
        layer_outs: list[Tensor] = []
        new_states: list[DREAMState] = []
        traces: list[Trace] = []
        self.solve_stats = []
        for i, f in enumerate(self.fields):
            if i > 0 and self.dropout and self.training:
                out = nn.functional.dropout(out, self.dropout, training=True)
            out, s, tr, stats = integrate_layer(
                f,
                self.integrator,
                out,
                step,
                maskb if i == 0 else None,
                states[i],
                interpolation=self.interpolation,
                trace=return_trace,
            )
            layer_outs.append(out)
            new_states.append(s)
            self.solve_stats.append(stats)
            if tr is not None:
                traces.append(tr)
        if self.check_finite:
            self._check_solution(where, layer_outs, new_states, valid, step64, times, to_batch_major, states)
        if lengths_t is not None:
            out = torch.where(valid.unsqueeze(-1), out, torch.zeros_like(out))

        if unbatched:
            out = out.squeeze(0)
            new_states = [DREAMState(*(c.squeeze(0) for c in s)) for s in new_states]
            traces = [Trace(*(c.squeeze(0) for c in tr)) for tr in traces]
        elif not self.batch_first:
            out = out.transpose(0, 1)
        state_out: Any = new_states[0] if self.num_layers == 1 else new_states
        if not return_trace:
            return out, state_out
        return out, state_out, traces[0] if self.num_layers == 1 else traces

    def _empty(self, xb: Tensor, states: list[DREAMState], return_trace: bool) -> tuple[Any, ...]:
        """The outputs for a batch of no samples: ``(0, T, H)`` output and the states as given."""
        T = xb.shape[1]
        # on every parameter's graph, as nn.LSTM's: a loss on it back-propagates zero gradients
        anchor = sum((p.sum() for p in self.parameters() if p.requires_grad), xb.new_zeros(()))
        out = xb.new_zeros(0, T, self.hidden_dim) + 0 * anchor
        if not self.batch_first:
            out = out.transpose(0, 1)
        self.solve_stats = [SolveStats() for _ in self.fields]
        state_out: Any = states[0] if self.num_layers == 1 else states
        if not return_trace:
            return out, state_out
        none = xb.new_zeros(0, T)
        traces = [Trace(none, none, xb.new_zeros(0, T, g.C.shape[1]), none, none) for g in self.fields]
        return out, state_out, traces[0] if self.num_layers == 1 else traces

    # -- numerics ------------------------------------------------------------------------------

    def _check_solution(
        self,
        where: str,
        outs: list[Tensor],
        states: list[DREAMState],
        valid: Tensor,
        step: Tensor,
        times: Tensor | None,
        to_batch_major: Any,
        given: list[DREAMState] | None = None,
    ) -> None:
        """Raise `solvers.SolverError` if an output or a final state is not finite (one host sync).

        The screen is one sum: a NaN or inf anywhere makes it non-finite (an overflowing sum of
        finite values only sends it to the exact search below, which then finds nothing). The last
        layer's output covers the steps (a non-finite value in a layer reaches every later layer's
        ``h`` at the same step, and its own ``h`` by the next step); the final states cover the last.
        """
        acc = torch.float64 if outs[-1].dtype == torch.float64 else torch.float32
        flat = torch.cat([c.detach().reshape(-1) for s in states for c in s])  # small: no per-step axis
        if math.isfinite(float(outs[-1].detach().sum(dtype=acc) + flat.sum(dtype=acc))):
            return
        found = None  # (layer, step, sample)
        for k, (o, s) in enumerate(zip(outs, states)):
            bad = ~torch.isfinite(o).all(-1) & valid  # (B, T)
            if bool(bad.any()):
                i = int(bad.any(0).nonzero()[0, 0])
                found = k, i, int(bad[:, i].nonzero()[0, 0])
                break
            bad_s = torch.stack([~torch.isfinite(c.reshape(c.shape[0], -1)).all(1) for c in s], 1)  # (B, 7)
            if bool(bad_s.any()):
                b = int(bad_s.any(1).nonzero()[0, 0])
                found = k, int(valid[b].sum()) - 1, b
                break
        if found is None:
            return  # the sum overflowed; every value is finite
        k, i, b = found
        if times is not None:
            tb = to_batch_major("times", times, False)
            tb = tb.unsqueeze(0) if tb.dim() == 1 else tb
            when = f"t={float(tb[min(b, tb.shape[0] - 1), i]):.6g}"
        else:
            when = f"t={float(step[b, : i + 1].sum()):.6g} after the start of x"
        layer = f" in layer {k}" if self.num_layers > 1 else ""
        f = self.fields[k]
        integ = self.integrator
        label = "state" if self.num_layers == 1 else f"state[{k}]"
        for n, c in zip(DREAMState._fields, given[k] if given is not None else ()):
            if not bool(torch.isfinite(c).all()):
                first = tuple((~torch.isfinite(c)).nonzero()[0].tolist())
                raise ValueError(f"{where}: {label}.{n} contains NaN or inf (first at index {first})")
        passed = [] if given is None else [(f"{label}.{n}", c) for n, c in zip(DREAMState._fields, given[k])]
        huge = oversized(passed, f.C.dtype)
        params = [n for n, p in f.named_parameters() if not bool(torch.isfinite(p).all())]
        # the longest (sub-)step of this sample up to the failure
        dts = step[b, : i + 1]
        if integ.max_step is not None:
            dts = dts / torch.clamp(torch.ceil(dts / integ.max_step * (1 - 1e-6)), min=1)
        j = int(dts.argmax())
        longest, limit = float(dts[j]), explicit_step_limit(f)
        if params:
            cause = f"the parameter(s) {', '.join(params)}{layer} are not finite (a diverged training step?)"
        elif huge is not None:
            cause = f"the state passed in: {huge}; pass a state this model returned, or init_state()"
        elif integ.tableau is not None and longest > limit:
            cause = (
                f"an explicit {integ.method!r} step of {longest:.4g} time units (step {j}), beyond the stability "
                f"limit {limit:.4g} (see StiffStepWarning); use max_step={limit / 2:.4g}, solver='ltc-fused' or "
                "an adaptive solver such as 'dopri5', or rescale the time axis"
            )
        else:
            cause = (
                f"values too large for {f.C.dtype} (overflow; are the inputs standardised?) or an unstable "
                "step; try float64, max_step, solver='ltc-fused' or an adaptive solver"
            )
        raise solvers.SolverError(
            f"{where}: the solution became non-finite (NaN/inf) at step {i} ({when}) of sample {b}{layer}; "
            f"it arose inside the solve (the inputs are checked). Likely cause: {cause}. "
            "(check_finite=False returns the raw output instead.)"
        )

    # -- argument checks ---------------------------------------------------------------------

    def _valid(
        self, where: str, lengths: Any, B: int, T: int, unbatched: bool, device: torch.device
    ) -> tuple[Tensor, Tensor | None]:
        if lengths is None:
            return torch.ones(B, T, dtype=torch.bool, device=device), None
        if unbatched:
            raise ValueError(f"{where}: lengths applies to batched input; got unbatched x")
        lengths_t = torch.as_tensor(lengths, device=device)
        if lengths_t.dtype.is_floating_point or lengths_t.dtype == torch.bool:
            raise TypeError(f"{where}: lengths must hold integers, got dtype {lengths_t.dtype}")
        if lengths_t.shape != (B,):
            raise ValueError(f"{where}: expected lengths of shape ({B},), got {tuple(lengths_t.shape)}")
        if bool((lengths_t < 1).any()) or bool((lengths_t > T).any()):
            raise ValueError(
                f"{where}: lengths must be in [1, {T}] (the sequence length), got min {int(lengths_t.min())}, "
                f"max {int(lengths_t.max())}"
            )
        valid = torch.arange(T, device=device).unsqueeze(0) < lengths_t.unsqueeze(1)
        return valid, lengths_t

    def _steps(
        self,
        where: str,
        times: Tensor | None,
        dt: Tensor | None,
        t0: Any,
        valid: Tensor,
        B: int,
        T: int,
        unbatched: bool,
        to_batch_major: Any,
        device: torch.device,
    ) -> Tensor:
        """Per-sample step lengths ``(B, T)`` in float64."""
        if times is not None and dt is not None:
            raise ValueError(f"{where}: give times or dt, not both")
        given = times if times is not None else dt
        name = "times" if times is not None else "dt"
        if given is None:
            if t0 is not None:
                raise ValueError(f"{where}: t0 applies only together with times")
            return torch.full((B, T), self.config.time_step, dtype=torch.float64, device=device)
        given = check_tensor(where, name, given)
        if given.device != device:
            raise ValueError(f"{where}: {name} is on {given.device}, but x is on {device}")
        if not (given.is_floating_point() or given.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"{where}: {name} must be a float tensor, got {given.dtype}")
        raw_dtype = given.dtype
        given = given.to(torch.float64)
        if given.shape == (T,):
            given = given.unsqueeze(0).expand(B, T)
        else:
            given = to_batch_major(name, given, False)
            if given.shape != (B, T):
                layout = "(B, T)" if self.batch_first else "(T, B)"
                raise ValueError(
                    f"{where}: expected {name} of shape {layout} or (T,) with B={B}, T={T}, got {tuple(given.shape)}"
                )
        check_finite(where, name, torch.where(valid, given, torch.zeros_like(given)))
        if times is not None:
            if t0 is None:
                first = torch.full((B, 1), self.config.time_step, dtype=torch.float64, device=device)
            else:
                t0_t = torch.as_tensor(t0, dtype=torch.float64, device=device)
                if t0_t.shape not in ((), (B,)):
                    raise ValueError(f"{where}: expected t0 as a scalar or of shape ({B},), got {tuple(t0_t.shape)}")
                first = (given[:, 0] - t0_t).reshape(B, 1)
            steps = torch.cat([first, given[:, 1:] - given[:, :-1]], dim=1)
            derived = valid.clone()
            if t0 is None:
                derived[:, 0] = False  # the first step is time_step, not a difference of times
            check_time_precision(where, name, raw_dtype, given, steps, derived)
        else:
            steps = given
        bad = (steps <= 0) & valid
        if bool(bad.any()):
            b, i = bad.nonzero()[0].tolist()
            if times is not None:
                what = f"times must be strictly increasing per sample (after t0 when given); sample {b}: "
                prev = (
                    f"times[{b}, {i - 1}]={float(given[b, i - 1]):.6g}"
                    if i > 0
                    else f"t0={float(given[b, 0] - steps[b, 0]):.6g}"
                )
                hint = time_precision_hint(name, raw_dtype, float(given[b, i])) if steps[b, i] == 0 else ""
                raise ValueError(f"{where}: {what}{prev}, times[{b}, {i}]={float(given[b, i]):.6g}{hint}")
            raise ValueError(f"{where}: dt must be positive; dt[{b}, {i}]={float(steps[b, i]):.6g}")
        return steps

    def _mask(self, where: str, mask: Tensor | None, xb: Tensor, unbatched: bool, to_batch_major: Any) -> Tensor | None:
        if mask is None:
            return None
        mask = check_tensor(where, "mask", mask)
        if mask.device != xb.device:
            raise ValueError(f"{where}: mask is on {mask.device}, but x is on {xb.device}")
        mb = to_batch_major("mask", mask, True)
        if mb.shape != xb.shape:
            want = (
                tuple(xb.shape[1:]) if unbatched else tuple(xb.shape if self.batch_first else xb.transpose(0, 1).shape)
            )
            raise ValueError(f"{where}: expected mask of the shape of x {want}, got {tuple(mask.shape)}")
        if mb.dtype != torch.bool and not bool(((mb == 0) | (mb == 1)).all()):
            raise ValueError(f"{where}: mask must hold 0/1 (or bool) values, got other values")
        return mb.to(xb.dtype)

    def _states(self, where: str, state: StateArg, B: int, unbatched: bool) -> list[DREAMState]:
        if state is None:
            return [f.initial_state(B) for f in self.fields]
        if self.num_layers == 1 and isinstance(state, DREAMState):
            given = [state]
        elif (
            isinstance(state, (list, tuple))
            and not isinstance(state, DREAMState)
            and all(isinstance(s, tuple) for s in state)
        ):
            given = list(state)
        else:
            kind = "a DREAMState" if self.num_layers == 1 else f"a list of {self.num_layers} DREAMStates"
            raise TypeError(f"{where}: state must be {kind}, got {type(state).__name__}")
        if len(given) != self.num_layers:
            raise ValueError(f"{where}: expected a state for each of the {self.num_layers} layers, got {len(given)}")
        out = []
        for i, (s, f) in enumerate(zip(given, self.fields)):
            label = "state" if self.num_layers == 1 else f"state[{i}]"
            if unbatched:
                s = DREAMState(*(c.unsqueeze(0) if isinstance(c, Tensor) else c for c in s))
            c = f.config
            shapes = DREAMState.shapes(B, c.input_dim, c.hidden_dim, c.rank)
            out.append(check_state(where, s, shapes, f.C, label))
        return out


class DREAM(DREAMStack):
    """The drop-in DREAM sequence module: ``output, state = DREAM(64, 128, rank=8)(x)``.

    ``num_layers`` layers of width ``hidden_dim``; every other argument, the inputs and the
    outputs are those of `DREAMStack`.

    Example:
        >>> model = DREAM(input_dim=64, hidden_dim=128, rank=8)
        >>> output, state = model(torch.randn(32, 50, 64))
        >>> output.shape
        torch.Size([32, 50, 128])
    """

    def __init__(self, input_dim: int, hidden_dim: int, rank: int = 8, *, num_layers: int = 1, **kwargs: Any) -> None:
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"DREAM: num_layers must be a positive int, got {num_layers!r}")
        super().__init__(input_dim, [hidden_dim] * num_layers, rank, **kwargs)

    def _repr_head(self) -> str:
        head = f"{self.input_dim}, {self.hidden_dim}, rank={self.rank}"
        return head + (f", num_layers={self.num_layers}" if self.num_layers > 1 else "")
