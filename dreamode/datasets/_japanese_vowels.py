"""The UEA JapaneseVowels data, shipped with the package (no download, no extra)."""

from __future__ import annotations

import functools
from importlib import resources

import numpy as np
import torch

from ..data import IrregularSeries, check_classes
from ._splits import check_split

FRAME_SHIFT_MS = 6.4
"""Milliseconds between consecutive JapaneseVowels frames (UCI: 10 kHz audio, 25.6 ms frames, 6.4 ms shift)."""


@functools.cache
def _arrays() -> dict[str, np.ndarray]:
    ref = resources.files(__package__).joinpath("data").joinpath("japanese_vowels.npz")
    with ref.open("rb") as f, np.load(f) as npz:
        return {key: npz[key] for key in npz.files}


def load_japanese_vowels(split: str = "train") -> list[IrregularSeries]:
    """Load JapaneseVowels: 640 utterances of /ae/ by 9 male speakers; the task is the speaker.

    Each series is one utterance, ``L`` = 7..29 frames of 12 LPC cepstrum coefficients, no missing
    values. The data ship inside the package (see ``dreamode/datasets/data/README.md`` for the
    source and licence, CC BY 4.0).

    Args:
        split: ``"train"`` (270 series, 30 per speaker), ``"test"`` (370 series, 24-88 per speaker)
            or ``"all"`` (640: the training series, then the test series).

    Returns:
        A list of `~dreamode.data.IrregularSeries`: ``times`` ``(L,)`` float64, the frame
        index ``0, 1, ..., L-1`` (one unit = one frame = ``FRAME_SHIFT_MS`` = 6.4 ms); ``values``
        ``(L, 12)`` float32 (unscaled coefficients; see `dreamode.data.standardize`);
        ``label`` the speaker, ``0..8``.

    Raises:
        ValueError: an unknown split, or (a damaged data file) labels of only one class.
    """
    lo, hi = check_split("load_japanese_vowels", split, n_train=int(_arrays()["n_train"]), n_total=640)
    arrays = _arrays()
    lengths = arrays["lengths"].astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    out = []
    for k in range(lo, hi):
        values = torch.from_numpy(arrays["values"][starts[k] : starts[k + 1]].copy())
        times = torch.arange(int(lengths[k]), dtype=torch.float64)
        out.append(IrregularSeries(times, values, int(arrays["labels"][k])))
    check_classes(out, "load_japanese_vowels", f"split {split!r}")
    return out
