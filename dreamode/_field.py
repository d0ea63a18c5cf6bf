"""``DREAMField``: the DREAM cell written once, as the ODE vector field of docs/dream-cell.md."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ._config import DREAMConfig
from ._state import DREAMState

_LOG_2PI_E = math.log(2 * math.pi * math.e)


class FieldAux(NamedTuple):
    """Quantities of one field evaluation, for traces: all per sample.

    Attributes:
        surprise: ``S`` in (0, 1), ``(B,)``.
        tau: the liquid time constant τ, ``(B,)``, time units.
        prediction: ``x̂``, ``(B, I)``.
        error_norm: the RMS z-score ``n`` of the error, ``(B,)``.
        decay: per state component, the rate ``c`` of its linear self-decay ``-c·z`` (broadcastable
            to the component); the semi-implicit ``ltc-fused`` step treats it implicitly.
    """

    surprise: Tensor
    tau: Tensor
    prediction: Tensor
    error_norm: Tensor
    decay: tuple[Tensor | float, ...] = ()


def _safe_sqrt(q: Tensor) -> Tensor:
    # sqrt has an infinite derivative at 0 (every channel masked, or error equal to its mean);
    # this keeps the value exact and the gradient finite there.
    pos = q > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, q, torch.ones_like(q))), torch.zeros_like(q))


class DREAMField(nn.Module):
    """The DREAM vector field ``dz/dt = f(z; x, m)`` over a `DREAMState` ``z``.

    ``field(t, z, x, mask=None)`` returns ``dz/dt`` (a `DREAMState` of derivatives) for the
    input value ``x`` ``(B, I)`` and observation mask ``mask`` ``(B, I)`` of 0/1 (``None``: all
    observed). ``t`` is accepted for the ``f(t, y)`` convention and not used: the field is
    autonomous given its input. `driven_by` binds an input path ``x(t)`` and returns the
    ``f(t, z)`` that any solver of the `solvers` registry integrates.

    Parameters (math names): ``C`` ``(H, I)`` decoder, ``B`` ``(I, H)`` input drive, ``W``
    ``(I, H)`` error injection, ``eta`` ``(H,)`` plasticity; positive scalars stored as logs and
    read through ``tau_sys``, ``surprise_scale``, ``gamma``, ``tau_0``; free scalars ``alpha``,
    ``kappa``. Buffer ``V`` ``(I, R)`` with orthonormal columns, fixed.
    """

    def __init__(
        self, config: DREAMConfig, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        if not isinstance(config, DREAMConfig):
            raise TypeError(f"DREAMField: config must be a DREAMConfig, got {type(config).__name__}")
        self.config = config
        I, H, R = config.input_dim, config.hidden_dim, config.rank
        kw = {"device": device, "dtype": dtype}
        self.C = nn.Parameter(torch.empty(H, I, **kw))
        self.B = nn.Parameter(torch.empty(I, H, **kw))
        self.W = nn.Parameter(torch.empty(I, H, **kw))
        self.eta = nn.Parameter(torch.empty(H, **kw))
        self.log_tau_sys = nn.Parameter(torch.empty((), **kw))
        self.log_surprise_scale = nn.Parameter(torch.empty((), **kw))
        self.log_gamma = nn.Parameter(torch.empty((), **kw))
        self.log_tau_0 = nn.Parameter(torch.empty((), **kw))
        self.alpha = nn.Parameter(torch.empty((), **kw))
        self.kappa = nn.Parameter(torch.empty((), **kw))
        self.register_buffer("V", torch.empty(I, R, **kw))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-draw ``C``, ``B``, ``W`` and ``V``; reset the scalars and ``eta`` to their config values."""
        cfg = self.config
        with torch.no_grad():
            bound_in = 1.0 / math.sqrt(cfg.input_dim)
            bound_h = 1.0 / math.sqrt(cfg.hidden_dim)
            self.C.uniform_(-bound_h, bound_h)
            self.B.uniform_(-bound_in, bound_in)
            self.W.uniform_(-bound_in, bound_in)
            self.eta.fill_(cfg.base_plasticity)
            self.log_tau_sys.fill_(math.log(cfg.ltc_tau_sys))
            self.log_surprise_scale.fill_(math.log(cfg.ltc_surprise_scale))
            self.log_gamma.fill_(math.log(cfg.surprise_temperature))
            self.log_tau_0.fill_(math.log(cfg.base_threshold))
            self.alpha.fill_(cfg.entropy_influence)
            self.kappa.fill_(cfg.kappa)
            # QR in float64 on the CPU, so V does not depend on the device's linear algebra.
            gauss = torch.randn(cfg.input_dim, cfg.rank, dtype=torch.float64, device=self.V.device)
            q, r = torch.linalg.qr(gauss.cpu())
            q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
            self.V.copy_(q.to(self.V))

    @property
    def tau_sys(self) -> Tensor:
        """τ_sys > 0, the time constant at zero surprise (time units)."""
        return self.log_tau_sys.exp()

    @property
    def surprise_scale(self) -> Tensor:
        """s > 0: τ = τ_sys / (1 + S s)."""
        return self.log_surprise_scale.exp()

    @property
    def gamma(self) -> Tensor:
        """γ > 0, the surprise temperature."""
        return self.log_gamma.exp()

    @property
    def tau_0(self) -> Tensor:
        """τ₀ > 0, the base surprise threshold."""
        return self.log_tau_0.exp()

    def initial_state(
        self, batch_size: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> DREAMState:
        """The initial state of docs/dream-cell.md on this field's device and dtype."""
        cfg = self.config
        return DREAMState.initial(
            batch_size,
            cfg.input_dim,
            cfg.hidden_dim,
            cfg.rank,
            cfg.base_threshold,
            device=device or self.C.device,
            dtype=dtype or self.C.dtype,
        )

    def forward(self, t: Tensor | float | None, z: DREAMState, x: Tensor, mask: Tensor | None = None) -> DREAMState:
        """``dz/dt`` at state ``z`` for input ``x`` ``(B, I)`` and mask ``(B, I)`` (time units⁻¹)."""
        return self.evaluate(z, x, mask)[0]

    def evaluate(self, z: DREAMState, x: Tensor, mask: Tensor | None = None) -> tuple[DREAMState, FieldAux]:
        """``(dz/dt, aux)``: the derivatives and the quantities a trace records."""
        cfg = self.config
        h, U, U_target, error_mean, error_var, avg_surprise, adaptive_tau = z

        # 1. prediction through the fast weights: x̂ = tanh(h (C + U Vᵀ))
        hU = torch.bmm(h.unsqueeze(1), U).squeeze(1)  # (B, R)
        prediction = torch.tanh(h @ self.C + hU @ self.V.t())

        # 2. imputation and error
        if mask is None:
            x_tilde = x
            error = x - prediction
        else:
            x_tilde = mask * x + (1 - mask) * prediction
            error = mask * (x - prediction)

        # 3. error size: RMS z-score over observed channels
        dev = error - error_mean
        # error_var >= 0 along the exact flow and every Euler step; a trial stage of a higher-order
        # solver can still undershoot, and a negative variance must not turn into NaN here.
        var = torch.clamp(error_var, min=0.0)
        z2 = dev.square() / (var + 1e-6)
        if mask is None:
            q = z2.mean(-1)
        else:
            q = (mask * z2).sum(-1) / mask.sum(-1).clamp_min(1.0)
        error_norm = _safe_sqrt(q)

        # 4. surprise gate
        entropy = torch.clamp(0.5 * torch.log(2 * math.pi * math.e * var.mean(-1) + 1e-6), 0.0, 2.0)
        tau_cls = self.tau_0 * (1 + self.alpha * entropy)
        tau_eff = 0.3 * tau_cls + 0.7 * adaptive_tau
        gamma = self.gamma
        surprise = torch.sigmoid((error_norm - tau_eff) / gamma)

        # 5. liquid time constant
        if cfg.ltc_enabled:
            tau = torch.clamp(self.tau_sys / (1 + surprise * self.surprise_scale), cfg.tau_min, cfg.tau_max)
        else:
            tau = self.tau_sys.expand_as(surprise)

        # 6-7. target and hidden state
        xV = x_tilde @ self.V  # (B, R)
        drive = (1 + self.kappa * surprise).unsqueeze(-1) * (x_tilde @ self.B)
        u = drive + error @ self.W + torch.bmm(U, xV.unsqueeze(-1)).squeeze(-1)
        dh = (torch.tanh(u) - h) / tau.unsqueeze(-1)

        # 8. Hebbian fast weights with forgetting toward U_target and a homeostatic norm bound
        if cfg.fast_weights:
            gain = (self.eta * surprise.unsqueeze(-1)) * h  # (B, H)
            hebb = gain.unsqueeze(-1) * (error @ self.V).unsqueeze(1)  # (B, H, R)
            forget = cfg.forgetting_rate * (1 + cfg.adaptive_forgetting_scale * surprise)
            # Soft norm bound with a bounded rate ν·relu(1 − N/‖U‖): the math page's
            # ν·relu(‖U‖/N − 1) has the same slope at ‖U‖ = N, but its rate grows without bound
            # and every explicit step diverges once ‖U‖ overshoots. At Δt·ν = 1 this Euler step
            # is exactly the projection of U onto the ball of radius N.
            norm_U = _safe_sqrt(U.square().sum(dim=(1, 2)))
            over = norm_U > cfg.target_norm
            safe_norm = torch.where(over, norm_U, torch.full_like(norm_U, cfg.target_norm))
            homeo = cfg.homeostasis_rate * torch.where(over, 1 - cfg.target_norm / safe_norm, torch.zeros_like(norm_U))
            dU = hebb - forget[:, None, None] * (U - U_target) - homeo[:, None, None] * U
            decay_U = (forget + homeo)[:, None, None]
        else:
            dU = torch.zeros_like(U)
            decay_U = 0.0

        # 9. sleep consolidation while average surprise is low
        if cfg.sleep_enabled:
            sleep_gate = torch.sigmoid((cfg.min_surprise_for_sleep - avg_surprise) / gamma)
            decay_U_target = (cfg.sleep_rate * sleep_gate)[:, None, None]
            dU_target = decay_U_target * (U - U_target)
        else:
            dU_target = torch.zeros_like(U_target)
            decay_U_target = 0.0

        # 10. running statistics as rates: one Euler step of time_step is the usual EMA
        r_err = cfg.error_smoothing / cfg.time_step
        d_error_mean = r_err * dev
        d_error_var = r_err * (dev.square() - error_var)
        r_surprise = cfg.surprise_smoothing / cfg.time_step
        d_avg_surprise = r_surprise * (surprise - avg_surprise)
        # The habituation target saturates at max_adaptive_tau, so the threshold stays <= the bound
        # along the exact flow and for every Euler step with dt * rate <= 1 (no clamp of the state).
        target = torch.clamp(error_norm, max=cfg.max_adaptive_tau)
        r_habituation = cfg.habituation_rate / cfg.time_step
        d_adaptive_tau = r_habituation * (target - adaptive_tau)

        dz = DREAMState(dh, dU, dU_target, d_error_mean, d_error_var, d_avg_surprise, d_adaptive_tau)
        decay = (1 / tau.unsqueeze(-1), decay_U, decay_U_target, r_err, r_err, r_surprise, r_habituation)
        return dz, FieldAux(surprise, tau, prediction, error_norm, decay)

    def driven_by(self, path: Callable[[Tensor], Tensor], mask: Tensor | None = None) -> DrivenField:
        """Bind an input path ``x(t) -> (B, I)``: the result is an ``f(t, z)`` for `solvers.solve`."""
        return DrivenField(self, path, mask)

    def extra_repr(self) -> str:
        c = self.config
        return f"input_dim={c.input_dim}, hidden_dim={c.hidden_dim}, rank={c.rank}"


class DrivenField(nn.Module):
    """``f(t, z) = DREAMField(z; x(t), mask)``: a DREAM field bound to an input path.

    ``solvers.solve(field.driven_by(path), state, t, method="dopri5")`` integrates the cell in
    physical time; the field's parameters stay visible to the adjoint.
    """

    def __init__(self, field: DREAMField, path: Callable[[Tensor], Tensor], mask: Tensor | None = None) -> None:
        super().__init__()
        self.field = field
        self.path = path
        self.mask = mask

    def forward(self, t: Tensor, z: tuple[Tensor, ...]) -> DREAMState:
        return self.field.evaluate(DREAMState(*z), self.path(t), self.mask)[0]
