"""Checkpoints that load without running code: model, optimizer, scheduler, recurrent state and
the configuration they belong to, in one ``torch.save`` file read back with ``weights_only=True``.

>>> from dreamode.checkpoint import save_checkpoint, load_checkpoint
>>> save_checkpoint("run.pt", model, optimizer=opt, state=state, config={"hidden_dim": 64})
>>> ckpt = load_checkpoint("run.pt", model, optimizer=opt, config={"hidden_dim": 64})
>>> state = ckpt.state

A checkpoint whose ``config`` differs from the one given to `load_checkpoint` is refused with a
`CheckpointError` naming every differing key; so is a truncated or foreign file. Files are
written to a temporary name and renamed, so an interrupted save never leaves half a checkpoint.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._state import DREAMState

FORMAT = "dreamode-checkpoint"
VERSION = 1

StateLike = DREAMState | list[DREAMState] | None


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, not ours, or saved for another configuration."""


@dataclass
class Checkpoint:
    """What `load_checkpoint` read.

    Attributes:
        config: the configuration dict saved with the model.
        state: the saved recurrent state (a `DREAMState`, a list of them, or ``None``).
        extra: anything else saved under ``extra`` (epoch, history, random-number state, ...).
        path: the file it came from.
    """

    config: dict[str, Any]
    state: StateLike
    extra: dict[str, Any] = field(default_factory=dict)
    path: str = ""


def model_config(model: nn.Module) -> dict[str, Any]:
    """The configuration of the first DREAM encoder inside ``model``: sizes, layers, solver and
    every `DREAMConfig` field; ``{}`` when ``model`` holds no DREAM."""
    from ._model import DREAMStack

    stack = (
        model
        if isinstance(model, DREAMStack)
        else next((m for m in model.modules() if isinstance(m, DREAMStack)), None)
    )
    if stack is None:
        return {}
    cfg = stack.config.as_dict()
    cfg.update(hidden_dims=list(stack.hidden_dims), num_layers=stack.num_layers, solver=stack.integrator.method)
    return cfg


def _pack_state(state: StateLike) -> Any:
    if state is None:
        return None
    if isinstance(state, DREAMState):
        return state.as_dict()
    if isinstance(state, list) and all(isinstance(s, DREAMState) for s in state):
        return [s.as_dict() for s in state]
    raise TypeError(f"save_checkpoint: state must be a DREAMState, a list of them or None, got {type(state).__name__}")


def _unpack_state(packed: Any, where: str) -> StateLike:
    try:
        if packed is None:
            return None
        if isinstance(packed, dict):
            return DREAMState.from_dict(packed)
        return [DREAMState.from_dict(d) for d in packed]
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{where}: the saved state is malformed: {exc}") from None


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    state: StateLike = None,
    config: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (and optionally its optimizer, scheduler and recurrent state) to ``path``.

    Args:
        path: the file to write (its folder is created).
        model: any ``nn.Module``; its ``state_dict()`` is saved.
        optimizer, scheduler: saved through their ``state_dict()``.
        state: a `DREAMState` (or list per layer) to continue a stream from.
        config: plain data (str/int/float/bool/None in dicts and lists) describing the model;
            default `model_config` of ``model``. `load_checkpoint` refuses a different one.
        extra: more plain data or tensors (epoch, history, ``torch.get_rng_state()``, ...).

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": model_config(model) if config is None else dict(config),
        "model": model.state_dict(),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "state": _pack_state(state),
        "extra": dict(extra or {}),
    }
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as a RuntimeError
        tmp.unlink(missing_ok=True)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).strip().splitlines()[0]
        raise OSError(
            f"checkpoint {os.fspath(path)!r}: could not be written ({reason}); the file is unchanged"
        ) from exc
    return path


def nonfinite_entries(tree: Any, prefix: str = "") -> list[str]:
    """The names (dotted paths) of the floating-point tensors in ``tree`` (nested dicts, lists and
    tuples of tensors, e.g. a ``state_dict``) that hold NaN or inf."""
    if isinstance(tree, torch.Tensor):
        bad = tree.is_floating_point() or tree.is_complex()
        return [prefix or "tensor"] if bad and not bool(torch.isfinite(tree).all()) else []
    items: Any = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list | tuple) else ()
    found: list[str] = []
    for key, value in items:
        found += nonfinite_entries(value, f"{prefix}.{key}" if prefix else str(key))
    return found


def read_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The raw payload of a dreamode checkpoint, loaded with ``weights_only=True``.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file is truncated or corrupt, or not a dreamode checkpoint.
    """
    where = f"checkpoint {os.fspath(path)!r}"
    if not Path(path).is_file():
        raise FileNotFoundError(f"{where}: no such file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{where}: cannot be read (truncated or corrupt file?): {first}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{where}: not a dreamode checkpoint (no format={FORMAT!r} marker)")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{where}: format version {payload.get('version')!r}, this dreamode reads {VERSION}")
    return payload


def config_mismatch(saved: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """``"key: saved X, expected Y"`` for every key whose value differs (missing counts as differing)."""
    missing = object()
    lines = []
    for key in sorted(set(saved) | set(expected)):
        a, b = saved.get(key, missing), expected.get(key, missing)
        if a != b:
            show = lambda v: "(absent)" if v is missing else repr(v)  # noqa: E731
            lines.append(f"{key}: saved {show(a)}, expected {show(b)}")
    return lines


def load_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module | None = None,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    config: dict[str, Any] | None = None,
    map_location: str | torch.device = "cpu",
    allow_nonfinite: bool = False,
) -> Checkpoint:
    """Read ``path`` (``weights_only=True``: no code runs) and restore what is given into it.

    Args:
        path: a file written by `save_checkpoint`.
        model: receives the weights (strictly: every key and shape must match).
        optimizer, scheduler: receive their saved state (an error if none was saved).
        config: the configuration the caller expects; default `model_config` of ``model``
            (nothing checked when both are absent). Any difference is refused.
        map_location: where tensors are loaded (as in ``torch.load``).
        allow_nonfinite: accept weights or optimizer state holding NaN or inf (refused by
            default: such a checkpoint comes from a diverged run and would train or score nonsense).

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: unreadable or foreign file, a differing ``config`` (every differing key
            is named), weights that do not fit ``model``, a missing optimizer/scheduler state, or
            NaN/inf in the weights or optimizer state (unless ``allow_nonfinite``).
    """
    where = f"checkpoint {os.fspath(path)!r}"
    payload = read_checkpoint(path, map_location)
    if not allow_nonfinite:
        bad = nonfinite_entries({k: payload.get(k) for k in ("model", "optimizer", "state") if payload.get(k)})
        if bad:
            shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            raise CheckpointError(
                f"{where}: holds NaN or inf in {shown}; it comes from a diverged run "
                "(start again from an earlier checkpoint or from scratch, with a smaller learning rate)"
            )
    saved_config = payload.get("config") or {}
    if config is None and model is not None:
        config = model_config(model)
    if config:
        diff = config_mismatch(saved_config, config)
        if diff:
            raise CheckpointError(f"{where}: saved for another configuration: " + "; ".join(diff))
    if model is not None:
        try:
            model.load_state_dict(payload["model"])
        except RuntimeError as exc:
            detail = " ".join(line.strip() for line in str(exc).splitlines()[1:3]) or str(exc)
            raise CheckpointError(f"{where}: the weights do not fit this model: {detail}") from None
    for name, target in (("optimizer", optimizer), ("scheduler", scheduler)):
        if target is None:
            continue
        if payload.get(name) is None:
            raise CheckpointError(f"{where}: has no {name} state to restore")
        try:
            target.load_state_dict(payload[name])
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{where}: the {name} state does not fit: {exc}") from None
    return Checkpoint(
        config=saved_config,
        state=_unpack_state(payload.get("state"), where),
        extra=payload.get("extra") or {},
        path=os.fspath(path),
    )


__all__ = [
    "Checkpoint",
    "CheckpointError",
    "config_mismatch",
    "load_checkpoint",
    "model_config",
    "nonfinite_entries",
    "read_checkpoint",
    "save_checkpoint",
]
