"""Several training processes through PyTorch's own engine (torchrun sets the environment; docs/scaling.md).

gloo on CPU, NCCL on CUDA, picked from the device; one process (no WORLD_SIZE) needs no process group."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from .devices import resolve_device
from .errors import UserError

TIMEOUT_ENV = "MICRODEBLUR_DIST_TIMEOUT"  # seconds the ranks wait to join each other (default 120)
# seconds a rank waits for the others inside the run (default 1800): rank 0 alone probes and writes checkpoints
# while the others wait at the next step's all-reduce, which on a slow or shared machine can pass 120 s
WAIT_ENV = "MICRODEBLUR_DIST_WAIT"


@dataclass(frozen=True)
class World:
    """This process's place among the training processes and the device it computes on."""

    rank: int
    size: int
    device: torch.device
    group: Any = None  # the process group of the run's collectives (None: the default group or one process)

    @property
    def main(self) -> bool:
        """Rank 0 writes logs, progress, checkpoints and the weights."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        raise UserError(f"environment variable {name} must be an integer, got {os.environ.get(name)!r}") from None


@contextmanager
def world(device_name: str = "auto") -> Iterator[World]:
    """The training world for the block: a process group when torchrun started several processes."""
    size = _env_int("WORLD_SIZE", 1)
    if size <= 1:
        yield World(0, 1, resolve_device(device_name))
        return
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    device = resolve_device(device_name)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        device = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(device)
    timeout = timedelta(seconds=_env_int(TIMEOUT_ENV, 120))
    try:
        dist.init_process_group(backend, rank=rank, world_size=size, timeout=timeout)
    except Exception as e:  # noqa: BLE001 - rendezvous failures come in many types
        raise UserError(f"rank {rank} of {size} could not join the other training processes within "
                        f"{timeout.seconds} s ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'}); "
                        "check torchrun's --nnodes/--rdzv-endpoint and that the nodes reach each other") from None
    group = dist.new_group(timeout=timedelta(seconds=_env_int(WAIT_ENV, 1800)))
    try:
        yield World(rank, size, device, group)
        dist.barrier(group=group)  # leave together: gloo aborts a rank whose peer tears its connections down mid-exchange
    finally:
        # a DistributedDataParallel left in a reference cycle would otherwise be freed at exit, after its process
        # group, and its gloo threads end in std::terminate (SIGABRT: 2 in 25 two-process runs without this, 0 in 100 with it)
        gc.collect()
        dist.destroy_process_group()


def any_rank(w: World, flag: bool) -> bool:
    """True on every rank when `flag` is true on at least one (all ranks stop at the same step)."""
    if w.size == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=w.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=w.group)
    return bool(t.item() > 0)


def gather_objects(w: World, obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (on every rank)."""
    if w.size == 1:
        return [obj]
    out: list[Any] = [None] * w.size
    dist.all_gather_object(out, obj, group=w.group)
    return out
