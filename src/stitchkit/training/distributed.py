"""Process-group set-up for ``torchrun`` (DDP), and the few collectives training needs.

Without torchrun's environment variables everything degrades to one process, so the same code runs on a laptop.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init(device_type: str) -> Dist:
    """Join the process group that torchrun describes (gloo on CPU, NCCL on CUDA); a no-op without torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def all_reduce_sum(values: torch.Tensor, ctx: Dist) -> torch.Tensor:
    if ctx.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def gather_rows(row: torch.Tensor, ctx: Dist) -> torch.Tensor:
    """Every rank's ``row`` (a 1-D tensor of the same size on each), stacked in rank order: ``(world_size, n)``.
    Every rank takes part and gets the table (all_gather: gloo and NCCL both have it); one process: no collective."""
    if not ctx.enabled:
        return row.unsqueeze(0)
    rows = [torch.empty_like(row) for _ in range(ctx.world_size)]
    dist.all_gather(rows, row.contiguous())
    return torch.stack(rows)


def any_true(flag: bool, ctx: Dist, device: torch.device) -> bool:
    """Whether ``flag`` is set on any rank (so that every rank stops together)."""
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    return bool(all_reduce_sum(value, ctx).item() > 0)


def barrier(ctx: Dist) -> None:
    if ctx.enabled:
        dist.barrier()


def shutdown(ctx: Dist) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
