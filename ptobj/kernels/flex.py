"""The FlexAttention backend over the same AttentionMask as the Triton kernels.

The BlockMask comes from the mask's block tables (built once per micro-batch from the
row intervals, no [S, S] evaluation); partial blocks apply the intervals as ``mask_mod``.
On CUDA the whole call, BlockMask construction included, is one ``torch.compile``d
function whose inputs are tensors, so it compiles once per shape, never once per mask.
On CPU it runs FlexAttention's eager path (tests, small shapes).
"""

from __future__ import annotations

import warnings

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from .attention_mask import AttentionMask

_TABLES = ("kv_num", "kv_idx", "full_kv_num", "full_kv_idx", "q_num", "q_idx", "full_q_num", "full_q_idx")


def _attend(q, k, v, data, q_len: int, kv_len: int, scale: float, enable_gqa: bool, return_lse: bool):
    """q [b, h, s, d], k/v [b, h_kv, s_k, d]; ``data`` an AttentionMask('flex').data."""
    mask = AttentionMask.from_data(data, backend="flex", q_len=q_len, kv_len=kv_len)
    kv_start, kv_end = mask.kv_start, mask.kv_end
    shared = data.shape[0] == 1
    last = q_len - 1

    def mask_mod(b, h, q_idx, kv_idx):
        row = 0 if shared else b
        i = torch.clamp(q_idx, max=last)  # padded query rows of the last block read row s-1
        return (kv_idx >= kv_start[row, i]) & (kv_idx < kv_end[row, i])

    tables = {name: mask.field(name).unsqueeze(1).contiguous() for name in _TABLES}  # [b, 1, ...]
    block_mask = BlockMask(
        seq_lengths=(q_len, kv_len), kv_num_blocks=tables["kv_num"], kv_indices=tables["kv_idx"],
        full_kv_num_blocks=tables["full_kv_num"], full_kv_indices=tables["full_kv_idx"],
        q_num_blocks=tables["q_num"], q_indices=tables["q_idx"], full_q_num_blocks=tables["full_q_num"],
        full_q_indices=tables["full_q_idx"], BLOCK_SIZE=(mask.group, mask.group), mask_mod=mask_mod)
    return flex_attention(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=enable_gqa,
                          return_lse=return_lse)


_compiled = None


def _function(device: torch.device):
    """The compiled function on CUDA (built on first use), the eager one elsewhere."""
    global _compiled
    if device.type != "cuda":
        return _attend
    if _compiled is None:
        _compiled = torch.compile(_attend, dynamic=False, fullgraph=True)
    return _compiled


def attention(q, k, v, mask: AttentionMask, scale: float, *, return_lse: bool = False):
    """q [b, s, h, d], k/v [b, s_k, h_kv, d] (views of any layout) -> out [b, s, h, d]
    (and the natural-log LSE [b, h, s] with ``return_lse``)."""
    if mask.backend != "flex":
        raise ValueError(f"the flex backend needs an AttentionMask built for 'flex', got {mask.backend!r}")
    if (mask.q_len, mask.kv_len) != (q.shape[1], k.shape[1]):
        raise ValueError(f"mask is for {mask.q_len} queries x {mask.kv_len} keys; q/k have {q.shape[1]} x {k.shape[1]}")
    mask.rows_for(q.shape[0])
    with warnings.catch_warnings():  # the eager path off CUDA is deliberate (small shapes, tests)
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        res = _function(q.device)(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask.data,
                                  mask.q_len, mask.kv_len, float(scale), q.shape[2] != k.shape[2], return_lse)
    if return_lse:
        out, lse = res
        return out.transpose(1, 2), lse
    return res.transpose(1, 2)
