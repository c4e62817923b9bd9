"""Our masked attention as megatron's core attention.

How the row intervals reach it: megatron hands ``attention_mask`` unchanged
from ``GPTModel.forward`` through ``TransformerBlock`` / ``TransformerLayer`` /
``SelfAttention`` to the core attention. We pass ONE int32 tensor
``[2, b, s]`` = stack(kv_start, kv_end) there (see ``pack_intervals``). A plain
tensor (not a tuple) survives megatron's activation recompute and CUDA-graph
paths, which expect ``attention_mask`` to be a tensor. ``packed_seq_params``
stays None, so RoPE and the rest of megatron run in their ordinary sbhd mode.

Context parallelism is not supported (intervals index the full sequence).
"""

from __future__ import annotations

import torch
from megatron.core.transformer.module import MegatronModule

try:  # the Triton kernel package (dispatches triton on CUDA, reference on CPU)
    from kernels import masked_attention as _masked_attention
except ImportError:  # kernels not built yet: the torch reference serves every device
    _masked_attention = None


def pack_intervals(kv_start: torch.Tensor, kv_end: torch.Tensor) -> torch.Tensor:
    """[b, s] kv_start / kv_end -> the [2, b, s] int32 ``attention_mask`` our core attention reads."""
    if kv_start.shape != kv_end.shape or kv_start.dim() != 2:
        raise ValueError(f"kv_start/kv_end must both be [b, s]; got {tuple(kv_start.shape)} and {tuple(kv_end.shape)}")
    return torch.stack([kv_start, kv_end]).to(torch.int32)


def attention_fn():
    """The attention function in use: kernels.masked_attention if present, else the reference."""
    if _masked_attention is not None:
        return _masked_attention
    from kernels.reference import masked_attention_reference

    return masked_attention_reference


class IntervalAttention(MegatronModule):
    """Drop-in for megatron's DotProductAttention: q [s, b, h, d], k/v [s, b, h_kv, d]
    (grouped-query attention kept un-expanded) -> [s, b, h*d]. Dropout is not
    supported (config.attention_dropout must be 0)."""

    def __init__(self, config, layer_number, attn_mask_type, attention_type, attention_dropout=None,
                 softmax_scale=None, cp_comm_type=None, pg_collection=None, **unused):
        super().__init__(config=config)
        dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        if dropout:
            raise ValueError(f"IntervalAttention: attention_dropout must be 0, got {dropout}")
        if config.context_parallel_size > 1:
            raise ValueError("IntervalAttention: context parallelism is not supported")
        self.softmax_scale = softmax_scale
        self.attn = attention_fn()

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if attention_mask is None or attention_mask.dim() != 3 or attention_mask.shape[0] != 2:
            got = None if attention_mask is None else tuple(attention_mask.shape)
            raise ValueError(f"IntervalAttention needs attention_mask = pack_intervals(kv_start, kv_end) "
                             f"of shape [2, b, s]; got {got}")
        if packed_seq_params is not None:
            raise ValueError("IntervalAttention: packed_seq_params is not used; pass row intervals instead")
        out = self.attn(query, key, value, attention_mask[0], attention_mask[1],
                        scale=self.softmax_scale, layout="sbhd")
        s, b, h, d = out.shape
        return out.reshape(s, b, h * d)
