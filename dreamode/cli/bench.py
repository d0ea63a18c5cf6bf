"""``dreamode bench``: DREAM against ``nn.LSTM`` and ``nn.GRU`` (and ncps' CfC when installed).

Times a forward pass (no gradient) and a training step (forward + backward of ``mean(out²)``) of
each model on the same ``(batch, steps, input_dim)`` input, interleaved (one repetition of every
model, then the next) and reports medians, ratios to ``nn.LSTM`` per observation step, and the
peak memory of one training step. Adaptive solvers are slow, so they run ``--adaptive-steps``
observations (and the generic fixed-step path ``--slow-steps``); the ratios divide by the number
of steps, which is fair because every model's cost is linear in it.

Peak memory: the increase of the resident set size over one training step, measured in a fresh
Python process per model (so that one model's allocations do not hide another's): on Linux the
peak RSS ``VmHWM``, reset just before the step, minus the RSS before it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ._types import positive_float, positive_int

MODELS = (
    "dream-euler",
    "dream-euler-irregular",
    "dream-euler-masked",
    "dream-euler-padded",
    "dream-euler-all",
    "dream-euler-generic",
    "dream-midpoint",
    "dream-rk4",
    "dream-rk4-generic",
    "dream-dopri5",
    "dream-dopri5-adjoint",
    "lstm",
    "gru",
    "cfc",
    "dream-cell",
    "lstm-cell",
    "dream-euler-native",
    "dream-euler-native-all",
    "dream-cell-native",
)
# the Euler path through dreamode.native's C++ kernels (opt-in, compiled on first use)
NATIVE = ("dream-euler-native", "dream-euler-native-all", "dream-cell-native")
FORWARD_ONLY = ("dream-cell", "lstm-cell", "dream-cell-native")
SLOW = ("dream-euler-generic", "dream-rk4-generic")  # the unfused path: --slow-steps, --slow-repeats
DEFAULT_MODELS = tuple(m for m in MODELS if not m.endswith("-generic") and m not in NATIVE)
BASELINE = "lstm"
MEMORY_METHOD = (
    "peak resident set size increase over one training step, in a fresh Python process per model: "
    "on Linux VmHWM (reset through /proc/self/clear_refs just before the step) minus VmRSS before "
    "it; elsewhere ru_maxrss after minus before"
)


@dataclass
class Sizes:
    batch: int = 32
    steps: int = 200
    input_dim: int = 64
    hidden_dim: int = 128
    rank: int = 8


@dataclass
class Case:
    """One benchmarked model."""

    name: str
    steps: int
    repeats: int
    warmup: int
    adaptive: bool = False
    forward_only: bool = False
    forward_s: list[float] = field(default_factory=list)
    train_s: list[float] = field(default_factory=list)
    forward_cpu_s: list[float] = field(default_factory=list)
    train_cpu_s: list[float] = field(default_factory=list)
    peak_mb: float | None = None
    note: str = ""


# -- models ------------------------------------------------------------------------------------


def cfc_available() -> bool:
    try:
        import ncps.torch  # noqa: F401
    except Exception:
        return False
    return True


def make_model(name: str, sizes: Sizes, dtype: Any, rtol: float, atol: float) -> Callable:
    """``forward(x) -> output (B, T, H)`` of the named model, with fresh parameters (seeded).

    ``dream-euler-irregular``, ``-masked``, ``-padded`` and ``-all`` call the same model with random
    steps Δt in [0.02, 0.2], 30% of the channels missing, lengths spread over [T/2, T], or all
    three. ``dream-cell`` and ``lstm-cell`` stream the sequence one step at a time (forward only).
    ``-native`` models run through :mod:`dreamode.native`'s C++ kernels (build them first);
    ``dream-euler-native-all`` with the three variations.
    """
    import torch
    from torch import nn

    from dreamode import DREAM, DREAMCell

    torch.manual_seed(0)
    I, H, R = sizes.input_dim, sizes.hidden_dim, sizes.rank
    kwargs: dict[str, Any] = {}
    if name.startswith("dream-euler-") and name != "dream-euler-generic":
        variant = name.split("-")[-1]
        g = torch.Generator().manual_seed(2)
        B, T = sizes.batch, sizes.steps
        if variant in ("irregular", "all"):
            kwargs["dt"] = (0.02 + 0.18 * torch.rand(B, T, generator=g)).to(dtype)
        if variant in ("masked", "all"):
            kwargs["mask"] = (torch.rand(B, T, I, generator=g) > 0.3).to(dtype)
        if variant in ("padded", "all"):
            kwargs["lengths"] = torch.randint(max(T // 2, 1), T + 1, (B,), generator=g)
            kwargs["lengths"][0] = T
    if name.startswith("dream-cell"):
        model = DREAMCell(I, H, rank=R, dtype=dtype)
    elif name == "lstm-cell":
        model = nn.LSTMCell(I, H, dtype=dtype)
    elif name.startswith("dream-"):
        solver = name.split("-")[1]
        kw: dict[str, Any] = {"solver": solver, "dtype": dtype}
        if solver == "dopri5":
            kw.update(rtol=rtol, atol=atol, adjoint=name.endswith("adjoint"))
        model = DREAM(I, H, rank=R, **kw)
    elif name == "lstm":
        model = nn.LSTM(I, H, batch_first=True, dtype=dtype)
    elif name == "gru":
        model = nn.GRU(I, H, batch_first=True, dtype=dtype)
    elif name == "cfc":
        from ncps.torch import CfC

        model = CfC(I, H, batch_first=True).to(dtype)
    else:  # pragma: no cover - names are validated by argparse
        raise ValueError(name)

    def forward(x: Any) -> Any:
        if name in NATIVE:
            from dreamode import native

            with native.enabled():
                return stream(x) if "cell" in name else model(x, **kwargs)[0]
        if name.endswith("-generic"):  # through DREAMField.evaluate, step by step (no fast path)
            from dreamode._fast_euler import disabled

            with disabled():
                return model(x)[0]
        if name in ("dream-cell", "lstm-cell"):
            return stream(x)
        return model(x, **kwargs)[0]

    def stream(x: Any) -> Any:
        state = None
        outs = []
        for t in range(x.shape[1]):
            if name == "lstm-cell":
                state = model(x[:, t], state)
                h = state[0]
            else:
                h, state = model(x[:, t], state)
            outs.append(h)
        return torch.stack(outs, 1)

    forward.model = model  # type: ignore[attr-defined]
    return forward


def _inputs(sizes: Sizes, steps: int, dtype: Any) -> Any:
    import torch

    g = torch.Generator().manual_seed(1)
    return torch.randn(sizes.batch, steps, sizes.input_dim, generator=g).to(dtype)


def _forward_once(fwd: Callable, x: Any) -> None:
    import torch

    with torch.no_grad():
        fwd(x)


def _train_once(fwd: Callable, x: Any) -> None:
    fwd.model.zero_grad(set_to_none=True)  # type: ignore[attr-defined]
    out = fwd(x)
    out.square().mean().backward()


def _timed(fn: Callable, *args: Any) -> tuple[float, float]:
    c0, t0 = time.process_time(), time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0, time.process_time() - c0


# -- memory probe (runs in a fresh process) ---------------------------------------------------


def _status_mb(key: str) -> float | None:
    """``VmRSS`` or ``VmHWM`` (peak RSS of this process image) from /proc/self/status, in MB."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


def _reset_peak() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0); whether it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _maxrss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 1024


def probe_memory(spec: dict[str, Any]) -> dict[str, Any]:
    """One training step of ``spec["model"]``; the peak RSS increase in MB (run in a new process).

    Linux: ``VmHWM`` (reset to the current RSS just before the step) minus ``VmRSS`` before it.
    Elsewhere: ``ru_maxrss`` after minus before (an underestimate if the set-up peaked higher; note
    that ``ru_maxrss`` also counts the parent's size at fork on Linux, hence not used there).
    """
    import torch

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    sizes = Sizes(**spec["sizes"])
    dtype = getattr(torch, spec["dtype"])
    fwd = make_model(spec["model"], sizes, dtype, spec["rtol"], spec["atol"])
    x = _inputs(sizes, spec["steps"], dtype)
    if spec["model"] in NATIVE:
        from dreamode import native

        native.build()  # loading the library is not part of the step
    if _reset_peak() and _status_mb("VmRSS") is not None:
        before = _status_mb("VmRSS")
        _train_once(fwd, x)
        peak = _status_mb("VmHWM") - before
        method = "VmHWM"
    else:  # pragma: no cover - not Linux
        before = _maxrss_mb()
        _train_once(fwd, x)
        peak = _maxrss_mb() - before
        method = "ru_maxrss"
    return {"peak_mb": max(peak, 0.0), "method": method}


def _probe_main() -> None:
    spec = json.loads(sys.stdin.read())
    print(json.dumps(probe_memory(spec)))


def measure_memory(
    model: str, sizes: Sizes, steps: int, dtype: str, threads: int | None, rtol: float, atol: float, timeout: float
) -> tuple[float | None, str]:
    """Peak MB of one training step in a subprocess, or ``(None, reason)``."""
    spec = {
        "model": model,
        "sizes": asdict(sizes),
        "steps": steps,
        "dtype": dtype,
        "threads": threads,
        "rtol": rtol,
        "atol": atol,
    }
    code = "from dreamode.cli.bench import _probe_main; _probe_main()"
    try:
        res = subprocess.run(
            [sys.executable, "-c", code],
            input=json.dumps(spec),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return None, f"memory probe timed out after {timeout:.0f} s"
    if res.returncode != 0:
        tail = (res.stderr.strip().splitlines() or ["?"])[-1]
        return None, f"memory probe failed: {tail}"
    return float(json.loads(res.stdout.strip().splitlines()[-1])["peak_mb"]), ""


# -- the benchmark -----------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if hasattr(os, "sched_getaffinity"):
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    if hasattr(os, "getloadavg"):
        info["load_average_start"] = [round(v, 2) for v in os.getloadavg()]
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def plan(args: argparse.Namespace) -> list[Case]:
    cases = []
    for name in args.models:
        if name == "cfc" and not cfc_available():
            continue
        adaptive = "dopri5" in name
        slow = name in SLOW
        steps = args.adaptive_steps if adaptive else args.slow_steps if slow else args.steps
        repeats = args.adaptive_repeats if adaptive else args.slow_repeats if slow else args.repeats
        cases.append(
            Case(
                name, steps, repeats, warmup=0 if adaptive else 1, adaptive=adaptive, forward_only=name in FORWARD_ONLY
            )
        )
    return cases


def run_bench(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    import torch

    from .._progress import progress

    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = Sizes(args.batch, args.steps, args.input_dim, args.hidden_dim, args.rank)
    dtype = getattr(torch, args.dtype)
    cases = plan(args)
    skipped = [m for m in args.models if m == "cfc" and not cfc_available()]
    if skipped:
        log("bench: ncps is not installed: CfC skipped (pip install ncps)")
    report: dict[str, Any] = {
        "command": "dreamode " + " ".join(getattr(args, "argv", ["bench"])),
        "machine": machine_info(),
        "config": {
            **asdict(sizes),
            "dtype": args.dtype,
            "repeats": args.repeats,
            "adaptive_steps": args.adaptive_steps,
            "adaptive_repeats": args.adaptive_repeats,
            "slow_steps": args.slow_steps,
            "slow_repeats": args.slow_repeats,
            "rtol": args.rtol,
            "atol": args.atol,
            "threads": torch.get_num_threads(),
            "clock": args.clock,
        },
        "timing_method": (
            "median over repeats, models interleaved (one repetition of each, then the next); wall "
            "clock (time.perf_counter) and process CPU time (time.process_time); ratios to nn.LSTM "
            "per observation step"
        ),
        "memory_method": MEMORY_METHOD,
        "results": [],
        "adjoint_memory": [],
        "skipped": skipped,
    }
    if any(c.name in NATIVE for c in cases):
        from dreamode import native

        log("bench: building dreamode.native (compiles on first use, about 20-30 s; then cached by torch)")
        native.build()
        report["native_build_seconds"] = round(native.build_seconds or 0.0, 3)
        log(f"bench: dreamode.native ready in {native.build_seconds:.1f} s")
    quiet = getattr(args, "quiet", False)
    if not args.skip_timing and cases:
        models = {}
        inputs = {}
        with progress(cases, desc="warm-up", unit="model", quiet=quiet) as bar:
            for c in bar:
                models[c.name] = make_model(c.name, sizes, dtype, args.rtol, args.atol)
                inputs[c.name] = _inputs(sizes, c.steps, dtype)
                for _ in range(c.warmup):
                    _forward_once(models[c.name], inputs[c.name])
                    if not c.forward_only:
                        _train_once(models[c.name], inputs[c.name])
        total = sum(c.repeats for c in cases)
        done = 0
        with progress(total=total, desc="timing", unit="run", quiet=quiet) as bar:
            for r in range(max(c.repeats for c in cases)):
                for c in cases:
                    if r >= c.repeats:
                        continue
                    fwd, x = models[c.name], inputs[c.name]
                    w, cpu = _timed(_forward_once, fwd, x)
                    c.forward_s.append(w)
                    c.forward_cpu_s.append(cpu)
                    train = ""
                    if not c.forward_only:
                        w2, cpu2 = _timed(_train_once, fwd, x)
                        c.train_s.append(w2)
                        c.train_cpu_s.append(cpu2)
                        train = f"   train {1e3 * w2:9.1f} ms"
                    done += 1
                    bar.update(1)
                    log(f"[{done}/{total}] {c.name:<22} T={c.steps:<5} forward {1e3 * w:9.1f} ms{train}")
        del models, inputs
    if not args.no_memory and not args.skip_timing:
        probed = [c for c in cases if not c.forward_only]
        with progress(probed, desc="memory", unit="probe", quiet=quiet) as bar:
            for k, c in enumerate(bar):
                log(f"[memory {k + 1}/{len(probed)}] {c.name} (one training step in a new process)")
                c.peak_mb, c.note = measure_memory(
                    c.name, sizes, c.steps, args.dtype, args.threads, args.rtol, args.atol, args.memory_timeout
                )
    report["results"] = [] if args.skip_timing else summarize(cases, args.clock)
    for T in args.adjoint_memory or []:
        for name in ("dream-dopri5", "dream-dopri5-adjoint"):
            direct_max = getattr(args, "adjoint_memory_direct_max", None)
            if name == "dream-dopri5" and direct_max is not None and T > direct_max:
                log(f"[adjoint memory] {name} T={T}: skipped (--adjoint-memory-direct-max {direct_max})")
                report["adjoint_memory"].append(
                    {"model": name, "steps": T, "peak_mb": None, "seconds": 0.0, "note": "skipped"}
                )
                continue
            log(f"[adjoint memory] {name} T={T}")
            t0 = time.perf_counter()
            peak, note = measure_memory(
                name, sizes, T, args.dtype, args.threads, args.rtol, args.atol, args.memory_timeout
            )
            # what any method must keep: the outputs h(t_i) and their gradient
            outputs_mb = 2 * sizes.batch * T * sizes.hidden_dim * (8 if args.dtype == "float64" else 4) / 2**20
            report["adjoint_memory"].append(
                {
                    "model": name,
                    "steps": T,
                    "peak_mb": peak,
                    "outputs_mb": outputs_mb,
                    "seconds": time.perf_counter() - t0,
                    "note": note,
                }
            )
    if hasattr(os, "getloadavg"):
        report["machine"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    return report


def summarize(cases: list[Case], clock: str) -> list[dict[str, Any]]:
    def med(v: list[float]) -> float | None:
        return statistics.median(v) if v else None

    rows = []
    for c in cases:
        rows.append(
            {
                "model": c.name,
                "steps": c.steps,
                "repeats": len(c.forward_s),
                "forward_ms": _ms(med(c.forward_s)),
                "train_ms": _ms(med(c.train_s)),
                "forward_cpu_ms": _ms(med(c.forward_cpu_s)),
                "train_cpu_ms": _ms(med(c.train_cpu_s)),
                "peak_mb": None if c.peak_mb is None else round(c.peak_mb, 1),
                "note": c.note,
            }
        )
    by_name = {r["model"]: r for r in rows}

    def ratio(r: dict[str, Any], base: dict[str, Any] | None, col: str) -> float | None:
        if base is None or r[col] is None or not base[col]:
            return None
        return round((r[col] / r["steps"]) / (base[col] / base["steps"]), 3)

    for r in rows:
        # streaming cells are compared with nn.LSTMCell, everything else with nn.LSTM
        base = by_name.get("lstm-cell" if "cell" in r["model"] else BASELINE)
        euler = by_name.get("dream-euler")
        for key in ("forward", "train"):
            r[f"{key}_ratio"] = ratio(r, base, f"{key}_ms")
            r[f"{key}_ratio_cpu"] = ratio(r, base, f"{key}_cpu_ms")
            dream = r["model"].startswith("dream-")
            r[f"{key}_vs_euler"] = ratio(r, euler, f"{key}_ms") if dream else None
            r[f"{key}_vs_euler_cpu"] = ratio(r, euler, f"{key}_cpu_ms") if dream else None
        r["forward_ratio_shown"] = r["forward_ratio" if clock == "wall" else "forward_ratio_cpu"]
        r["train_ratio_shown"] = r["train_ratio" if clock == "wall" else "train_ratio_cpu"]
        for key in ("forward", "train"):
            r[f"{key}_vs_euler_shown"] = r[f"{key}_vs_euler" if clock == "wall" else f"{key}_vs_euler_cpu"]
    return rows


def _ms(v: float | None) -> float | None:
    return None if v is None else round(1e3 * v, 2)


def format_table(report: dict[str, Any]) -> str:
    clock = report["config"]["clock"]
    fw, tr = ("forward_ms", "train_ms") if clock == "wall" else ("forward_cpu_ms", "train_cpu_ms")
    head = [
        "model",
        "T",
        f"forward ms ({clock})",
        f"train ms ({clock})",
        "forward ×LSTM",
        "train ×LSTM",
        "forward ×euler",
        "train ×euler",
        "peak MB",
    ]
    body = []
    for r in report["results"]:

        def f(v: Any, fmt: str) -> str:
            return "-" if v is None else format(v, fmt)

        body.append(
            [
                r["model"],
                str(r["steps"]),
                f(r[fw], ".1f"),
                f(r[tr], ".1f"),
                f(r["forward_ratio_shown"], ".2f"),
                f(r["train_ratio_shown"], ".2f"),
                f(r.get("forward_vs_euler_shown"), ".2f"),
                f(r.get("train_vs_euler_shown"), ".2f"),
                f(r["peak_mb"], ".1f") if r["peak_mb"] is not None else ("-" if not r["note"] else "n/a"),
            ]
        )
    lines = []
    if body:
        widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
        lines.append("  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(head, widths))))
        lines.append("  ".join("-" * w for w in widths))
        for b in body:
            lines.append("  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(b, widths))))
        lines.append(
            "ratios: per observation step, to nn.LSTM (cells: to nn.LSTMCell) and to DREAM's default Euler "
            "path; peak MB: one training step, fresh process"
        )
    if report["adjoint_memory"]:
        lines.append("")
        lines.append("adjoint memory (peak MB of one training step, dopri5; outputs: h(t_i) and its gradient):")
        lines.append(f"{'T':>7}  {'direct':>10}  {'adjoint':>10}  {'outputs':>10}")
        by_t: dict[int, dict[str, Any]] = {}
        for a in report["adjoint_memory"]:
            by_t.setdefault(a["steps"], {})[a["model"]] = a["peak_mb"]
            by_t[a["steps"]]["outputs"] = a.get("outputs_mb")
        for T, d in by_t.items():

            def g(v: Any) -> str:
                return "n/a" if v is None else f"{v:.1f}"

            lines.append(
                f"{T:>7}  {g(d.get('dream-dopri5')):>10}  {g(d.get('dream-dopri5-adjoint')):>10}  {g(d.get('outputs')):>10}"
            )
    m = report["machine"]
    lines.append("")
    lines.append(
        f"machine: {m.get('cpu_model', m['processor'])}, {m.get('cpus_usable', m['cpu_count'])} usable CPU(s), "
        f"torch {m['torch']} with {report['config']['threads']} thread(s), load average "
        f"{m.get('load_average_start', '?')} -> {m.get('load_average_end', '?')}"
    )
    return "\n".join(lines)


# -- command line ------------------------------------------------------------------------------


EXAMPLES = """examples:
  dreamode bench                                   # defaults: 2-4 minutes on 2 shared cores
  dreamode bench --threads 1 --out bench.json      # one intra-op thread, JSON report
  dreamode bench --quick                           # a smoke run (seconds)
  dreamode bench --models dream-euler lstm gru --steps 1000
  dreamode bench --threads 1 --native --models dream-euler lstm dream-cell lstm-cell   # + the C++ kernel
  dreamode bench --skip-timing --adjoint-memory 200 1000 5000 --batch 4 --hidden-dim 16
"""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "bench",
        help="time DREAM (euler, rk4, dopri5, dopri5 + adjoint) against nn.LSTM and nn.GRU",
        description=__doc__.split("\n\n", 1)[1].strip(),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s = Sizes()
    p.add_argument("--batch", type=positive_int, default=s.batch, help="batch size B (default: %(default)s)")
    p.add_argument("--steps", type=positive_int, default=s.steps, help="sequence length T (default: %(default)s)")
    p.add_argument("--input-dim", type=positive_int, default=s.input_dim, help="input size I (default: %(default)s)")
    p.add_argument("--hidden-dim", type=positive_int, default=s.hidden_dim, help="hidden size H (default: %(default)s)")
    p.add_argument("--rank", type=positive_int, default=s.rank, help="DREAM fast-weight rank R (default: %(default)s)")
    p.add_argument("--repeats", type=positive_int, default=5, help="timed repetitions per model (default: %(default)s)")
    p.add_argument(
        "--adaptive-steps",
        type=positive_int,
        default=5,
        help="sequence length for dopri5 and dopri5 + adjoint (default: %(default)s)",
    )
    p.add_argument(
        "--adaptive-repeats", type=positive_int, default=1, help="repetitions of the adaptive solvers (default: 1)"
    )
    p.add_argument(
        "--slow-steps",
        type=positive_int,
        default=25,
        help="sequence length for dream-euler-generic and dream-rk4-generic, the unfused path (default: %(default)s)",
    )
    p.add_argument(
        "--slow-repeats", type=positive_int, default=1, help="repetitions of the -generic models (default: 1)"
    )
    p.add_argument("--rtol", type=positive_float, default=1e-3, help="dopri5 relative tolerance (default: 1e-3)")
    p.add_argument("--atol", type=positive_float, default=1e-4, help="dopri5 absolute tolerance (default: 1e-4)")
    p.add_argument(
        "--models",
        nargs="+",
        choices=MODELS,
        default=list(DEFAULT_MODELS),
        metavar="MODEL",
        help=f"models to run, of {', '.join(MODELS)} (default: all but the -generic ones, the same rules "
        "without the fast paths; cfc only when ncps is installed)",
    )
    p.add_argument(
        "--native",
        action="store_true",
        help="also run dream-euler-native, dream-euler-native-all and dream-cell-native: the Euler path "
        "through dreamode.native's C++ kernels, compiled on first use (needs a C++ compiler)",
    )
    p.add_argument("--threads", type=positive_int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument(
        "--dtype",
        choices=["float32", "float64"],
        default="float32",
        help="dtype of the inputs and weights (default: %(default)s)",
    )
    p.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="clock of the printed table; the JSON has both (default: %(default)s)",
    )
    p.add_argument("--quick", action="store_true", help="a smoke run: T=50, 2 repeats, 3 adaptive steps, no memory")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes")
    p.add_argument(
        "--adjoint-memory",
        type=positive_int,
        nargs="+",
        metavar="T",
        help="also measure the peak memory of dopri5 direct and adjoint at these lengths (slow; default: none)",
    )
    p.add_argument(
        "--adjoint-memory-direct-max",
        type=positive_int,
        default=None,
        metavar="T",
        help="skip the direct (non-adjoint) probe above this length, which keeps every stage: GBs (default: no limit)",
    )
    p.add_argument("--skip-timing", action="store_true", help="only the --adjoint-memory study")
    p.add_argument(
        "--memory-timeout", type=positive_float, default=1800.0, help="seconds per memory probe (default: %(default)s)"
    )
    p.add_argument("--out", default=None, help="write the report as JSON to this file (default: none, the table only)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or progress lines (stderr)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    if args.quick:
        args.steps = min(args.steps, 50)
        args.slow_steps = min(args.slow_steps, 10)
        args.repeats = min(args.repeats, 2)
        args.adaptive_steps = min(args.adaptive_steps, 3)
        args.no_memory = True
    if args.native:
        args.models = [*args.models, *(m for m in NATIVE if m not in args.models)]
    if args.rank > args.input_dim:
        print(f"dreamode bench: error: --rank ({args.rank}) must be <= --input-dim ({args.input_dim})", file=sys.stderr)
        return 2
    if args.out:
        out_dir = Path(args.out).resolve().parent
        if not out_dir.is_dir():
            print(f"dreamode bench: error: --out: no such directory {str(out_dir)!r}", file=sys.stderr)
            return 2

    def log(msg: str) -> None:
        if not args.quiet:
            # through tqdm, so that a progress bar on the terminal is redrawn below the line
            tqdm.write(msg, file=sys.stderr)

    report = run_bench(args, log)
    print(format_table(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        log(f"bench: wrote {args.out}")
    return 0
