"""Long streams: chunked inference in constant memory, and truncated BPTT with ``state.detach()``.

Memory is the process's resident set size (VmRSS from /proc/self/status, Linux): torch's CPU
allocations do not show in ``tracemalloc``. A stream that kept anything per chunk (the outputs, an
autograd graph) would grow by at least one chunk's output per chunk; the bounds below sit well
under that growth and well over the allocator's jitter (measured: < 1 MiB over 90 chunks).
Run with ``-s`` to see the numbers.
"""

from __future__ import annotations

import math
import time

import pytest
import torch
from reference import autograd_nodes
from torch import nn

from dreamode import DREAM

I, H, R = 4, 64, 2


def rss_mib(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


linux = pytest.mark.skipif(
    not __import__("os").path.exists("/proc/self/status"), reason="reads /proc/self/status (Linux)"
)


def _stream(model: DREAM, chunks: int, chunk_len: int, batch: int, marks: set[int]) -> tuple[dict, object]:
    """Inference over ``chunks × chunk_len`` irregular steps; RSS after the chunks in ``marks``."""
    g = torch.Generator().manual_seed(0)
    rss, state, t0 = {}, None, None
    t_last = torch.zeros(batch, dtype=torch.float64)
    with torch.no_grad():
        for k in range(1, chunks + 1):
            x = torch.randn(batch, chunk_len, I, generator=g)
            times = t_last.unsqueeze(1) + (
                0.05 + 0.1 * torch.rand(batch, chunk_len, generator=g, dtype=torch.float64)
            ).cumsum(1)
            out, state = model(x, state, times=times, t0=t0)
            t0 = t_last = times[:, -1]
            if k in marks:
                rss[k] = rss_mib()
    assert bool(torch.isfinite(out).all()) and float(out.abs().max()) < 1.0
    return rss, state


@linux
def test_chunked_inference_runs_in_constant_memory():
    """3,200 steps in 16 chunks (batch 16, hidden 64): RSS after chunk 16 within 4 MiB of chunk 4.

    Keeping each chunk's output alive alone would add 16·200·64·4 B = 0.8 MiB a chunk, 9.6 MiB in all.
    """
    torch.manual_seed(0)
    model = DREAM(I, H, R).eval()
    start = time.perf_counter()
    rss, _ = _stream(model, chunks=16, chunk_len=200, batch=16, marks={1, 4, 16})
    wall = time.perf_counter() - start
    print(f"\n3,200-step stream: RSS (MiB) {rss}, {wall:.2f} s")
    assert rss[16] - rss[4] < 4.0


@linux
@pytest.mark.slow
def test_100k_step_stream_runs_in_constant_memory():
    """100,000 steps in 100 chunks of 1000 (batch 4, hidden 16): RSS after chunk 100 within 8 MiB of chunk 10.

    Keeping each chunk's output alone would add 4·1000·16·4 B = 0.25 MiB a chunk, 22 MiB over 90 chunks.
    """
    torch.manual_seed(0)
    model = DREAM(I, 16, R).eval()
    start = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    rss, state, t0 = {}, None, None
    t_last = torch.zeros(4, dtype=torch.float64)
    with torch.no_grad():
        for k in range(1, 101):
            x = torch.randn(4, 1000, I, generator=g)
            times = t_last.unsqueeze(1) + (0.05 + 0.1 * torch.rand(4, 1000, generator=g, dtype=torch.float64)).cumsum(1)
            out, state = model(x, state, times=times, t0=t0)
            t0 = t_last = times[:, -1]
            if k in (1, 10, 50, 100):
                rss[k] = rss_mib()
    wall = time.perf_counter() - start
    print(f"\n100,000-step stream: RSS (MiB) {rss}, peak {rss_mib('VmHWM'):.1f}, {wall:.1f} s")
    assert bool(torch.isfinite(out).all()) and float(state.h.abs().max()) < 1.0
    assert rss[100] - rss[10] < 8.0


# -- truncated backpropagation through time -----------------------------------------------------


def _chunks(n: int, B: int = 3, T: int = 20, seed: int = 0):
    """``n`` chunks of a regression stream: ``(x, times, y)`` with ``y`` the next input's first channel."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, n * T + 1, I, generator=g)
    times = (0.05 + 0.1 * torch.rand(B, n * T, generator=g, dtype=torch.float64)).cumsum(1)
    for k in range(n):
        s = slice(k * T, (k + 1) * T)
        yield x[:, s], times[:, s], x[:, k * T + 1 : (k + 1) * T + 1, :1]


@pytest.mark.parametrize("solver", ["euler", "rk4"])
def test_truncated_bptt_with_detach(solver):
    """The docs' loop: gradients flow within each chunk; the graph does not grow from chunk to chunk."""
    torch.manual_seed(0)
    model = DREAM(I, 8, R, solver=solver)
    head = nn.Linear(8, 1)
    params = [*model.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=1e-2)
    state, t0 = None, None
    sizes, losses = [], []
    for x, times, y in _chunks(4, T=15):
        out, state = model(x, state, times=times, t0=t0)
        loss = nn.functional.mse_loss(head(out), y)
        sizes.append(autograd_nodes(loss))
        opt.zero_grad()
        loss.backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
            assert float(p.grad.abs().max()) > 0, name
        opt.step()
        losses.append(float(loss.detach()))
        state, t0 = state.detach(), times[:, -1]  # cut the graph; carry the state and the last time
        assert all(not c.requires_grad and c.grad_fn is None for c in state)
    assert len(set(sizes)) == 1, sizes  # every chunk's graph is the same size
    assert all(math.isfinite(v) for v in losses)


def test_without_detach_the_graph_grows_and_a_second_backward_fails():
    """The contrast that makes ``detach`` necessary (so the test above can fail)."""
    torch.manual_seed(0)
    model = DREAM(I, 8, R, solver="rk4")
    state, t0, sizes = None, None, []
    for x, times, _ in _chunks(3):
        out, state = model(x, state, times=times, t0=t0)
        sizes.append(autograd_nodes(out.sum()))
        t0 = times[:, -1]
    assert sizes[0] < sizes[1] < sizes[2]
    fast = DREAM(I, 8, R)  # the Euler fast path: one autograd node per chunk, freed by its backward
    (x1, tm1, _), (x2, tm2, _) = list(_chunks(2))
    out, state = fast(x1, times=tm1)
    out.sum().backward()
    out, state = fast(x2, state, times=tm2, t0=tm1[:, -1])
    with pytest.raises(RuntimeError, match=r"backward through .* a second time"):
        out.sum().backward()


def test_truncated_bptt_gradient_is_the_chunk_alone():
    """With a detached state, chunk k's gradient is that of chunk k run from a copy of its start state."""
    torch.manual_seed(0)
    model = DREAM(I, 8, R)
    batches = list(_chunks(3))
    state, t0 = None, None
    for k, (x, times, _) in enumerate(batches):
        start = None if state is None else state.detach()
        out, state = model(x, start, times=times, t0=t0)
        loss = out.square().mean()
        grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
        copy = None if start is None else type(start)(*(c.clone() for c in start))
        out_ref, _ = model(x, copy, times=times, t0=t0)
        ref = torch.autograd.grad(out_ref.square().mean(), list(model.parameters()), allow_unused=True)
        for g, r in zip(grads, ref):
            assert (g is None and r is None) or torch.equal(g, r), k
        t0 = times[:, -1]
