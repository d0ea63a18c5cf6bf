"""Theophylline pharmacokinetics: a one-compartment ODE fitted through the solver registry, then a DREAM correction.

Run: python examples/pharmacokinetics.py --out out/pharmacokinetics        (add --quick for a few seconds)

1. Fit ka, ke, Cl per subject by a scipy least-squares fit of the closed form (the reference,
   as R's ``nls(conc ~ SSfol(Dose, Time, lKe, lKa, lCl))``, from a generic start) and,
   independently, by integrating the ODE ``dA/dt = -ka A, dC/dt = ka A / V - ke C`` with a
   registered solver and L-BFGS through it (same start).
2. Hold out samples of every subject (the last two, or every third), fit the physics on the rest,
   add a DREAM correction to dC/dt (shared by the subjects) and compare held-out errors.

Writes pharmacokinetics.json, pharmacokinetics.md and one plot per hold-out scheme.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import scipy.optimize  # noqa: E402
import torch  # noqa: E402

import solvers  # noqa: E402
from dreamode import DREAMConfig  # noqa: E402
from dreamode.physics import HybridField, OneCompartmentOral, load_theophylline, solve_at_times  # noqa: E402

START = (-2.5, 0.5, -3.5)  # log ke, log ka, log Cl: a generic start with ka > ke (flip-flop symmetry)
HOLDOUTS = ("last2", "every3")
REFERENCE_SUBJECT_1 = {"log_ke": -2.92, "log_ka": 0.58, "log_cl": -3.92}  # the reference fit


def closed_form(logp: np.ndarray, t: np.ndarray, dose: float) -> np.ndarray:
    """``SSfol``: C(t) = dose ke ka / (Cl (ka - ke)) (e^{-ke t} - e^{-ka t}); ``logp`` = (log ke, log ka, log Cl)."""
    ke, ka, cl = np.exp(logp)
    return dose * ke * ka / (cl * (ka - ke)) * (np.exp(-ke * t) - np.exp(-ka * t))


def fit_closed_form(t: np.ndarray, conc: np.ndarray, dose: float) -> np.ndarray:
    """Levenberg-Marquardt on the closed form in log parameters; returns (log ke, log ka, log Cl)."""
    res = scipy.optimize.least_squares(
        lambda p: closed_form(p, t, dose) - conc, START, method="lm", xtol=1e-14, ftol=1e-14, gtol=1e-14
    )
    return res.x


def holdout_mask(n: int, scheme: str) -> np.ndarray:
    """True for the training samples of one subject (``n`` samples, the first at t = 0)."""
    train = np.ones(n, dtype=bool)
    if scheme == "last2":
        train[-2:] = False
    elif scheme == "every3":
        train[2::3] = False
    elif scheme != "none":
        raise ValueError(f"unknown hold-out scheme {scheme!r}; valid: {HOLDOUTS}")
    return train


def fit_ode(subjects, mask: torch.Tensor, method: str, rtol: float, atol: float, max_evals: int) -> dict:
    """Per-subject ka, ke, Cl by L-BFGS through ``solve_at_times`` (one batched solve per evaluation)."""
    times = torch.stack([s.times for s in subjects])
    conc = torch.stack([s.conc for s in subjects])
    dose = torch.tensor([s.dose for s in subjects], dtype=torch.float64)
    B = len(subjects)
    ke0, ka0, cl0 = (math.exp(v) for v in START)
    pk = OneCompartmentOral(torch.full((B,), ka0), torch.full((B,), ke0), torch.full((B,), cl0), dtype=torch.float64)
    opt = torch.optim.LBFGS(
        pk.parameters(),
        lr=1.0,
        max_iter=max_evals,
        max_eval=max_evals,
        tolerance_grad=1e-9,
        tolerance_change=1e-13,
        history_size=20,
        line_search_fn="strong_wolfe",
    )
    counts = {"evals": 0, "nfe": 0}

    def closure():
        opt.zero_grad()
        sol = solve_at_times(pk, pk.initial_state(dose), times, method, rtol=rtol, atol=atol)
        counts["evals"] += 1
        counts["nfe"] += sol.stats.nfe or 0
        loss = ((sol.ys[..., 1].T - conc) * mask).square().sum()
        loss.backward()
        return loss

    t0, c0 = time.perf_counter(), time.process_time()
    loss = opt.step(closure)
    logp = torch.stack([pk.ke, pk.ka, pk.cl], -1).log().detach().numpy()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"logp": logp, "sse": float(loss.detach()), "wall_s": wall, "cpu_s": cpu, **counts}


def make_hybrid(logp: np.ndarray, dose: torch.Tensor, hidden: int, seed: int) -> HybridField:
    """Physics (gut in closed form, state C) + a DREAM driven by C, correcting dC/dt; shared by the subjects."""
    torch.manual_seed(seed)
    p = torch.as_tensor(np.exp(logp))
    pk = OneCompartmentOral(p[:, 1], p[:, 0], p[:, 2], dose=dose, dtype=torch.float64)
    # Hours: the running statistics adapt over ~1/0.05 = 20 h, τ >= 1 h; homeostasis at 1/h keeps
    # the field non-stiff for explicit steps up to 2 h.
    cfg = DREAMConfig(input_dim=1, hidden_dim=hidden, rank=1, time_step=1.0, homeostasis_rate=1.0)
    return HybridField(pk, cfg, physical_dim=1, inputs=lambda t, x: x / 10.0, dtype=torch.float64)


def fit_hybrid(
    subjects,
    mask: torch.Tensor,
    logp: np.ndarray,
    *,
    hidden: int,
    iters: int,
    lr: float,
    penalty: float,
    seed: int,
    method: str,
    rtol: float,
    atol: float,
) -> tuple[HybridField, dict]:
    """Adam on the training samples: shared DREAM + coupling, per-subject ka, ke, Cl (started at the physics fit)."""
    times = torch.stack([s.times for s in subjects])
    conc = torch.stack([s.conc for s in subjects])
    dose = torch.tensor([s.dose for s in subjects], dtype=torch.float64)
    field = make_hybrid(logp, dose, hidden, seed)
    y0 = field.initial_state(field.physics.initial_state())
    opt = torch.optim.Adam(
        [{"params": field.learned_parameters(), "lr": lr}, {"params": field.physics_parameters(), "lr": lr / 10}]
    )
    n_train = float(mask.sum())
    held = 1 - mask
    history, held_history = [], []
    nfe = 0
    diverged = None
    t0, c0 = time.perf_counter(), time.process_time()
    for step in range(iters):
        good = copy.deepcopy(field.state_dict())
        opt.zero_grad()
        try:
            sol = solve_at_times(field, y0, times, method, rtol=rtol, atol=atol)
        except solvers.SolverError:
            # The last update drove the hybrid into a blow-up: keep the parameters before it and stop.
            field.load_state_dict(good)
            diverged = step
            break
        nfe += sol.stats.nfe or 0
        err = sol.ys[0][..., 0].T - conc
        mse = (err * mask).square().sum() / n_train
        corr = field.correction_at(sol.ys)
        loss = mse + penalty * corr.square().mean()
        loss.backward()
        opt.step()
        history.append(float(mse.detach()))
        if held.sum() > 0:  # free: the solve passes every sample time (before this step's update)
            held_history.append(float(((err.detach() * held).square().sum() / held.sum()).sqrt()))
    info = {"train_mse_history": history, "heldout_rmse_history": held_history, "diverged_at_step": diverged}
    return field, {**info, "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "nfe": nfe}


@torch.no_grad()
def predict(field: HybridField, subjects, grid: torch.Tensor, method: str, rtol: float, atol: float) -> torch.Tensor:
    """C on a common grid for every subject ``(T, B)`` (all doses at t = 0; the field is autonomous)."""
    y0 = field.initial_state(field.physics.initial_state())
    sol = solvers.solve(field, y0, grid, method, rtol=rtol, atol=atol)
    return sol.ys[0][..., 0]


@torch.no_grad()
def predict_at_samples(field: HybridField, subjects, method: str, rtol: float, atol: float) -> torch.Tensor:
    times = torch.stack([s.times for s in subjects])
    y0 = field.initial_state(field.physics.initial_state())
    return solve_at_times(field, y0, times, method, rtol=rtol, atol=atol).ys[0][..., 0].T


def rmse(err: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(err)))) if err.size else float("nan")


def main(
    out_dir: str | Path = "out/pharmacokinetics",
    *,
    quick: bool = False,
    subjects: tuple[int, ...] | None = None,
    holdouts: tuple[str, ...] = HOLDOUTS,
    hidden: int = 8,
    iters: int = 40,
    lr: float = 0.02,
    penalty: float = 0.1,
    method: str = "dopri5",
    rtol: float = 1e-6,
    atol: float = 1e-8,
    hybrid_rtol: float = 1e-5,
    hybrid_atol: float = 1e-7,
    max_evals: int = 250,
    ode_fit: bool = True,
    seed: int = 0,
    command: str | None = None,
) -> dict:
    """Run the study; ``quick``: subject 1, the first hold-out scheme, a 4-unit DREAM, 1 Adam step (seconds)."""
    torch.set_num_threads(1)
    if quick:
        subjects = subjects or (1,)
        holdouts = holdouts[:1]
        hidden, iters, max_evals = 4, 1, 40
    data = load_theophylline()
    chosen = [s for s in data if subjects is None or s.subject in subjects]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start, cpu_start = time.perf_counter(), time.process_time()
    record: dict = {
        "command": command,
        "quick": quick,
        "method": method,
        "rtol": rtol,
        "atol": atol,
        "hybrid": {
            "hidden": hidden,
            "iters": iters,
            "lr": lr,
            "penalty": penalty,
            "rtol": hybrid_rtol,
            "atol": hybrid_atol,
        },
    }

    # 1. All samples: the closed form by scipy vs the ODE through the solver registry.
    t0 = time.perf_counter()
    ref = np.stack([fit_closed_form(s.times.numpy(), s.conc.numpy(), s.dose) for s in chosen])
    ref_wall = time.perf_counter() - t0
    full_mask = torch.ones(len(chosen), len(chosen[0].times), dtype=torch.float64)
    if ode_fit:
        ode = fit_ode(chosen, full_mask, method, rtol, atol, max_evals)
    else:  # hold-out study only: report the scipy values in both columns
        ode = {"logp": ref, "sse": float("nan"), "wall_s": 0.0, "cpu_s": 0.0, "evals": 0, "nfe": 0}
    params = []
    for s, r, o in zip(chosen, ref, ode["logp"]):
        params.append(
            {
                "subject": s.subject,
                "scipy": dict(zip(("log_ke", "log_ka", "log_cl"), map(float, r))),
                "ode": dict(zip(("log_ke", "log_ka", "log_cl"), map(float, o))),
                "cl_l_per_h": float(np.exp(r[2]) * s.weight),
                "v_l_per_kg": float(np.exp(r[2] - r[0])),
            }
        )
    record["parameters"] = params
    record["max_abs_log_diff_ode_vs_scipy"] = float(np.abs(ode["logp"] - ref).max())
    record["scipy_wall_s"] = ref_wall
    record["ode_fit"] = {k: v for k, v in ode.items() if k != "logp"}

    # 2. Held-out times: physics alone vs physics + DREAM.
    record["holdout"] = {}
    grid = torch.linspace(0.0, 25.0, 51, dtype=torch.float64)
    for scheme in holdouts:
        masks = np.stack([holdout_mask(len(s.times), scheme) for s in chosen])
        phys = np.stack([fit_closed_form(s.times.numpy()[m], s.conc.numpy()[m], s.dose) for s, m in zip(chosen, masks)])
        pred_phys = np.stack([closed_form(p, s.times.numpy(), s.dose) for p, s in zip(phys, chosen)])
        mask = torch.as_tensor(masks, dtype=torch.float64)
        field, info = fit_hybrid(
            chosen,
            mask,
            phys,
            hidden=hidden,
            iters=iters,
            lr=lr,
            penalty=penalty,
            seed=seed,
            method=method,
            rtol=hybrid_rtol,
            atol=hybrid_atol,
        )
        pred_hyb = predict_at_samples(field, chosen, method, hybrid_rtol, hybrid_atol).numpy()
        conc = np.stack([s.conc.numpy() for s in chosen])
        entry = {
            "physics_train_rmse": rmse((pred_phys - conc)[masks]),
            "physics_heldout_rmse": rmse((pred_phys - conc)[~masks]),
            "hybrid_train_rmse": rmse((pred_hyb - conc)[masks]),
            "hybrid_heldout_rmse": rmse((pred_hyb - conc)[~masks]),
            "n_train": int(masks.sum()),
            "n_heldout": int((~masks).sum()),
            "per_subject_heldout_rmse": {
                str(s.subject): {
                    "physics": rmse((pred_phys[i] - conc[i])[~masks[i]]),
                    "hybrid": rmse((pred_hyb[i] - conc[i])[~masks[i]]),
                }
                for i, s in enumerate(chosen)
            },
            "hybrid_fit": {
                "wall_s": info["wall_s"],
                "cpu_s": info["cpu_s"],
                "nfe": info["nfe"],
                "iters": iters,
                "diverged_at_step": info["diverged_at_step"],
            },
            "hybrid_train_mse_history": info["train_mse_history"],
            "hybrid_heldout_rmse_history": info["heldout_rmse_history"],
        }
        record["holdout"][scheme] = entry
        curve = predict(field, chosen, grid, method, hybrid_rtol, hybrid_atol).numpy()
        _plot(out / f"theophylline_{scheme}.png", chosen, masks, phys, curve, grid.numpy(), scheme)

    record["wall_s"] = time.perf_counter() - t_start
    record["cpu_s"] = time.process_time() - cpu_start
    (out / "pharmacokinetics.json").write_text(json.dumps(record, indent=2))
    (out / "pharmacokinetics.md").write_text(_markdown(record))
    _print(record)
    return record


def _plot(path: Path, subjects, masks, phys, curve, grid, scheme) -> None:
    n = len(subjects)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False, sharex=True)
    for i, s in enumerate(subjects):
        ax = axes[i // cols][i % cols]
        t, c = s.times.numpy(), s.conc.numpy()
        ax.plot(grid, closed_form(phys[i], grid, s.dose), color="C0", label="physics")
        ax.plot(grid, curve[:, i], color="C1", ls="--", label="physics + DREAM")
        ax.plot(t[masks[i]], c[masks[i]], "k.", label="train")
        ax.plot(t[~masks[i]], c[~masks[i]], "rx", label="held out")
        ax.set_title(f"subject {s.subject}", fontsize=9)
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].axis("off")
    axes[0][0].legend(fontsize=7)
    fig.supxlabel("time since dose (h)")
    fig.supylabel("theophylline (mg/L)")
    fig.suptitle(f"One-compartment oral model, hold-out '{scheme}'")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _markdown(r: dict) -> str:
    lines = [
        "# Theophylline: one-compartment oral model",
        "",
        f"Command: `{r['command']}`; solver {r['method']} (rtol={r['rtol']:g}, atol={r['atol']:g}); "
        f"total {r['wall_s']:.0f} s wall, {r['cpu_s']:.0f} s CPU.",
        "",
        "| subject | log ke scipy | log ke ODE | log ka scipy | log ka ODE | log Cl scipy | log Cl ODE | Cl (L/h) | V (L/kg) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in r["parameters"]:
        s, o = p["scipy"], p["ode"]
        lines.append(
            f"| {p['subject']} | {s['log_ke']:.4f} | {o['log_ke']:.4f} | {s['log_ka']:.4f} | {o['log_ka']:.4f} "
            f"| {s['log_cl']:.4f} | {o['log_cl']:.4f} | {p['cl_l_per_h']:.3f} | {p['v_l_per_kg']:.3f} |"
        )
    f = r["ode_fit"]
    lines += [
        "",
        f"Largest |ODE − scipy| over the log parameters: {r['max_abs_log_diff_ode_vs_scipy']:.2e}. "
        f"ODE fit: {f['evals']} L-BFGS evaluations, {f['nfe']} field evaluations, {f['cpu_s']:.1f} s CPU "
        f"({f['wall_s']:.1f} s wall) "
        f"(scipy closed form: {r['scipy_wall_s']:.2f} s).",
        "",
        "| hold-out | train / held-out samples | physics train RMSE | physics held-out RMSE | hybrid train RMSE | hybrid held-out RMSE | hybrid fit |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, h in r["holdout"].items():
        lines.append(
            f"| {name} | {h['n_train']} / {h['n_heldout']} | {h['physics_train_rmse']:.3f} | {h['physics_heldout_rmse']:.3f} "
            f"| {h['hybrid_train_rmse']:.3f} | {h['hybrid_heldout_rmse']:.3f} | {_steps(h['hybrid_fit'])}, "
            f"{h['hybrid_fit']['cpu_s']:.0f} s CPU |"
        )
    lines.append("")
    lines.append("RMSE in mg/L over all held-out (or training) samples of the subjects.")
    return "\n".join(lines) + "\n"


def _steps(fit: dict) -> str:
    if fit["diverged_at_step"] is None:
        return f"{fit['iters']} step{'s' if fit['iters'] != 1 else ''}"
    return f"diverged at step {fit['diverged_at_step']} of {fit['iters']} (kept the step before)"


def _print(r: dict) -> None:
    print(_markdown(r))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="out/pharmacokinetics")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--subjects", type=int, nargs="*")
    p.add_argument("--holdouts", nargs="*", default=list(HOLDOUTS), choices=HOLDOUTS)
    p.add_argument("--hidden", type=int, default=8)
    p.add_argument("--iters", type=int, default=40)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--penalty", type=float, default=0.1)
    p.add_argument("--method", default="dopri5")
    p.add_argument("--no-ode-fit", action="store_true", help="skip step 1's ODE fit (hold-out study only)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    import sys

    main(
        a.out,
        quick=a.quick,
        subjects=tuple(a.subjects) if a.subjects else None,
        holdouts=tuple(a.holdouts),
        hidden=a.hidden,
        iters=a.iters,
        lr=a.lr,
        penalty=a.penalty,
        method=a.method,
        ode_fit=not a.no_ode_fit,
        seed=a.seed,
        command="python " + " ".join(sys.argv),
    )
