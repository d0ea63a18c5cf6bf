"""The fast path of the reference Euler rule: one explicit Euler step per observation, fused.

``integrate_layer`` (``solver="euler"``, no ``max_step``, no trace) and single steps of
``DREAMCell`` without a gradient hand their work to this module. It computes the rule of
dream-math.md §3-4 — the generic path is :meth:`DREAMField.evaluate` followed by ``z + Δt·f(z)``;
the two agree to rounding (tests/dreamode/test_fast_euler.py) — rearranged so that one step is a
few dozen whole-batch tensor operations (see docs/performance.md for the design and the timings):

* **Input projections for the whole sequence at once.** Without a mask the input enters a step
  only through ``x B``, ``x W`` and ``x V``: one ``(T·B, I) × (I, 2H+R)`` product before the loop;
  the error terms are ``e W = x W − x̂ W`` and ``e V = x V − x̂ V``, one ``addmm`` per step.
* **The per-sample scalars as two tiny matrix products.** What the surprise gate computes from
  ``n``, the clamped log-variance, ``avg_surprise`` and ``adaptive_tau`` is affine before the
  sigmoid, so ``S`` and the sleep gate ``g`` come out of one ``addmm`` and one ``sigmoid``; ``1/τ``,
  ``1 + κS``, the forgetting, homeostatic and sleep rates are affine in ``(S, g, relu(1 − N/‖U‖))``:
  one more ``addmm``. The learned scalars (τ_sys, s, γ, τ₀, α, κ) sit in those two small matrices,
  built with autograd outside the recurrence.
* **``U`` and ``U_target`` as one ``(B, 2, H, R)`` tensor**: forgetting, homeostasis and sleep mix
  the two linearly, a ``(B, 2, 2)`` matrix per sample — one ``bmm`` forward; in the backward one
  ``bmm`` for the state gradient and one for the three rate gradients.
* **A hand-written backward** (one ``torch.autograd.Function`` over the whole sequence, as cuDNN
  does for LSTMs): the reverse recurrence works on whole ``(B, ·)`` tensors and leaves the weight
  gradients (C, B, W, eta, the two scalar matrices) and the input gradient to a few large products
  after the loop. Outputs are stacked once at the end, never written into a buffer under autograd.

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
    clamped log; ``g`` the sleep gate). With ``HZ = [S, g, relu(1 − N/‖U‖), relu(1 − N/‖U_target‖)]``,
    ``HZ @ ML + bL = [1/τ before the clamp, S, forget, homeo, ζ·g, 1 + κS]``.
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
    ML = torch.stack(
        [
            torch.stack([s_col, one, zero + lam * cfg.adaptive_forgetting_scale, zero, zero, f.kappa]),
            torch.stack([zero, zero, zero, zero, zero + zeta, zero]),
            torch.stack([zero, zero, zero, zero + nu, zero, zero]),
            torch.stack([zero, zero, zero, zero, zero, zero]),
        ]
    )
    bL = torch.stack([inv_ts, zero, zero + lam, zero, zero, one])
    return MY, bY, ML, bL


_PARAM_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _param_key(f: DREAMField) -> tuple:
    return tuple((p._version, p.data_ptr(), p.dtype, p.device) for p in (*f.parameters(), f.V))


def _scalar_maps_cached(f: DREAMField) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`scalar_maps` without autograd, rebuilt only when a parameter has changed."""
    key = _param_key(f)
    hit = _PARAM_CACHE.get(f)
    if hit is not None and hit[0] == key:
        return hit[1]
    with torch.no_grad():
        maps = scalar_maps(f)
    _PARAM_CACHE[f] = (key, maps)
    return maps


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
        self.dt6_mask = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 0.0], **kw)
        self.dt6_one = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 1.0], **kw)


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
        c = _CONST_CACHE[key] = _Consts(cfg, I, dtype, device)
    return c


# -- the kernel ----------------------------------------------------------------------------------

_SAVED = (
    "h",
    "UU",
    "pred",
    "e",
    "dev",
    "ep",
    "z2",
    "n",
    "A",
    "Lr",
    "Q",
    "Z",
    "HZ",
    "Lin",
    "DT",
    "a_raw",
    "a",
    "ht",
    "c1",
    "XV3",
    "eV",
    "Mix",
    "sh",
    "gain",
    "rn",
    "hom",
    "xt",
    "XB",
)


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
        C: Tensor,
        Bm: Tensor,
        W: Tensor,
        eta: Tensor,
        V: Tensor,
        maps: tuple[Tensor, Tensor, Tensor, Tensor],
        frozen: list[bool] | None,
        xall: Tensor | None = None,
    ) -> None:
        T, Bn, I = xs.shape
        H, R = C.shape[0], V.shape[1]
        self.cfg, self.T, self.B, self.I, self.H, self.R = cfg, T, Bn, I, H, R
        self.xs, self.dts, self.ms = xs, dts, ms
        self.C, self.Bm, self.W, self.eta, self.V = C, Bm, W, eta, V
        self.MY, self.bY, self.ML, self.bL = maps
        self.frozen = frozen
        self.k = k = _consts(cfg, I, xs.dtype, xs.device)
        self.fw = cfg.fast_weights
        self.mix = cfg.fast_weights or cfg.sleep_enabled
        self.ltc = cfg.ltc_enabled
        self.Vt = V.t()
        self.WV = torch.cat([W, V], 1)  # (I, H+R)

        dt1 = dts.unsqueeze(-1)  # (T, B, 1)
        self.dtr = dt1 * (cfg.error_smoothing / cfg.time_step)
        self.dtR = dt1 * k.rates  # (T, B, 2)
        # the columns of L that are multiplied by Δt (1/τ, S, forget, homeo, ζg), and 1 + κS
        self.dt6 = torch.addcmul(k.dt6_one, dt1, k.dt6_mask)
        if self.ltc:
            self.dtlo = dt1 * (1 / cfg.tau_max)
            self.dthi = dt1 * (1 / cfg.tau_min)
        if ms is None:
            self.BWV = torch.cat([Bm, W, V], 1)  # (I, 2H+R)
            if xall is None:
                xall = torch.matmul(xs, self.BWV)  # (T, B, 2H+R)
            self.xall = xall
            self.XB = xall[..., :H].unbind(0)
            self.XWV = xall[..., H:].unbind(0)
            self.XV3 = xall[..., 2 * H :].unsqueeze(2).unbind(0)  # (B, 1, R) per step
        else:
            self.xall = None
            self.BV = torch.cat([Bm, V], 1)  # (I, H+R)
            self.MX = (ms * xs).unbind(0)
            self.OM = (1 - ms).unbind(0)
            self.MC = (ms / ms.sum(-1, keepdim=True).clamp_min(1.0)).unbind(0)
        self.saved: dict[str, list] | None = None
        self.auxes: list | None = None

    # -- forward ---------------------------------------------------------------------------------

    def forward(
        self, h: Tensor, UU: Tensor, em: Tensor, ev: Tensor, sc: Tensor, save: bool = False, aux: bool = False
    ) -> tuple[list[Tensor], Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Run the steps from ``(h, UU, em, ev, sc)``; returns ``(outputs, final state parts)``."""
        cfg, k = self.cfg, self.k
        Bn, H, R = self.B, self.H, self.R
        HR = H * R
        C, Vt, WV, eta = self.C, self.Vt, self.WV, self.eta
        MY, bY, ML, bL = self.MY, self.bY, self.ML, self.bL
        masked = self.ms is not None
        negWV = None if masked else -WV
        theta = cfg.max_adaptive_tau
        xs = self.xs.unbind(0)
        dtr, dtR, dt6 = self.dtr.unbind(0), self.dtR.unbind(0), self.dt6.unbind(0)
        if self.ltc:
            dtlo, dthi = self.dtlo.unbind(0), self.dthi.unbind(0)
        if masked:
            ms = self.ms.unbind(0)
        frozen = self.frozen
        keeps = (self.dts == 0).unbind(0) if frozen is not None else None
        outs: list[Tensor] = []
        sv = self.saved = {name: [] for name in _SAVED} if save else None
        self.auxes = [] if aux else None
        hom = None
        for i in range(self.T):
            U = UU[:, 0]  # (B, R, H): fast weights are kept transposed, U[b] = Uᵀ
            hU = torch.bmm(h.unsqueeze(1), U.transpose(1, 2)).view(Bn, R)
            pred = torch.addmm(torch.mm(hU, Vt), h, C).tanh_()
            if masked:
                m = ms[i]
                e = torch.addcmul(self.MX[i], m, pred, value=-1)
                xt = torch.addcmul(self.MX[i], self.OM[i], pred)
                XB, xV = torch.mm(xt, self.BV).split([H, R], 1)
                XV3 = xV.unsqueeze(1)
                eWV = torch.mm(e, WV)
            else:
                e = xs[i] - pred
                eWV = torch.addmm(self.XWV[i], pred, negWV)
                XB, XV3 = self.XB[i], self.XV3[i]
            eW, eV = eWV.split([H, R], 1)
            dev = e - em
            dev2 = dev * dev
            ep = ev + k.eps_var
            z2 = dev2 / ep
            if masked:
                q = (z2 * self.MC[i]).sum(-1, keepdim=True)
            else:
                q = z2.mean(-1, keepdim=True)
            n = q.sqrt()
            A = torch.addmm(k.eps_log, ev, k.col_I)  # 2πe·mean(error_var) + 1e-6
            Lr = A.log()
            Q = torch.cat([n, Lr.clamp(0.0, 4.0), sc], 1)
            Z = torch.addmm(bY, Q, MY).sigmoid_()  # [S, g]
            if self.fw:
                rn = torch.linalg.vector_norm(UU.view(Bn, 2, HR), dim=2).reciprocal_()
                hom = torch.addcmul(k.one, rn, k.negN).clamp_min_(0.0)  # relu(1 − N/‖·‖)
                HZ = torch.cat([Z, hom], 1)
            else:
                HZ = torch.cat([Z, torch.zeros_like(Z)], 1)
            Lin = torch.addmm(bL, HZ, ML)  # [1/τ, S, forget, homeo, ζg, 1 + κS]
            DT = Lin * dt6[i]  # [Δt/τ, Δt·S, kF, kH, csg, 1 + κS]
            a_raw, dtS, kFHC, c1 = DT.split([1, 1, 3, 1], 1)
            a = a_raw.clamp(dtlo[i], dthi[i]) if self.ltc else a_raw
            base = torch.addcmul(eW, c1, XB)
            ht = torch.baddbmm(base.unsqueeze(1), XV3, U).tanh_().view(Bn, H)
            h_new = torch.lerp(h, ht, a)
            if self.mix:
                Mix = torch.addmm(k.eye4, kFHC, k.basis).view(Bn, 2, 2)
                UUn = torch.bmm(Mix, UU.view(Bn, 2, HR)).view(Bn, 2, R, H)
            else:
                Mix = None
                UUn = UU
            if self.fw:
                sh = dtS * h
                gain = sh * eta
                UUn[:, 0].addcmul_(eV.unsqueeze(-1), gain.unsqueeze(1))
            em_n = torch.lerp(em, e, dtr[i])
            ev_n = torch.lerp(ev, dev2, dtr[i])
            S = Lin[:, 1:2]
            sc_n = torch.lerp(sc, torch.cat([S, n.clamp(max=theta)], 1), dtR[i])
            if aux:
                self.auxes.append((pred, n, Z, Lin))
            if save:
                sv["h"].append(h)
                sv["UU"].append(UU)
                sv["pred"].append(pred)
                sv["e"].append(e)
                sv["dev"].append(dev)
                sv["ep"].append(ep)
                sv["z2"].append(z2)
                sv["n"].append(n)
                sv["A"].append(A)
                sv["Lr"].append(Lr)
                sv["Q"].append(Q)
                sv["Z"].append(Z)
                sv["HZ"].append(HZ)
                sv["Lin"].append(Lin)
                sv["DT"].append(DT)
                sv["a_raw"].append(a_raw)
                sv["a"].append(a)
                sv["ht"].append(ht)
                sv["c1"].append(c1)
                sv["XV3"].append(XV3)
                sv["eV"].append(eV)
                sv["Mix"].append(Mix)
                if self.fw:
                    sv["sh"].append(sh)
                    sv["gain"].append(gain)
                    sv["rn"].append(rn)
                    sv["hom"].append(hom)
                if masked:
                    sv["xt"].append(xt)
                    sv["XB"].append(XB)
            if frozen is not None and frozen[i]:
                # padding: the state is selected, not multiplied by a zero step
                keep = keeps[i].unsqueeze(1)
                h_new = torch.where(keep, h, h_new)
                UUn = torch.where(keep.view(Bn, 1, 1, 1), UU, UUn)
                em_n = torch.where(keep, em, em_n)
                ev_n = torch.where(keep, ev, ev_n)
                sc_n = torch.where(keep, sc, sc_n)
            h, UU, em, ev, sc = h_new, UUn, em_n, ev_n, sc_n
            outs.append(h)
        return outs, h, UU, em, ev, sc

    # -- backward --------------------------------------------------------------------------------

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
    ) -> dict[str, Tensor | None]:
        """Reverse loop from the gradients of the outputs ``(B, T, H)`` and of the final state."""
        cfg, k, sv = self.cfg, self.k, self.saved
        assert sv is not None
        Bn, I, H, R, T = self.B, self.I, self.H, self.R, self.T
        HR = H * R
        Ct, WVt, negV = self.C.t(), self.WV.t(), -self.V
        MYt, MLt = self.MY.t(), self.ML.t()
        eta = self.eta
        theta = cfg.max_adaptive_tau
        N = cfg.target_norm
        masked = self.ms is not None
        if masked:
            ms = self.ms.unbind(0)
            BVt = self.BV.t()
        dtr, dtR, dt6 = self.dtr.unbind(0), self.dtR.unbind(0), self.dt6.unbind(0)
        omdtr = (1 - self.dtr).unbind(0)
        omdtR = (1 - self.dtR).unbind(0)
        g_outs = g_out.unbind(1) if g_out is not None else None
        if need_dt:
            r_err = cfg.error_smoothing / cfg.time_step
            if self.ltc:
                lo, hi = 1 / cfg.tau_max, 1 / cfg.tau_min
        gUU = gUU.contiguous()
        zB1 = gh.new_zeros(Bn, 1)
        zB3 = gh.new_zeros(Bn, 3)
        zBR = gh.new_zeros(Bn, R)
        L_gPn, L_gu, L_gY, L_gLin, L_ggain, L_gE, L_gxV, L_geV, L_gdt, L_gxt = ([] for _ in range(10))
        for i in reversed(range(T)):
            if g_outs is not None:
                gh = gh + g_outs[i]
            h, UU, pred, dev, ep, z2 = sv["h"][i], sv["UU"][i], sv["pred"][i], sv["dev"][i], sv["ep"][i], sv["z2"][i]
            n, A, Lr, Z, Lin, ht = sv["n"][i], sv["A"][i], sv["Lr"][i], sv["Z"][i], sv["Lin"][i], sv["ht"][i]
            a_raw, a, c1, XV3, eV = sv["a_raw"][i], sv["a"][i], sv["c1"][i], sv["XV3"][i], sv["eV"][i]
            U = UU[:, 0]
            if need_dt:
                # Δt enters through Δt·L (all but 1 + κS) and the three lerps of the statistics
                tgt = torch.cat([Lin[:, 1:2], n.clamp(max=theta)], 1)
                gdt = (
                    r_err * (gem * dev).sum(-1, keepdim=True)
                    + r_err * (gev * (dev * dev - (ep - k.eps_var))).sum(-1, keepdim=True)
                    + (gsc * k.rates * (tgt - sv["Q"][i][:, 2:4])).sum(-1, keepdim=True)
                )
            # statistics: em_n = lerp(em, e, Δt·r), ev_n = lerp(ev, dev², Δt·r), sc_n = lerp(sc, tgt, Δt·r)
            gS_tgt, gn_tgt = (gsc * dtR[i]).split(1, 1)
            gn = gn_tgt * (n <= theta)
            gsc = gsc * omdtR[i]
            ge = gem * dtr[i]
            gdev2 = gev * dtr[i]
            gem = gem * omdtr[i]
            gev = gev * omdtr[i]
            # fast weights and sleep: UU_n = Mix @ UU (+ gain ⊗ eV on U)
            if self.mix:
                GUf = gUU.view(Bn, 2, HR)
                gMix = torch.bmm(GUf, UU.view(Bn, 2, HR).transpose(1, 2))
                gkFHC = torch.mm(gMix.view(Bn, 4), k.basis_t)  # [g kF, g kH, g csg]
                gUUp = torch.bmm(sv["Mix"][i].transpose(1, 2), GUf).view(Bn, 2, R, H)
            else:
                gkFHC = zB3
                gUUp = gUU.clone()
            gU0 = gUUp[:, 0]
            if self.fw:
                GU0 = gUU[:, 0]
                g_gain = torch.bmm(eV.unsqueeze(1), GU0).view(Bn, H)
                geV = torch.bmm(sv["gain"][i].unsqueeze(1), GU0.transpose(1, 2)).view(Bn, R)
                tg = g_gain * eta  # gradient of sh = Δt·S·h
                g_dtS = (tg * h).sum(-1, keepdim=True)
            else:
                geV = zBR
                g_dtS = zB1
            # h_n = lerp(h, ht, a)
            g_ht = gh * a
            ga = (gh * (ht - h)).sum(-1, keepdim=True)
            gh = gh - g_ht
            if self.fw:
                gh = torch.addcmul(gh, tg, sv["DT"][i][:, 1:2])
            gu = torch.ops.aten.tanh_backward(g_ht, ht)
            # u = eW + (1 + κS)·xB + U xV
            gU0.addcmul_(XV3.transpose(1, 2), gu.unsqueeze(1))
            gxV = torch.bmm(gu.unsqueeze(1), U.transpose(1, 2)).view(Bn, R)
            XB = sv["XB"][i] if masked else self.XB[i]
            gc1 = (gu * XB).sum(-1, keepdim=True)
            ga_raw = torch.where(a == a_raw, ga, 0.0) if self.ltc else ga
            gDT5 = torch.cat([ga_raw, g_dtS, gkFHC], 1)
            if need_dt:
                itau = Lin[:, 0:1].clamp(lo, hi) if self.ltc else Lin[:, 0:1]
                gdt = gdt + ga * itau + (gDT5[:, 1:] * Lin[:, 1:5]).sum(-1, keepdim=True)
            gLin = torch.cat([gDT5, gc1], 1) * dt6[i]
            gLin[:, 1:2] += gS_tgt
            gHZ = torch.mm(gLin, MLt)  # [gS, g g, g homU, g homUt]
            if self.fw:
                hom, rn = sv["hom"][i][:, 0:1], sv["rn"][i][:, 0:1]
                coef = torch.where(hom > 0, gHZ[:, 2:3] * (N * rn * rn * rn), 0.0)
                gU0.addcmul_(coef.unsqueeze(-1), U)
            gY = torch.ops.aten.sigmoid_backward(gHZ[:, 0:2], Z)
            gnQ, gLc, gscQ = torch.mm(gY, MYt).split([1, 1, 2], 1)
            gsc = gsc + gscQ
            gn = gn + gnQ
            gA = torch.where((Lr >= 0) & (Lr <= 4), gLc, 0.0) / A
            gev = torch.addmm(gev, gA, k.row_I)
            gq = torch.where(n > 0, 0.5 * gn / n, 0.0)
            gz2 = gq * self.MC[i] if masked else gq * (1.0 / I)
            t = gz2 / ep
            gdev2 = gdev2 + t
            gev = torch.addcmul(gev, t, z2, value=-1)
            gdev = 2 * dev * gdev2
            gem = gem - gdev
            ge = ge + gdev
            # the error, the imputed input and their projections
            geWV = torch.cat([gu, geV], 1)
            if masked:
                gE = torch.addmm(ge, geWV, WVt)  # ∂/∂e
                gxt = torch.mm(torch.cat([gu * c1, gxV], 1), BVt)  # ∂/∂x̃
                gPn = torch.ops.aten.tanh_backward(torch.addcmul(gE * ms[i], self.OM[i], gxt, value=-1), pred)
                L_gxt.append(gxt)
                L_gE.append(gE)
            else:
                gPn = torch.ops.aten.tanh_backward(torch.addmm(ge, geWV, WVt), pred)  # −∂/∂P
                L_gE.append(ge)
            # P = h C + (h U) Vᵀ
            gh = torch.addmm(gh, gPn, Ct, alpha=-1)
            ghU = torch.mm(gPn, negV)
            gh = torch.baddbmm(gh.unsqueeze(1), ghU.unsqueeze(1), U).view(Bn, H)
            gU0.addcmul_(ghU.unsqueeze(-1), h.unsqueeze(1))
            gUU = gUUp
            L_gPn.append(gPn)
            L_gu.append(gu)
            L_gY.append(gY)
            L_gLin.append(gLin)
            L_gxV.append(gxV)
            if self.fw:
                L_ggain.append(g_gain)
                L_geV.append(geV)
            if need_dt:
                if self.frozen is not None and self.frozen[i]:
                    gdt = gdt * (self.dts[i] != 0).unsqueeze(1)
                L_gdt.append(gdt)

        def stacked(lst: list[Tensor]) -> Tensor:
            lst.reverse()
            return torch.stack(lst)

        def flat(t: Tensor) -> Tensor:
            return t.reshape(-1, t.shape[-1])

        out: dict[str, Tensor | None] = {"h": gh, "UU": gUU, "em": gem, "ev": gev, "sc": gsc}
        GPn = stacked(L_gPn)
        out["C"] = torch.mm(flat(torch.stack(sv["h"])).t(), flat(GPn)).neg_()
        GU = stacked(L_gu)
        C1 = torch.stack(sv["c1"])
        GXB = GU * C1
        GY, GLin = stacked(L_gY), stacked(L_gLin)
        out["MY"] = torch.mm(flat(torch.stack(sv["Q"])).t(), flat(GY))
        out["bY"] = GY.sum((0, 1))
        out["ML"] = torch.mm(flat(torch.stack(sv["HZ"])).t(), flat(GLin))
        out["bL"] = GLin.sum((0, 1))
        if self.fw:
            out["eta"] = (stacked(L_ggain) * torch.stack(sv["sh"])).sum((0, 1))
            GXV = stacked(L_gxV) + stacked(L_geV)
        else:
            out["eta"] = None  # unused, as in the generic path
            GXV = stacked(L_gxV)
        GE = stacked(L_gE)
        if masked:
            out["B"] = torch.mm(flat(torch.stack(sv["xt"])).t(), flat(GXB))
            out["W"] = torch.mm(flat(torch.stack(sv["e"])).t(), flat(GU))
            out["x"] = (self.ms * (stacked(L_gxt) + GE)) if need_x else None
        else:
            gXALL = torch.cat([GXB, GU, GXV], -1)  # (T, B, 2H+R)
            out["B"] = torch.mm(flat(self.xs).t(), flat(GXB))
            out["W"] = torch.mm(flat(torch.stack(sv["e"])).t(), flat(GU))
            out["x"] = torch.addmm(flat(GE), flat(gXALL), self.BWV.t()).view(T, Bn, I) if need_x else None
        out["dt"] = stacked(L_gdt).squeeze(-1) if need_dt else None
        return out


# -- autograd ------------------------------------------------------------------------------------


class _FastEuler(torch.autograd.Function):
    """The whole sequence as one autograd node with a hand-written backward."""

    @staticmethod
    def forward(ctx, cfg, frozen, x, dt, mask, h0, UU0, em0, ev0, sc0, C, Bm, W, eta, V, MY, bY, ML, bL):  # noqa: D102
        seq = _Seq(
            cfg,
            x.transpose(0, 1),
            dt.t(),
            None if mask is None else mask.transpose(0, 1),
            C,
            Bm,
            W,
            eta,
            V,
            (MY, bY, ML, bL),
            frozen,
        )
        outs, h, UU, em, ev, sc = seq.forward(h0, UU0, em0, ev0, sc0, save=True)
        # Everything the backward reads goes through save_for_backward, so that it is released
        # after a backward pass (and checked against in-place changes), as for built-in nodes.
        sv = seq.saved
        counts = []
        flat = [x, dt, mask, C, Bm, W, eta, V, MY, bY, ML, bL, seq.xall]
        for name in _SAVED:
            items = [t for t in sv[name] if t is not None]
            counts.append(len(items))
            flat.extend(items)
        ctx.save_for_backward(*flat)
        ctx.meta = (cfg, frozen, counts)
        seq.saved = None
        # outputs must be new tensors (not inputs)
        UU = UU.clone() if UU is UU0 else UU
        return torch.stack(outs, 1), h, UU, em, ev, sc

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_out, g_h, g_UU, g_em, g_ev, g_sc):  # noqa: D102
        cfg, frozen, counts = ctx.meta
        flat = ctx.saved_tensors
        x, dt, mask, C, Bm, W, eta, V, MY, bY, ML, bL, xall = flat[:13]
        seq = _Seq(
            cfg,
            x.transpose(0, 1),
            dt.t(),
            None if mask is None else mask.transpose(0, 1),
            C,
            Bm,
            W,
            eta,
            V,
            (MY, bY, ML, bL),
            frozen,
            xall=xall,
        )
        sv: dict[str, list] = {}
        pos = 13
        for name, c in zip(_SAVED, counts):
            sv[name] = list(flat[pos : pos + c])
            pos += c
        if not sv["Mix"]:
            sv["Mix"] = [None] * seq.T
        seq.saved = sv
        need = ctx.needs_input_grad
        g = seq.backward(g_out, g_h, g_UU, g_em, g_ev, g_sc, need_x=need[2], need_dt=need[3])
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
        if base.dim() == 4 and base.shape == (U.shape[0], 2, U.shape[2], U.shape[1]):
            off = base.stride(1) * base.element_size()
            if (
                U.data_ptr() == base.data_ptr()
                and Ut.data_ptr() == base.data_ptr() + off
                and U.stride() == Ut.stride() == (base.stride(0), 1, base.stride(2))
            ):
                return base
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
    tensors = (x, dt, mask, h0, UU0, em0, ev0, sc0, f.C, f.B, f.W, f.eta)
    grad = torch.is_grad_enabled() and (
        any(t is not None and t.requires_grad for t in tensors) or any(p.requires_grad for p in f.parameters())
    )
    if grad:
        maps = scalar_maps(f)
        out, h, UU, em, ev, sc = _FastEuler.apply(
            f.config, frozen, x, dt, mask, h0, UU0, em0, ev0, sc0, f.C, f.B, f.W, f.eta, f.V, *maps
        )
    else:
        with torch.no_grad():
            seq = _Seq(
                f.config,
                x.transpose(0, 1),
                dt.t(),
                None if mask is None else mask.transpose(0, 1),
                f.C,
                f.B,
                f.W,
                f.eta,
                f.V,
                _scalar_maps_cached(f),
                frozen,
            )
            outs, h, UU, em, ev, sc = seq.forward(h0, UU0, em0, ev0, sc0)
            out = torch.stack(outs, 1)
    U, Ut = UU.transpose(2, 3).unbind(1)
    as_, at = sc.unbind(1)
    return out, DREAMState(h, U, Ut, em, ev, as_, at)


def step_applies(f: DREAMField, z: DREAMState, x: Tensor, mask: Tensor | None, dt: Tensor) -> bool:
    """Whether :func:`step` computes this single step: no gradient is needed (streaming inference)."""
    if not _enabled:
        return False
    if not torch.is_grad_enabled():
        return True
    tensors = (*z, x, mask, dt, *f.parameters())
    return not any(t is not None and t.requires_grad for t in tensors)


def step(f: DREAMField, z: DREAMState, x: Tensor, mask: Tensor | None, dt: Tensor) -> tuple[DREAMState, FieldAux]:
    """One Euler step of ``dt`` ``(B,)`` without a gradient: ``(state, aux at the start of the step)``."""
    with torch.no_grad():
        cfg = f.config
        h0, U0, Ut0, em0, ev0, as0, at0 = z
        seq = _Seq(
            cfg,
            x.unsqueeze(0),
            dt.unsqueeze(0),
            None if mask is None else mask.unsqueeze(0),
            f.C,
            f.B,
            f.W,
            f.eta,
            f.V,
            _scalar_maps_cached(f),
            None,  # integrate_layer freezes padded samples itself
        )
        _, h, UU, em, ev, sc = seq.forward(h0, _pack_U(U0, Ut0), em0, ev0, _pack(as0, at0, 1), aux=True)
        pred, n, Z, Lin = seq.auxes[0]
        S = Z[:, 0]
        if cfg.ltc_enabled:
            tau = torch.clamp(f.tau_sys / (1 + S * f.surprise_scale), cfg.tau_min, cfg.tau_max)
        else:
            tau = f.tau_sys.expand_as(S)
        r_err = cfg.error_smoothing / cfg.time_step
        decay = (
            1 / tau.unsqueeze(-1),
            (Lin[:, 2] + Lin[:, 3])[:, None, None] if cfg.fast_weights else 0.0,
            Lin[:, 4][:, None, None] if cfg.sleep_enabled else 0.0,
            r_err,
            r_err,
            cfg.surprise_smoothing / cfg.time_step,
            cfg.habituation_rate / cfg.time_step,
        )
        U, Ut = UU.transpose(2, 3).unbind(1)
        as_, at = sc.unbind(1)
        return DREAMState(h, U, Ut, em, ev, as_, at), FieldAux(S, tau, pred, n[:, 0], decay)
