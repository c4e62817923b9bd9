"""Process-group setup for one process or a torchrun / srun launch.

Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT``)
as torchrun sets them; a plain ``ptobj train`` is a world of one.
The backend is gloo on CPU and nccl on GPU unless the config names one. Model
parallel groups come from megatron-core's ``parallel_state``; the data-parallel
group is what losses are normalised over.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    dp_rank: int = 0
    dp_size: int = 1
    tp_rank: int = 0
    tp_size: int = 1
    dp_group: Any = None  # None: the default (world) group, or no group at all
    pg_collection: Any = None  # megatron ProcessGroupCollection for build_model

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def initialized(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    def barrier(self) -> None:
        if self.initialized and self.world_size > 1:
            dist.barrier()

    def all_reduce_dp(self, tensor: torch.Tensor, op=None) -> torch.Tensor:
        """Sum (or ``op``) over the data-parallel group, in place; a no-op alone."""
        if self.initialized and self.dp_size > 1:
            dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM, group=self.dp_group)
        return tensor

    def all_reduce_world(self, tensor: torch.Tensor, op=None) -> torch.Tensor:
        if self.initialized and self.world_size > 1:
            dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM)
        return tensor


def pick_device(requested: str) -> torch.device:
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("parallel.device=cuda but no CUDA device is visible")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def init_distributed(device: str = "auto", backend: str = "auto", tensor_parallel: int = 1,
                     pipeline_parallel: int = 1, seed: int = 0) -> DistInfo:
    """Initialise torch.distributed and megatron-core's parallel state (through
    ``ptobj.models.parallel.init_parallel``), seeding every RNG with ``seed``.

    Always initialises a process group (a world of one when not launched by
    torchrun) because megatron-core layers ask ``parallel_state`` for their
    groups even on one CPU.
    """
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device)
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if world % (tensor_parallel * pipeline_parallel):
        raise ValueError(f"parallel: world size {world} is not divisible by tensor_parallel*pipeline_parallel "
                         f"= {tensor_parallel}*{pipeline_parallel}")
    if dev.type == "cpu" and backend == "nccl":
        raise ValueError("parallel.backend=nccl needs a GPU; use gloo on CPU")
    from ptobj.models.parallel import init_parallel  # the one place megatron parallel state is set up

    pg = init_parallel(tp=tensor_parallel, pp=pipeline_parallel, backend=backend, seed=seed)
    from megatron.core import parallel_state

    info = DistInfo(
        rank=rank, world_size=world, local_rank=local_rank, device=dev, backend=backend,
        dp_rank=parallel_state.get_data_parallel_rank(), dp_size=parallel_state.get_data_parallel_world_size(),
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        tp_size=parallel_state.get_tensor_model_parallel_world_size(),
        dp_group=parallel_state.get_data_parallel_group(),
    )
    info.pg_collection = pg
    return info


def shutdown() -> None:
    try:
        from megatron.core import parallel_state

        parallel_state.destroy_model_parallel()
    except Exception:
        pass
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
