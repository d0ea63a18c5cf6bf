"""Input validation for the modules: one helper, one wording ("DREAM: expected ..., got ...")."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ._state import DREAMState

# The largest share of the smallest gap that rounding ``times`` may cost: a gap computed from two
# values of magnitude M in a floating dtype is off by up to one unit in the last place at M.
GAP_TOLERANCE = 0.01
_LOW_PRECISION = (torch.float32, torch.float16, torch.bfloat16)


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
        if not value.is_floating_point():
            # an integer (or bool) input is data to convert, never a reason to cast the model
            raise TypeError(
                f"{where}: {name} has dtype {value.dtype}, but the model computes in {ref.dtype}; "
                f"convert {name} to a floating dtype: {name}.to({ref.dtype})"
                + (f" (or {name}.float())" if ref.dtype == torch.float32 else "")
            )
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


# -- time precision ------------------------------------------------------------------------------


def _ulp(dtype: torch.dtype, magnitude: float) -> float:
    """Spacing of ``dtype``'s numbers at ``magnitude`` (its unit in the last place)."""
    info = torch.finfo(dtype)
    if magnitude < info.tiny:
        return info.tiny * info.eps
    return 2.0 ** math.floor(math.log2(magnitude)) * info.eps


def check_time_precision(
    where: str, name: str, dtype: torch.dtype, times: Tensor, steps: Tensor, derived: Tensor
) -> None:
    """Refuse ``times`` given in a low-precision ``dtype`` whose rounding may change a gap by more than
    `GAP_TOLERANCE` of the smallest gap (e.g. float32 Unix times: spacing 128 s at 1.7e9).

    Args:
        dtype: the dtype the caller received ``times`` in (float32/float16/bfloat16 are checked).
        times: ``(B, T)`` the same values in float64.
        steps: ``(B, T)`` float64 steps computed from them (``steps[b, i] = times[b, i] - times[b, i - 1]``).
        derived: ``(B, T)`` bool, the steps to check (real ones, computed from two entries of ``times``).

    Integer-valued times below ``2 / eps`` (2**24 in float32) are exact and pass.
    """
    if dtype not in _LOW_PRECISION or times.numel() == 0:
        return
    used = derived.clone()  # both ends of every checked step
    used[..., :-1] |= derived[..., 1:]
    if not bool(used.any()):
        return
    values = times[used]
    magnitude = float(values.abs().max())
    info = torch.finfo(dtype)
    if magnitude < 2.0 / info.eps and bool((values == values.round()).all()):
        return
    checked = steps[derived]
    positive = checked[checked > 0]
    if positive.numel() == 0:
        return  # every gap collapsed: the caller's "not increasing" error says why (time_precision_hint)
    gap, ulp = float(positive.min()), _ulp(dtype, magnitude)
    if ulp > GAP_TOLERANCE * gap:
        raise ValueError(
            f"{where}: {name} is {dtype}, too coarse for these times: its spacing at |{name}| = {magnitude:.6g} is "
            f"{ulp:.3g}, so rounding to {dtype} may have changed a gap by up to {ulp:.3g}, {100 * ulp / gap:.3g} % of "
            f"the smallest gap received ({gap:.3g}; more than {100 * GAP_TOLERANCE:.3g} % is refused). Build {name} "
            f"in float64 from the original values, or subtract the first time before converting to {dtype}"
        )


def time_precision_hint(name: str, dtype: torch.dtype, value: float) -> str:
    """A sentence for a "not increasing" error when ``name`` came in a low-precision ``dtype``:
    distinct times closer than its spacing at ``value`` round to one value."""
    if dtype not in _LOW_PRECISION:
        return ""
    return (
        f" ({name} is {dtype}, whose spacing at {abs(value):.6g} is {_ulp(dtype, abs(value)):.3g}: distinct times "
        f"closer than that become equal; if that is the cause, build {name} in float64 or subtract the first "
        f"time before converting to {dtype})"
    )


# -- what overflowed -----------------------------------------------------------------------------


def oversized(named: Sequence[tuple[str, Tensor]], dtype: torch.dtype) -> str | None:
    """After a solve overflowed: the named tensors (e.g. the state passed in) holding values whose
    square overflows ``dtype`` (beyond ``sqrt(finfo.max)``: the field squares its errors and norms),
    as ``"state.h (up to 1e+30)"``, joined; ``None`` when none does."""
    limit = math.sqrt(torch.finfo(dtype).max)
    found = []
    for name, value in named:
        if isinstance(value, Tensor) and value.is_floating_point() and value.numel():
            top = float(value.detach().abs().max())
            if top > limit:
                found.append(f"{name} (up to {top:.3g})")
    if not found:
        return None
    return f"{', '.join(found)} beyond {limit:.3g}, where squares overflow {dtype}"
