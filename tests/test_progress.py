"""Progress bars (tqdm) appear where a person waits at a terminal, and nowhere else: not in a pipe
or a log file, and not with --quiet."""

import os
import pty
import subprocess
import sys

import pytest

FIT = ["fit", "--hidden-dim", "8", "--rank", "2", "--max-series", "40", "--batch-size", "8", "--epochs", "1"]
BENCH = ["bench", "--quick", "--models", "lstm", "gru", "--no-memory", "--repeats", "1"]


def _stderr(args, *, terminal: bool) -> str:
    """Run ``python -m dreamode *args`` with stderr on a pseudo-terminal (or a pipe); its stderr."""
    cmd = [sys.executable, "-m", "dreamode", *args]
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    if not terminal:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, check=True).stderr
    main, sub = pty.openpty()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=sub, env=env)
    os.close(sub)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(main)
    assert proc.wait(timeout=300) == 0
    return b"".join(chunks).decode("utf-8", "replace")


def _has_bar(text: str) -> bool:
    return "%|" in text and "<" in text  # tqdm's "40%|████  | 2/5 [00:01<00:02, ...]": the time left


@pytest.mark.parametrize("args", [FIT, BENCH], ids=["fit", "bench"])
def test_a_terminal_gets_progress_bars_with_the_time_left(args, tmp_path):
    # a pseudo-terminal that reports no size, as under `script` or some CI runners: still a bar
    out = tmp_path / ("o" if args is FIT else "o.json")
    assert _has_bar(_stderr([*args, "--out", str(out)], terminal=True))


def test_a_pipe_or_quiet_gets_no_bars(tmp_path):
    assert not _has_bar(_stderr([*FIT, "--out", str(tmp_path / "a")], terminal=False))
    assert not _has_bar(_stderr([*FIT, "--out", str(tmp_path / "b"), "--quiet"], terminal=True))
