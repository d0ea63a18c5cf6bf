"""The loops of the fused Euler path, written once for TorchScript's interpreter.

:mod:`._fast_euler` prepares everything that does not depend on the recurrence (input
projections, per-step factors of Δt, the small matrices of the learned scalars) and hands the two
loops below the prepared tensors. A DREAM step is some forty small tensor operations; called from
Python each costs about 7 µs of interpreter and dispatch overhead on this project's benchmark
machine, more than the arithmetic itself at the default sizes. TorchScript's interpreter runs the
same operations for 2-3 µs each: a model too small to have arithmetic went from 344 to 178 µs a
step (docs/performance.md). The functions are scripted once per process on first use (about 0.1 s)
and run with the graph executor's optimisations switched off: no profiling runs, no shape
specialisation, no code generation — the same operations as eager mode, in the same order, with
the same results.

If scripting is unavailable (a future torch without ``torch.jit``, or no source files to read),
or switched off with :func:`._script.interpreted` (the tests compare both), the same functions run
as ordinary Python.
"""

from __future__ import annotations

import torch
from torch import Tensor

# the per-step values the forward keeps for the backward, in the order of `saved` below
SAVED = ("h", "UU", "pred", "e", "dev", "ep", "A", "Q", "HZ", "Lin", "DT", "ht", "eV", "Mix", "gain", "rn")
SAVED_MASKED = ("xt", "XB", "xV")


def forward_loop(
    h: Tensor,
    UU: Tensor,
    em: Tensor,
    ev: Tensor,
    sc: Tensor,
    xs: Tensor,
    dt8: Tensor,
    dtr: Tensor,
    dtR: Tensor,
    dtlo: Tensor | None,
    dthi: Tensor | None,
    xall: Tensor | None,
    ms: Tensor | None,
    MX: Tensor | None,
    OM: Tensor | None,
    MC: Tensor | None,
    keeps: Tensor | None,
    frozen: list[bool],
    C: Tensor,
    Vt: Tensor,
    WV: Tensor,
    negWV: Tensor,
    BV: Tensor,
    eta: Tensor,
    MY: Tensor,
    bY: Tensor,
    ML: Tensor,
    bL: Tensor,
    consts: list[Tensor],
    theta: float,
    fw: bool,
    mix: bool,
    save: bool,
    every: int,
) -> tuple[list[Tensor], Tensor, Tensor, Tensor, Tensor, Tensor, list[list[Tensor]]]:
    """The steps of one layer from ``(h, UU, em, ev, sc)``: ``(outputs, final state, saved)``.

    Time-major inputs: ``xs`` ``(T, B, I)``; ``dt8`` ``(T, B, 8)`` (Δt in the columns of ``L`` that
    it multiplies, 1 elsewhere); ``dtr`` ``(T, B, 1)`` and ``dtR`` ``(T, B, 2)`` the statistics'
    lerp weights; ``dtlo``/``dthi`` ``(T, B, 1)`` the bounds of Δt/τ (``None`` without LTC);
    ``xall`` ``(T, B, 2H+R)`` = ``x @ [B | W | V]`` without a mask, else ``ms``, ``MX`` = m⊙x,
    ``OM`` = 1 − m, ``MC`` = m / max(1, Σm), all ``(T, B, I)``; ``keeps`` ``(T, B, 1)`` where
    ``Δt = 0`` when ``frozen`` (one flag a step) says a step has padding. ``UU`` ``(B, 2, R, H)`` is
    ``U`` and ``U_target``, transposed. ``saved`` holds one list per name of :data:`SAVED` and
    :data:`SAVED_MASKED` (``UU`` only every ``every`` steps), empty unless ``save``.
    """
    eps_var, inv_I, eps_log, col_I, one, negN, eye4, basis = consts
    T = xs.shape[0]
    Bn = h.shape[0]
    R = UU.shape[2]
    H = UU.shape[3]
    HR = H * R
    masked = ms is not None
    hom = h.new_zeros(Bn, 2)
    U = UU.select(1, 0)
    UU3 = UU.view(Bn, 2, HR)
    outs: list[Tensor] = []
    saved: list[list[Tensor]] = [[] for _ in range(19)]  # SAVED, then SAVED_MASKED
    for i in range(T):
        hU = torch.bmm(h.unsqueeze(1), U.transpose(1, 2)).view(Bn, R)
        pred = torch.addmm(torch.mm(hU, Vt), h, C).tanh_()
        xt = pred  # xt and xV: defined on both branches for TorchScript; only a mask saves them
        xV = hU
        if MX is not None and OM is not None and ms is not None:
            mx = MX[i]
            e = torch.addcmul(mx, ms[i], pred, value=-1)
            xt = torch.addcmul(mx, OM[i], pred)
            XBV = torch.mm(xt, BV)
            XB, xV = XBV.split([H, R], 1)
            XV3 = xV.unsqueeze(1)
            eWV = torch.mm(e, WV)
        else:
            assert xall is not None
            XB, xWV = xall[i].split([H, H + R], 1)
            e = xs[i] - pred
            eWV = torch.addmm(xWV, pred, negWV)
            XV3 = xWV.narrow(1, H, R).unsqueeze(1)
        eW, eV = eWV.split([H, R], 1)
        dev = e - em
        dev2 = dev * dev
        evc = ev.clamp_min(0.0)  # the rule reads max(error_var, 0): a long step's running average may overshoot
        ep = evc + eps_var
        z2 = dev2 / ep
        if MC is not None:
            q = (z2 * MC[i]).sum(-1, keepdim=True)
        else:
            q = torch.mm(z2, inv_I)
        n = q.sqrt_()
        A = torch.addmm(eps_log, evc, col_I)  # 2πe·mean(max(error_var, 0)) + 1e-6
        Q = torch.cat([n, A.log().clamp(0.0, 4.0), sc], 1)
        Z = torch.addmm(bY, Q, MY).sigmoid_()  # [S, g]
        rn = hom
        if fw:
            rn = torch.linalg.vector_norm(UU3, dim=[2]).reciprocal_()
            hom = torch.addcmul(one, rn, negN).clamp_min_(0.0)  # relu(1 − N/‖·‖)
        HZ = torch.cat([Z, hom, n.clamp(max=theta)], 1)
        Lin = torch.addmm(bL, HZ, ML)  # [1/τ, S, forget, homeo, ζg, 1 + κS, S, min(n, θ)]
        DT = Lin * dt8[i]  # [Δt/τ, Δt·S, kF, kH, csg, 1 + κS, S, min(n, θ)]
        a, dtS, kFHC, c1, tgt = DT.split([1, 1, 3, 1, 2], 1)
        if dtlo is not None and dthi is not None:
            a = a.clamp(dtlo[i], dthi[i])
        base = torch.addcmul(eW, c1, XB)
        ht = torch.baddbmm(base.unsqueeze(1), XV3, U).tanh_().view(Bn, H)
        h_new = torch.lerp(h, ht, a)
        Mix = eye4
        UU3n = UU3
        if mix:
            Mix = torch.addmm(eye4, kFHC, basis).view(Bn, 2, 2)
            UU3n = torch.bmm(Mix, UU3)
        UUn = UU3n.view(Bn, 2, R, H)
        gain = hom
        if fw:
            gain = dtS * h * eta
            UUn.select(1, 0).addcmul_(eV.unsqueeze(-1), gain.unsqueeze(1))
        em_n = torch.lerp(em, e, dtr[i])
        ev_n = torch.lerp(ev, dev2, dtr[i])
        sc_n = torch.lerp(sc, tgt, dtR[i])
        if save:
            for j, val in enumerate([h, UU, pred, e, dev, ep, A, Q, HZ, Lin, DT, ht, eV, Mix, gain, rn]):
                if j == 1:
                    if i % every == 0:
                        saved[j].append(val)
                elif (j != 13 or mix) and (j < 14 or fw):
                    saved[j].append(val)
            if masked:
                saved[16].append(xt)
                saved[17].append(XB)
                saved[18].append(xV)
        if keeps is not None and frozen[i]:
            # padding: the state is selected, not multiplied by a zero step
            keep = keeps[i]
            h_new = torch.where(keep, h, h_new)
            UUn = torch.where(keep.view(Bn, 1, 1, 1), UU, UUn)
            UU3n = UUn.view(Bn, 2, HR)
            em_n = torch.where(keep, em, em_n)
            ev_n = torch.where(keep, ev, ev_n)
            sc_n = torch.where(keep, sc, sc_n)
        h, UU, UU3, em, ev, sc = h_new, UUn, UU3n, em_n, ev_n, sc_n
        U = UU.select(1, 0)
        outs.append(h)
    return outs, h, UU, em, ev, sc, saved


def backward_loop(
    lo: int,
    hi: int,
    gh: Tensor,
    gUU: Tensor,
    gem: Tensor,
    gev: Tensor,
    gsc: Tensor,
    g_out: Tensor | None,
    UUs: list[Tensor],
    Mixes: list[Tensor],
    preds: list[Tensor],
    hts: list[Tensor],
    per_step: list[Tensor],
    EV3: Tensor | None,
    GAIN3: Tensor | None,
    ms: Tensor | None,
    OM: Tensor | None,
    dt_terms: list[Tensor],
    mats: list[Tensor],
    mix: bool,
    fw: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, list[list[Tensor]]]:
    """The reverse recurrence over steps ``hi − 1`` down to ``lo``.

    ``UUs[i − lo]`` is ``UU`` before step ``i``; ``Mixes``, ``preds`` and ``hts`` are the forward's
    per-step lists. ``per_step`` holds, each ``(T, B, ·)``: ``D1, D2, D3, P1, P2, P3`` (the
    derivatives that depend on forward values only, see ``_Seq.backward``), ``HmH`` = h̃ − h, Δt·S,
    ``h`` as ``(T, B, 1, H)``, ``a`` = Δt/τ, ``1 + κS``, the statistics' lerp weight and one minus
    it, one minus the two of ``sc``, ``x V`` as ``(T, B, R, 1)`` and ``x B``. ``dt_terms`` is empty,
    or the factors of Δt's gradient ``[Lfac, EVD, DEVr]``. ``mats``: ``[η, Cᵀ, [W | V]ᵀ, −V,
    MLᵀ, Mq, basisᵀ, row_I, [B | V]ᵀ]``.

    Returns the gradients of the state before step ``lo`` and, per step from the last, the lists
    ``gPn, gu, gHZf, gLin, g_gain, gE, gxV, geV, gdt, gxt``.
    """
    D1, D2, D3, P1, P2, P3, HmH, dtS, H3, As, C1, dtr, omdtr, omdtR, XVT, XB = per_step
    eta, Ct, WVt, negV, MLt, Mq, basis_t, row_I, BVt = mats
    Bn = gh.shape[0]
    R = gUU.shape[2]
    H = gUU.shape[3]
    HR = H * R
    zB1 = gh.new_zeros(Bn, 1)
    zBR = gh.new_zeros(Bn, R)
    zB3 = gh.new_zeros(Bn, 3)
    lists: list[list[Tensor]] = [[] for _ in range(10)]
    for i in range(hi - 1, lo - 1, -1):
        if g_out is not None:
            gh = gh + g_out.select(1, i)
        UU = UUs[i - lo]
        U = UU.select(1, 0)
        h3 = H3[i]
        # fast weights and sleep: UU_n = Mix @ UU, plus gain ⊗ eV on U
        if mix:
            GUf = gUU.view(Bn, 2, HR)
            gkFHC = torch.mm(torch.bmm(GUf, UU.view(Bn, 2, HR).transpose(1, 2)).view(Bn, 4), basis_t)
            gUUp = torch.bmm(Mixes[i].transpose(1, 2), GUf).view(Bn, 2, R, H)
        else:
            gkFHC = zB3
            gUUp = gUU.clone()
        gU0 = gUUp.select(1, 0)
        g_gain = zB1
        geV = zBR
        g_dtS = zB1
        tg = zB1
        if EV3 is not None and GAIN3 is not None:
            GU0 = gUU.select(1, 0)
            g_gain = torch.bmm(EV3[i], GU0).view(Bn, H)
            geV = torch.bmm(GAIN3[i], GU0.transpose(1, 2)).view(Bn, R)
            tg = g_gain * eta
            g_dtS = (tg * h3.view(Bn, H)).sum(-1, keepdim=True)
        # h_n = lerp(h, ht, a)
        g_ht = gh * As[i]
        ga = (gh * HmH[i]).sum(-1, keepdim=True)
        gh = gh - g_ht
        if fw:
            gh = torch.addcmul(gh, tg, dtS[i])
        gu = torch.ops.aten.tanh_backward(g_ht, hts[i])
        gu3 = gu.unsqueeze(1)
        # u = eW + (1 + κS)·xB + xV U
        gU0.addcmul_(XVT[i], gu3)
        gxV = torch.bmm(gu3, U.transpose(1, 2)).view(Bn, R)
        gc1 = (gu * XB[i]).sum(-1, keepdim=True)
        # the per-sample scalars: L, then HZ = [S, g, homU, homUt], then Q = [n, Lc, as, at]
        v = torch.cat([ga, g_dtS, gkFHC, gc1, gsc], 1)
        if len(dt_terms) > 0:
            gdt = (v * dt_terms[0][i]).sum(-1, keepdim=True)
            gdt = gdt + (gem * dt_terms[2][i]).sum(-1, keepdim=True) + (gev * dt_terms[1][i]).sum(-1, keepdim=True)
            lists[8].append(gdt)
        gLin = v * D1[i]
        gHZf = torch.mm(gLin, MLt) * D2[i]  # [gY_S, gY_g, g‖U‖/‖U‖·…, 0, g n (target)]
        if fw:
            gU0.addcmul_(gHZf.narrow(1, 2, 1).unsqueeze(-1), U)
        gQ = torch.mm(gHZf, Mq) * D3[i]
        gq, gA, gscQ = gQ.split([1, 1, 2], 1)
        gsc = torch.addcmul(gscQ, gsc, omdtR[i])
        # running statistics
        ge = gem * dtr[i]
        gdev = torch.addcmul(P1[i] * gev, gq, P2[i])
        gem = gem * omdtr[i] - gdev
        # d max(ev, 0)/d ev = 1: the backward runs only where error_var stays >= 0 (see the gate in _fast_euler)
        gev = torch.addmm(torch.addcmul(gev * omdtr[i], gq, P3[i], value=-1), gA, row_I)
        ge = ge + gdev
        # the error, the imputed input and their projections
        geWV = torch.cat([gu, geV], 1)
        if ms is not None and OM is not None:
            gE = torch.addmm(ge, geWV, WVt)  # ∂/∂e
            gxt = torch.mm(torch.cat([gu * C1[i], gxV], 1), BVt)  # ∂/∂x̃
            gPn = torch.ops.aten.tanh_backward(torch.addcmul(gE * ms[i], OM[i], gxt, value=-1), preds[i])
            lists[9].append(gxt)
            lists[5].append(gE)
        else:
            gPn = torch.ops.aten.tanh_backward(torch.addmm(ge, geWV, WVt), preds[i])  # −∂/∂P
            lists[5].append(ge)
        # P = h C + (h Uᵀ) Vᵀ
        ghU = torch.mm(gPn, negV)
        gh = torch.baddbmm(torch.addmm(gh, gPn, Ct, alpha=-1).unsqueeze(1), ghU.unsqueeze(1), U).view(Bn, H)
        gU0.addcmul_(ghU.unsqueeze(-1), h3)
        gUU = gUUp
        lists[0].append(gPn)
        lists[1].append(gu)
        lists[2].append(gHZf)
        lists[3].append(gLin)
        lists[6].append(gxV)
        if fw:
            lists[4].append(g_gain)
            lists[7].append(geV)
    return gh, gUU, gem, gev, gsc, lists


def single_step(
    h: Tensor,
    UU: Tensor,
    em: Tensor,
    ev: Tensor,
    sc: Tensor,
    x: Tensor,
    dt: Tensor,
    BWV: Tensor,
    w: list[Tensor],
    consts: list[Tensor],
    step_consts: list[Tensor],
    rates: list[float],
    theta: float,
    fw: bool,
    mix: bool,
    ltc: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One unmasked step from ``x`` ``(B, I)`` and ``dt`` ``(B,)``: the new ``(h, UU, em, ev, sc)``.

    What ``_Seq`` prepares for a sequence, done here for one step (``DREAMCell``'s streaming
    loop pays no Python for it). ``w`` = ``[C, Vᵀ, [W | V], −[W | V], [B | V], η, MY, bY, ML, bL]``;
    ``step_consts`` = ``[the two statistics' rates, 1 on the columns of L without Δt, 1 on those
    with]``; ``rates`` = ``[β/Δt_ref, 1/tau_max, 1/tau_min]``.
    """
    C, Vt, WV, negWV, BV, eta, MY, bY, ML, bL = w
    sc_rates, dt8_one, dt8_mask = step_consts
    Bn = x.shape[0]
    dt1 = dt.view(1, Bn, 1)
    dtlo: Tensor | None = None
    dthi: Tensor | None = None
    if ltc:
        dtlo = dt1 * rates[1]
        dthi = dt1 * rates[2]
    xall = torch.mm(x, BWV).view(1, Bn, BWV.shape[1])
    _, h, UU, em, ev, sc, _ = forward_loop(
        h,
        UU,
        em,
        ev,
        sc,
        x.unsqueeze(0),
        torch.addcmul(dt8_one, dt1, dt8_mask),
        dt1 * rates[0],
        dt1 * sc_rates,
        dtlo,
        dthi,
        xall,
        None,
        None,
        None,
        None,
        None,
        [False],
        C,
        Vt,
        WV,
        negWV,
        BV,
        eta,
        MY,
        bY,
        ML,
        bL,
        consts,
        theta,
        fw,
        mix,
        False,
        1,
    )
    return h, UU, em, ev, sc
