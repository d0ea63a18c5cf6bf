"""Flatten a tuple state into one vector at a backend boundary, and back."""

from __future__ import annotations

import torch
from torch import Tensor

from ._base import State


class Flattener:
    """Maps a tuple of tensors to one 1-D tensor (batched: leading axes kept) and back.

    The flat dtype is the promotion of the components' dtypes; `unflatten` casts each
    component back to its own dtype.
    """

    def __init__(self, y0: State) -> None:
        self.shapes = [y.shape for y in y0]
        self.dtypes = [y.dtype for y in y0]
        self.sizes = [y.numel() for y in y0]
        dtype = y0[0].dtype
        for y in y0[1:]:
            dtype = torch.promote_types(dtype, y.dtype)
        self.dtype = dtype

    def flatten(self, y: State) -> Tensor:
        """``(N,)`` from a tuple of the registered shapes."""
        return torch.cat([yi.reshape(-1).to(self.dtype) for yi in y])

    def unflatten(self, flat: Tensor, lead: tuple[int, ...] = ()) -> State:
        """Tuple of tensors from ``(*lead, N)``, each ``(*lead, *shape)`` in its own dtype."""
        parts = torch.split(flat, self.sizes, dim=-1)
        return tuple(p.reshape(*lead, *s).to(d) for p, s, d in zip(parts, self.shapes, self.dtypes))
