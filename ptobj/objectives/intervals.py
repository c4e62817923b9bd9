"""Row-interval attention masks, O(S): query i sees keys j with
``kv_start[i] <= j < kv_end[i]``. A row with ``kv_end <= kv_start`` sees nothing.

Every function takes per-position ``segment_ids`` (int, non-decreasing within a
packed row: one id per document) so masks never cross documents. This numpy
module is the single implementation; consumers convert its arrays to tensors.
"""

from __future__ import annotations

import numpy as np


def _doc_bounds(segment_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per position: start and end (exclusive) of its contiguous segment run."""
    seg = np.asarray(segment_ids)
    n = seg.shape[-1]
    if n == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.int32)
    change = np.flatnonzero(seg[1:] != seg[:-1]) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [n]))
    lengths = ends - starts
    return np.repeat(starts, lengths).astype(np.int32), np.repeat(ends, lengths).astype(np.int32)


def causal(segment_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left-to-right within each document: [doc_start, i+1)."""
    start, _ = _doc_bounds(segment_ids)
    return start, np.arange(1, len(start) + 1, dtype=np.int32)


def bidirectional(segment_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every token of the document: [doc_start, doc_end)."""
    return _doc_bounds(segment_ids)


def right_to_left(segment_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Right-to-left within each document: [i, doc_end)."""
    _, end = _doc_bounds(segment_ids)
    return np.arange(len(end), dtype=np.int32), end


def prefix_lm(segment_ids: np.ndarray, prefix_end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """UniLM seq2seq / prefix-LM. ``prefix_end[i]`` is the (absolute) end of the
    source part of i's document: source rows see [doc_start, prefix_end),
    target rows see [doc_start, i+1)."""
    start, _ = _doc_bounds(segment_ids)
    prefix_end = np.asarray(prefix_end, dtype=np.int32)
    i = np.arange(len(start), dtype=np.int32)
    end = np.where(i < prefix_end, prefix_end, i + 1).astype(np.int32)
    return start, end


def sliding_window(segment_ids: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Causal with a window: [max(doc_start, i-window+1), i+1)."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    start, end = causal(segment_ids)
    i = np.arange(len(start), dtype=np.int32)
    return np.maximum(start, i - window + 1).astype(np.int32), end


def dense(kv_start: np.ndarray, kv_end: np.ndarray, kv_len: int | None = None) -> np.ndarray:
    """The [S, S_kv] boolean mask, for tests and references only."""
    kv_start = np.asarray(kv_start)
    kv_end = np.asarray(kv_end)
    n = kv_len if kv_len is not None else kv_start.shape[-1]
    j = np.arange(n)
    return (j >= kv_start[..., None]) & (j < kv_end[..., None])
