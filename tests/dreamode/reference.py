"""An independent NumPy float64 re-computation of the DREAM cell, written from the equations of
docs/dream-cell.md ("The vector field", items 1-10).

Nothing here calls ``dreamode``'s numerics: the parameters are read off a field as plain arrays
(:func:`params_from_field`) and every equation of that page is written out again, per sample,
with the Euler step in the original DREAM-NN form

    h_next = (1 - Δt/τ)·h + (Δt/τ)·h_target

and the running statistics as EMAs ``(1 - β·Δt/Δt_ref)·old + (β·Δt/Δt_ref)·new``.

The habituation target saturates, ``d adaptive_tau/dt = (ρ/Δt_ref)(min(n, θ_max) − adaptive_tau)``
(item 10); the state itself is not clamped.

The semi-implicit ``ltc-fused`` step (docs/dream-cell.md, the solver table) is written out too: each component's
derivative is split as ``dz/dt = g − c·z`` with ``g`` free of ``z`` (read off the items: for ``h``,
``g = h_target/τ`` and ``c = 1/τ``), and ``z_next = (z + Δt·g) / (1 + Δt·c)``, which for ``h`` is
the page's ``(h + (Δt/τ)·h_target) / (1 + Δt/τ)``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

STATE_FIELDS = ("h", "U", "U_target", "error_mean", "error_var", "avg_surprise", "adaptive_tau")
PARAM_NAMES = ("C", "B", "W", "eta", "V", "tau_sys", "surprise_scale", "gamma", "tau_0", "alpha", "kappa")


def params_from_field(field: Any) -> dict[str, np.ndarray]:
    """The field's parameters as float64 NumPy arrays (constrained values of the scalars)."""
    out = {}
    for name in PARAM_NAMES:
        out[name] = getattr(field, name).detach().cpu().to(torch.float64).numpy().copy()
    return out


def _sigmoid(v: float) -> float:
    if v >= 0:
        return 1.0 / (1.0 + math.exp(-v))
    ev = math.exp(v)
    return ev / (1.0 + ev)


def initial_state(config: Any, batch_size: int) -> dict[str, np.ndarray]:
    """docs/dream-cell.md, "State": zeros, error_var = 1, adaptive_tau = base_threshold."""
    B, I, H, R = batch_size, config.input_dim, config.hidden_dim, config.rank
    return {
        "h": np.zeros((B, H)),
        "U": np.zeros((B, H, R)),
        "U_target": np.zeros((B, H, R)),
        "error_mean": np.zeros((B, I)),
        "error_var": np.ones((B, I)),
        "avg_surprise": np.zeros(B),
        "adaptive_tau": np.full(B, float(config.base_threshold)),
    }


def field_quantities(p: dict, cfg: Any, z: dict, x: np.ndarray, m: np.ndarray | None) -> dict[str, Any]:
    """Every quantity of the vector field for ONE sample (``z`` holds unbatched arrays, ``x`` and ``m`` are (I,))."""
    h, U, U_target = z["h"], z["U"], z["U_target"]
    error_mean, error_var = z["error_mean"], z["error_var"]
    avg_surprise, adaptive_tau = float(z["avg_surprise"]), float(z["adaptive_tau"])
    C, Bm, W, V, eta = p["C"], p["B"], p["W"], p["V"], p["eta"]
    tau_sys, s_scale, gamma = float(p["tau_sys"]), float(p["surprise_scale"]), float(p["gamma"])
    tau_0, alpha, kappa = float(p["tau_0"]), float(p["alpha"]), float(p["kappa"])
    if m is None:
        m = np.ones_like(x)

    # 1. prediction through C + U Vᵀ, the per-sample (H, I) fast-weight matrix
    fast = U @ V.T
    x_hat = np.tanh(h @ (C + fast))
    # 2. imputation and error
    x_tilde = m * x + (1.0 - m) * x_hat
    e = m * (x - x_hat)
    # 3. RMS z-score over observed channels (the variance read as max(error_var, 0))
    var = np.maximum(error_var, 0.0)
    n = math.sqrt(float(np.sum(m * (e - error_mean) ** 2 / (var + 1e-6))) / max(1.0, float(np.sum(m))))
    # 4. surprise gate
    H_e = min(max(0.5 * math.log(2 * math.pi * math.e * float(np.mean(var)) + 1e-6), 0.0), 2.0)
    tau_cls = tau_0 * (1.0 + alpha * H_e)
    tau_eff = 0.3 * tau_cls + 0.7 * adaptive_tau
    S = _sigmoid((n - tau_eff) / gamma)
    # 5. liquid time constant
    if cfg.ltc_enabled:
        tau = min(max(tau_sys / (1.0 + S * s_scale), cfg.tau_min), cfg.tau_max)
    else:
        tau = tau_sys
    # 6. target
    u = (1.0 + kappa * S) * (x_tilde @ Bm) + e @ W + U @ (V.T @ x_tilde)
    h_target = np.tanh(u)
    # 8. fast weights
    if cfg.fast_weights:
        norm_U = math.sqrt(float(np.sum(U * U)))
        # The soft norm bound ν·relu(1 − N/‖U‖_F) of item 8.
        homeo = cfg.homeostasis_rate * max(1.0 - cfg.target_norm / norm_U, 0.0) if norm_U > 0 else 0.0
        forget = cfg.forgetting_rate * (1.0 + cfg.adaptive_forgetting_scale * S)
        hebb = (eta * S)[:, None] * np.outer(h, e @ V)
        dU = -forget * (U - U_target) + hebb - homeo * U
    else:
        norm_U = homeo = forget = 0.0
        hebb = np.zeros_like(U)
        dU = np.zeros_like(U)
    # 9. sleep consolidation
    if cfg.sleep_enabled:
        g = _sigmoid((cfg.min_surprise_for_sleep - avg_surprise) / gamma)
        sleep = cfg.sleep_rate * g
    else:
        sleep = 0.0
    dU_target = sleep * (U - U_target)
    return {
        "x_hat": x_hat,
        "e": e,
        "n": n,
        "S": S,
        "tau": tau,
        "h_target": h_target,
        "dU": dU,
        "dU_target": dU_target,
        "norm_U": norm_U,
        # the rates of the linear self-decays, and the Hebbian term, for the ltc-fused step
        "forget": forget,
        "homeo": homeo,
        "hebb": hebb,
        "sleep": sleep,
    }


def ltc_fused_step(p: dict, cfg: Any, z: dict, x: np.ndarray, m: np.ndarray | None, dt: float) -> tuple[dict, dict]:
    """One semi-implicit ``ltc-fused`` step for ONE sample: ``z_next = (z + Δt·g) / (1 + Δt·c)``."""
    q = field_quantities(p, cfg, z, x, m)
    r_e = cfg.error_smoothing / cfg.time_step
    r_s = cfg.surprise_smoothing / cfg.time_step
    r_h = cfg.habituation_rate / cfg.time_step
    U, U_target = z["U"], z["U_target"]
    # (g, c) of each component, read off the vector field: dz/dt = g − c·z
    parts = {
        "h": (q["h_target"] / q["tau"], 1.0 / q["tau"]),
        "U": (q["hebb"] + q["forget"] * U_target, q["forget"] + q["homeo"]),
        "U_target": (q["sleep"] * U, q["sleep"]),
        "error_mean": (r_e * q["e"], r_e),
        "error_var": (r_e * (q["e"] - z["error_mean"]) ** 2, r_e),
        "avg_surprise": (r_s * q["S"], r_s),
        "adaptive_tau": (r_h * min(q["n"], cfg.max_adaptive_tau), r_h),
    }
    z_next = {k: (z[k] + dt * g) / (1.0 + dt * c) for k, (g, c) in parts.items()}
    return z_next, q


def euler_step(
    p: dict, cfg: Any, z: dict, x: np.ndarray, m: np.ndarray | None, dt: float, *, saturate_target: bool = True
) -> tuple[dict, dict]:
    """One reference Euler step of length ``dt`` for ONE sample: ``(z_next, quantities)``."""
    q = field_quantities(p, cfg, z, x, m)
    a = dt / q["tau"]
    r_e = cfg.error_smoothing * dt / cfg.time_step
    r_s = cfg.surprise_smoothing * dt / cfg.time_step
    r_h = cfg.habituation_rate * dt / cfg.time_step
    dev = q["e"] - z["error_mean"]
    target = min(q["n"], cfg.max_adaptive_tau) if saturate_target else q["n"]
    z_next = {
        "h": (1.0 - a) * z["h"] + a * q["h_target"],
        "U": z["U"] + dt * q["dU"],
        "U_target": z["U_target"] + dt * q["dU_target"],
        "error_mean": (1.0 - r_e) * z["error_mean"] + r_e * q["e"],
        "error_var": (1.0 - r_e) * z["error_var"] + r_e * dev**2,
        "avg_surprise": (1.0 - r_s) * float(z["avg_surprise"]) + r_s * q["S"],
        "adaptive_tau": (1.0 - r_h) * float(z["adaptive_tau"]) + r_h * target,
    }
    return z_next, q


def reference_euler(
    params: dict[str, np.ndarray],
    config: Any,
    x: np.ndarray,
    dt: np.ndarray,
    mask: np.ndarray | None = None,
    lengths: np.ndarray | None = None,
    state0: dict[str, np.ndarray] | None = None,
    *,
    saturate_target: bool = True,
    return_diag: bool = False,
    rule: str = "euler",
):
    """Run the reference Euler rule (``rule="ltc-fused"``: the semi-implicit step) over a batch,
    one step per observation.

    Args:
        params: :func:`params_from_field` of the layer.
        config: the layer's ``DREAMConfig`` (only its fields are read).
        x: ``(B, T, I)``; dt: ``(B, T)`` step into each observation; mask: ``(B, T, I)`` of 0/1;
        lengths: ``(B,)``; state0: a dict of batched arrays (default: the initial state of :func:`initial_state`).

    Returns:
        ``outputs`` ``(B, T, H)`` (zero past each length), the final state dict (batched, at each
        sample's last real observation), and with ``return_diag`` a dict of ``(B, T)`` arrays
        ``S``, ``n``, ``tau``, ``norm_U`` (‖U‖_F before the step; NaN past lengths).
    """
    x = np.asarray(x, dtype=np.float64)
    dt = np.asarray(dt, dtype=np.float64)
    Bn, T, _ = x.shape
    if state0 is None:
        state0 = initial_state(config, Bn)
    state0 = {k: np.asarray(v, dtype=np.float64) for k, v in state0.items()}
    outputs = np.zeros((Bn, T, config.hidden_dim))
    final = {k: np.empty_like(v) for k, v in state0.items()}
    diag = {k: np.full((Bn, T), np.nan) for k in ("S", "n", "tau", "norm_U")}
    for b in range(Bn):
        z = {k: v[b].copy() for k, v in state0.items()}
        L = T if lengths is None else int(lengths[b])
        for i in range(L):
            m = None if mask is None else np.asarray(mask[b, i], dtype=np.float64)
            if rule == "euler":
                z, q = euler_step(params, config, z, x[b, i], m, float(dt[b, i]), saturate_target=saturate_target)
            else:
                z, q = ltc_fused_step(params, config, z, x[b, i], m, float(dt[b, i]))
            outputs[b, i] = z["h"]
            for k in diag:
                diag[k][b, i] = q[k]
        for k in final:
            final[k][b] = z[k]
    if return_diag:
        return outputs, final, diag
    return outputs, final


def rel_dev(a: Any, b: Any) -> float:
    """``max|a − b| / max|b|`` (∞-norm relative deviation of ``a`` from ``b``; ``b`` all zero: absolute).

    The criterion of the tests: per compared tensor, deviation relative to the tensor's largest
    entry, which is robust to entries that pass through zero.
    """
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.detach().cpu().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    if a.size == 0:
        return 0.0
    assert np.isfinite(a).all() and np.isfinite(b).all()
    scale = float(np.abs(b).max())
    return float(np.abs(a - b).max()) / (scale if scale > 0 else 1.0)


def autograd_nodes(t: torch.Tensor) -> int:
    """Autograd nodes reachable from ``t`` (the graph a backward from it would walk)."""
    seen, todo = set(), [t.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        todo.extend(n for n, _ in node.next_functions)
    return len(seen)
