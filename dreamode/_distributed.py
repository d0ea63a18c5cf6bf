"""The process group of a ``torchrun`` launch, or a one-process stand-in with the same methods."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

T = TypeVar("T")


@dataclass
class World:
    """``size`` processes, this one is ``rank``; its tensors live on ``device``."""

    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    def wrap(self, model: nn.Module) -> nn.Module:
        """``DistributedDataParallel(model)`` with several processes, else ``model`` itself."""
        if self.size == 1:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def all_sum(self, t: Tensor) -> Tensor:
        """The sum of ``t`` over processes (``t`` itself with one)."""
        if self.size == 1:
            return t
        t = t.detach().clone()
        dist.all_reduce(t)
        return t

    def max_param_spread(self, model: nn.Module) -> float:
        """Largest absolute difference of any parameter between this process and rank 0
        (maximised over processes); 0.0 with one process."""
        if self.size == 1:
            return 0.0
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        ref = flat.clone()
        dist.broadcast(ref, src=0)
        spread = (flat - ref).abs().max().reshape(1)
        dist.all_reduce(spread, op=dist.ReduceOp.MAX)
        return float(spread)

    def on_rank0(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 and hand its result to every process; an exception raised there is
        raised on every process, so that all of them stop together instead of waiting for rank 0."""
        result: Any = None
        error: BaseException | None = None
        if self.rank == 0:
            try:
                result = fn()
            except Exception as exc:
                error = exc
        if self.size > 1:
            box = [result, error]
            dist.broadcast_object_list(box, src=0)
            result, error = box
        if error is not None:
            raise error
        return result

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def teardown(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def setup(device: str = "cpu") -> World:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE``,
    ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): gloo on CPU, NCCL on CUDA.
    Without ``WORLD_SIZE > 1`` this is one process on ``device``."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(device=torch.device(device))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    on_cuda = device.startswith("cuda")
    dev = torch.device("cuda", local) if on_cuda else torch.device("cpu")
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if on_cuda else "gloo")
    return World(rank=dist.get_rank(), size=dist.get_world_size(), device=dev, owns_group=owns)
