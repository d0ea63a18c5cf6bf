"""The output folder of a training run: checked before training, owned by one run at a time.

A run has an identity (``run_id``, saved in every checkpoint and in ``metrics.json``). A folder
that holds another run's files is refused rather than mixed with this one's, a second process
writing to the same folder is refused while the first holds its lock, and a folder that cannot be
written is reported before any epoch is spent.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import IO, Any

from .checkpoint import CheckpointError, read_checkpoint

#: the files a run writes into its folder
RUN_FILES = ("last.pt", "best.pt", "metrics.json", "curves.png")
LOCK_NAME = ".dreamode-fit.lock"


def new_run_id() -> str:
    """A fresh identity for a run: 12 hexadecimal digits."""
    return uuid.uuid4().hex[:12]


def checkpoint_run_id(path: Path) -> str | None:
    """The ``run_id`` of the run state a ``fit`` checkpoint saves (``extra["run"]``); ``None`` for a
    file without one (or unreadable)."""
    try:
        return read_checkpoint(path).get("extra", {}).get("run", {}).get("run_id")
    except (CheckpointError, OSError):
        return None


def check_writable(out: Path, flag: str = "--out") -> None:
    """Create ``out`` if needed and prove it writable, or raise ``OSError`` naming ``flag``."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{flag} {str(out)!r}: is a file, expected a folder (choose another {flag})")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise PermissionError(f"{flag} {str(out)!r}: cannot write there ({reason}); choose another {flag}") from None


def foreign_files(out: Path, run_id: str | None) -> list[str]:
    """The run files in ``out`` that belong to another run than ``run_id`` (every run file when ``None``).

    Checkpoints and ``metrics.json`` carry their run's ``run_id``; ``curves.png`` is redrawn at the
    end of every run and counts only for a new run.
    """
    found = []
    for name in RUN_FILES:
        path = out / name
        if not path.is_file():
            continue
        if run_id is None:
            found.append(name)
        elif name.endswith(".pt") and checkpoint_run_id(path) != run_id:
            found.append(name)
        elif name == "metrics.json" and _metrics_run_id(path) != run_id:
            found.append(name)
    return found


def _metrics_run_id(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("run_id")
    except (ValueError, OSError, AttributeError):
        return None


class RunLock:
    """An exclusive lock on ``out`` (``fcntl.flock``; released when the process ends, even if killed)."""

    def __init__(self, out: Path) -> None:
        self.path = out / LOCK_NAME
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock or raise ``BlockingIOError`` naming the process that holds it."""
        try:
            import fcntl
        except ImportError:  # no flock (Windows): one writer is the user's responsibility there
            return
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise BlockingIOError(
                f"--out {str(self.path.parent)!r}: another dreamode fit ({holder}) is writing there; "
                "wait for it to finish or choose another --out"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            # the file stays: unlinking it would let a process that opened it before take a second lock
            self._file.close()
            self._file = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


__all__ = ["RUN_FILES", "RunLock", "check_writable", "checkpoint_run_id", "foreign_files", "new_run_id"]
