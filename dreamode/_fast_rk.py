"""The fast path of the fixed-step Runge-Kutta methods (``midpoint``, ``heun``, ``rk4``, ...).

``integrate_layer`` hands a layer to :func:`run_sequence` for any fixed-step tableau other than
``euler`` (which has its own fused kernel, :mod:`._fast_euler`) when there is no ``max_step`` and
no trace. It computes what the generic path computes — one step of the tableau per observation,
the field of docs/dream-cell.md at every stage, ``z + Δt·a·k`` between stages with the same
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

The loops themselves (the stage, the forward with or without saving, the reverse loop) are in
:mod:`._rk_kernel` and run through TorchScript, in inference mode with one intra-op thread; this
module prepares their inputs, the local derivatives of the saved stages and the weights'
gradients. The generic path stays the reference: tests/dreamode/test_fast_euler.py checks values
and every gradient to 1e-12 in float64, and gradcheck checks the backward.
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
    """One layer's constants for the stages of :mod:`._rk_kernel`, on the step's low-rank view of
    the fast weights.

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
        # the rates of [h, error_mean, error_var, avg_surprise, adaptive_tau] toward their targets,
        # with 1 for h (whose rate, 1/τ, is per sample)
        rate1 = torch.cat([torch.ones(H, **kw), torch.full((2 * I,), r_err, **kw), k.rates])
        self.rate1 = rate1.expand(Bn, H + 2 * I + 2)
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

    def weights(self) -> tuple[Tensor, ...]:
        """The tensors a stage differentiates with respect to (besides its state and input)."""
        w = self.w
        return (w.C, w.WV, w.BV, w.eta, w.MY, w.bY, self.ML4, w.bL)

    def mats(self, ws: tuple[Tensor, ...]) -> list[Tensor]:
        """What :func:`._rk_kernel.stage_backward` multiplies with (``ws`` as from :meth:`weights`)."""
        C, WV, BV, eta, MY, _, ML4, _ = ws
        k = self.k
        return [
            C,
            WV,
            BV,
            eta,
            self.w.V,
            ML4.t(),
            MY.t(),
            k.basis_t,
            k.row_I,
            self.one,
            self.hom0,
            self.zero3,
            self.rate1,
        ]

    def backward_values(self, saved: list[Tensor]) -> list[Tensor]:
        """The stages' saved values as the reverse loop reads them, for a chunk of stages at once.

        ``saved`` ``[C_i, Mix, gain, eV, *STAGE_SAVED]``, each stacked over the stages, becomes
        ``[C_i, Mix, gain, eV, *STAGE_BACKWARD]``: the masks of the clamps (as 0/1), σ', the
        derivatives of the square roots, of the clamped log and of the z-score.
        """
        sv = dict(zip(_rk_kernel.STAGE_SAVED, saved[4:]))
        n, q, Z, Lr, vpe = sv["n"], sv["q"], sv["Z"], sv["Lr"], sv["vpe"]
        pos = q > 0
        unused = n[:, :0]
        if self.ltc:
            L0 = sv["Lin"][..., 0:1]
            Fit = ((L0 >= self.itau_lo) & (L0 <= self.itau_hi)).to(n.dtype)
        else:
            Fit = unused
        if self.fw:
            nU = sv["nU"]
            FU = torch.where(nU > self.N, self.N / (nU * nU * nU), 0.0)
        else:
            FU = unused
        F = {
            "Fn": (n <= self.theta).to(n.dtype),
            "Fq": torch.where(pos, 0.5 / torch.where(pos, n, 1.0), 0.0),
            "FZ": Z * (1 - Z),
            "FA": torch.where((Lr >= 0) & (Lr <= 4), 1 / sv["A"], 0.0),
            "Fev": (sv["ev"] >= 0).to(n.dtype),
            "Fv1": 1 / vpe,
            "Fv2": sv["z2"] / vpe,
            "F2dev": 2 * sv["dev"],
            "Fit": Fit,
            "FU": FU,
        }
        sv.update(F)
        sv["HmH"] = sv["ht"] - sv["h"]  # the h part of target − value
        return saved[:4] + [sv[name] for name in _rk_kernel.STAGE_BACKWARD]


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
        fixed = [ms, 1 - ms, fe.mask_weights(ms)]
    return diff, fixed


# steps per call of the reverse loop: the local derivatives of a chunk's stages exist only for it
_CHUNK = 32


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
        self.keeps = (dt == 0).t().unsqueeze(-1)  # (T, B, 1): padding
        self.fixed = fixed
        self.saved: list | None = None
        kw = {"dtype": ev.C0.dtype, "device": ev.C0.device}
        S = self.S
        bvec = torch.zeros(S, **kw)
        for j, b in self.b_row:
            bvec[j] = b
        self.b3, self.b4 = bvec.view(S, 1, 1), bvec.view(S, 1, 1, 1)

    def run(
        self, y: Tensor, UU: Tensor, dts: Tensor, diff: list[Tensor], ws: tuple[Tensor, ...], save: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(h per step (T, B, H), final y, final UU)`` from ``y`` ``(B, H + 2I + 2)`` and ``UU``
        ``(B, 2, R·H)`` = ``[Uᵀ; U_targetᵀ]``; ``dts`` ``(T, B, 1)``. ``save``: keep what the
        backward needs (``self.saved``)."""
        ev = self.ev
        k = ev.k
        H = ev.H
        if ev.masked:
            xins = [[d, *self.fixed] for d in diff]
        else:
            xins = [[xc, xall[..., :H], xall[..., H:], xall[..., 2 * H :]] for xc, xall in zip(diff[0::2], diff[1::2])]
        C, WV, BV, eta, MY, bY, ML4, bL = ws
        w = [C, ev.w.Vt, WV, BV, eta, MY, bY, ML4, bL]
        consts = [k.eps_var, k.inv_I, k.eps_log, k.col_I, k.one, k.negN, k.basis, ev.rate1, ev.hom0]
        out, y, UU, steps, stages = _script.call(
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
            self.keeps,
            self.frozen,
            w,
            consts,
            [H, ev.I, ev.R],
            [float(ev.N), float(ev.theta), float(ev.itau_lo), float(ev.itau_hi)],
            ev.fw,
            ev.mix,
            ev.ltc,
            ev.masked,
            save,
            _CHUNK,
        )
        self.saved = (steps, stages) if save else None
        return out, y, UU

    def backward(
        self,
        dts: Tensor,
        ws: tuple[Tensor, ...],
        g_out: Tensor | None,
        gy: Tensor | None,
        gUU: Tensor | None,
        free: bool,
    ) -> tuple:
        """Reverse of :meth:`run`: gradients of ``(y0, UU0, dts, *diff, *ws)``.

        The reverse loop (:func:`._rk_kernel.backward_loop`) runs over chunks of steps, last chunk
        first; the local derivatives of a chunk's stages are computed just before it, and with
        ``free`` its saved values are released after it. The weights' gradients are products over
        all stages and steps at once after the loop.
        """
        ev = self.ev
        T = dts.shape[0]
        steps, stages = self.saved
        masked, fw = ev.masked, ev.fw
        nc = len(self.cs)
        mats = ev.mats(ws)
        D = ev.H + 2 * ev.I + 2
        gy = torch.zeros(ev.B, D, dtype=dts.dtype, device=dts.device) if gy is None else gy.clone()
        gUU = torch.zeros(ev.B, 2, ev.R * ev.H, dtype=dts.dtype, device=dts.device) if gUU is None else gUU.clone()
        fixed = self.fixed if masked else []
        gds: list[Tensor] = []
        gxs: list[list[Tensor]] = [[] for _ in range(nc)]
        gxalls: list[list[Tensor]] = [[] for _ in range(nc)]
        wg: list[list[Tensor]] = [[] for _ in _rk_kernel.WEIGHT_FACTORS]
        for c in reversed(range(len(steps))):
            lo = c * _CHUNK
            hi = min(lo + _CHUNK, T)
            gy, gUU, gd, gx, gxall, wgc = _script.call(
                _rk_kernel.backward_loop,
                lo,
                hi,
                gy,
                gUU,
                g_out,
                dts,
                steps[c],
                ev.backward_values(stages[c]),
                fixed,
                self.keeps,
                self.frozen,
                self.c_idx,
                self.a_rows,
                self.b3,
                self.b4,
                nc,
                mats,
                [ev.H, ev.I, ev.R],
                fw,
                ev.mix,
                ev.ltc,
                masked,
            )
            if free:
                steps[c] = stages[c] = None
            gds += gd
            for j in range(nc):
                gxs[j] += gx[j]
                gxalls[j] += gxall[j]
            for acc, part in zip(wg, wgc):
                acc += part
        # the loop went from the last step: stacked in forward order
        gdts = torch.stack(gds[::-1]).unsqueeze(-1)
        gdiff: list[Tensor] = []
        for c in range(nc):
            gdiff.append(torch.stack(gxs[c][::-1]))
            if not masked:
                gdiff.append(torch.stack(gxalls[c][::-1]))
        f = dict(zip(_rk_kernel.WEIGHT_FACTORS, wg))

        def mm(a: str, b: str) -> Tensor:
            return torch.mm(torch.cat(f[a]).t(), torch.cat(f[b]))

        gLin = torch.cat(f["gLin"])
        gpre = torch.cat(f["gpre"])
        gws = (
            mm("h", "gPn").neg_(),
            mm("e", "geWV") if masked else mm("e", "geWV").neg_(),
            mm("xt", "gXBxV") if masked else None,
            (torch.cat(f["gain"]) * torch.cat(f["S"]) * torch.cat(f["h"])).sum(0) if fw else None,
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
        with torch.inference_mode():  # cheaper operations; what is returned is copied out of it
            out, y, UU = runner.run(y0, UU0, dts, diff, ws, save=True)
        ctx.runner, ctx.nd = runner, nd
        ctx.save_for_backward(dts, *rest)
        return out.clone(), y.clone(), UU.clone()

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
        ev = runner.ev
        with torch.inference_mode(), fe._serial(dts.device, ev.B * ev.H * (ev.I + 2 * ev.R)):
            g = runner.backward(dts, tuple(rest[ctx.nd :]), g_out, gy, gUU, free=not keep)
        # out of inference mode: ordinary tensors, which autograd may add to in place
        g = [None if t is None else t.clone() for t in g]
        if not keep:  # the reverse loop has released what it used
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
        UU = fe._pack_U(U0, Ut0).view(Bn, 2, R * H)  # [Uᵀ; U_targetᵀ]
        y = torch.cat([h0, em0, ev0, as0.unsqueeze(1), at0.unsqueeze(1)], 1)
        return _Runner(ev, tableau, frozen, dt, fixed), y, UU, dt.t().unsqueeze(-1), diff, ev.weights()

    with fe._serial(x.device, Bn * H * (I + 2 * R)):
        if grad:
            runner, y, UU, dts, diff, ws = prepare()
            out, y, UU = _RKSequence.apply(runner, len(diff), y, UU, dts, *diff, *ws)
        else:
            with torch.inference_mode():
                runner, y, UU, dts, diff, ws = prepare()
                out, y, UU = runner.run(y, UU, dts, diff, ws, save=False)
            out, y, UU = out.clone(), y.clone(), UU.clone()  # ordinary tensors again
    h, em, ev_, sc = y.split([H, I, I, 2], 1)
    U, Ut = UU.view(Bn, 2, R, H).transpose(2, 3).unbind(1)
    return out.transpose(0, 1), DREAMState(h, U, Ut, em, ev_, sc[:, 0], sc[:, 1])
