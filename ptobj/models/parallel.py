"""The one place that sets up megatron-core parallelism.

megatron-core 0.16.1 builds models from an explicit ``ProcessGroupCollection``
(we pass it to ``GPTModel``), but some of its functions still read the global
``parallel_state`` (``vocab_parallel_cross_entropy``, the RNG tracker). So
``init_parallel`` initialises ``parallel_state`` once per process and returns
the matching collection; ``build_model`` takes that collection.

Call it once per process, after ``torchrun`` (or ``torch.multiprocessing``)
has set RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT. A single process with
no WORLD_SIZE becomes a world of one on an in-process store: no port is opened
and the environment is left alone, so child processes (a sweep's runs, a
test's subprocesses) never inherit a port this process is listening on.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def init_parallel(tp: int = 1, pp: int = 1, backend: str | None = None, *, seed: int = 1234):
    """Initialise torch.distributed (``backend``: "nccl" on CUDA, "gloo" on CPU by
    default) and megatron's tensor/pipeline/data parallel groups; seed every RNG.
    Data parallel size is world_size / (tp * pp). Returns a ProcessGroupCollection."""
    from megatron.core import parallel_state
    from megatron.core.process_groups_config import ProcessGroupCollection

    if tp < 1 or pp < 1:
        raise ValueError(f"init_parallel: tp and pp must be >= 1, got tp={tp}, pp={pp}")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not torch.distributed.is_initialized():
        rank = int(os.environ.get("RANK", "0"))
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank % max(torch.cuda.device_count(), 1))))
        if "WORLD_SIZE" in os.environ:
            torch.distributed.init_process_group(backend, rank=rank, world_size=int(os.environ["WORLD_SIZE"]))
        else:
            torch.distributed.init_process_group(backend, store=torch.distributed.HashStore(), rank=0, world_size=1)
    world = torch.distributed.get_world_size()
    if world % (tp * pp):
        raise ValueError(f"init_parallel: world size {world} is not divisible by tp*pp = {tp}*{pp}")
    if parallel_state.model_parallel_is_initialized():
        have = (parallel_state.get_tensor_model_parallel_world_size(),
                parallel_state.get_pipeline_model_parallel_world_size())
        if have != (tp, pp):
            raise RuntimeError(f"init_parallel: already initialised with (tp, pp)={have}, asked {(tp, pp)}")
    else:
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    seed_everything(seed)
    return ProcessGroupCollection.use_mpu_process_groups()


def seed_everything(seed: int) -> None:
    """Same seed on every rank: replicated weights start equal; megatron's CPU
    initialisation draws full tensors and splits them, so shards agree too."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

        model_parallel_cuda_manual_seed(seed)


def allreduce_sequence_parallel_grads(model: torch.nn.Module, tp_group) -> None:
    """Sum over tensor-parallel ranks the gradients of parameters marked
    ``sequence_parallel`` (norm weights, row-parallel biases): needed after every
    backward when ``ModelConfig.sequence_parallel`` is on and tp > 1, unless
    megatron's ``finalize_model_grads`` (which does the same) is used."""
    if tp_group is None or torch.distributed.get_world_size(tp_group) == 1:
        return
    grads = [p.grad for p in model.parameters() if getattr(p, "sequence_parallel", False) and p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat, group=tp_group)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def destroy_parallel() -> None:
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()

