"""Mutation check of the DREAM cell: every equation of docs/dream-cell.md, changed one at a time.

Each mutant below is one small change to one equation of the library — a constant nudged, a term
dropped, a clamp bound moved, a sign flipped, a mask ignored — in the generic vector field
(``dreamode/_field.py``), the fused Euler engine (``_euler_kernel.py``, ``_fast_euler.py``, with
its hand-written backward), the fused Runge-Kutta engine (``_rk_kernel.py``, ``_fast_rk.py``) or
``DREAMCell`` (``_cell.py``). For each mutant the script copies ``dreamode/``, ``solvers/`` and
``tests/dreamode/`` to a temporary folder (the repository's files are never edited), applies the
change there, and runs the tests that cover the cell (:data:`TESTS`, stopping at the first
failure). A mutant is *killed* when a test fails, and *survives* when all pass.

Every mutant changes a value the math page defines, unless it carries an ``equivalent`` reason:
a surviving mutant without one is a missing test, and the script exits with status 1.

    python tests/mutation_check.py            # all mutants, one worker
    python tests/mutation_check.py -j 2       # two workers
    python tests/mutation_check.py --list     # the mutants, without running anything
    python tests/mutation_check.py --only field-kappa --only rk-gain
    python tests/mutation_check.py --validate # only check that every mutant applies (fast)

The C++ kernels (``dreamode/csrc``, opt-in through ``dreamode.native``) are not mutated: a change
there needs a rebuild of the extension for every mutant.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import importlib
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]

# the tests that cover the cell, fastest killers first; pytest stops at the first failure
TESTS = (
    "tests/dreamode/test_equations.py",
    "tests/dreamode/test_euler_rule.py",
    "tests/dreamode/test_fast_euler.py",
)
# what a mutant's copy of the repository holds
COPIED = ("dreamode", "solvers", "tests/dreamode", "pyproject.toml")


class Mutant(NamedTuple):
    """One change: in ``file``, the snippet ``old`` (found exactly once) becomes ``new``."""

    name: str
    file: str
    old: str
    new: str
    equation: str
    why: str
    equivalent: str | None = None  # why no test can tell it apart, if none can


FIELD = "dreamode/_field.py"
EK = "dreamode/_euler_kernel.py"
FE = "dreamode/_fast_euler.py"
RK = "dreamode/_rk_kernel.py"
FRK = "dreamode/_fast_rk.py"
CELL = "dreamode/_cell.py"

# equations, as numbered on docs/dream-cell.md ("The vector field"), and the steps
E1 = "1 prediction"
E2 = "2 imputation and error"
E3 = "3 error size"
E4 = "4 surprise gate"
E5 = "5 liquid time constant"
E6 = "6-7 target, hidden state"
E8 = "8 Hebbian fast weights"
E8H = "8 homeostasis"
E9 = "9 sleep consolidation"
E10 = "10 running statistics"
EU = "Euler step"
LF = "ltc-fused step"
RKS = "Runge-Kutta step"
BW = "Euler backward"

# fmt: off
MUTANTS: list[Mutant] = [
    # -- the generic vector field (DREAMField.evaluate) --
    Mutant("field-prediction-fast-weights", FIELD, "prediction = torch.tanh(h @ self.C + hU @ self.V.t())", "prediction = torch.tanh(h @ self.C)",
           E1, "term dropped: U Vᵀ in x̂"),
    Mutant("field-imputation", FIELD, "x_tilde = mask * x + (1 - mask) * prediction", "x_tilde = mask * x",
           E2, "mask: missing channels not filled with x̂"),
    Mutant("field-error-mask", FIELD, "error = mask * (x - prediction)", "error = x - prediction",
           E2, "mask ignored: missing channels carry an error"),
    Mutant("field-deviation", FIELD, "dev = error - error_mean", "dev = error",
           E3, "term dropped: error_mean in e − error_mean"),
    Mutant("field-zscore-eps", FIELD, "z2 = dev.square() / (var + 1e-6)", "z2 = dev.square() / (var + 1e-4)",
           E3, "constant nudged: the z-score's 1e-6"),
    Mutant("field-zscore-observed", FIELD, "q = (mask * z2).sum(-1) / mask.sum(-1).clamp_min(1.0)", "q = (mask * z2).sum(-1) / mask.shape[-1]",
           E3, "mask ignored: divides by I, not max(1, Σm)"),
    Mutant("field-variance-clamp", FIELD, "var = torch.clamp(error_var, min=0.0)", "var = error_var",
           E3, "clamp dropped: a negative stage variance is not read as 0"),
    Mutant("field-entropy-upper", FIELD, "+ 1e-6), 0.0, 2.0)", "+ 1e-6), 0.0, 2.5)",
           E4, "clamp bound moved: H_e ≤ 2"),
    Mutant("field-entropy-lower", FIELD, "+ 1e-6), 0.0, 2.0)", "+ 1e-6), -1.0, 2.0)",
           E4, "clamp bound moved: H_e ≥ 0"),
    Mutant("field-entropy-2pie", FIELD, "2 * math.pi * math.e * var.mean(-1)", "2 * math.pi * var.mean(-1)",
           E4, "constant nudged: 2πe"),
    Mutant("field-entropy-eps", FIELD, "var.mean(-1) + 1e-6)", "var.mean(-1) + 1e-3)",
           E4, "constant nudged: the log's 1e-6"),
    Mutant("field-entropy-half", FIELD, "0.5 * torch.log(", "torch.log(",
           E4, "constant nudged: ½ log"),
    Mutant("field-alpha-sign", FIELD, "self.tau_0 * (1 + self.alpha * entropy)", "self.tau_0 * (1 - self.alpha * entropy)",
           E4, "sign flipped: 1 + α H_e"),
    Mutant("field-tau-eff-mix", FIELD, "0.3 * tau_cls + 0.7 * adaptive_tau", "0.3 * tau_cls + 0.6 * adaptive_tau",
           E4, "constant nudged: 0.7·adaptive_tau"),
    Mutant("field-surprise-sign", FIELD, "torch.sigmoid((error_norm - tau_eff) / gamma)", "torch.sigmoid((tau_eff - error_norm) / gamma)",
           E4, "sign flipped: n − τ_eff"),
    Mutant("field-surprise-temperature", FIELD, "torch.sigmoid((error_norm - tau_eff) / gamma)", "torch.sigmoid(error_norm - tau_eff)",
           E4, "term dropped: the temperature γ"),
    Mutant("field-ltc-scale", FIELD, "(1 + surprise * self.surprise_scale)", "(1 + surprise)",
           E5, "term dropped: the surprise scale s"),
    Mutant("field-ltc-tau-min", FIELD, "cfg.tau_min, cfg.tau_max)", "None, cfg.tau_max)",
           E5, "clamp bound dropped: τ ≥ tau_min"),
    Mutant("field-ltc-tau-max", FIELD, "cfg.tau_min, cfg.tau_max)", "cfg.tau_min, None)",
           E5, "clamp bound dropped: τ ≤ tau_max"),
    Mutant("field-ltc-switch", FIELD, "tau = self.tau_sys.expand_as(surprise)", "tau = self.tau_sys / (1 + surprise * self.surprise_scale)",
           E5, "switch ignored: ltc_enabled=False"),
    Mutant("field-fast-weights-switch", FIELD, "if cfg.fast_weights:", "if True:",
           E8, "switch ignored: fast_weights=False"),
    Mutant("field-sleep-switch", FIELD, "if cfg.sleep_enabled:", "if True:",
           E9, "switch ignored: sleep_enabled=False"),
    Mutant("field-kappa", FIELD, "(1 + self.kappa * surprise)", "(1 + self.kappa)",
           E6, "term dropped: κS → κ"),
    Mutant("field-drive-imputed", FIELD, "* (x_tilde @ self.B)", "* (x @ self.B)",
           E6, "mask ignored: the drive reads x, not x̃"),
    Mutant("field-target-error", FIELD, "u = drive + error @ self.W + torch.bmm", "u = drive + torch.bmm",
           E6, "term dropped: e W"),
    Mutant("field-target-fast-weights", FIELD, "u = drive + error @ self.W + torch.bmm(U, xV.unsqueeze(-1)).squeeze(-1)", "u = drive + error @ self.W",
           E6, "term dropped: U (Vᵀ x̃)"),
    Mutant("field-target-xV", FIELD, "xV = x_tilde @ self.V", "xV = x @ self.V",
           E6, "mask ignored: Vᵀ x, not Vᵀ x̃"),
    Mutant("field-dh-tau", FIELD, "dh = (torch.tanh(u) - h) / tau.unsqueeze(-1)", "dh = torch.tanh(u) - h",
           E6, "term dropped: 1/τ"),
    Mutant("field-dh-leak", FIELD, "dh = (torch.tanh(u) - h) / tau.unsqueeze(-1)", "dh = (torch.tanh(u) - 0.5 * h) / tau.unsqueeze(-1)",
           E6, "constant nudged: the leak −h"),
    Mutant("field-hebb-surprise", FIELD, "gain = (self.eta * surprise.unsqueeze(-1)) * h", "gain = self.eta * h",
           E8, "term dropped: S in η S"),
    Mutant("field-hebb-h", FIELD, "gain = (self.eta * surprise.unsqueeze(-1)) * h", "gain = self.eta * surprise.unsqueeze(-1)",
           E8, "term dropped: h in h ⊗ e V"),
    Mutant("field-hebb-error", FIELD, "(error @ self.V).unsqueeze(1)", "(x_tilde @ self.V).unsqueeze(1)",
           E8, "e V replaced by x̃ V"),
    Mutant("field-hebb-sign", FIELD, "dU = hebb - forget", "dU = -hebb - forget",
           E8, "sign flipped: the Hebbian term"),
    Mutant("field-forget-adaptive", FIELD, "(1 + cfg.adaptive_forgetting_scale * surprise)", "(1 + cfg.adaptive_forgetting_scale)",
           E8, "term dropped: S in 1 + k_f S"),
    Mutant("field-forget-anchor", FIELD, "forget[:, None, None] * (U - U_target)", "forget[:, None, None] * U",
           E8, "term dropped: forgetting toward U_target"),
    Mutant("field-homeostasis-relu", FIELD, "over = norm_U > cfg.target_norm", "over = norm_U > 0.5 * cfg.target_norm",
           E8H, "relu's kink moved: acts below N"),
    Mutant("field-homeostasis-bound", FIELD, "1 - cfg.target_norm / safe_norm", "1 - 0.9 * cfg.target_norm / safe_norm",
           E8H, "constant nudged: N"),
    Mutant("field-homeostasis-rate", FIELD, "homeo = cfg.homeostasis_rate * torch.where", "homeo = 0.5 * cfg.homeostasis_rate * torch.where",
           E8H, "constant nudged: ν"),
    Mutant("field-homeostasis-sign", FIELD, "- homeo[:, None, None] * U", "+ homeo[:, None, None] * U",
           E8H, "sign flipped: the norm bound"),
    Mutant("field-sleep-gate-sign", FIELD, "(cfg.min_surprise_for_sleep - avg_surprise) / gamma", "(avg_surprise - cfg.min_surprise_for_sleep) / gamma",
           E9, "sign flipped: S_min − avg_surprise"),
    Mutant("field-sleep-temperature", FIELD, "torch.sigmoid((cfg.min_surprise_for_sleep - avg_surprise) / gamma)", "torch.sigmoid(cfg.min_surprise_for_sleep - avg_surprise)",
           E9, "term dropped: the temperature γ"),
    Mutant("field-sleep-rate", FIELD, "(cfg.sleep_rate * sleep_gate)", "(cfg.forgetting_rate * sleep_gate)",
           E9, "rate exchanged: ζ → λ"),
    Mutant("field-sleep-direction", FIELD, "dU_target = decay_U_target * (U - U_target)", "dU_target = decay_U_target * U",
           E9, "term dropped: −U_target"),
    Mutant("field-error-rate", FIELD, "r_err = cfg.error_smoothing / cfg.time_step", "r_err = cfg.surprise_smoothing / cfg.time_step",
           E10, "rate exchanged: β → β_s"),
    Mutant("field-error-var-dev", FIELD, "d_error_var = r_err * (dev.square() - error_var)", "d_error_var = r_err * (error.square() - error_var)",
           E10, "e² in place of (e − error_mean)²"),
    Mutant("field-error-var-clamped", FIELD, "d_error_var = r_err * (dev.square() - error_var)", "d_error_var = r_err * (dev.square() - var)",
           E10, "the rate reads the clamped variance"),
    Mutant("field-surprise-rate", FIELD, "r_surprise = cfg.surprise_smoothing / cfg.time_step", "r_surprise = cfg.error_smoothing / cfg.time_step",
           E10, "rate exchanged: β_s → β"),
    Mutant("field-habituation-saturation", FIELD, "target = torch.clamp(error_norm, max=cfg.max_adaptive_tau)", "target = error_norm",
           E10, "clamp dropped: min(n, θ_max)"),
    Mutant("field-habituation-rate", FIELD, "r_habituation = cfg.habituation_rate / cfg.time_step", "r_habituation = cfg.habituation_rate",
           E10, "term dropped: /Δt_ref"),
    # the self-decay rates c that the ltc-fused step takes implicitly
    Mutant("field-decay-h", FIELD, "decay = (1 / tau.unsqueeze(-1),", "decay = (0.5 / tau.unsqueeze(-1),",
           LF, "constant nudged: c_h = 1/τ"),
    Mutant("field-decay-U", FIELD, "decay_U = (forget + homeo)[:, None, None]", "decay_U = forget[:, None, None]",
           LF, "term dropped: the homeostatic rate in c_U"),
    Mutant("field-decay-U-target", FIELD, "decay_U, decay_U_target, r_err, r_err,", "decay_U, 0.0, r_err, r_err,",
           LF, "term dropped: c of U_target"),
    Mutant("field-decay-error-var", FIELD, "r_err, r_err, r_surprise, r_habituation)", "r_err, 0.0, r_surprise, r_habituation)",
           LF, "term dropped: c of error_var"),
    Mutant("field-decay-adaptive-tau", FIELD, "r_err, r_err, r_surprise, r_habituation)", "r_err, r_err, r_surprise, 0.0)",
           LF, "term dropped: c of adaptive_tau"),
    # -- the fused Euler loop (_euler_kernel.forward_loop, TorchScript) --
    Mutant("euler-prediction-fast-weights", EK, "pred = torch.addmm(torch.mm(hU, Vt), h, C).tanh_()", "pred = torch.mm(h, C).tanh_()",
           E1, "term dropped: U Vᵀ in x̂"),
    Mutant("euler-error-mask", EK, "e = torch.addcmul(mx, ms[i], pred, value=-1)", "e = mx - pred",
           E2, "mask ignored: missing channels carry an error"),
    Mutant("euler-imputation", EK, "xt = torch.addcmul(mx, OM[i], pred)", "xt = mx",
           E2, "mask: missing channels not filled with x̂"),
    Mutant("euler-error-projection", EK, "eWV = torch.addmm(xWV, pred, negWV)", "eWV = xWV",
           E2, "term dropped: −x̂ in e W and e V"),
    Mutant("euler-zscore-observed", EK, "q = (z2 * MC[i]).sum(-1, keepdim=True)", "q = torch.mm(z2, inv_I)",
           E3, "mask ignored: the mean over all channels"),
    Mutant("euler-entropy-upper", EK, "A.log().clamp(0.0, 4.0)", "A.log().clamp(0.0, 3.0)",
           E4, "clamp bound moved: H_e ≤ 2"),
    Mutant("euler-entropy-lower", EK, "A.log().clamp(0.0, 4.0)", "A.log().clamp(-1.0, 4.0)",
           E4, "clamp bound moved: H_e ≥ 0"),
    Mutant("euler-homeostasis-relu", EK, "hom = torch.addcmul(one, rn, negN).clamp_min_(0.0)", "hom = torch.addcmul(one, rn, negN).clamp_min_(-0.5)",
           E8H, "clamp bound moved: relu(1 − N/‖U‖)"),
    Mutant("euler-habituation-saturation", EK, "HZ = torch.cat([Z, hom, n.clamp(max=theta)], 1)", "HZ = torch.cat([Z, hom, n], 1)",
           E10, "clamp dropped: min(n, θ_max)"),
    Mutant("euler-ltc-tau-min", EK, "a = a.clamp(dtlo[i], dthi[i])", "a = a.clamp_min(dtlo[i])",
           E5, "clamp bound dropped: τ ≥ tau_min"),
    Mutant("euler-ltc-tau-max", EK, "a = a.clamp(dtlo[i], dthi[i])", "a = a.clamp_max(dthi[i])",
           E5, "clamp bound dropped: τ ≤ tau_max"),
    Mutant("euler-kappa", EK, "base = torch.addcmul(eW, c1, XB)", "base = eW + XB",
           E6, "term dropped: 1 + κS"),
    Mutant("euler-target-error", EK, "base = torch.addcmul(eW, c1, XB)", "base = c1 * XB",
           E6, "term dropped: e W"),
    Mutant("euler-target-fast-weights", EK, "ht = torch.baddbmm(base.unsqueeze(1), XV3, U).tanh_().view(Bn, H)", "ht = base.tanh().view(Bn, H)",
           E6, "term dropped: U (Vᵀ x̃)"),
    Mutant("euler-hidden-leak", EK, "h_new = torch.lerp(h, ht, a)", "h_new = h + a * ht",
           EU, "term dropped: −(Δt/τ) h"),
    Mutant("euler-hebb-h", EK, "gain = dtS * h * eta", "gain = dtS * eta",
           E8, "term dropped: h in h ⊗ e V"),
    Mutant("euler-hebb-sign", EK, "addcmul_(eV.unsqueeze(-1), gain.unsqueeze(1))", "addcmul_(eV.unsqueeze(-1), gain.unsqueeze(1), value=-1.0)",
           E8, "sign flipped: the Hebbian term"),
    Mutant("euler-mix-sign", EK, "Mix = torch.addmm(eye4, kFHC, basis)", "Mix = torch.addmm(eye4, kFHC, basis, alpha=-1.0)",
           EU, "sign flipped: forgetting, homeostasis and sleep"),
    Mutant("euler-variance-read", EK, "evc = ev.clamp_min(0.0)", "evc = ev",
           E3, "error_var read as it is, not max(error_var, 0)"),
    Mutant("euler-error-mean", EK, "em_n = torch.lerp(em, e, dtr[i])", "em_n = torch.lerp(em, dev, dtr[i])",
           E10, "e − error_mean in place of e"),
    Mutant("euler-error-var", EK, "ev_n = torch.lerp(ev, dev2, dtr[i])", "ev_n = torch.lerp(ev, e * e, dtr[i])",
           E10, "e² in place of (e − error_mean)²"),
    Mutant("euler-surprise-rates", EK, "sc_n = torch.lerp(sc, tgt, dtR[i])", "sc_n = torch.lerp(sc, tgt, dtr[i])",
           E10, "rate exchanged: β_s, ρ → β"),
    Mutant("euler-padding", EK, "h_new = torch.where(keep, h, h_new)", "h_new = h_new",
           EU, "padding: h not selected at Δt = 0",
           equivalent="at Δt = 0 the step is already the identity for finite values: lerp(h, h̃, 0) = h + 0·(h̃ − h) = h "
                      "exactly; x (padding included) and the state are checked finite on entry, so h̃ is finite"),
    # -- the fused Euler preparation (_fast_euler: scalar maps, constants, per-step factors) --
    Mutant("maps-tau-eff-mix", FE, "torch.stack([-0.7 * ig, zero]),", "torch.stack([-0.6 * ig, zero]),",
           E4, "constant nudged: 0.7·adaptive_tau"),
    Mutant("maps-alpha-sign", FE, "torch.stack([-0.15 * tau_0 * f.alpha * ig, zero]),", "torch.stack([0.15 * tau_0 * f.alpha * ig, zero]),",
           E4, "sign flipped: 1 + α H_e"),
    Mutant("maps-tau0", FE, "bY = torch.stack([-0.3 * tau_0 * ig,", "bY = torch.stack([-0.3 * ig,",
           E4, "term dropped: τ₀"),
    Mutant("maps-sleep-sign", FE, "torch.stack([zero, -ig]),", "torch.stack([zero, ig]),",
           E9, "sign flipped: S_min − avg_surprise"),
    Mutant("maps-ltc-scale", FE, "s_col = f.surprise_scale * inv_ts if", "s_col = inv_ts if",
           E5, "term dropped: the surprise scale s"),
    Mutant("maps-forget-adaptive", FE, "zero + lam * cfg.adaptive_forgetting_scale", "zero + lam",
           E8, "term dropped: k_f"),
    Mutant("maps-forget-switch", FE, "lam = cfg.forgetting_rate if fw else 0.0", "lam = cfg.forgetting_rate",
           E8, "switch ignored: fast_weights=False still forgets"),
    Mutant("maps-sleep-switch", FE, "zeta = cfg.sleep_rate if cfg.sleep_enabled else 0.0", "zeta = cfg.sleep_rate",
           E9, "switch ignored: sleep_enabled=False"),
    Mutant("maps-ltc-switch", FE, "if cfg.ltc_enabled else zero", "if True else zero",
           E5, "switch ignored: ltc_enabled=False"),
    Mutant("maps-kappa", FE, "f.kappa, one, zero]),", "zero, one, zero]),",
           E6, "term dropped: κS"),
    Mutant("maps-homeostasis-rate", FE, "zero, zero, zero + nu, zero", "zero, zero, zero + 0.5 * nu, zero",
           E8H, "constant nudged: ν"),
    Mutant("maps-sleep-rate", FE, "zero, zero + zeta, zero", "zero, zero + 0.5 * zeta, zero",
           E9, "constant nudged: ζ"),
    Mutant("maps-forget-base", FE, "bL = torch.stack([inv_ts, zero, zero + lam,", "bL = torch.stack([inv_ts, zero, zero,",
           E8, "term dropped: λ"),
    Mutant("maps-tau-sys", FE, "bL = torch.stack([inv_ts, zero, zero + lam,", "bL = torch.stack([0.5 * inv_ts, zero, zero + lam,",
           E5, "constant nudged: 1/τ_sys"),
    Mutant("consts-2pie", FE, "self.col_I = torch.full((I, 1), _TWO_PI_E / I, **kw)", "self.col_I = torch.full((I, 1), 1.0 / I, **kw)",
           E4, "constant dropped: 2πe"),
    Mutant("consts-zscore-eps", FE, "_EPS_VAR = 1e-6", "_EPS_VAR = 1e-4",
           E3, "constant nudged: the z-score's 1e-6"),
    Mutant("consts-entropy-eps", FE, "_EPS_LOG = 1e-6", "_EPS_LOG = 1e-3",
           E4, "constant nudged: the log's 1e-6"),
    Mutant("consts-norm-bound", FE, "self.negN = torch.tensor(-cfg.target_norm, **kw)", "self.negN = torch.tensor(-0.9 * cfg.target_norm, **kw)",
           E8H, "constant nudged: N"),
    Mutant("consts-forget-anchor", FE, "[[-1.0, 1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0]", "[[-1.0, 0.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0]",
           E8, "term dropped: forgetting toward U_target"),
    Mutant("consts-sleep-direction", FE, "[0.0, 0.0, 1.0, -1.0]]", "[0.0, 0.0, 0.0, -1.0]]",
           E9, "term dropped: U in ζ g (U − U_target)"),
    Mutant("consts-rates", FE, "[cfg.surprise_smoothing / cfg.time_step, cfg.habituation_rate / cfg.time_step]", "[cfg.habituation_rate / cfg.time_step, cfg.surprise_smoothing / cfg.time_step]",
           E10, "rates exchanged: β_s ↔ ρ"),
    Mutant("consts-sleep-step", FE, "self.dt8_mask = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 0.0", "self.dt8_mask = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 0.0",
           EU, "term dropped: Δt on the sleep rate"),
    Mutant("prep-error-rate", FE, "self.dtr = dt1 * (cfg.error_smoothing / cfg.time_step)", "self.dtr = dt1 * (cfg.surprise_smoothing / cfg.time_step)",
           E10, "rate exchanged: β → β_s"),
    Mutant("prep-ltc-tau-max", FE, "self.dtlo = dt1 * (1 / cfg.tau_max)", "self.dtlo = dt1 * (0.5 / cfg.tau_max)",
           E5, "clamp bound moved: τ ≤ tau_max"),
    Mutant("prep-ltc-tau-min", FE, "self.dthi = dt1 * (1 / cfg.tau_min)", "self.dthi = dt1 * (2 / cfg.tau_min)",
           E5, "clamp bound moved: τ ≥ tau_min"),
    Mutant("prep-masked-input", FE, "self.MX = ms * xs", "self.MX = xs",
           E2, "mask ignored: m ⊙ x"),
    Mutant("prep-mask-weights", FE, "return m / m.sum(-1, keepdim=True).clamp_min(1.0)", "return m / m.shape[-1]",
           E3, "mask ignored: divides by I, not max(1, Σm)"),
    Mutant("prep-habituation-bound", FE, "float(self.cfg.max_adaptive_tau),", "float(self.cfg.max_adaptive_tau) + 0.5,",
           E10, "clamp bound moved: θ_max"),
    Mutant("prep-interpolation", FE, "x = torch.cat([x[:, :1], x[:, :-1]], 1)", "x = x",
           EU, "linear/cubic: the Euler step reads x_i, not the path at the start of the step"),
    Mutant("cell-step-ltc-tau-min", FE, "1 / cfg.tau_max, 1 / cfg.tau_min]", "1 / cfg.tau_max, 2 / cfg.tau_min]",
           E5, "clamp bound moved in DREAMCell's scripted step: τ ≥ tau_min"),
    Mutant("cell-step-error-rate", FE, "[cfg.error_smoothing / cfg.time_step, 1 / cfg.tau_max", "[cfg.surprise_smoothing / cfg.time_step, 1 / cfg.tau_max",
           E10, "rate exchanged in DREAMCell's scripted step: β → β_s"),
    # -- the hand-written backward of the fused Euler path --
    Mutant("backward-lerp", EK, "g_ht = gh * As[i]", "g_ht = gh",
           BW, "term dropped: ∂h_next/∂h̃ = Δt/τ"),
    Mutant("backward-hebb", EK, "g_dtS = (tg * h3.view(Bn, H)).sum(-1, keepdim=True)", "g_dtS = tg.sum(-1, keepdim=True)",
           BW, "term dropped: h in ∂/∂(Δt·S)"),
    Mutant("backward-sigmoid", FE, "D2 = torch.cat([Zs - Zs * Zs, hf,", "D2 = torch.cat([Zs, hf,",
           BW, "σ' = σ(1 − σ) → σ"),
    Mutant("backward-sqrt", FE, "F2 = torch.where(n > 0, 0.5 / n, 0.0)", "F2 = torch.where(n > 0, 1.0 / n, 0.0)",
           BW, "constant nudged: d sqrt(q) = 1/(2n)"),
    Mutant("backward-entropy-clamp", FE, "F3 = torch.where((Lr >= 0) & (Lr <= 4), 1 / As, 0.0)", "F3 = torch.where(Lr <= 4, 1 / As, 0.0)",
           BW, "clamp ignored in the derivative: H_e ≥ 0"),
    # -- the fused Runge-Kutta stage and step (_rk_kernel, _fast_rk) --
    Mutant("rk-variance-clamp", RK, "var = ev.clamp_min(0.0)", "var = ev",
           E3, "clamp dropped: a negative stage variance is not read as 0"),
    Mutant("rk-error-mask", RK, "e = torch.addcmul(xa, xb, pred, value=-1)", "e = xa - pred",
           E2, "mask ignored: missing channels carry an error"),
    Mutant("rk-imputation", RK, "xt = torch.addcmul(xa, xc, pred)", "xt = xa",
           E2, "mask: missing channels not filled with x̂"),
    Mutant("rk-homeostasis-relu", RK, "nU.clamp_min(N)", "nU.clamp_min(0.5 * N)",
           E8H, "clamp bound moved: relu(1 − N/‖U‖)"),
    Mutant("rk-entropy-upper", RK, "Lr.clamp(0.0, 4.0)", "Lr.clamp(0.0, 3.0)",
           E4, "clamp bound moved: H_e ≤ 2"),
    Mutant("rk-habituation-saturation", RK, "HZ = torch.cat([Z, hom, n.clamp(max=theta)], 1)", "HZ = torch.cat([Z, hom, n], 1)",
           E10, "clamp dropped: min(n, θ_max)"),
    Mutant("rk-ltc-tau-max", RK, "itau = L0.clamp(itau_lo, itau_hi) if ltc else L0", "itau = L0.clamp_max(itau_hi) if ltc else L0",
           E5, "clamp bound dropped: τ ≤ tau_max"),
    Mutant("rk-kappa", RK, "u = torch.addcmul(eW, L5, XB)", "u = torch.add(eW, XB)",
           E6, "term dropped: 1 + κS"),
    Mutant("rk-hidden-tau", RK, "dy.narrow(1, 0, H).mul_(itau)", "dy.narrow(1, 0, H).mul_(1.0)",
           E6, "term dropped: 1/τ"),
    Mutant("rk-hebb-surprise", RK, "gain = S * h * eta", "gain = h * eta",
           E8, "term dropped: S in η S"),
    Mutant("rk-stage-combination", RK, "yi = torch.addcmul(yi, d, ks[j], value=a)", "yi = torch.addcmul(yi, d, ks[j], value=0.5 * a)",
           RKS, "constant nudged: the stage's a_ij"),
    Mutant("rk-step-combination", RK, "yn = torch.addcmul(yn, d, ks[j], value=b)", "yn = torch.addcmul(yn, d, ks[j], value=0.5 * b)",
           RKS, "constant nudged: the step's b_j"),
    Mutant("rk-fast-weights-combination", RK, "Cn = torch.addcmul(Cn, d3, KC[j], value=b)", "Cn = torch.addcmul(Cn, d3, KC[j], value=0.5 * b)",
           RKS, "constant nudged: b_j on U and U_target"),
    Mutant("rk-error-rate", FRK, "torch.full((2 * I,), r_err, **kw)", "torch.full((2 * I,), 0.5 * r_err, **kw)",
           E10, "constant nudged: β/Δt_ref"),
    Mutant("rk-habituation-target", FRK, "self.ML4 = w.ML[[0, 1, 2, 4]]", "self.ML4 = w.ML[[0, 1, 2, 3]]",
           E10, "term dropped: the habituation target min(n, θ_max)"),
    # -- DREAMCell --
    Mutant("cell-mask", CELL, "m = mb.to(ref.dtype)", "m = None",
           E2, "mask ignored by DREAMCell"),
    Mutant("cell-default-dt", CELL, "return self._constant_dt(self.config.time_step, B, ref)", "return self._constant_dt(2 * self.config.time_step, B, ref)",
           EU, "constant nudged: dt=None is time_step"),
    Mutant("cell-float-dt", CELL, "return self._constant_dt(float(dt), B, ref)", "return self._constant_dt(self.config.time_step, B, ref)",
           EU, "a float dt ignored"),
    Mutant("cell-tensor-dt", CELL, "return dt.to(ref).expand(B)", "return dt.to(ref).expand(B).mean().expand(B)",
           EU, "per-sample dt replaced by its mean"),
]
# fmt: on


def apply(m: Mutant, text: str) -> str:
    """``text`` with ``m``'s change; raises ``ValueError`` unless ``m.old`` occurs exactly once."""
    count = text.count(m.old)
    if count != 1:
        raise ValueError(
            f"mutant {m.name}: the snippet {m.old!r} occurs {count} times in {m.file} (expected once); "
            "update the mutant to the current code"
        )
    return text.replace(m.old, m.new)


def validate(mutants: list[Mutant] = MUTANTS, root: Path = ROOT) -> list[str]:
    """Problems of the mutant list: unknown files, snippets not found exactly once, changes that do
    nothing or do not compile, repeated names. Empty when every mutant applies."""
    problems = []
    seen: set[str] = set()
    for m in mutants:
        if m.name in seen:
            problems.append(f"mutant {m.name}: the name is used twice")
        seen.add(m.name)
        path = root / m.file
        if not path.is_file():
            problems.append(f"mutant {m.name}: no file {m.file}")
            continue
        if m.old == m.new:
            problems.append(f"mutant {m.name}: the replacement equals the original")
            continue
        try:
            text = apply(m, path.read_text())
        except ValueError as exc:
            problems.append(str(exc))
            continue
        try:
            compile(text, m.file, "exec")
        except SyntaxError as exc:
            problems.append(f"mutant {m.name}: the mutated {m.file} does not compile: {exc}")
    return problems


class Result(NamedTuple):
    mutant: Mutant
    killed: bool
    by: str  # the first failing test, or what else stopped the run
    seconds: float


_FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.M)
# heavy modules every test run imports: loaded once in this process, before the test runs fork
_PRELOAD = ("torch", "numpy", "scipy.integrate", "scipy.special", "torchdiffeq", "pytest")


def _pytest_args(workdir: Path) -> list[str]:
    return [
        "-x",
        "-q",
        "-p",
        "no:cacheprovider",
        "--rootdir",
        str(workdir),
        "-c",
        str(workdir / "pyproject.toml"),
        *TESTS,
    ]


class _Job:
    """One pytest run of :data:`TESTS` in a copy of the repository, in a child process.

    Where the platform can fork, the child is a fork of this process, which has already imported
    torch and the other heavy modules (a test run then costs about a second instead of five);
    ``dreamode`` and the tests themselves are imported fresh in the child, from the copy.
    Elsewhere the child is a new interpreter.
    """

    def __init__(self, workdir: Path, log: Path) -> None:
        self.workdir, self.log = workdir, log
        self.start = time.perf_counter()
        self.pid = self.proc = None
        if hasattr(os, "fork"):
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                self._child()
            self.pid = pid
        else:
            env = dict(os.environ, PYTHONPATH=str(workdir), PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1")
            env.pop("PYTEST_ADDOPTS", None)
            with open(log, "w") as out:
                cmd = [sys.executable, "-m", "pytest", *_pytest_args(workdir)]
                self.proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)

    def _child(self) -> None:
        code = 99
        try:
            fd = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.chdir(self.workdir)
            sys.dont_write_bytecode = True
            os.environ.pop("PYTEST_ADDOPTS", None)
            os.environ["PYTHONPATH"] = str(self.workdir)
            sys.path[:] = [str(self.workdir)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT]
            import pytest

            code = int(pytest.main(_pytest_args(self.workdir)))
        except BaseException:  # noqa: BLE001 - whatever stops the run is reported through the log
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def poll(self) -> int | None:
        """The exit status once the run has ended, else ``None``."""
        if self.proc is not None:
            return self.proc.poll()
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        return None if pid == 0 else os.waitstatus_to_exitcode(status)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        else:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)

    def outcome(self, status: int) -> tuple[bool, str]:
        """``(passed, the first failing test or the reason)``."""
        if status == 0:
            return True, ""
        text = self.log.read_text(errors="replace")
        found = _FAILED.search(text)
        if found:
            return False, found.group(1)
        tail = text.strip().splitlines()
        return False, f"pytest exit {status}: {tail[-1] if tail else 'no output'}"


def _make_copy(base: Path) -> Path:
    for rel in COPIED:
        src, dst = ROOT / rel, base / rel
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "build"))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    return base


def _check_isolation(workdir: Path) -> None:
    """The copy's dreamode is the one a test run imports (not the repository's)."""
    env = dict(os.environ, PYTHONPATH=str(workdir), PYTHONDONTWRITEBYTECODE="1")
    code = "import dreamode, solvers; print(dreamode.__file__); print(solvers.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=workdir, env=env, capture_output=True, text=True)
    paths = out.stdout.split()
    inside = [Path(p).resolve().is_relative_to(workdir.resolve()) for p in paths]
    if out.returncode != 0 or len(paths) != 2 or not all(inside):
        raise RuntimeError(
            f"mutation_check: the copy in {workdir} does not import its own dreamode: {out.stdout}{out.stderr}"
        )


def _select(names: list[str] | None) -> list[Mutant]:
    if not names:
        return list(MUTANTS)
    chosen = [m for m in MUTANTS if any(fnmatch.fnmatchcase(m.name, pat) for pat in names)]
    if not chosen:
        known = ", ".join(m.name for m in MUTANTS[:5])
        raise SystemExit(f"mutation_check: --only {names} matches no mutant (names such as {known}; see --list)")
    return chosen


def _table(results: list[Result]) -> str:
    w = max(len(r.mutant.name) for r in results)
    we = max(len(r.mutant.equation) for r in results)
    lines = [f"{'mutant':<{w}}  {'equation':<{we}}  {'result':<21}  {'s':>5}  killed by / why equivalent"]
    for r in results:
        m = r.mutant
        if r.killed:
            status, note = "killed", r.by
        elif m.equivalent:
            status, note = "survived (equivalent)", m.equivalent
        else:
            status, note = "SURVIVED", f"no test tells it apart: {m.why}"
        lines.append(f"{m.name:<{w}}  {m.equation:<{we}}  {status:<21}  {r.seconds:5.1f}  {note}")
    return "\n".join(lines)


def _progress_bar(total: int, quiet: bool):
    """``dreamode._progress.progress``, loaded from its file: importing the package here would put
    the repository's ``dreamode`` into the processes that test the copies."""
    spec = importlib.util.spec_from_file_location("_mutation_check_progress", ROOT / "dreamode" / "_progress.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.progress(total=total, desc="mutants", unit="mutant", quiet=quiet)


def run(mutants: list[Mutant], jobs: int, quiet: bool = False) -> list[Result]:
    """Run every mutant (``jobs`` at a time); returns the results in the list's order."""
    os.environ["OMP_NUM_THREADS"] = "1"  # before torch is imported: one thread per test run
    for name in _PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    originals = {m.file: (ROOT / m.file).read_text() for m in mutants}
    tmp = Path(tempfile.mkdtemp(prefix="dreamode-mutants-"))
    started: list[_Job] = []  # every child, so that an interruption leaves none behind
    try:
        free = [_make_copy(tmp / f"w{j}") for j in range(jobs)]
        _check_isolation(free[0])
        base_job = _Job(free[0], tmp / "unmutated.log")
        started.append(base_job)
        while (status := base_job.poll()) is None:
            time.sleep(0.05)
        base = time.perf_counter() - base_job.start
        ok, why = base_job.outcome(status)
        if not ok:
            raise SystemExit(f"mutation_check: the unmutated tests fail ({why}); fix them first")
        if not quiet:
            print(f"unmutated tests pass in {base:.1f} s; {len(mutants)} mutants, {jobs} worker(s)", flush=True)
        timeout = 3 * base + 60

        results: dict[str, Result] = {}
        pending = list(mutants)
        running: dict[str, tuple[_Job, Mutant, Path]] = {}
        with _progress_bar(len(mutants), quiet) as bar:
            while pending or running:
                while pending and free:
                    m, work = pending.pop(0), free.pop()
                    (work / m.file).write_text(apply(m, originals[m.file]))
                    running[m.name] = (_Job(work, tmp / f"{m.name}.log"), m, work)
                    started.append(running[m.name][0])
                done = []
                for name, (job, m, work) in running.items():
                    status = job.poll()
                    elapsed = time.perf_counter() - job.start
                    if status is None and elapsed > timeout:  # a mutant that hangs the tests is caught
                        job.kill()
                        killed, by = True, f"timeout after {timeout:.0f} s"
                    elif status is None:
                        continue
                    else:
                        passed, by = job.outcome(status)
                        killed = not passed
                    (work / m.file).write_text(originals[m.file])
                    results[name] = Result(m, killed, by, elapsed)
                    done.append(name)
                    free.append(work)
                    bar.update(1)
                    if not killed and not m.equivalent:
                        bar.write(f"survived: {m.name} ({m.why})")
                for name in done:
                    del running[name]
                if not done:
                    time.sleep(0.05)
        return [results[m.name] for m in mutants]
    finally:
        for job in started:
            with contextlib.suppress(OSError, ChildProcessError):
                if job.poll() is None:
                    job.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Mutate the DREAM cell's equations one at a time and run the tests that cover them."
    )
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--validate", action="store_true", help="only check that every mutant applies, and exit")
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help="run only the mutants of this name (shell pattern; may be repeated)",
    )
    parser.add_argument("-j", "--jobs", type=int, default=1, metavar="N", help="mutants run at a time (default 1)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"-j must be a positive number of workers, got {args.jobs}")
    problems = validate()
    if problems:
        print("mutation_check: the mutant list does not apply to the current code:", *problems, sep="\n  ")
        return 2
    mutants = _select(args.only)
    if args.validate:
        print(f"{len(MUTANTS)} mutants apply: each snippet occurs exactly once and the mutated file compiles")
        return 0
    if args.list:
        for m in mutants:
            eq = f"  [equivalent: {m.equivalent}]" if m.equivalent else ""
            print(f"{m.name:<34} {m.equation:<24} {m.file:<26} {m.why}{eq}")
        print(f"{len(mutants)} mutants")
        return 0
    t0 = time.perf_counter()
    results = run(mutants, args.jobs, args.quiet)
    print(_table(results))
    killed = sum(r.killed for r in results)
    equivalent = sum(not r.killed and r.mutant.equivalent is not None for r in results)
    survived = len(results) - killed - equivalent
    print(
        f"\n{len(results)} mutants: {killed} killed, {survived} survived, {equivalent} equivalent "
        f"(survived, with the reason above); {time.perf_counter() - t0:.0f} s with {args.jobs} worker(s)"
    )
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
