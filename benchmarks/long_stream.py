"""A 100,000-step inference stream in chunks: resident memory stays flat, wall time is linear.

    python benchmarks/long_stream.py                  # 100 chunks x 1000 steps, batch 4, hidden 16
    python benchmarks/long_stream.py --chunks 20 --chunk-len 500 --solver ltc-fused

Prints the process's resident set size (VmRSS, from /proc/self/status) after chunks 1, 10, 50
and 100 (or the last), the peak (VmHWM) and the wall time. The stream carries only the state
(``state`` and the time of the last observation, ``t0``) from one chunk to the next, under
``torch.no_grad()``; nothing grows with the number of chunks.
"""

from __future__ import annotations

import argparse
import time

import torch

from dreamode import DREAM


def rss_mib(field: str = "VmRSS") -> float:
    """``field`` of /proc/self/status in MiB (Linux); NaN elsewhere."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def stream(
    model: DREAM,
    chunks: int,
    chunk_len: int,
    batch: int,
    *,
    seed: int = 0,
    on_chunk=None,
) -> tuple[torch.Tensor, object]:
    """Run ``chunks`` chunks of ``chunk_len`` irregular steps; ``on_chunk(k, out, state)`` after each.

    Returns the last chunk's output and the final state.
    """
    g = torch.Generator().manual_seed(seed)
    dtype = model.fields[0].C.dtype
    state, t0, out = None, None, None
    t_last = torch.zeros(batch, dtype=torch.float64)
    with torch.no_grad():
        for k in range(chunks):
            x = torch.randn(batch, chunk_len, model.input_dim, generator=g, dtype=dtype)
            gaps = 0.05 + 0.1 * torch.rand(batch, chunk_len, generator=g, dtype=torch.float64)
            times = t_last.unsqueeze(1) + gaps.cumsum(1)
            out, state = model(x, state, times=times, t0=t0)
            t0 = t_last = times[:, -1]
            if on_chunk is not None:
                on_chunk(k + 1, out, state)
    return out, state


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chunks", type=int, default=100)
    p.add_argument("--chunk-len", type=int, default=1000)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--input-dim", type=int, default=4)
    p.add_argument("--hidden-dim", type=int, default=16)
    p.add_argument("--rank", type=int, default=2)
    p.add_argument("--solver", default="euler")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model = DREAM(args.input_dim, args.hidden_dim, args.rank, solver=args.solver).eval()
    marks = sorted({1, 10, 50, args.chunks} & set(range(1, args.chunks + 1)))
    rss: dict[str, float] = {}

    def on_chunk(k: int, out: torch.Tensor, state: object) -> None:
        if k in marks:
            rss[f"rss_mib_chunk_{k}"] = rss_mib()

    start = time.perf_counter()
    out, state = stream(model, args.chunks, args.chunk_len, args.batch, on_chunk=on_chunk)
    wall = time.perf_counter() - start
    steps = args.chunks * args.chunk_len
    result = {**rss, "peak_rss_mib": rss_mib("VmHWM"), "wall_s": wall, "us_per_step": wall / steps * 1e6}
    print(
        f"{steps:,} steps ({args.chunks} chunks x {args.chunk_len}), batch {args.batch}, "
        f"DREAM({args.input_dim}, {args.hidden_dim}, rank={args.rank}, solver={args.solver!r}), torch {torch.__version__}"
    )
    for k in marks:
        print(f"  RSS after chunk {k:>4}: {rss[f'rss_mib_chunk_{k}']:8.1f} MiB")
    print(f"  peak RSS (VmHWM):     {result['peak_rss_mib']:8.1f} MiB")
    print(f"  wall time: {wall:.2f} s ({result['us_per_step']:.1f} us per step)")
    print(f"  final |h| max: {float(state.h.abs().max()):.3f}, output finite: {bool(torch.isfinite(out).all())}")
    return result


if __name__ == "__main__":
    main()
