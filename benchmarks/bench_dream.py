"""DREAM against nn.LSTM / nn.GRU: the same as ``dreamode bench`` (see docs/performance.md).

Run: python benchmarks/bench_dream.py [--threads 1] [--steps 200] [--out bench.json] ...
"""

from __future__ import annotations

import sys

from dreamode.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", *sys.argv[1:]]))
