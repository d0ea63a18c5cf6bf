"""Convert the UEA JapaneseVowels ``.ts`` files into ``data/japanese_vowels.npz`` (run once, by a maintainer).

This script is **not** used at run time: the package ships the ``.npz`` it writes. Keep it so the
conversion can be repeated and checked.

Where the ``.ts`` files come from: the UEA & UCR archive copy carried inside the sktime wheel
(``sktime/datasets/data/JapaneseVowels/JapaneseVowels_{TRAIN,TEST}.ts``). Fetch the wheel without
installing it, unpack it, and run this script on the folder::

    pip download --no-deps -d /tmp/skt sktime
    cd /tmp/skt && python -m zipfile -e sktime-*.whl wheel
    python dreamode/datasets/_convert_japanese_vowels.py /tmp/skt/wheel/sktime/datasets/data/JapaneseVowels

(aeon carries the same files under ``aeon/datasets/data/JapaneseVowels``.)

The ``.npz`` holds (all series in file order, the 270 training series first, then the 370 test series):

- ``values``  float32 (N_rows, 12): every series' rows, concatenated; row = one 6.4 ms analysis frame,
  columns = the 12 LPC cepstrum coefficients.
- ``lengths`` int16 (640,): rows per series (7..29); series ``k`` is
  ``values[sum(lengths[:k]) : sum(lengths[:k + 1])]``.
- ``labels``  int8 (640,): speaker 0..8 (the archive's class labels 1..9, minus one).
- ``n_train`` int64 scalar: 270, the number of leading series that form the training split.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

N_CHANNELS = 12
EXPECTED = {"TRAIN": 270, "TEST": 370}


def read_ts(path: Path) -> tuple[list[np.ndarray], list[int]]:
    """Read a multivariate, unequal-length ``.ts`` file without timestamps or missing values.

    Returns the series as (L, channels) float64 arrays and the integer class labels as written.
    """
    series: list[np.ndarray] = []
    labels: list[int] = []
    in_data = False
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            if line.lower() == "@data":
                in_data = True
            elif line.lower().startswith(("@timestamps", "@missing")) and not line.lower().endswith("false"):
                raise ValueError(f"{path}:{lineno}: unsupported header {line!r}")
            continue
        *dims, label = line.split(":")
        if len(dims) != N_CHANNELS:
            raise ValueError(f"{path}:{lineno}: expected {N_CHANNELS} dimensions, got {len(dims)}")
        rows = [np.array([float(v) for v in d.split(",")]) for d in dims]
        if len({r.size for r in rows}) != 1:
            raise ValueError(f"{path}:{lineno}: dimensions of one series have different lengths")
        series.append(np.stack(rows, axis=1))
        labels.append(int(label))
    return series, labels


def convert(folder: Path, out: Path) -> None:
    """Convert ``JapaneseVowels_{TRAIN,TEST}.ts`` in ``folder`` to the ``.npz`` at ``out``, checking the counts."""
    all_series: list[np.ndarray] = []
    all_labels: list[int] = []
    for split, count in EXPECTED.items():
        series, labels = read_ts(folder / f"JapaneseVowels_{split}.ts")
        if len(series) != count:
            raise ValueError(f"{split}: expected {count} series, got {len(series)}")
        all_series += series
        all_labels += labels
    lengths = np.array([s.shape[0] for s in all_series], dtype=np.int16)
    labels = np.array(all_labels, dtype=np.int64) - 1
    values = np.concatenate(all_series).astype(np.float32)
    assert len(all_series) == 640 and lengths.min() == 7 and lengths.max() == 29
    assert sorted(set(labels.tolist())) == list(range(9)) and values.shape == (lengths.sum(), N_CHANNELS)
    assert np.isfinite(values).all()
    np.savez_compressed(
        out, values=values, lengths=lengths, labels=labels.astype(np.int8), n_train=np.int64(EXPECTED["TRAIN"])
    )
    print(f"wrote {out} ({out.stat().st_size} bytes): {len(all_series)} series, {values.shape[0]} rows")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="folder holding JapaneseVowels_TRAIN.ts and JapaneseVowels_TEST.ts")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).with_name("data") / "japanese_vowels.npz", help="output .npz"
    )
    args = parser.parse_args()
    convert(args.folder, args.out)


if __name__ == "__main__":
    main()
