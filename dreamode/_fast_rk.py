"""The fast path of the fixed-step Runge-Kutta methods (``midpoint``, ``heun``, ``rk4``, ...).

``integrate_layer`` hands a layer to :func:`run_sequence` for any fixed-step tableau other than
``euler`` (which has its own fused kernel, :mod:`._fast_euler`) when there is no ``max_step`` and
no trace. It computes what the generic path computes — one step of the tableau per observation,
the field of dream-math.md §3 at every stage, ``z + Δt·a·k`` between stages with the same
``addcmul`` in the same order — rearranged (docs/performance.md has the design note):

* the stage's field is the fused Euler step's arrangement (:func:`._fast_euler.scalar_maps`, the
  input projections of the whole sequence in one product per distinct stage time), and its output
  is one ``(B, H + 2I + 2)`` tensor ``rate · (target − value)`` for ``[h, error_mean, error_var,
  avg_surprise, adaptive_tau]``;
* the fast weights are not rewritten inside a step: the field is linear in ``U`` and ``U_target``
  apart from the norm and a stage's Hebbian term is rank one, so the stages carry ``(B, 2, 2 +
  stages)`` coefficients, build their own ``U_i`` (one ``bmm``, one ``baddbmm``), and ``[U;
  U_target]`` is written once per step;
* with a gradient, the whole sequence is one autograd node with a hand-written backward (as for
  Euler): derivatives that depend on forward values only are computed for all stages at once, the
  weights' gradients are products over all stages and steps after the reverse loop.

Without a gradient the loop runs in inference mode with one intra-op thread, through TorchScript
(:mod:`._rk_kernel`, the same operations as :meth:`_Runner.forward`). The generic path stays
the reference: tests/dreamode/test_fast_euler.py checks values and every gradient to 1e-12 in
float64, and gradcheck checks the backward.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import _fast_euler as fe
from . import _rk_kernel, _script
from ._field import DREAMField
from ._path import SequencePath, StepPath
from ._state import DREAMState


def applies(f: DREAMField, mask: Tensor | None) -> bool:
    """Whether :func:`run_sequence` computes this layer (else the generic path does)."""
    return fe.sequence_applies(f, mask)


class _Eval:
    """The field of one layer at a stage of a step, on the step's low-rank view of the fast weights.

    Within one step the fast weights of stage ``i`` are ``[U_iᵀ; U_target,iᵀ] = C_i[:, :, :2] @
    [Uᵀ; U_targetᵀ] + Σ_l C_i[:, :, 2 + l] ⊗ L_l`` with ``L_l = eV_l ⊗ gain_l`` the Hebbian term of
    stage ``l`` (rank one): the field is linear in ``U`` and ``U_target`` apart from the norm, so
    only the ``(B, 2, 2 + stages)`` coefficients ``C_i`` are carried from stage to stage. A stage
    builds ``U_i`` alone (one ``bmm``, one ``baddbmm``); ``U_target`` and the step's result are
    written once, at the end of the step.
    """

    def __init__(
        self, f: DREAMField, w: fe._Weights, Bn: int, I: int, S: int, masked: bool, dtype: Any, device: Any
    ) -> None:
        cfg = f.config
        H, R = w.C.shape[0], w.V.shape[1]
        self.cfg, self.B, self.I, self.H, self.R, self.S = cfg, Bn, I, H, R, S
        self.sizes = [H, I, I, 2]
        self.w = w
        self.masked = masked
        self.fw = cfg.fast_weights
        self.mix = cfg.fast_weights or cfg.sleep_enabled
        self.ltc = cfg.ltc_enabled
        self.k = k = fe._consts(cfg, I, dtype, device)
        kw = {"dtype": dtype, "device": device}
        # HZ = [S, g, relu(1 − N/‖U‖), min(n, θ)]: the rows of ML that these multiply
        self.ML4 = w.ML[[0, 1, 2, 4]]
        r_err = cfg.error_smoothing / cfg.time_step
        # the rates of [error_mean, error_var, avg_surprise, adaptive_tau] toward their targets
        self.rates = torch.cat([torch.full((2 * I,), r_err, **kw), k.rates]).expand(Bn, 2 * I + 2)
        self.N = cfg.target_norm
        self.theta = cfg.max_adaptive_tau
        self.itau_lo, self.itau_hi = 1 / cfg.tau_max, 1 / cfg.tau_min
        n = 2 + S
        self.n = n
        self.C0 = torch.zeros(1, 2, n, **kw)
        self.C0[0, 0, 0] = self.C0[0, 1, 1] = 1.0
        # the Hebbian term of stage j lands on U: column 2 + j of the first row
        self.E = torch.zeros(S, 1, 2, n, **kw)
        for j in range(S):
            self.E[j, 0, 0, 2 + j] = 1.0
        self.hom0 = torch.zeros(Bn, 1, **kw)
        self.zero3 = torch.zeros(Bn, 3, **kw)
        self.one = torch.ones((), **kw)
        self.ML4t = self.MYt = None  # set by the backward

    def weights(self) -> tuple[Tensor, ...]:
        """The tensors a stage differentiates with respect to (besides its state and input)."""
        w = self.w
        return (w.C, w.WV, w.BV, w.eta, w.MY, w.bY, self.ML4, w.bL)

    def forward(
        self, y: Tensor, U: Tensor, xin: tuple[Tensor, ...], ws: tuple[Tensor, ...], save: bool = False
    ) -> tuple[tuple[Tensor, Tensor, Tensor, Tensor], dict | None]:
        C, WV, BV, eta, MY, bY, ML4, bL = ws
        k = self.k
        Bn, H, R = self.B, self.H, self.R
        h, em, ev, sc = y.split(self.sizes, 1)
        hU = torch.bmm(h.unsqueeze(1), U.transpose(1, 2)).view(Bn, R)
        pred = torch.addmm(torch.mm(hU, self.w.Vt), h, C).tanh_()
        if self.masked:
            MX, m, OM, MC = xin
            e = torch.addcmul(MX, m, pred, value=-1)
            xt = torch.addcmul(MX, OM, pred)
            XB, xV = torch.mm(xt, BV).split([H, R], 1)
            eW, eV = torch.mm(e, WV).split([H, R], 1)
        else:
            x, XB, XWV, xV = xin
            e = x - pred
            eW, eV = torch.addmm(XWV, pred, WV, alpha=-1).split([H, R], 1)
        dev = e - em
        dev2 = dev * dev
        # error_var >= 0 along Euler steps; a trial stage can undershoot (as in DREAMField.evaluate)
        var = ev.clamp_min(0.0)
        vpe = var + k.eps_var
        z2 = dev2 / vpe
        q = (z2 * MC).sum(-1, keepdim=True) if self.masked else torch.mm(z2, k.inv_I)
        n = q.sqrt()
        A = torch.addmm(k.eps_log, var, k.col_I)
        Lr = A.log()
        Q = torch.cat([n, Lr.clamp(0.0, 4.0), sc], 1)
        Z = torch.addmm(bY, Q, MY).sigmoid_()  # [S, g]
        if self.fw:
            nU = torch.linalg.vector_norm(U.reshape(Bn, R * H), dim=1, keepdim=True)
            hom = torch.addcdiv(k.one, k.negN, nU.clamp_min(self.N))  # relu(1 − N/‖U‖)
        else:
            hom = self.hom0
        HZ = torch.cat([Z, hom, n.clamp(max=self.theta)], 1)
        Lin = torch.addmm(bL, HZ, ML4)  # [1/τ, S, forget, homeo, ζg, 1 + κS, S, min(n, θ)]
        itau = Lin[:, 0:1].clamp(self.itau_lo, self.itau_hi) if self.ltc else Lin[:, 0:1]
        u = torch.baddbmm(torch.addcmul(eW, Lin[:, 5:6], XB).unsqueeze(1), xV.unsqueeze(1), U)
        ht = u.view(Bn, H).tanh_()
        # [dh, d error_mean, d error_var, d sc] = rate · (target − value)
        rate = torch.cat([itau.expand(Bn, H), self.rates], 1)
        gap = torch.cat([ht, e, dev2, Lin[:, 6:8]], 1) - y
        dy = gap * rate
        Mix = torch.mm(Lin[:, 2:5], k.basis).view(Bn, 2, 2)  # [[−forget − homeo, forget], [ζg, −ζg]]
        S = Lin[:, 1:2]
        gain = S * h * eta
        sv = None
        if save:
            sv = dict(h=h, U=U, ev=ev, pred=pred, e=e, dev=dev, dev2=dev2, vpe=vpe, z2=z2, q=q, n=n, A=A, Lr=Lr)
            sv.update(Q=Q, Z=Z, HZ=HZ, Lin=Lin, XB=XB, xV=xV, ht=ht, rate=rate, gap=gap, S=S)
            if self.fw:
                sv["nU"] = nU
            if self.masked:
                sv.update(xt=xt, m=m, OM=OM, MC=MC)
        return (dy, Mix, gain, eV), sv

    def factors(self, svs: list[dict]) -> None:
        """The local derivatives that depend on forward values only, for many stages at once.

        Adds to each saved dict: the masks of the clamps (as 0/1), σ', the derivatives of the
        square roots, of the clamped log and of the z-score; drops what they replace.
        """
        if not svs:
            return

        def st(name: str) -> Tensor:
            return torch.stack([sv[name] for sv in svs])

        f: dict[str, Tensor] = {}
        n, q = st("n"), st("q")
        f["Fn"] = (n <= self.theta).to(n.dtype)
        pos = q > 0
        f["Fq"] = torch.where(pos, 0.5 / torch.where(pos, n, 1.0), 0.0)
        Z = st("Z")
        f["FZ"] = Z * (1 - Z)
        Lr = st("Lr")
        f["FA"] = torch.where((Lr >= 0) & (Lr <= 4), 1 / st("A"), 0.0)
        f["Fev"] = (st("ev") >= 0).to(n.dtype)
        vpe = st("vpe")
        f["Fv1"] = 1 / vpe
        f["Fv2"] = st("z2") / vpe
        f["F2dev"] = 2 * st("dev")
        if self.ltc:
            L0 = st("Lin")[..., 0:1]
            f["Fit"] = ((L0 >= self.itau_lo) & (L0 <= self.itau_hi)).to(n.dtype)
        if self.fw:
            nU = st("nU")
            f["FU"] = torch.where(nU > self.N, self.N / (nU * nU * nU), 0.0)
        drop = ("n", "q", "Z", "Lr", "A", "ev", "vpe", "z2", "dev", "nU")
        per = {name: t.unbind(0) for name, t in f.items()}
        for j, sv in enumerate(svs):
            for name in drop:
                sv.pop(name, None)
            for name, ts in per.items():
                sv[name] = ts[j]

    def backward(self, sv: dict, ws: tuple[Tensor, ...], gdy: Tensor, gMix, ggain, geV, wg: dict) -> tuple:
        """The vector-Jacobian product of :meth:`forward`: gradients of ``(y, U, *xin)``.

        ``sv`` holds the stage's saved values and its :meth:`factors`. The weights' gradients are
        products over the batch: their factors are appended to ``wg`` (name -> list), and the caller
        multiplies them for all stages and steps at once.
        """
        C, WV, BV, eta, MY, bY, ML4, bL = ws
        k = self.k
        Bn, H, R, I = self.B, self.H, self.R, self.I
        h, U, Lin = sv["h"], sv["U"], sv["Lin"]
        gt = gdy * sv["rate"]  # the gradient of the targets; minus that of the values
        g_ht, g_e0, g_dev20, g67 = gt.split([H, I, I, 2], 1)
        git = (gdy[:, :H] * sv["gap"][:, :H]).sum(-1, keepdim=True)  # ∂/∂(1/τ)
        if self.ltc:
            git = git * sv["Fit"]
        if self.fw:
            if ggain is None:
                ggain = torch.zeros_like(h)
            ge = ggain * eta
            gS = (ge * h).sum(-1, keepdim=True)
            gh = ge * sv["S"] - g_ht
            wg["gain"].append(ggain)
            wg["S"].append(sv["S"])
        else:
            gS = self.hom0
            gh = g_ht.neg()
        gM = torch.mm(gMix.reshape(Bn, 4), k.basis_t) if gMix is not None else self.zero3
        # u = eW + (1 + κS)·XB + xV U
        gu = torch.ops.aten.tanh_backward(g_ht, sv["ht"])
        XB, xV = sv["XB"], sv["xV"]
        gLin = torch.cat([git, gS, gM, (gu * XB).sum(-1, keepdim=True), g67], 1)
        gXB = gu * Lin[:, 5:6]
        gxV = torch.bmm(gu.unsqueeze(1), U.transpose(1, 2)).view(Bn, R)
        gU = xV.unsqueeze(-1) * gu.unsqueeze(1)
        # Lin = HZ ML4 + bL
        gHZ = torch.mm(gLin, self.ML4t)
        wg["HZ"].append(sv["HZ"])
        wg["gLin"].append(gLin)
        if self.fw:  # relu(1 − N/‖U‖) and ‖U‖: N/‖U‖³ · U
            gU = torch.addcmul(gU, (gHZ[:, 2:3] * sv["FU"]).unsqueeze(-1), U)
        # Z = σ(Q MY + bY), Q = [n, clamp(log A), sc]
        gpre = gHZ[:, 0:2] * sv["FZ"]
        gQ = torch.mm(gpre, self.MYt)
        wg["Q"].append(sv["Q"])
        wg["gpre"].append(gpre)
        gq = torch.addcmul(gQ[:, 0:1], gHZ[:, 3:4], sv["Fn"]) * sv["Fq"]
        gsc = gQ[:, 2:4] - g67
        gz2 = gq * sv["MC"] if self.masked else gq * (1.0 / I)
        g_dev2 = torch.addcmul(g_dev20, gz2, sv["Fv1"])
        gvar = torch.addcmul((gQ[:, 1:2] * sv["FA"]) * k.row_I, gz2, sv["Fv2"], value=-1)
        gev = torch.addcmul(gvar * sv["Fev"], g_dev20, self.one, value=-1)
        g_e = torch.addcmul(g_e0, sv["F2dev"], g_dev2)
        gem = g_e.neg()
        pred = sv["pred"]
        geWV = torch.cat([gu, geV if geV is not None else torch.zeros_like(xV)], 1)
        if self.masked:
            gXBxV = torch.cat([gXB, gxV], 1)
            gxt = torch.mm(gXBxV, BV.t())
            wg["xt"].append(sv["xt"])
            wg["gXBxV"].append(gXBxV)
            g_e = torch.addmm(g_e, geWV, WV.t())
            wg["e"].append(sv["e"])
            wg["geWV"].append(geWV)
            gPn = torch.ops.aten.tanh_backward(torch.addcmul(g_e * sv["m"], gxt, sv["OM"], value=-1), pred)
            gx_in = (g_e + gxt, None, None, None)
        else:
            gPn = torch.ops.aten.tanh_backward(torch.addmm(g_e, geWV, WV.t()), pred)  # −∂/∂P
            wg["e"].append(pred)
            wg["geWV"].append(geWV)  # the sign is applied after the loop
            gx_in = (g_e, gXB, geWV, gxV)
        # P = (h Uᵀ) Vᵀ + h C
        ghUn = torch.mm(gPn, self.w.V)
        gh = torch.baddbmm(torch.addmm(gh, gPn, C.t(), alpha=-1).unsqueeze(1), ghUn.unsqueeze(1), U, alpha=-1)
        gU = torch.addcmul(gU, ghUn.unsqueeze(-1), h.unsqueeze(1), value=-1)
        wg["h"].append(h)
        wg["gPn"].append(gPn)
        gy = torch.cat([gh.view(Bn, H), gem, gev, gsc], 1)
        return (gy, gU, *gx_in)


def _stage_inputs(
    ev: _Eval, kind: str, x: Tensor, dt: Tensor, mask: Tensor | None, cs: list[float]
) -> tuple[list[Tensor], list[Tensor]]:
    """The stage inputs as whole time-major tensors: ``(with gradient, without)``.

    Without a mask, per distinct stage time ``c``: ``x(c)`` ``(T, B, I)`` and its projections
    ``x(c) [B | W | V]`` ``(T, B, 2H + R)`` (one product for the whole sequence). With a mask, per
    ``c``: ``m ⊙ x(c)``; then ``m``, ``1 − m`` and ``m / max(1, Σm)``, shared.
    """
    path = SequencePath.build(kind, x, dt)
    whole = StepPath(path.kind, path.end, path.start, path.tangent0, path.tangent1)
    T, Bn = x.shape[1], x.shape[0]
    diff: list[Tensor] = []
    fixed: list[Tensor] = []
    ms = None if mask is None else mask.transpose(0, 1)
    for c in cs:
        xc = whole.at(c).transpose(0, 1)  # (T, B, I)
        if ms is None:
            diff += [xc, torch.mm(xc.reshape(T * Bn, ev.I), ev.w.BWV).view(T, Bn, -1)]
        else:
            diff.append(ms * xc)
    if ms is not None:
        fixed = [ms, 1 - ms, ms / ms.sum(-1, keepdim=True).clamp_min(1.0)]
    return diff, fixed


class _Runner:
    """One layer and one tableau over one sequence: the forward loop and its reverse."""

    def __init__(self, ev: _Eval, tableau: Any, frozen: list[bool], dt: Tensor, fixed: list[Tensor]) -> None:
        self.ev = ev
        self.S = tableau.stages
        self.cs = sorted(set(float(c) for c in tableau.c))
        self.a_rows = [[(j, float(a)) for j, a in enumerate(row) if a != 0.0] for row in tableau.a]
        self.b_row = [(j, float(b)) for j, b in enumerate(tableau.b) if b != 0.0]
        self.c_idx = [self.cs.index(float(c)) for c in tableau.c]
        self.frozen = frozen
        self.keeps = (dt == 0).t().unsqueeze(-1).unbind(0)  # (B, 1) per step
        self.fixed = fixed
        self.saved: list | None = None
        kw = {"dtype": ev.C0.dtype, "device": ev.C0.device}
        S = self.S
        self.A = torch.zeros(S, S, **kw)  # the tableau's a, as (S, S, 1, 1) columns below
        for i, row in enumerate(self.a_rows):
            for j, a in row:
                self.A[i, j] = a
        self.A4 = self.A.view(S, S, 1, 1)
        self.A5 = self.A.view(S, S, 1, 1, 1)
        bvec = torch.zeros(S, **kw)
        for j, b in self.b_row:
            bvec[j] = b
        self.b3, self.b4 = bvec.view(S, 1, 1), bvec.view(S, 1, 1, 1)

    def step_inputs(self, diff: list[Tensor]) -> list[list[tuple[Tensor, ...]]]:
        """Per distinct stage time, per step: the tuple a stage reads."""
        ev, H = self.ev, self.ev.H
        out = []
        if not ev.masked:
            for j in range(len(self.cs)):
                xc, xall = diff[2 * j], diff[2 * j + 1]
                out.append(
                    list(
                        zip(
                            xc.unbind(0), xall[..., :H].unbind(0), xall[..., H:].unbind(0), xall[..., 2 * H :].unbind(0)
                        )
                    )
                )
        else:
            m, om, mc = (t.unbind(0) for t in self.fixed)
            for j in range(len(self.cs)):
                out.append(list(zip(diff[j].unbind(0), m, om, mc)))
        return out

    @staticmethod
    def combine(y0: Tensor, d: Tensor, coefs: list[tuple[int, float]], ks: list[Tensor]) -> Tensor:
        # the generic path's z + Δt·a·k, in the same order
        for j, a in coefs:
            y0 = torch.addcmul(y0, d, ks[j], value=a)
        return y0

    def forward(
        self, y: Tensor, UU: Tensor, dts: Tensor, diff: list[Tensor], ws: tuple[Tensor, ...], save: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(h per step (T, B, H), final y, final UU)`` from ``y`` ``(B, H + 2I + 2)`` and ``UU``
        ``(B, 2, R·H)`` = ``[Uᵀ; U_targetᵀ]``; ``dts`` ``(T, B, 1)``."""
        ev = self.ev
        Bn, H, R, S = ev.B, ev.H, ev.R, self.S
        fw, mix = ev.fw, ev.mix
        ins = self.step_inputs(diff)
        combine = self.combine
        C0 = ev.C0.expand(Bn, 2, ev.n)
        dts_s = dts.unbind(0)
        sv_all: list = [] if save else None
        outs = []
        for i in range(len(dts_s)):
            d = dts_s[i]
            d3 = d.unsqueeze(-1)
            U = UU[:, 0].view(Bn, R, H)
            ks: list[Tensor] = []
            KC: list[Tensor] = []
            Cs: list[Tensor] = []
            Mixes: list[Tensor] = []
            svs: list[dict] = []
            Gs: list[Tensor] = []  # gain_l (B, H)
            Es: list[Tensor] = []  # eV_l (B, R)
            for s, row in enumerate(self.a_rows):
                yi = combine(y, d, row, ks)
                if row and mix:
                    # U_i = a0 U + a1 U_target + Σ_l a_l eV_l ⊗ gain_l
                    Ci = combine(C0, d3, row, KC)
                    Ui = torch.bmm(Ci[:, 0:1, :2], UU).view(Bn, R, H)
                    if fw:
                        Ui = torch.baddbmm(Ui, torch.stack(Es, 2) * Ci[:, 0:1, 2 : 2 + s], torch.stack(Gs, 1))
                else:
                    Ci, Ui = C0, U
                (dy, Mix, gain, eV), sv = ev.forward(yi, Ui, ins[self.c_idx[s]][i], ws, save)
                ks.append(dy)
                if mix:
                    KC.append(torch.bmm(Mix, Ci).add_(ev.E[s]) if fw else torch.bmm(Mix, Ci))
                if fw:
                    Gs.append(gain)
                    Es.append(eV)
                if save:
                    del sv["U"]  # recomputed in the backward
                    svs.append(sv)
                    Cs.append(Ci)
                    Mixes.append(Mix)
            yn = combine(y, d, self.b_row, ks)
            Cn = None
            if mix:
                Cn = combine(C0, d3, self.b_row, KC)
                UUn = torch.bmm(Cn[:, :, :2], UU)
                if fw:
                    # + Σ_l Cn[:, k, 2 + l] eV_l ⊗ gain_l on U (k = 0) and U_target (k = 1)
                    left = (Cn[:, :, 2:].unsqueeze(2) * torch.stack(Es, 2).unsqueeze(1)).view(Bn, 2 * R, S)
                    UUn = torch.baddbmm(UUn.view(Bn, 2 * R, H), left, torch.stack(Gs, 1)).view(Bn, 2, R * H)
            else:
                UUn = UU
            if save:
                K = torch.stack(ks)
                KCs = torch.stack(KC) if mix else None
                sv_all.append((y, UU, K, KCs, Cs, Mixes, svs, Gs, Es, Cn))
            if self.frozen[i]:
                keep = self.keeps[i]
                yn = torch.where(keep, y, yn)
                UUn = torch.where(keep.unsqueeze(-1), UU, UUn)
            y, UU = yn, UUn
            outs.append(y[:, :H])
        self.saved = sv_all
        return torch.stack(outs), y, UU

    def infer(
        self, y: Tensor, UU: Tensor, dts: Tensor, diff: list[Tensor], ws: tuple[Tensor, ...]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`forward` without saving, through TorchScript (:mod:`._rk_kernel`)."""
        ev = self.ev
        k = ev.k
        H = ev.H
        if ev.masked:
            xins = [[d, *self.fixed] for d in diff]
        else:
            xins = [[xc, xall[..., :H], xall[..., H:], xall[..., 2 * H :]] for xc, xall in zip(diff[0::2], diff[1::2])]
        C, WV, BV, eta, MY, bY, ML4, bL = ws
        w = [C, ev.w.Vt, WV, BV, eta, MY, bY, ML4, bL]
        consts = [k.eps_var, k.inv_I, k.eps_log, k.col_I, k.one, k.negN, k.basis, ev.rates, ev.hom0]
        keeps = torch.stack(self.keeps) if any(self.frozen) else dts
        return _script.call(
            _rk_kernel.forward_loop,
            y,
            UU,
            dts,
            xins,
            self.c_idx,
            self.a_rows,
            self.b_row,
            ev.C0.expand(ev.B, 2, ev.n),
            ev.E,
            keeps,
            self.frozen,
            w,
            consts,
            [H, ev.I, ev.R],
            [float(ev.N), float(ev.theta), float(ev.itau_lo), float(ev.itau_hi)],
            ev.fw,
            ev.mix,
            ev.ltc,
            ev.masked,
        )

    def backward(
        self, dts: Tensor, diff: list[Tensor], ws: tuple[Tensor, ...], g_out: Tensor | None, gy: Tensor, gUU: Tensor
    ) -> tuple:
        """Reverse of :meth:`forward`: gradients of ``(y0, UU0, dts, *diff, *ws)``.

        Per step, ``Gk[j]`` collects ``b_j g(y_next) + Σ_s a_sj g(y_s)`` (and ``GKC`` the same for the
        fast-weight coefficients): the gradient of stage ``j``'s derivative is ``Δt·Gk[j]`` and that
        of ``Δt`` is ``Σ_j k_j·Gk[j]``. The weights' gradients are products over all stages and steps
        at once after the loop.
        """
        ev = self.ev
        Bn, H, R, S = ev.B, ev.H, ev.R, self.S
        fw, mix, masked = ev.fw, ev.mix, ev.masked
        T = dts.shape[0]
        saved = self.saved
        names = ("HZ", "gLin", "Q", "gpre", "e", "geWV", "h", "gPn", "gain", "S", "xt", "gXBxV")
        ev.ML4t, ev.MYt = ws[6].t(), ws[4].t()
        # the local derivatives of every stage, in a few whole-sequence operations
        chunk = max(1, 4096 // S)
        for c0 in range(0, T, chunk):
            ev.factors([sv for step in saved[c0 : c0 + chunk] for sv in step[6]])
        wg: dict[str, list[Tensor]] = {k: [] for k in names}
        nc = len(self.cs)
        gx_steps: list[list] = [[None] * T for _ in range(nc)]
        gxall_steps: list[list] = [[None] * T for _ in range(nc)]
        gd_steps: list[Tensor] = [None] * T
        gy = torch.zeros_like(saved[0][0]) if gy is None else gy.clone()
        gUU = torch.zeros_like(saved[0][1]) if gUU is None else gUU.clone()
        RH = R * H

        def acc(lst: list, j: int, v: Tensor) -> None:
            lst[j] = v if lst[j] is None else lst[j] + v

        for i in reversed(range(T)):
            y, UU, K, KCs, Cs, Mixes, svs, Gs, Es, Cn = saved[i]
            if g_out is not None:
                gy[:, :H] += g_out[i]
            d = dts[i]
            d3 = d.unsqueeze(-1)
            if self.frozen[i]:
                keep = self.keeps[i]
                gy_keep = torch.where(keep, gy, 0.0)
                gUU_keep = torch.where(keep.unsqueeze(-1), gUU, 0.0)
                gy = torch.where(keep, 0.0, gy)
                gUU = torch.where(keep.unsqueeze(-1), 0.0, gUU)
            gyn, gUUn = gy, gUU
            gGst = gEst = None  # gradients of the gains (B, S, H) and of eV (B, R, S)
            Gk = self.b3 * gyn  # (S, B, D)
            gy = gyn.clone()
            if mix:
                gCn = torch.empty_like(Cn)
                gCn[:, :, :2] = torch.bmm(gUUn, UU.transpose(1, 2))
                gUU = torch.bmm(Cn[:, :, :2].transpose(1, 2), gUUn)
                if fw:
                    gUUr = gUUn.view(Bn, 2 * R, H)
                    Gst, Est = torch.stack(Gs, 1), torch.stack(Es, 2)  # (B, S, H), (B, R, S)
                    cl = Cn[:, :, 2:].unsqueeze(2)  # (B, 2, 1, S)
                    left = (cl * Est.unsqueeze(1)).view(Bn, 2 * R, S)
                    gleft = torch.bmm(gUUr, Gst.transpose(1, 2)).view(Bn, 2, R, S)
                    gGst = torch.bmm(left.transpose(1, 2), gUUr)
                    gCn[:, :, 2:] = (gleft * Est.unsqueeze(1)).sum(2)
                    gEst = (gleft * cl).sum(1)
                else:
                    gCn[:, :, 2:] = 0.0
                GKC = self.b4 * gCn  # (S, B, 2, n)
            else:
                gUU = gUUn.clone()
            for s in reversed(range(S)):
                row = self.a_rows[s]
                Ci = Cs[s]
                gdy = Gk[s] * d
                gMix = gCi = None
                if mix:
                    gKCs = GKC[s] * d3
                    gMix = torch.bmm(gKCs, Ci.transpose(1, 2))
                    gCi = torch.bmm(Mixes[s].transpose(1, 2), gKCs)
                # the stage's fast weights, as in the forward
                if row and mix:
                    Ui = torch.bmm(Ci[:, 0:1, :2], UU).view(Bn, R, H)
                    if fw:
                        Gs_s, Es_s = torch.stack(Gs[:s], 1), torch.stack(Es[:s], 2)
                        left_s = Es_s * Ci[:, 0:1, 2 : 2 + s]
                        Ui = torch.baddbmm(Ui, left_s, Gs_s)
                else:
                    Ui = UU[:, 0].view(Bn, R, H)
                sv = svs[s]
                sv["U"] = Ui
                gyi, gUi, *gx_in = ev.backward(
                    sv, ws, gdy, gMix, gGst[:, s] if fw else None, gEst[:, :, s] if fw else None, wg
                )
                sv.clear()
                ci = self.c_idx[s]
                acc(gx_steps[ci], i, gx_in[0])
                if not masked:
                    gXB, geWV, gxV = gx_in[1:]
                    acc(gxall_steps[ci], i, torch.cat([gXB, geWV[:, :H], geWV[:, H:] + gxV], 1))
                if row and mix:
                    gUi3 = gUi.reshape(Bn, 1, RH)
                    gCi[:, 0:1, :2] += torch.bmm(gUi3, UU.transpose(1, 2))
                    gUU = torch.baddbmm(gUU, Ci[:, 0:1, :2].transpose(1, 2), gUi3)
                    if fw:
                        gleft = torch.bmm(gUi, Gs_s.transpose(1, 2))  # (B, R, s)
                        gGs = torch.bmm(left_s.transpose(1, 2), gUi)  # (B, s, H)
                        gCi[:, 0, 2 : 2 + s] += (gleft * Es_s).sum(1)
                        gEs = gleft * Ci[:, 0:1, 2 : 2 + s]
                        gGst[:, :s] += gGs
                        gEst[:, :, :s] += gEs
                else:
                    gUU[:, 0] += gUi.reshape(Bn, RH)
                gy = gy + gyi
                if row:
                    Gk.addcmul_(self.A4[s], gyi)  # Gk[j] += a_sj g(y_s)
                    if mix:
                        GKC.addcmul_(self.A5[s], gCi)
            gd = (K * Gk).sum((0, 2))
            if mix:
                gd = gd + (KCs * GKC).sum((0, 2, 3))
            if self.frozen[i]:
                gy = gy + gy_keep
                gUU = gUU + gUU_keep
            gd_steps[i] = gd
            saved[i] = None
        gdts = torch.stack(gd_steps).unsqueeze(-1)
        gdiff: list[Tensor] = []
        for ci in range(nc):
            gdiff.append(torch.stack(gx_steps[ci]))
            if not masked:
                gdiff.append(torch.stack(gxall_steps[ci]))

        def mm(a: str, b: str) -> Tensor:
            return torch.mm(torch.cat(wg[a]).t(), torch.cat(wg[b]))

        gLin = torch.cat(wg["gLin"])
        gpre = torch.cat(wg["gpre"])
        gws = (
            mm("h", "gPn").neg_(),
            mm("e", "geWV") if masked else mm("e", "geWV").neg_(),
            mm("xt", "gXBxV") if masked else None,
            (torch.cat(wg["gain"]) * torch.cat(wg["S"]) * torch.cat(wg["h"])).sum(0) if fw else None,
            mm("Q", "gpre"),
            gpre.sum(0),
            mm("HZ", "gLin"),
            gLin.sum(0),
        )
        return (gy, gUU, gdts, *gdiff, *gws)


class _RKSequence(torch.autograd.Function):
    """A whole sequence of Runge-Kutta steps as one autograd node with a hand-written backward."""

    @staticmethod
    def forward(ctx, runner: _Runner, nd: int, y0: Tensor, UU0: Tensor, dts: Tensor, *rest: Tensor):  # noqa: D102
        diff, ws = list(rest[:nd]), rest[nd:]
        out, y, UU = runner.forward(y0, UU0, dts, diff, ws, save=True)
        ctx.runner, ctx.nd = runner, nd
        ctx.save_for_backward(dts, *rest)
        return out, y, UU

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_out, gy, gUU):  # noqa: D102
        runner = ctx.runner
        if runner is None or runner.saved is None:
            raise RuntimeError(
                "Trying to backward through the DREAM Runge-Kutta fast path a second time; its intermediate "
                "results have been freed. Specify retain_graph=True the first time."
            )
        dts, *rest = ctx.saved_tensors
        keep = fe._keep_graph()
        if keep:  # the reverse loop releases what it has used
            saved_copy = [None if t is None else (*t[:6], [dict(sv) for sv in t[6]], *t[7:]) for t in runner.saved]
        nd = ctx.nd
        ev = runner.ev
        with fe._serial(dts.device, ev.B * ev.H * (ev.I + 2 * ev.R)):
            g = runner.backward(dts, list(rest[:nd]), tuple(rest[nd:]), g_out, gy, gUU)
        if keep:
            runner.saved = saved_copy
        else:
            ctx.runner = None
            runner.saved = None
        return (None, None, *g)


def run_sequence(
    f: DREAMField,
    tableau: Any,
    x: Tensor,
    dt: Tensor,
    mask: Tensor | None,
    z: DREAMState,
    interpolation: str = "hold",
) -> tuple[Tensor, DREAMState]:
    """One layer over ``x`` ``(B, T, I)`` with one step of ``tableau`` per observation.

    ``dt`` ``(B, T)`` in the field's dtype (0 = padding: the state is kept); ``mask`` ``(B, T, I)``
    of 0/1 or ``None``. Returns ``(outputs (B, T, H), final state)``.
    """
    Bn, T, I = x.shape
    cfg = f.config
    H, R = cfg.hidden_dim, cfg.rank
    grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, dt, mask, *z, *fe._tensors_of(f))
    )
    frozen = (dt == 0).any(dim=0).tolist()
    cs = sorted(set(float(c) for c in tableau.c))

    def prepare() -> tuple:
        w = fe._Weights(f.C, f.B, f.W, f.eta, f.V, fe.scalar_maps(f)) if grad else fe._weights_cached(f)
        ev = _Eval(f, w, Bn, I, tableau.stages, mask is not None, x.dtype, x.device)
        diff, fixed = _stage_inputs(ev, interpolation, x, dt, mask, cs)
        h0, U0, Ut0, em0, ev0, as0, at0 = z
        UU = torch.stack([U0, Ut0], 1).transpose(2, 3).reshape(Bn, 2, R * H)  # [Uᵀ; U_targetᵀ]
        y = torch.cat([h0, em0, ev0, as0.unsqueeze(1), at0.unsqueeze(1)], 1)
        return _Runner(ev, tableau, frozen, dt, fixed), y, UU, dt.t().unsqueeze(-1), diff, ev.weights()

    with fe._serial(x.device, Bn * H * (I + 2 * R)):
        if grad:
            runner, y, UU, dts, diff, ws = prepare()
            out, y, UU = _RKSequence.apply(runner, len(diff), y, UU, dts, *diff, *ws)
        else:
            with torch.inference_mode():
                runner, y, UU, dts, diff, ws = prepare()
                out, y, UU = runner.infer(y, UU, dts, diff, ws)
            out, y, UU = out.clone(), y.clone(), UU.clone()  # ordinary tensors again
    h, em, ev_, sc = y.split([H, I, I, 2], 1)
    U, Ut = UU.view(Bn, 2, R, H).transpose(2, 3).unbind(1)
    return out.transpose(0, 1), DREAMState(h, U, Ut, em, ev_, sc[:, 0], sc[:, 1])
