"""Watch the four mechanisms react to a regime switch: surprise, τ and ‖U‖ over one sequence.

Run: python examples/mechanisms.py --out out/mechanisms
Writes mechanisms.png (surprise, τ, error z-score and ‖U‖_F per step) and prints a summary.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from dreamode import DREAM  # noqa: E402


def regime_switch(steps: int, input_dim: int, seed: int) -> torch.Tensor:
    """A familiar noisy pattern, then at the midpoint an abrupt switch to another: ``(1, steps, I)``."""
    g = torch.Generator().manual_seed(seed)
    pattern = 0.5 * torch.randn(input_dim, generator=g)
    half = steps // 2
    a = pattern + 0.05 * torch.randn(half, input_dim, generator=g)
    b = -2 * pattern + 0.05 * torch.randn(steps - half, input_dim, generator=g)
    return torch.cat([a, b]).unsqueeze(0)


def main(out_dir: str | Path = "out/mechanisms", steps: int = 300, seed: int = 0, solver: str = "euler") -> dict:
    torch.manual_seed(seed)
    model = DREAM(input_dim=8, hidden_dim=32, rank=4, solver=solver)
    x = regime_switch(steps, 8, seed)
    with torch.no_grad():
        _, state, trace = model(x, return_trace=True)
    t = torch.arange(1, steps + 1) * model.config.time_step
    switch = steps // 2
    series = {
        "surprise S": trace.surprise[0],
        "τ (time units)": trace.tau[0],
        "error z-score n": trace.error_norm[0],
        "‖U‖_F": trace.fast_weight_norm[0],
    }
    fig, axes = plt.subplots(len(series), 1, figsize=(8, 8), sharex=True)
    for ax, (name, v) in zip(axes, series.items()):
        ax.plot(t, v)
        ax.axvline(float(t[switch]), color="grey", ls="--", lw=1)
        ax.set_ylabel(name)
    axes[0].set_title(f"DREAM ({solver}) on a regime switch at t={float(t[switch]):.1f}: untrained, no optimizer")
    axes[-1].set_xlabel("time")
    fig.tight_layout()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "mechanisms.png", dpi=120)
    plt.close(fig)
    summary = {
        "surprise_before": float(trace.surprise[0, switch - 30 : switch].mean()),
        "surprise_after_switch": float(trace.surprise[0, switch : switch + 5].mean()),
        "surprise_50_steps_later": float(trace.surprise[0, switch + 50 : switch + 100].mean()),
        "tau_before": float(trace.tau[0, switch - 30 : switch].mean()),
        "tau_after_switch": float(trace.tau[0, switch : switch + 5].mean()),
        "fast_weight_norm_end": float(state.U.norm()),
        "consolidated_norm_end": float(state.U_target.norm()),
    }
    for k, v in summary.items():
        print(f"{k:>26}: {v:.4f}")
    return summary


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="out/mechanisms")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--solver", default="euler")
    a = p.parse_args()
    main(a.out, a.steps, a.seed, a.solver)
