"""A damped pendulum observed at irregular, noisy times: physics with unknown parameters + a DREAM correction.

Run: python examples/hybrid_oscillator.py --out out/hybrid_oscillator        (add --quick for a few seconds)

Ground truth: θ'' = -ω² sin θ - γ θ' (ω = 1.5, γ = 0.2, θ(0) = 2 rad, θ'(0) = 0) from scipy's
DOP853 at rtol = atol = 1e-12. Only θ is observed, at random times in the training window, with
Gaussian noise. The model knows the form of the physics, not ω and γ; it is fitted (1) as pure
physics, then (2) with a DREAM correction on θ'', and extrapolated past the window. The fit is
repeated with euler, rk4, dopri5 and dopri5 + adjoint to compare accuracy and cost. Two extras
(full run only): the small-angle physics -ω² θ, which misses the nonlinearity, with and without
the correction; and the PINN route: an MLP θ(t) fitted with `collocation_loss`.

Writes hybrid_oscillator.json, hybrid_oscillator.md, oscillator_fit.png and oscillator_solvers.png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import scipy.integrate  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import solvers  # noqa: E402
from dreamode import DREAMConfig  # noqa: E402
from dreamode.physics import HybridField, ParametricPhysics, collocation_loss, collocation_times  # noqa: E402

OMEGA, GAMMA = 1.5, 0.2
X0 = (2.0, 0.0)
START = {"omega": 1.2, "damping": 0.5}  # 20% and 150% off
SOLVERS = {
    "euler": {"method": "euler", "step_size": 0.05},
    "rk4": {"method": "rk4", "step_size": 0.1},
    "dopri5": {"method": "dopri5", "rtol": 1e-6, "atol": 1e-8},
    "dopri5-adjoint": {"method": "dopri5", "rtol": 1e-6, "atol": 1e-8, "adjoint": True},
}


def pendulum(t, x, p):
    """θ'' = -ω² sin θ - γ θ' as a first-order system in (θ, θ')."""
    theta, v = x[..., 0], x[..., 1]
    return torch.stack([v, -(p.omega**2) * torch.sin(theta) - p.damping * v], dim=-1)


def small_angle(t, x, p):
    """θ'' = -ω² θ - γ θ': the linearised pendulum (misses the sin nonlinearity at 2 rad)."""
    theta, v = x[..., 0], x[..., 1]
    return torch.stack([v, -(p.omega**2) * theta - p.damping * v], dim=-1)


def ground_truth(t: np.ndarray) -> np.ndarray:
    """θ(t) of the true pendulum, scipy DOP853 at rtol = atol = 1e-12."""

    def rhs(_, y):
        return [y[1], -(OMEGA**2) * np.sin(y[0]) - GAMMA * y[1]]

    sol = scipy.integrate.solve_ivp(rhs, (0.0, float(t[-1])), X0, method="DOP853", t_eval=t, rtol=1e-12, atol=1e-12)
    return sol.y[0]


def make_data(n_obs: int, t_train: float, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.sort(rng.uniform(0.0, t_train, n_obs))
    t = t[np.diff(t, prepend=0.0) > 1e-3]  # strictly increasing, after 0
    return t, ground_truth(t) + noise * rng.standard_normal(len(t))


def make_model(physics_fn, hidden: int, seed: int) -> HybridField:
    torch.manual_seed(seed)
    physics = ParametricPhysics(physics_fn, dtype=torch.float64, **START)
    # Time units of seconds, a period of ~4: the default 0.1 time_step; τ_sys = 1 so h follows the state.
    cfg = DREAMConfig(input_dim=2, hidden_dim=hidden, rank=2, ltc_tau_sys=1.0)
    scale = torch.tensor([2.0, 3.0], dtype=torch.float64)  # θ, θ' -> O(1)
    # The correction acts on θ'' only (θ' = v is kinematics, not physics to learn).
    return HybridField(physics, cfg, physical_dim=2, inputs=lambda t, x: x / scale, correct=[1], dtype=torch.float64)


def simulate(field: HybridField, t: torch.Tensor, spec: dict) -> tuple[torch.Tensor, tuple, int]:
    """θ at the times ``t`` (starting at 0), the solution and its forward NFE."""
    y0 = field.initial_state(torch.tensor([X0], dtype=torch.float64))
    sol = solvers.solve(field, y0, t, **spec)
    return sol.ys[0][:, 0, 0], sol.ys, sol.stats.nfe or 0


def fit(
    field: HybridField,
    t_obs: np.ndarray,
    y_obs: np.ndarray,
    spec: dict,
    *,
    correction: bool,
    physics_evals: int,
    hybrid_iters: int,
    lr: float,
    penalty: float,
) -> dict:
    """Stage 1: L-BFGS on ω, γ (pure physics; first half of the window, then all of it).
    Stage 2 (``correction``): Adam on the DREAM, the coupling and (slower) ω, γ."""
    t_all = torch.as_tensor(np.concatenate([[0.0], t_obs]))
    y_all = torch.as_tensor(y_obs)
    counts = {"forward_nfe": 0}
    field.reset_nfe()
    t0, c0 = time.perf_counter(), time.process_time()
    field.correction = False
    for frac in (0.5, 1.0):
        n = max(3, int(np.searchsorted(t_obs, frac * t_obs[-1], side="right")))
        t, y = t_all[: n + 1], y_all[:n]
        opt = torch.optim.LBFGS(
            field.physics_parameters(),
            lr=1.0,
            max_iter=physics_evals // 2,
            max_eval=physics_evals // 2,
            tolerance_grad=1e-10,
            tolerance_change=1e-12,
            line_search_fn="strong_wolfe",
        )

        def closure(t=t, y=y, opt=opt):
            opt.zero_grad()
            theta, _, nfe = simulate(field, t, spec)
            counts["forward_nfe"] += nfe
            loss = (theta[1:] - y).square().mean()
            loss.backward()
            return loss

        opt.step(closure)
    physics_only = {k: float(v) for k, v in field.physics.params.as_dict().items()}
    field.correction = correction
    if correction:
        opt = torch.optim.Adam(
            [{"params": field.learned_parameters(), "lr": lr}, {"params": field.physics_parameters(), "lr": lr / 10}]
        )
        for _ in range(hybrid_iters):
            opt.zero_grad()
            theta, ys, nfe = simulate(field, t_all, spec)
            counts["forward_nfe"] += nfe
            loss = (theta[1:] - y_all).square().mean() + penalty * field.correction_at(ys).square().mean()
            loss.backward()
            opt.step()
    return {
        "physics_only": physics_only,
        "wall_s": time.perf_counter() - t0,
        "cpu_s": time.process_time() - c0,
        "forward_nfe": counts["forward_nfe"],
        "field_calls": field.nfe,
    }


@torch.no_grad()
def evaluate(field: HybridField, spec: dict, t_train: float, t_end: float, truth_grid: np.ndarray) -> dict:
    grid = torch.linspace(0.0, t_end, len(truth_grid), dtype=torch.float64)
    theta, ys, _ = simulate(field, grid, {k: v for k, v in spec.items() if k != "adjoint"})
    err = theta.numpy() - truth_grid
    inside = grid.numpy() <= t_train
    p = field.physics.params
    corr = field.correction_at(ys)[..., 1].abs().mean().item() if field.correction else 0.0
    return {
        "omega": p.omega.item(),
        "damping": p.damping.item(),
        "omega_rel_err": abs(p.omega.item() / OMEGA - 1),
        "damping_rel_err": abs(p.damping.item() / GAMMA - 1),
        "train_window_rmse": float(np.sqrt(np.mean(err[inside] ** 2))),
        "extrapolation_rmse": float(np.sqrt(np.mean(err[~inside] ** 2))),
        "mean_abs_correction": corr,
        "theta": theta.numpy(),
    }


class MLP(nn.Module):
    """θ(t), θ'(t) from t: the trajectory model of the PINN route."""

    def __init__(self, width: int, t_scale: float) -> None:
        super().__init__()
        self.t_scale = t_scale
        self.net = nn.Sequential(
            nn.Linear(1, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 2)
        ).double()

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.net(t.unsqueeze(-1) / self.t_scale)


def fit_pinn(
    t_obs: np.ndarray, y_obs: np.ndarray, t_end: float, *, iters: int, n_col: int, weight: float, seed: int
) -> dict:
    """The residual route: MLP (θ, θ')(t) + unknown ω, γ, loss = data + weight · collocation on [0, t_end]."""
    torch.manual_seed(seed)
    model = MLP(32, t_end)
    physics = ParametricPhysics(pendulum, dtype=torch.float64, **START)
    t_obs_t, y_obs_t = torch.as_tensor(t_obs), torch.as_tensor(y_obs)
    t0_t = torch.zeros(1, dtype=torch.float64)
    x0 = torch.tensor([X0], dtype=torch.float64)
    opt = torch.optim.Adam([{"params": model.parameters(), "lr": 3e-3}, {"params": physics.parameters(), "lr": 1e-2}])
    gen = torch.Generator().manual_seed(seed)
    start = time.process_time()
    for _ in range(iters):
        opt.zero_grad()
        t_col = collocation_times(0.0, t_end, n_col, random=True, generator=gen)
        data = (model(t_obs_t)[:, 0] - y_obs_t).square().mean() + (model(t0_t) - x0).square().sum()
        loss = data + weight * collocation_loss(model, physics, t_col, scale=torch.tensor([1.0, OMEGA**2]))
        loss.backward()
        opt.step()
    p = physics.params
    return {"omega": p.omega.item(), "damping": p.damping.item(), "cpu_s": time.process_time() - start, "model": model}


def main(
    out_dir: str | Path = "out/hybrid_oscillator",
    *,
    quick: bool = False,
    solver_names: tuple[str, ...] = tuple(SOLVERS),
    n_obs: int = 40,
    t_train: float = 10.0,
    t_end: float = 20.0,
    noise: float = 0.05,
    hidden: int = 8,
    physics_evals: int = 60,
    hybrid_iters: int = 25,
    lr: float = 0.02,
    penalty: float = 0.01,
    extras: bool = True,
    pinn_iters: int = 3000,
    seed: int = 0,
    command: str | None = None,
) -> dict:
    """Run the study; ``quick``: a 5 s window, 16 observations, rk4 only, 2 hybrid steps (seconds)."""
    torch.set_num_threads(1)
    if quick:
        solver_names = solver_names if solver_names != tuple(SOLVERS) else ("rk4",)
        n_obs, t_train, t_end, hidden, physics_evals, hybrid_iters, extras = 16, 5.0, 8.0, 4, 30, 2, False
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_obs, y_obs = make_data(n_obs, t_train, noise, seed)
    grid = np.linspace(0.0, t_end, int(round(t_end / 0.1)) + 1)
    truth = ground_truth(grid)
    record: dict = {
        "command": command,
        "quick": quick,
        "truth": {"omega": OMEGA, "damping": GAMMA, "x0": X0},
        "start": START,
        "data": {"n_obs": len(t_obs), "t_train": t_train, "t_end": t_end, "noise": noise, "seed": seed},
        "settings": {
            "hidden": hidden,
            "physics_evals": physics_evals,
            "hybrid_iters": hybrid_iters,
            "lr": lr,
            "penalty": penalty,
        },
        "solvers": {},
    }
    curves = {}
    t_start, cpu_start = time.perf_counter(), time.process_time()
    for name in solver_names:
        spec = SOLVERS[name]
        field = make_model(pendulum, hidden, seed)
        info = fit(
            field,
            t_obs,
            y_obs,
            spec,
            correction=True,
            physics_evals=physics_evals,
            hybrid_iters=hybrid_iters,
            lr=lr,
            penalty=penalty,
        )
        ev = evaluate(field, spec, t_train, t_end, truth)
        curves[f"physics + DREAM ({name})"] = ev.pop("theta")
        phys = info["physics_only"]
        record["solvers"][name] = {
            **ev,
            **{k: v for k, v in info.items() if k != "physics_only"},
            "physics_only_omega": phys["omega"],
            "physics_only_damping": phys["damping"],
            "spec": {k: v for k, v in spec.items()},
        }
    if extras:
        spec = SOLVERS["dopri5"]
        record["small_angle"] = {}
        for correction in (False, True):
            field = make_model(small_angle, hidden, seed)
            info = fit(
                field,
                t_obs,
                y_obs,
                spec,
                correction=correction,
                physics_evals=physics_evals,
                hybrid_iters=hybrid_iters,
                lr=lr,
                penalty=penalty,
            )
            ev = evaluate(field, spec, t_train, t_end, truth)
            label = "small-angle physics" + (" + DREAM" if correction else "")
            curves[label] = ev.pop("theta")
            record["small_angle"]["hybrid" if correction else "physics"] = {
                **ev,
                **{k: v for k, v in info.items() if k != "physics_only"},
            }
        pinn = fit_pinn(t_obs, y_obs, t_end, iters=pinn_iters, n_col=200, weight=1.0, seed=seed)
        with torch.no_grad():
            theta = pinn.pop("model")(torch.as_tensor(grid))[:, 0].numpy()
        err = theta - truth
        inside = grid <= t_train
        curves["PINN (collocation_loss)"] = theta
        record["pinn"] = {
            **pinn,
            "omega_rel_err": abs(pinn["omega"] / OMEGA - 1),
            "damping_rel_err": abs(pinn["damping"] / GAMMA - 1),
            "train_window_rmse": float(np.sqrt(np.mean(err[inside] ** 2))),
            "extrapolation_rmse": float(np.sqrt(np.mean(err[~inside] ** 2))),
            "iters": pinn_iters,
        }
    record["wall_s"] = time.perf_counter() - t_start
    record["cpu_s"] = time.process_time() - cpu_start
    _plot_fit(out / "oscillator_fit.png", grid, truth, t_obs, y_obs, curves, t_train)
    _plot_solvers(out / "oscillator_solvers.png", record["solvers"])
    (out / "hybrid_oscillator.json").write_text(json.dumps(record, indent=2))
    (out / "hybrid_oscillator.md").write_text(_markdown(record))
    print(_markdown(record))
    return record


def _plot_fit(path, grid, truth, t_obs, y_obs, curves, t_train) -> None:
    fig, axes = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    axes[0].plot(grid, truth, "k", lw=2, label="truth (scipy DOP853)")
    axes[0].plot(t_obs, y_obs, "k.", label="observations")
    for label, theta in curves.items():
        axes[0].plot(grid, theta, lw=1, label=label)
        axes[1].plot(grid, theta - truth, lw=1, label=label)
    for ax in axes:
        ax.axvspan(t_train, grid[-1], color="grey", alpha=0.12)
    axes[0].set_ylabel("θ (rad)")
    axes[1].set_ylabel("error (rad)")
    axes[1].set_xlabel("t (shaded: extrapolation)")
    axes[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_solvers(path, rows: dict) -> None:
    names = list(rows)
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for ax, key, label in zip(
        axes,
        ("wall_s", "field_calls", "extrapolation_rmse"),
        ("fit wall time (s)", "field evaluations (fit)", "extrapolation RMSE (rad)"),
    ):
        ax.bar(names, [rows[n][key] for n in names], color=[f"C{i}" for i in range(len(names))])
        ax.set_title(label, fontsize=9)
        ax.tick_params(axis="x", labelsize=8, rotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _markdown(r: dict) -> str:
    d = r["data"]
    lines = [
        "# Damped pendulum: physics + DREAM, fitted through four solvers",
        "",
        f"Command: `{r['command']}`; truth ω = {OMEGA}, γ = {GAMMA}; start ω = {START['omega']}, "
        f"γ = {START['damping']}; {d['n_obs']} observations of θ in [0, {d['t_train']:g}], noise σ = {d['noise']:g}; "
        f"extrapolation to t = {d['t_end']:g}; total {r['wall_s']:.0f} s wall, {r['cpu_s']:.0f} s CPU.",
        "",
        "| solver | ω (physics only) | γ (physics only) | ω (hybrid) | γ (hybrid) | train-window RMSE | extrapolation RMSE | field evaluations | forward NFE | fit CPU (s) | fit wall (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in r["solvers"].items():
        lines.append(
            f"| {name} | {s['physics_only_omega']:.4f} | {s['physics_only_damping']:.4f} | {s['omega']:.4f} "
            f"| {s['damping']:.4f} | {s['train_window_rmse']:.4f} | {s['extrapolation_rmse']:.4f} "
            f"| {s['field_calls']} | {s['forward_nfe']} | {s['cpu_s']:.1f} | {s['wall_s']:.1f} |"
        )
    lines += [
        "",
        "RMSE against the noise-free truth on a 0.1 grid; field evaluations include the adjoint's backward ones.",
    ]
    if "small_angle" in r:
        lines += [
            "",
            "| small-angle physics (dopri5) | ω | γ | train-window RMSE | extrapolation RMSE | fit CPU (s) |",
            "|---|---|---|---|---|---|",
        ]
        for name, s in r["small_angle"].items():
            lines.append(
                f"| {name} | {s['omega']:.4f} | {s['damping']:.4f} | {s['train_window_rmse']:.4f} "
                f"| {s['extrapolation_rmse']:.4f} | {s['cpu_s']:.1f} |"
            )
    if "pinn" in r:
        p = r["pinn"]
        lines += [
            "",
            f"PINN (MLP + collocation_loss on [0, {d['t_end']:g}], {p['iters']} Adam steps, {p['cpu_s']:.1f} s CPU): "
            f"ω = {p['omega']:.4f}, γ = {p['damping']:.4f}; train-window RMSE {p['train_window_rmse']:.4f}, "
            f"extrapolation RMSE {p['extrapolation_rmse']:.4f}.",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="out/hybrid_oscillator")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--solvers", nargs="*", default=list(SOLVERS), choices=list(SOLVERS))
    p.add_argument("--hybrid-iters", type=int, default=25)
    p.add_argument("--no-extras", action="store_true")
    p.add_argument("--pinn-iters", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    main(
        a.out,
        quick=a.quick,
        solver_names=tuple(a.solvers),
        hybrid_iters=a.hybrid_iters,
        extras=not a.no_extras,
        pinn_iters=a.pinn_iters,
        seed=a.seed,
        command="python " + " ".join(sys.argv),
    )
