"""DREAM (euler, rk4, dopri5) against GRU-Δt, GRU-D and LSTM-ffill on JapaneseVowels (or PLAID) with
0/30/50/70% of the observations dropped (the Neural CDE protocol), several seeds.

Run (the command behind docs/results/irregular_japanese_vowels.md; see docs/irregular.md):

    python examples/irregular_classification.py --out-dir docs/results

PLAID (needs sktime: ``pip install 'dreamode[sktime]'``; docs/results/irregular_plaid.md has the
exact commands behind its table):

    python examples/irregular_classification.py --data plaid --epochs 40 --drop-rates 0 0.5 --out-dir docs/results

Quick smoke run (seconds): ``python examples/irregular_classification.py --quick --out-dir out/jv``.

Protocol: the archive's train/test split (JapaneseVowels: UEA, 270/370 series, shipped with
dreamode; PLAID: UCR, 537/537 series, from sktime's copy). PLAID series (100-1344 samples) are
first averaged over non-overlapping blocks of ``--downsample`` samples (default 8), which cuts the
cost of every model by that factor and changes the task accordingly, and each is z-normalised by its
own statistics (``--transform znorm``: the recordings' scales differ by orders of magnitude within a
class). For each drop rate ``p`` one
fixed draw of :func:`dreamode.data.drop_observations` removes ``floor(p·L)`` time points of every
series (seed 0 for the training series, 1 for the test series), the same for every model and seed;
inputs are standardised with training statistics; frame (block) ``k`` is placed at time
``k · time_unit`` (default 0.1 = DREAM's ``time_step``, the spacing its default rates assume). Each
model seed fixes the initialisation and the shuffling. No model selection on the test set: the model
after the last epoch is evaluated once. ``--validation F`` instead holds out a stratified fraction
``F`` of the training series (fixed seed) as the evaluation set and never loads the test set, for
choosing hyperparameters.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from dreamode import StiffStepWarning
from dreamode.baselines import make_baseline
from dreamode.classify import SequenceClassifier, count_parameters, evaluate, train_classifier
from dreamode.data import IrregularSeries, SeriesDataset, collate_series, drop_observations, standardize
from dreamode.datasets import load_japanese_vowels, load_plaid

RESULT_NAME = "irregular_japanese_vowels"  # the JapaneseVowels results; see result_name()

# name -> (label in the table, how to build it)
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "dream-euler": ("DREAM euler (reference rule, 1 step/observation)", {"solver": "euler"}),
    "dream-euler-ms": ("DREAM euler, max_step=0.1", {"solver": "euler", "max_step": 0.1}),
    "dream-ltc-fused": ("DREAM ltc-fused (semi-implicit)", {"solver": "ltc-fused"}),
    "dream-rk4": ("DREAM rk4 (1 step/observation)", {"solver": "rk4"}),
    "dream-dopri5": ("DREAM dopri5 (rtol 1e-3, atol 1e-4)", {"solver": "dopri5", "rtol": 1e-3, "atol": 1e-4}),
    "gru-dt": ("GRU-Δt", {}),
    "gru-d": ("GRU-D (Che et al. 2018)", {}),
    "lstm-ffill": ("LSTM, forward-filled", {}),
}
DEFAULT_MODELS = ("dream-euler", "dream-rk4", "dream-dopri5", "gru-dt", "gru-d", "lstm-ffill")
DEFAULT_RATES = (0.0, 0.3, 0.5, 0.7)
DEFAULT_SEEDS = (0, 1, 2)
# What must agree for runs to be pooled (resume, merge); models, rates and seeds may differ.
SETUP_KEYS = (
    "data",
    "epochs",
    "hidden",
    "rank",
    "lr",
    "batch_size",
    "time_unit",
    "quick",
    "drop_seeds",
    "dataset",
    "downsample",
    "validation",
    "transform",
)
# Values of the keys added after the first JapaneseVowels results were recorded.
SETUP_DEFAULTS = {"dataset": "japanese_vowels", "downsample": 1, "validation": 0.0, "transform": "none"}
TRANSFORMS = ("none", "znorm")

PUBLISHED = """\
Published reference points (not produced by this script):

| Data set | Observations | Model | Test accuracy (%) | Source |
|---|---|---|---|---|
| JapaneseVowels | all | FCN | 99.3 | Fawaz et al. 2019, *Deep learning for time series classification: a review* |
| JapaneseVowels | all | ResNet | 99.2 | Fawaz et al. 2019 |
| JapaneseVowels | all | MLP | 97.6 | Fawaz et al. 2019 |
| CharacterTrajectories | 30/50/70% dropped | Neural CDE | 99.2 / 99.3 / 99.4 | Kidger et al. 2020, *Neural Controlled Differential Equations for Irregular Time Series* |
| CharacterTrajectories | 30/50/70% dropped | ODE-RNN | 97.9 / 97.5 / 96.7 | Kidger et al. 2020 |
| CharacterTrajectories | 30/50/70% dropped | GRU-D | 93.2 / 92.7 / 90.8 | Kidger et al. 2020 |

CharacterTrajectories is a different data set (20 classes, 3 channels, lengths 60-182): its rows
are context for the effect of dropped observations, not a head-to-head comparison.
"""

# name -> title, description (recorded in the config), loader, default --downsample, published context
DATASETS: dict[str, dict[str, Any]] = {
    "japanese_vowels": {
        "title": "JapaneseVowels",
        "description": "JapaneseVowels (UEA split, shipped with dreamode)",
        "load": load_japanese_vowels,
        "downsample": 1,
        "transform": "none",
        "published": PUBLISHED,
    },
    "plaid": {
        "title": "PLAID",
        "description": "PLAID (UCR split, sktime's copy)",
        "load": load_plaid,
        "downsample": 8,
        "transform": "znorm",
        "published": "",
    },
}


def result_name(dataset: str = "japanese_vowels", validation: float = 0.0) -> str:
    """File stem of the results: ``irregular_<dataset>``, with ``_validation`` when ``validation > 0``."""
    return f"irregular_{dataset}" + ("_validation" if validation else "")


def _setup(config: dict[str, Any], key: str) -> Any:
    return config.get(key, SETUP_DEFAULTS.get(key))


def _scale_times(series: list[IrregularSeries], unit: float) -> list[IrregularSeries]:
    return [IrregularSeries(s.times * unit, s.values, s.label) for s in series]


def block_mean(series: list[IrregularSeries], k: int) -> list[IrregularSeries]:
    """Average each series over non-overlapping blocks of ``k`` consecutive points (the last block
    may be shorter); block ``j`` gets time ``j``. ``k = 1`` returns the series unchanged. For
    regularly sampled series whose times are ``0, 1, ..., L-1`` (both loaders' sample indices)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"block_mean: expected k to be a positive int, got {k!r}")
    if k == 1:
        return list(series)
    out = []
    for s in series:
        L = s.values.shape[0]
        n = -(-L // k)
        pad = n * k - L
        values = s.values.to(torch.float64)
        sums = torch.nn.functional.pad(values.T, (0, pad)).reshape(values.shape[1], n, k).sum(-1).T
        counts = torch.full((n, 1), float(k), dtype=torch.float64)
        counts[-1] = k - pad
        out.append(IrregularSeries(torch.arange(n, dtype=torch.float64), (sums / counts).to(s.values.dtype), s.label))
    return out


def znorm(series: list[IrregularSeries]) -> list[IrregularSeries]:
    """Standardise every series by its own mean and standard deviation per channel, over the points
    it has (the UCR convention; a constant channel is only centred). Removes each series' scale."""
    out = []
    for s in series:
        values = s.values.to(torch.float64)
        std = values.std(0, unbiased=False)
        std = torch.where(std > 0, std, torch.ones_like(std))
        out.append(IrregularSeries(s.times, ((values - values.mean(0)) / std).to(s.values.dtype), s.label))
    return out


def split_validation(
    train: list[IrregularSeries], fraction: float, seed: int = 0
) -> tuple[list[IrregularSeries], list[IrregularSeries]]:
    """Hold out ``round(fraction · n_k)`` series of every class ``k`` (at least one, chosen by a
    generator seeded with ``seed``); returns ``(rest, held_out)``, each in the original order."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"split_validation: expected fraction in (0, 1), got {fraction!r}")
    generator = torch.Generator().manual_seed(seed)
    held: set[int] = set()
    for label in sorted({s.label for s in train}):
        idx = [i for i, s in enumerate(train) if s.label == label]
        n = max(1, round(fraction * len(idx)))
        held.update(idx[j] for j in torch.randperm(len(idx), generator=generator)[:n].tolist())
    return [s for i, s in enumerate(train) if i not in held], [s for i, s in enumerate(train) if i in held]


def prepare_data(
    p: float,
    time_unit: float = 0.1,
    *,
    quick: bool = False,
    dataset: str = "japanese_vowels",
    downsample: int | None = None,
    validation: float = 0.0,
    transform: str | None = None,
) -> tuple[list[IrregularSeries], list[IrregularSeries]]:
    """Train/test series of ``dataset`` (block-averaged over ``downsample`` points; default: the
    data set's, 1 for JapaneseVowels and 8 for PLAID) with a fraction ``p`` of each series' time
    points dropped (fixed seeds 0/1), then ``transform`` (``"znorm"``: `znorm` of the remaining points;
    default: the data set's, ``"none"`` for JapaneseVowels, ``"znorm"`` for PLAID), standardised with training
    statistics, frame ``k`` at time ``k · time_unit``. With ``validation > 0`` the second list is a
    stratified held-out fraction of the training series instead of the test set (which is then not
    loaded)."""
    spec = DATASETS[dataset]
    load = spec["load"]
    train = load("train")
    train, test = split_validation(train, validation) if validation else (train, load("test"))
    if quick:  # two series per class from each split
        classes = sorted({s.label for s in train})
        train = [s for k in classes for s in [t for t in train if t.label == k][:2]]
        test = [s for k in classes for s in [t for t in test if t.label == k][:2]]
    k = spec["downsample"] if downsample is None else downsample
    train, test = block_mean(train, k), block_mean(test, k)
    if p > 0:
        train, test = drop_observations(train, p, seed=0), drop_observations(test, p, seed=1)
    transform = spec["transform"] if transform is None else transform
    if transform == "znorm":
        train, test = znorm(train), znorm(test)
    elif transform != "none":
        raise ValueError(f"prepare_data: expected transform to be one of {TRANSFORMS}, got {transform!r}")
    train, test = standardize(train, test)
    return _scale_times(train, time_unit), _scale_times(test, time_unit)


def build_model(name: str, input_dim: int, num_classes: int, hidden: int, rank: int) -> torch.nn.Module:
    """A model of :data:`MODELS` by name."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(MODELS)}")
    if name.startswith("dream-"):
        return SequenceClassifier(input_dim, num_classes, hidden, rank, **MODELS[name][1])
    return make_baseline(name, input_dim, num_classes, hidden)


def _nfe_per_step(model: torch.nn.Module, loader: DataLoader) -> float | None:
    """Field evaluations per observation step of a DREAM model, over one pass of ``loader``."""
    if not isinstance(model, SequenceClassifier):
        return None
    nfe, steps = 0, 0
    with torch.no_grad():
        model.eval()
        for batch in loader:
            model(batch)
            stats = model.encoder.solve_stats[0]
            nfe += stats.nfe
            steps += len(stats.per_step_nfe)
    return nfe / max(steps, 1)


def run_one(
    name: str,
    train: list[IrregularSeries],
    test: list[IrregularSeries],
    *,
    seed: int,
    epochs: int,
    hidden: int,
    rank: int,
    lr: float,
    batch_size: int,
) -> dict[str, Any]:
    """Train one model on one data draw with one seed; returns a JSON-friendly record.

    A run that raises (e.g. a solver's ``SolverError``) is recorded with ``test_acc = None`` and
    the error, at the epoch where it happened, instead of stopping the comparison.
    """
    num_classes = SeriesDataset(train).num_classes
    torch.manual_seed(seed)
    model = build_model(name, train[0].values.shape[1], num_classes, hidden, rank)
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(
        SeriesDataset(train), batch_size=batch_size, shuffle=True, collate_fn=collate_series, generator=generator
    )
    test_loader = DataLoader(SeriesDataset(test), batch_size=128, collate_fn=collate_series)
    record: dict[str, Any] = {"model": name, "seed": seed, "test_acc": None, "params": count_parameters(model)}
    epochs_done: list[str] = []
    stage = "training"
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StiffStepWarning)
        try:
            history = train_classifier(model, train_loader, epochs=epochs, lr=lr, seed=seed, log=epochs_done.append)
            stage = "evaluation"
            t_eval = time.perf_counter()
            record["test_acc"] = evaluate(model, test_loader)
            record["eval_time_s"] = time.perf_counter() - t_eval
            record["nfe_per_step"] = _nfe_per_step(model, test_loader)
            record.update(
                train_time_s=history["wall_time"],
                final_loss=history["loss"][-1] if history["loss"] else None,
                final_train_acc=history["train_acc"][-1] if history["train_acc"] else None,
                loss_curve=history["loss"],
                nonfinite_batches=history["nonfinite_batches"],
            )
        except Exception as exc:  # noqa: BLE001 - a failed run is a result too
            where = f"epoch {len(epochs_done) + 1}" if stage == "training" else "test evaluation"
            record.update(
                failed=f"{type(exc).__name__} in {where}: {str(exc).splitlines()[0]}",
                train_time_s=time.perf_counter() - start,
                nonfinite_batches=0,
                nfe_per_step=None,
                loss_curve=[float(line.split("loss ")[1].split()[0]) for line in epochs_done],
            )
    stiff = [w for w in caught if issubclass(w.category, StiffStepWarning)]
    for w in caught:
        if not issubclass(w.category, StiffStepWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    record["nonfinite_params"] = any(not bool(torch.isfinite(p).all()) for p in model.parameters())
    record["stiff_warnings"] = len(stiff)
    record["stiff_warning_example"] = str(stiff[0].message) if stiff else None
    return record


def _fmt_pct(values: list[float], failed: int = 0) -> str:
    fail = f", {failed} failed" if failed else ""
    if not values:
        return f"failed ({failed}/{failed})" if failed else "—"
    mean = 100 * statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.1f} (n=1{fail})"
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}" + (f" (n={len(values)}{fail})" if failed else "")


def _ok(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in runs if r.get("test_acc") is not None]


def summarize(runs: list[dict[str, Any]], models: Sequence[str], rates: Sequence[float]) -> list[dict[str, Any]]:
    """Per model and drop rate: mean/std test accuracy over the runs that finished, failures, times."""
    out = []
    for name in models:
        for p in rates:
            sel = [r for r in runs if r["model"] == name and math.isclose(r["drop"], p)]
            if not sel:
                continue
            accs = [r["test_acc"] for r in _ok(sel)]
            nfe = [r["nfe_per_step"] for r in sel if r.get("nfe_per_step") is not None]
            out.append(
                {
                    "model": name,
                    "drop": p,
                    "n": len(accs),
                    "failed": [f"seed {r['seed']}: {r['failed']}" for r in sel if r.get("failed")],
                    "acc_mean": statistics.fmean(accs) if accs else None,
                    "acc_std": statistics.stdev(accs) if len(accs) > 1 else None,
                    "accs": accs,
                    "params": sel[0]["params"],
                    "train_time_mean_s": statistics.fmean(r["train_time_s"] for r in sel),
                    "nonfinite_batches": sum(r["nonfinite_batches"] for r in sel),
                    "stiff_warnings": sum(r["stiff_warnings"] for r in sel),
                    "nfe_per_step": statistics.fmean(nfe) if nfe else None,
                }
            )
    return out


def markdown_table(runs: list[dict[str, Any]], models: Sequence[str], rates: Sequence[float]) -> str:
    """The results table: test accuracy (%) mean ± std over seeds per model and drop rate."""
    head = ["Model", *[f"{round(100 * p)}% dropped" for p in rates], "Params", "Train time / run (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in models:
        sel = [r for r in runs if r["model"] == name]
        if not sel:
            continue
        cells = [MODELS[name][0]]
        for p in rates:
            at = [r for r in sel if math.isclose(r["drop"], p)]
            cells.append(_fmt_pct([r["test_acc"] for r in _ok(at)], len(at) - len(_ok(at))))
        cells.append(f"{sel[0]['params']:,}")
        times = [r["train_time_s"] for r in _ok(sel)] or [r["train_time_s"] for r in sel]
        cells.append(f"{statistics.fmean(times):.0f} ({min(times):.0f}-{max(times):.0f})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def diagnostics_table(summary: list[dict[str, Any]]) -> str:
    """Accuracies per seed, warnings, non-finite batches, failures and field evaluations per step."""
    lines = [
        "| Model | Drop | Accuracies (%) | Stiff-step warnings | Non-finite batches | NFE / step | Failures |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        accs = ", ".join(f"{100 * a:.1f}" for a in s["accs"]) or "—"
        nfe = "—" if s["nfe_per_step"] is None else f"{s['nfe_per_step']:.1f}"
        failed = "; ".join(s["failed"]) or "—"
        lines.append(
            f"| {MODELS[s['model']][0]} | {round(100 * s['drop'])}% | {accs} | "
            f"{s['stiff_warnings']} | {s['nonfinite_batches']} | {nfe} | {failed} |"
        )
    return "\n".join(lines)


def coverage(
    runs: list[dict[str, Any]], models: Sequence[str], rates: Sequence[float], seeds: Sequence[int]
) -> dict[str, str]:
    """For each model that did not run on the whole grid of rates x seeds: which runs it has."""
    out = {}
    for name in models:
        have = {(r["drop"], r["seed"]) for r in runs if r["model"] == name}
        if not have or all((float(p), s) in have for p in rates for s in seeds):
            continue
        parts = []
        for p in rates:
            got = sorted(s for q, s in have if math.isclose(q, p))
            parts.append(f"{round(100 * p)}% seeds {got}" if got else f"{round(100 * p)}% not run")
        out[name] = "; ".join(parts)
    return out


def _describe_data(cfg: dict[str, Any]) -> str:
    """The sentence of the results page on the series used."""
    dataset, k, validation = (_setup(cfg, key) for key in ("dataset", "downsample", "validation"))
    sizes = cfg.get("sizes")
    if sizes is None:  # records from before the sizes were kept (JapaneseVowels only)
        sizes = {"train": 18, "test": 18} if cfg["quick"] else {"train": 270, "test": 370}
    what = "Quick smoke run. " if cfg["quick"] else ""
    if validation:
        text = (
            f"{what}Train {sizes['train']} / validation {sizes['test']} series: a stratified "
            f"{validation:.0%} of the training split held out (seed 0); the test set is not used. "
        )
    elif dataset == "plaid":
        text = f"{what}Train {sizes['train']} / test {sizes['test']} series (the UCR split, sktime's copy). "
    else:
        text = f"{what}Train {sizes['train']} / test {sizes['test']} series (the UEA split). "
    if k > 1:
        lengths = sizes.get("lengths")
        span = f" (lengths {lengths[0]}-{lengths[1]} after averaging)" if lengths else ""
        text += (
            f"Each series is averaged over non-overlapping blocks of {k} samples{span}; "
            f"block k (samples {k}k..{k}k+{k - 1}) is at time {cfg['time_unit']}·k. "
        )
    else:
        text += f"Frame k at time {cfg['time_unit']}·k. "
    if _setup(cfg, "transform") == "znorm":
        text += (
            "Each series is standardised by its own mean and standard deviation over the points it keeps "
            "after the drop (z-normalisation; removes the scale of every recording). "
        )
    return text


def write_results(out_dir: Path, record: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``<result_name()>.json`` and ``.md`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = record["config"]
    models, rates = cfg["models"], cfg["drop_rates"]
    dataset = _setup(cfg, "dataset")
    validation = _setup(cfg, "validation")
    sizes = cfg.get("sizes") or {"channels": 12}  # records from before the sizes were kept: JapaneseVowels
    record["summary"] = summarize(record["runs"], models, rates)
    name = result_name(dataset, validation)
    json_path = out_dir / f"{name}.json"
    json_path.write_text(json.dumps(record, indent=1) + "\n")
    score = "Validation" if validation else "Test"
    md = [
        f"# {DATASETS[dataset]['title']} with dropped observations"
        + (" (validation split, for model selection)" if validation else ""),
        "",
        f"{score} accuracy (%), mean ± std over seeds {list(cfg['seeds'])} (n = runs when fewer); "
        f"hidden size {cfg['hidden']}, DREAM rank {min(cfg['rank'], sizes['channels'])}, "
        f"{cfg['epochs']} epochs, Adam lr {cfg['lr']} with cosine decay, batch {cfg['batch_size']}. "
        + _describe_data(cfg)
        + f"The model after the last epoch is {'evaluated' if validation else 'tested'} once.",
        "",
        markdown_table(record["runs"], models, rates),
        "",
    ]
    if record.get("superseded"):
        md += ["Runs replaced by a later rerun of the same model, drop rate and seed:", ""]
        md += [f"- {line}" for line in record["superseded"]]
        md += [""]
    partial = coverage(record["runs"], models, rates, cfg["seeds"])
    if partial:
        md += ["Not every model ran on every drop rate and seed (to fit the time budget); what ran:", ""]
        md += [f"- {MODELS[m][0]}: {what}" for m, what in partial.items()]
        md += [""]
    md += [
        "Diagnostics (summed over seeds; NFE / step = field evaluations per observation step on the test set):",
        "",
        diagnostics_table(record["summary"]),
        "",
    ]
    if DATASETS[dataset]["published"]:
        md += [DATASETS[dataset]["published"]]
    if record.get("parts"):
        md += ["Produced by these commands, run side by side (their times overlap), then merged:", ""]
        md += [
            f"- `{part['command']}` ({part['wall_time_s'] / 60:.1f} min"
            + (f", continuing `{part['resumed_from']}`" if part.get("resumed_from") else "")
            + ")"
            for part in record["parts"]
        ]
        md += [""] + [f"- `{command}`" for command in [*record.get("earlier_merges", []), record["command"]]] + [""]
    else:
        md += [f"Command: `{record['command']}`  "]
    md += [
        f"Machine: {record['machine']}  ",
        f"Wall time: {record['wall_time_s'] / 60:.1f} min"
        + (
            f" (the longest part; the parts together ran {sum(p['wall_time_s'] for p in record['parts']) / 60:.0f} min)"
            if record.get("parts")
            else ""
        )
        + (" (partial: still running or interrupted)" if not record.get("complete") else ""),
        "",
    ]
    for note in [*record.get("earlier_notes", []), record.get("note")]:
        if note:
            md += [note, ""]
    md_path = out_dir / f"{name}.md"
    md_path.write_text("\n".join(md))
    return md_path, json_path


def main(
    drop_rates: Sequence[float] = DEFAULT_RATES,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    models: Sequence[str] = DEFAULT_MODELS,
    epochs: int = 30,
    hidden: int = 64,
    out_dir: str | Path = "docs/results",
    quick: bool = False,
    *,
    dataset: str = "japanese_vowels",
    downsample: int | None = None,
    validation: float = 0.0,
    transform: str | None = None,
    rank: int = 8,
    lr: float = 1e-2,
    batch_size: int = 32,
    time_unit: float = 0.1,
    restrict: dict[str, dict[str, list]] | None = None,
    resume: bool = False,
    threads: int | None = 1,
    command: str | None = None,
) -> dict[str, Any]:
    """Run the comparison and write ``irregular_<dataset>.{md,json}`` into ``out_dir``.

    Args:
        drop_rates: fractions of each series' time points to drop.
        seeds: model seeds (initialisation and shuffling); the drop draws are fixed.
        models: names from :data:`MODELS`.
        epochs, hidden, rank, lr, batch_size: training setup, the same for every model.
        out_dir: where the results go (written after every run, so a partial run leaves results).
        quick: a tiny smoke run (two train / two test series per class, hidden 8, 1 epoch), seconds.
        dataset: ``"japanese_vowels"`` or ``"plaid"`` (needs sktime).
        downsample: average each series over blocks of this many points (``None``: 1 for
            JapaneseVowels, 8 for PLAID).
        validation: when ``> 0``, evaluate on this stratified fraction of the training series
            (held out from training) instead of the test set; results go to
            ``irregular_<dataset>_validation.{md,json}``.
        transform: ``"none"`` or ``"znorm"`` (each series standardised by its own statistics before
            the global standardisation; ``None``: ``"none"`` for JapaneseVowels, ``"znorm"`` for PLAID).
        time_unit: time of one frame; 0.1 matches DREAM's default ``time_step``.
        restrict: per model, a subset ``{"rates": [...], "seeds": [...]}`` to run (slow solvers).
        resume: keep the runs already in ``out_dir``'s JSON (same configuration) and skip them.
        threads: ``torch.set_num_threads`` (``None``: leave as is).
        command: the command line to record (default: ``sys.argv``).

    Returns:
        The JSON record: ``config``, ``runs`` (one per model, rate and seed), ``summary``, ...
    """
    if quick:
        hidden, epochs = min(hidden, 8), min(epochs, 1)
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; expected names from {sorted(MODELS)}")
    if dataset not in DATASETS:
        raise ValueError(f"unknown data set {dataset!r}; expected one of {sorted(DATASETS)}")
    downsample = DATASETS[dataset]["downsample"] if downsample is None else int(downsample)
    validation = float(validation)
    transform = DATASETS[dataset]["transform"] if transform is None else transform
    if transform not in TRANSFORMS:
        raise ValueError(f"unknown transform {transform!r}; expected one of {list(TRANSFORMS)}")
    if threads is not None:
        torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    restrict = dict(restrict or {})
    config = {
        "data": DATASETS[dataset]["description"],
        "drop_rates": [float(p) for p in drop_rates],
        "seeds": [int(s) for s in seeds],
        "models": list(models),
        "epochs": epochs,
        "hidden": hidden,
        "rank": rank,
        "lr": lr,
        "batch_size": batch_size,
        "time_unit": time_unit,
        "quick": quick,
        "restrict": restrict,
        "drop_seeds": {"train": 0, "test": 1},
        "dataset": dataset,
        "downsample": downsample,
        "validation": validation,
        "transform": transform,
    }
    data_kw = dict(quick=quick, dataset=dataset, downsample=downsample, validation=validation, transform=transform)
    train0, test0 = prepare_data(0.0, time_unit, **data_kw)
    lengths = [s.times.shape[0] for s in train0 + test0]
    config["sizes"] = {
        "train": len(train0),
        "test": len(test0),
        "channels": train0[0].values.shape[1],
        "lengths": [min(lengths), max(lengths)],
    }
    record: dict[str, Any] = {
        "config": config,
        "command": command or " ".join(["python", *sys.argv]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch "
        f"thread(s), torch {torch.__version__}, Python {platform.python_version()}",
        "runs": [],
        "wall_time_s": 0.0,
        "complete": False,
    }
    previous = 0.0
    json_path = out_dir / f"{result_name(dataset, validation)}.json"
    if resume and json_path.exists():
        old = json.loads(json_path.read_text())
        if all(_setup(old["config"], k) == config[k] for k in SETUP_KEYS):
            # Keep the finished runs this selection asks for; failed runs are tried again.
            record["runs"] = [
                r
                for r in _ok(old["runs"])
                if r["model"] in models and r["drop"] in config["drop_rates"] and r["seed"] in config["seeds"]
            ]
            previous = old.get("wall_time_s", 0.0)
            record["resumed_from"] = old["command"]
            print(f"resuming: {len(record['runs'])} runs already done")
        else:
            print("resume: the training setup differs; starting afresh")
    done = {(r["model"], r["drop"], r["seed"]) for r in record["runs"]}
    start = time.perf_counter()
    todo = [
        (p, s, m)
        for p in drop_rates
        for s in seeds
        for m in models
        if (p in restrict.get(m, {}).get("rates", [p]) and s in restrict.get(m, {}).get("seeds", [s]))
        and (m, float(p), int(s)) not in done
    ]
    print(f"{len(todo)} runs to do: models {list(models)}, drop {list(drop_rates)}, seeds {list(seeds)}")
    data_cache: dict[float, tuple[list[IrregularSeries], list[IrregularSeries]]] = {0.0: (train0, test0)}
    for k, (p, seed, name) in enumerate(todo):
        if p not in data_cache:
            data_cache = {p: prepare_data(p, time_unit, **data_kw)}
        train, test = data_cache[p]
        run = run_one(
            name, train, test, seed=seed, epochs=epochs, hidden=hidden, rank=rank, lr=lr, batch_size=batch_size
        )
        run["drop"] = float(p)
        record["runs"].append(run)
        record["wall_time_s"] = previous + time.perf_counter() - start
        write_results(out_dir, record)
        flags = ""
        if run["stiff_warnings"]:
            flags += f", {run['stiff_warnings']} stiff-step warnings"
        if run["nonfinite_batches"]:
            flags += f", {run['nonfinite_batches']} non-finite batches"
        if run.get("failed"):
            flags += f"; FAILED: {run['failed']}"
        acc = "—" if run["test_acc"] is None else f"{100 * run['test_acc']:.1f}%"
        print(
            f"[{k + 1}/{len(todo)}] {name:16s} drop {p:.0%} seed {seed}: test acc {acc} "
            f"({run['train_time_s']:.0f} s{flags}); elapsed {record['wall_time_s'] / 60:.1f} min",
            flush=True,
        )
    record["wall_time_s"] = previous + time.perf_counter() - start
    record["complete"] = True
    md_path, json_path = write_results(out_dir, record)
    print(markdown_table(record["runs"], models, drop_rates))
    print(f"wrote {md_path} and {json_path} ({record['wall_time_s'] / 60:.1f} min)")
    return record


def _describe_run(run: dict[str, Any]) -> str:
    outcome = f"failed: {run['failed']}" if run.get("failed") else f"{100 * run['test_acc']:.1f}%"
    return f"{MODELS[run['model']][0]}, {round(100 * run['drop'])}% dropped, seed {run['seed']} ({outcome})"


def merge_results(
    paths: Sequence[str | Path], out_dir: str | Path, command: str | None = None, note: str | None = None
) -> dict[str, Any]:
    """Merge the JSON records of comparisons run side by side (same training setup, different
    models/rates/seeds) into one record and table in ``out_dir``; ``note`` goes under the table.

    A run of a model, drop rate and seed that a later record also has is replaced by the later one
    (a rerun) and listed under the table. A record that is itself a merge contributes its parts,
    merge commands and notes, so a merged result can be extended by merging it with new runs.
    """
    records = [json.loads(Path(p).read_text()) for p in paths]
    if not records:
        raise ValueError("merge: give at least one JSON file")
    first = records[0]["config"]
    for r in records[1:]:
        diff = [k for k in SETUP_KEYS if _setup(r["config"], k) != _setup(first, k)]
        if diff:
            raise ValueError(f"merge: the records differ in {diff}; only models, rates, seeds may differ")
    config = dict(first)
    for key, value in SETUP_DEFAULTS.items():
        config.setdefault(key, value)
    config["models"] = [m for m in MODELS if any(m in r["config"]["models"] for r in records)]
    config["drop_rates"] = sorted({p for r in records for p in r["config"]["drop_rates"]})
    config["seeds"] = sorted({s for r in records for s in r["config"]["seeds"]})
    config["restrict"] = {m: v for r in records for m, v in r["config"].get("restrict", {}).items()}
    runs: dict[tuple[str, float, int], dict[str, Any]] = {}
    superseded = [line for r in records for line in r.get("superseded", [])]
    for r in records:
        for run in r["runs"]:
            key = (run["model"], float(run["drop"]), int(run["seed"]))
            if key in runs:
                superseded.append(_describe_run(runs.pop(key)))
            runs[key] = run
    parts = []
    for r in records:
        parts += r.get("parts") or [
            {"command": r["command"], "wall_time_s": r["wall_time_s"], "resumed_from": r.get("resumed_from")}
        ]
    merged = {
        "config": config,
        "command": command or " ".join(["python", *sys.argv]),
        "parts": parts,
        "earlier_merges": [c for r in records if r.get("parts") for c in [*r.get("earlier_merges", []), r["command"]]],
        "earlier_notes": [n for r in records for n in [*r.get("earlier_notes", []), r.get("note")] if n],
        "superseded": superseded,
        "machine": records[0]["machine"],
        "runs": list(runs.values()),
        "wall_time_s": max(r["wall_time_s"] for r in records),
        "complete": all(r.get("complete") for r in records),
        "note": note,
    }
    md_path, json_path = write_results(Path(out_dir), merged)
    print(markdown_table(merged["runs"], config["models"], config["drop_rates"]))
    print(f"wrote {md_path} and {json_path}")
    return merged


def _parse_restrict(items: Sequence[str]) -> dict[str, dict[str, list]]:
    """``MODEL:rates=0,0.7:seeds=0`` -> ``{MODEL: {"rates": [0.0, 0.7], "seeds": [0]}}``."""
    out: dict[str, dict[str, list]] = {}
    for item in items:
        name, *parts = item.split(":")
        spec: dict[str, list] = {}
        for part in parts:
            key, _, values = part.partition("=")
            if key == "rates":
                spec["rates"] = [float(v) for v in values.split(",")]
            elif key == "seeds":
                spec["seeds"] = [int(v) for v in values.split(",")]
            else:
                raise SystemExit(f"--restrict: expected rates=... or seeds=..., got {part!r}")
        out[name] = spec
    return out


def cli(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="japanese_vowels", choices=sorted(DATASETS), help="plaid needs sktime")
    parser.add_argument(
        "--downsample",
        type=int,
        default=None,
        help="average each series over blocks of this many points (default 1 for japanese_vowels, 8 for plaid)",
    )
    parser.add_argument(
        "--validation",
        type=float,
        default=0.0,
        metavar="F",
        help="evaluate on a stratified fraction F of the training series instead of the test set (model selection)",
    )
    parser.add_argument(
        "--transform",
        choices=TRANSFORMS,
        default=None,
        help="znorm: standardise each series by its own mean and std (default none for japanese_vowels, znorm for plaid)",
    )
    parser.add_argument("--drop-rates", type=float, nargs="+", default=list(DEFAULT_RATES))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=sorted(MODELS))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--time-unit", type=float, default=0.1, help="time of one frame (default 0.1 = time_step)")
    parser.add_argument("--out-dir", default="docs/results")
    parser.add_argument(
        "--restrict",
        nargs="*",
        default=[],
        metavar="MODEL:rates=..:seeds=..",
        help="run MODEL only on these drop rates / seeds, e.g. dream-dopri5:rates=0,0.7:seeds=0",
    )
    parser.add_argument("--resume", action="store_true", help="skip runs already in the output JSON")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (seconds)")
    parser.add_argument(
        "--merge", nargs="+", metavar="JSON", help="merge the JSON results of parallel runs into --out-dir, run nothing"
    )
    parser.add_argument("--note", help="with --merge: a line of text to put under the results")
    args = parser.parse_args(argv)
    command = " ".join(["python", "examples/irregular_classification.py", *(sys.argv[1:] if argv is None else argv)])
    if args.merge:
        return merge_results(args.merge, args.out_dir, command=command, note=args.note)
    return main(
        drop_rates=args.drop_rates,
        seeds=args.seeds,
        models=args.models,
        epochs=args.epochs,
        hidden=args.hidden,
        out_dir=args.out_dir,
        quick=args.quick,
        dataset=args.data,
        downsample=args.downsample,
        validation=args.validation,
        transform=args.transform,
        rank=args.rank,
        lr=args.lr,
        batch_size=args.batch_size,
        time_unit=args.time_unit,
        restrict=_parse_restrict(args.restrict),
        resume=args.resume,
        threads=args.threads,
        command=command,
    )


if __name__ == "__main__":
    cli()
