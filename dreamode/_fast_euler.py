"""The fast path of the reference Euler rule: one explicit Euler step per observation, fused.

``integrate_layer`` (``solver="euler"``, no ``max_step``, no trace) and single steps of
``DREAMCell`` without a gradient hand their work to this module. It computes the rule of
docs/dream-cell.md — the generic path is :meth:`DREAMField.evaluate` followed by ``z + Δt·f(z)``;
the two agree to rounding (tests/dreamode/test_fast_euler.py) — rearranged so that one step is a
few dozen whole-batch tensor operations (docs/performance.md has the design note and timings):

* **Input projections for the whole sequence at once.** Without a mask the input enters a step
  only through ``x B``, ``x W`` and ``x V``: one ``(T·B, I) × (I, 2H+R)`` product before the loop;
  the error terms are ``e W = x W − x̂ W`` and ``e V = x V − x̂ V``, one ``addmm`` per step.
* **The per-sample scalars as two tiny matrix products.** What the surprise gate computes from
  ``n``, the clamped log-variance, ``avg_surprise`` and ``adaptive_tau`` is affine before the
  sigmoid, so ``S`` and the sleep gate ``g`` come out of one ``addmm`` and one ``sigmoid``; ``1/τ``,
  ``1 + κS``, the forgetting, homeostatic and sleep rates and the two EMA targets are affine in
  ``(S, g, relu(1 − N/‖U‖), min(n, θ_max))``: one more ``addmm``. The learned scalars (τ_sys, s,
  γ, τ₀, α, κ) sit in those two small matrices (:func:`scalar_maps`), built with autograd outside
  the recurrence.
* **``U`` and ``U_target`` as one ``(B, 2, R, H)`` tensor** (transposed, so that every product with
  them is a row vector times a matrix): forgetting, homeostasis and sleep mix the two linearly, a
  ``(B, 2, 2)`` matrix per sample — one ``bmm`` forward; in the backward one ``bmm`` for the state
  gradient and one for the three rate gradients.
* **A hand-written backward** (one ``torch.autograd.Function`` over the whole sequence, as cuDNN
  does for LSTMs): what depends on forward values only is computed for all steps at once, the
  reverse recurrence works on whole ``(B, ·)`` tensors, and the weight gradients (C, B, W, eta, the
  two scalar matrices) and the input gradient are a few large products after the loop. Outputs are
  stacked once at the end, never written into a buffer under autograd.
* The loops run in inference mode with one intra-op thread (small steps, CPU), in TorchScript's
  interpreter (:mod:`._euler_kernel`, :mod:`._script`): the same operations without Python's
  per-operation overhead. With :mod:`.native` enabled, the C++ kernels run the forward and the
  reverse loop instead (``_native_forward``, ``_Seq._backward_native``); the preparation and the
  weight gradients stay here.

Padding (``Δt = 0``) selects the old state, as the generic path does.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from . import _euler_kernel, _script, native
from ._field import DREAMField, FieldAux
from ._state import DREAMState

_TWO_PI_E = 2 * math.pi * math.e
_EPS_VAR = 1e-6  # the z-score's error_var + 1e-6
_EPS_LOG = 1e-6  # log(2πe·mean(error_var) + 1e-6)

_enabled = True


def enabled() -> bool:
    """Whether the fast Euler path is used where it applies (default ``True``)."""
    return _enabled


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Within this context every Euler step goes through the generic field (for comparisons)."""
    global _enabled
    old = _enabled
    _enabled = False
    try:
        yield
    finally:
        _enabled = old


# -- the two small matrices that carry the learned scalars -------------------------------------


def scalar_maps(f: DREAMField) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(MY, bY, ML, bL)``: differentiable functions of the field's scalar parameters.

    With ``Q = [n, clamp(log(2πe·mean(error_var) + 1e-6), 0, 4), avg_surprise, adaptive_tau]``,
    ``Z = σ(Q @ MY + bY) = [S, g]`` (τ_eff = 0.3·τ₀·(1 + α·H_e) + 0.7·adaptive_tau with H_e half the
    clamped log; ``g`` the sleep gate). With
    ``HZ = [S, g, relu(1 − N/‖U‖), relu(1 − N/‖U_target‖), min(n, θ_max)]``,
    ``HZ @ ML + bL = [1/τ before the clamp, S, forget, homeo, ζ·g, 1 + κS, S, min(n, θ_max)]``.
    """
    cfg = f.config
    gamma, tau_0 = f.gamma, f.tau_0
    ig = 1 / gamma
    zero = torch.zeros((), dtype=gamma.dtype, device=gamma.device)
    one = torch.ones_like(zero)
    MY = torch.stack(
        [
            torch.stack([ig, zero]),
            torch.stack([-0.15 * tau_0 * f.alpha * ig, zero]),
            torch.stack([zero, -ig]),
            torch.stack([-0.7 * ig, zero]),
        ]
    )
    bY = torch.stack([-0.3 * tau_0 * ig, cfg.min_surprise_for_sleep * ig])
    inv_ts = 1 / f.tau_sys
    s_col = f.surprise_scale * inv_ts if cfg.ltc_enabled else zero
    fw = cfg.fast_weights
    lam = cfg.forgetting_rate if fw else 0.0
    zeta = cfg.sleep_rate if cfg.sleep_enabled else 0.0
    nu = cfg.homeostasis_rate if fw else 0.0
    # the last two columns pass S and min(n, θ_max) through: the targets of the two lerps
    ML = torch.stack(
        [
            torch.stack([s_col, one, zero + lam * cfg.adaptive_forgetting_scale, zero, zero, f.kappa, one, zero]),
            torch.stack([zero, zero, zero, zero, zero + zeta, zero, zero, zero]),
            torch.stack([zero, zero, zero, zero + nu, zero, zero, zero, zero]),
            torch.stack([zero, zero, zero, zero, zero, zero, zero, zero]),
            torch.stack([zero, zero, zero, zero, zero, zero, zero, one]),
        ]
    )
    bL = torch.stack([inv_ts, zero, zero + lam, zero, zero, one, zero, zero])
    return MY, bY, ML, bL


class _Weights:
    """A layer's matrices in the arrangements the kernel multiplies with."""

    def __init__(self, C: Tensor, Bm: Tensor, W: Tensor, eta: Tensor, V: Tensor, maps: tuple) -> None:
        self.C, self.Bm, self.W, self.eta, self.V = C, Bm, W, eta, V
        self.MY, self.bY, self.ML, self.bL = maps
        self.Vt = V.t().contiguous()
        self.WV = torch.cat([W, V], 1)  # (I, H+R)
        self.negWV = -self.WV
        self.BV = torch.cat([Bm, V], 1)  # (I, H+R)
        self.BWV = torch.cat([Bm, W, V], 1)  # (I, 2H+R)
        # what every step multiplies with, in the order of the loops' (and the C++ kernels') arguments
        self.kernel = [self.C, self.Vt, self.WV, self.negWV, self.BV, eta, self.MY, self.bY, self.ML, self.bL]


_WEIGHT_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _tensors_of(f: DREAMField) -> tuple[Tensor, ...]:
    """The field's parameters and ``V``, read from its dicts (cheaper than ``parameters()``)."""
    p = f._parameters
    return (
        p["C"],
        p["B"],
        p["W"],
        p["eta"],
        p["log_tau_sys"],
        p["log_surprise_scale"],
        p["log_gamma"],
        p["log_tau_0"],
        p["alpha"],
        p["kappa"],
        f._buffers["V"],
    )


def _weights_cached(f: DREAMField) -> _Weights:
    """The field's :class:`_Weights` without autograd, rebuilt only when a parameter has changed."""
    ts = _tensors_of(f)
    key = [p._version for p in ts] + [p.data_ptr() for p in ts]  # a new dtype or device moves the data
    hit = _WEIGHT_CACHE.get(f)
    if hit is not None and hit[0] == key:
        return hit[1]
    with torch.no_grad():
        w = _Weights(f.C, f.B, f.W, f.eta, f.V, scalar_maps(f))
    _WEIGHT_CACHE[f] = (key, w)
    return w


_SERIAL_WORK = 1 << 21


def _serial(device: torch.device, work: int) -> contextlib.AbstractContextManager:
    """One intra-op thread while a loop of small steps runs (on the CPU).

    A step's tensors are a few thousand numbers; splitting each operation over threads costs a
    synchronisation per operation and, on a busy machine, a wait for a descheduled thread. Where
    nothing changes this is a ``nullcontext`` (a streaming step pays for this call every time).
    """
    n = torch.get_num_threads()
    if device.type != "cpu" or n == 1 or work > _SERIAL_WORK:
        return contextlib.nullcontext()
    return _threads(1, n)


@contextlib.contextmanager
def _threads(n: int, restore: int) -> Iterator[None]:
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(restore)


class _Consts:
    """Constant tensors of one layer shape, dtype and device."""

    def __init__(self, cfg: Any, I: int, dtype: torch.dtype, device: torch.device) -> None:
        kw = {"dtype": dtype, "device": device}
        self.col_I = torch.full((I, 1), _TWO_PI_E / I, **kw)
        self.row_I = self.col_I.t()
        self.eps_var = torch.tensor(_EPS_VAR, **kw)
        self.eps_log = torch.full((1,), _EPS_LOG, **kw)
        self.one = torch.ones((), **kw)
        self.negN = torch.tensor(-cfg.target_norm, **kw)
        self.eye4 = torch.tensor([1.0, 0.0, 0.0, 1.0], **kw)
        # Mix = eye + [kF, kH, csg] @ basis = [[1 − kF − kH, kF], [csg, 1 − csg]], row-major
        self.basis = torch.tensor([[-1.0, 1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0]], **kw)
        self.basis_t = self.basis.t().contiguous()
        self.rates = torch.tensor([cfg.surprise_smoothing / cfg.time_step, cfg.habituation_rate / cfg.time_step], **kw)
        self.dt8_mask = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0], **kw)
        self.dt8_one = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0], **kw)
        self.inv_I = torch.full((I, 1), 1.0 / I, **kw)
        # what the Euler loops read, in the order of their ``consts`` argument
        self.loop = [self.eps_var, self.inv_I, self.eps_log, self.col_I, self.one, self.negN, self.eye4, self.basis]


_CONST_CACHE: dict[tuple, _Consts] = {}


def _consts(cfg: Any, I: int, dtype: torch.dtype, device: torch.device) -> _Consts:
    key = (
        I,
        dtype,
        device,
        cfg.target_norm,
        cfg.surprise_smoothing,
        cfg.habituation_rate,
        cfg.time_step,
    )
    c = _CONST_CACHE.get(key)
    if c is None:
        if len(_CONST_CACHE) > 64:
            _CONST_CACHE.clear()
        with torch.inference_mode(False):  # ordinary tensors: the Runge-Kutta path uses them with autograd
            c = _CONST_CACHE[key] = _Consts(cfg, I, dtype, device)
    return c


# -- the kernel ----------------------------------------------------------------------------------

# what the forward keeps per step for the backward (in this order through save_for_backward)
_SAVED = _euler_kernel.SAVED
# U and U_target are the largest per-step tensors (2·R·H numbers a sample): past this many bytes
# for the whole sequence, the forward keeps them only every _UU_EVERY steps and the backward
# recomputes the steps in between (two operations a step, bit for bit the forward's).
_UU_BUDGET = 64 << 20
_UU_EVERY = 32
_SAVED_MASKED = _euler_kernel.SAVED_MASKED
# the C++ kernel keeps them every 16 steps whatever T: writing 2·R·H fresh numbers a sample per
# step costs more (page faults) than recomputing them in the backward from cache
_NATIVE_UU_EVERY = 16


def mask_weights(m: Tensor) -> Tensor:
    """``m / max(1, Σm)`` over the last dimension: each observed channel's weight in the error size."""
    return m / m.sum(-1, keepdim=True).clamp_min(1.0)


def _stk(v: list[Tensor] | Tensor) -> Tensor:
    """A saved per-step value as one ``(T, B, ·)`` tensor (the C++ kernel saves them stacked)."""
    return v if isinstance(v, Tensor) else torch.stack(v)


class _Seq:
    """One layer over one sequence: the precomputations, the forward loop and the reverse loop.

    Tensors are time-major: ``xs`` ``(T, B, I)``, ``dts`` ``(T, B)``, ``ms`` ``(T, B, I)`` or ``None``.
    """

    def __init__(
        self,
        cfg: Any,
        xs: Tensor,
        dts: Tensor,
        ms: Tensor | None,
        w: _Weights,
        frozen: list[bool] | None,
        single: bool = False,
    ) -> None:
        if single:  # one step: xs (B, I), dts (B,), ms (B, I)
            xs, dts, ms = xs.unsqueeze(0), dts.unsqueeze(0), None if ms is None else ms.unsqueeze(0)
        T, Bn, I = xs.shape
        H, R = w.C.shape[0], w.V.shape[1]
        self.cfg, self.T, self.B, self.I, self.H, self.R = cfg, T, Bn, I, H, R
        self.xs, self.dts, self.ms = xs, dts, ms
        self.w = w
        self.C, self.eta, self.V, self.MY, self.ML = w.C, w.eta, w.V, w.MY, w.ML
        self.WV, self.BV, self.BWV = w.WV, w.BV, w.BWV
        self.frozen = frozen
        self.work = Bn * H * (I + 2 * R)
        self.k = k = _consts(cfg, I, xs.dtype, xs.device)
        self.fw = cfg.fast_weights
        self.mix = cfg.fast_weights or cfg.sleep_enabled
        self.ltc = cfg.ltc_enabled

        dt1 = dts.unsqueeze(-1)  # (T, B, 1)
        self.dtr = dt1 * (cfg.error_smoothing / cfg.time_step)
        self.dtR = dt1 * k.rates  # (T, B, 2)
        # the columns of L that are multiplied by Δt (1/τ, S, forget, homeo, ζg), and the rest
        self.dt8 = torch.addcmul(k.dt8_one, dt1, k.dt8_mask)
        if self.ltc:
            self.dtlo = dt1 * (1 / cfg.tau_max)
            self.dthi = dt1 * (1 / cfg.tau_min)
        if ms is None:
            # one (T·B, I) x (I, 2H+R) product (matmul on the transposed view would batch it)
            self.xall = torch.mm(xs.reshape(T * Bn, I), self.BWV).view(T, Bn, self.BWV.shape[1])
        else:
            self.xall = None
            self.MX = ms * xs
            self.OM = 1 - ms
            self.MC = mask_weights(ms)
        self.saved: dict[str, list] | None = None

    # -- forward ---------------------------------------------------------------------------------

    def forward(
        self, h: Tensor, UU: Tensor, em: Tensor, ev: Tensor, sc: Tensor, save: bool = False
    ) -> tuple[list[Tensor], Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Run the steps from ``(h, UU, em, ev, sc)``; returns ``(outputs, final state parts)``.

        ``save``: keep what the backward needs (``self.saved``, a list per name of ``SAVED``).
        """
        k, w = self.k, self.w
        masked = self.ms is not None
        frozen = self.frozen
        every = self.uu_every = 1 if UU.numel() * UU.element_size() * self.T <= _UU_BUDGET else _UU_EVERY
        self.native = native.applies(self.xs)
        if self.native:
            every = self.uu_every = _NATIVE_UU_EVERY
            out, hT, UU, em, ev, sc, saved = _native_forward(
                self.cfg, w, self.xs, self.dts, self.ms, h, UU, em, ev, sc, self.xall, save, every
            )
            if save:
                sv = dict(zip(_SAVED[1:] + _SAVED_MASKED, saved))
                sv["h"] = torch.cat([h.unsqueeze(0), out[:-1]]) if self.T > 1 else h.unsqueeze(0)
                self.saved = sv
            else:
                self.saved = None
            return out, hT, UU, em, ev, sc
        keeps = (self.dts == 0).unsqueeze(-1) if frozen is not None else None
        with _serial(self.xs.device, self.work):
            outs, h, UU, em, ev, sc, saved = _script.call(
                _euler_kernel.forward_loop,
                h,
                UU,
                em,
                ev,
                sc,
                self.xs,
                self.dt8,
                self.dtr,
                self.dtR,
                self.dtlo if self.ltc else None,
                self.dthi if self.ltc else None,
                self.xall,
                self.ms,
                self.MX if masked else None,
                self.OM if masked else None,
                self.MC if masked else None,
                keeps,
                frozen if frozen is not None else [],
                *w.kernel,
                k.loop,
                float(self.cfg.max_adaptive_tau),
                self.fw,
                self.mix,
                save,
                every,
            )
        self.saved = dict(zip(_SAVED + _SAVED_MASKED, saved)) if save else None
        return outs, h, UU, em, ev, sc

    def _uu_segments(self, free: bool) -> Iterator[tuple[int, int, list[Tensor]]]:
        """``(lo, hi, UU before each step of lo..hi−1)``, last segment first.

        The forward kept ``UU`` every ``uu_every`` steps; the steps in between are recomputed here,
        bit for bit as the forward computed them.
        """
        sv = self.saved
        # the lists themselves: the backward empties sv's entries while this runs
        return self._recompute(free, sv["UU"], sv["Mix"], sv["eV"], sv["gain"])

    def _recompute(
        self, free: bool, kept: list, mixes: list, eVs: list, gains: list
    ) -> Iterator[tuple[int, int, list[Tensor]]]:
        every, T = self.uu_every, self.T
        if every == 1:
            yield 0, T, kept
            return
        Bn, H, R = self.B, self.H, self.R
        keeps = (self.dts == 0).unbind(0) if self.frozen is not None else None
        for start in reversed(range(0, T, every)):
            stop = min(start + every, T)
            seg = [kept[start // every]]
            if free:
                kept[start // every] = None
            for j in range(start, stop - 1):
                UU = seg[-1]
                if self.mix:
                    UUn = torch.bmm(mixes[j], UU.view(Bn, 2, H * R)).view(Bn, 2, R, H)
                else:
                    UUn = UU
                if self.fw:
                    UUn[:, 0].addcmul_(eVs[j].unsqueeze(-1), gains[j].unsqueeze(1))
                if self.frozen is not None and self.frozen[j]:
                    UUn = torch.where(keeps[j].view(Bn, 1, 1, 1), UU, UUn)
                seg.append(UUn)
            yield start, stop, seg

    # -- backward --------------------------------------------------------------------------------

    def _backward_native(
        self,
        gh: Tensor,
        gUU: Tensor,
        gem: Tensor,
        gev: Tensor,
        gsc: Tensor,
        g_out: Tensor | None,
        Hs: Tensor,
        need_dt: bool,
    ) -> list[Tensor]:
        """The reverse loop through the C++ kernel, from ``UU`` kept every ``uu_every`` steps and
        the values the C++ forward saved; the local derivatives are formed inside the loop.

        Returns ``[gh, gUU, gem, gev, gsc]`` then, stacked in forward order, ``gPn, gu, gHZf,
        gLin, g_gain, gE, gxV, geV, gdt, gxt``.
        """
        sv, H = self.saved, self.H
        empty = gh.new_empty(0)
        fw, masked = self.fw, self.ms is not None
        if masked:
            XV, XB, MC = sv["xV"], sv["XB"], self.MC
        else:
            XV, XB, MC = self.xall[..., 2 * H :], self.xall[..., :H], empty
        steps = [sv["DT"], sv["Q"], sv["HZ"], sv["A"], sv["dev"], sv["ep"], Hs, sv["ht"]]
        steps += [sv["Lin"] if need_dt else empty, sv["rn"] if fw else empty, XV, XB]
        steps += [sv["Mix"] if self.mix else empty, sv["pred"], sv["eV"] if fw else empty]
        steps += [sv["gain"] if fw else empty, MC, self.dts.unsqueeze(-1)]
        mats = [self.eta, self.C.t(), self.WV.t(), self.V, self.ML, self.MY, self.BV.t()]
        # outside inference mode (still without autograd): the gradients it returns are ordinary
        # tensors, which autograd may add to in place (dt's, when two layers share it)
        with torch.inference_mode(False), torch.no_grad(), _serial(self.xs.device, self.work):
            gh, gUU, gem, gev, gsc, G = torch.ops.dreamode_native.euler_backward(
                self.uu_every,
                gh,
                gUU,
                gem,
                gev,
                gsc,
                g_out,
                sv["UU"],
                steps,
                mats,
                self.ms,
                _native_rates(self.cfg),
                need_dt,
                self.mix,
                fw,
                self.ltc,
            )
        return [gh, gUU, gem, gev, gsc, *G]

    def _backward_scripted(
        self,
        gh: Tensor,
        gUU: Tensor,
        gem: Tensor,
        gev: Tensor,
        gsc: Tensor,
        g_out: Tensor | None,
        DTs: Tensor,
        Qs: Tensor,
        HZs: Tensor,
        Hs: Tensor,
        need_dt: bool,
        free: bool,
    ) -> list[Tensor]:
        """The reverse loop through TorchScript (:func:`._euler_kernel.backward_loop`), segment by
        segment; what depends on forward values only is computed for all steps at once before it.

        Returns what :meth:`_backward_native` returns.
        """
        cfg, k, sv = self.cfg, self.k, self.saved
        Bn, I, H, T = self.B, self.I, self.H, self.T
        dtype, device = gh.dtype, gh.device
        Ct, WVt, negV = self.C.t(), self.WV.t(), -self.V
        eta = self.eta
        theta = cfg.max_adaptive_tau
        masked = self.ms is not None
        fw = self.fw
        dtS = DTs[..., 1:2]
        # the loop runs in inference mode (cheaper operations); the results are made normal below
        with torch.inference_mode():
            # -- everything that depends on forward values only, for all steps at once --
            dt1 = self.dts.unsqueeze(-1)  # (T, B, 1)
            ones = torch.ones_like(dt1)
            zeros = torch.zeros_like(dt1)
            n = Qs[..., 0:1]
            # the gradient vector v = [g a, g Δt·S, g kF, g kH, g csg, g (1+κS), g as_n, g at_n]
            # times D1 is the gradient of L's columns (and of the two sc targets)
            if self.ltc:
                a_raw = DTs[..., 0:1]
                ga_f = dt1 * ((a_raw >= self.dtlo) & (a_raw <= self.dthi))
            else:
                ga_f = dt1
            D1 = torch.cat([ga_f, dt1.expand(T, Bn, 4), ones, self.dtR], -1)
            Zs = HZs[..., 0:2]
            if fw:
                rnU = _stk(sv["rn"])[..., 0:1]
                hf = torch.where(HZs[..., 2:3] > 0, cfg.target_norm * rnU * rnU * rnU, 0.0)
            else:
                hf = zeros
            # σ', ∂relu(1 − N/‖U‖)/∂‖U‖ / ‖U‖, 0, ∂min(n, θ)/∂n
            D2 = torch.cat([Zs - Zs * Zs, hf, zeros, (n <= theta).to(dtype)], -1)
            As = _stk(sv["A"])
            Lr = As.log()
            F2 = torch.where(n > 0, 0.5 / n, 0.0)  # d sqrt
            F3 = torch.where((Lr >= 0) & (Lr <= 4), 1 / As, 0.0)  # d clamp(log A)
            D3 = torch.cat([F2, F3, ones, ones], -1)
            # the small maps: gLin (+ the sc targets) -> gHZ (+ g n of the target), gHZ -> gQ
            ML, MY = self.ML, self.MY
            MLt = ML.t()
            Mq = torch.zeros(5, 4, dtype=dtype, device=device)
            Mq[0:2] = MY.t()
            Mq[4, 0] = 1.0
            # statistics: g dev = P1·g ev_n + gq·P2, g ev += −gq·P3 (P2, P3 carry the z-score's 1/ep)
            DEV, EP = _stk(sv["dev"]), _stk(sv["ep"])
            Z2 = DEV * DEV / EP
            IEP = (self.MC if masked else 1.0 / I) / EP
            DEV2 = DEV + DEV
            P1 = DEV2 * self.dtr
            P2 = DEV2 * IEP
            P3 = Z2 * IEP
            HmH = _stk(sv["ht"]) - Hs
            if need_dt:
                # Δt enters Δt·L (all but 1 + κS, with the clamp of Δt/τ) and the statistics' lerps
                Lins = _stk(sv["Lin"])
                itau = Lins[..., 0:1].clamp(1 / cfg.tau_max, 1 / cfg.tau_min) if self.ltc else Lins[..., 0:1]
                tgt = torch.cat([HZs[..., 0:1], n.clamp(max=theta)], -1)
                Lfac = torch.cat([itau, Lins[..., 1:5], zeros, k.rates * (tgt - Qs[..., 2:4])], -1)
                r_err = cfg.error_smoothing / cfg.time_step
                EVD = (DEV * DEV - (EP - k.eps_var)) * r_err
                DEVr = DEV * r_err
            del DEV, EP, Z2, IEP, DEV2  # long sequences: only P1, P2, P3 are needed from here on

            a_eff = DTs[..., 0:1].clamp(self.dtlo, self.dthi) if self.ltc else DTs[..., 0:1]
            if masked:
                XVT = _stk(sv["xV"]).unsqueeze(-1)
                XB = _stk(sv["XB"])
            else:
                XVT = self.xall[..., 2 * H :].unsqueeze(-1)
                XB = self.xall[..., :H]
            per_step = [D1, D2, D3, P1, P2, P3, HmH, dtS, Hs.unsqueeze(2), a_eff, DTs[..., 5:6]]
            per_step += [self.dtr, 1 - self.dtr, 1 - self.dtR, XVT, XB]
            EV3 = _stk(sv["eV"]).unsqueeze(2) if fw else None
            GAIN3 = _stk(sv["gain"]).unsqueeze(2) if fw else None
            dt_terms = [Lfac, EVD, DEVr] if need_dt else []
            BVt = self.BV.t() if masked else self.BV
            mats = [eta, Ct, WVt, negV, MLt, Mq, k.basis_t, k.row_I, BVt]
            preds, hts, Mixes = sv["pred"], sv["ht"], sv["Mix"]
            segments = self._uu_segments(free)
            if free:
                # what is stacked above is not needed per step any more
                for name in ("h", "dev", "ep", "A", "Q", "HZ", "DT", "ht", "gain", "rn", "xV"):
                    sv[name] = []

            gUU = gUU.contiguous()
            lists: list[list[Tensor]] = [[] for _ in range(10)]
            with _serial(self.xs.device, self.work):
                for lo, hi, UUs in segments:
                    gh, gUU, gem, gev, gsc, seg = _script.call(
                        _euler_kernel.backward_loop,
                        lo,
                        hi,
                        gh,
                        gUU,
                        gem,
                        gev,
                        gsc,
                        g_out,
                        UUs,
                        Mixes,
                        preds,
                        hts,
                        per_step,
                        EV3,
                        GAIN3,
                        self.ms,
                        self.OM if masked else None,
                        dt_terms,
                        mats,
                        self.mix,
                        fw,
                    )
                    for acc, part in zip(lists, seg):
                        acc.extend(part)
        # the loop appended from the last step: stacked in forward order (None: not computed),
        # outside inference mode, so that what is returned is an ordinary tensor
        return [gh, gUU, gem, gev, gsc, *(torch.stack(lst[::-1]) if lst else None for lst in lists)]

    def backward(
        self,
        g_out: Tensor | None,
        gh: Tensor,
        gUU: Tensor,
        gem: Tensor,
        gev: Tensor,
        gsc: Tensor,
        need_x: bool,
        need_dt: bool,
        free: bool = False,
    ) -> dict[str, Tensor | None]:
        """Reverse loop from the gradients of the outputs ``(B, T, H)`` and of the final state.

        ``free``: release the forward's per-step tensors as the loop passes them (the graph is
        not retained).

        The reverse loop (TorchScript's or the C++ kernel's) gives the gradients of the state and
        the per-step factors of the weights' gradients; those are a few ``(·, T·B) × (T·B, ·)``
        products after it.
        """
        sv = self.saved
        assert sv is not None
        Bn, I, T = self.B, self.I, self.T
        masked = self.ms is not None
        fw = self.fw

        with torch.inference_mode():
            DTs = _stk(sv["DT"])  # [Δt/τ raw, Δt·S, kF, kH, csg, 1 + κS]
            Qs = _stk(sv["Q"])  # [n, Lc, avg_surprise, adaptive_tau]
            HZs = _stk(sv["HZ"])  # [S, g, homU, homUt]
            Hs = _stk(sv["h"])  # the state before each step
            dtS = DTs[..., 1:2]
        if self.native:
            gh, gUU, gem, gev, gsc, *G = self._backward_native(gh, gUU.contiguous(), gem, gev, gsc, g_out, Hs, need_dt)
        else:
            gh, gUU, gem, gev, gsc, *G = self._backward_scripted(
                gh, gUU, gem, gev, gsc, g_out, DTs, Qs, HZs, Hs, need_dt, free
            )
        G_Pn, GU, GHZf, GL, G_gain, GE, G_xV, G_eV, G_dt, G_xt = G

        def flat(t: Tensor) -> Tensor:
            return t.reshape(-1, t.shape[-1])

        out: dict[str, Tensor | None] = {
            "h": gh.clone(),
            "UU": gUU.clone(),
            "em": gem.clone(),
            "ev": gev.clone(),
            "sc": gsc.clone(),
        }
        out["C"] = torch.mm(flat(Hs).t(), flat(G_Pn)).neg_()
        GXB = GU * DTs[..., 5:6]
        GY = GHZf[..., 0:2]
        out["MY"] = torch.mm(flat(Qs).t(), flat(GY))
        out["bY"] = GY.sum((0, 1))
        out["ML"] = torch.mm(flat(HZs).t(), flat(GL))
        out["bL"] = GL.sum((0, 1))
        if fw:
            out["eta"] = (G_gain * (dtS * Hs)).sum((0, 1))
            GXV = G_xV + G_eV
        else:
            out["eta"] = None  # unused, as in the generic path
            GXV = G_xV
        out["W"] = torch.mm(flat(_stk(sv["e"])).t(), flat(GU))
        if masked:
            out["B"] = torch.mm(flat(_stk(sv["xt"])).t(), flat(GXB))
            out["x"] = (self.ms * (G_xt + GE)) if need_x else None
        else:
            out["B"] = torch.mm(flat(self.xs).t(), flat(GXB))
            if need_x:
                gXALL = torch.cat([GXB, GU, GXV], -1)  # gradient of x @ [B | W | V]
                out["x"] = torch.addmm(flat(GE), flat(gXALL), self.BWV.t()).view(T, Bn, I)
            else:
                out["x"] = None
        if need_dt:
            gdt = G_dt.squeeze(-1)
            out["dt"] = gdt * (self.dts != 0) if self.frozen is not None else gdt
        else:
            out["dt"] = None
        return out


# -- autograd ------------------------------------------------------------------------------------


def _keep_graph() -> bool:
    """Whether the running backward pass keeps the graph (``retain_graph=True``)."""
    get = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    return True if get is None else bool(get())


class _FastEuler(torch.autograd.Function):
    """The whole sequence as one autograd node with a hand-written backward.

    The forward loop runs in inference mode (cheaper operations), so its intermediates cannot go
    through ``save_for_backward``; they stay on the context and are released when a backward pass
    that does not retain the graph has used them. The inputs are saved the usual way, so changing
    one in place before the backward is still reported.
    """

    @staticmethod
    def forward(ctx, cfg, frozen, x, dt, mask, h0, UU0, em0, ev0, sc0, C, Bm, W, eta, V, MY, bY, ML, bL):  # noqa: D102
        with torch.inference_mode():
            w = _Weights(C, Bm, W, eta, V, (MY, bY, ML, bL))
            xs, dts = x.transpose(0, 1), dt.t()
            ms = None if mask is None else mask.transpose(0, 1)
            seq = _Seq(cfg, xs, dts, ms, w, frozen)
            outs, h, UU, em, ev, sc = seq.forward(h0, UU0, em0, ev0, sc0, save=True)
        ctx.save_for_backward(x, dt, mask, h0, UU0, em0, ev0, sc0, C, Bm, W, eta, V, MY, bY, ML, bL)
        ctx.seq = seq
        if isinstance(outs, Tensor):  # the C++ kernel's (T, B, H), made in inference mode: always copy
            out = outs.transpose(0, 1).clone(memory_format=torch.contiguous_format)
        else:
            out = torch.stack(outs, 1)
        return out, h.clone(), UU.clone(), em.clone(), ev.clone(), sc.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_out, g_h, g_UU, g_em, g_ev, g_sc):  # noqa: D102
        ctx.saved_tensors  # noqa: B018  (raises if an input was changed in place)
        seq: _Seq | None = ctx.seq
        if seq is None:
            raise RuntimeError(
                "Trying to backward through the DREAM Euler fast path a second time; its intermediate "
                "results have been freed. Specify retain_graph=True the first time."
            )
        if not _keep_graph():
            ctx.seq = None
        need = ctx.needs_input_grad
        free = ctx.seq is None
        g = seq.backward(g_out, g_h, g_UU, g_em, g_ev, g_sc, need_x=need[2], need_dt=need[3], free=free)
        gx = g["x"].transpose(0, 1) if g["x"] is not None else None
        gdt = g["dt"].t() if g["dt"] is not None else None

        def want(j: int, v: Tensor | None) -> Tensor | None:
            return v if need[j] else None

        return (
            None,
            None,
            gx,
            gdt,
            None,
            want(5, g["h"]),
            want(6, g["UU"]),
            want(7, g["em"]),
            want(8, g["ev"]),
            want(9, g["sc"]),
            want(10, g["C"]),
            want(11, g["B"]),
            want(12, g["W"]),
            want(13, g["eta"]),
            None,
            want(15, g["MY"]),
            want(16, g["bY"]),
            want(17, g["ML"]),
            want(18, g["bL"]),
        )


# -- entry points --------------------------------------------------------------------------------


def sequence_applies(f: DREAMField, mask: Tensor | None) -> bool:
    """Whether :func:`run_sequence` computes this layer (else the generic path does)."""
    if not _enabled or f.V.requires_grad:
        return False
    return mask is None or not mask.requires_grad


def _pack(a: Tensor, b: Tensor, dim: int) -> Tensor:
    """``torch.stack([a, b], dim)``, or the tensor both are views of when they came from one."""
    base = a._base
    if (
        base is not None
        and base is b._base
        and not torch.is_grad_enabled()
        and base.dim() == a.dim() + 1
        and base.shape[dim] == 2
        and base.is_contiguous()
    ):
        step = base.stride(dim) * base.element_size()
        if a.data_ptr() == base.data_ptr() and b.data_ptr() == base.data_ptr() + step and a.shape == b.shape:
            if base.shape[:dim] + base.shape[dim + 1 :] == a.shape:
                return base
    return torch.stack([a, b], dim)


def _pack_U(U: Tensor, Ut: Tensor) -> Tensor:
    """``U`` and ``U_target`` ``(B, H, R)`` as the kernel's contiguous ``(B, 2, R, H)`` tensor.

    The state this module returns holds ``U`` and ``U_target`` as transposed views of that tensor;
    when they come back unchanged (streaming) and no gradient is recorded, it is reused as is.
    """
    base = U._base
    if base is not None and base is Ut._base and not torch.is_grad_enabled() and base.is_contiguous():
        Bn, H, R = U.shape
        if (
            base.numel() == Bn * 2 * R * H
            and U.data_ptr() == base.data_ptr()
            and Ut.data_ptr() == base.data_ptr() + R * H * base.element_size()
            and U.stride() == Ut.stride() == (2 * R * H, 1, H)
        ):
            return base.view(Bn, 2, R, H)
    return torch.stack([U, Ut], 1).transpose(2, 3).contiguous()


def run_sequence(
    f: DREAMField, x: Tensor, dt: Tensor, mask: Tensor | None, z: DREAMState, interpolation: str = "hold"
) -> tuple[Tensor, DREAMState]:
    """One layer of the Euler rule over ``x`` ``(B, T, I)``: ``(outputs (B, T, H), final state)``.

    ``dt`` ``(B, T)`` in the field's dtype (0 = padding); ``mask`` ``(B, T, I)`` of 0/1 or ``None``.
    The Euler step evaluates the input path at the start of each interval: ``x_i`` for ``hold``,
    ``x_{i-1}`` for ``linear`` and ``cubic`` (``x_1`` on the first step).
    """
    if interpolation != "hold" and x.shape[1] > 1:
        x = torch.cat([x[:, :1], x[:, :-1]], 1)
    h0, U0, Ut0, em0, ev0, as0, at0 = z
    UU0 = _pack_U(U0, Ut0)
    sc0 = _pack(as0, at0, 1)
    frozen = (dt == 0).any(dim=0).tolist()
    frozen = frozen if any(frozen) else None
    grad = _records_grad(f, z, x, mask, dt)
    if grad:
        maps = scalar_maps(f)  # with autograd: the scalar parameters' gradients flow through it
        out, h, UU, em, ev, sc = _FastEuler.apply(
            f.config, frozen, x, dt, mask, h0, UU0, em0, ev0, sc0, f.C, f.B, f.W, f.eta, f.V, *maps
        )
    elif native.applies(x):
        xs, dts = x.transpose(0, 1), dt.t()
        ms = None if mask is None else mask.transpose(0, 1)
        w = _weights_cached(f)
        out, h, UU, em, ev, sc, _ = _native_forward(f.config, w, xs, dts, ms, h0, UU0, em0, ev0, sc0)
        out = out.transpose(0, 1)
    else:
        with torch.inference_mode():
            xs, dts = x.transpose(0, 1), dt.t()
            ms = None if mask is None else mask.transpose(0, 1)
            seq = _Seq(f.config, xs, dts, ms, _weights_cached(f), frozen)
            outs, h, UU, em, ev, sc = seq.forward(h0, UU0, em0, ev0, sc0)
        # outside inference mode again: normal tensors, usable later with autograd
        out = torch.stack(outs, 1)
        h, UU, em, ev, sc = h.clone(), UU.clone(), em.clone(), ev.clone(), sc.clone()
    U, Ut = UU.transpose(2, 3).unbind(1)
    as_, at = sc.unbind(1)
    return out, DREAMState(h, U, Ut, em, ev, as_, at)


def variance_stays_nonnegative(f: DREAMField, z: DREAMState, dt: Tensor) -> bool:
    """Whether ``error_var`` stays >= 0 over steps ``dt`` from state ``z``.

    It does from a state with ``error_var >= 0`` when every Euler step of the running statistics
    has weight ``Δt·error_smoothing/time_step <= 1`` (a convex combination); a longer step can
    overshoot below 0. The rule reads ``max(error_var, 0)``, and so does the TorchScript loop; but
    its hand-derived backward and the C++ kernels take ``error_var`` as it is, so training and
    ``dreamode.native`` use the fused paths only where this holds (one host sync).
    """
    cfg = f.config
    weight = float(dt.detach().max()) * cfg.error_smoothing / cfg.time_step if dt.numel() else 0.0
    return weight <= 1.0 and not bool((z.error_var.detach() < 0).any())


def _records_grad(f: DREAMField, z: DREAMState, x: Tensor, mask: Tensor | None, dt: Tensor) -> bool:
    """Whether autograd records a graph through this layer."""
    if not torch.is_grad_enabled():
        return False
    return any(t is not None and t.requires_grad for t in (*z, x, mask, dt, *_tensors_of(f)))


def sequence_is_exact(f: DREAMField, z: DREAMState, x: Tensor, mask: Tensor | None, dt: Tensor) -> bool:
    """Whether :func:`run_sequence` computes the rule for these steps: always without a gradient on
    the TorchScript loop; with one, or on the C++ kernels, where ``error_var`` stays >= 0."""
    if not (_records_grad(f, z, x, mask, dt) or native.applies(x)):
        return True
    return variance_stays_nonnegative(f, z, dt)


def step_applies(f: DREAMField, z: DREAMState, x: Tensor, mask: Tensor | None, dt: Tensor) -> bool:
    """Whether :func:`step` computes this single step: no gradient is needed (streaming inference),
    and on the C++ kernels ``error_var`` stays >= 0 (:func:`variance_stays_nonnegative`)."""
    if not _enabled or _records_grad(f, z, x, mask, dt):
        return False
    return not native.applies(x) or variance_stays_nonnegative(f, z, dt)


def step(
    f: DREAMField, z: DREAMState, x: Tensor, mask: Tensor | None, dt: Tensor, aux: bool = True
) -> tuple[DREAMState, FieldAux | None]:
    """One Euler step of ``dt`` ``(B,)`` without a gradient: ``(state, aux at the start of the step)``.

    The aux (``None`` unless ``aux``) holds what a trace records (surprise, τ, prediction, error
    norm); its ``decay`` (used by the semi-implicit step only) is left empty.
    """
    if not aux and native.applies(x):
        return _native_cell(f, z, x, mask, dt), None
    h0, U0, Ut0, em0, ev0, as0, at0 = z
    with torch.no_grad():
        cfg = f.config
        if mask is None and not aux:
            return _cell_step(f, h0, _pack_U(U0, Ut0), em0, ev0, _pack(as0, at0, 1), x, dt), None
        # integrate_layer freezes padded samples itself
        seq = _Seq(cfg, x, dt, mask, _weights_cached(f), None, single=True)
        _, h, UU, em, ev, sc = seq.forward(h0, _pack_U(U0, Ut0), em0, ev0, _pack(as0, at0, 1), save=aux)
        U, Ut = UU.transpose(2, 3).unbind(1)
        as_, at = sc.unbind(1)
        state = DREAMState(h, U, Ut, em, ev, as_, at)
        if not aux:
            return state, None
        sv = seq.saved
        pred, n, Z, Lin = sv["pred"][0], sv["Q"][0][:, 0:1], sv["HZ"][0][:, 0:2], sv["Lin"][0]
        S = Z[:, 0]
        if cfg.ltc_enabled:
            tau = Lin[:, 0].reciprocal().clamp_(cfg.tau_min, cfg.tau_max)  # τ_sys / (1 + S·s), clamped
        else:
            tau = f.tau_sys.expand_as(S)
        return state, FieldAux(S, tau, pred, n[:, 0])


def _native_rates(cfg: Any) -> list[float]:
    """The C++ kernels' rates: ``[β/Δt_ref, surprise and habituation rates, 1/τ_max, 1/τ_min, θ_max, N]``."""
    return [
        cfg.error_smoothing / cfg.time_step,
        cfg.surprise_smoothing / cfg.time_step,
        cfg.habituation_rate / cfg.time_step,
        1 / cfg.tau_max,
        1 / cfg.tau_min,
        float(cfg.max_adaptive_tau),
        float(cfg.target_norm),
    ]


def _native_cell(f: DREAMField, z: DREAMState, x: Tensor, mask: Tensor | None, dt: Tensor) -> DREAMState:
    """One step of the C++ kernel from ``x`` ``(B, I)``, ``dt`` ``(B,)``, without a gradient.

    The op packs and unpacks the state itself: in Python that cost as much as the step.
    """
    cfg, w = f.config, _weights_cached(f)
    fw, mix = cfg.fast_weights, cfg.fast_weights or cfg.sleep_enabled
    # nothing requires a gradient (step_applies), and the op records none: no no_grad needed
    with _serial(x.device, 1):
        out = torch.ops.dreamode_native.euler_cell.default(
            *z, x, dt, mask, w.BWV, w.kernel, _native_rates(cfg), fw, mix, cfg.ltc_enabled
        )
    return DREAMState(*out)


def _native_forward(
    cfg: Any,
    w: _Weights,
    xs: Tensor,
    dts: Tensor,
    ms: Tensor | None,
    h: Tensor,
    UU: Tensor,
    em: Tensor,
    ev: Tensor,
    sc: Tensor,
    xall: Tensor | None = None,
    save: bool = False,
    every: int = 1,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, list[Tensor]]:
    """The C++ forward of :mod:`.native` over time-major ``xs`` ``(T, B, I)``, ``dts`` ``(T, B)``.

    Returns ``(outputs (T, B, H), h, UU, em, ev, sc, saved)``; ``saved`` is empty unless ``save``,
    else ``UU`` before every ``every``-th step ``(K, B, 2, R, H)`` and the other values of
    ``SAVED[2:] + SAVED_MASKED``, each ``(T, B, ·)``. ``xall``: the input projection, if made.
    """
    rates = _native_rates(cfg)
    fw, mix = cfg.fast_weights, cfg.fast_weights or cfg.sleep_enabled
    work = xs.shape[1] * w.C.shape[0] * (xs.shape[2] + 2 * w.V.shape[1])
    # the op has no autograd kernel: it runs without a gradient, or inside _FastEuler
    with _serial(xs.device, work):
        return torch.ops.dreamode_native.euler_forward.default(
            h, UU, em, ev, sc, xs, dts, ms, xall, w.BWV, w.kernel, rates, fw, mix, cfg.ltc_enabled, save, every
        )


def _cell_step(
    f: DREAMField, h: Tensor, UU: Tensor, em: Tensor, ev: Tensor, sc: Tensor, x: Tensor, dt: Tensor
) -> DREAMState:
    """An unmasked step without the trace's aux, prepared inside TorchScript (``DREAMCell``)."""
    h, UU, em, ev, sc = scripted_step(f, h, UU, em, ev, sc, x, dt)
    # outside inference mode again: ordinary tensors, usable later with autograd
    h, UU, em, ev, sc = h.clone(), UU.clone(), em.clone(), ev.clone(), sc.clone()
    U, Ut = UU.transpose(2, 3).unbind(1)
    as_, at = sc.unbind(1)
    return DREAMState(h, U, Ut, em, ev, as_, at)


def scripted_step(
    f: DREAMField, h: Tensor, UU: Tensor, em: Tensor, ev: Tensor, sc: Tensor, x: Tensor, dt: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """:func:`._euler_kernel.single_step` from the packed state: the new ``(h, UU, em, ev, sc)``,
    made in inference mode (``benchmarks/op_floor.py`` times it with nothing around it)."""
    cfg = f.config
    w = _weights_cached(f)
    k = _consts(cfg, x.shape[1], x.dtype, x.device)
    work = x.shape[0] * w.C.shape[0] * (x.shape[1] + 2 * w.V.shape[1])
    with torch.inference_mode(), _serial(x.device, work):
        return _script.call(
            _euler_kernel.single_step,
            h,
            UU,
            em,
            ev,
            sc,
            x,
            dt,
            w.BWV,
            w.kernel,
            k.loop,
            [k.rates, k.dt8_one, k.dt8_mask],
            [cfg.error_smoothing / cfg.time_step, 1 / cfg.tau_max, 1 / cfg.tau_min],
            float(cfg.max_adaptive_tau),
            cfg.fast_weights,
            cfg.fast_weights or cfg.sleep_enabled,
            cfg.ltc_enabled,
        )
