"""Compare discretisations of one trained DREAM field against the seed's Euler rule.

`run_compare` trains a small DREAM classifier with the Euler rule (or loads a checkpoint), then
runs the *same* trained field through every selected method at the observation times, plus the
fixed-step methods at several sub-step sizes, and reports per method: deviation of ``h`` from a
tight reference solution and from the Euler rule, task accuracy, NFE, steps and wall time; the
empirical order of the sub-step sweep; and where the surprise trajectories part from the Euler
rule's. ``dreamode compare`` is its command line.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._model import DREAM
from .classify import SequenceClassifier, accuracy_from_logits, train_classifier
from .data import (
    IrregularBatch,
    IrregularSeries,
    SeriesDataset,
    collate_series,
    drop_observations,
    pad_series,
    read_long_csv,
    standardize,
)
from .data._time import median_gap
from .datasets import load_dataset

#: methods of the default comparison: name shown -> DREAM keyword arguments
DEFAULT_METHODS: dict[str, dict[str, Any]] = {
    "euler": {"solver": "euler"},
    "ltc-fused": {"solver": "ltc-fused"},
    "rk4": {"solver": "rk4"},
    "dopri5": {"solver": "dopri5", "rtol": 1e-6, "atol": 1e-8},
    "dopri5+adjoint": {"solver": "dopri5", "rtol": 1e-6, "atol": 1e-8, "adjoint": True},
    "scipy-DOP853": {"solver": "scipy-DOP853", "rtol": 1e-8, "atol": 1e-10},
}
REFERENCE = {"solver": "dopri5", "rtol": 1e-10, "atol": 1e-12}
SWEEP_METHODS = ("euler", "midpoint", "heun", "rk4")
ADJOINT_SERIES = 16  # sequences whose forward + adjoint backward pass is timed
PART_THRESHOLD = 0.1  # |ΔS| at which two surprise trajectories count as parted


@dataclass
class CompareSettings:
    """Everything a comparison depends on (saved into ``compare.json``)."""

    data: str = "japanese_vowels"
    methods: Sequence[str] = tuple(DEFAULT_METHODS)
    hidden_dim: int = 32
    rank: int = 4
    epochs: int = 12
    lr: float = 1e-2
    batch_size: int = 32
    seed: int = 0
    time_scale: float | None = None  # None: median observation gap -> time_step
    substeps: Sequence[int] = (1, 2, 4, 8, 16)
    max_series: int | None = 160
    drop: float = 0.0  # fraction of observations dropped per series (seeded), for irregular sampling
    checkpoint: str | None = None
    device: str = "cpu"
    label_col: str = "label"


@dataclass
class MethodResult:
    name: str
    max_dev_ref: float
    mean_dev_ref: float
    max_dev_euler: float
    mean_dev_euler: float
    accuracy: float
    nfe: int
    steps: int | None
    wall_s: float
    parted_fraction: float
    parted_median_step: float | None
    notes: list[str] = field(default_factory=list)


# -- data -----------------------------------------------------------------------------------


def load_split(settings: CompareSettings) -> tuple[list[IrregularSeries], list[IrregularSeries], int]:
    """Train and test series (standardised on train, times scaled) and the number of classes."""
    path = Path(settings.data)
    if path.suffix.lower() == ".csv" or path.exists():
        if not path.exists():
            raise FileNotFoundError(f"--data: no such file {settings.data!r}")
        long = read_long_csv(path, label_col=settings.label_col)
        if long.classes is None:
            raise ValueError(f"--data: {settings.data} has no {settings.label_col!r} column; compare needs labels")
        order = np.random.default_rng(settings.seed).permutation(len(long.series))
        cut = int(round(0.7 * len(order)))
        train = [long.series[i] for i in order[:cut]]
        test = [long.series[i] for i in order[cut:]]
        n_classes = len(long.classes)
    else:
        train = load_dataset(settings.data, split="train")
        test = load_dataset(settings.data, split="test")
        labels = {s.label for s in train + test}
        if None in labels:
            raise ValueError(f"--data: the data set {settings.data!r} has no class labels; compare needs labels")
        n_classes = max(labels) + 1
    if settings.drop:
        train = drop_observations(train, settings.drop, seed=settings.seed)
        test = drop_observations(test, settings.drop, seed=settings.seed + 1)
    train, test = standardize(train, test)
    scale = settings.time_scale
    if scale is None:
        gap = median_gap(train)
        scale = 0.1 / gap if gap else 1.0
    train = [s._replace(times=torch.as_tensor(s.times, dtype=torch.float64) * scale) for s in train]
    test = [s._replace(times=torch.as_tensor(s.times, dtype=torch.float64) * scale) for s in test]
    settings.time_scale = scale
    if settings.max_series is not None:
        test = test[: settings.max_series]
    return train, test, n_classes


# -- model ----------------------------------------------------------------------------------


def train_or_load(
    settings: CompareSettings, train: list[IrregularSeries], n_classes: int, log: Callable[[str], None]
) -> SequenceClassifier:
    input_dim = int(np.asarray(train[0].values).shape[1])
    torch.manual_seed(settings.seed)
    model = SequenceClassifier(input_dim, n_classes, settings.hidden_dim, settings.rank, solver="euler")
    if settings.checkpoint:
        ckpt = torch.load(settings.checkpoint, weights_only=True, map_location="cpu")
        state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else ckpt
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"--checkpoint: does not fit this model ({str(err).splitlines()[0]})") from None
        log(f"loaded {settings.checkpoint}")
        return model
    loader = torch.utils.data.DataLoader(
        SeriesDataset(train), batch_size=settings.batch_size, shuffle=True, collate_fn=collate_series
    )
    train_classifier(model, loader, epochs=settings.epochs, lr=settings.lr, seed=settings.seed, log=log)
    return model


def _encoder(model: SequenceClassifier, **kwargs: Any) -> DREAM:
    """A float64 copy of the trained encoder integrated by another method."""
    enc = model.encoder
    copy = DREAM(enc.input_dim, enc.hidden_dim, enc.rank, dtype=torch.float64, **kwargs)
    copy.load_state_dict(enc.state_dict())
    return copy


def _run(enc: DREAM, head: torch.nn.Linear, batch: IrregularBatch, backward: bool = False) -> dict[str, Any]:
    x = batch.x.to(torch.float64)
    mask = batch.mask.to(torch.float64)
    start = time.perf_counter()
    with torch.set_grad_enabled(backward):
        out, state, trace = enc(x, times=batch.times, mask=mask, lengths=batch.lengths, return_trace=True)
        logits = head.double()(state.h)
        if backward:
            logits.logsumexp(dim=1).sum().backward()
    wall = time.perf_counter() - start
    stats = enc.solve_stats[0]
    return {
        "h": out.detach(),
        "surprise": trace.surprise.detach(),
        "tau": trace.tau.detach(),
        "logits": logits.detach(),
        "nfe": stats.nfe,
        "steps": stats.steps or None,  # scipy's solve_ivp does not report its steps
        "wall_s": wall,
    }


def _deviation(a: Tensor, b: Tensor, valid: Tensor) -> tuple[float, float]:
    d = (a - b).abs().amax(dim=-1)[valid]
    return float(d.max()), float(d.mean())


def _parting(s: Tensor, s_ref: Tensor, valid: Tensor) -> tuple[float, float | None]:
    """Fraction of sequences whose surprise parts from the reference, and the median step it does."""
    apart = ((s - s_ref).abs() > PART_THRESHOLD) & valid
    parted = apart.any(dim=1)
    if not bool(parted.any()):
        return 0.0, None
    first = apart.float().argmax(dim=1)[parted]
    return float(parted.float().mean()), float(first.float().median())


def _slope(steps: list[float], errors: list[float]) -> float:
    pts = [(math.log(h), math.log(e)) for h, e in zip(steps, errors) if e > 1e-13]
    if len(pts) < 2:
        return float("nan")
    xs, ys = zip(*pts)
    return float(np.polyfit(xs, ys, 1)[0])


# -- the comparison -------------------------------------------------------------------------


def run_compare(settings: CompareSettings, out_dir: str | Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the comparison, write ``compare.json``, ``compare.md`` and plots into ``out_dir``."""
    unknown = [m for m in settings.methods if m not in DEFAULT_METHODS]
    if unknown:
        raise ValueError(f"--solvers: unknown method(s) {unknown}; choose from {', '.join(DEFAULT_METHODS)}")
    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, test, n_classes = load_split(settings)
    log(f"data {settings.data}: {len(train)} train / {len(test)} test series, time scale {settings.time_scale:.4g}")
    model = train_or_load(settings, train, n_classes, log)
    model.eval()
    torch.save({"model": model.state_dict(), "settings": _jsonable(asdict(settings))}, out / "model.pt")
    batch = pad_series(test, dtype=torch.float64)
    valid = torch.arange(batch.x.shape[1]).unsqueeze(0) < batch.lengths.unsqueeze(1)
    labels = batch.labels

    log("reference: dopri5, rtol 1e-10, atol 1e-12 (float64)")
    ref = _run(_encoder(model, **REFERENCE), model.head, batch)
    euler = _run(_encoder(model, solver="euler"), model.head, batch)

    results: list[MethodResult] = []
    for i, name in enumerate(settings.methods, 1):
        kwargs = DEFAULT_METHODS[name]
        log(f"[{i}/{len(settings.methods)}] {name}")
        if name == "euler":
            r = euler
        elif kwargs.get("adjoint"):
            # The adjoint changes only the backward pass: deviations and accuracy come from the
            # forward solve; the wall time is a forward + backward pass on a few sequences.
            r = _run(_encoder(model, **kwargs), model.head, batch)
            timed = _run(_encoder(model, **kwargs), model.head, _subset(batch, ADJOINT_SERIES), backward=True)
            r["wall_s"] = timed["wall_s"]
        else:
            r = _run(_encoder(model, **kwargs), model.head, batch)
        mx, mean = _deviation(r["h"], ref["h"], valid)
        mxe, meane = _deviation(r["h"], euler["h"], valid)
        frac, med = _parting(r["surprise"], euler["surprise"], valid)
        notes = [f"wall time: forward + adjoint backward on {ADJOINT_SERIES} series"] if kwargs.get("adjoint") else []
        results.append(
            MethodResult(
                name,
                mx,
                mean,
                mxe,
                meane,
                accuracy_from_logits(r["logits"], labels),
                r["nfe"],
                r["steps"],
                r["wall_s"],
                frac,
                med,
                notes,
            )
        )

    log("sub-step sweep")
    gap = median_gap(test) or 1.0  # test times are already scaled
    sweep: dict[str, dict[str, Any]] = {}
    for name in SWEEP_METHODS:
        steps, errors, means, nfes = [], [], [], []
        for k in settings.substeps:
            h = gap / k
            r = _run(_encoder(model, solver=name, max_step=h), model.head, batch)
            steps.append(h)
            mx, mean = _deviation(r["h"], ref["h"], valid)
            errors.append(mx)
            means.append(mean)
            nfes.append(r["nfe"])
        sweep[name] = {
            "max_step": steps,
            "max_error": errors,
            "mean_error": means,
            "nfe": nfes,
            "order": _slope(steps[-3:], errors[-3:]),
            "mean_order": _slope(steps[-3:], means[-3:]),
        }

    report = {
        "settings": _jsonable(asdict(settings)),
        "reference": {**REFERENCE, "nfe": ref["nfe"], "accuracy": accuracy_from_logits(ref["logits"], labels)},
        "methods": [asdict(r) for r in results],
        "sweep": sweep,
        "part_threshold": PART_THRESHOLD,
        "wall_s": time.perf_counter() - t_start,
    }
    (out / "compare.json").write_text(json.dumps(report, indent=2))
    (out / "compare.md").write_text(markdown(report))
    _plots(out, results, sweep, ref, euler, model, batch, settings)
    report["wall_s"] = time.perf_counter() - t_start
    (out / "compare.json").write_text(json.dumps(report, indent=2))
    log(table(report))
    return report


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


# -- output ---------------------------------------------------------------------------------

_COLUMNS = (
    ("method", "name", "{}"),
    ("max |h-h_ref|", "max_dev_ref", "{:.2e}"),
    ("mean |h-h_ref|", "mean_dev_ref", "{:.2e}"),
    ("max |h-h_euler|", "max_dev_euler", "{:.2e}"),
    ("accuracy", "accuracy", "{:.3f}"),
    ("NFE", "nfe", "{}"),
    ("steps", "steps", "{}"),
    ("wall s", "wall_s", "{:.2f}"),
    ("S parts", "parted_fraction", "{:.0%}"),
    ("at step", "parted_median_step", "{}"),
)


def _rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for m in report["methods"]:
        cells = []
        for _, key, fmt in _COLUMNS:
            v = m[key]
            cells.append("—" if v is None else fmt.format(v))
        rows.append(cells)
    return rows


def table(report: dict[str, Any]) -> str:
    """The per-method table and the sweep's orders as plain text."""
    head = [c[0] for c in _COLUMNS]
    rows = _rows(report)
    widths = [max(len(head[i]), *(len(r[i]) for r in rows)) for i in range(len(head))]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    lines = [line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]
    for key, what in (("order", "max"), ("mean_order", "mean")):
        orders = ", ".join(f"{k} {v[key]:.2f}" for k, v in report["sweep"].items())
        lines.append(f"empirical order of the {what} error (sub-step sweep, last 3 sizes): {orders}")
    ref = report["reference"]
    lines.append(f"reference: dopri5 rtol={ref['rtol']:g}, NFE {ref['nfe']}, accuracy {ref['accuracy']:.3f}")
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    head = [c[0] for c in _COLUMNS]
    lines = [
        "# Discretisations of one trained DREAM field",
        "",
        f"Data `{s['data']}` (test series: {s['max_series'] or 'all'}), hidden {s['hidden_dim']}, rank {s['rank']}, "
        f"trained {s['epochs']} epochs with the Euler rule, seed {s['seed']}, time scale {s['time_scale']:.4g}. "
        "Deviations are max over hidden units of |h − h_ref| at observation times (max and mean over sequences and "
        "steps); the reference is dopri5 at rtol 1e-10 in float64. 'S parts': share of sequences whose surprise "
        f"differs from the Euler rule's by more than {report['part_threshold']} at some step; 'at step': median "
        "first such step.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in _rows(report)]
    lines += [
        "",
        "Sub-step sweep (max_step = median gap / k):",
        "",
        "| method | k | max_step | max error | mean error | NFE |",
        "|---|---|---|---|---|---|",
    ]
    for name, sw in report["sweep"].items():
        for k, h, e, m, n in zip(s["substeps"], sw["max_step"], sw["max_error"], sw["mean_error"], sw["nfe"]):
            lines.append(f"| {name} | {k} | {h:.4g} | {e:.2e} | {m:.2e} | {n} |")
    lines += [
        "",
        "Empirical order (slope of the last 3 sizes), of the max error: "
        + ", ".join(f"{k} {v['order']:.2f}" for k, v in report["sweep"].items())
        + "; of the mean error: "
        + ", ".join(f"{k} {v['mean_order']:.2f}" for k, v in report["sweep"].items()),
        "",
        f"Wall time {report['wall_s']:.1f} s.",
        "",
    ]
    return "\n".join(lines)


def _plots(
    out: Path,
    results: list[MethodResult],
    sweep: dict,
    ref: dict,
    euler: dict,
    model: Any,
    batch: IrregularBatch,
    settings: CompareSettings,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # error vs step size, with reference slopes
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, sw in sweep.items():
        ax.loglog(sw["max_step"], sw["max_error"], "o-", label=name)
    h = np.array(next(iter(sweep.values()))["max_step"])
    e0 = max(max(sw["max_error"]) for sw in sweep.values())
    for p in (1, 2, 4):
        ax.loglog(h, e0 * (h / h[0]) ** p, "k:", lw=0.8)
        ax.annotate(f"slope {p}", (h[-1], e0 * (h[-1] / h[0]) ** p), fontsize=8)
    ax.set_xlabel("max_step (time units)")
    ax.set_ylabel("max |h − h_ref|")
    ax.set_title("Fixed-step methods vs a tight dopri5 reference")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "error_vs_step.png", dpi=120)
    plt.close(fig)

    # h and tau of one sequence under each method
    b = int(batch.lengths.argmax())
    n = int(batch.lengths[b])
    t = batch.times[b, :n].numpy()
    fig, axes = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    runs = {"reference": ref, "euler": euler}
    for r in results:
        if r.name not in runs:
            kwargs = DEFAULT_METHODS[r.name]
            if not kwargs.get("adjoint"):
                runs[r.name] = _run(_encoder(model, **kwargs), model.head, _single(batch, b))
    for name, r in runs.items():
        row = 0 if r["h"].shape[0] == 1 else b
        axes[0].plot(t, r["h"][row, :n, 0].numpy(), "-" if name != "reference" else "k--", label=name)
        axes[1].plot(t, r["tau"][row, :n].numpy(), "-" if name != "reference" else "k--", label=name)
    axes[0].set_ylabel("h[0]")
    axes[1].set_ylabel("τ")
    axes[1].set_xlabel("time")
    axes[0].set_title(f"One test sequence (index {b}) under each method")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "traces.png", dpi=120)
    plt.close(fig)

    # accuracy vs cost
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for r in results:
        ax.scatter(r.nfe, r.accuracy)
        ax.annotate(r.name, (r.nfe, r.accuracy), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("NFE (field evaluations over the test set)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Accuracy vs cost, same trained field")
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_cost.png", dpi=120)
    plt.close(fig)


def _subset(batch: IrregularBatch, n: int) -> IrregularBatch:
    return IrregularBatch(*(None if v is None else v[:n] for v in batch))


def _single(batch: IrregularBatch, b: int) -> IrregularBatch:
    n = int(batch.lengths[b])
    return IrregularBatch(
        batch.x[b : b + 1, :n],
        batch.times[b : b + 1, :n],
        batch.mask[b : b + 1, :n],
        batch.lengths[b : b + 1],
        None if batch.labels is None else batch.labels[b : b + 1],
    )


# -- command line ---------------------------------------------------------------------------

EXAMPLES = """examples:
  dreamode compare                                  # built-in JapaneseVowels, defaults (~minutes)
  dreamode compare --drop 0.5 --out out/drop50      # irregular: half the observations dropped
  dreamode compare --solvers euler rk4 dopri5 --epochs 5
  dreamode compare --data my_series.csv --label-col label
  dreamode compare --checkpoint out/compare/model.pt   # reuse a trained field
"""


def add_arguments(p: Any) -> None:
    """Options of ``dreamode compare`` on an ``argparse`` parser."""
    d = CompareSettings()
    p.add_argument("--data", default=d.data, help="built-in data set name or a long-format CSV (default: %(default)s)")
    p.add_argument("--label-col", default=d.label_col, help="label column of a CSV (default: %(default)s)")
    p.add_argument(
        "--solvers",
        nargs="+",
        default=list(d.methods),
        metavar="METHOD",
        help=f"methods to compare (default: all of {', '.join(DEFAULT_METHODS)})",
    )
    p.add_argument("--out", default="out/compare", help="output folder (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--hidden-dim", type=int, default=d.hidden_dim)
    p.add_argument("--rank", type=int, default=d.rank)
    p.add_argument("--epochs", type=int, default=d.epochs, help="Euler-rule training epochs (default: %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--max-series", type=int, default=d.max_series, help="test series compared (default: %(default)s)")
    p.add_argument("--drop", type=float, default=d.drop, help="fraction of observations dropped per series")
    p.add_argument("--substeps", type=int, nargs="+", default=list(d.substeps), help="sub-step counts of the sweep")
    p.add_argument("--time-scale", type=float, default=None, help="multiply times by this (default: gap -> 0.1)")
    p.add_argument("--checkpoint", default=None, help="model.pt of an earlier run instead of training")
    p.add_argument("--device", default=d.device, choices=["cpu"], help="only cpu is supported by compare")


def settings_from_args(a: Any) -> CompareSettings:
    if not 0 <= a.drop < 1:
        raise ValueError(f"--drop: expected a fraction in [0, 1), got {a.drop}")
    if a.epochs < 0 or a.hidden_dim < 1 or a.rank < 1:
        raise ValueError("--epochs must be >= 0, --hidden-dim and --rank >= 1")
    if a.checkpoint and not Path(a.checkpoint).exists():
        raise FileNotFoundError(f"--checkpoint: no such file {a.checkpoint!r}")
    return CompareSettings(
        data=a.data,
        methods=tuple(a.solvers),
        hidden_dim=a.hidden_dim,
        rank=a.rank,
        epochs=a.epochs,
        lr=a.lr,
        seed=a.seed,
        time_scale=a.time_scale,
        substeps=tuple(a.substeps),
        max_series=a.max_series,
        checkpoint=a.checkpoint,
        device=a.device,
        label_col=a.label_col,
        drop=a.drop,
    )


def main_from_args(a: Any) -> int:
    """Run ``dreamode compare`` from parsed arguments; returns the exit code."""
    run_compare(settings_from_args(a), a.out, log=lambda m: print(m, flush=True))
    print(f"wrote {Path(a.out) / 'compare.json'}, compare.md and plots")
    return 0
