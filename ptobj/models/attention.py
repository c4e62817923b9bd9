"""Our masked attention as megatron's core attention.

How the row intervals reach it: the model builds ONE ``kernels.AttentionMask`` per
micro-batch from the batch's ``kv_start``/``kv_end`` (the intervals plus the backend's
block tables) and passes its ``data``, a plain int32 tensor [b, L], as megatron's
``attention_mask``. Megatron hands it unchanged from ``TransformerBlock`` through
``TransformerLayer`` / ``SelfAttention`` to every layer's core attention, which wraps
it again (views only, no device work). A plain tensor, not an object or a cache:
activation recompute saves and replays exactly the tensor of its own micro-batch, also
when pipeline schedules interleave micro-batches, and no address or module state can go
stale. ``packed_seq_params`` stays None, so RoPE and the rest of megatron run in their
ordinary sbhd mode.

The backend (``ModelConfig.attention_backend``): ``auto`` (triton for fp16/bf16 on CUDA,
else the torch reference), ``triton``, ``flex``, ``sdpa`` (plain causal only) or
``reference``. Context parallelism is not supported (intervals index the full sequence).
"""

from __future__ import annotations

import torch
from megatron.core.transformer.module import MegatronModule

from ptobj.kernels import AttentionMask, masked_attention, resolve_backend


def compute_dtype(device: torch.device, params_dtype: torch.dtype) -> torch.dtype:
    """The dtype attention will see on ``device``: autocast's when it is on, else the params'."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return params_dtype


def build_attention_mask(kv_start: torch.Tensor, kv_end: torch.Tensor, backend: str,
                         params_dtype: torch.dtype) -> torch.Tensor:
    """The ``attention_mask`` tensor for one micro-batch: ``AttentionMask.build(...).data``."""
    resolved = resolve_backend(backend, kv_start.device, compute_dtype(kv_start.device, params_dtype))
    return AttentionMask.build(kv_start, kv_end, backend=resolved).data


class IntervalAttention(MegatronModule):
    """Drop-in for megatron's DotProductAttention: q [s, b, h, d], k/v [s, b, h_kv, d]
    (grouped-query attention kept un-expanded) -> [s, b, h*d]. Dropout is not
    supported (config.attention_dropout must be 0)."""

    def __init__(self, config, layer_number, attn_mask_type, attention_type, attention_dropout=None,
                 softmax_scale=None, cp_comm_type=None, pg_collection=None, backend: str = "auto", **unused):
        super().__init__(config=config)
        dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        if dropout:
            raise ValueError(f"IntervalAttention: attention_dropout must be 0, got {dropout}")
        if config.context_parallel_size > 1:
            raise ValueError("IntervalAttention: context parallelism is not supported")
        self.softmax_scale = softmax_scale
        self.backend = backend

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2:
            got = None if attention_mask is None else tuple(getattr(attention_mask, "shape", ()))
            raise ValueError(f"IntervalAttention needs attention_mask = build_attention_mask(kv_start, kv_end, ...), "
                             f"an int32 [b, L] tensor; got {got}")
        if packed_seq_params is not None:
            raise ValueError("IntervalAttention: packed_seq_params is not used; pass row intervals instead")
        backend = resolve_backend(self.backend, query.device, query.dtype)
        mask = AttentionMask.from_data(attention_mask, backend=backend, q_len=query.shape[0], kv_len=key.shape[0])
        out = masked_attention(query, key, value, mask, scale=self.softmax_scale, layout="sbhd")
        s, b, h, d = out.shape
        return out.reshape(s, b, h * d)
