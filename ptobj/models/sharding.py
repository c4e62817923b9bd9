"""Full (tensor-parallel 1) weights <-> this rank's shards.

megatron marks every split parameter with ``tensor_model_parallel``,
``partition_dim`` and ``partition_stride``; a dimension of stride ``k`` is cut
into ``k * tp`` equal chunks and rank r holds chunks r, r + tp, ... (this is
how SwiGLU's fused fc1 keeps [gate_r; up_r] on rank r). These helpers use
those marks, so they follow whatever megatron builds. Used to load a TP=1
checkpoint into a TP>1 model and to gather a TP>1 model for export. A weight
shared by several modules (ALBERT's shared layers) is in the state dict under
each of its names; it is gathered once.
"""

from __future__ import annotations

import torch


def _split_spec(param: torch.Tensor) -> tuple[int, int] | None:
    if not getattr(param, "tensor_model_parallel", False):
        return None
    return int(param.partition_dim), int(getattr(param, "partition_stride", 1))


def shard_tensor(full: torch.Tensor, dim: int, stride: int, rank: int, size: int) -> torch.Tensor:
    chunks = torch.chunk(full, stride * size, dim=dim)
    return torch.cat(chunks[rank::size], dim=dim)


def unshard_tensors(shards: list[torch.Tensor], dim: int, stride: int) -> torch.Tensor:
    size = len(shards)
    pieces = [torch.chunk(s, stride, dim=dim) for s in shards]
    return torch.cat([pieces[r][k] for k in range(stride) for r in range(size)], dim=dim)


def load_full_state_dict(model: torch.nn.Module, full: dict[str, torch.Tensor], tp_group=None) -> None:
    """Copy full (unsharded) weights into ``model``'s shards for this rank."""
    size = 1 if tp_group is None else torch.distributed.get_world_size(tp_group)
    rank = 0 if size == 1 else torch.distributed.get_rank(tp_group)
    params = dict(model.named_parameters(remove_duplicate=False))
    local = {}
    for name, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):  # megatron's `_extra_state` placeholders
            local[name] = full.get(name, value)
            continue
        if name not in full:
            raise KeyError(f"full state dict lacks {name!r}")
        spec = _split_spec(params[name]) if name in params else None
        tensor = full[name] if spec is None or size == 1 else shard_tensor(full[name], spec[0], spec[1], rank, size)
        if tensor.shape != value.shape:
            raise ValueError(f"{name}: shard shape {tuple(tensor.shape)} != model shape {tuple(value.shape)}")
        local[name] = tensor
    model.load_state_dict(local, strict=True)


def full_state_dict(model: torch.nn.Module, tp_group=None) -> dict[str, torch.Tensor]:
    """All-gather every tensor-parallel shard: the TP=1 state dict, on every rank (CPU tensors)."""
    size = 1 if tp_group is None else torch.distributed.get_world_size(tp_group)
    params = dict(model.named_parameters(remove_duplicate=False))
    out = {}
    done: dict[int, torch.Tensor] = {}  # id of a (shared) tensor -> its full value
    for name, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):
            out[name] = value
            continue
        param = params.get(name, value)
        if id(param) in done:
            out[name] = done[id(param)]
            continue
        spec = _split_spec(params[name]) if name in params else None
        if spec is None or size == 1:
            full = value.detach().cpu().clone()
        else:
            shards = [torch.empty_like(value) for _ in range(size)]
            torch.distributed.all_gather(shards, value.detach().contiguous(), group=tp_group)
            full = unshard_tensors([s.cpu() for s in shards], *spec)
        out[name] = done[id(param)] = full
    return out
