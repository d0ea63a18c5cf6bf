"""The inference loop of the fused Runge-Kutta path, written for TorchScript's interpreter.

The same operations, in the same order, as :meth:`._fast_rk._Runner.forward` and
:meth:`._fast_rk._Eval.forward` without saving (``tests/dreamode/test_fast_euler.py`` checks that
the results are identical bit for bit); :func:`._script.call` runs it scripted. The training
path (which saves every stage for its hand-written backward) stays in :mod:`._fast_rk`.
"""

from __future__ import annotations

import torch
from torch import Tensor


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
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The field at one stage: ``(dy, Mix, gain, eV)`` as in ``_Eval.forward``.

    ``y`` ``(B, H + 2I + 2)`` = ``[h, error_mean, error_var, avg_surprise, adaptive_tau]``; ``U``
    ``(B, R, H)`` the stage's fast weights; ``xa..xd`` the stage input, ``(x, x B, x [W | V], x V)``
    without a mask, ``(m ⊙ x, m, 1 − m, m / max(1, Σm))`` with one. ``w`` = ``[C, Vᵀ, [W | V],
    [B | V], η, MY, bY, ML4, bL]``; ``consts`` = ``[eps_var, 1/I column, eps_log, 2πe/I column, 1,
    −N, basis, rates, zeros (B, 1)]``; ``dims`` = ``[H, I, R]``; ``scalars`` = ``[N, θ_max, 1/tau_max,
    1/tau_min]``.
    """
    C, Vt, WV, BV, eta, MY, bY, ML4, bL = w
    eps_var, inv_I, eps_log, col_I, one, negN, basis, rates, hom0 = consts
    H, I, R = dims[0], dims[1], dims[2]
    N, theta, itau_lo, itau_hi = scalars[0], scalars[1], scalars[2], scalars[3]
    Bn = y.shape[0]
    h, em, ev, sc = y.split([H, I, I, 2], 1)
    hU = torch.bmm(h.unsqueeze(1), U.transpose(1, 2)).view(Bn, R)
    pred = torch.addmm(torch.mm(hU, Vt), h, C).tanh_()
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
    if fw:
        nU = torch.linalg.vector_norm(U.reshape(Bn, R * H), dim=[1], keepdim=True)
        hom = torch.addcdiv(one, negN, nU.clamp_min(N))  # relu(1 − N/‖U‖)
    HZ = torch.cat([Z, hom, n.clamp(max=theta)], 1)
    Lin = torch.addmm(bL, HZ, ML4)  # [1/τ, S, forget, homeo, ζg, 1 + κS, S, min(n, θ)]
    L0, S, LM, L5, L67 = Lin.split([1, 1, 3, 1, 2], 1)
    itau = L0.clamp(itau_lo, itau_hi) if ltc else L0
    u = torch.baddbmm(torch.addcmul(eW, L5, XB).unsqueeze(1), xV.unsqueeze(1), U)
    ht = u.view(Bn, H).tanh_()
    # [dh, d error_mean, d error_var, d sc] = rate · (target − value)
    rate = torch.cat([itau.expand(Bn, H), rates], 1)
    gap = torch.cat([ht, e, dev2, L67], 1) - y
    dy = gap * rate
    Mix = torch.mm(LM, basis).view(Bn, 2, 2)  # [[−forget − homeo, forget], [ζg, −ζg]]
    gain = S * h * eta
    return dy, Mix, gain, eV


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
) -> tuple[Tensor, Tensor, Tensor]:
    """``(h per step (T, B, H), final y, final UU)`` as ``_Runner.forward`` without saving.

    ``UU`` ``(B, 2, R·H)`` = ``[Uᵀ; U_targetᵀ]``; ``dts`` ``(T, B, 1)``; ``xins[c]`` the four
    ``(T, B, ·)`` stage inputs of distinct stage time ``c`` (see :func:`stage`), ``c_idx[s]`` that
    of stage ``s``; ``a_rows``/``b_row`` the tableau's nonzero ``(j, coefficient)``; ``C0`` ``(B, 2,
    2 + stages)`` the identity coefficients and ``E[s]`` stage ``s``'s Hebbian column; ``keeps``
    ``(T, B, 1)`` padding where ``frozen`` says a step has some.
    """
    H, R = dims[0], dims[2]
    Bn = y.shape[0]
    outs: list[Tensor] = []
    for i in range(dts.shape[0]):
        d = dts[i]
        d3 = d.unsqueeze(-1)
        U = UU.select(1, 0).view(Bn, R, H)
        ks: list[Tensor] = []
        KC: list[Tensor] = []
        Gs: list[Tensor] = []
        Es: list[Tensor] = []
        for s in range(len(a_rows)):
            row = a_rows[s]
            yi = y
            for j, a in row:  # the generic path's z + Δt·a·k, in the same order
                yi = torch.addcmul(yi, d, ks[j], value=a)
            Ci = C0
            Ui = U
            if len(row) > 0 and mix:
                # U_i = a0 U + a1 U_target + Σ_l a_l eV_l ⊗ gain_l
                for j, a in row:
                    Ci = torch.addcmul(Ci, d3, KC[j], value=a)
                Ui = torch.bmm(Ci.narrow(1, 0, 1).narrow(2, 0, 2), UU).view(Bn, R, H)
                if fw:
                    Ui = torch.baddbmm(Ui, torch.stack(Es, 2) * Ci.narrow(1, 0, 1).narrow(2, 2, s), torch.stack(Gs, 1))
            xin = xins[c_idx[s]]
            dy, Mix, gain, eV = stage(
                yi, Ui, xin[0][i], xin[1][i], xin[2][i], xin[3][i], w, consts, dims, scalars, fw, ltc, masked
            )
            ks.append(dy)
            if mix:
                KC.append(torch.bmm(Mix, Ci).add_(E[s]) if fw else torch.bmm(Mix, Ci))
            if fw:
                Gs.append(gain)
                Es.append(eV)
        yn = y
        for j, b in b_row:
            yn = torch.addcmul(yn, d, ks[j], value=b)
        UUn = UU
        if mix:
            Cn = C0
            for j, b in b_row:
                Cn = torch.addcmul(Cn, d3, KC[j], value=b)
            UUn = torch.bmm(Cn.narrow(2, 0, 2), UU)
            if fw:
                # + Σ_l Cn[:, k, 2 + l] eV_l ⊗ gain_l on U (k = 0) and U_target (k = 1)
                S = len(a_rows)
                left = (Cn.narrow(2, 2, S).unsqueeze(2) * torch.stack(Es, 2).unsqueeze(1)).view(Bn, 2 * R, S)
                UUn = torch.baddbmm(UUn.view(Bn, 2 * R, H), left, torch.stack(Gs, 1)).view(Bn, 2, R * H)
        if frozen[i]:
            keep = keeps[i]
            yn = torch.where(keep, y, yn)
            UUn = torch.where(keep.unsqueeze(-1), UU, UUn)
        y = yn
        UU = UUn
        outs.append(y.narrow(1, 0, H))
    return torch.stack(outs), y, UU
