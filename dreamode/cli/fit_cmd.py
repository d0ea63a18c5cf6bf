"""``dreamode fit``: its options, examples and runner (the library part is `dreamode.fit`)."""

from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..fit import TASKS, FitSettings, run_fit

EXAMPLES = """\
examples:
  dreamode fit                                   # JapaneseVowels, Euler rule, 30 epochs, early stopping
  dreamode fit --solver rk4 --hidden-dim 64 --out out/rk4
  dreamode fit --data my_series.csv --label-col label       # classification from a long CSV
  dreamode fit --data my_series.csv --task forecast         # next-value forecasting
  dreamode fit --out out/fit --resume out/fit/last.pt        # continue a stopped run (same options)
  torchrun --standalone --nproc_per_node 2 -m dreamode fit   # 2 processes, DDP over gloo
"""


def add_arguments(p: Any) -> None:
    """Options of ``dreamode fit`` on an ``argparse`` parser (defaults are shown by the formatter)."""
    d = FitSettings()
    p.add_argument("--data", default=d.data, help="built-in data set name or a long-format CSV")
    p.add_argument("--task", default=d.task, choices=TASKS, help="classify, forecast, or auto: classify if labelled")
    p.add_argument("--label-col", default=d.label_col, help="label column of a CSV")
    p.add_argument("--solver", default=d.solver, help="any `dreamode solvers` name or ltc-fused")
    p.add_argument(
        "--max-step", type=float, default=None, help="fixed-step solvers: largest step after time scaling (sub-steps)"
    )
    p.add_argument("--hidden-dim", type=int, default=d.hidden_dim, help="hidden units per DREAM layer")
    p.add_argument("--rank", type=int, default=d.rank, help="rank of the fast weights (at most the input channels)")
    p.add_argument("--num-layers", type=int, default=d.num_layers, help="stacked DREAM layers")
    p.add_argument("--epochs", type=int, default=d.epochs, help="training epochs (an upper bound with --patience)")
    p.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate, cosine-annealed")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch size (series per step)")
    p.add_argument("--patience", type=int, default=d.patience, help="early stopping after this many epochs; 0 = off")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction, help="share of series held out to validate")
    p.add_argument("--drop", type=float, default=d.drop, help="fraction of observations dropped per series")
    p.add_argument(
        "--time-scale", type=float, default=None, help="multiply times by this (default: median gap becomes 0.1)"
    )
    p.add_argument("--window", type=int, default=d.window, help="forecasting window length")
    p.add_argument("--max-series", type=int, default=None, help="use at most this many training series")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed of the split, initialisation and batches")
    p.add_argument("--device", default=d.device, help="cpu or cuda[:k]")
    p.add_argument(
        "--native",
        action="store_true",
        help="run the Euler path through dreamode.native's C++ kernels (CPU; compiled on first use)",
    )
    p.add_argument("--out", default="out/fit", help="output folder: last.pt, best.pt, metrics.json, curves.png")
    p.add_argument("--resume", default=None, metavar="CKPT", help="continue from last.pt (or its folder)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an earlier run's files in --out instead of refusing"
    )
    p.add_argument("--stop-after", type=int, default=None, metavar="N", help="stop after N epochs; resume later")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no per-epoch lines")


def settings_from_args(a: Any) -> FitSettings:
    """The `FitSettings` of parsed arguments."""
    names = {f.name for f in fields(FitSettings)}
    return FitSettings(**{k: v for k, v in vars(a).items() if k in names})


def main_from_args(a: Any) -> int:
    """Run ``dreamode fit`` from parsed arguments; returns the exit code."""
    if a.stop_after is not None and a.stop_after < 1:
        raise ValueError(f"--stop-after: expected a positive integer, got {a.stop_after}")
    if a.resume is not None and a.overwrite:
        raise ValueError("--overwrite: not with --resume (a resumed run keeps its own files)")
    if getattr(a, "native", False):
        from .. import native

        native.enable()
        print(f"dreamode.native: C++ kernels ready in {native.build_seconds:.1f} s", flush=True)
    quiet = getattr(a, "quiet", False)

    def log(line: str) -> None:
        if not quiet or not line.startswith("epoch "):
            print(line, flush=True)

    try:
        run_fit(
            settings_from_args(a),
            a.out,
            resume=a.resume,
            stop_after=a.stop_after,
            overwrite=a.overwrite,
            log=log,
            progress=not quiet,
        )
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with the same command plus --resume {Path(a.out) / 'last.pt'}", file=sys.stderr)
        return 130
    return 0


__all__ = ["EXAMPLES", "add_arguments", "main_from_args", "settings_from_args"]
