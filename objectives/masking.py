"""Shared masking primitives: whole-word span choice and BERT's 80/10/10 corruption.

Every masked-LM objective here (BERT MLM, whole-word, n-gram, SpanBERT, UniLM
cloze, MacBERT) is "choose spans of whole words, then corrupt them". The two
steps live here, vectorised over a batch ``[B, S]`` (a 1-D input is one row).

Span choice (:func:`choose_spans`) works in three vectorised steps:

1. draw i.i.d. span lengths (in words) from ``length_probs`` until a little
   more than the budget is covered ("overfill");
2. place those spans without overlap, uniformly at random: the free words
   are cut into ``k + 1`` gaps by scaled uniform order statistics (the
   stars-and-bars construction), so no candidate is ever rejected and the
   span-length distribution is not skewed against long spans;
3. visit the placed spans in a random order and keep a prefix whose cost
   (tokens or words) meets the budget. The span that crosses the budget is
   kept with probability ``(budget - cost_before) / its_cost``: the expected
   masked amount equals the budget exactly, and, because that span is
   size-biased but kept with probability proportional to ``1 / cost``, the
   kept lengths keep the requested distribution.

Spans start at word starts and cover whole words. Tokens outside ``eligible``
(e.g. [CLS], [SEP], PAD) are never chosen; a span that would run over an
ineligible token is cut there, and an ineligible token inside a word splits
that word. A span longer than the row's number of eligible words is cut to it.

Actions (:func:`bert_actions`) code what happened to each position:
``ACTION_NONE`` (not a target), ``ACTION_MASK`` ([MASK]), ``ACTION_RANDOM``
(random regular token), ``ACTION_KEEP`` (original token, still a target).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

ACTION_NONE = 0
ACTION_MASK = 1
ACTION_RANDOM = 2
ACTION_KEEP = 3

# ------------------------------------------------------------------------------------------
# Length distributions (over words)
# ------------------------------------------------------------------------------------------


def geometric_length_probs(p: float, max_len: int) -> np.ndarray:
    """SpanBERT's span-length law: Geometric(p) on 1, 2, ... clipped at ``max_len``
    by renormalising. ``probs[k-1]`` is P(length = k). p=0.2, max 10 -> mean 3.8."""
    if not 0.0 < float(p) <= 1.0:
        raise ValueError(f"geometric p must lie in (0, 1], got {p!r}")
    if int(max_len) < 1:
        raise ValueError(f"max span length must be >= 1, got {max_len!r}")
    k = np.arange(1, int(max_len) + 1, dtype=np.float64)
    w = float(p) * (1.0 - float(p)) ** (k - 1)
    return w / w.sum()


def ngram_length_probs(weights: Sequence[float]) -> np.ndarray:
    """Normalised n-gram weights: ``weights[n-1]`` for an n-word span
    (MacBERT: (0.4, 0.3, 0.2, 0.1); BERT whole-word: (1,))."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0:
        raise ValueError(f"length weights must be a non-empty 1-D sequence, got {weights!r}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"length weights must be finite, >= 0 and not all 0, got {weights!r}")
    return w / w.sum()


def expected_length(length_probs: np.ndarray) -> float:
    """Mean span length (words) of a length distribution."""
    p = np.asarray(length_probs, dtype=np.float64)
    return float((np.arange(1, p.size + 1) * p).sum())


# ------------------------------------------------------------------------------------------
# Words
# ------------------------------------------------------------------------------------------


def word_spans(word_start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Word boundaries in token positions of a 1-D ``word_start``: word ``w`` covers
    tokens ``[starts[w], ends[w])``. Position 0 always starts a word."""
    ws = np.asarray(word_start, dtype=bool)
    if ws.ndim != 1:
        raise ValueError(f"word_start must be 1-D, got shape {ws.shape}")
    n = ws.size
    if n == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.int32)
    starts = np.flatnonzero(ws)
    if starts.size == 0 or starts[0] != 0:
        starts = np.concatenate(([0], starts))
    ends = np.concatenate((starts[1:], [n]))
    return starts.astype(np.int32), ends.astype(np.int32)


def word_ids(word_start: np.ndarray) -> np.ndarray:
    """Per token, the index of its word (position 0 always starts word 0)."""
    ws = np.asarray(word_start, dtype=bool).copy()
    if ws.size:
        ws[..., 0] = True
    return (np.cumsum(ws, axis=-1) - 1).astype(np.int32)


# ------------------------------------------------------------------------------------------
# Span choice
# ------------------------------------------------------------------------------------------


def _as_rows(a: np.ndarray, name: str, dtype) -> np.ndarray:
    a = np.asarray(a, dtype=dtype)
    if a.ndim not in (1, 2):
        raise ValueError(f"{name} must be 1-D [S] or 2-D [B, S], got shape {a.shape}")
    return a[None] if a.ndim == 1 else a


def _row_budget(value, rows: int, name: str) -> np.ndarray:
    b = np.broadcast_to(np.asarray(value, dtype=np.float64), (rows,)).copy()
    if not np.all(np.isfinite(b)) or np.any(b < 0):
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return b


def _sample_lengths(rng: np.random.Generator, cdf: np.ndarray, shape) -> np.ndarray:
    if cdf.size == 1:
        return np.ones(shape, np.int64)
    u = rng.random(shape)
    return np.searchsorted(cdf, u, side="right").astype(np.int64) + 1


def choose_spans(
    rng: np.random.Generator,
    word_start: np.ndarray,
    *,
    length_probs: Sequence[float] | np.ndarray = (1.0,),
    budget_tokens=None,
    budget_words=None,
    eligible: np.ndarray | None = None,
    overfill: float = 1.5,
) -> np.ndarray:
    """Pick non-overlapping whole-word spans; return ``span_id`` int32 with the shape of
    ``word_start`` ([S] or [B, S]): -1 where unmasked, else the span's index within its
    row, numbered left to right.

    ``length_probs[k-1]`` = P(span of k words). Exactly one budget: ``budget_tokens``
    (masked tokens wanted per row) or ``budget_words`` (masked words wanted), a scalar
    or one float per row; fractional budgets are met in expectation. ``eligible``
    (bool, same shape) marks tokens that may be masked (default: all).
    """
    ws = _as_rows(word_start, "word_start", bool)
    squeeze = np.asarray(word_start).ndim == 1
    B, S = ws.shape
    el = np.ones_like(ws) if eligible is None else _as_rows(eligible, "eligible", bool)
    if el.shape != ws.shape:
        raise ValueError(f"eligible shape {el.shape} differs from word_start shape {ws.shape}")
    if (budget_tokens is None) == (budget_words is None):
        raise ValueError("give exactly one of budget_tokens or budget_words")
    by_tokens = budget_tokens is not None
    budget = _row_budget(budget_tokens if by_tokens else budget_words, B,
                         "budget_tokens" if by_tokens else "budget_words")
    probs = ngram_length_probs(length_probs)
    K = probs.size
    if not overfill >= 1.0:
        raise ValueError(f"overfill must be >= 1, got {overfill!r}")

    out = np.full(B * S, -1, np.int32)
    if B * S == 0:
        return out.reshape(B, S)[0] if squeeze else out.reshape(B, S)

    # --- eligible words, flattened over the batch ---------------------------------------
    prev_el = np.zeros_like(el)
    prev_el[:, 1:] = el[:, :-1]
    start = el & (ws | ~prev_el)
    flat_start = start.ravel()
    w_tok = np.flatnonzero(flat_start)                       # token position of each word
    boundary = np.flatnonzero(np.concatenate((flat_start | ~el.ravel(), [True])))
    w_end = boundary[np.searchsorted(boundary, w_tok, side="right")]
    w_row = w_tok // S
    n_words = np.bincount(w_row, minlength=B)
    if w_tok.size == 0:
        return out.reshape(B, S)[0] if squeeze else out.reshape(B, S)
    w_off = np.concatenate(([0], np.cumsum(n_words)[:-1]))
    # runs of adjacent eligible words in one row; a span never leaves its run
    brk = np.ones(w_tok.size, bool)
    brk[:-1] = (w_end[:-1] != w_tok[1:]) | (w_row[:-1] != w_row[1:])
    last_of_run = np.flatnonzero(brk)
    run_last = last_of_run[np.cumsum(np.concatenate(([False], brk[:-1])))]

    # --- 1. lengths: enough spans to overfill the budget ----------------------------------
    if by_tokens:
        n_tok = el.sum(axis=1)
        words_wanted = budget * n_words / np.maximum(n_tok, 1)
    else:
        words_wanted = budget
    target = np.minimum(np.ceil(words_wanted * overfill).astype(np.int64) + K, n_words)
    M = int(target.max())
    if M == 0:
        return out.reshape(B, S)[0] if squeeze else out.reshape(B, S)
    lengths = np.minimum(_sample_lengths(rng, np.cumsum(probs), (B, M)), n_words[:, None])
    cum = np.cumsum(lengths, axis=1)
    k = (cum <= target[:, None]).sum(axis=1)                  # spans placed per row
    valid = np.arange(M)[None, :] < k[:, None]
    used = np.where(k > 0, np.take_along_axis(cum, np.maximum(k - 1, 0)[:, None], 1)[:, 0], 0)
    free = n_words - used

    # --- 2. placement: gaps from uniform order statistics ---------------------------------
    gam = np.cumsum(rng.standard_exponential((B, M + 1)), axis=1)
    norm = np.take_along_axis(gam, k[:, None], 1)
    free_before = np.minimum(np.floor(gam[:, :M] / norm * (free[:, None] + 1)), free[:, None])
    first = free_before.astype(np.int64) + cum - lengths      # local word index of span start
    first = np.where(valid, first, 0)
    g_first = w_off[:, None] + first
    g_first = np.minimum(g_first, w_tok.size - 1)
    g_last = np.minimum(g_first + lengths - 1, run_last[g_first])
    tok_lo = w_tok[g_first]
    tok_hi = w_end[g_last]
    cost = (tok_hi - tok_lo) if by_tokens else (g_last - g_first + 1)

    # --- 3. random visiting order, prefix meeting the budget ------------------------------
    keys = np.where(valid, rng.random((B, M)), np.inf)
    order = np.argsort(keys, axis=1)
    c_sorted = np.where(np.take_along_axis(valid, order, 1), np.take_along_axis(cost, order, 1), 0)
    c_cum = np.cumsum(c_sorted, axis=1)
    n_full = ((c_cum <= budget[:, None]) & (c_sorted > 0)).sum(axis=1)
    has_cross = n_full < k
    j = np.minimum(n_full, M - 1)
    before = np.where(n_full > 0, np.take_along_axis(c_cum, np.maximum(n_full - 1, 0)[:, None], 1)[:, 0], 0)
    cross_cost = np.maximum(np.take_along_axis(c_sorted, j[:, None], 1)[:, 0], 1)
    take_cross = has_cross & (rng.random(B) * cross_cost < budget - before)
    n_take = n_full + take_cross
    sel = np.zeros((B, M), bool)
    np.put_along_axis(sel, order, np.arange(M)[None, :] < n_take[:, None], axis=1)
    sel &= valid

    # --- paint span ids (left-to-right per row) -------------------------------------------
    local_id = (np.cumsum(sel, axis=1) - 1)[sel].astype(np.int32)
    lo = tok_lo[sel]
    span_len = (tok_hi - tok_lo)[sel]
    total = int(span_len.sum())
    if total:
        offs = np.cumsum(span_len) - span_len
        pos = np.arange(total) - np.repeat(offs - lo, span_len)
        out[pos] = np.repeat(local_id, span_len)
    out = out.reshape(B, S)
    return out[0] if squeeze else out


# ------------------------------------------------------------------------------------------
# 80/10/10
# ------------------------------------------------------------------------------------------


def check_action_probs(probs: Sequence[float], name: str = "probs") -> np.ndarray:
    """Validate (mask, random, keep) shares: three rates in [0, 1] summing to 1."""
    p = np.asarray(probs, dtype=np.float64)
    if p.shape != (3,) or not np.all(np.isfinite(p)) or np.any(p < 0) or np.any(p > 1):
        raise ValueError(f"{name} must be three rates in [0, 1] (mask, random, keep), got {probs!r}")
    if abs(p.sum() - 1.0) > 1e-6:
        raise ValueError(f"{name} must sum to 1 (mask + random + keep), got {probs!r} (sum {p.sum()})")
    return p


def bert_actions(
    rng: np.random.Generator,
    span_id: np.ndarray,
    *,
    probs: Sequence[float] = (0.8, 0.1, 0.1),
    per_span: bool = True,
) -> np.ndarray:
    """Per position an ``ACTION_*`` code (int8). Positions with ``span_id < 0`` get
    ACTION_NONE; chosen positions get MASK / RANDOM / KEEP with ``probs``, drawn once
    per span (SpanBERT, whole-word) or per token (``per_span=False``)."""
    p = check_action_probs(probs)
    sid = np.asarray(span_id)
    rows = sid[None] if sid.ndim == 1 else sid
    chosen = rows >= 0
    if per_span:
        n_span = int(rows.max()) + 1 if rows.size else 0
        u_span = rng.random((rows.shape[0], max(n_span, 1)))
        u = np.take_along_axis(u_span, np.maximum(rows, 0).astype(np.intp), axis=1)
    else:
        u = rng.random(rows.shape)
    act = np.where(u < p[0], ACTION_MASK, np.where(u < p[0] + p[1], ACTION_RANDOM, ACTION_KEEP))
    act = np.where(chosen, act, ACTION_NONE).astype(np.int8)
    return act[0] if sid.ndim == 1 else act


def apply_actions(
    rng: np.random.Generator,
    tokens: np.ndarray,
    action: np.ndarray,
    *,
    mask_id: int,
    low: int,
    high: int,
) -> np.ndarray:
    """New tokens: [MASK] where ACTION_MASK, a uniform id in ``[low, high)`` per token
    where ACTION_RANDOM, the original elsewhere."""
    if not int(low) < int(high):
        raise ValueError(f"random replacement range [low={low}, high={high}) is empty")
    new = np.array(tokens, copy=True)
    new[action == ACTION_MASK] = mask_id
    rnd = action == ACTION_RANDOM
    n = int(np.count_nonzero(rnd))
    if n:
        new[rnd] = rng.integers(low, high, size=n, dtype=np.int64).astype(new.dtype)
    return new


def bert_corrupt(
    rng: np.random.Generator,
    tokens: np.ndarray,
    span_id: np.ndarray,
    *,
    mask_id: int,
    low: int,
    high: int,
    probs: Sequence[float] = (0.8, 0.1, 0.1),
    per_span: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """BERT corruption of the chosen spans: ``(new_tokens, action)``; see
    :func:`bert_actions` and :func:`apply_actions`."""
    action = bert_actions(rng, span_id, probs=probs, per_span=per_span)
    return apply_actions(rng, tokens, action, mask_id=mask_id, low=low, high=high), action
