"""The floor of DREAM's fast paths: the sum of their ATen operations, each timed alone.

Records every operation one call of ``DREAM(64, 128, rank=8)`` on ``(32, T, 64)`` runs (inference,
a training step with ``--train``, or ``T`` steps of ``DREAMCell`` with ``--cell``) through a
``TorchDispatchMode``, with the loops run as Python (the functions that otherwise run scripted:
``test_fast_euler.py`` checks both give the same bits). Then it calls each recorded operation again, alone, on copies of its recorded
inputs (warm caches, no interpreter between operations) and sums the medians. Views (``view``,
``select``, ``narrow``, ...) are left out: they compute nothing. The per-call cost of reaching an
ATen kernel from Python is measured on a one-number ``add`` and subtracted as well, for a lower
bound. ``nn.LSTM`` and the scripted path run in the same process for comparison.

Run: python benchmarks/op_floor.py [--steps 200] [--train | --cell] [--solver euler] [--repeats 15]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from dreamode import DREAM, DREAMCell, _fast_euler, _script

VIEWS = {
    "alias",
    "as_strided",
    "detach",
    "expand",
    "narrow",
    "permute",
    "select",
    "slice",
    "split",
    "split_with_sizes",
    "squeeze",
    "t",
    "transpose",
    "unbind",
    "unsqueeze",
    "view",
    "_unsafe_view",
    "_reshape_alias",
    "lift_fresh",
}


def _copies(tree: Any) -> Any:
    """``tree`` with every tensor in it cloned."""
    return tree_map(lambda a: a.clone() if isinstance(a, torch.Tensor) else a, tree)


class Recorder(TorchDispatchMode):
    """Keeps ``(op, inputs before the call)`` for every operation that computes."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Any, tuple, dict]] = []
        self.views = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        if func.overloadpacket.__name__ in VIEWS:
            self.views += 1
        else:
            self.calls.append((func, *_copies((args, kwargs))))
        return func(*args, **kwargs)


def replay(calls: list[tuple[Any, tuple, dict]], repeats: int) -> tuple[float, Counter]:
    """Seconds: the sum over ``calls`` of each one's median time alone; and the time per op name."""
    total = 0.0
    by_op: Counter = Counter()
    for func, args, kwargs in calls:
        mutable = func._schema.is_mutable
        fresh = _copies((args, kwargs))
        ts = []
        for _ in range(repeats):
            if mutable:  # in-place and out= operations: start from the recorded inputs each time
                tree_map(lambda d, s: d.copy_(s) if isinstance(d, torch.Tensor) else d, fresh, (args, kwargs))
            t = time.perf_counter()
            func(*fresh[0], **fresh[1])
            ts.append(time.perf_counter() - t)
        med = sorted(ts)[len(ts) // 2]
        total += med
        by_op[func.overloadpacket.__name__] += med
    return total, by_op


def call_overhead(repeats: int = 2000) -> float:
    """Seconds to reach a kernel from Python: ``aten.add`` of two one-number tensors."""
    a, b = torch.ones(1), torch.ones(1)
    add = torch.ops.aten.add.Tensor
    return timed(lambda: add(a, b), repeats)


def _tiny_ops(a: torch.Tensor, n: int, view: bool) -> torch.Tensor:
    for _ in range(n):
        a = a.view(-1) if view else torch.mul(a, 1.0)
    return a


def scripted_overhead(view: bool, n: int = 20000) -> float:
    """Seconds a call of TorchScript's interpreter costs: ``mul`` of one number, or a ``view``."""
    a = torch.ones(1)
    ops = _script._scripted(_tiny_ops)  # scripted as the fast paths' loops are
    with torch.jit.optimized_execution(False):
        ops(a, 10, view)
        return timed(lambda: ops(a, n, view), 5) / n


def bare_cell_steps(cell: DREAMCell, x: torch.Tensor) -> None:
    """``DREAMCell``'s scripted step over ``x`` ``(B, T, I)`` with nothing around it: no argument
    checks, no state packing, outputs left as inference tensors (what the cell copies out)."""
    f, (B, T, _) = cell.field, x.shape
    z = f.initial_state(B)
    UU, sc = _fast_euler._pack_U(z.U, z.U_target), _fast_euler._pack(z.avg_surprise, z.adaptive_tau, 1)
    state = (z.h, UU, z.error_mean, z.error_var, sc)
    dt = torch.full((B,), f.config.time_step)
    for t in range(T):
        state = _fast_euler.scripted_step(f, *state, x[:, t], dt)


def timed(fn: Any, repeats: int) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return sorted(ts)[len(ts) // 2]


def main(argv: list[str] | None = None) -> dict[str, float | None]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=200)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--train", action="store_true", help="a training step (forward + backward of mean(out²))")
    mode.add_argument("--cell", action="store_true", help="stream DREAMCell step by step against nn.LSTMCell")
    p.add_argument("--repeats", type=int, default=15, help="calls per recorded operation (median)")
    p.add_argument("--solver", default="euler", help="a solver with a fast path: euler, rk4, midpoint, heun")
    p.add_argument("--top", type=int, default=12, help="operations to list")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    T = a.steps
    x = torch.randn(32, T, 64)
    if a.cell:
        dream, lstm = DREAMCell(64, 128, rank=8), torch.nn.LSTMCell(64, 128)
    else:
        dream, lstm = DREAM(64, 128, rank=8, solver=a.solver), torch.nn.LSTM(64, 128, batch_first=True)

    def run(m: torch.nn.Module) -> None:
        if a.train:
            m.zero_grad(set_to_none=True)
            m(x)[0].pow(2).mean().backward()
            return
        with torch.no_grad():
            if not a.cell:
                m(x)
                return
            state = None
            for t in range(T):
                out = m(x[:, t], state)
                state = out[1] if isinstance(m, DREAMCell) else out

    rec = Recorder()
    with _script.interpreted(), rec:
        run(dream)
    floor, by_op = replay(rec.calls, a.repeats)
    overhead = call_overhead()
    t_dream = timed(lambda: run(dream), 5)
    t_lstm = timed(lambda: run(lstm), 5)
    t_bare = timed(lambda: bare_cell_steps(dream, x), 5) if a.cell else None
    us = 1e6 / T  # seconds of the whole call -> µs per observation step
    lower = floor - overhead * len(rec.calls)
    ts_op, ts_view = scripted_overhead(False), scripted_overhead(True)
    model = lower + ts_op * len(rec.calls) + ts_view * rec.views
    what = "DREAMCell streamed" if a.cell else ("training step" if a.train else "inference") + f", solver {a.solver}"
    print(f"{what}, batch 32, T {T}, input 64, hidden 128, rank 8, 1 thread, float32; µs per step")
    print(f"  operations that compute: {len(rec.calls) / T:.1f} a step, and {rec.views / T:.1f} views")
    rows = [
        ("the operations, each alone, called from Python", floor),
        (f"... less {overhead * 1e6:.2f} µs a call (one-number add) = A, the kernels", lower),
        (f"A + TorchScript's {ts_op * 1e6:.2f} µs an operation, {ts_view * 1e6:.2f} a view", model),
        (f"{type(dream).__name__}, fast path (scripted loops), measured", t_dream),
    ]
    if t_bare is not None:
        rows.append(("its scripted step alone (no checks, no copies), measured", t_bare))
    rows.append((f"nn.{type(lstm).__name__}, measured", t_lstm))
    for label, t in rows:
        print(f"  {label:66s} {t * us:7.1f}  {t / t_lstm:5.2f} x")
    print("  dearest operations (each alone, less the call; µs a step):")
    counts = Counter(f.overloadpacket.__name__ for f, _, _ in rec.calls)
    kernels = {name: t - overhead * counts[name] for name, t in by_op.items()}
    for name, t in sorted(kernels.items(), key=lambda kv: -kv[1])[: a.top]:
        print(f"    {name:24s} {t * us:7.1f}  ({counts[name] / T:.1f} a step)")
    return {"floor": floor, "lower": lower, "dream": t_dream, "lstm": t_lstm, "bare": t_bare}


if __name__ == "__main__":
    main()
