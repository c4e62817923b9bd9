"""The public masked-attention entry point: one autograd-aware function over q, k, v and
row intervals, picking the Triton kernel on CUDA and the torch reference on CPU.

Triton is imported only when the Triton backend is used, so ``import kernels`` works
on machines without it (the models import this package on CPU).
"""

from __future__ import annotations

import math

import torch

from .reference import masked_attention_reference

_LAYOUTS = ("bshd", "sbhd")
_BACKENDS = ("auto", "triton", "reference")
_KERNEL_DTYPES = (torch.float16, torch.bfloat16)


def _as_batched_intervals(t: torch.Tensor, name: str, b: int, s: int, device) -> torch.Tensor:
    """int32 [b, s] on ``device``; a 1-D [s] row is broadcast over the batch without a copy."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {t.dtype}")
    if t.dim() == 1:
        if t.shape[0] != s:
            raise ValueError(f"{name} has length {t.shape[0]}, expected the query length {s}")
        t = t[None]
    elif t.dim() != 2 or tuple(t.shape) != (b, s):
        raise ValueError(f"{name} must have shape [{s}] or [{b}, {s}], got {tuple(t.shape)}")
    t = t.to(device=device, dtype=torch.int32)
    return t.expand(b, s)


def _resolve_backend(backend: str, q: torch.Tensor) -> str:
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    return "triton" if q.is_cuda and q.dtype in _KERNEL_DTYPES else "reference"


def masked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_start: torch.Tensor,
    kv_end: torch.Tensor,
    *,
    scale: float | None = None,
    layout: str = "bshd",
    backend: str = "auto",
    return_lse: bool = False,
):
    """Attention where query i of batch row b sees keys ``kv_start[b, i] <= j < kv_end[b, i]``.

    q: [b, s, h, d] (``layout="bshd"``) or megatron's [s, b, h, d] (``layout="sbhd"``);
    k, v: the same layout with h_kv heads, h % h_kv == 0 (grouped-query attention).
    kv_start, kv_end: integer [b, s] or [s] (shared by the batch). ``scale`` defaults to
    1/sqrt(d). ``backend``: "auto" (Triton for fp16/bf16 CUDA tensors, else the torch
    reference), "triton" (also on CPU under TRITON_INTERPRET=1) or "reference".
    Returns the output in q's layout and dtype; with ``return_lse`` also the float32
    log-sum-exp [b, h, s] (natural log, -inf on rows that see nothing), not differentiable.
    Rows that see no key return zeros and get zero gradients.
    """
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
    start = _as_batched_intervals(kv_start, "kv_start", b, s, q.device)
    end = _as_batched_intervals(kv_end, "kv_end", b, s, q.device)
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)

    if _resolve_backend(backend, q) == "reference":
        return masked_attention_reference(q, k, v, start, end, scale=scale, layout=layout,
                                          return_lse=return_lse)

    from . import triton_attention  # deferred: imports triton

    out, lse2 = triton_attention.IntervalAttention.apply(qb, kb, vb, start, end, scale)
    out = out.transpose(0, 1) if layout == "sbhd" else out
    if return_lse:
        return out, triton_attention.lse2_to_natural(lse2)
    return out
