"""Data-parallel generation of one point over several processes (torchrun).

Seeds are dealt in rounds: in round k, rank r generates the images
`k*B*W + r*B ... k*B*W + (r+1)*B - 1` (B = batch size, W = world size), so gathering a
round in rank order gives exactly the batches one process would generate in sequence.
Rank 0 receives every batch and alone updates the metrics and writes the result.
"""

from __future__ import annotations

import os
from typing import Any

import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size), initialising the process group when launched by torchrun."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_rank(), size


def rounds(n: int, batch_size: int, rank: int, size: int) -> list[list[int]]:
    """Image indices this rank generates, one list per round (possibly empty at the end)."""
    per_round = batch_size * size
    out = []
    for start in range(0, n, per_round):
        lo = start + rank * batch_size
        out.append(list(range(lo, min(lo + batch_size, n))))
    return out


def gather(obj: Any, size: int) -> list[Any]:
    """Every rank's object, in rank order (all ranks receive the list)."""
    if size == 1:
        return [obj]
    out: list[Any] = [None] * size
    dist.all_gather_object(out, obj)
    return out


def finish() -> None:
    """Wait for every rank, then tear the process group down (gloo aborts at exit otherwise)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
