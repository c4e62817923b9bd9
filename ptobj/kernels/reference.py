"""Plain torch masked attention over row intervals: the CPU path and the test oracle.

Query i of batch row b sees keys j with ``kv_start[b, i] <= j < kv_end[b, i]``.
Rows that see nothing return zeros (never NaN).
"""

from __future__ import annotations

import math

import torch


def to_bshd(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "bshd":
        return x
    if layout == "sbhd":
        return x.transpose(0, 1)
    raise ValueError(f"layout must be 'bshd' or 'sbhd', got {layout!r}")


def masked_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_start: torch.Tensor,
    kv_end: torch.Tensor,
    *,
    scale: float | None = None,
    layout: str = "bshd",
    compute_dtype: torch.dtype = torch.float32,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """q: [b, s, h, d] (or [s, b, h, d] for layout='sbhd'); k, v: [b, s_k, h_kv, d]
    with h % h_kv == 0 (grouped-query attention); kv_start, kv_end: int [b, s] or [s].
    Returns q's layout and dtype; computes in ``compute_dtype``. With ``return_lse``
    also returns the float32 logsumexp of the scaled scores, [b, h, s], natural log,
    ``-inf`` for rows that see nothing."""
    qb, kb, vb = (to_bshd(t, layout) for t in (q, k, v))
    b, s, h, d = qb.shape
    s_k, h_kv = kb.shape[1], kb.shape[2]
    if h % h_kv:
        raise ValueError(f"q heads ({h}) must be a multiple of k/v heads ({h_kv})")
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    kv_start = kv_start.to(qb.device).long().expand(b, s) if kv_start.dim() == 1 else kv_start.to(qb.device).long()
    kv_end = kv_end.to(qb.device).long().expand(b, s) if kv_end.dim() == 1 else kv_end.to(qb.device).long()
    rep = h // h_kv
    qf = qb.to(compute_dtype).transpose(1, 2)  # b h s d
    kf = kb.to(compute_dtype).repeat_interleave(rep, dim=2).transpose(1, 2)
    vf = vb.to(compute_dtype).repeat_interleave(rep, dim=2).transpose(1, 2)
    j = torch.arange(s_k, device=qb.device)
    visible = (j >= kv_start[..., None]) & (j < kv_end[..., None])  # b s s_k
    scores = torch.matmul(qf, kf.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~visible[:, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    probs = torch.nan_to_num(probs, nan=0.0)  # rows that see nothing
    out = torch.matmul(probs, vf).transpose(1, 2).to(q.dtype)  # b s h d
    out = out if layout == "bshd" else out.transpose(0, 1)
    if return_lse:
        return out, torch.logsumexp(scores.float(), dim=-1)
    return out
