"""Forward + backward of DREAM(64, 128, rank=8) against nn.LSTM(64, 128) on (32, 200, 64), float32.

Run: python benchmarks/train_step_ratio.py   (median of interleaved repeats; prints the ratio)
"""

import time

import torch

from dreamode import DREAM


def main(repeats: int = 5) -> float:
    torch.manual_seed(0)
    x = torch.randn(32, 200, 64)
    dream = DREAM(64, 128, rank=8)
    lstm = torch.nn.LSTM(64, 128, batch_first=True)

    def step(m: torch.nn.Module) -> None:
        out, _ = m(x)
        out.sum().backward()

    step(dream)
    step(lstm)
    times: dict[str, list[float]] = {"dream": [], "lstm": []}
    for _ in range(repeats):
        for name, m in (("dream", dream), ("lstm", lstm)):
            t = time.perf_counter()
            step(m)
            times[name].append(time.perf_counter() - t)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    ratio = med["dream"] / med["lstm"]
    print(f"fwd+bwd DREAM {med['dream'] * 1e3:.1f} ms, nn.LSTM {med['lstm'] * 1e3:.1f} ms, ratio {ratio:.2f}")
    return ratio


if __name__ == "__main__":
    main()
