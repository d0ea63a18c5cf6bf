"""``dreamode compare``: its options, examples and runner (the library part is `dreamode.compare`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._progress import interactive, write
from ..compare import DEFAULT_METHODS, CompareSettings, run_compare, table
from ._types import positive_float, positive_int

EXAMPLES = """\
examples:
  dreamode compare                                  # JapaneseVowels, all methods: about 40 s on 2 quiet cores
  dreamode compare --drop 0.5 --out out/drop50      # irregular: half the observations dropped
  dreamode compare --solvers euler rk4 dopri5 --epochs 5
  dreamode compare --data my_series.csv --label-col label
  dreamode compare --checkpoint out/compare/model.pt   # reuse a trained field (no training)
  dreamode compare --quiet > compare.txt            # no progress bars, no running lines
"""


def add_arguments(p: Any) -> None:
    """Options of ``dreamode compare`` on an ``argparse`` parser (defaults are shown by the formatter)."""
    d = CompareSettings()
    p.add_argument("--data", default=d.data, help="built-in data set name or a long-format CSV with labels")
    p.add_argument("--label-col", default=d.label_col, help="label column of a CSV")
    p.add_argument(
        "--solvers",
        nargs="+",
        default=list(d.methods),
        metavar="METHOD",
        help=f"methods to compare, of {', '.join(DEFAULT_METHODS)}",
    )
    p.add_argument("--out", default="out/compare", help="output folder: compare.json, compare.md, plots, model.pt")
    p.add_argument(
        "--seed",
        type=int,
        default=d.seed,
        help="random state of the split, initialisation, batches and dropped observations",
    )
    p.add_argument("--hidden-dim", type=positive_int, default=d.hidden_dim, help="hidden units of the DREAM layer")
    p.add_argument(
        "--rank", type=positive_int, default=d.rank, help="rank of the fast weights (at most the input channels)"
    )
    p.add_argument("--epochs", type=int, default=d.epochs, help="training epochs with the Euler rule (0: untrained)")
    p.add_argument(
        "--lr", type=positive_float, default=d.lr, help="Adam learning rate of the training, cosine-annealed"
    )
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size, help="training batch size (series)")
    p.add_argument("--max-series", type=positive_int, default=d.max_series, help="test series compared")
    p.add_argument("--drop", type=float, default=d.drop, help="fraction of observations dropped per series, in [0, 1)")
    p.add_argument(
        "--substeps",
        type=positive_int,
        nargs="+",
        default=list(d.substeps),
        metavar="K",
        help="sub-step counts of the sweep (max_step = median gap / K); the order uses the last 3",
    )
    p.add_argument(
        "--no-smooth-sweep",
        dest="smooth_sweep",
        action="store_false",
        help="skip the sweep of the smooth variant (norm bound off) that shows the solvers' orders%(default).0s",
    )
    p.add_argument(
        "--time-scale",
        type=positive_float,
        default=None,
        help="multiply times by this (default%(default).0s: the median gap becomes 0.1)",
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        metavar="MODEL_PT",
        help="model.pt of an earlier run, instead of training (default: none: train one)%(default).0s",
    )
    p.add_argument("--chunk", type=positive_int, default=d.chunk, help="test series per solve (each a progress step)")
    p.add_argument(
        "--threads",
        type=positive_int,
        default=d.threads,
        help="torch intra-op threads; more than 1 helps only on idle cores and slows tiny solves many-fold under load",
    )
    p.add_argument("--device", default=d.device, choices=["cpu"], help="only cpu is supported by compare")
    p.add_argument(
        "--quiet", action="store_true", help="no progress bars and no running lines; the result only%(default).0s"
    )


def settings_from_args(a: Any) -> CompareSettings:
    """The `CompareSettings` of parsed arguments; a bad value raises ``ValueError`` naming the option."""
    if not 0 <= a.drop < 1:
        raise ValueError(f"--drop: expected a fraction in [0, 1), got {a.drop}")
    if a.epochs < 0:
        raise ValueError(f"--epochs: expected 0 or more, got {a.epochs}")
    if a.checkpoint and not Path(a.checkpoint).is_file():
        what = "is a folder, not a file" if Path(a.checkpoint).is_dir() else "no such file"
        raise FileNotFoundError(
            f"--checkpoint: {what}: {a.checkpoint!r}; give the model.pt that an earlier `dreamode compare` wrote"
        )
    return CompareSettings(
        data=a.data,
        methods=tuple(a.solvers),
        hidden_dim=a.hidden_dim,
        rank=a.rank,
        epochs=a.epochs,
        lr=a.lr,
        batch_size=a.batch_size,
        seed=a.seed,
        time_scale=a.time_scale,
        substeps=tuple(a.substeps),
        max_series=a.max_series,
        checkpoint=a.checkpoint,
        device=a.device,
        label_col=a.label_col,
        drop=a.drop,
        chunk=a.chunk,
        threads=a.threads,
        smooth_sweep=a.smooth_sweep,
    )


def main_from_args(a: Any) -> int:
    """Run ``dreamode compare`` from parsed arguments; returns the exit code."""
    quiet = a.quiet
    settings = settings_from_args(a)
    if settings.checkpoint:
        from ..compare import read_checkpoint

        read_checkpoint(settings.checkpoint)  # a bad file fails now, not after loading the data
    report = run_compare(settings, a.out, log=lambda line: write(line, quiet=quiet), progress=interactive(quiet))
    if not quiet:
        print()
    print(table(report))
    print(f"wrote {Path(a.out) / 'compare.json'}, compare.md, plots and model.pt")
    return 0


__all__ = ["EXAMPLES", "add_arguments", "main_from_args", "settings_from_args"]
