"""The public masked-attention entry point: one autograd-aware function over q, k, v and an
``AttentionMask`` (row intervals prepared for one backend), for megatron's [s, b, h, d]
layout and for [b, s, h, d].

Backends, all built from the same intervals:

- ``triton``: our fused kernels (fp16/bf16, head dim a multiple of 8 up to 128).
- ``flex``: PyTorch FlexAttention with a BlockMask from the same block tables.
- ``sdpa``: PyTorch scaled_dot_product_attention, plain causal masks only.
- ``reference``: plain torch (dense, O(S^2) memory), the CPU path and the test oracle.

Triton is imported only when the Triton backend is used, so ``import ptobj.kernels`` works on
machines without it (the models import this package on CPU).
"""

from __future__ import annotations

import math

import torch

from .attention_mask import AttentionMask
from .reference import masked_attention_reference

_LAYOUTS = ("bshd", "sbhd")
_KERNEL_DTYPES = (torch.float16, torch.bfloat16)


def resolve_backend(backend: str, device, dtype: torch.dtype) -> str:
    """``auto`` -> triton for fp16/bf16 on CUDA, else reference; other names pass through."""
    if backend != "auto":
        return backend
    return "triton" if torch.device(device).type == "cuda" and dtype in _KERNEL_DTYPES else "reference"


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttentionMask, *,
                     scale: float | None = None, layout: str = "bshd", return_lse: bool = False,
                     deterministic: bool = True):
    """Attention where query i of batch row b sees keys ``kv_start[b, i] <= j < kv_end[b, i]``.

    q: [b, s, h, d] (``layout="bshd"``) or megatron's [s, b, h, d] (``layout="sbhd"``);
    k, v: the same layout with h_kv heads, h % h_kv == 0 (grouped-query attention).
    mask: ``AttentionMask.build(kv_start, kv_end, backend=...)``, built once per micro-batch
    and shared by every layer; its backend runs the attention. ``scale`` defaults to
    1/sqrt(d). ``deterministic=False`` lets the triton backend accumulate dQ with atomics
    inside the dK/dV kernel (one matmul less per tile pair, summation order not fixed).
    Returns the output in q's layout and dtype; with ``return_lse`` also the float32
    log-sum-exp [b, h, s] (natural log, -inf on rows that see nothing), not differentiable.
    Rows that see no key return zeros and get zero gradients.
    """
    if not isinstance(mask, AttentionMask):
        raise TypeError(f"mask must be an AttentionMask (AttentionMask.build(kv_start, kv_end, backend=...)), "
                        f"got {type(mask).__name__}")
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a 4-D tensor in layout {layout!r}")
    qb, kb, vb = (t.transpose(0, 1) if layout == "sbhd" else t for t in (q, k, v))
    b, s, h, d = qb.shape
    if kb.shape != vb.shape:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} shapes differ")
    if kb.shape[0] != b or kb.shape[3] != d:
        raise ValueError(f"k/v {tuple(k.shape)} do not match q {tuple(q.shape)} (batch, head dim)")
    if h % kb.shape[2]:
        raise ValueError(f"q heads ({h}) must be a multiple of k/v heads ({kb.shape[2]})")
    if (mask.q_len, mask.kv_len) != (s, kb.shape[1]):
        raise ValueError(f"mask is for {mask.q_len} queries x {mask.kv_len} keys; q/k have {s} x {kb.shape[1]}")
    mask.rows_for(b)
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)

    if mask.backend == "reference":
        return masked_attention_reference(q, k, v, mask.kv_start, mask.kv_end, scale=scale, layout=layout,
                                          return_lse=return_lse)
    if mask.backend == "sdpa":
        if return_lse:
            raise ValueError("return_lse is not available with backend 'sdpa'")
        out = torch.nn.functional.scaled_dot_product_attention(
            qb.transpose(1, 2), kb.transpose(1, 2), vb.transpose(1, 2), is_causal=True, scale=scale,
            enable_gqa=h != kb.shape[2]).transpose(1, 2)
        return out.transpose(0, 1) if layout == "sbhd" else out
    if mask.backend == "flex":
        from . import flex

        res = flex.attention(qb, kb, vb, mask, scale, return_lse=return_lse)
        out, lse = res if return_lse else (res, None)
    else:
        from . import triton_attention  # deferred: imports triton

        out, lse2 = triton_attention.attention(qb, kb, vb, mask, scale, fused_dq=not deterministic)
        lse = triton_attention.lse2_to_natural(lse2) if return_lse else None
    out = out.transpose(0, 1) if layout == "sbhd" else out
    return (out, lse) if return_lse else out
