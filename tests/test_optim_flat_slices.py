"""The resharding of megatron's distributed-optimizer state, on CPU: each data-parallel rank
holds a flat slice (uneven, possibly empty) of a parameter's fp32 state; a checkpoint holds the
whole tensor. gather_flat_slices must rebuild it exactly on the group's first rank and
scatter_flat_slices must cut it again for any other slicing, i.e. any other data-parallel size.
(The megatron glue around them runs only on GPU: tests/test_recipes_resume.py, marked gpu.)"""

from __future__ import annotations

import os
import socket

import torch
import torch.multiprocessing as mp

SHAPE = (5, 7)
SAVE_SLICES = [(0, 11), None, (11, 35)]         # 3 ranks, one without a slice
LOAD_SLICES = {2: [(0, 30), (30, 35)],           # the same state at data-parallel size 2
               3: [(0, 1), (1, 2), (2, 35)]}     # and at 3, sliced otherwise


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    from ptobj.recipes.engine.optim import gather_flat_slices, scatter_flat_slices

    whole = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7))
    flat = whole.reshape(-1)
    group = torch.distributed.new_group(list(range(world)))
    part = SAVE_SLICES[rank]
    piece = None if part is None else flat[part[0]:part[1]].clone()
    got = gather_flat_slices(SHAPE, part, piece, group, "cpu")
    results = {"gathered": got}
    for size, slices in LOAD_SLICES.items():  # a subgroup plays the smaller data-parallel size
        sub = torch.distributed.new_group(list(range(size)))
        if rank < size:
            source = got if rank == 0 else None
            results[size] = scatter_flat_slices(source, flat.numel(), slices[rank], sub, "cpu")
    torch.save({"whole": whole, **results}, f"{out}/{rank}.pt")
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_flat_slices_gather_exactly_and_reshard_to_other_sizes(tmp_path):
    mp.spawn(_worker, args=(3, _free_port(), str(tmp_path)), nprocs=3, join=True)
    res = [torch.load(tmp_path / f"{r}.pt") for r in range(3)]
    whole = res[0]["whole"]
    assert torch.equal(res[0]["gathered"], whole)  # bit for bit, shape included
    assert res[1]["gathered"] is None and res[2]["gathered"] is None
    flat = whole.reshape(-1)
    for size, slices in LOAD_SLICES.items():
        for rank, (a, b) in enumerate(slices):
            assert torch.equal(res[rank][size], flat[a:b]), (size, rank)
        assert sum(res[r][size].numel() for r in range(size)) == flat.numel()
