"""Long streams: chunked inference in constant memory, and truncated BPTT with ``state.detach()``.

Constant memory is checked deterministically in the default run: after every chunk the state has
the shapes it started with and carries no graph, no chunk's output outlives the caller's reference
to it, and the number of live tensors does not grow from chunk to chunk. The resident set size
(VmRSS from /proc/self/status, Linux: torch's CPU allocations do not show in ``tracemalloc``) is
measured only in the slow 100,000-step test, whose bound is explained there.
"""

from __future__ import annotations

import gc
import math
import weakref

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


def _live_tensors() -> int:
    """Tensors reachable by the garbage collector (``type``, not ``isinstance``: the latter touches
    deprecated torch attributes and warns)."""
    gc.collect()
    return sum(issubclass(type(o), torch.Tensor) for o in gc.get_objects())


def _chunk(g: torch.Generator, t_last: torch.Tensor, batch: int, chunk_len: int):
    """One chunk of an irregular stream that continues at ``t_last``: ``(x, times)``."""
    x = torch.randn(batch, chunk_len, I, generator=g)
    gaps = 0.05 + 0.1 * torch.rand(batch, chunk_len, generator=g, dtype=torch.float64)
    return x, t_last.unsqueeze(1) + gaps.cumsum(1)


def test_chunked_inference_holds_nothing_per_chunk():
    """3,200 steps in 16 chunks (batch 16, hidden 64)."""
    torch.manual_seed(0)
    model = DREAM(I, H, R).eval()
    g = torch.Generator().manual_seed(0)
    shapes = [tuple(c.shape) for c in model.init_state(16)]
    state, t0, t_last = None, None, torch.zeros(16, dtype=torch.float64)
    outputs, live = [], {}
    with torch.no_grad():
        for k in range(1, 17):
            x, times = _chunk(g, t_last, 16, 200)
            out, state = model(x, state, times=times, t0=t0)
            assert [tuple(c.shape) for c in state] == shapes, k
            assert all(c.grad_fn is None and not c.requires_grad for c in state), k
            assert bool(torch.isfinite(out).all()) and float(out.abs().max()) < 1.0
            outputs.append(weakref.ref(out))
            t0 = t_last = times[:, -1]
            del x, times, out
            if k in (4, 16):
                live[k] = _live_tensors()
    assert all(ref() is None for ref in outputs), "the model keeps a chunk's output alive"
    assert live[16] == live[4], live


@linux
@pytest.mark.slow
def test_100k_step_stream_runs_in_constant_memory():
    """100,000 steps in 100 chunks of 1000 (batch 4, hidden 16): RSS after chunk 100 within 8 MiB of chunk 10.

    Keeping each chunk's output alone would add 4·1000·16·4 B = 0.25 MiB a chunk, 22 MiB over the
    90 chunks; the allocator's own jitter was under 1 MiB. 8 MiB lies between the two with room
    on both sides, for another allocator or torch version.
    """
    torch.manual_seed(0)
    model = DREAM(I, 16, R).eval()
    g = torch.Generator().manual_seed(0)
    rss, state, t0 = {}, None, None
    t_last = torch.zeros(4, dtype=torch.float64)
    with torch.no_grad():
        for k in range(1, 101):
            x, times = _chunk(g, t_last, 4, 1000)
            out, state = model(x, state, times=times, t0=t0)
            t0 = t_last = times[:, -1]
            if k in (10, 100):
                rss[k] = rss_mib()
    assert bool(torch.isfinite(out).all()) and float(state.h.abs().max()) < 1.0
    assert rss[100] - rss[10] < 8.0, rss


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
