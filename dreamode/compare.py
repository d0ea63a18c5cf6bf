"""Compare discretisations of one trained DREAM field against the Euler rule it was trained with.

`run_compare` trains a small DREAM classifier with the Euler rule (or loads a checkpoint), then
runs the *same* trained field through every selected method at the observation times, plus the
fixed-step methods at several sub-step sizes, and reports per method: deviation of ``h`` from a
tight reference solution and from the Euler rule, task accuracy and agreement of the predicted
classes with the reference, NFE, steps and wall time; the empirical order of the sub-step sweep,
on the trained field and on its smooth variant (the homeostatic norm bound off, see `SMOOTH`); and
where the surprise trajectories part from the Euler rule's. ``dreamode compare`` is its command
line (`dreamode.cli.compare_cmd`).

Every solve runs the test series in batches of ``chunk`` series under ``threads`` torch intra-op
threads (default 1): the field's tensors are tiny, and with more threads than free cores each of
the thousands of field evaluations waits for a descheduled worker thread (measured in
``docs/command-line.md``, "How long it takes").
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._fast_euler import _threads
from ._model import DREAM
from ._progress import progress as progress_bar
from ._rundir import check_writable
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
#: the smooth variant of the trained field: the homeostatic norm bound ``ν·relu(1 − N/‖U‖)`` of the
#: fast weights is the field's one kink that the trajectories cross; without it the field is smooth
SMOOTH: dict[str, Any] = {"homeostasis_rate": 0.0}
SWEEP_METHODS = ("euler", "midpoint", "heun", "rk4")
STAGES = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}  # field evaluations per step
NOMINAL_ORDER = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}
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
    chunk: int = 40  # test series per solve of the methods (adaptive solvers control each batch's error)
    threads: int | None = 1  # torch intra-op threads during the run (None: leave torch's setting)
    smooth_sweep: bool = True  # also sweep the smooth variant of the field (SMOOTH)


@dataclass
class MethodResult:
    """One row of the comparison (deviations in units of ``h``, wall time in seconds)."""

    name: str
    max_dev_ref: float
    mean_dev_ref: float
    max_dev_euler: float
    mean_dev_euler: float
    accuracy: float
    agree_ref: float  # share of test series whose predicted class is the reference's
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


def read_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The model weights and the saved settings (``{}`` if none) of a ``model.pt`` of an earlier run.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a file that is not such
    a checkpoint, both as one line naming ``--checkpoint``.
    """
    hint = "give the model.pt that an earlier `dreamode compare` wrote into its --out folder"
    p = Path(path)
    if not p.is_file():
        what = "is a folder, not a file" if p.is_dir() else "no such file"
        raise FileNotFoundError(f"--checkpoint: {what}: {str(path)!r}; {hint}")
    try:
        ckpt = torch.load(p, weights_only=True, map_location="cpu")
    except Exception as err:  # torch.load raises many kinds (UnpicklingError, RuntimeError, EOFError, ...)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
        raise ValueError(
            f"--checkpoint: {str(path)!r} is not a checkpoint torch.load can read ({first}); {hint}"
        ) from None
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else ckpt
    if not (
        isinstance(state, dict)
        and state
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items())
    ):
        raise ValueError(
            f"--checkpoint: {str(path)!r} holds no model weights (expected a dict of tensors, or one under "
            f"'model', got {type(state).__name__}); {hint}"
        )
    saved = ckpt.get("settings", {}) if isinstance(ckpt, dict) else {}
    return state, saved if isinstance(saved, dict) else {}


def train_or_load(
    settings: CompareSettings,
    train: list[IrregularSeries],
    n_classes: int,
    log: Callable[[str], None],
    progress: bool = False,
) -> SequenceClassifier:
    """The classifier of ``settings.checkpoint``, or one trained with the Euler rule on ``train``."""
    input_dim = int(np.asarray(train[0].values).shape[1])
    torch.manual_seed(settings.seed)
    model = SequenceClassifier(input_dim, n_classes, settings.hidden_dim, settings.rank, solver="euler")
    if settings.checkpoint:
        state, saved = read_checkpoint(settings.checkpoint)
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            fix = "run with the options of the run that wrote it"
            if "hidden_dim" in saved and "rank" in saved:
                fix = f"it was trained with --hidden-dim {saved['hidden_dim']} --rank {saved['rank']}"
                if saved.get("data") not in (None, settings.data):
                    fix += f" on --data {saved['data']}"
            raise ValueError(
                f"--checkpoint: does not fit this model (--hidden-dim {settings.hidden_dim} --rank {settings.rank}, "
                f"{input_dim} input channels, {n_classes} classes: {str(err).splitlines()[0]}); {fix}"
            ) from None
        log(f"loaded {settings.checkpoint}")
        return model
    loader = torch.utils.data.DataLoader(
        SeriesDataset(train), batch_size=settings.batch_size, shuffle=True, collate_fn=collate_series
    )
    bar = progress_bar(
        total=settings.epochs * len(loader), desc="training (Euler rule)", unit="batch", quiet=not progress
    )
    try:
        train_classifier(
            model, _Counted(loader, bar), epochs=settings.epochs, lr=settings.lr, seed=settings.seed, log=log
        )
    finally:
        bar.close()
    return model


class _Counted:
    """An iterable of batches that advances a progress bar by one per batch."""

    def __init__(self, loader: Any, bar: Any) -> None:
        self.loader, self.bar = loader, bar

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            yield batch
            self.bar.update(1)


def torch_threads(n: int | None) -> AbstractContextManager[None]:
    """Run the block with ``n`` torch intra-op threads (``None``: unchanged), then restore."""
    return nullcontext() if n is None else _threads(n, torch.get_num_threads())


def _encoder(model: SequenceClassifier, **kwargs: Any) -> DREAM:
    """A float64 copy of the trained encoder integrated by another method (kwargs: DREAM's)."""
    enc = model.encoder
    copy_ = DREAM(enc.input_dim, enc.hidden_dim, enc.rank, dtype=torch.float64, **kwargs)
    copy_.load_state_dict(enc.state_dict())
    return copy_


def _run(enc: DREAM, head: torch.nn.Module, batch: IrregularBatch, backward: bool = False) -> dict[str, Any]:
    """One solve of ``batch``: ``h`` ``(B, T, H)``, the trace's surprise, τ and ‖U‖ ``(B, T)``,
    logits ``(B, K)``, NFE, steps and wall seconds."""
    x = batch.x.to(torch.float64)
    mask = batch.mask.to(torch.float64)
    start = time.perf_counter()
    with torch.set_grad_enabled(backward):
        out, state, trace = enc(x, times=batch.times, mask=mask, lengths=batch.lengths, return_trace=True)
        logits = head(state.h)
        if backward:
            logits.logsumexp(dim=1).sum().backward()
    wall = time.perf_counter() - start
    stats = enc.solve_stats[0]
    return {
        "h": out.detach(),
        "surprise": trace.surprise.detach(),
        "tau": trace.tau.detach(),
        "u_norm": trace.fast_weight_norm.detach(),
        "logits": logits.detach(),
        "nfe": stats.nfe,
        "steps": stats.steps or None,  # scipy's solve_ivp does not report its steps
        "wall_s": wall,
    }


def _solve(
    enc: DREAM, head: torch.nn.Module, batch: IrregularBatch, chunk: int, bar: Any = None, weight: float = 1.0
) -> dict[str, Any]:
    """`_run` over ``batch`` in slices of ``chunk`` series (one bar update of ``weight`` per slice):
    tensors concatenated, wall time summed, NFE and steps per slice (mean over the slices, rounded)."""
    parts = []
    n = batch.x.shape[0]
    for lo in range(0, n, chunk):
        parts.append(_run(enc, head, _slice(batch, lo, min(n, lo + chunk))))
        if bar is not None:
            bar.update(weight)
    steps = [p["steps"] for p in parts]
    return {
        **{k: torch.cat([p[k] for p in parts]) for k in ("h", "surprise", "tau", "u_norm", "logits")},
        "nfe": round(sum(p["nfe"] for p in parts) / len(parts)),
        "steps": None if None in steps else round(sum(steps) / len(parts)),
        "wall_s": sum(p["wall_s"] for p in parts),
    }


def _deviation(a: Tensor, b: Tensor, valid: Tensor) -> tuple[float, float]:
    d = (a - b).abs().amax(dim=-1)[valid]
    return float(d.max()), float(d.mean())


def _agreement(logits: Tensor, ref_logits: Tensor) -> float:
    """Share of rows whose argmax (predicted class) is the reference's."""
    return float((logits.argmax(dim=1) == ref_logits.argmax(dim=1)).float().mean())


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


def run_compare(
    settings: CompareSettings,
    out_dir: str | Path,
    log: Callable[[str], None] = print,
    progress: bool = False,
) -> dict[str, Any]:
    """Run the comparison, write ``compare.json``, ``compare.md`` and plots into ``out_dir``.

    ``log`` gets one line per stage; ``progress`` draws bars with the time left on a terminal.
    Returns the report written to ``compare.json``.
    """
    unknown = [m for m in settings.methods if m not in DEFAULT_METHODS]
    if unknown:
        raise ValueError(f"--solvers: unknown method(s) {unknown}; choose from {', '.join(DEFAULT_METHODS)}")
    if settings.chunk < 1:
        raise ValueError(f"--chunk: expected a positive number of series, got {settings.chunk}")
    if settings.threads is not None and settings.threads < 1:
        raise ValueError(f"--threads: expected a positive number of threads, got {settings.threads}")
    with torch_threads(settings.threads):
        return _compare(settings, Path(out_dir), log, progress)


def _compare(settings: CompareSettings, out: Path, log: Callable[[str], None], progress: bool) -> dict[str, Any]:
    t_start = time.perf_counter()
    load_start = _load_average()
    check_writable(out)  # before any data is loaded or any epoch trained
    train, test, n_classes = load_split(settings)
    log(f"data {settings.data}: {len(train)} train / {len(test)} test series, time scale {settings.time_scale:.4g}")
    model = train_or_load(settings, train, n_classes, log, progress)
    model.eval()
    t_trained = time.perf_counter()
    torch.save({"model": model.state_dict(), "settings": _jsonable(asdict(settings))}, out / "model.pt")
    head = copy.deepcopy(model.head).double()
    batch = pad_series(test, dtype=torch.float64)
    valid = torch.arange(batch.x.shape[1]).unsqueeze(0) < batch.lengths.unsqueeze(1)
    labels = batch.labels
    chunks = math.ceil(batch.x.shape[0] / settings.chunk)
    target_norm = model.encoder.configs[0].target_norm

    def bar(desc: str, total: float, unit: str = "batch") -> Any:
        return progress_bar(total=total, desc=desc, unit=unit, quiet=not progress)

    def solve(desc: str, **kwargs: Any) -> dict[str, Any]:
        with bar(desc, chunks) as b:
            return _solve(_encoder(model, **kwargs), head, batch, settings.chunk, b)

    ref = solve("reference (dopri5, rtol 1e-10)", **REFERENCE)
    log(f"reference: dopri5, rtol 1e-10, atol 1e-12 (float64): NFE {ref['nfe']}, {ref['wall_s']:.1f} s")
    euler = _solve(_encoder(model, solver="euler"), head, batch, settings.chunk)

    results: list[MethodResult] = []
    runs: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(settings.methods, 1):
        kwargs = DEFAULT_METHODS[name]
        notes: list[str] = []
        if name == "euler":
            r = euler
        elif kwargs.get("adjoint"):
            # The adjoint changes only the backward pass: deviations and accuracy come from the
            # forward solve; the wall time is a forward + backward pass on a few sequences.
            plain = {k: v for k, v in kwargs.items() if k != "adjoint"}
            same = [n for n in runs if DEFAULT_METHODS[n] == plain]
            r = dict(runs[same[0]]) if same else solve(f"[{i}/{len(settings.methods)}] {name}", **plain)
            timed = _run(_encoder(model, **kwargs), head, _slice(batch, 0, ADJOINT_SERIES), backward=True)
            r["wall_s"] = timed["wall_s"]
            notes.append(
                f"wall time: forward + adjoint backward pass on {min(ADJOINT_SERIES, batch.x.shape[0])} series; "
                f"the other columns are its forward solve{' (that of ' + same[0] + ')' if same else ''}"
            )
        else:
            r = solve(f"[{i}/{len(settings.methods)}] {name}", **kwargs)
        runs[name] = r
        mx, mean = _deviation(r["h"], ref["h"], valid)
        mxe, meane = _deviation(r["h"], euler["h"], valid)
        frac, med = _parting(r["surprise"], euler["surprise"], valid)
        results.append(
            MethodResult(
                name=name,
                max_dev_ref=mx,
                mean_dev_ref=mean,
                max_dev_euler=mxe,
                mean_dev_euler=meane,
                accuracy=accuracy_from_logits(r["logits"], labels),
                agree_ref=_agreement(r["logits"], ref["logits"]),
                nfe=r["nfe"],
                steps=r["steps"],
                wall_s=r["wall_s"],
                parted_fraction=frac,
                parted_median_step=med,
                notes=notes,
            )
        )
        log(f"[{i}/{len(settings.methods)}] {name}: max |Δh| from the reference {mx:.2e}, {r['wall_s']:.1f} s")

    gap = median_gap(test) or 1.0  # test times are already scaled
    variants = {"trained": {}}
    smooth_ref = None
    if settings.smooth_sweep:
        smooth_ref = solve("reference of the smooth variant", **REFERENCE, **SMOOTH)
        variants["smooth"] = SMOOTH
    work = sum(STAGES[m] * k for m in SWEEP_METHODS for k in settings.substeps) * len(variants)
    sweeps: dict[str, dict[str, dict[str, Any]]] = {}
    with bar("sub-step sweep", work, unit="eval") as b:
        for variant, config in variants.items():
            target = ref if variant == "trained" else smooth_ref
            sweeps[variant] = _sweep(model, head, batch, valid, target, settings, gap, config, b)
    log(
        "sub-step sweep: order of the max error "
        + ", ".join(f"{k} {v['order']:.2f}" for k, v in sweeps["trained"].items())
        + (
            "; smooth variant: " + ", ".join(f"{k} {v['order']:.2f}" for k, v in sweeps["smooth"].items())
            if "smooth" in sweeps
            else ""
        )
    )

    report: dict[str, Any] = {
        "settings": _jsonable(asdict(settings)),
        "reference": {
            **REFERENCE,
            "nfe": ref["nfe"],
            "wall_s": ref["wall_s"],
            "accuracy": accuracy_from_logits(ref["logits"], labels),
        },
        "methods": [asdict(r) for r in results],
        "sweep": sweeps["trained"],
        "smooth": None,
        "norm_bound": {
            "target_norm": target_norm,
            "series_share": float(((ref["u_norm"] > target_norm) & valid).any(dim=1).float().mean()),
        },
        "part_threshold": PART_THRESHOLD,
        "test_series": int(batch.x.shape[0]),
        "train_s": t_trained - t_start,
        "cores": os.cpu_count(),
        "load_average": {"start": load_start, "end": None},
        "wall_s": None,
    }
    if smooth_ref is not None:
        report["smooth"] = {
            "config": SMOOTH,
            "reference_nfe": smooth_ref["nfe"],
            "sweep": sweeps["smooth"],
            "series_share": float(((smooth_ref["u_norm"] > target_norm) & valid).any(dim=1).float().mean()),
        }
    with bar("plots", 1, unit="plot") as b:
        _plots(out, results, report, ref, runs, batch)
        b.update(1)
    report["wall_s"] = time.perf_counter() - t_start
    report["load_average"]["end"] = _load_average()
    report["summary"] = summary(report)
    (out / "compare.json").write_text(json.dumps(report, indent=2))
    (out / "compare.md").write_text(markdown(report))
    return report


def _sweep(
    model: SequenceClassifier,
    head: torch.nn.Module,
    batch: IrregularBatch,
    valid: Tensor,
    ref: dict[str, Any],
    settings: CompareSettings,
    gap: float,
    config: Mapping[str, Any],
    bar: Any,
) -> dict[str, dict[str, Any]]:
    """Each fixed-step method at ``max_step = gap / k`` for every ``k`` of ``settings.substeps``."""
    sweep: dict[str, dict[str, Any]] = {}
    for name in SWEEP_METHODS:
        steps, errors, means, nfes = [], [], [], []
        for k in settings.substeps:
            h = gap / k
            # one batch: a fixed-step solve costs the same per series in any batch, and slices
            # would only add the per-call overhead of thousands of small field evaluations
            r = _run(_encoder(model, solver=name, max_step=h, **config), head, batch)
            bar.update(STAGES[name] * k)
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
    return sweep


def _load_average() -> list[float] | None:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


# -- output ---------------------------------------------------------------------------------

_COLUMNS = (
    ("method", "name", "{}"),
    ("max Δh vs ref", "max_dev_ref", "{:.2e}"),
    ("mean Δh vs ref", "mean_dev_ref", "{:.2e}"),
    ("max Δh vs Euler", "max_dev_euler", "{:.2e}"),
    ("accuracy", "accuracy", "{:.3f}"),
    ("class as ref", "agree_ref", "{:.0%}"),
    ("NFE", "nfe", "{}"),
    ("steps", "steps", "{}"),
    ("wall s", "wall_s", "{:.2f}"),
    ("S parts", "parted_fraction", "{:.0%}"),
    ("at step", "parted_median_step", "{:g}"),
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


def _orders(sweep: Mapping[str, Any], key: str = "order") -> str:
    return ", ".join(f"{k} {v[key]:.2f}" for k, v in sweep.items())


def summary(report: dict[str, Any]) -> list[str]:
    """The run's findings in plain words, one paragraph per item (all numbers from ``report``)."""
    m = {r["name"]: r for r in report["methods"]}
    ref = report["reference"]
    n = report["test_series"]
    lines = []
    e = m.get("euler")
    if e is not None:
        changed = 1 - e["agree_ref"]
        cls = (
            "the predicted class is unchanged at this step size for every test series"
            if changed == 0
            else f"the predicted class changes for {changed:.0%} of the {n} test series"
        )
        lines.append(
            f"The Euler rule the model was trained with deviates from the reference by up to {e['max_dev_ref']:.2g} "
            f"in h (mean {e['mean_dev_ref']:.2g}, h lies in (-1, 1)); {cls} (test accuracy {e['accuracy']:.1%}, "
            f"reference {ref['accuracy']:.1%})."
        )
    others = [r for name, r in m.items() if name != "euler" and "adjoint" not in name]
    if others:
        devs = ", ".join(f"{r['name']} {r['max_dev_ref']:.1e}" for r in others)
        moved = [f"{r['name']} ({1 - r['agree_ref']:.0%})" for r in others if r["agree_ref"] < 1]
        agree = (
            "each predicts the reference's class for every test series"
            if not moved
            else "the predicted class differs from the reference's for " + ", ".join(moved) + " of the series"
        )
        lines.append(f"Largest deviation from the reference of the other methods: {devs}; {agree}.")
    sw = report["sweep"]
    if sw:
        nominal = ", ".join(f"{k} {NOMINAL_ORDER[k]}" for k in sw)
        text = f"Measured order of the max error (sub-step sweep): {_orders(sw)} (nominal: {nominal})."
        smooth = report.get("smooth")
        if "rk4" in sw and smooth:
            o, o_s = sw["rk4"]["order"], smooth["sweep"]["rk4"]["order"]
            share = report["norm_bound"]["series_share"]
            bound = report["norm_bound"]["target_norm"]
            if o < 3.5 <= o_s:
                text += (
                    f" rk4 falls short of 4 because the homeostatic norm bound of the fast weights, a relu that "
                    f"switches on when ‖U‖ exceeds {bound:g}, does so in {share:.0%} of the test series: there "
                    f"the field has a kink, a step across it errs by O(h²), and the error falls unevenly and "
                    f"about as h². With the bound off the field is smooth and rk4's order is {o_s:.2f}."
                )
            elif o >= 3.5:
                text += f" rk4 shows its order 4 on this field ({o:.2f}; smooth variant {o_s:.2f})."
            else:
                text += (
                    f" rk4 falls short of 4 also on the smooth variant ({o_s:.2f}): the sweep's smallest steps "
                    "may reach the reference's own error, or its largest lie outside the asymptotic range."
                )
        lines.append(text)
    load = report["load_average"]["start"]
    loadtxt = f", load average {load[0]:.1f} at the start" if load else ""
    lines.append(
        f"The run took {report['wall_s']:.0f} s ({report['train_s']:.0f} s of it training or loading) on "
        f"{report['cores']} cores with {report['settings']['threads'] or 'torch’s default'} torch thread(s){loadtxt}."
    )
    return lines


def table(report: dict[str, Any]) -> str:
    """The summary, the per-method table and the sweep's orders as plain text."""
    import textwrap

    head = [c[0] for c in _COLUMNS]
    rows = _rows(report)
    widths = [max(len(head[i]), *(len(r[i]) for r in rows)) for i in range(len(head))]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    lines = [textwrap.fill(p, 100) for p in report.get("summary", [])]
    lines += ["", line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]
    lines.append(f"empirical order of the max error (sub-step sweep, last 3 sizes): {_orders(report['sweep'])}")
    lines.append(f"empirical order of the mean error: {_orders(report['sweep'], 'mean_order')}")
    if report.get("smooth"):
        lines.append(f"smooth variant (homeostasis off), order of the max error: {_orders(report['smooth']['sweep'])}")
    ref = report["reference"]
    lines.append(f"reference: dopri5 rtol={ref['rtol']:g}, NFE {ref['nfe']}, accuracy {ref['accuracy']:.3f}")
    return "\n".join(lines)


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _md_sweep(sweep: Mapping[str, Any], substeps: Sequence[int]) -> list[str]:
    lines = [_md_row(["method", "k", "max_step", "max error", "mean error", "NFE"]), "|---|---|---|---|---|---|"]
    for name, sw in sweep.items():
        for k, h, e, m, n in zip(substeps, sw["max_step"], sw["max_error"], sw["mean_error"], sw["nfe"]):
            lines.append(_md_row([name, k, f"{h:.4g}", f"{e:.2e}", f"{m:.2e}", n]))
    return lines


def markdown(report: dict[str, Any]) -> str:
    """``compare.md``: the summary, the per-method table, the sweeps and their orders."""
    s = report["settings"]
    head = [c[0] for c in _COLUMNS]
    lines = ["# Discretisations of one trained DREAM field", ""]
    for p in report.get("summary", []):
        lines += [p, ""]
    lines += [
        "## Per method",
        "",
        f"Data `{s['data']}` ({report['test_series']} test series, solved in batches of {s['chunk']}), hidden "
        f"{s['hidden_dim']}, rank {s['rank']}, trained {s['epochs']} epochs with the Euler rule, time scale "
        f"{s['time_scale']:.4g}. 'Δh': max over hidden units of |h − h_ref| at the observation times, then max "
        "or mean over series and steps; the reference is dopri5 at rtol 1e-10, atol 1e-12 in float64. "
        "'class as ref': share of series whose predicted class is the reference's. NFE and steps: per batch "
        "(mean over the batches; the sweep solves all series as one batch). 'S parts': share of series whose surprise differs from the Euler rule's "
        f"by more than {report['part_threshold']} at some step; 'at step': median first such step.",
        "",
        _md_row(head),
        "|" + "---|" * len(head),
    ]
    lines += [_md_row(r) for r in _rows(report)]
    notes = [f"{m['name']}: {n}" for m in report["methods"] for n in m["notes"]]
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    lines += [
        "",
        "## Order of convergence",
        "",
        "Sub-step sweep of the trained field (max_step = median gap / k), against the reference:",
        "",
        *_md_sweep(report["sweep"], s["substeps"]),
        "",
        "Empirical order (slope of the last 3 sizes), of the max error: "
        f"{_orders(report['sweep'])}; of the mean error: {_orders(report['sweep'], 'mean_order')}.",
    ]
    smooth = report.get("smooth")
    if smooth:
        cfg = ", ".join(f"{k}={v:g}" for k, v in smooth["config"].items())
        lines += [
            "",
            f"The same sweep on the smooth variant of the trained field ({cfg}: no homeostatic norm bound, "
            "the field's one kink), against its own dopri5 reference at rtol 1e-10 (NFE per batch "
            f"{smooth['reference_nfe']}, against {report['reference']['nfe']} on the trained field). On the trained field "
            f"‖U‖ passes the bound {report['norm_bound']['target_norm']:g} in "
            f"{report['norm_bound']['series_share']:.0%} of the test series; on the smooth variant "
            f"{smooth['series_share']:.0%} of them exceed it, unchecked.",
            "",
            *_md_sweep(smooth["sweep"], s["substeps"]),
            "",
            "Empirical order (slope of the last 3 sizes), of the max error: "
            f"{_orders(smooth['sweep'])}; of the mean error: {_orders(smooth['sweep'], 'mean_order')}.",
        ]
    load = report["load_average"]
    loadtxt = ""
    if load["start"] and load["end"]:
        loadtxt = f"; load average (1 min) {load['start'][0]:.2f} at the start, {load['end'][0]:.2f} at the end"
    lines += [
        "",
        f"Wall time {report['wall_s']:.1f} s ({report['train_s']:.1f} s training or loading) on {report['cores']} "
        f"cores, {s['threads'] or 'default'} torch thread(s){loadtxt}.",
        "",
    ]
    return "\n".join(lines)


def _plots(
    out: Path,
    results: list[MethodResult],
    report: dict[str, Any],
    ref: dict[str, Any],
    runs: dict[str, dict[str, Any]],
    batch: IrregularBatch,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    # error vs step size, with reference slopes: the trained field and its smooth variant
    panels = [("trained field", report["sweep"])]
    if report.get("smooth"):
        panels.append(("smooth variant (norm bound off)", report["smooth"]["sweep"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.5), sharey=True, squeeze=False)
    for ax, (title, sweep) in zip(axes[0], panels):
        for name, sw in sweep.items():
            ax.loglog(sw["max_step"], sw["max_error"], "o-", label=f"{name} (order {sw['order']:.2f})")
        # a guide of each nominal slope, through the largest step of a method of that order, raised 3x
        for p in sorted(set(NOMINAL_ORDER[name] for name in sweep)):
            sw = sweep[next(name for name in sweep if NOMINAL_ORDER[name] == p)]
            h = np.array(sw["max_step"])
            guide = 3 * sw["max_error"][0] * (h / h[0]) ** p
            ax.loglog(h, guide, "k:", lw=0.8)
            ax.annotate(f"slope {p}", (h[-1], guide[-1]), fontsize=8, xytext=(4, 2), textcoords="offset points")
        ax.set_xlabel("max_step (time units)")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8, loc="lower right")
    axes[0][0].set_ylabel("max |h − h_ref|")
    fig.suptitle("Fixed-step methods against a tight dopri5 reference")
    fig.tight_layout()
    fig.savefig(out / "error_vs_step.png", dpi=120)
    plt.close(fig)

    # one sequence: h[0] and τ under each method over the reference, and the deviation from it
    b = int(batch.lengths.argmax())
    n = int(batch.lengths[b])
    t = batch.times[b, :n].numpy()
    fig, axes = plt.subplots(3, 1, figsize=(7, 8), sharex=True)
    ref_style = {"color": "0.75", "lw": 5, "zorder": 1, "label": "reference (wide grey)"}
    axes[0].plot(t, ref["h"][b, :n, 0].numpy(), **ref_style)
    axes[2].plot(t, ref["tau"][b, :n].numpy(), **ref_style)
    for name, r in runs.items():
        if "adjoint" in name:
            continue  # its forward solve is dopri5's
        axes[0].plot(t, r["h"][b, :n, 0].numpy(), lw=1.2, zorder=2, label=name)
        dev = (r["h"][b, :n] - ref["h"][b, :n]).abs().amax(dim=-1).clamp_min(1e-16).numpy()
        axes[1].semilogy(t, dev, lw=1.2, label=name)
        axes[2].plot(t, r["tau"][b, :n].numpy(), lw=1.2, zorder=2, label=name)
    axes[0].set_ylabel("h[0]")
    axes[1].set_ylabel("max over units |h − h_ref|")
    axes[2].set_ylabel("τ (time units)")
    axes[2].set_xlabel("time")
    axes[0].set_title(f"One test sequence (index {b}) under each method")
    axes[0].legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "traces.png", dpi=120)
    plt.close(fig)

    # accuracy vs cost; methods on the same point share one label
    points: dict[tuple[int, float], list[str]] = {}
    for r in results:
        points.setdefault((r.nfe, r.accuracy), []).append(r.name)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, ((nfe, acc), names) in enumerate(sorted(points.items())):
        ax.scatter(nfe, acc, clip_on=False, zorder=3)
        # labels alternate below and above their points, so that neighbours do not overlap
        below = i % 2 == 0
        ax.annotate(
            "\n".join(names),
            (nfe, acc),
            textcoords="offset points",
            xytext=(0, -10 if below else 10),
            ha="center",
            va="top" if below else "bottom",
            fontsize=8,
        )
    accs = [r.accuracy for r in results] + [report["reference"]["accuracy"]]
    ax.axhline(report["reference"]["accuracy"], color="0.6", ls="--", lw=0.8, label="reference")
    lo = max(0.0, min(accs) - max(0.05, 0.5 * (max(accs) - min(accs))))
    ax.set_ylim(lo, 1.0)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xscale("log")
    xs = [r.nfe for r in results]
    ax.set_xlim(min(xs) / 1.6, max(xs) * 3)
    ax.set_xlabel(f"NFE per batch of {report['settings']['chunk']} series (field evaluations)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Accuracy against cost, same trained field")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_cost.png", dpi=120)
    plt.close(fig)


def _slice(batch: IrregularBatch, lo: int, hi: int) -> IrregularBatch:
    """Series ``lo:hi`` of a padded batch (same length ``T``)."""
    return IrregularBatch(*(None if v is None else v[lo:hi] for v in batch))


__all__ = [
    "DEFAULT_METHODS",
    "REFERENCE",
    "SMOOTH",
    "CompareSettings",
    "MethodResult",
    "markdown",
    "read_checkpoint",
    "run_compare",
    "summary",
    "table",
    "torch_threads",
]
