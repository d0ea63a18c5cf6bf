"""Does in-context adaptation happen? Fast weights vs none on a repeated pattern.

The seed claims the Hebbian fast weights adapt "during inference": on a pattern that repeats,
the prediction x̂ of the next input should improve without an optimizer. This measures the RMS
prediction error per repetition with ``fast_weights`` on and off, untrained and after brief
self-supervised training (minimising the prediction error on other random patterns).

Run: python examples/in_context.py --out out/in_context
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dreamode import DREAM


def repeated_patterns(batch: int, length: int, repeats: int, dim: int, seed: int) -> torch.Tensor:
    """``(batch, length * repeats, dim)``: each sample one random pattern in [-0.9, 0.9], repeated."""
    g = torch.Generator().manual_seed(seed)
    pattern = 0.9 * torch.tanh(torch.randn(batch, length, dim, generator=g))
    return pattern.repeat(1, repeats, 1)


def rms_per_repetition(model: DREAM, x: torch.Tensor, length: int) -> torch.Tensor:
    """RMS of ``x − x̂`` over each repetition, averaged over the batch: ``(repeats,)``."""
    with torch.no_grad():
        _, _, trace = model(x, return_trace=True)
    err = (x - trace.prediction).square().mean(dim=(0, 2))  # (T,)
    return err.view(-1, length).mean(dim=1).sqrt()


def train(model: DREAM, steps: int, length: int, repeats: int, dim: int, seed: int) -> list[float]:
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for i in range(steps):
        x = repeated_patterns(16, length, repeats, dim, seed=10_000 + seed * 1000 + i)
        _, _, trace = model(x, return_trace=True)
        loss = (x - trace.prediction).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def main(
    out_dir: str | Path = "out/in_context",
    dim: int = 8,
    hidden: int = 32,
    rank: int = 4,
    length: int = 10,
    repeats: int = 20,
    train_steps: int = 60,
    seeds: tuple[int, ...] = (0, 1, 2),
    plasticity: float = 2.0,
) -> dict:
    results: dict[str, dict] = {}
    for fast in (True, False):
        for trained in (False, True):
            key = f"fast_weights={fast}, {'trained' if trained else 'untrained'}"
            first, last = [], []
            for seed in seeds:
                torch.manual_seed(seed)
                model = DREAM(dim, hidden, rank, fast_weights=fast, base_plasticity=plasticity)
                if trained:
                    train(model, train_steps, length, repeats, dim, seed)
                curve = rms_per_repetition(model, repeated_patterns(32, length, repeats, dim, seed=seed), length)
                first.append(float(curve[0]))
                last.append(float(curve[-1]))
            f = torch.tensor(first)
            la = torch.tensor(last)
            change = (la / f - 1) * 100
            results[key] = {
                "rms_first_repetition": float(f.mean()),
                "rms_last_repetition": float(la.mean()),
                "change_percent_mean": float(change.mean()),
                "change_percent_std": float(change.std()) if len(seeds) > 1 else 0.0,
            }
            r = results[key]
            print(
                f"{key:>34}: RMS error rep 1 {r['rms_first_repetition']:.4f} -> rep {repeats} "
                f"{r['rms_last_repetition']:.4f} ({r['change_percent_mean']:+.1f}% ± {r['change_percent_std']:.1f})"
            )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = dict(dim=dim, hidden=hidden, rank=rank, length=length, repeats=repeats, train_steps=train_steps)
    (out / "in_context.json").write_text(json.dumps({"settings": settings, "results": results}, indent=2))
    return results


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="out/in_context")
    p.add_argument("--train-steps", type=int, default=60)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--plasticity", type=float, default=2.0)
    a = p.parse_args()
    main(a.out, train_steps=a.train_steps, repeats=a.repeats, plasticity=a.plasticity)
