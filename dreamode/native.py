"""Opt-in C++ kernels for the Euler path: ``dreamode.native.enable()``.

The default fast path (:mod:`._fast_euler`) runs whole-batch ATen operations from TorchScript's
interpreter, about 55 a step forward and 60 backward. This module compiles
``dreamode/csrc/euler.cpp`` with ``torch.utils.cpp_extension`` (the system's C++ compiler
and ninja; about 20-30 s the first time on a machine, then torch's cached build loads in well under
a second) into two operators that run a whole sequence: the forward (a step is four ATen calls,
the products with ``C`` and ``[W | V]`` and the two ``tanh``, and loops over the batch that do the
rest per sample in cache) and the reverse loop of the hand-written backward. They compute the
rule of the other paths: ``tests/dreamode/test_native.py`` compares values and every gradient with
the generic field at 1e-12 in float64, and runs ``gradcheck``.

Once enabled they serve every call the default fast path serves (``solver="euler"`` without
``max_step`` or a trace), training and inference, and ``DREAMCell``'s streaming steps, for float32
and float64 tensors on the CPU; anything else keeps its usual path.

>>> import dreamode.native
>>> dreamode.native.enable()          # compiles on the first call on a machine, then cached
>>> dreamode.native.is_enabled()
True
>>> dreamode.native.disable()

Nothing here runs unless asked: the default needs no compiler.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import torch

_SOURCE = Path(__file__).with_name("csrc") / "euler.cpp"
_loaded = False
_enabled = False
build_seconds: float | None = None
"""Seconds the last :func:`build` took in this process (compiling or loading the cached build)."""


def _instruction_set() -> tuple[str, list[str]]:
    """The vector instructions to compile for, named in the build's name.

    AVX2 with FMA where torch's own kernels use them here (8 floats an instruction against SSE's
    4); the name keeps such a build apart from one for an older CPU that shares the cache folder.
    """
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        return "avx2", ["-mavx2", "-mfma"]
    return "sse", []


def build(verbose: bool = False) -> None:
    """Compile (or load torch's cached build of) the kernels; raises ``RuntimeError`` if impossible."""
    global _loaded, build_seconds
    if _loaded:
        return
    from torch.utils import cpp_extension

    isa, flags = _instruction_set()
    t0 = time.perf_counter()
    try:
        cpp_extension.load(
            name=f"dreamode_native_{isa}",
            sources=[str(_SOURCE)],
            extra_cflags=["-O3", "-fopenmp-simd", *flags],
            is_python_module=False,
            verbose=verbose,
        )
    except Exception as exc:  # noqa: BLE001 - a compiler error, a missing compiler: one clear message
        raise RuntimeError(
            f"dreamode.native: could not build {_SOURCE.name} with torch.utils.cpp_extension "
            f"(needs a C++ compiler; the default path needs none): {exc}"
        ) from exc
    build_seconds = time.perf_counter() - t0
    _loaded = True


def enable(verbose: bool = False) -> None:
    """Build the kernels if needed and use them for the Euler path from now on."""
    global _enabled
    build(verbose)
    _enabled = True


def disable() -> None:
    """Go back to the default fast path."""
    global _enabled
    _enabled = False


def is_enabled() -> bool:
    """Whether the Euler path uses the C++ kernels."""
    return _enabled


@contextlib.contextmanager
def enabled(verbose: bool = False) -> Iterator[None]:
    """Use the C++ kernels within this context (builds them first if needed)."""
    old = _enabled
    enable(verbose)
    try:
        yield
    finally:
        if not old:
            disable()


def applies(x: torch.Tensor) -> bool:
    """Whether the kernels run this input (enabled, CPU, float32 or float64)."""
    return _enabled and x.is_cpu and x.dtype in (torch.float32, torch.float64)
