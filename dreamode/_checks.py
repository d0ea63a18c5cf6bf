"""Input validation for the modules: one helper, one wording ("DREAM: expected ..., got ...")."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._state import DREAMState


def check_tensor(where: str, name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_finite(where: str, name: str, value: Tensor) -> None:
    if not value.is_floating_point():
        return
    # a NaN or an infinity makes the sum NaN or infinite: one reduction and one read-back;
    # only a sum that overflowed (or a non-finite value) needs the element-wise test
    if math.isfinite(float(value.detach().sum())) or bool(torch.isfinite(value).all()):
        return
    bad = (~torch.isfinite(value)).nonzero()[0].tolist()
    raise ValueError(
        f"{where}: {name} contains NaN or inf (first at index {tuple(bad)}); "
        "mark missing values with mask= instead (dreamode.data builds it from NaNs)"
    )


def check_like(where: str, name: str, value: Tensor, ref: Tensor) -> None:
    """Same device and dtype as ``ref`` (the layer's parameters)."""
    if value.device != ref.device:
        raise ValueError(f"{where}: {name} is on {value.device}, but the model is on {ref.device}")
    if value.dtype != ref.dtype:
        raise TypeError(
            f"{where}: {name} has dtype {value.dtype}, but the model has dtype {ref.dtype}; "
            f"cast one of them (e.g. model.to({value.dtype}))"
        )


def check_state(
    where: str, state: object, shapes: tuple[tuple[int, ...], ...], ref: Tensor, label: str = "state"
) -> DREAMState:
    """``state`` must be a `DREAMState` of these component ``shapes``, on ``ref``'s dtype and device."""
    if not isinstance(state, tuple) or len(state) != len(DREAMState._fields):
        raise TypeError(f"{where}: {label} must be a DREAMState, got {type(state).__name__}")
    if not isinstance(state, DREAMState):
        state = DREAMState(*state)
    # the names are formatted only for an error: a streaming cell checks its state every step
    for name, got, want in zip(DREAMState._fields, state, shapes):
        if not isinstance(got, Tensor):
            check_tensor(where, f"{label}.{name}", got)
        if got.shape != want:
            raise ValueError(
                f"{where}: {label}.{name} has shape {tuple(got.shape)}, expected {want} "
                "(a state from another batch size or configuration?)"
            )
        if got.device != ref.device or got.dtype != ref.dtype:
            check_like(where, f"{label}.{name}", got, ref)
    return state
