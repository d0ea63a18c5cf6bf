"""``DREAMState``: the seven per-sample tensors the vector field evolves."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor


class DREAMState(NamedTuple):
    """State of one DREAM layer; every tensor has the batch ``B`` as its first axis.

    Attributes:
        h: hidden state, ``(B, H)``.
        U: fast-weight left factor, ``(B, H, R)``.
        U_target: consolidated ("sleep") fast weights, ``(B, H, R)``.
        error_mean: running mean of the prediction error, ``(B, I)``.
        error_var: running variance of the prediction error, ``(B, I)``.
        avg_surprise: running mean of surprise, ``(B,)``.
        adaptive_tau: habituation threshold, ``(B,)``.

    A ``NamedTuple``, so it unpacks like ``nn.LSTM``'s ``(h, c)`` and passes straight through the
    tuple-state solvers. For an unbatched sequence the batch axis is absent.
    """

    h: Tensor
    U: Tensor
    U_target: Tensor
    error_mean: Tensor
    error_var: Tensor
    avg_surprise: Tensor
    adaptive_tau: Tensor

    @staticmethod
    def shapes(batch_size: int, input_dim: int, hidden_dim: int, rank: int) -> tuple[tuple[int, ...], ...]:
        """The shape of each component, in field order."""
        B, H, R, I = batch_size, hidden_dim, rank, input_dim
        return ((B, H), (B, H, R), (B, H, R), (B, I), (B, I), (B,), (B,))

    @classmethod
    def initial(
        cls,
        batch_size: int,
        input_dim: int,
        hidden_dim: int,
        rank: int,
        base_threshold: float = 1.0,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> DREAMState:
        """The deterministic initial state of docs/dream-cell.md (zeros, ``error_var = 1``, threshold)."""
        kw: dict[str, Any] = {"device": device, "dtype": dtype or torch.get_default_dtype()}
        B, H, R, I = batch_size, hidden_dim, rank, input_dim
        return cls(
            h=torch.zeros(B, H, **kw),
            U=torch.zeros(B, H, R, **kw),
            U_target=torch.zeros(B, H, R, **kw),
            error_mean=torch.zeros(B, I, **kw),
            error_var=torch.ones(B, I, **kw),
            avg_surprise=torch.zeros(B, **kw),
            adaptive_tau=torch.full((B,), float(base_threshold), **kw),
        )

    @property
    def batch_size(self) -> int:
        return self.h.shape[0]

    def detach(self) -> DREAMState:
        """A copy cut from the autograd graph (truncated backpropagation through time)."""
        return DREAMState(*(x.detach() for x in self))

    def to(self, *args: Any, **kwargs: Any) -> DREAMState:
        """Move/cast every tensor, with the arguments of ``Tensor.to``."""
        return DREAMState(*(x.to(*args, **kwargs) for x in self))

    def select(self, index: Tensor | slice | int | list[int]) -> DREAMState:
        """The states of the samples ``index`` (a batch axis is kept for int indices)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return DREAMState(*(x[index] for x in self))

    @classmethod
    def cat(cls, states: list[DREAMState]) -> DREAMState:
        """Concatenate states along the batch axis."""
        return cls(*(torch.cat(parts) for parts in zip(*states)))

    def as_dict(self) -> dict[str, Tensor]:
        """Plain dict of tensors; ``torch.save`` it and ``torch.load(..., weights_only=True)`` it back."""
        return dict(self._asdict())

    @classmethod
    def from_dict(cls, d: dict[str, Tensor]) -> DREAMState:
        """Inverse of `as_dict`; a missing or extra key is a ``ValueError``."""
        missing = set(cls._fields) - set(d)
        extra = set(d) - set(cls._fields)
        if missing or extra:
            raise ValueError(f"DREAMState.from_dict: missing keys {sorted(missing)}, unexpected keys {sorted(extra)}")
        return cls(**{k: d[k] for k in cls._fields})
