"""Per-call overhead of ``solvers.solve(..., method="rk4")`` against a bare Python RK4 loop.

The field is linear, ``f(t, y) = y @ A`` with ``A`` of size dim x dim, on a batch of states;
both sides take the same number of RK4 steps and produce the same outputs (every step's state,
stacked), and they are checked to agree. A second pair integrates with ``step_size`` and keeps
only the final state. Timings alternate between the two sides and report medians.

Run: python benchmarks/solver_overhead.py [--dim 128] [--batch 32] [--steps 100] [--repeats 200]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import solvers


def bare_rk4(f: Callable, y0: torch.Tensor, t: list[float]) -> torch.Tensor:
    """Textbook RK4, one step per interval of ``t``, every state kept."""
    ys = [y0]
    y = y0
    for t0, t1 in zip(t[:-1], t[1:]):
        h = t1 - t0
        k1 = f(t0, y)
        k2 = f(t0 + h / 2, y + (h / 2) * k1)
        k3 = f(t0 + h / 2, y + (h / 2) * k2)
        k4 = f(t1, y + h * k3)
        y = y + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
        ys.append(y)
    return torch.stack(ys)


def bare_rk4_final(f: Callable, y0: torch.Tensor, t0: float, h: float, n: int) -> torch.Tensor:
    """Textbook RK4, ``n`` steps of ``h``, final state only."""
    y = y0
    for i in range(n):
        ti = t0 + i * h
        k1 = f(ti, y)
        k2 = f(ti + h / 2, y + (h / 2) * k1)
        k3 = f(ti + h / 2, y + (h / 2) * k2)
        k4 = f(ti + h, y + h * k3)
        y = y + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
    return y


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(
    dim: int = 128,
    batch: int = 32,
    steps: int = 100,
    repeats: int = 200,
    dtype: str = "float32",
    threads: int | None = None,
) -> dict:
    """Time both sides ``repeats`` times each (interleaved, after a warm-up); print and return medians."""
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    dt = getattr(torch, dtype)
    A = (torch.randn(dim, dim) / dim**0.5).to(dt)
    y0 = torch.randn(batch, dim).to(dt)

    def f(t, y):
        return y @ A

    t = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    grid = t.tolist()
    h = 1.0 / steps
    t_ends = torch.tensor([0.0, 1.0], dtype=torch.float64)

    with torch.no_grad():
        ours = solvers.solve(f, y0, t, "rk4")
        ref = bare_rk4(f, y0, grid)
        assert ours.stats.nfe == 4 * steps
        gap = float((ours.ys - ref).abs().max())
        gap_final = float(
            (solvers.solve(f, y0, t_ends, "rk4", step_size=h).ys[-1] - bare_rk4_final(f, y0, 0.0, h, steps)).abs().max()
        )
        tol = 1e-4 if dt == torch.float32 else 1e-10
        assert gap < tol and gap_final < tol, (gap, gap_final)

        cases = {
            "grid (every state)": (lambda: solvers.solve(f, y0, t, "rk4"), lambda: bare_rk4(f, y0, grid)),
            "step_size (final only)": (
                lambda: solvers.solve(f, y0, t_ends, "rk4", step_size=h),
                lambda: bare_rk4_final(f, y0, 0.0, h, steps),
            ),
        }
        results = {}
        for name, (solve_fn, bare_fn) in cases.items():
            for _ in range(10):  # warm-up
                solve_fn()
                bare_fn()
            ts, tb = [], []
            for _ in range(repeats):
                ts.append(timed(solve_fn))
                tb.append(timed(bare_fn))
            ms, mb = statistics.median(ts), statistics.median(tb)
            results[name] = {"solve_ms": ms * 1e3, "bare_ms": mb * 1e3, "ratio": ms / mb}

    print(
        f"rk4, f(t, y) = y @ A, A {dim}x{dim}, batch {batch}, {steps} steps, {dtype}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {repeats}"
    )
    print(f"max |solve - bare| = {gap:.2e} (grid), {gap_final:.2e} (step_size)")
    print(f"{'case':<24}{'solvers.solve':>16}{'bare loop':>14}{'ratio':>9}{'overhead/step':>16}")
    for name, r in results.items():
        per_step_us = (r["solve_ms"] - r["bare_ms"]) * 1e3 / steps
        print(f"{name:<24}{r['solve_ms']:>13.3f} ms{r['bare_ms']:>11.3f} ms{r['ratio']:>9.3f}{per_step_us:>13.2f} us")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    main(dim=args.dim, batch=args.batch, steps=args.steps, repeats=args.repeats, dtype=args.dtype, threads=args.threads)
