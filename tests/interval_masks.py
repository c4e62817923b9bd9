"""Test helper: torch front-ends for the row-interval masks of ``ptobj.objectives.intervals``
(the one implementation): numpy in, int32 tensors out, on the requested device, batched
over rows. Query i sees keys ``kv_start[..., i] <= j < kv_end[..., i]``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ptobj.objectives import intervals

Intervals = tuple[torch.Tensor, torch.Tensor]


def _to_numpy(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype.kind not in "iub":
        raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    if arr.ndim not in (1, 2):
        raise ValueError(f"{name} must be [s] or [b, s], got shape {arr.shape}")
    return arr


def _per_row(fn: Callable[..., tuple[np.ndarray, np.ndarray]], segment_ids, *row_args,
             device=None) -> Intervals:
    """Apply a numpy interval builder to each row of [s] or [b, s] segment ids."""
    seg = _to_numpy(segment_ids, "segment_ids")
    if isinstance(segment_ids, torch.Tensor) and device is None:
        device = segment_ids.device
    rows = seg[None] if seg.ndim == 1 else seg
    extra = [np.broadcast_to(a if a.ndim == 2 else a[None], rows.shape) if a is not None else None
             for a in row_args]
    starts, ends = zip(*(fn(row, *[e[i] for e in extra if e is not None])
                         for i, row in enumerate(rows))) if len(rows) else ((), ())
    start = np.stack(starts) if starts else np.zeros(rows.shape, np.int32)
    end = np.stack(ends) if ends else np.zeros(rows.shape, np.int32)
    if seg.ndim == 1:
        start, end = start[0], end[0]
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.int32)).to(device)  # noqa: E731
    return as_tensor(start), as_tensor(end)


def causal(segment_ids, *, device=None) -> Intervals:
    """Left-to-right within each packed document: [doc_start, i+1)."""
    return _per_row(intervals.causal, segment_ids, device=device)


def bidirectional(segment_ids, *, device=None) -> Intervals:
    """Every token of the own document: [doc_start, doc_end)."""
    return _per_row(intervals.bidirectional, segment_ids, device=device)


def right_to_left(segment_ids, *, device=None) -> Intervals:
    """Right-to-left within each document: [i, doc_end)."""
    return _per_row(intervals.right_to_left, segment_ids, device=device)


def prefix_lm(segment_ids, prefix_end, *, device=None) -> Intervals:
    """UniLM seq2seq / prefix-LM: source rows (i < prefix_end[i]) see [doc_start, prefix_end),
    target rows [doc_start, i+1). ``prefix_end`` is absolute, per position, [s] or [b, s]."""
    return _per_row(intervals.prefix_lm, segment_ids, _to_numpy(prefix_end, "prefix_end"),
                    device=device)


def sliding_window(segment_ids, window: int, *, device=None) -> Intervals:
    """Causal within a window of ``window`` keys: [max(doc_start, i-window+1), i+1)."""
    return _per_row(lambda row: intervals.sliding_window(row, window), segment_ids, device=device)


def causal_for_length(seq_len: int, *, batch: int | None = None, device=None) -> Intervals:
    """Plain causal attention over one document of ``seq_len`` tokens ([s], or [batch, s])."""
    seg = np.zeros(seq_len if batch is None else (batch, seq_len), np.int32)
    return causal(seg, device=device)


def dense(kv_start: torch.Tensor, kv_end: torch.Tensor, kv_len: int | None = None) -> torch.Tensor:
    """The boolean [..., s, s_kv] mask; for tests and small references only."""
    n = kv_len if kv_len is not None else kv_start.shape[-1]
    j = torch.arange(n, device=kv_start.device)
    return (j >= kv_start[..., None]) & (j < kv_end[..., None])


FAMILIES = ("causal", "bidir", "r2l", "s2s", "window")


def family(kind: str, segment_ids: np.ndarray, *, window: int = 9) -> Intervals:
    """One mask family over the documents of ``segment_ids`` ([s]): causal, bidirectional,
    right-to-left, UniLM seq2seq (each document's first 40% as its source) or a sliding window."""
    seg = np.asarray(segment_ids)
    if kind == "causal":
        return causal(seg)
    if kind == "bidir":
        return bidirectional(seg)
    if kind == "r2l":
        return right_to_left(seg)
    if kind == "window":
        return sliding_window(seg, window)
    if kind == "s2s":
        starts = np.flatnonzero(np.r_[True, seg[1:] != seg[:-1]])
        ends = np.r_[starts[1:], len(seg)]
        src_end = starts + np.maximum(1, (0.4 * (ends - starts)).astype(int))
        return prefix_lm(seg, np.repeat(src_end, ends - starts))
    raise ValueError(f"unknown mask family {kind!r}; one of {FAMILIES}")
