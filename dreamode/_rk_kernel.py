"""The loops of the fused Runge-Kutta path, written once for TorchScript's interpreter.

:mod:`._fast_rk` prepares the stage inputs, the coefficients of the tableau and the derivatives
that depend on forward values only; the functions below run the steps (:func:`forward_loop`, with
or without keeping what the backward needs) and their reverse (:func:`backward_loop`).
:func:`._script.call` runs them scripted; under :func:`._script.interpreted` the same functions
run as Python (``tests/dreamode/test_fast_euler.py`` checks that both give the same bits).
"""

from __future__ import annotations

import torch
from torch import Tensor

# what the forward keeps per stage (in this order), after the stage's coefficients [Ci, Mix, gain, eV]
STAGE_SAVED = (
    "h", "ev", "pred", "e", "dev", "vpe", "z2", "q", "n", "A", "Lr", "Q", "Z", "HZ", "Lin", "XB", "xV", "ht",
    "itau", "S", "nU", "xt",
)  # fmt: skip
# what the reverse loop reads per stage (in this order), after [Ci, Mix, gain, eV]; F* are the
# local derivatives that _fast_rk computes for many stages at once
STAGE_BACKWARD = (
    "h", "Lin", "itau", "HmH", "S", "ht", "XB", "xV", "HZ", "Q", "pred", "e", "xt",
    "Fn", "Fq", "FZ", "FA", "Fev", "Fv1", "Fv2", "F2dev", "Fit", "FU",
)  # fmt: skip
# the weights' gradient factors the reverse loop collects, in pairs multiplied after the loop
WEIGHT_FACTORS = ("HZ", "gLin", "Q", "gpre", "e", "geWV", "h", "gPn", "gain", "S", "xt", "gXBxV")


def stage(
    y: Tensor,
    U: Tensor,
    xa: Tensor,
    xb: Tensor,
    xc: Tensor,
    xd: Tensor,
    w: list[Tensor],
    consts: list[Tensor],
    dims: list[int],
    scalars: list[float],
    fw: bool,
    ltc: bool,
    masked: bool,
    save: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, list[Tensor]]:
    """The field at one stage: ``(dy, Mix, gain, eV, saved)``.

    ``y`` ``(B, H + 2I + 2)`` = ``[h, error_mean, error_var, avg_surprise, adaptive_tau]``; ``U``
    ``(B, R, H)`` the stage's fast weights; ``xa..xd`` the stage input, ``(x, x B, x [W | V], x V)``
    without a mask, ``(m ⊙ x, m, 1 − m, m / max(1, Σm))`` with one. ``w`` = ``[C, Vᵀ, [W | V],
    [B | V], η, MY, bY, ML4, bL]``; ``consts`` = ``[eps_var, 1/I column, eps_log, 2πe/I column, 1,
    −N, basis, the rates of y's parts toward their targets (1 for h: its rate is 1/τ), zeros (B,
    1)]``; ``dims`` = ``[H, I, R]``; ``scalars`` = ``[N, θ_max, 1/tau_max, 1/tau_min]``. ``dy = rate ·
    (target − value)`` for ``y``; ``Mix`` ``(B, 2, 2)`` the linear map of
    ``[U; U_target]``, ``eV ⊗ gain`` the Hebbian term. ``saved``: the values of
    :data:`STAGE_SAVED` if ``save``, else empty.
    """
    C, Vt, WV, BV, eta, MY, bY, ML4, bL = w
    eps_var, inv_I, eps_log, col_I, one, negN, basis, rate1, hom0 = consts
    H, I, R = dims[0], dims[1], dims[2]
    N, theta, itau_lo, itau_hi = scalars[0], scalars[1], scalars[2], scalars[3]
    Bn = y.shape[0]
    h, em, ev, sc = y.split([H, I, I, 2], 1)
    hU = torch.bmm(h.unsqueeze(1), U.transpose(1, 2)).view(Bn, R)
    pred = torch.addmm(torch.mm(hU, Vt), h, C).tanh_()
    xt = pred  # defined on both branches for TorchScript; only a mask saves it
    if masked:
        e = torch.addcmul(xa, xb, pred, value=-1)
        xt = torch.addcmul(xa, xc, pred)
        XB, xV = torch.mm(xt, BV).split([H, R], 1)
        eW, eV = torch.mm(e, WV).split([H, R], 1)
    else:
        e = xa - pred
        XB, xV = xb, xd
        eW, eV = torch.addmm(xc, pred, WV, alpha=-1).split([H, R], 1)
    dev = e - em
    dev2 = dev * dev
    # error_var >= 0 along Euler steps; a trial stage can undershoot (as in DREAMField.evaluate)
    var = ev.clamp_min(0.0)
    vpe = var + eps_var
    z2 = dev2 / vpe
    q = (z2 * xd).sum(-1, keepdim=True) if masked else torch.mm(z2, inv_I)
    n = q.sqrt()
    A = torch.addmm(eps_log, var, col_I)
    Lr = A.log()
    Q = torch.cat([n, Lr.clamp(0.0, 4.0), sc], 1)
    Z = torch.addmm(bY, Q, MY).sigmoid_()  # [S, g]
    hom = hom0
    nU = hom0
    if fw:
        nU = torch.linalg.vector_norm(U.reshape(Bn, R * H), dim=[1], keepdim=True)
        hom = torch.addcdiv(one, negN, nU.clamp_min(N))  # relu(1 − N/‖U‖)
    HZ = torch.cat([Z, hom, n.clamp(max=theta)], 1)
    Lin = torch.addmm(bL, HZ, ML4)  # [1/τ, S, forget, homeo, ζg, 1 + κS, S, min(n, θ)]
    L0, S, LM, L5, L67 = Lin.split([1, 1, 3, 1, 2], 1)
    itau = L0.clamp(itau_lo, itau_hi) if ltc else L0
    u = torch.addcmul(eW, L5, XB).unsqueeze(1).baddbmm_(xV.unsqueeze(1), U)
    ht = u.view(Bn, H).tanh_()
    # [dh, d error_mean, d error_var, d sc] = rate · (target − value), the rate of h being 1/τ
    dy = (torch.cat([ht, e, dev2, L67], 1) - y).mul_(rate1)
    dy.narrow(1, 0, H).mul_(itau)
    Mix = torch.mm(LM, basis).view(Bn, 2, 2)  # [[−forget − homeo, forget], [ζg, −ζg]]
    gain = S * h * eta
    saved: list[Tensor] = []
    if save:
        saved = [h, ev, pred, e, dev, vpe, z2, q, n, A, Lr, Q, Z, HZ, Lin, XB, xV, ht, itau, S, nU, xt]
    return dy, Mix, gain, eV, saved


def stage_fast_weights(UU: Tensor, Ci: Tensor, gains: list[Tensor], eVs: list[Tensor], s: int, fw: bool) -> Tensor:
    """``U_i = Ci[0, :2] · [U; U_target] + Σ_l Ci[0, 2 + l] eV_l ⊗ gain_l`` over the ``s`` earlier
    stages, ``(B, R, H)``, from ``UU`` ``(B, 2, R·H)``."""
    Bn, R, H = UU.shape[0], eVs[0].shape[1], gains[0].shape[1]
    Ui = torch.bmm(Ci.narrow(1, 0, 1).narrow(2, 0, 2), UU).view(Bn, R, H)
    if fw:
        left = torch.stack(eVs[:s], 2) * Ci.narrow(1, 0, 1).narrow(2, 2, s)
        Ui.baddbmm_(left, torch.stack(gains[:s], 1))  # Ui is this function's own tensor
    return Ui


def forward_loop(
    y: Tensor,
    UU: Tensor,
    dts: Tensor,
    xins: list[list[Tensor]],
    c_idx: list[int],
    a_rows: list[list[tuple[int, float]]],
    b_row: list[tuple[int, float]],
    C0: Tensor,
    E: Tensor,
    keeps: Tensor,
    frozen: list[bool],
    w: list[Tensor],
    consts: list[Tensor],
    dims: list[int],
    scalars: list[float],
    fw: bool,
    mix: bool,
    ltc: bool,
    masked: bool,
    save: bool,
    chunk: int,
) -> tuple[Tensor, Tensor, Tensor, list[list[Tensor]], list[list[Tensor]]]:
    """``(h per step (T, B, H), final y, final UU, saved steps, saved stages)``.

    ``UU`` ``(B, 2, R·H)`` = ``[Uᵀ; U_targetᵀ]``; ``dts`` ``(T, B, 1)``; ``xins[c]`` the four
    ``(T, B, ·)`` stage inputs of distinct stage time ``c`` (see :func:`stage`), ``c_idx[s]`` that
    of stage ``s``; ``a_rows``/``b_row`` the tableau's nonzero ``(j, coefficient)``; ``C0`` ``(B, 2,
    2 + stages)`` the identity coefficients and ``E[s]`` stage ``s``'s Hebbian column; ``keeps``
    ``(T, B, 1)`` padding where ``frozen`` says a step has some.

    Within a step the fast weights are not rewritten: stage ``i`` sees ``[U_i; U_target,i] = C_i
    [U; U_target] + Σ_l C_i[:, 2 + l] eV_l ⊗ gain_l``, so only the ``(B, 2, 2 + stages)``
    coefficients ``C_i`` go from stage to stage, and ``[U; U_target]`` is written once a step.
    With ``save``, per ``chunk`` steps: the steps' ``[UU, K (stages, B, D), KC (stages, B, 2, n),
    Cn]`` (the last two empty without fast weights or sleep) and the stages' ``[C_i, Mix, gain, eV,
    *STAGE_SAVED]``, each stacked over the chunk's steps (or steps × stages, step-major).
    """
    H, R = dims[0], dims[2]
    Bn = y.shape[0]
    S = len(a_rows)
    empty = y.new_empty(0)
    outs: list[Tensor] = []
    T = dts.shape[0]
    steps: list[list[Tensor]] = []
    stages: list[list[Tensor]] = []
    step_vals: list[list[Tensor]] = [[] for _ in range(4)]
    stage_vals: list[list[Tensor]] = []  # one list per saved kind, made at the first stage
    for i in range(T):
        d = dts[i]
        d3 = d.unsqueeze(-1)
        U = UU.select(1, 0).view(Bn, R, H)
        ks: list[Tensor] = []
        KC: list[Tensor] = []
        Gs: list[Tensor] = []
        Es: list[Tensor] = []
        for s in range(S):
            row = a_rows[s]
            yi = y
            for j, a in row:  # the generic path's z + Δt·a·k, in the same order
                yi = torch.addcmul(yi, d, ks[j], value=a)
            Ci = C0
            Ui = U
            if len(row) > 0 and mix:
                for j, a in row:
                    Ci = torch.addcmul(Ci, d3, KC[j], value=a)
                Ui = stage_fast_weights(UU, Ci, Gs, Es, s, fw)
            xin = xins[c_idx[s]]
            dy, Mix, gain, eV, sv = stage(
                yi, Ui, xin[0][i], xin[1][i], xin[2][i], xin[3][i], w, consts, dims, scalars, fw, ltc, masked, save
            )
            ks.append(dy)
            if mix:
                KC.append(torch.bmm(Mix, Ci).add_(E[s]) if fw else torch.bmm(Mix, Ci))
            Gs.append(gain)
            Es.append(eV)
            if save:
                vals = [Ci, Mix, gain, eV] + sv
                if len(stage_vals) == 0:
                    stage_vals = [[] for _ in vals]
                for j, v in enumerate(vals):
                    stage_vals[j].append(v)
        yn = y
        for j, b in b_row:
            yn = torch.addcmul(yn, d, ks[j], value=b)
        UUn = UU
        Cn = empty
        if mix:
            Cn = C0
            for j, b in b_row:
                Cn = torch.addcmul(Cn, d3, KC[j], value=b)
            UUn = torch.bmm(Cn.narrow(2, 0, 2), UU)
            if fw:
                # + Σ_l Cn[:, k, 2 + l] eV_l ⊗ gain_l on U (k = 0) and U_target (k = 1)
                left = (Cn.narrow(2, 2, S).unsqueeze(2) * torch.stack(Es, 2).unsqueeze(1)).view(Bn, 2 * R, S)
                UUn = UUn.view(Bn, 2 * R, H).baddbmm_(left, torch.stack(Gs, 1)).view(Bn, 2, R * H)
        if save:
            for j, v in enumerate([UU, torch.stack(ks), torch.stack(KC) if mix else empty, Cn]):
                step_vals[j].append(v)
            if (i + 1) % chunk == 0 or i == T - 1:
                steps.append([torch.stack(v) for v in step_vals])
                stages.append([torch.stack(v) for v in stage_vals])
                step_vals = [[] for _ in range(4)]
                stage_vals = []
        if frozen[i]:
            keep = keeps[i]
            yn = torch.where(keep, y, yn)
            UUn = torch.where(keep.unsqueeze(-1), UU, UUn)
        y = yn
        UU = UUn
        outs.append(y.narrow(1, 0, H))
    return torch.stack(outs), y, UU, steps, stages


def stage_backward(
    sv: list[Tensor],
    U: Tensor,
    gdy: Tensor,
    gMix: Tensor | None,
    ggain: Tensor,
    geV: Tensor,
    fixed: list[Tensor],
    wg: list[list[Tensor]],
    mats: list[Tensor],
    dims: list[int],
    fw: bool,
    ltc: bool,
    masked: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The vector-Jacobian product of :func:`stage`: ``(g y, g U, g of the stage input...)``.

    ``sv`` = ``[C_i, Mix, gain, eV, *STAGE_BACKWARD]``; ``gdy``, ``gMix`` (``None``: no fast weights
    nor sleep), ``ggain`` and ``geV`` the gradients of the stage's results; ``fixed`` = ``[m, 1 − m,
    m / max(1, Σm)]`` of the step with a mask; ``mats`` = ``[C, [W | V], [B | V], η, V, ML4ᵀ, MYᵀ,
    basisᵀ, 2πe/I row, 1, zeros (B, 1), zeros (B, 3), the rates of :func:`stage`]``. The weights' gradients are products over
    the batch: their factors are appended to ``wg`` (one list per name of :data:`WEIGHT_FACTORS`)
    and multiplied for all stages and steps at once after the loop. The input gradients are ``(g x,
    g (x B), g (x [W | V]), g (x V))`` without a mask, ``(g (m ⊙ x), -, -, -)`` with one.
    """
    h, Lin, itau, HmH, S, ht, XB, xV, HZ, Q, pred, e, xt = sv[4:17]
    Fn, Fq, FZ, FA, Fev, Fv1, Fv2, F2dev, Fit, FU = sv[17:]
    C, WV, BV, eta, V, ML4t, MYt, basis_t, row_I, one, hom0, zero3, rate1 = mats
    H, I, R = dims[0], dims[1], dims[2]
    Bn = h.shape[0]
    gt = gdy * rate1  # the gradient of the targets; minus that of the values
    gt.narrow(1, 0, H).mul_(itau)
    g_ht, g_e0, g_dev20, g67 = gt.split([H, I, I, 2], 1)
    git = (gdy.narrow(1, 0, H) * HmH).sum(-1, keepdim=True)  # ∂/∂(1/τ)
    if ltc:
        git = git * Fit
    gS = hom0
    gh = g_ht.neg()
    if fw:
        ge = ggain * eta
        gS = (ge * h).sum(-1, keepdim=True)
        gh = ge * S - g_ht
        wg[8].append(ggain)
        wg[9].append(S)
    gM = zero3
    if gMix is not None:
        gM = torch.mm(gMix.reshape(Bn, 4), basis_t)
    # u = eW + (1 + κS)·XB + xV U
    gu = torch.ops.aten.tanh_backward(g_ht, ht)
    gLin = torch.cat([git, gS, gM, (gu * XB).sum(-1, keepdim=True), g67], 1)
    gXB = gu * Lin.narrow(1, 5, 1)
    gxV = torch.bmm(gu.unsqueeze(1), U.transpose(1, 2)).view(Bn, R)
    gU = xV.unsqueeze(-1) * gu.unsqueeze(1)
    # Lin = HZ ML4 + bL
    gHZ = torch.mm(gLin, ML4t)
    wg[0].append(HZ)
    wg[1].append(gLin)
    if fw:  # relu(1 − N/‖U‖) and ‖U‖: N/‖U‖³ · U
        gU.addcmul_((gHZ.narrow(1, 2, 1) * FU).unsqueeze(-1), U)
    # Z = σ(Q MY + bY), Q = [n, clamp(log A), sc]
    gpre = gHZ.narrow(1, 0, 2) * FZ
    gQ = torch.mm(gpre, MYt)
    wg[2].append(Q)
    wg[3].append(gpre)
    gq = torch.addcmul(gQ.narrow(1, 0, 1), gHZ.narrow(1, 3, 1), Fn) * Fq
    gsc = gQ.narrow(1, 2, 2) - g67
    gz2 = gq * fixed[2] if masked else gq * (1.0 / I)
    g_dev2 = torch.addcmul(g_dev20, gz2, Fv1)
    gvar = torch.addcmul((gQ.narrow(1, 1, 1) * FA) * row_I, gz2, Fv2, value=-1)
    gev = torch.addcmul(gvar * Fev, g_dev20, one, value=-1)
    g_e = torch.addcmul(g_e0, F2dev, g_dev2)
    gem = g_e.neg()
    geWV = torch.cat([gu, geV], 1)
    if masked:
        gXBxV = torch.cat([gXB, gxV], 1)
        gxt = torch.mm(gXBxV, BV.t())
        wg[10].append(xt)
        wg[11].append(gXBxV)
        g_e = torch.addmm(g_e, geWV, WV.t())
        wg[4].append(e)
        wg[5].append(geWV)
        gPn = torch.ops.aten.tanh_backward(torch.addcmul(g_e * fixed[0], gxt, fixed[1], value=-1), pred)
        gx0 = g_e + gxt
    else:
        gPn = torch.ops.aten.tanh_backward(torch.addmm(g_e, geWV, WV.t()), pred)  # −∂/∂P
        wg[4].append(pred)
        wg[5].append(geWV)  # the sign is applied after the loop
        gx0 = g_e
    # P = (h Uᵀ) Vᵀ + h C
    ghUn = torch.mm(gPn, V)
    gh = torch.addmm(gh, gPn, C.t(), alpha=-1).unsqueeze(1).baddbmm_(ghUn.unsqueeze(1), U, alpha=-1)
    gU.addcmul_(ghUn.unsqueeze(-1), h.unsqueeze(1), value=-1)
    wg[6].append(h)
    wg[7].append(gPn)
    gy = torch.cat([gh.view(Bn, H), gem, gev, gsc], 1)
    return gy, gU, gx0, gXB, geWV, gxV


def backward_loop(
    lo: int,
    hi: int,
    gy: Tensor,
    gUU: Tensor,
    g_out: Tensor | None,
    dts: Tensor,
    steps: list[Tensor],
    stages: list[Tensor],
    fixed: list[Tensor],
    keeps: Tensor,
    frozen: list[bool],
    c_idx: list[int],
    a_rows: list[list[tuple[int, float]]],
    b3: Tensor,
    b4: Tensor,
    nc: int,
    mats: list[Tensor],
    dims: list[int],
    fw: bool,
    mix: bool,
    ltc: bool,
    masked: bool,
) -> tuple[Tensor, Tensor, list[Tensor], list[list[Tensor]], list[list[Tensor]], list[list[Tensor]]]:
    """The reverse of :func:`forward_loop` over steps ``hi − 1`` down to ``lo``.

    ``steps`` and ``stages`` are what the forward saved for these steps, stacked (the stages with
    :data:`STAGE_BACKWARD` in place of :data:`STAGE_SAVED`); ``fixed`` = ``[m, 1 − m, m /
    max(1, Σm)]`` ``(T, B, I)`` with a mask. Per step, ``Gk[j]`` collects ``b_j g(y_next) + Σ_s a_sj
    g(y_s)`` (``GKC`` the same for the fast-weight coefficients): the gradient of stage ``j``'s
    derivative is ``Δt·Gk[j]`` and that of ``Δt`` is ``Σ_j k_j·Gk[j]``. ``a_rows`` are the
    tableau's nonzero ``a`` and ``b3``/``b4`` its ``b``, shaped to broadcast.

    Returns ``(g y, g UU, g Δt per step, g of the stage inputs per stage time and step, the same for
    x [B | W | V], the weights' gradient factors)``, the per-step lists from step ``hi − 1`` down.
    """
    H, R = dims[0], dims[2]
    S = len(a_rows)
    RH = R * H
    Bn = gy.shape[0]
    empty = gy.new_empty(0)
    wg: list[list[Tensor]] = [[] for _ in range(12)]
    gds: list[Tensor] = []
    gxs: list[list[Tensor]] = [[] for _ in range(nc)]
    gxalls: list[list[Tensor]] = [[] for _ in range(nc)]
    zeros_R = gy.new_zeros(Bn, R)  # read only
    step_vals = [v.unbind(0) for v in steps]
    stage_vals = [v.unbind(0) for v in stages]
    for i in range(hi - 1, lo - 1, -1):
        UU, K, KCs, Cn = [v[i - lo] for v in step_vals]
        st = [[v[(i - lo) * S + s] for v in stage_vals] for s in range(S)]
        gains = [sv[2] for sv in st]
        eVs = [sv[3] for sv in st]
        if g_out is not None:
            gy.narrow(1, 0, H).add_(g_out[i])  # gy is this loop's own tensor
        d = dts[i]
        d3 = d.unsqueeze(-1)
        gy_keep = empty
        gUU_keep = empty
        if frozen[i]:
            keep = keeps[i]
            gy_keep = torch.where(keep, gy, 0.0)
            gUU_keep = torch.where(keep.unsqueeze(-1), gUU, 0.0)
            gy = torch.where(keep, 0.0, gy)
            gUU = torch.where(keep.unsqueeze(-1), 0.0, gUU)
        gyn = gy
        gUUn = gUU
        Gk = b3 * gyn  # (S, B, D)
        gy = gyn.clone()
        gGst = empty  # gradients of the gains (B, S, H) and of eV (B, R, S)
        gEst = empty
        Gst = empty
        Est = empty
        GKC = empty
        if mix:
            gCn = torch.empty_like(Cn)
            gCn.narrow(2, 0, 2).copy_(torch.bmm(gUUn, UU.transpose(1, 2)))
            gUU = torch.bmm(Cn.narrow(2, 0, 2).transpose(1, 2), gUUn)
            if fw:
                gUUr = gUUn.view(Bn, 2 * R, H)
                Gst = torch.stack(gains, 1)  # (B, S, H)
                Est = torch.stack(eVs, 2)  # (B, R, S)
                cl = Cn.narrow(2, 2, S).unsqueeze(2)  # (B, 2, 1, S)
                left = (cl * Est.unsqueeze(1)).view(Bn, 2 * R, S)
                gleft = torch.bmm(gUUr, Gst.transpose(1, 2)).view(Bn, 2, R, S)
                gGst = torch.bmm(left.transpose(1, 2), gUUr)
                gCn.narrow(2, 2, S).copy_((gleft * Est.unsqueeze(1)).sum(2))
                gEst = (gleft * cl).sum(1)
            else:
                gCn.narrow(2, 2, S).fill_(0.0)
            GKC = b4 * gCn  # (S, B, 2, n)
        else:
            gUU = gUUn.clone()
        fx = fixed
        if masked:
            fx = [fixed[0][i], fixed[1][i], fixed[2][i]]
        gx_step: list[Tensor] = [empty for _ in range(nc)]
        gxall_step: list[Tensor] = [empty for _ in range(nc)]
        has: list[bool] = [False for _ in range(nc)]
        for s in range(S - 1, -1, -1):
            row = a_rows[s]
            sv = st[s]
            Ci = sv[0]
            gdy = Gk[s] * d
            gMix: Tensor | None = None
            gCi = empty
            if mix:
                gKCs = GKC[s] * d3
                gMix = torch.bmm(gKCs, Ci.transpose(1, 2))
                gCi = torch.bmm(sv[1].transpose(1, 2), gKCs)
            # the stage's fast weights, as in the forward
            G_s = empty
            E_s = empty
            left_s = empty
            if len(row) > 0 and mix:
                # U_i as in the forward, from the step's stacked gains and eV
                Ui = torch.bmm(Ci.narrow(1, 0, 1).narrow(2, 0, 2), UU).view(Bn, R, H)
                if fw:
                    G_s = Gst.narrow(1, 0, s)
                    E_s = Est.narrow(2, 0, s)
                    left_s = E_s * Ci.narrow(1, 0, 1).narrow(2, 2, s)
                    Ui.baddbmm_(left_s, G_s)
            else:
                Ui = UU.select(1, 0).view(Bn, R, H)
            ggain = empty
            geV = zeros_R  # no fast weights: eV has no gradient
            if fw:
                ggain = gGst.select(1, s)
                geV = gEst.select(2, s)
            gyi, gUi, gx0, gXB, geWV, gxV = stage_backward(
                sv, Ui, gdy, gMix, ggain, geV, fx, wg, mats, dims, fw, ltc, masked
            )
            ci = c_idx[s]
            gxa = gx0
            if not masked:
                gxa = torch.cat([gXB, geWV.narrow(1, 0, H), geWV.narrow(1, H, R) + gxV], 1)
            if has[ci]:
                gx_step[ci] = gx_step[ci] + gx0
                gxall_step[ci] = gxall_step[ci] + gxa
            else:
                gx_step[ci] = gx0
                gxall_step[ci] = gxa
                has[ci] = True
            if len(row) > 0 and mix:
                gUi3 = gUi.reshape(Bn, 1, RH)
                gCi.narrow(1, 0, 1).narrow(2, 0, 2).add_(torch.bmm(gUi3, UU.transpose(1, 2)))
                gUU.baddbmm_(Ci.narrow(1, 0, 1).narrow(2, 0, 2).transpose(1, 2), gUi3)  # this step's own
                if fw:
                    gleft = torch.bmm(gUi, G_s.transpose(1, 2))  # (B, R, s)
                    gGs = torch.bmm(left_s.transpose(1, 2), gUi)  # (B, s, H)
                    gCi.select(1, 0).narrow(1, 2, s).add_((gleft * E_s).sum(1))
                    gEs = gleft * Ci.narrow(1, 0, 1).narrow(2, 2, s)
                    gGst.narrow(1, 0, s).add_(gGs)
                    gEst.narrow(2, 0, s).add_(gEs)
            else:
                gUU.select(1, 0).add_(gUi.reshape(Bn, RH))
            gy = gy + gyi
            if len(row) > 0:
                for j, a in row:
                    Gk[j].add_(gyi, alpha=a)  # Gk[j] += a_sj g(y_s)
                    if mix:
                        GKC[j].add_(gCi, alpha=a)
        gd = (K * Gk).sum([0, 2])
        if mix:
            gd = gd + (KCs * GKC).sum([0, 2, 3])
        if frozen[i]:
            gy = gy + gy_keep
            gUU = gUU + gUU_keep
        gds.append(gd)
        for c in range(nc):
            gxs[c].append(gx_step[c])
            gxalls[c].append(gxall_step[c])
    return gy, gUU, gds, gxs, gxalls, wg
